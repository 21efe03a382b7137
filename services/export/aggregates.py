"""Segment-level statistics under k-anonymity: the export for partners who need no individuals.

The profiles a run may use (in the contract's segment, every required purpose allowed, not
restricted: the caller gates them as for any export) are grouped into cells by the contract's
dimensions. A cell carries its profile count and, per measure, the sum and average of the
numeric values its profiles hold.

Suppression rules:

* a cell is published only when it holds at least k profiles; smaller cells are left out
  whole (not even their dimension values appear);
* a measure's sum and average are published only when at least k of the cell's profiles have
  a numeric value for it (else they are null): a sum over fewer would expose a few people's
  values even inside a large cell;
* no totals or margins are exported, and an aggregate run's record counts cells, not
  profiles, so a suppressed cell cannot be recovered by subtracting published cells from a
  total. Complementary suppression is therefore not needed, and none is applied. Differencing
  two exports taken at different times can still expose a change of fewer than k profiles;
  limiting how often a partner runs aggregates is left to the operator.

k is the larger of the service's CDP_EXPORT_MIN_CELL_SIZE and the contract's own ``k``: a
contract may be stricter than the service, never looser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.export.contracts import AggregateSpec

COUNT = "count"
SCALARS = (str, int, float, bool)


def effective_k(spec: AggregateSpec, minimum_cell_size: int) -> int:
    return max(minimum_cell_size, spec.k or 0)


def columns(spec: AggregateSpec) -> list[str]:
    """The output columns, in order: dimensions, count, then each measure's sum and avg."""
    names = [column.name for column in spec.dimensions] + [COUNT]
    for measure in spec.measures:
        names += [f"{measure.name}_sum", f"{measure.name}_avg"]
    return names


def _value(snapshot: Mapping[str, Any], source: str) -> Any:
    section, _, name = source.partition(".")
    return (snapshot.get(section) or {}).get(name)


def _dimension_value(snapshot: Mapping[str, Any], source: str) -> Any:
    value = _value(snapshot, source)
    return value if isinstance(value, SCALARS) else None  # lists, objects: no group of their own


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


@dataclass
class _Cell:
    count: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    valued: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Aggregation:
    rows: list[dict[str, Any]]
    published_cells: int
    suppressed_cells: int


class Aggregator:
    """Accumulates profiles page by page; ``result(k)`` applies the suppression rules."""

    def __init__(self, spec: AggregateSpec):
        self.spec = spec
        self._cells: dict[tuple, _Cell] = {}

    def add(self, snapshot: Mapping[str, Any]) -> None:
        key = tuple(_dimension_value(snapshot, c.source) for c in self.spec.dimensions)
        cell = self._cells.setdefault(key, _Cell())
        cell.count += 1
        for measure in self.spec.measures:
            number = _number(_value(snapshot, measure.source))
            if number is not None:
                cell.sums[measure.name] = cell.sums.get(measure.name, 0) + number
                cell.valued[measure.name] = cell.valued.get(measure.name, 0) + 1

    def result(self, k: int) -> Aggregation:
        rows, suppressed = [], 0
        for key in sorted(self._cells, key=lambda key: [(v is None, str(v)) for v in key]):
            cell = self._cells[key]
            if cell.count < k:
                suppressed += 1
                continue
            row: dict[str, Any] = {c.name: value for c, value in zip(self.spec.dimensions, key,
                                                                     strict=True)}
            row[COUNT] = cell.count
            for measure in self.spec.measures:
                valued = cell.valued.get(measure.name, 0)
                published = valued >= k
                total = cell.sums.get(measure.name, 0)
                row[f"{measure.name}_sum"] = total if published else None
                row[f"{measure.name}_avg"] = round(total / valued, 6) if published else None
            rows.append(row)
        return Aggregation(rows, published_cells=len(rows), suppressed_cells=suppressed)
