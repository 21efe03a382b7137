"""The complaint classifier in Finnish, Swedish and English, negations included, and its
accuracy on the project's labelled samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.social.classify import classify

FIXTURES = Path(__file__).parents[1] / "fixtures" / "social"


@pytest.mark.parametrize("text", [
    "@brand my order 12345 never arrived",
    "Worst service ever",
    "I'm not happy with this",
    "Tilaukseni ei ole vieläkään tullut",
    "Todella huonoa palvelua",
    "Sovellus ei toimi",
    "Min beställning har inte kommit",
    "Appen fungerar inte",
    "Usel service, ingen svarar",
])
def test_complaints_are_flagged_in_three_languages(text):
    result = classify(text)
    assert result.complaint and result.label == "complaint"
    assert result.score >= 0.5
    assert result.reasons


@pytest.mark.parametrize(("text", "language"), [
    ("not bad", "en"), ("Not bad at all!", "en"), ("ei huono", "fi"),
    ("Ei huono ollenkaan", "fi"), ("inte dåligt", "sv"), ("no problem, thanks", "en"),
])
def test_a_negated_complaint_word_is_not_a_complaint(text, language):
    result = classify(text, language)
    assert not result.complaint
    assert result.score < 0.5
    assert any(reason.endswith("(negated)") for reason in result.reasons)


@pytest.mark.parametrize(("text", "label"), [
    ("Kiitos nopeasta avusta!", "praise"), ("Thanks, great service", "praise"),
    ("Tack för hjälpen", "praise"), ("Milloin kesäale alkaa?", "question"),
    ("How do I change my address?", "question"), ("Just landed in Helsinki", "other"),
])
def test_praise_questions_and_other(text, label):
    assert classify(text).label == label


def test_the_platforms_language_tag_is_used_when_it_is_one_of_ours():
    assert classify("ei huono", "fi").language == "fi"
    assert classify("not bad", "en-GB").language == "en"
    assert classify("not bad", "ja").language == "en"  # falls back to detection


def test_empty_text_is_other():
    result = classify("")
    assert result.label == "other" and result.language is None


def test_negation_does_not_cross_a_clause_boundary():
    result = classify("Ei tullut ajoissa, mutta kiitos hyvästä palvelusta", "fi")
    assert "fi:kiitos" in result.reasons  # not negated by the "ei" of the first clause


def accuracy(name: str) -> float:
    rows = [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line]
    return sum(classify(row["text"]).label == row["label"] for row in rows) / len(rows)


def test_accuracy_on_the_development_sample():
    # the sample the lexicon was written against (52 messages, fi/sv/en): 100 %
    assert accuracy("labelled_messages.jsonl") >= 0.95


def test_accuracy_on_the_held_out_sample():
    # 30 messages written after the lexicon was frozen and never tuned on: 70 % (21/30).
    # A floor against regressions, not a target: the figure is reported in the issue note.
    assert accuracy("labelled_holdout.jsonl") >= 0.65
