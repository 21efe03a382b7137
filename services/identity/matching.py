"""Probabilistic record matching for the identity service (Fellegi-Sunter style).

Finds pairs of person records that probably describe the same person, and explains every
score field by field so that a supervisor can see why. Plain Python: no broker, no store.

Pipeline
========

1. **Normalise** (:func:`normalise_record`). Names, street and city are NFC, case-folded
   and whitespace-collapsed, with an ASCII-folded form (ä→a, ö→o, å→a) that comparisons
   use; phone (E.164, default region FI), e-mail (lower case) and id_number (hetu, upper
   case, compact) go through :func:`services.common.identifiers.normalise`, the identity
   graph's own canonical forms, and an invalid value is dropped (treated as missing: a
   hetu with a wrong check character is a typo, not evidence); postcode keeps digits only;
   house numbers become ``12A/3`` whether written ``12 A 3``, ``12a3`` or ``12 A as. 3``;
   a birth date written day-first (``1980-25-03``) is kept so that it can score as swapped.
2. **Block** (:func:`blocking_keys`, :func:`candidate_pairs`). Only records sharing a key
   are compared: phone; e-mail; hetu; birth date (day and month in either order) plus the
   initial of either name; soundex-like family-name key plus postcode; the sorted pair of
   given- and family-name keys (survives swapped names); postcode + street prefix + house
   number. Blocks larger than ``block_cap`` (50) are skipped, so a switchboard number or a
   very common name cannot cause quadratic work. Every pair is scored once. On the
   generated data 99.5 % of true pairs share a key; there are about 2.7 candidate pairs
   per record at 10k records and 6 at 100k (blocks on names and birth dates fill up as
   the population grows, until the cap).
3. **Compare and weigh** (:func:`score_pair`). Each field of :data:`FIELDS` gets an
   outcome "agree", "partial", "disagree" or "missing" (either side empty: weight 0):

   - given_name: agree if equal, the first given names are equal, or a formal name and its
     nickname (:data:`NICKNAMES`); partial if the first given names are close (Jaro-Winkler
     ≥ 0.9 or one edit apart) or one name contains the other.
   - family_name: agree if equal; partial if any parts of double names are close or one
     contains the other. Given and family name swapped in one record is recognised.
   - birth_date: partial if day and month are swapped, one digit differs or two adjacent
     digits are transposed.
   - street, city: partial at Jaro-Winkler ≥ 0.9. house_number: partial when only the
     staircase or apartment differs. postcode: partial when one digit differs or two
     adjacent digits are transposed.
   - phone, id_number: exact. email: partial when only the domain differs.

   The logit is the sum of the per-field weights (:data:`WEIGHTS`, natural-log likelihood
   ratios) and the score is ``1 / (1 + exp(-logit))``. There is no prior term: a pair with
   no evidence at all scores 0.5, and the thresholds carry the prior.
4. **Decide** (:func:`decide`): "match" at ``score >= threshold_match``, "possible" at
   ``score >= threshold_possible``, otherwise "non-match" (not reported).

Weights
=======

The m/u estimates of textbook Fellegi-Sunter assume fields are independent, which fails
badly here: members of one household agree on street, house number, postcode, city, often
family name and phone all at once, and blocking already selects pairs that agree on a key.
So the weights were estimated on the *candidate pairs* of generated data
(:mod:`services.identity.matching_data`, seeds 101 (20k records) and 202 (100k records),
never the seeds of the tests (4242) or the benchmark (20240)): first by L2-regularised
logistic regression on the outcome indicators (the same additive model, with the
dependence between fields absorbed into the weights), then by a random local search that
maximised F1 at the match threshold subject to precision ≥ 0.995 on both sets and to two
hard rules, then rounded. The rules: twins (everything but the given name agrees, e-mail
aside) and household members sharing address, phone *and* e-mail but with different given
names stay below the match threshold by at least 0.5. Also agree ≥ partial ≥ disagree and
agree ≥ 0 ≥ disagree. What that gives:

- Given name and birth date carry the identity. A disagreeing given name (-11.5) outweighs
  family name, address, phone and e-mail agreeing together (+15.2), so relatives who share
  everything but their names stay apart; the price is that a true duplicate whose given
  name is garbled beyond a typo needs a birth date and more to match.
- Family name and address weigh little (family +1.0; full address agreement +3.1): among
  candidate pairs they are shared by whole households.
- E-mail agreement is strong (+8.0): addresses are rarely shared. Phone (+3.1) less so
  (landlines, children reached through a parent's mobile).
- id_number is near-decisive: agreement (+12) alone exceeds the match threshold;
  disagreement (-25) outweighs agreement on every other field together (+22.2), so two
  valid, different hetus never match.

Thresholds
==========

``threshold_match = 0.99`` (logit ≈ 4.6) and ``threshold_possible = 0.95`` (logit ≈ 2.9).

Benchmark (bench/matching_quality.py, seed 20240): precision, recall and F1 of the "match"
decisions, and F1 of match and possible together:

=========== ============== ========= ====== ===== ==========
records     id_number      precision recall F1    F1 m+poss.
=========== ============== ========= ====== ===== ==========
10k         none           0.994     0.962  0.978 0.979
10k         every record   1.000     0.998  0.999 0.999
100k        none           0.994     0.965  0.979 0.976
100k        every record   1.000     0.998  0.999 0.999
=========== ============== ========= ====== ===== ==========

0.99 sits at the knee of the precision/recall curve without id numbers (100k tuning
records): raising it to 0.999 buys 0.4 points of precision for 5 points of recall;
lowering it to 0.95 costs 1.6 points of precision for 0.8 of recall. Precision falls
slowly as data grows (look-alike pairs grow with the square of the population, true
duplicates linearly), so the threshold was chosen on 100k records.

The "possible" band [0.95, 0.99) is for review: it adds about one point of recall, with
one true pair for every 0.7 (10k) to 1.7 (100k) false ones; at 0.9 the 100k queue would
hold four false pairs for every true one.

The false matches that remain are look-alikes the records cannot tell apart: twins when one
record lacks the given name, father and son of the same name when one record lacks the
birth date, household members when one record lacks the given name, and strangers with the
same first name and birth date when the family name is missing.

API
===

- :func:`score_pair` ``(a, b) -> Score(score, logit, contributions)``: one pair, raw
  records or :class:`NormalisedRecord`. ``Contribution(field, outcome, weight, detail)``;
  ``Score.to_dict()`` gives the JSON shape for the supervisor view.
- :func:`find_matches` ``(records, threshold_match, threshold_possible) ->
  list[MatchPair]``: all match and possible pairs of a batch, each with its contributions.
- :func:`normalise_record`, :func:`blocking_keys`, :func:`candidate_pairs`,
  :func:`decide`, :func:`names_equivalent` for callers that need the steps.

Speed (one core): 10k records in about 1.5 s, 100k in about 25 s (normalisation 6 s, of it
mostly phone and e-mail validation; blocking 2 s; scoring about 18 µs per candidate pair).

Command line
============

::

    python -m services.identity.matching INPUT.jsonl [--threshold-match P]
        [--threshold-possible P] [--block-cap N] [--explain] > PAIRS.jsonl

reads records ``{record_id, given_name, family_name, birth_date (YYYY-MM-DD), street,
house_number, postcode, city, phone, email, id_number}`` (any field but record_id may be
missing or null; ``-`` reads standard input) and writes one line per match or possible
pair: ``{"a", "b", "score", "decision"}`` with ``str(a) < str(b)``, sorted; ``--explain``
adds the contributions. Exit status 0, or 2 for unreadable input or bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rapidfuzz.distance import OSA, JaroWinkler

from services.common import identifiers

__all__ = [
    "DEFAULT_BLOCK_CAP",
    "DEFAULT_THRESHOLD_MATCH",
    "DEFAULT_THRESHOLD_POSSIBLE",
    "FIELDS",
    "NICKNAMES",
    "WEIGHTS",
    "Contribution",
    "MatchPair",
    "NormalisedRecord",
    "Score",
    "ascii_fold",
    "blocking_keys",
    "candidate_pairs",
    "decide",
    "find_matches",
    "main",
    "names_equivalent",
    "normalise_record",
    "score_pair",
]

Outcome = Literal["agree", "partial", "disagree", "missing"]
Decision = Literal["match", "possible", "non-match"]

FIELDS: tuple[str, ...] = (
    "given_name",
    "family_name",
    "birth_date",
    "street",
    "house_number",
    "postcode",
    "city",
    "phone",
    "email",
    "id_number",
)

# Natural-log likelihood-ratio weights per field and outcome; "missing" is always 0 and
# "partial" is unused for phone and id_number (exact comparisons). See the module docstring
# for how they were estimated.
WEIGHTS: dict[str, dict[str, float]] = {
    "given_name": {"agree": 3.0, "partial": 2.4, "disagree": -11.5},
    "family_name": {"agree": 1.0, "partial": 0.5, "disagree": -2.3},
    "birth_date": {"agree": 4.0, "partial": 2.3, "disagree": -7.5},
    "street": {"agree": 0.8, "partial": 0.7, "disagree": -0.1},
    "house_number": {"agree": 1.4, "partial": 0.8, "disagree": -0.5},
    "postcode": {"agree": 0.5, "partial": 0.2, "disagree": -0.3},
    "city": {"agree": 0.4, "partial": 0.3, "disagree": -0.5},
    "phone": {"agree": 3.1, "partial": 0.0, "disagree": -1.2},
    "email": {"agree": 8.0, "partial": 0.0, "disagree": -0.9},
    "id_number": {"agree": 12.0, "partial": 0.0, "disagree": -25.0},
}

DEFAULT_THRESHOLD_MATCH = 0.99
DEFAULT_THRESHOLD_POSSIBLE = 0.95
DEFAULT_BLOCK_CAP = 50

# Common Finnish given names and their everyday forms. A formal name and one of its
# nicknames count as agreeing given names; two nicknames of the same formal name do not
# (a Kati and a Kaisa are more often two people than one Katariina). The test-data
# generator uses the same table.
NICKNAMES: dict[str, tuple[str, ...]] = {
    "Johanna": ("Jonna", "Hanna", "Hanne"),
    "Matti": ("Masa", "Matte"),
    "Katariina": ("Kati", "Katri", "Kaisa", "Kaija"),
    "Aleksanteri": ("Aleksi", "Santeri", "Santtu", "Ale"),
    "Elisabet": ("Liisa", "Elisa", "Liisi", "Elsa"),
    "Elisabeth": ("Liisa", "Elisa", "Liisi", "Elsa"),
    "Johannes": ("Juho", "Hannes", "Jussi", "Hannu"),
    "Juhani": ("Jussi", "Juha", "Jukka"),
    "Kristiina": ("Tiina", "Kirsti", "Kiti"),
    "Margareeta": ("Reeta", "Maarit", "Marketta"),
    "Mikael": ("Mikko", "Mika", "Miikka"),
    "Jaakko": ("Jaska",),
    "Kaarlo": ("Kalle",),
    "Kalevi": ("Kalle",),
    "Petteri": ("Pete", "Petri"),
    "Tapani": ("Tapsa",),
    "Timo": ("Timppa",),
    "Antti": ("Ante", "Antsa"),
    "Helena": ("Leena", "Hele"),
    "Susanna": ("Sanna", "Susa"),
    "Marjatta": ("Marja",),
    "Anneli": ("Anne",),
    "Annikki": ("Anni",),
    "Emilia": ("Emmi", "Milla"),
    "Sofia": ("Sohvi", "Sonja"),
    "Vilhelmiina": ("Vilma", "Miina"),
    "Vilhelm": ("Ville", "Vili"),
    "Viljami": ("Vili", "Ville"),
    "Sakari": ("Sakke",),
    "Oskari": ("Osku",),
    "Samuel": ("Sami", "Samu"),
    "Kristian": ("Risto", "Kride"),
    "Olavi": ("Olli",),
    "Henrikki": ("Henkka", "Heikki"),
    "Henriikka": ("Riikka", "Henna"),
    "Maria": ("Maija", "Mari", "Maikki"),
    "Anna": ("Anni", "Annu"),
    "Daniel": ("Dani", "Taneli"),
    "Aleksandra": ("Sandra", "Sanni"),
    "Markus": ("Make",),
    "Tuomas": ("Tumppi",),
    "Eveliina": ("Eve",),
}


# --- normalisation --------------------------------------------------------------------------

_WS_RE = re.compile(r"\s+")
_NAME_JUNK_RE = re.compile(r"[^\w\s'-]|[\d_]")
_HOUSE_RE = re.compile(
    r"^(\d+)\s*(?:-\s*\d+)?\s*([a-z](?![a-z]))?[\s.]*(?:(?:as|asunto|lgh|bst)\b\.?\s*)?(\d*)"
)
_NON_DIGIT_RE = re.compile(r"\D")
_DATE_RE = re.compile(r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})\s*$")


def ascii_fold(text: str) -> str:
    """``text`` without diacritics: ä→a, ö→o, å→a, é→e (NFKD, combining marks dropped)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _text(value: Any) -> str | None:
    """A non-empty, whitespace-collapsed, NFC, case-folded string, or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    value = _WS_RE.sub(" ", unicodedata.normalize("NFC", value)).strip().casefold()
    return value or None


def _name(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    text = _WS_RE.sub(" ", _NAME_JUNK_RE.sub(" ", text)).strip(" -'")
    return text or None


def _birth_date(value: Any) -> tuple[int, int, int] | None:
    if not isinstance(value, str):
        return None
    match = _DATE_RE.match(value)
    if not match:
        return None
    year, month, day = (int(part) for part in match.groups())
    # A date written day-first ("1980-25-03") is kept as it stands so that it scores as
    # day and month swapped; only values no reading can make sense of are dropped.
    if not (1 <= month <= 31 and 1 <= day <= 31 and min(month, day) <= 12):
        return None
    return year, month, day


def _identifier(type_: str, value: Any) -> str | None:
    """The identity graph's canonical form (services.common.identifiers), or None if the
    value is missing or invalid: an invalid phone number, e-mail address or hetu (a hetu
    whose check character does not match is a typo) carries no reliable evidence either
    way, so it is treated as missing rather than as a disagreement."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return identifiers.normalise(type_, value, region="FI")
    except identifiers.InvalidIdentifier:
        return None


def _house_number(value: Any) -> tuple[str, str] | None:
    """(canonical, building number): "12 A 3", "12a3", "12 A as. 3" → ("12A/3", "12")."""
    text = _text(value)
    if text is None:
        return None
    match = _HOUSE_RE.match(text)
    if not match:
        compact = re.sub(r"[\s.,]", "", text).upper()
        return (compact, compact) if compact else None
    number, staircase, apartment = match.groups()
    number = str(int(number))
    staircase = staircase or ""
    apartment = str(int(apartment)) if apartment else ""
    canonical = f"{number}{staircase.upper()}" + (f"/{apartment}" if apartment else "")
    return canonical, number


def _postcode(value: Any) -> str | None:
    if value is None:
        return None
    digits = _NON_DIGIT_RE.sub("", str(value))
    return digits or None


@dataclass(frozen=True, slots=True)
class NormalisedRecord:
    """A record ready for blocking and comparison. Every field may be None (missing).

    Names, street and city are case-folded with whitespace collapsed; the ``*_ascii``
    forms are additionally ASCII-folded and are what comparisons use. ``birth_date`` is
    (year, month, day); ``phone`` is E.164; ``email`` lower case; ``id_number`` a valid
    hetu in upper case; ``postcode`` digits only; ``house_number`` canonical ("12A/3") with
    ``house_base`` the building number ("12").
    """

    record_id: Any
    given_name: str | None = None
    given_ascii: str | None = None
    family_name: str | None = None
    family_ascii: str | None = None
    birth_date: tuple[int, int, int] | None = None
    street: str | None = None
    street_ascii: str | None = None
    house_number: str | None = None
    house_base: str | None = None
    postcode: str | None = None
    city: str | None = None
    city_ascii: str | None = None
    phone: str | None = None
    email: str | None = None
    id_number: str | None = None


def normalise_record(raw: Mapping[str, Any]) -> NormalisedRecord:
    """Normalise one input record (see the module docstring for the field list).

    Any field may be absent, None, empty or malformed: such a field becomes None and
    later scores as "missing" (weight 0). Only ``record_id`` is required (KeyError
    otherwise); it is kept as given.
    """
    given = _name(raw.get("given_name"))
    family = _name(raw.get("family_name"))
    street = _text(raw.get("street"))
    city = _name(raw.get("city"))
    house = _house_number(raw.get("house_number"))
    return NormalisedRecord(
        record_id=raw["record_id"],
        given_name=given,
        given_ascii=ascii_fold(given) if given else None,
        family_name=family,
        family_ascii=ascii_fold(family) if family else None,
        birth_date=_birth_date(raw.get("birth_date")),
        street=street,
        street_ascii=ascii_fold(street) if street else None,
        house_number=house[0] if house else None,
        house_base=house[1] if house else None,
        postcode=_postcode(raw.get("postcode")),
        city=city,
        city_ascii=ascii_fold(city) if city else None,
        phone=_identifier("phone", raw.get("phone")),
        email=_identifier("email", raw.get("email")),
        id_number=_identifier("hetu", raw.get("id_number")),
    )


# --- comparison -----------------------------------------------------------------------------

def _build_nickname_index() -> dict[str, frozenset[str]]:
    index: dict[str, set[str]] = defaultdict(set)
    for formal, nicks in NICKNAMES.items():
        key = ascii_fold(formal.casefold())
        for nick in nicks:
            nick_key = ascii_fold(nick.casefold())
            index[key].add(nick_key)
            index[nick_key].add(key)
    return {name: frozenset(others) for name, others in index.items()}


_NICKNAME_INDEX = _build_nickname_index()


def names_equivalent(a: str, b: str) -> bool:
    """True if two given names are the same name or a formal name and its nickname.

    Case and accents are ignored. Two nicknames of one formal name are not equivalent.
    """
    a_key, b_key = ascii_fold(a.casefold().strip()), ascii_fold(b.casefold().strip())
    return a_key == b_key or b_key in _NICKNAME_INDEX.get(a_key, ())


_SPLIT_RE = re.compile(r"[\s-]+")


def _compare_name(a: str | None, b: str | None, given: bool) -> tuple[Outcome, str]:
    """Compare two ASCII-folded names; given names also accept nicknames."""
    if a is None or b is None:
        return "missing", ""
    if a == b:
        return "agree", "equal"
    if given:
        # Only the first given name is compared for similarity: siblings often share a
        # middle name, and people are called by their first one.
        a_first, b_first = a.split(" ", 1)[0], b.split(" ", 1)[0]
        if a_first == b_first:
            return "agree", "first given name equal"
        if b_first in _NICKNAME_INDEX.get(a_first, ()):
            return "agree", "nickname"
        pairs = [(a_first, b_first)]
    else:
        # Double family names ("Virtanen-Korhonen"): the best-matching parts count.
        pairs = [(x, y) for x in _SPLIT_RE.split(a) for y in _SPLIT_RE.split(b)]
    similarity, x, y = max((JaroWinkler.similarity(x, y), x, y) for x, y in pairs)
    if similarity >= 0.9 or (min(len(x), len(y)) >= 4 and OSA.distance(x, y) <= 1):
        return "partial", f"jaro-winkler {similarity:.2f}"
    a_parts, b_parts = set(_SPLIT_RE.split(a)), set(_SPLIT_RE.split(b))
    if a_parts <= b_parts or b_parts <= a_parts:
        return "partial", "one name contains the other"
    return "disagree", f"jaro-winkler {similarity:.2f}"


def _compare_text(a: str | None, b: str | None, threshold: float) -> tuple[Outcome, str]:
    if a is None or b is None:
        return "missing", ""
    if a == b:
        return "agree", "equal"
    similarity = JaroWinkler.similarity(a, b)
    if similarity >= threshold:
        return "partial", f"jaro-winkler {similarity:.2f}"
    return "disagree", f"jaro-winkler {similarity:.2f}"


def _one_digit_apart(a: str, b: str) -> str | None:
    if len(a) != len(b):
        return None
    diffs = [i for i in range(len(a)) if a[i] != b[i]]
    if len(diffs) == 1:
        return "one digit differs"
    if len(diffs) == 2 and diffs[1] == diffs[0] + 1 and a[diffs[0]] == b[diffs[1]] \
            and a[diffs[1]] == b[diffs[0]]:
        return "adjacent digits transposed"
    return None


def _date_digits(date: tuple[int, int, int]) -> str:
    return f"{date[0]:04d}{date[1]:02d}{date[2]:02d}"


def _compare_birth_date(
    a: tuple[int, int, int] | None, b: tuple[int, int, int] | None
) -> tuple[Outcome, str]:
    if a is None or b is None:
        return "missing", ""
    if a == b:
        return "agree", "equal"
    if a[0] == b[0] and a[1] == b[2] and a[2] == b[1]:
        return "partial", "day and month swapped"
    detail = _one_digit_apart(_date_digits(a), _date_digits(b))
    if detail:
        return "partial", detail
    return "disagree", ""


def _compare_house(a: NormalisedRecord, b: NormalisedRecord) -> tuple[Outcome, str]:
    if a.house_number is None or b.house_number is None:
        return "missing", ""
    if a.house_number == b.house_number:
        return "agree", "equal"
    if a.house_base == b.house_base:
        return "partial", "same building, staircase or apartment differs"
    return "disagree", ""


def _compare_postcode(a: str | None, b: str | None) -> tuple[Outcome, str]:
    if a is None or b is None:
        return "missing", ""
    if a == b:
        return "agree", "equal"
    detail = _one_digit_apart(a, b)
    if detail:
        return "partial", detail
    return "disagree", ""


def _compare_exact(a: str | None, b: str | None) -> tuple[Outcome, str]:
    if a is None or b is None:
        return "missing", ""
    return ("agree", "equal") if a == b else ("disagree", "")


def _compare_email(a: str | None, b: str | None) -> tuple[Outcome, str]:
    if a is None or b is None:
        return "missing", ""
    if a == b:
        return "agree", "equal"
    if a.split("@", 1)[0] == b.split("@", 1)[0]:
        return "partial", "same local part, different domain"
    return "disagree", ""


# --- scoring --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Contribution:
    """One field's part of a pair's score.

    ``weight`` is the natural-log likelihood ratio added to the pair's logit for this
    field's ``outcome`` (0 for "missing"). ``detail`` is a short explanation for people
    ("nickname", "day and month swapped", "jaro-winkler 0.93"); it never contains values.
    """

    field: str
    outcome: Outcome
    weight: float
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "outcome": self.outcome, "weight": self.weight,
                "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Score:
    """A scored pair: ``logit`` is exactly the sum of the contributions' weights and
    ``score = 1 / (1 + exp(-logit))`` in [0, 1]. Contributions follow :data:`FIELDS`."""

    score: float
    logit: float
    contributions: tuple[Contribution, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "logit": self.logit,
                "contributions": [c.to_dict() for c in self.contributions]}


@dataclass(frozen=True, slots=True)
class MatchPair:
    """A candidate pair at or above the possible-match threshold; ``str(a) < str(b)``."""

    a: Any
    b: Any
    score: float
    decision: Decision
    contributions: tuple[Contribution, ...] = field(default=(), compare=False, repr=False)

    def to_dict(self, explain: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"a": self.a, "b": self.b, "score": round(self.score, 6),
                               "decision": self.decision}
        if explain:
            out["contributions"] = [c.to_dict() for c in self.contributions]
        return out


def _logistic(logit: float) -> float:
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    z = math.exp(logit)
    return z / (1.0 + z)


def _names(
    a: NormalisedRecord, b: NormalisedRecord, weights: Mapping[str, Mapping[str, float]]
) -> tuple[tuple[Outcome, str], tuple[Outcome, str]]:
    given = _compare_name(a.given_ascii, b.given_ascii, given=True)
    family = _compare_name(a.family_ascii, b.family_ascii, given=False)
    if given[0] == "agree" and family[0] == "agree":
        return given, family
    # Given and family name written the wrong way round in one of the records. Either may
    # be the swapped one, so both crossed comparisons accept nicknames.
    x_given = _compare_name(a.given_ascii, b.family_ascii, given=True)
    x_family = _compare_name(a.family_ascii, b.given_ascii, given=True)
    if x_given[0] in ("agree", "partial") and x_family[0] in ("agree", "partial"):

        def total(pair: tuple[tuple[Outcome, str], tuple[Outcome, str]]) -> float:
            return weights["given_name"].get(pair[0][0], 0.0) + \
                weights["family_name"].get(pair[1][0], 0.0)

        if total((x_given, x_family)) > total((given, family)):
            note = "given and family names swapped"
            return (x_given[0], f"{note}; {x_given[1]}"), (x_family[0], f"{note}; {x_family[1]}")
    return given, family


def _as_normalised(record: NormalisedRecord | Mapping[str, Any]) -> NormalisedRecord:
    return record if isinstance(record, NormalisedRecord) else normalise_record(record)


def score_pair(
    a: NormalisedRecord | Mapping[str, Any],
    b: NormalisedRecord | Mapping[str, Any],
    weights: Mapping[str, Mapping[str, float]] | None = None,
) -> Score:
    """Score how likely two records describe the same person.

    ``a`` and ``b`` are raw input mappings or :class:`NormalisedRecord`. Every field of
    :data:`FIELDS` yields one :class:`Contribution` (in that order); a field missing on
    either side contributes outcome "missing" with weight 0. The result is symmetric
    (``score_pair(a, b)`` equals ``score_pair(b, a)``) and never raises for malformed
    field values. ``weights`` overrides :data:`WEIGHTS` (same shape).
    """
    ra, rb = _as_normalised(a), _as_normalised(b)
    w = WEIGHTS if weights is None else weights
    return _score(_compare_all(ra, rb, w), w)


def _compare_all(
    ra: NormalisedRecord, rb: NormalisedRecord, w: Mapping[str, Mapping[str, float]]
) -> list[tuple[str, Outcome, str]]:
    """(field, outcome, detail) for every field of :data:`FIELDS`, in order."""
    if str(ra.record_id) > str(rb.record_id):
        ra, rb = rb, ra  # comparisons are symmetric; this makes the details symmetric too
    given, family = _names(ra, rb, w)
    return [
        ("given_name", *given),
        ("family_name", *family),
        ("birth_date", *_compare_birth_date(ra.birth_date, rb.birth_date)),
        ("street", *_compare_text(ra.street_ascii, rb.street_ascii, 0.9)),
        ("house_number", *_compare_house(ra, rb)),
        ("postcode", *_compare_postcode(ra.postcode, rb.postcode)),
        ("city", *_compare_text(ra.city_ascii, rb.city_ascii, 0.9)),
        ("phone", *_compare_exact(ra.phone, rb.phone)),
        ("email", *_compare_email(ra.email, rb.email)),
        ("id_number", *_compare_exact(ra.id_number, rb.id_number)),
    ]


def _logit(outcomes: list[tuple[str, Outcome, str]], w: Mapping[str, Mapping[str, float]]) -> float:
    return math.fsum(w[name][outcome] for name, outcome, _ in outcomes if outcome != "missing")


def _score(outcomes: list[tuple[str, Outcome, str]], w: Mapping[str, Mapping[str, float]]) -> Score:
    contributions = tuple(
        Contribution(name, outcome, 0.0 if outcome == "missing" else w[name][outcome], detail)
        for name, outcome, detail in outcomes
    )
    logit = math.fsum(c.weight for c in contributions)
    return Score(score=_logistic(logit), logit=logit, contributions=contributions)


def decide(score: float, threshold_match: float, threshold_possible: float) -> Decision:
    """"match" if ``score >= threshold_match``, "possible" if ``>= threshold_possible``."""
    if score >= threshold_match:
        return "match"
    if score >= threshold_possible:
        return "possible"
    return "non-match"


# --- blocking -------------------------------------------------------------------------------

_PHONETIC_MAP = str.maketrans({"w": "v", "z": "s", "c": "k", "q": "k", "x": "k", "b": "p",
                               "d": "t", "g": "k"})
_VOWELS = frozenset("aeiouy")


def _phonetic(name: str) -> str:
    """A soundex-like key for Finnish names: first letter plus up to three consonant
    classes, vowels dropped and runs collapsed ("korhonen" and "korhnen" → "krhn")."""
    letters = [ch for ch in name.translate(_PHONETIC_MAP) if ch.isalpha()]
    if not letters:
        return ""
    key = [letters[0]]
    previous = letters[0]
    for ch in letters[1:]:
        if ch not in _VOWELS and ch != previous and ch != key[-1]:
            key.append(ch)
        previous = ch
        if len(key) == 4:
            break
    return "".join(key)


def blocking_keys(record: NormalisedRecord) -> set[tuple[str, ...]]:
    """The blocking keys of a record; two records become a candidate pair when they share
    one (in a block no larger than the cap). Keys are tagged tuples so that values of
    different kinds never collide."""
    keys: set[tuple[str, ...]] = set()
    if record.phone:
        keys.add(("phone", record.phone))
    if record.email:
        keys.add(("email", record.email))
    if record.id_number:
        keys.add(("id", record.id_number))
    given = record.given_ascii.split(" ", 1)[0] if record.given_ascii else None
    family = record.family_ascii
    if record.birth_date:
        y, m, d = record.birth_date
        # Birth date with day and month in either order, plus the initial of either name:
        # survives a swapped day/month, swapped names and a typo in one of the names.
        date = (str(y), *sorted((f"{m:02d}", f"{d:02d}")))
        for name in (given, family):
            if name:
                keys.add(("dob+initial", *date, name[0]))
    fam_key = _phonetic(family) if family else None
    if fam_key and record.postcode:
        keys.add(("fam+postcode", fam_key, record.postcode))
    if given and fam_key:
        keys.add(("names", *sorted((_phonetic(given), fam_key))))
    if record.postcode and record.house_base and record.street_ascii:
        keys.add(("address", record.postcode, record.street_ascii[:4], record.house_base))
    return keys


def candidate_pairs(
    records: Sequence[NormalisedRecord], block_cap: int = DEFAULT_BLOCK_CAP
) -> set[tuple[int, int]]:
    """Index pairs (i < j) into ``records`` that share a blocking key.

    Blocks with more than ``block_cap`` records are skipped (a common value such as a
    switchboard phone number says little and would cost quadratic time). Each pair appears
    once however many keys it shares.
    """
    blocks: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        for key in blocking_keys(record):
            blocks[key].append(index)
    pairs: set[tuple[int, int]] = set()
    for members in blocks.values():
        size = len(members)
        if size < 2 or size > block_cap:
            continue
        for x in range(size - 1):
            i = members[x]
            for y in range(x + 1, size):
                pairs.add((i, members[y]))
    return pairs


# --- matching -------------------------------------------------------------------------------

def _check_thresholds(threshold_match: float, threshold_possible: float) -> None:
    if not (0.0 < threshold_possible <= threshold_match <= 1.0):
        raise ValueError("thresholds must satisfy 0 < threshold_possible <= threshold_match <= 1")


def find_matches(
    records: Iterable[Mapping[str, Any] | NormalisedRecord],
    threshold_match: float = DEFAULT_THRESHOLD_MATCH,
    threshold_possible: float = DEFAULT_THRESHOLD_POSSIBLE,
    *,
    block_cap: int = DEFAULT_BLOCK_CAP,
    weights: Mapping[str, Mapping[str, float]] | None = None,
) -> list[MatchPair]:
    """Find the pairs of records that probably describe the same person.

    Contract: every returned pair has ``score >= threshold_possible`` and decision "match"
    (``score >= threshold_match``) or "possible"; ``str(a) < str(b)``; each unordered pair
    appears once; the list is sorted by (str(a), str(b)). Only pairs sharing a blocking
    key (in a block of at most ``block_cap`` records) are scored, so cost grows near
    linearly with the number of records. Record ids must be unique (ValueError otherwise)
    and thresholds must satisfy 0 < possible <= match <= 1 (ValueError).
    """
    _check_thresholds(threshold_match, threshold_possible)
    normalised = [_as_normalised(record) for record in records]
    seen: set[str] = set()
    for record in normalised:
        key = str(record.record_id)
        if key in seen:
            raise ValueError("duplicate record_id in input")
        seen.add(key)
    w = WEIGHTS if weights is None else weights
    result: list[MatchPair] = []
    for i, j in candidate_pairs(normalised, block_cap):
        ra, rb = normalised[i], normalised[j]
        outcomes = _compare_all(ra, rb, w)
        if _logistic(_logit(outcomes, w)) < threshold_possible:
            continue  # the common case: no need to build the explanation
        scored = _score(outcomes, w)
        if str(ra.record_id) > str(rb.record_id):
            ra, rb = rb, ra
        result.append(MatchPair(
            a=ra.record_id, b=rb.record_id, score=scored.score,
            decision=decide(scored.score, threshold_match, threshold_possible),
            contributions=scored.contributions,
        ))
    result.sort(key=lambda pair: (str(pair.a), str(pair.b)))
    return result


# --- command line ---------------------------------------------------------------------------

def read_jsonl(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Parse JSON Lines; blank lines are skipped. Raises ValueError naming the bad line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or record.get("record_id") is None:
            raise ValueError(f"line {number}: expected an object with a record_id")
        yield record


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError("must be in (0, 1]")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 2 bad input or usage)."""
    parser = argparse.ArgumentParser(
        prog="python -m services.identity.matching",
        description="Find probable duplicate person records in a JSON Lines file and print "
                    "the match and possible-match pairs as JSON Lines.",
    )
    parser.add_argument("input", metavar="INPUT.jsonl", help="records, one JSON object a line "
                        "('-' for standard input)")
    parser.add_argument("--threshold-match", type=_probability, default=DEFAULT_THRESHOLD_MATCH,
                        help="score at or above which a pair is a match "
                             f"(default {DEFAULT_THRESHOLD_MATCH})")
    parser.add_argument("--threshold-possible", type=_probability,
                        default=DEFAULT_THRESHOLD_POSSIBLE,
                        help="score at or above which a pair is a possible match "
                             f"(default {DEFAULT_THRESHOLD_POSSIBLE})")
    parser.add_argument("--block-cap", type=int, default=DEFAULT_BLOCK_CAP,
                        help=f"skip blocks larger than this (default {DEFAULT_BLOCK_CAP})")
    parser.add_argument("--explain", action="store_true",
                        help="add each pair's per-field contributions")
    args = parser.parse_args(argv)
    if args.threshold_possible > args.threshold_match:
        parser.error("--threshold-possible must not exceed --threshold-match")
    try:
        if args.input == "-":
            records = list(read_jsonl(sys.stdin))
        else:
            with open(args.input, encoding="utf-8") as handle:
                records = list(read_jsonl(handle))
        pairs = find_matches(records, args.threshold_match, args.threshold_possible,
                             block_cap=args.block_cap)
    except (OSError, ValueError) as exc:
        print(f"matching: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout
    for pair in pairs:
        out.write(json.dumps(pair.to_dict(explain=args.explain), ensure_ascii=False) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
