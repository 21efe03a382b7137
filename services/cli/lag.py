"""Consumer-group lag from offsets: plain arithmetic over (topic, partition) keys, so it works
on kafka-python's TopicPartition tuples and on plain tuples in tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

Partition = tuple[str, int]


def lag_by_topic(ends: Mapping[Partition, int], starts: Mapping[Partition, int],
                 committed: Mapping[Partition, int]) -> dict[str, int]:
    """Messages a group has yet to consume, per topic it committed offsets on.

    For each partition of such a topic: log end minus the group's position, where the position
    is its committed offset, or the log start when it committed none there (Muisti's consumers
    start from the earliest record) or when retention deleted records it never read.
    """
    topics = {partition[0] for partition in committed}
    lag: dict[str, int] = {}
    for partition, end in ends.items():
        topic = partition[0]
        if topic not in topics:
            continue
        start = starts.get(partition, 0)
        offset = committed.get(partition)
        position = start if offset is None or offset < 0 else max(offset, start)
        lag[topic] = lag.get(topic, 0) + max(end - position, 0)
    return lag


@dataclass(frozen=True)
class TopicRow:
    """One line of ``muisti topics list``: a topic, or a topic and one group reading it."""

    topic: str
    partitions: int
    retained: int
    group: str | None = None
    lag: int | None = None


def overview_rows(partitions: Mapping[str, int], ends: Mapping[Partition, int],
                  starts: Mapping[Partition, int],
                  committed_by_group: Mapping[str, Mapping[Partition, int]]) -> list[TopicRow]:
    """A row per (topic, group that reads it), and one for each topic no group reads; sorted by
    topic then group. ``retained`` is how many records the topic holds now."""
    lags = {group: lag_by_topic(ends, starts, committed)
            for group, committed in committed_by_group.items()}
    rows = []
    for topic in sorted(partitions):
        retained = sum(end - starts.get(partition, 0) for partition, end in ends.items()
                       if partition[0] == topic)
        readers = sorted(group for group, lag in lags.items() if topic in lag)
        if not readers:
            rows.append(TopicRow(topic, partitions[topic], retained))
        for group in readers:
            rows.append(TopicRow(topic, partitions[topic], retained, group, lags[group][topic]))
    return rows
