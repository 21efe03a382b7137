"""The purposes catalogue: every purpose personal data may be used for, its legal basis,
default state and texts in Finnish, Swedish and English, the privacy-notice versions, the
special categories (GDPR art. 9) and which traits belong to each, and how IAB TCF purposes map
to Muisti purposes.

The special categories and their traits are classified in the shared
services/common/special_categories.toml (the profile service enforces them too); the catalogue
checks that each category's purpose is one of its explicit-consent purposes.

The catalogue is a versioned TOML file (services/consent/purposes.toml by default,
``CDP_CONSENT_PURPOSES_FILE`` overrides it), loaded and validated once at start-up:
``load_catalogue`` raises CatalogueError naming every problem, so a service refuses to start on
a bad catalogue instead of answering checks wrongly.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from services.common.special_categories import (
    Classification,
    SpecialCategory,
    load_classification,
)

DEFAULT_PATH = Path(__file__).with_name("purposes.toml")
LEGAL_BASES = ("consent", "explicit_consent", "legitimate_interest", "contract",
               "legal_obligation")
CONSENT_BASES = ("consent", "explicit_consent")
LANGUAGES = ("fi", "sv", "en")
TEXT_FIELDS = ("title", "used_for", "customer_gets")
STATES = ("granted", "denied")
MAX_TCF_PURPOSE = 24


class CatalogueError(ValueError):
    """The catalogue file is missing or invalid; ``problems`` lists every problem."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid purposes catalogue: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Purpose:
    name: str
    legal_basis: str
    default: str  # "granted" | "denied": the state when the subject decided nothing
    direct_marketing: bool
    texts: dict[str, dict[str, str]]
    tcf_purposes: tuple[int, ...] = ()

    @property
    def needs_consent(self) -> bool:
        return self.legal_basis in CONSENT_BASES


@dataclass(frozen=True)
class Notice:
    id: str
    published: str
    url: str


@dataclass(frozen=True)
class Catalogue:
    version: str
    current_notice: str
    notices: dict[str, Notice]
    purposes: dict[str, Purpose]
    special_categories: dict[str, SpecialCategory] = field(default_factory=dict)

    def purpose(self, name: str) -> Purpose | None:
        return self.purposes.get(name)

    @property
    def direct_marketing(self) -> list[str]:
        return [p.name for p in self.purposes.values() if p.direct_marketing]

    def category_of_trait(self, trait: str) -> SpecialCategory | None:
        """The special category a trait name is classified as, if any (case-insensitive)."""
        lowered = trait.lower()
        return next((c for c in self.special_categories.values() if lowered in c.traits), None)

    def purposes_from_tcf(self, consented_tcf_purposes: set[int]) -> dict[str, str]:
        """Muisti purposes decided by a TC string: a purpose with ``tcf_purposes`` is granted
        when the string consents to every one of them, else denied. Purposes without a TCF
        mapping are not decided by a TC string."""
        return {p.name: "granted" if set(p.tcf_purposes) <= consented_tcf_purposes else "denied"
                for p in self.purposes.values() if p.tcf_purposes}

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "current_notice": self.current_notice,
            "notices": [vars(n) for n in self.notices.values()],
            "purposes": [{"name": p.name, "legal_basis": p.legal_basis, "default": p.default,
                          "direct_marketing": p.direct_marketing,
                          "tcf_purposes": list(p.tcf_purposes), "texts": p.texts}
                         for p in self.purposes.values()],
            "special_categories": [{"name": c.name, "purpose": c.purpose,
                                    "traits": sorted(c.traits)}
                                   for c in self.special_categories.values()],
        }


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Read and validate the catalogue at ``path`` (default: the packaged purposes.toml).

    Raises CatalogueError listing every problem found."""
    path = Path(path) if path else DEFAULT_PATH
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogueError([f"cannot read {path}: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError([f"{path} is not valid TOML: {exc}"]) from None
    return parse_catalogue(data)


def parse_catalogue(data: dict, classification: Classification | None = None) -> Catalogue:
    """Validate a catalogue already parsed from TOML against the special-category
    ``classification`` (default: the shared one). Raises CatalogueError."""
    problems: list[str] = []
    notices = {}
    for raw in data.get("notices") or []:
        if not isinstance(raw, dict) or not raw.get("id"):
            problems.append("every [[notices]] entry needs an id")
            continue
        notices[str(raw["id"])] = Notice(str(raw["id"]), str(raw.get("published", "")),
                                         str(raw.get("url", "")))
    version = str(data.get("version") or "")
    current = str(data.get("current_notice") or "")
    if not version:
        problems.append("version is required")
    if current not in notices:
        problems.append(f"current_notice {current!r} is not listed under [[notices]]")
    purposes = {}
    for name, raw in (data.get("purposes") or {}).items():
        purpose = _purpose(name, raw, problems)
        if purpose:
            purposes[name] = purpose
    if not purposes:
        problems.append("the catalogue defines no purposes")
    if "special_categories" in data:
        problems.append("special categories are classified in "
                        "services/common/special_categories.toml, not in the catalogue")
    categories = dict((classification or load_classification()).categories)
    for category in categories.values():
        purpose = purposes.get(category.purpose)
        if purpose is None or purpose.legal_basis != "explicit_consent":
            problems.append(f"special category {category.name}: purpose {category.purpose!r} "
                            "must be a catalogue purpose with legal_basis explicit_consent")
    if problems:
        raise CatalogueError(problems)
    return Catalogue(version=version, current_notice=current, notices=notices,
                     purposes=purposes, special_categories=categories)


def _purpose(name: str, raw: dict, problems: list[str]) -> Purpose | None:
    start = len(problems)
    basis, default = raw.get("legal_basis"), raw.get("default")
    if basis not in LEGAL_BASES:
        problems.append(f"purpose {name}: legal_basis must be one of {', '.join(LEGAL_BASES)}")
    if default not in STATES:
        problems.append(f"purpose {name}: default must be granted or denied")
    elif basis in CONSENT_BASES and default != "denied":
        problems.append(f"purpose {name}: a consent-based purpose must default to denied")
    if not isinstance(raw.get("direct_marketing"), bool):
        problems.append(f"purpose {name}: direct_marketing must be true or false")
    tcf = raw.get("tcf_purposes", [])
    if not isinstance(tcf, list) or not all(
            isinstance(t, int) and 1 <= t <= MAX_TCF_PURPOSE for t in tcf):
        problems.append(f"purpose {name}: tcf_purposes must list TCF purpose ids 1-24")
    texts = raw.get("texts") or {}
    for language in LANGUAGES:
        for text_field in TEXT_FIELDS:
            if not str((texts.get(language) or {}).get(text_field) or "").strip():
                problems.append(f"purpose {name}: texts.{language}.{text_field} is missing")
    if len(problems) > start:
        return None
    return Purpose(name=name, legal_basis=basis, default=default,
                   direct_marketing=raw["direct_marketing"],
                   texts={lang: {f: texts[lang][f] for f in TEXT_FIELDS} for lang in LANGUAGES},
                   tcf_purposes=tuple(tcf))
