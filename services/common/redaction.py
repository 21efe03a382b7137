"""Redaction of free text: Muisti never stores payment card numbers, nor hetus typed in text.

A card number here is 13-19 digits that pass the Luhn check, written either
contiguously or in groups separated by single spaces or hyphens, the way
people type them (``4111 1111 1111 1111``, ``4111-1111-1111-1111``). Each one
is replaced by :data:`REDACTED_CARD`. Digit runs that fail Luhn (order numbers,
phone numbers) are left alone, as is a single unbroken run of more than 19
digits (a reference number, not a card).

Within a longer run of groups (``4111 1111 1111 1111 12/25``: the expiry month
joins the run) any span of whole groups that is a card number is redacted,
trying the longest span first from the left. This errs towards redacting a
little too much rather than letting a card through.

Finnish personal identity codes (hetu) typed into free text (an agent's call notes, a social
message) are masked the same way: :func:`redact_hetus` replaces each hetu-shaped string, not
part of a longer number, that python-stdnum validates (``131052-308T``, any century sign,
temporary individual numbers too) with :data:`REDACTED_HETU`; lookalikes that fail (an
impossible date, a wrong check character) stay. Only free text: a hetu given as an
identifier or trait is kept as digest and sealed copy instead
(services.common.hetu_protection), so payloads that carry traits are not passed through it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from stdnum import luhn
from stdnum.fi import hetu

__all__ = ["REDACTED_CARD", "REDACTED_HETU", "redact_card_numbers", "redact_hetus",
           "redact_hetus_in", "redact_in"]

REDACTED_CARD = "[REDACTED CARD]"
REDACTED_HETU = "[hetu]"

_MIN_DIGITS = 13
_MAX_DIGITS = 19

# A maximal run of ASCII digit groups joined by single spaces or hyphens.
_RUN_RE = re.compile(r"(?<![0-9])[0-9]+(?:[ -][0-9]+)*")
_GROUP_RE = re.compile(r"[0-9]+")
# ddmmyy, a century sign (+ - A-F U-Y), the individual number and the check character, not
# inside a longer number (letters around it are allowed: "hetu131052-308T" is one typed
# without a space)
_HETU_RE = re.compile(r"(?<![0-9])[0-9]{6}[-+A-FU-Ya-fu-y][0-9]{3}[0-9A-Ya-y](?![0-9])")


def _card_spans(run: str) -> list[tuple[int, int]]:
    """Spans (start, end) within ``run`` that are card numbers, non-overlapping."""
    groups = [(m.start(), m.end()) for m in _GROUP_RE.finditer(run)]
    spans = []
    i = 0
    while i < len(groups):
        candidates = []  # (start group, end group) spans with a card-like length
        digits = 0
        for j in range(i, len(groups)):
            digits += groups[j][1] - groups[j][0]
            if digits > _MAX_DIGITS:
                break
            if digits >= _MIN_DIGITS:
                candidates.append(j)
        for j in reversed(candidates):
            start, end = groups[i][0], groups[j][1]
            if luhn.is_valid(re.sub(r"[ -]", "", run[start:end])):
                spans.append((start, end))
                i = j + 1
                break
        else:
            i += 1
    return spans


def redact_card_numbers(text: str) -> tuple[str, int]:
    """Replace every payment card number in ``text`` with ``[REDACTED CARD]``.

    Returns the new text and the number of card numbers replaced (0 and the
    text unchanged when there are none). Raises ``TypeError`` if ``text`` is
    not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    count = 0

    def replace_run(match: re.Match[str]) -> str:
        nonlocal count
        run = match.group()
        spans = _card_spans(run)
        if not spans:
            return run
        count += len(spans)
        parts = []
        previous_end = 0
        for start, end in spans:
            parts.append(run[previous_end:start])
            parts.append(REDACTED_CARD)
            previous_end = end
        parts.append(run[previous_end:])
        return "".join(parts)

    return _RUN_RE.sub(replace_run, text), count


def redact_hetus(text: str) -> tuple[str, int]:
    """Replace every valid Finnish personal identity code in ``text`` with ``[hetu]``.

    Returns the new text and how many were replaced. Raises ``TypeError`` if ``text`` is not
    a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        if not hetu.is_valid(match.group(), allow_temporary=True):
            return match.group()
        count += 1
        return REDACTED_HETU

    return _HETU_RE.sub(replace, text), count


def redact_in(obj: object) -> tuple[object, int]:
    """Redact card numbers in every string value of a JSON-like structure.

    Walks nested dicts, lists and tuples and returns a new structure (the input
    is not modified) together with the total number of card numbers redacted.
    Dict keys and non-string leaves (numbers, None, ...) are kept as they are;
    a bare string is redacted directly.
    """
    return _redact_strings(obj, redact_card_numbers)


def redact_hetus_in(obj: object) -> tuple[object, int]:
    """:func:`redact_hetus` in every string value of a JSON-like structure, as
    :func:`redact_in` walks it."""
    return _redact_strings(obj, redact_hetus)


def _redact_strings(obj: object, redact: Callable[[str], tuple[str, int]]
                    ) -> tuple[object, int]:
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        total = 0
        new_dict = {}
        for key, value in obj.items():
            new_dict[key], count = _redact_strings(value, redact)
            total += count
        return new_dict, total
    if isinstance(obj, list | tuple):
        total = 0
        items = []
        for value in obj:
            new_value, count = _redact_strings(value, redact)
            items.append(new_value)
            total += count
        return (tuple(items) if isinstance(obj, tuple) else items), total
    return obj, 0
