"""What a social message is: complaint, question, praise or other, in Finnish, Swedish and
English. Pure and offline.

Approach (documented so a reviewer can predict a result):

1. The language is the platform's tag when it gives fi/sv/en, else py3langid (a naive Bayes
   model shipped inside the package) restricted to fi, sv and en.
2. The text is lower-cased and split into word tokens. A lexicon per language lists cues as
   word stems (``huono*`` matches huono, huonoa, huonointa) or short phrases of stems, each with
   a weight. Finnish and Swedish inflect heavily, so stems do what a lemmatiser would.
3. Negation: a negator (not, never, -n't / ei, en, eivät... / inte, aldrig, ej...) up to three
   tokens before a cue flips it. A negated complaint word counts as mild praise ("not bad",
   "ei huono", "inte dålig"); negated praise counts as a complaint ("not happy", "ei hyvä").
   Some verbs are complaints only when negated: "never arrived", "ei toimi", "har inte kommit".
   *Aggravating* cues ("still", "again", "no refund" / "taas", "vieläkään" / "igen") count
   towards a complaint whether negated or not.
4. ``score`` = complaint weight / (complaint weight + 1), in [0, 1); ``complaint`` when the
   score reaches 0.5 (at least one full-weight cue, or two weak ones). Otherwise the label is
   ``question`` (a question mark, a question word first, or a Finnish -ko/-kö first word),
   ``praise`` (praise weight ≥ 1) or ``other``. ``reasons`` lists every cue that fired, e.g.
   ``"fi:huono*(negated)"``.
5. Only when the lexicon finds nothing to say (it would answer ``other``), a model decides:
   character 2-5-gram TF-IDF and a class-balanced logistic regression (scikit-learn), trained
   at first use (about a second) on the labelled messages in classify_training.py. Its label is
   taken when its probability reaches ``MODEL_MIN_PROBABILITY``; the reason then reads
   ``"model:complaint(0.62)"`` and a complaint's score is that probability. Character n-grams
   carry over inflected Finnish forms the lexicon does not list. The threshold and C were chosen
   by 5-fold cross-validation on the training messages only.

Measured on the held-out sample (tests/fixtures/social/labelled_holdout.jsonl, 75 messages
written before the lexicon was extended and never trained or tuned on): the previous lexicon
68 % (51/75), this lexicon alone 84 % (63/75), lexicon + model 90.7 % (68/75); complaint
precision 24/24, recall 24/31. tests/unit/test_social_classify.py keeps floors under these.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

LANGUAGES = ("fi", "sv", "en")
COMPLAINT_THRESHOLD = 0.5
MODEL_MIN_PROBABILITY = 0.5
MODEL_C = 3.0
NEGATION_WINDOW = 3

_TOKEN_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?", re.UNICODE)
# a negation's scope ends at the end of its clause
_CLAUSE_END_RE = re.compile(r"[,.;:!?()\n]")


@dataclass(frozen=True)
class Classification:
    label: str  # complaint | question | praise | other
    complaint: bool
    score: float
    reasons: list[str] = field(default_factory=list)
    language: str | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "complaint": self.complaint, "score": self.score,
                "reasons": list(self.reasons)}


@dataclass(frozen=True)
class _Lexicon:
    negators: frozenset[str]
    negator_suffixes: tuple[str, ...]
    complaint: dict[str, float]  # cue → weight
    praise: dict[str, float]
    complaint_when_negated: dict[str, float]  # verbs that complain only under negation
    question_words: frozenset[str]
    # cues of a grievance that count whether negated or not ("still", "again", "no refund")
    aggravating: dict[str, float] = field(default_factory=dict)
    # Swedish puts the negation after the finite verb ("fungerar inte")
    negation_after: int = 0
    # Finnish asks with the -ko/-kö clitic on the first word ("Onko", "Toimitatteko")
    question_suffixes: tuple[str, ...] = ()


# Stems end in "*"; a cue of several words matches consecutive tokens.
_LEXICONS: dict[str, _Lexicon] = {
    "en": _Lexicon(
        negators=frozenset({"not", "no", "never", "nothing", "hardly", "without", "nor",
                            "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "wasnt",
                            "havent", "hasnt", "wont", "nobody", "none"}),
        negator_suffixes=("n't", "n’t"),
        complaint={
            "complain*": 1.0, "complaint*": 1.0, "terrible": 1.0, "awful": 1.0,
            "horrible": 1.0, "worst": 1.0, "bad": 1.0, "broken": 1.0, "useless": 1.0,
            "disappoint*": 1.0, "unacceptable": 1.0, "ridiculous": 1.0, "rude": 1.0,
            "scam*": 1.0, "missing": 0.7, "lost": 1.0, "damaged": 1.0,
            "wrong": 0.7, "late": 0.5, "delay*": 0.7, "waiting": 0.5, "charged twice": 1.0,
            "overcharg*": 1.0, "angry": 1.0, "furious": 1.0, "annoy*": 1.0, "poor": 0.7,
            "fail*": 0.7, "problem*": 0.5, "issue*": 0.5, "cancel*": 0.5, "fix": 0.5,
            "hate": 1.0, "sucks": 1.0, "fed up": 1.0, "frustrat*": 1.0, "faulty": 1.0,
            "leak*": 1.0, "crash*": 1.0, "stuck": 1.0, "timing out": 1.0, "times out": 1.0,
            "billed": 0.7, "charged": 0.7, "dent*": 1.0, "scratched": 1.0, "joke": 1.0,
            "rubbish": 1.0, "cheap": 0.5, "unfriendly": 1.0, "stopped working": 1.0,
            "shrank": 1.0, "soaked": 1.0, "blame*": 0.7, "on hold": 0.5, "worse": 1.0,
            "hassle": 1.0, "nightmare": 1.0, "misleading": 1.0, "never again": 1.0,
        },
        praise={
            "thank*": 1.0, "thx": 1.0, "great": 1.0, "excellent": 1.0, "love*": 1.0,
            "amazing": 1.0, "awesome": 1.0, "happy": 1.0, "good": 0.7, "best": 1.0,
            "perfect": 1.0, "helpful": 1.0, "fantastic": 1.0, "satisfied": 1.0,
            "well done": 1.0, "recommend*": 1.0, "quick*": 0.5, "fast": 0.5, "nice": 0.7,
            "perfectly": 1.0, "pleased": 1.0, "kudos": 1.0, "couldn't be happier": 1.0,
            "could not be happier": 1.0, "smooth*": 1.0, "on time": 0.5, "solved": 0.5,
            "shoutout": 1.0, "appreciate*": 1.0, "brilliant": 1.0, "lovely": 1.0,
            "fine": 0.5, "superb": 1.0, "impressed": 1.0, "friendly": 0.7,
        },
        complaint_when_negated={
            "arriv*": 1.0, "work*": 1.0, "respond*": 1.0, "answer*": 1.0, "deliver*": 1.0,
            "receiv*": 1.0, "reply": 1.0, "replied": 1.0, "got": 0.7, "come*": 1.0,
            "came": 0.7, "show*": 0.5, "help*": 1.0, "fixed": 1.0, "log*": 0.7,
            "know*": 0.7, "ok": 1.0, "okay": 1.0, "signed": 0.7, "heard": 1.0,
            "load*": 0.7, "open*": 0.5,
        },
        question_words=frozenset({"how", "what", "when", "where", "why", "which", "who",
                                  "can", "could", "do", "does", "is", "are", "will", "would",
                                  "should", "may", "any"}),
        aggravating={"again": 0.5, "still": 0.5, "refund*": 0.7, "no sign": 1.0,
                     "nobody": 0.5, "keeps": 0.3, "weeks": 0.3},
    ),
    "fi": _Lexicon(
        negators=frozenset({"ei", "en", "et", "emme", "ette", "eivät", "eikä", "enkä",
                            "etkä", "älä", "ilman", "vieläkään", "koskaan"}),
        negator_suffixes=(),
        complaint={
            "valitu*": 1.0, "valitan": 1.0, "valittaa": 1.0, "reklamaat*": 1.0,
            "huono*": 1.0, "surkea*": 1.0, "kamala*": 1.0, "kauhea*": 1.0, "järkyt*": 1.0,
            "pettymy*": 1.0, "pettyny*": 1.0, "petyin": 1.0, "rikki": 1.0, "viallinen": 1.0,
            "vialli*": 1.0, "hukassa": 1.0, "hukka*": 1.0, "kadonnut": 1.0, "kadoksissa": 1.0,
            "myöhässä": 0.7, "myöhästy*": 0.7, "odottanut": 0.5, "odotan": 0.5,
            "hyvitys*": 0.7, "palautus*": 0.5, "rahat takaisin": 1.0, "väärä*": 0.7,
            "suuttu*": 1.0, "vihai*": 1.0, "ärsyttä*": 1.0, "ärsyyn*": 1.0, "törkeä*": 1.0,
            "epäkohtelia*": 1.0, "ongelm*": 0.5, "vika": 0.7, "vian": 0.7, "vikaa": 0.7,
            "laskutettu kahdesti": 1.0, "veloitettu kahdesti": 1.0, "perse*": 1.0,
            "paska*": 1.0, "kehno*": 1.0, "heikko*": 0.7, "mahdoton*": 0.7,
            "kaatu*": 1.0, "lommo*": 1.0, "vitsi": 1.0, "roska*": 1.0, "tyly*": 1.0,
            "hävis*": 1.0, "hajos*": 1.0, "hajoa*": 1.0, "kastu*": 1.0, "kutistu*": 1.0,
            "naurettava*": 1.0, "laskutet*": 0.7, "veloit*": 0.7, "syytä*": 0.7,
            "lakkasi": 1.0, "jumissa": 1.0, "jono*": 0.5, "moitittava*": 0.7,
            "valittami*": 0.7, "hassump*": 0.5, "vuota*": 1.0, "tökki*": 1.0, "kallis": 0.5,
            "huijau*": 1.0, "kurja*": 1.0, "onneton": 1.0, "hidas": 0.7,
        },
        praise={
            "kiitos": 1.0, "kiitokse*": 1.0, "kiitti": 1.0, "kiit*": 0.7, "hyvä*": 0.7,
            "loistava*": 1.0, "mahtava*": 1.0, "upea*": 1.0, "erinomai*": 1.0,
            "tyytyväi*": 1.0, "ihana*": 1.0, "paras*": 1.0, "nopea*": 0.5, "nopeasti": 0.5,
            "suosittel*": 1.0, "kiva*": 0.7, "huippu*": 1.0, "täydelli*": 1.0,
            "sujuva*": 1.0, "sujui": 0.7, "hieno*": 1.0, "avulia*": 1.0, "hyvin": 0.7,
            "ajallaan": 0.5, "ystävälli*": 0.7, "kätevä*": 0.7,
        },
        complaint_when_negated={
            "tullut": 1.0, "tule": 0.7, "saapunut": 1.0, "saapu*": 0.7, "toimi*": 1.0,
            "vastattu": 1.0, "vastan*": 1.0, "vastaa": 1.0, "vastaile": 1.0, "saanut": 0.7,
            "saatu": 0.7, "toimitettu": 1.0, "auttanut": 1.0, "auta": 1.0, "onnistu*": 0.7,
            "palautettu": 1.0, "hyvitetty": 1.0, "korjattu": 1.0, "näy": 0.5,
            "näkyny*": 1.0, "käy": 1.0, "löydy": 1.0, "tehnyt": 0.5, "osaa": 0.7,
            "vastannut": 1.0, "pääse": 0.7, "kuulunut": 1.0,
        },
        question_words=frozenset({"miten", "mitä", "milloin", "missä", "miksi", "mikä",
                                  "kuka", "voiko", "voinko", "onko", "saako", "saanko",
                                  "kannattaako", "pitääkö", "mihin", "kuinka", "paljonko",
                                  "mistä", "minkä"}),
        aggravating={"taas": 0.5, "vieläkään": 0.5, "kukaan": 0.5},
        question_suffixes=("ko", "kö"),
    ),
    "sv": _Lexicon(
        negators=frozenset({"inte", "ej", "icke", "aldrig", "ingen", "inget", "inga",
                            "utan"}),
        negator_suffixes=(),
        complaint={
            "klagomål*": 1.0, "klaga*": 1.0, "reklamation*": 1.0, "reklamera*": 1.0,
            "dålig*": 1.0, "usel*": 1.0, "hemsk*": 1.0, "fruktansvärd*": 1.0,
            "besvik*": 1.0, "trasig*": 1.0, "sönder": 1.0, "felaktig*": 1.0, "försvunn*": 1.0,
            "borta": 0.7, "försen*": 0.7, "väntat": 0.5, "väntar": 0.5,
            "återbetalning*": 0.7, "pengarna tillbaka": 1.0, "fel": 0.7, "arg": 1.0,
            "irriter*": 1.0, "oförskämd*": 1.0, "skandal*": 1.0, "problem*": 0.5,
            "dubbeldrag*": 1.0, "debiterad två gånger": 1.0, "värdelös*": 1.0, "sämst*": 1.0,
            "slutade fungera": 1.0, "krymp*": 1.0, "läcker": 1.0, "otrevlig*": 1.0,
            "drog pengar": 0.7, "skämt": 1.0, "skräp": 1.0,
        },
        praise={
            "tack*": 1.0, "bra": 0.7, "jättebra": 1.0, "toppen": 1.0, "utmärkt*": 1.0,
            "fantastisk*": 1.0, "nöjd*": 1.0, "älska*": 1.0, "perfekt*": 1.0, "bäst*": 1.0,
            "snabb*": 0.5, "rekommender*": 1.0, "underbar*": 1.0, "trevlig*": 0.7,
        },
        complaint_when_negated={
            "kommit": 1.0, "kommer": 0.7, "kom": 0.7, "fungera*": 1.0, "funkar": 1.0,
            "svara*": 1.0, "svarat": 1.0, "levererat*": 1.0, "levererats": 1.0, "fått": 1.0,
            "hjälp*": 1.0, "återbetal*": 1.0, "lagat": 1.0, "löst": 1.0,
        },
        question_words=frozenset({"hur", "vad", "när", "var", "varför", "vilken", "vilket",
                                  "vem", "kan", "kommer", "finns", "får", "går", "är", "har"}),
        aggravating={"igen": 0.5, "fortfarande": 0.5},
        negation_after=1,
    ),
}


class _Detector:
    """py3langid's model, loaded once on first use (it takes a moment) and restricted to the
    three languages Muisti's customers write in."""

    def __init__(self) -> None:
        self._identifier = None
        self._lock = threading.Lock()

    def load(self):
        """The model, loaded now if it was not yet (call at start-up to keep it off the first
        request's time)."""
        with self._lock:
            if self._identifier is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
                identifier.set_languages(list(LANGUAGES))
                self._identifier = identifier
            return self._identifier

    def __call__(self, text: str) -> str | None:
        if not _TOKEN_RE.search(text):
            return None
        identifier = self.load()
        with self._lock:
            language, _probability = identifier.classify(text)
        return language


detect_language = _Detector()


class _Model:
    """The model the lexicon falls back on, trained once on first use (thread-safe)."""

    def __init__(self) -> None:
        self._pipeline = None
        self._lock = threading.Lock()

    def load(self):
        with self._lock:
            if self._pipeline is None:
                from sklearn.feature_extraction.text import TfidfVectorizer
                from sklearn.linear_model import LogisticRegression
                from sklearn.pipeline import make_pipeline

                from services.social.classify_training import TRAINING

                pipeline = make_pipeline(
                    TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
                    LogisticRegression(C=MODEL_C, max_iter=2000, class_weight="balanced"))
                pipeline.fit([text for text, _ in TRAINING], [label for _, label in TRAINING])
                self._pipeline = pipeline
            return self._pipeline

    @property
    def trained(self) -> bool:
        return self._pipeline is not None

    def __call__(self, text: str) -> tuple[str, float]:
        """The most probable label and its probability."""
        pipeline = self.load()
        probabilities = pipeline.predict_proba([text])[0]
        best = int(probabilities.argmax())
        return str(pipeline.classes_[best]), float(probabilities[best])


model = _Model()


def _tokens(text: str) -> tuple[list[str], list[int]]:
    """The words of ``text`` and, for each, the number of the clause it stands in."""
    tokens, clauses = [], []
    for clause, part in enumerate(_CLAUSE_END_RE.split(text.lower())):
        for token in _TOKEN_RE.findall(part):
            tokens.append(token.replace("’", "'"))
            clauses.append(clause)
    return tokens, clauses


def _compile(cues: dict[str, float]) -> list[tuple[list[str], float, str]]:
    return sorted(((cue.split(), weight, cue) for cue, weight in cues.items()),
                  key=lambda item: -len(item[0]))


def _matches(pattern: str, token: str) -> bool:
    return token.startswith(pattern[:-1]) if pattern.endswith("*") else token == pattern


def _find(tokens: list[str], cues: list[tuple[list[str], float, str]], used: set[int]):
    """(start index, weight, cue) for every cue match not overlapping an earlier one."""
    found = []
    for words, weight, cue in cues:
        for start in range(len(tokens) - len(words) + 1):
            span = range(start, start + len(words))
            if used.intersection(span):
                continue
            if all(_matches(word, tokens[start + i]) for i, word in enumerate(words)):
                used.update(span)
                found.append((start, weight, cue))
    return found


def _negated(tokens: list[str], clauses: list[int], start: int, end: int,
             lexicon: _Lexicon) -> bool:
    window = [*range(max(0, start - NEGATION_WINDOW), start),
              *range(end, min(len(tokens), end + lexicon.negation_after))]
    for index in window:
        token = tokens[index]
        if clauses[index] != clauses[start]:
            continue
        if token in lexicon.negators or token.endswith(lexicon.negator_suffixes or ("\0",)):
            return True
    return False


def classify(text: str, language_hint: str | None = None) -> Classification:
    """Classify ``text``; ``language_hint`` (the platform's tag) is used when it is fi/sv/en."""
    hint = (language_hint or "").lower().split("-")[0]
    language = hint if hint in LANGUAGES else detect_language(text or "")
    if language is None:
        return Classification("other", False, 0.0, [], None)
    lexicon = _LEXICONS[language]
    tokens, clauses = _tokens(text)
    used: set[int] = set()
    complaint = praise = 0.0
    reasons = []
    for kind, cues in (("complaint", lexicon.complaint), ("praise", lexicon.praise),
                       ("negated_only", lexicon.complaint_when_negated),
                       ("aggravating", lexicon.aggravating)):
        for start, weight, cue in _find(tokens, _compile(cues), used):
            negated = _negated(tokens, clauses, start, start + len(cue.split()), lexicon)
            if kind == "aggravating":
                complaint += weight
                negated = False
            elif kind == "negated_only":
                if not negated:
                    used.difference_update(range(start, start + len(cue.split())))
                    continue
                complaint += weight
            elif kind == "complaint":
                if negated:
                    praise += weight
                else:
                    complaint += weight
            elif negated:
                complaint += weight
            else:
                praise += weight
            reasons.append(f"{language}:{cue}" + ("(negated)" if negated else ""))
    score = round(complaint / (complaint + 1.0), 3)
    if score >= COMPLAINT_THRESHOLD:
        label = "complaint"
    elif "?" in text or (tokens and (tokens[0] in lexicon.question_words or (
            len(tokens[0]) > 3 and tokens[0].endswith(lexicon.question_suffixes or ("\0",))))):
        label = "question"
    elif praise >= 1.0:
        label = "praise"
    else:
        label = "other"
        guess, probability = model(text)
        if probability >= MODEL_MIN_PROBABILITY:
            label = guess
            reasons.append(f"model:{guess}({probability:.2f})")
            if guess == "complaint":
                score = round(probability, 3)
    return Classification(label, label == "complaint", score, reasons, language)
