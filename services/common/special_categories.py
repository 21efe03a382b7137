"""Which profile traits are special categories of personal data (GDPR art. 9), shared by the
services that must enforce it: the consent service (whose catalogue holds each category's
explicit-consent purpose) and the profile service (which withholds such traits without that
consent). The classification is the data file ``special_categories.toml`` beside this
module, so neither service imports the other.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = Path(__file__).with_name("special_categories.toml")
CATEGORIES = ("health", "religion", "ethnic_origin", "political_opinion", "trade_union",
              "sexual_orientation", "biometric")


class ClassificationError(ValueError):
    """The classification file is missing or invalid; ``problems`` lists every problem."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid special-category classification: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class SpecialCategory:
    name: str
    purpose: str  # the consent purpose whose explicit grant allows storing these traits
    traits: frozenset[str]  # lower-case trait names


@dataclass(frozen=True)
class Classification:
    categories: Mapping[str, SpecialCategory]

    def category_of(self, trait: str) -> SpecialCategory | None:
        """The special category of a trait name, if any (case-insensitive)."""
        lowered = trait.lower()
        return next((c for c in self.categories.values() if lowered in c.traits), None)


def parse_classification(data: Mapping) -> Classification:
    """Validate a classification parsed from TOML. Raises ClassificationError."""
    problems: list[str] = []
    categories: dict[str, SpecialCategory] = {}
    claimed: dict[str, str] = {}
    for name, raw in data.items():
        if name not in CATEGORIES:
            problems.append(f"{name!r} is not one of {', '.join(CATEGORIES)}")
            continue
        purpose, traits = (raw or {}).get("purpose"), (raw or {}).get("traits")
        if not isinstance(purpose, str) or not purpose:
            problems.append(f"{name}: purpose must name the consent purpose")
            continue
        if not traits or not isinstance(traits, list) or not all(
                isinstance(t, str) and t for t in traits):
            problems.append(f"{name}: traits must be a non-empty list of names")
            continue
        lowered = frozenset(t.lower() for t in traits)
        for trait in sorted(lowered):
            if trait in claimed:
                problems.append(f"trait {trait!r} is in both {claimed[trait]} and {name}")
            claimed[trait] = name
        categories[name] = SpecialCategory(name, purpose, lowered)
    if problems:
        raise ClassificationError(problems)
    return Classification(categories)


@functools.cache
def load_classification(path: Path = DEFAULT_PATH) -> Classification:
    """The classification at ``path`` (default: the packaged file), read once."""
    try:
        return parse_classification(tomllib.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ClassificationError([f"cannot read {path}: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ClassificationError([f"{path} is not valid TOML: {exc}"]) from None
