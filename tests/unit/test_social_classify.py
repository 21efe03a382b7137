"""The complaint classifier in Finnish, Swedish and English, negations included, and its
accuracy on the training messages and on the separate held-out sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.social.classify import classify
from services.social.classify_training import TRAINING

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


def held_out() -> list[dict]:
    path = FIXTURES / "labelled_holdout.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_accuracy_on_the_training_messages():
    # the messages the lexicon was written against and the model is trained on: 150/150
    hits = sum(classify(text).label == label for text, label in TRAINING)
    assert hits / len(TRAINING) >= 0.95


def test_training_and_held_out_messages_do_not_overlap():
    assert not {text for text, _ in TRAINING} & {row["text"] for row in held_out()}


def test_accuracy_and_complaint_precision_recall_on_the_held_out_sample():
    # 75 messages (fi 33, en 30, sv 12) written before the lexicon was extended and never
    # trained or tuned on. Measured: accuracy 68/75 (90.7 %); complaint precision 24/24,
    # recall 24/31; question 18/19, 18/18; praise 16/16, 16/16; other 10/16, 10/10.
    # Floors against regressions, not targets: the figures are reported in the issue note.
    rows = held_out()
    predicted = [classify(row["text"]).label for row in rows]
    pairs = list(zip(predicted, rows, strict=True))
    assert sum(p == row["label"] for p, row in pairs) / len(rows) >= 0.88
    hits = sum(p == row["label"] == "complaint" for p, row in pairs)
    assert hits / predicted.count("complaint") >= 0.95
    assert hits / sum(row["label"] == "complaint" for row in rows) >= 0.75


@pytest.mark.parametrize(("text", "label"), [
    ("Couldn't be happier with the service", "praise"),
    ("No complaints at all", "praise"),
    ("Still no refund after three weeks", "complaint"),
    ("Lähetitte taas väärän koon", "complaint"),
    ("Toimitatteko Ruotsiin", "question"),
])
def test_negation_aggravation_and_finnish_clitic_questions(text, label):
    assert classify(text).label == label


def test_the_model_decides_only_where_the_lexicon_found_nothing():
    with_cue = classify("Worst service ever")
    assert not any(reason.startswith("model:") for reason in with_cue.reasons)
    fallback = classify("Paketti on ollut matkalla kolme viikkoa", "fi")
    assert fallback.complaint and fallback.reasons[-1].startswith("model:complaint(")
    assert fallback.score >= 0.5
