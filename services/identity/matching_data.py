"""Labelled Finnish person records for developing and testing the record matcher.

:func:`generate` builds a population of households with Faker (locale ``fi_FI``) and a
seeded :class:`random.Random`, then writes one to several records per person the way
customer systems get them wrong: typos in names and streets, given and family name
swapped, nicknames (from :data:`services.identity.matching.NICKNAMES`), missing values
(absent, null or empty), phone numbers in every local format (``040 123 4567``,
``+358 40 123 4567``, ``0401234567``...), e-mail addresses in odd case, house numbers
written differently (``12 A 5``, ``12a5``, ``12 A as. 5``) or without the apartment,
postcode typos, birth dates with day and month swapped or one digit wrong, old addresses
and old phone numbers after a move, and hetus that are missing or mistyped.

The population is deliberately hard to separate: people share family names and cities
(family names follow Faker's real Finnish frequencies, cities are weighted by size),
households share address, landline, sometimes a family e-mail and the parents' mobile
numbers for children, some households have twins (same family name, address and birth
date, different given names), some a son named after his father, and some people have a
namesake (same given and family name) in the same city. None of those may be matched.

Same seed, same arguments, same Faker version → byte-identical output.

Command line::

    python -m services.identity.matching_data --records N --seed S --out DIR

writes ``DIR/records.jsonl`` (one record a line, shuffled) and ``DIR/truth.jsonl``
(``{"record_id", "entity_id"}`` a line).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import phonenumbers
from faker import Faker

from services.identity.matching import NICKNAMES, ascii_fold, names_equivalent

__all__ = ["Dataset", "Quality", "evaluate", "generate", "main", "write_dataset"]

# (city, first two postcode digits, landline area code, relative population)
TOWNS: tuple[tuple[str, str, str, float], ...] = (
    ("Helsinki", "00", "9", 12.0), ("Espoo", "02", "9", 5.5), ("Tampere", "33", "3", 4.5),
    ("Vantaa", "01", "9", 4.5), ("Oulu", "90", "8", 3.8), ("Turku", "20", "2", 3.6),
    ("Jyväskylä", "40", "14", 2.7), ("Kuopio", "70", "17", 2.3), ("Lahti", "15", "3", 2.3),
    ("Pori", "28", "2", 1.7), ("Kouvola", "45", "5", 1.6), ("Joensuu", "80", "13", 1.5),
    ("Lappeenranta", "53", "5", 1.4), ("Hämeenlinna", "13", "3", 1.3),
    ("Vaasa", "65", "6", 1.3), ("Seinäjoki", "60", "6", 1.2), ("Rovaniemi", "96", "16", 1.2),
    ("Mikkeli", "50", "15", 1.0), ("Kotka", "48", "5", 1.0), ("Salo", "24", "2", 1.0),
    ("Porvoo", "06", "19", 0.9), ("Kokkola", "67", "6", 0.9), ("Hyvinkää", "05", "19", 0.9),
    ("Lohja", "08", "19", 0.9), ("Järvenpää", "04", "9", 0.8), ("Rauma", "26", "2", 0.8),
    ("Kajaani", "87", "8", 0.7), ("Kirkkonummi", "02", "9", 0.7), ("Tuusula", "04", "9", 0.7),
    ("Kerava", "04", "9", 0.7), ("Nokia", "37", "3", 0.6), ("Savonlinna", "57", "15", 0.6),
    ("Kangasala", "36", "3", 0.6), ("Ylöjärvi", "33", "3", 0.6), ("Vihti", "03", "9", 0.5),
    ("Imatra", "55", "5", 0.5), ("Raahe", "92", "8", 0.4), ("Iisalmi", "74", "17", 0.4),
    ("Tornio", "95", "16", 0.4), ("Pietarsaari", "68", "6", 0.4), ("Äänekoski", "44", "14", 0.4),
    ("Valkeakoski", "37", "3", 0.4), ("Närpiö", "64", "6", 0.2), ("Ähtäri", "63", "6", 0.2),
    ("Kemi", "94", "16", 0.4), ("Forssa", "30", "3", 0.3), ("Heinola", "18", "3", 0.3),
    ("Uusikaupunki", "23", "2", 0.3), ("Loimaa", "32", "2", 0.3), ("Pieksämäki", "76", "15", 0.3),
)

EMAIL_DOMAINS = ("gmail.com", "hotmail.com", "outlook.com", "luukku.com", "suomi24.fi",
                 "kolumbus.fi", "elisanet.fi", "yahoo.com", "icloud.com", "saunalahti.fi")
MOBILE_PREFIXES = ("40", "41", "44", "45", "46", "50")
HETU_CHECK = "0123456789ABCDEFHJKLMNPRSTUVWXY"
# Formal names that have nicknames, by sex (the table itself is sex-neutral).
FEMALE_FORMAL = ("Johanna", "Katariina", "Elisabet", "Elisabeth", "Kristiina", "Margareeta",
                 "Helena", "Susanna", "Marjatta", "Anneli", "Annikki", "Emilia", "Sofia",
                 "Vilhelmiina", "Henriikka", "Maria", "Anna", "Aleksandra", "Eveliina")
MALE_FORMAL = tuple(name for name in NICKNAMES if name not in FEMALE_FORMAL)

_KEYBOARD = {
    "a": "sqz", "b": "vn", "c": "xv", "d": "sf", "e": "wr", "f": "dg", "g": "fh", "h": "gj",
    "i": "uo", "j": "hk", "k": "jl", "l": "kö", "m": "n", "n": "bm", "o": "ip", "p": "oå",
    "r": "et", "s": "ad", "t": "ry", "u": "yi", "v": "cb", "y": "tu", "ä": "öa", "ö": "lä",
}


@dataclass(slots=True)
class Address:
    street: str
    number: int
    staircase: str  # "" when the building has a single entrance
    apartment: int | None
    postcode: str
    city: str
    area_code: str


@dataclass(slots=True)
class Person:
    entity_id: str
    sex: str
    given_names: list[str]
    family_name: str
    birth_date: dt.date
    hetu: str
    address: Address
    phones: list[str]  # national significant numbers ("401234567"); first is the usual one
    email: str | None
    old_address: Address | None = None
    old_phone: str | None = None
    other_email: str | None = None


@dataclass(slots=True)
class Household:
    address: Address
    landline: str | None = None
    email: str | None = None
    members: list[Person] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Dataset:
    """Generated records (input format of the matcher) and the true entity of each.

    ``relations`` lists the pairs of distinct entities that are easy to confuse, as
    (entity_id, entity_id, kind) with kind "twins" (same family name, address and birth
    date), "junior" (a son with his father's given name at the same address), "household"
    (other members of one household) or "namesake" (same names, same city, elsewhere).
    """

    records: list[dict[str, Any]]
    truth: dict[str, str]  # record_id → entity_id
    relations: tuple[tuple[str, str, str], ...] = ()

    def true_pairs(self) -> set[tuple[str, str]]:
        """Every pair (a, b), a < b, of records that belong to the same entity."""
        by_entity: dict[str, list[str]] = defaultdict(list)
        for record_id, entity_id in self.truth.items():
            by_entity[entity_id].append(record_id)
        return {pair for ids in by_entity.values() for pair in combinations(sorted(ids), 2)}

    def without_id_numbers(self) -> Dataset:
        """The same records with every id_number removed."""
        stripped = [{k: v for k, v in r.items() if k != "id_number"} for r in self.records]
        return Dataset(stripped, self.truth, self.relations)


@dataclass(frozen=True, slots=True)
class Quality:
    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int

    def to_dict(self) -> dict[str, float | int]:
        return {"precision": round(self.precision, 5), "recall": round(self.recall, 5),
                "f1": round(self.f1, 5), "true_positives": self.true_positives,
                "false_positives": self.false_positives,
                "false_negatives": self.false_negatives}


def evaluate(predicted: Iterable[tuple[Any, Any]], truth: Dataset | dict[str, str]) -> Quality:
    """Pairwise precision, recall and F1 of predicted pairs against the true same-entity
    pairs (order within a pair and duplicates do not matter)."""
    truth_map = truth.truth if isinstance(truth, Dataset) else truth
    true_pairs = Dataset([], truth_map).true_pairs()
    predicted_set = {tuple(sorted((str(a), str(b)))) for a, b in predicted}
    tp = len(predicted_set & true_pairs)
    fp = len(predicted_set) - tp
    fn = len(true_pairs) - tp
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Quality(precision, recall, f1, tp, fp, fn)


class _Generator:
    def __init__(self, seed: int, id_number_rate: float) -> None:
        self.rng = random.Random(seed)
        self.fake = Faker("fi_FI")
        self.fake.seed_instance(seed)
        self.id_number_rate = id_number_rate
        self.people: list[Person] = []
        self.used_emails: set[str] = set()
        self.used_phones: set[str] = set()
        self.used_hetus: set[str] = set()
        self.relations: list[tuple[str, str, str]] = []
        self.town_weights = [town[3] for town in TOWNS]
        # Every town has a few postcodes and a pool of streets, each street in one postcode.
        self.streets: dict[str, list[tuple[str, str]]] = {}
        for city, prefix, _area, weight in TOWNS:
            postcodes = sorted({f"{prefix}{self.rng.randrange(100, 990, 10):03d}"
                                for _ in range(max(3, int(weight * 10)))})
            names = sorted({self.fake.street_name() for _ in range(max(8, int(weight * 25)))})
            self.streets[city] = [(name, self.rng.choice(postcodes)) for name in names]

    # --- population ---

    def address(self, town: tuple[str, str, str, float] | None = None) -> Address:
        city, _prefix, area, _weight = town or self.rng.choices(TOWNS, self.town_weights)[0]
        street, postcode = self.rng.choice(self.streets[city])
        if self.rng.random() < 0.6:  # block of flats
            staircase = self.rng.choice("ABCDEF") if self.rng.random() < 0.8 else ""
            apartment: int | None = self.rng.randint(1, 60)
        else:
            staircase, apartment = "", None
        return Address(street, self.rng.randint(1, 80), staircase, apartment, postcode, city,
                       area)

    def phone(self, area_code: str | None = None) -> str:
        while True:
            if area_code is None:
                number = self.rng.choice(MOBILE_PREFIXES) + str(self.rng.randint(1000000, 9999999))
            else:
                number = area_code + str(self.rng.randint(200000, 8999999))
            if number in self.used_phones:
                continue
            if phonenumbers.is_valid_number(phonenumbers.parse("+358" + number)):
                self.used_phones.add(number)
                return number

    def given_name(self, sex: str, avoid: Sequence[str] = ()) -> str:
        while True:
            if self.rng.random() < 0.3:
                name = self.rng.choice(FEMALE_FORMAL if sex == "F" else MALE_FORMAL)
            else:
                name = (self.fake.first_name_female() if sex == "F"
                        else self.fake.first_name_male())
            if not any(names_equivalent(name, other) or name[:3] == other[:3]
                       for other in avoid):
                return name

    def hetu(self, birth: dt.date, sex: str) -> str:
        sign = "-" if birth.year < 2000 else "A"
        while True:
            individual = self.rng.randrange(2, 899)
            if (individual % 2 == 1) != (sex == "M"):
                individual += 1
            digits = f"{birth.day:02d}{birth.month:02d}{birth.year % 100:02d}{individual:03d}"
            hetu = f"{digits[:6]}{sign}{digits[6:]}{HETU_CHECK[int(digits) % 31]}"
            if hetu not in self.used_hetus:
                self.used_hetus.add(hetu)
                return hetu

    def email(self, given: str, family: str, birth: dt.date) -> str:
        g, f = ascii_fold(given.lower()), ascii_fold(family.lower()).replace(" ", "")
        style = self.rng.randrange(6)
        local = [f"{g}.{f}", f"{g}{f}", f"{g[0]}{f}", f"{g}.{f}{birth.year % 100:02d}",
                 f"{g}{self.rng.randint(1, 999)}", f"{f}.{g}"][style]
        domain = self.rng.choice(EMAIL_DOMAINS)
        address = f"{local}@{domain}"
        counter = 1
        while address in self.used_emails:
            counter += 1
            address = f"{local}{counter}@{domain}"
        self.used_emails.add(address)
        return address

    def birth_date(self, first_year: int, last_year: int) -> dt.date:
        start = dt.date(first_year, 1, 1).toordinal()
        end = dt.date(last_year, 12, 31).toordinal()
        return dt.date.fromordinal(self.rng.randint(start, end))

    def person(self, household: Household, *, sex: str | None = None,
               given: str | None = None, family: str | None = None,
               birth: dt.date | None = None, avoid_given: Sequence[str] = (),
               child: bool = False) -> Person:
        sex = sex or self.rng.choice("FM")
        first = given or self.given_name(sex, avoid_given)
        names = [first]
        if self.rng.random() < 0.6:
            names.append(self.given_name(sex, [first]))
        family = family or self.fake.last_name()
        birth = birth or self.birth_date(1940, 2002)
        phones: list[str] = []
        if not child or self.rng.random() < 0.6:
            phones.append(self.phone())
        reachable = [m for m in household.members if m.phones]
        if not phones and reachable:
            # A child reached through the phone of the first family member who has one.
            phones.append(reachable[0].phones[0])
        if household.landline:
            phones.append(household.landline)
        if not phones:
            phones.append(self.phone())
        email = self.email(first, family, birth) if self.rng.random() < 0.85 else None
        person = Person(
            entity_id=f"e{len(self.people) + 1:07d}", sex=sex, given_names=names,
            family_name=family, birth_date=birth, hetu=self.hetu(birth, sex),
            address=household.address, phones=phones, email=email or household.email,
        )
        if self.rng.random() < 0.25:
            person.old_address = self.address()
        if self.rng.random() < 0.2:
            person.old_phone = self.phone()
        if self.rng.random() < 0.15:
            person.other_email = self.email(first, family, birth)
        self.people.append(person)
        household.members.append(person)
        return person

    def household(self) -> list[Person]:
        kind = self.rng.choices(
            ("single", "couple", "family", "twins", "junior", "namesake"),
            (0.36, 0.25, 0.3, 0.03, 0.02, 0.04),
        )[0]
        town = self.rng.choices(TOWNS, self.town_weights)[0]
        home = Household(self.address(town))
        if self.rng.random() < 0.2:
            home.landline = self.phone(home.address.area_code)
        if kind == "namesake":
            # Two unrelated people with the same name in the same city.
            first = self.person(home)
            other_home = Household(self.address(town))
            twin_year = first.birth_date.year + self.rng.choice((-1, 1)) * self.rng.randint(1, 25)
            other = self.person(other_home, sex=first.sex, given=first.given_names[0],
                                family=first.family_name,
                                birth=self.birth_date(min(max(twin_year, 1935), 2005),
                                                      min(max(twin_year, 1935), 2005)))
            self.relations.append((first.entity_id, other.entity_id, "namesake"))
            return home.members + other_home.members
        first = self.person(home, birth=None if kind in ("single", "couple")
                            else self.birth_date(1940, 1982))
        if kind == "single":
            return home.members
        sex = "M" if first.sex == "F" else "F"
        if self.rng.random() < 0.1:
            sex = first.sex
        shared_family = first.family_name if self.rng.random() < 0.7 else None
        offset = dt.timedelta(days=self.rng.randint(-3000, 3000))
        partner_birth = first.birth_date + offset
        if partner_birth.year > 2003:
            partner_birth = first.birth_date - abs(offset)
        partner = self.person(home, sex=sex, family=shared_family, birth=partner_birth,
                              avoid_given=[first.given_names[0]])
        if kind == "couple":
            return self.related(home)
        if self.rng.random() < 0.25:  # a family address the parents use too
            local = ascii_fold(first.family_name.lower()).replace(" ", "")
            home.email = self.email("perhe", local, first.birth_date)
            for parent in (first, partner):
                if parent.email is None:
                    parent.email = home.email
                elif self.rng.random() < 0.5:
                    parent.other_email = home.email
        family = first.family_name
        youngest = max(first.birth_date, partner.birth_date)
        first_year = min(youngest.year + 20, 2006)
        last_year = max(first_year, min(youngest.year + 38, 2008))
        children_born = [
            self.birth_date(first_year, last_year) for _ in range(self.rng.randint(1, 3))
        ]
        taken = [first.given_names[0], partner.given_names[0]]
        if kind == "twins":
            children_born = [children_born[0], children_born[0]]
        for index, born in enumerate(children_born):
            if kind == "junior" and index == 0:
                father = first if first.sex == "M" else partner
                child = self.person(home, sex=father.sex, given=father.given_names[0],
                                    family=family, birth=born, child=True)
            else:
                child = self.person(home, family=family, birth=born, avoid_given=taken,
                                    child=True)
            taken.append(child.given_names[0])
        return self.related(home)

    def related(self, home: Household) -> list[Person]:
        for a, b in combinations(home.members, 2):
            if a.birth_date == b.birth_date:
                kind = "twins"
            elif a.given_names[0] == b.given_names[0]:
                kind = "junior"
            else:
                kind = "household"
            self.relations.append((a.entity_id, b.entity_id, kind))
        return home.members

    # --- records ---

    def typo(self, text: str) -> str:
        if len(text) < 3:
            return text
        rng = self.rng
        position = rng.randrange(1, len(text)) if rng.random() < 0.9 else 0
        chars = list(text)
        kind = rng.randrange(4)
        lower = chars[position].lower()
        if kind == 0 and lower in _KEYBOARD:  # neighbouring key
            replacement = rng.choice(_KEYBOARD[lower])
            chars[position] = replacement.upper() if chars[position].isupper() else replacement
        elif kind == 1 and len(chars) > 4:  # dropped letter
            del chars[position]
        elif kind == 2:  # doubled letter
            chars.insert(position, chars[position].lower())
        elif position + 1 < len(chars):  # transposed letters
            chars[position], chars[position + 1] = chars[position + 1], chars[position]
        else:
            chars[position] = rng.choice("aeiklnst")
        return "".join(chars)

    def case(self, text: str) -> str:
        roll = self.rng.random()
        if roll < 0.05:
            return text.upper()
        if roll < 0.09:
            return text.lower()
        if roll < 0.12:
            return f" {text}  "
        return text

    def phone_text(self, number: str) -> str:
        mobile = number[:2] in MOBILE_PREFIXES
        # Mobile prefixes and the area codes 13-19 have two digits, other area codes one.
        cut = 2 if mobile or number[0] == "1" else 1
        area, rest = number[:cut], number[cut:]
        spaced = f"{rest[:3]} {rest[3:]}"
        return self.rng.choice((
            f"0{area} {rest}", f"0{area}-{rest}", f"0{area}{rest}", f"0{area} {spaced}",
            f"+358 {area} {spaced}", f"+358{area}{rest}", f"00358 {area} {rest}",
            f"(0{area}) {spaced}",
        ))

    def house_text(self, address: Address) -> str:
        number, stair, apartment = address.number, address.staircase, address.apartment
        if apartment is None:
            return str(number) if not stair else f"{number} {stair}"
        if self.rng.random() < 0.08:  # apartment left out
            return f"{number} {stair}".strip()
        if stair:
            return self.rng.choice((
                f"{number} {stair} {apartment}", f"{number}{stair}{apartment}",
                f"{number} {stair} as. {apartment}", f"{number} {stair.lower()} {apartment}",
                f"{number}{stair} {apartment}", f"{number} {stair} {apartment}",
            ))
        return self.rng.choice((f"{number} as {apartment}", f"{number} as. {apartment}",
                                f"{number} asunto {apartment}"))

    def postcode_text(self, postcode: str) -> str:
        roll = self.rng.random()
        if roll < 0.03:
            digits = list(postcode)
            i = self.rng.randrange(5)
            if self.rng.random() < 0.5 and i < 4:
                digits[i], digits[i + 1] = digits[i + 1], digits[i]
            else:
                digits[i] = str((int(digits[i]) + self.rng.randint(1, 9)) % 10)
            return "".join(digits)
        if roll < 0.05:
            return f"FI-{postcode}"
        return postcode

    def birth_text(self, birth: dt.date) -> str:
        roll = self.rng.random()
        if roll < 0.04 and birth.day != birth.month:  # "1980-25-03" when the day is > 12
            return f"{birth.year:04d}-{birth.day:02d}-{birth.month:02d}"
        if roll < 0.07:
            text = birth.isoformat()
            for _ in range(20):
                i = self.rng.choice((2, 3, 5, 6, 8, 9))
                candidate = text[:i] + str(self.rng.randrange(10)) + text[i + 1:]
                try:
                    if candidate != text and dt.date.fromisoformat(candidate):
                        return candidate
                except ValueError:
                    continue
        return birth.isoformat()

    def email_text(self, email: str) -> str:
        roll = self.rng.random()
        if roll < 0.25:
            local, domain = email.split("@")
            return ".".join(p.capitalize() for p in local.split(".")) + "@" + domain.capitalize()
        if roll < 0.3:
            return email.upper()
        if roll < 0.32:
            return f" {email} "
        if roll < 0.34:  # mistyped
            local, domain = email.split("@")
            return f"{self.typo(local)}@{domain}"
        return email

    def record(self, person: Person, record_id: str) -> dict[str, Any]:
        rng = self.rng
        given = person.given_names[0]
        if rng.random() < 0.12 and given in NICKNAMES:
            given = rng.choice(NICKNAMES[given])
        elif rng.random() < 0.12 and len(person.given_names) > 1:
            given = " ".join(person.given_names)
        family = person.family_name
        if rng.random() < 0.08:
            given = self.typo(given)
        if rng.random() < 0.08:
            family = self.typo(family)
        if rng.random() < 0.05:
            given, family = ascii_fold(given), ascii_fold(family)
        if rng.random() < 0.015:
            family = f"{family}-{self.fake.last_name()}"  # double name after marriage
        if rng.random() < 0.04:
            given, family = family, given
        address = person.address
        if person.old_address is not None and rng.random() < 0.4:
            address = person.old_address
        phone = person.phones[0]
        if len(person.phones) > 1 and rng.random() < 0.25:
            phone = rng.choice(person.phones[1:])
        if person.old_phone is not None and rng.random() < 0.4:
            phone = person.old_phone
        email = person.email
        if person.other_email is not None and rng.random() < 0.4:
            email = person.other_email
        street = address.street
        roll = rng.random()
        if roll < 0.04:
            street = self.typo(street)
        elif roll < 0.07:
            for suffix, short in (("katu", "k."), ("tie", "t."), ("polku", "p."),
                                  ("kuja", "kj."), ("väylä", "vl.")):
                if street.endswith(suffix):
                    street = street[: -len(suffix)] + short
                    break
        city = address.city
        roll = rng.random()
        if roll < 0.1:
            city = city.upper()
        elif roll < 0.13:
            city = ascii_fold(city)
        hetu = person.hetu
        if rng.random() < 0.01:
            i = rng.choice((0, 1, 2, 3, 7, 8, 9))
            hetu = hetu[:i] + str((int(hetu[i]) + 1) % 10) + hetu[i + 1:]
        values: dict[str, tuple[Any, float]] = {  # value, probability it is missing
            "given_name": (self.case(given), 0.03),
            "family_name": (self.case(family), 0.03),
            "birth_date": (self.birth_text(person.birth_date), 0.08),
            "street": (street, 0.07),
            "house_number": (self.house_text(address), 0.07),
            "postcode": (self.postcode_text(address.postcode), 0.05),
            "city": (city, 0.05),
            "phone": (self.phone_text(phone), 0.12),
            "email": (self.email_text(email) if email else None, 0.25),
            "id_number": (hetu.lower() if rng.random() < 0.05 else hetu,
                          1.0 - self.id_number_rate),
        }
        record: dict[str, Any] = {"record_id": record_id}
        for name, (value, missing) in values.items():
            if value is None or rng.random() < missing:
                roll = rng.random()
                if roll < 0.5:
                    record[name] = None
                elif roll < 0.85:
                    continue  # key absent
                else:
                    record[name] = ""
            else:
                record[name] = value
        return record


def generate(n_records: int, seed: int, *, id_number_rate: float = 0.6) -> Dataset:
    """Generate ``n_records`` records of a synthetic Finnish population.

    Deterministic for a given (n_records, seed, id_number_rate). ``id_number_rate`` is the
    share of records that carry a hetu. Record ids are ``r`` + zero-padded numbers (their
    string order is their numeric order); records are shuffled so that duplicates are not
    adjacent.
    """
    if n_records < 0:
        raise ValueError("n_records must not be negative")
    gen = _Generator(seed, id_number_rate)
    plan: list[Person] = []
    while len(plan) < n_records:
        for person in gen.household():
            copies = gen.rng.choices((1, 2, 3, 4, 5), (0.45, 0.25, 0.15, 0.1, 0.05))[0]
            plan.extend([person] * copies)
    plan = plan[:n_records]
    gen.rng.shuffle(plan)
    entities = {person.entity_id for person in plan}
    width = max(6, len(str(n_records)))
    records: list[dict[str, Any]] = []
    truth: dict[str, str] = {}
    for index, person in enumerate(plan, 1):
        record_id = f"r{index:0{width}d}"
        records.append(gen.record(person, record_id))
        truth[record_id] = person.entity_id
    relations = tuple(r for r in gen.relations if r[0] in entities and r[1] in entities)
    return Dataset(records, truth, relations)


def write_dataset(dataset: Dataset, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``records.jsonl`` and ``truth.jsonl`` into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records_path, truth_path = out / "records.jsonl", out / "truth.jsonl"
    with records_path.open("w", encoding="utf-8") as handle:
        for record in dataset.records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    with truth_path.open("w", encoding="utf-8") as handle:
        for record_id, entity_id in dataset.truth.items():
            handle.write(json.dumps({"record_id": record_id, "entity_id": entity_id}) + "\n")
    return records_path, truth_path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m services.identity.matching_data",
        description="Generate labelled Finnish person records for the record matcher.",
    )
    parser.add_argument("--records", type=int, required=True, help="number of records")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--id-number-rate", type=float, default=0.6,
                        help="share of records with a hetu (default 0.6)")
    parser.add_argument("--no-id-numbers", action="store_true",
                        help="leave id_number out of every record")
    args = parser.parse_args(argv)
    if args.records < 0:
        parser.error("--records must not be negative")
    if not 0.0 <= args.id_number_rate <= 1.0:
        parser.error("--id-number-rate must be between 0 and 1")
    dataset = generate(args.records, args.seed, id_number_rate=args.id_number_rate)
    if args.no_id_numbers:
        dataset = dataset.without_id_numbers()
    records_path, truth_path = write_dataset(dataset, args.out)
    print(f"wrote {len(dataset.records)} records to {records_path} and {truth_path}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
