"""When an event happened, as Muisti takes it from a message: one rule for every edge.

Clients' clocks and libraries send what they like. ``0001-01-01T00:00:00+02:00`` parses, but
its UTC moment lies before the first date Python can hold (converting it raises
OverflowError), and a ``sentAt`` of year 1 turns Segment's clock-skew correction into year
4050. So:

* every time read from a message is loaded already in UTC (:class:`UtcDateTime`); one that
  has no UTC form is a field error, so nothing downstream converts a time that cannot be;
* the time an event is said to have happened (after Segment's clock-skew correction, where
  there is one) lies between :data:`EARLIEST` (2000-01-01T00:00:00Z: no customer's event
  Muisti takes is older) and :data:`AHEAD` (one day) past the server's clock, which absorbs
  clocks and time zones set a little wrong but lets no future in. An API refuses a time
  outside (:class:`EventTime` for a field that is the event's time, :func:`outside_window`
  where it is computed); a time a platform sends (webhooks, pollers) is not refused but
  replaced by the time the event was received (:func:`usable`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import ValidationError, fields

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
AHEAD = timedelta(days=1)
WINDOW = "between 2000-01-01T00:00:00Z and one day after now"


def in_utc(moment: datetime) -> datetime | None:
    """``moment`` in UTC (a naive one taken as UTC), or None when it has no UTC form (within
    a day of year 1 or year 9999, on the wrong side of its offset)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return None


def outside_window(moment: datetime, now: datetime | None = None) -> str | None:
    """Where ``moment`` lies when it cannot be when an event happened (``before ...``), or
    None when it can."""
    if moment < EARLIEST:
        return "before 2000-01-01T00:00:00Z"
    if moment > (now or datetime.now(UTC)) + AHEAD:
        return "more than a day after now"
    return None


def usable(moment: datetime | None) -> datetime | None:
    """``moment`` in UTC when it can be an event's time, else None (the caller then takes the
    time it received the event)."""
    moment = None if moment is None else in_utc(moment)
    return moment if moment is not None and outside_window(moment) is None else None


class UtcDateTime(fields.AwareDateTime):
    """An ISO 8601 date-time, loaded in UTC; without an offset it is read as UTC unless
    ``default_timezone=None`` asks for one."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("default_timezone", UTC)
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment = in_utc(super()._deserialize(value, attr, data, **kwargs))
        if moment is None:
            raise ValidationError("has no UTC form: it is too near the first or last date "
                                  "there is")
        return moment


class EventTime(UtcDateTime):
    """A :class:`UtcDateTime` that says when the event happened: it must lie in the window."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        problem = outside_window(moment)
        if problem:
            raise ValidationError(f"must lie {WINDOW}; it is {problem}")
        return moment
