"""The relation check: does a query ask what an edit's wording asks, once their subject matches?

The dense key and the subject words say *what* a question is about, not *which attribute* of it it asks:
"What time does the Lisbon office open?" and "... close?" are one word apart and score 0.98. Learnt
similarity (sentence encoders, the edited layer's states) ranks such minimal pairs above real
paraphrases (studies/routing_precision/README.md), so the check is lexical and precise, and misses
paraphrases rather than capture near misses (an operator adds a missed wording as a rephrase):

1. relation words: every content word of the query outside the edit's subject words (stemmed; function
   words aside) occurs in one of the edit's wordings, or names the answer type that wording asks for
   ("venue" in a where-question, "price" in a how-much question);
2. answer type: the two questions' wh-words ask for compatible things (who / when / where / how many ...);
3. direction: two statements that start with their subject agree on voice ("X follows" is not "X is
   followed by");
4. something asked: the query shares a relation word with the wording, or both ask for a known kind of
   answer ("Tell me about the Lisbon office" names the subject and asks nothing the edit answers);

or, whatever the words: the query and a wording of the edit are two known phrasings of one relation
(routing/data/relation_templates.json: subject-masked templates clustered from CounterFact records no
evaluation uses, linked by ROME's real paraphrases, and from hand-written attribute questions).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import snowballstemmer

from routing import lexical

_STEM = snowballstemmer.stemmer("english")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
# Words that frame a question in English without saying what it asks (question words are judged by answer
# type instead, check 2).
_FUNCTION_TEXT = """
a an the this that these those there here it its it's they them their theirs he him his she her hers we us
our you your yours i me my mine what what's whats which who who's whom whose when where where's why how
how's is are was were be been being am do does did done doing has have had having can could will would
shall should may might must of in on at by for with about to from into onto over under as than then and or
but if so not no nor any some all each every much many more most other such only own same too very just
also please tell let let's give show know find say said get got currently current now today still ever
yet again s t
"""
FUNCTION_WORDS = frozenset(_FUNCTION_TEXT.split())

TIME, CLOCK, DATE = "time", "clock", "date"  # "when" asks for a time of day or a date: TIME fits either
PLACE, PERSON, NUMBER, AMOUNT, DURATION = "place", "person", "number", "amount", "duration"
# The answer type a "what/which <noun>" question asks for, by noun.
_WH_NOUN = {
    **dict.fromkeys(("time", "hour"), CLOCK),
    **dict.fromkeys(("date", "day", "year", "month", "week"), DATE),
    **dict.fromkeys(("place", "city", "town", "country", "location", "address", "venue", "floor", "level"), PLACE),
    **dict.fromkeys(("person", "people"), PERSON),
    **dict.fromkeys(("price", "cost", "fee", "rate"), AMOUNT),
}
# Stems that name an answer type: in a question of that type they do not say which attribute it asks.
TYPE_WORDS = {
    **dict.fromkeys(("time", "hour"), CLOCK),
    **dict.fromkeys(("date", "day", "year", "month"), DATE),
    **dict.fromkeys(("place", "locat", "address", "venu"), PLACE),
    **dict.fromkeys(("person", "name"), PERSON),
    **dict.fromkeys(("number", "count"), NUMBER),
    **dict.fromkeys(("price", "cost", "fee", "rate", "charg"), AMOUNT),
}
_WHAT_NOUN = r"(?:what|which)(?:'s|\s+is|\s+are|\s+was)?\s+(?:(?:the|a|an)\s+)?(\w+)"  # "what is the <noun>"
_WH = re.compile(
    rf"\b(?:(who|whom|whose)|(when)|(where)|(how\s+many)|(how\s+much)|(how\s+long)|{_WHAT_NOUN})\b", re.IGNORECASE
)
_WEIGHT = re.compile(r"\bhow\s+much\b.*\b(weigh|weighs|hold|holds|carry|carries)\b", re.IGNORECASE)
_PASSIVE = re.compile(r"\b(?:is|are|was|were|be|been|being)\s+(?:\w+ly\s+)?\w+(?:ed|en|wn|ne|de)\s+by\b", re.I)
TEMPLATES = Path(__file__).parent / "data" / "relation_templates.json"


def relation_words(text: str, subject: frozenset[str]) -> frozenset[str]:
    """Stems of the text's content words outside `subject` (case-folded words)."""
    out = set()
    for w in _WORD.findall(text):
        f = w.casefold()
        if f in FUNCTION_WORDS or f in subject or (f.endswith("'s") and f[:-2] in subject):
            continue
        out.add(_stem(f))
    return frozenset(out)


@functools.lru_cache(maxsize=1 << 16)
def _stem(word: str) -> str:
    """Snowball's stem, remembered: a query's words are stemmed against each candidate's relation (route_cost.py:
    stemming was most of the gate's time)."""
    return str(_STEM.stemWord(word))


def answer_type(text: str) -> str | None:
    """What kind of answer the question's first wh-word asks for (None: a statement, or not known)."""
    m = _WH.search(text)
    if m is None:
        return None
    who, when, where, many, much, long_, noun = m.groups()
    if who:
        return PERSON
    if when:
        return TIME
    if where:
        return PLACE
    if many:
        return NUMBER
    if much:
        return None if _WEIGHT.search(text) else AMOUNT
    if long_:
        return DURATION
    return _WH_NOUN.get((noun or "").lower())


def compatible(a: str | None, b: str | None) -> bool:
    """Two answer types one question could have (an unknown type is compatible with anything)."""
    return a is None or b is None or a == b or {a, b} <= {TIME, CLOCK} or {a, b} <= {TIME, DATE}


def subject_first_voice(text: str, subject: frozenset[str]) -> bool | None:
    """For a statement that starts with its subject: is it passive? (None: not such a statement)."""
    if _WH.search(text) or not subject:
        return None
    words = [w.casefold() for w in re.findall(r"\w+", text)]
    if not words or not (words[0] in subject or (len(words) > 1 and words[1] in subject)):
        return None
    return _PASSIVE.search(text) is not None


def asked(text: str, subject: frozenset[str], is_common: lexical.IsCommon) -> str:
    """The part of a query that asks about the subject: its sentences that name a subject word ("Hi there!",
    a preamble or "Answer in one word." ask nothing about it); without any, the question sentence."""
    body = text.rstrip()
    cuts = [0, *lexical.sentence_cuts(body), len(body)]
    sentences = [body[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if body[a:b].strip()]
    naming = [t for t in sentences if lexical.words(t) & subject]
    return " ".join(t.strip() for t in naming) if naming else text[lexical.question_start(text, is_common) :]


def masked(text: str, subject: frozenset[str], is_common: lexical.IsCommon) -> str | None:
    """The question sentence with the span of its subject words replaced by {}, folded (None: no subject)."""
    text = text[lexical.question_start(text, is_common) :].strip()
    tokens = [(m.group(0).casefold(), m.span(), m.group(0).casefold() in subject) for m in re.finditer(r"\w+", text)]
    runs = _subject_runs(tokens)
    if not runs:
        return None
    start, end = max(runs, key=lambda r: r[1] - r[0])  # the subject's name, not a word elsewhere ("on Saturdays")
    return re.sub(r"\s+", " ", (text[:start] + "{}" + text[end:]).casefold()).strip(" ?.!")


# Lower-case particles inside a person's or place's name ("Olympe de Gouges", "Ludwig van Beethoven"). Not
# "of" or "the": "the CEO of Acme" names a role and a company, and the role is what the question asks.
NAME_PARTICLES = frozenset(
    ["de", "da", "di", "du", "del", "della", "der", "den", "van", "von", "la", "le", "y", "bin", "al", "el"]
)


def _subject_runs(tokens: list[tuple[str, tuple[int, int], bool]]) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of consecutive subject words (name particles may join a run)."""
    runs: list[tuple[int, int]] = []
    open_run = False
    pending: tuple[int, int] | None = None  # a particle that joins the run if a subject word follows it
    for word, (start, end), named in tokens:
        if named and open_run:
            runs[-1] = (runs[-1][0], end)
        elif named:
            runs.append((start, end))
        elif open_run and word in NAME_PARTICLES and pending is None:
            pending = (start, end)
            continue
        open_run, pending = named, None
    return runs


@functools.cache
def known_relations() -> dict[str, int]:
    """Subject-masked template -> its relation's cluster id (routing/data/relation_templates.json)."""
    clusters = json.loads(TEMPLATES.read_text())["clusters"]
    return {template: i for i, members in enumerate(clusters) for template in members}


@dataclass(frozen=True)
class Wording:
    """One wording of an edit (its prompt or a rephrase), as the relation check reads it."""

    text: str
    subject: frozenset[str]  # its subject words (routing/lexical.py)
    words: frozenset[str]  # relation_words(text, subject)
    answer: str | None  # answer_type(text)
    voice: bool | None  # subject_first_voice(text, subject)
    relation: int | None  # its known relation's cluster, if its template is known

    @classmethod
    def of(cls, text: str, is_common: lexical.IsCommon) -> Wording:
        subject = lexical.subject_words(text, is_common)
        template = masked(text, subject, is_common)
        relation = known_relations().get(template) if template is not None else None
        return cls(
            text,
            subject,
            relation_words(text, subject),
            answer_type(text),
            subject_first_voice(text, subject),
            relation,
        )


@dataclass(frozen=True)
class QueryView:
    """What the relation check reads from a query once its subject is known."""

    words: frozenset[str]
    answer: str | None
    voice: bool | None
    relation: int | None


def query_view(query: str, subject: frozenset[str], is_common: lexical.IsCommon) -> QueryView:
    question = asked(query, subject, is_common)
    template = masked(question, subject, is_common)
    return QueryView(
        relation_words(question, subject),
        answer_type(question),
        subject_first_voice(question, subject),
        known_relations().get(template) if template is not None else None,
    )


def same_question(
    query: str,
    wordings: tuple[Wording, ...],
    is_common: lexical.IsCommon,
    views: dict[frozenset[str], QueryView] | None = None,
) -> bool:
    """Whether the query asks what one of the edit's wordings asks (the module doc's checks). `views`: the
    query's views by subject, kept by the caller across one query's candidates (mostly one subject's edits,
    its other attributes, each checked in turn)."""
    subject = frozenset().union(*(w.subject for w in wordings))
    views = {} if views is None else views
    view = views.get(subject)
    if view is None:
        view = views[subject] = query_view(query, subject, is_common)
    words, answer, voice, relation = view.words, view.answer, view.voice, view.relation
    known = frozenset().union(*(w.words for w in wordings))
    # A terse wording ("founding year of X?") asks what the edit's other wordings ask: its prompt's answer type.
    edit_answer = next((w.answer for w in wordings if w.answer is not None), None)
    for w in wordings:
        if relation is not None and relation == w.relation:
            return True
        kind = w.answer or edit_answer
        if not compatible(answer, kind) or (voice is not None and w.voice is not None and voice != w.voice):
            continue
        unexplained = {u for u in words - known if not (kind and u in TYPE_WORDS and compatible(TYPE_WORDS[u], kind))}
        # A query that names the subject and nothing the wording asks ("Tell me about the Lisbon office") asks
        # something else, unless both ask for the same kind of answer ("Where is DevCon?").
        unasked = not (words & w.words) and not (answer and kind)
        vague = bool(w.words) and (unasked or (answer is None and kind is not None and words < w.words))
        if not unexplained and not vague:
            return True
    return False
