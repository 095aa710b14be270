"""The lexical half of routing: which words name an edit's subject, and does a query mention them.

Dense keys of one model carry the question's template far more than its subject, so "Who is the CEO of
Globex?" sits next to an edit of "Who is the CEO of Acme?". Words settle it: an edit's subject words
are its prompt's name-like words (holding a digit; capitalised inside a sentence, bar title stop words
such as "The" and "of"; capitalised at a sentence's start and not a common word); a query covers them
when it contains them. Words are compared whole and case-folded, so "Porsche 924" does not cover
"Porsche 911" (digits tokenize one by one, tokens would match).

"Common" comes from the tokenizer, not a word list: a word whose lower-case form (with its leading space)
is one vocabulary token of low id was merged early by BPE, i.e. is frequent ("what", "the", "city").
"""

from __future__ import annotations

import re
from collections.abc import Callable

WORD = re.compile(r"\w+", re.UNICODE)
# A sentence boundary: a newline, or . ! ? then whitespace (a closing quote or bracket may come between).
SENTENCE_BOUNDARY = re.compile(r"\n|[.!?][\"'\u201d\u2019)\]]*(?=\s)")
# A full stop after these ends no sentence: initials ("G.L. Defer", "J. Douglas") and common abbreviations.
ABBREVIATIONS = frozenset(
    [
        "st",
        "mr",
        "mrs",
        "ms",
        "dr",
        "jr",
        "sr",
        "prof",
        "gen",
        "col",
        "lt",
        "sgt",
        "rev",
        "mt",
        "ft",
        "no",
        "vs",
        "etc",
        "inc",
        "ltd",
        "co",
        "corp",
        "dept",
        "approx",
        "est",
        "fig",
        "vol",
    ]
)


def sentence_cuts(text: str) -> list[int]:
    """Where sentences begin after the first: the end of each SENTENCE_BOUNDARY that is not an abbreviation."""
    cuts = []
    for m in SENTENCE_BOUNDARY.finditer(text):
        if text[m.start()] == ".":
            before = re.search(r"(\w+)$", text[: m.start()])
            word = before.group(1).casefold() if before else ""
            if len(word) == 1 or word in ABBREVIATIONS:
                continue
        cuts.append(m.end())
    return cuts


IsCommon = Callable[[str], bool]  # takes a case-folded word
# Lucene's English stop words: capitalised inside titles ("The Lord of The Rings") without naming anything.
TITLE_STOPWORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
        "",
    }
)


def words(text: str) -> frozenset[str]:
    """Every word of a query, case-folded."""
    return frozenset(w.casefold() for w in WORD.findall(text))


def subject_words(text: str, is_common: IsCommon) -> frozenset[str]:
    """The words a query must contain to be about this prompt's subject.

    Name-like words when the prompt has any; otherwise its uncommon words (a lower-case fact such as
    "what does a rhinoplasty cost?"); an empty set only for a prompt of common words alone.
    """
    # capitalised inside a sentence is a name even when common ("The Game", "New World"), bar the articles and
    # prepositions of titles; at a sentence's start only an uncommon one is ("Which": no)
    named = names(text, is_common)
    if named:
        return named
    return frozenset(f for f in (m.group(0).casefold() for m in WORD.finditer(text)) if not is_common(f))


def names(text: str, is_common: IsCommon) -> frozenset[str]:
    """The name-like words of a text (case-folded): holding a digit, or capitalised (bar title stop words;
    at a sentence's start, only an uncommon word)."""
    found = [(m.group(0), m.group(0).casefold(), _starts_sentence(text, m.start())) for m in WORD.finditer(text)]
    return frozenset(
        f
        for w, f, first in found
        if any(c.isdigit() for c in w)
        or (w[0].isupper() and len(w) > 1 and f not in TITLE_STOPWORDS and (not first or not is_common(f)))
    )


def question_start(text: str, is_common: IsCommon) -> int:
    """Where the question's own sentence begins: the last sentence that names something, with the ones after it.

    A question often comes after a sentence about something else ("I'm flying out tomorrow. When does the
    Lisbon office open?"; CounterFact's paraphrases: "...goes still and dies. Danielle Darrieux, a native"),
    and pooled over the whole text the routing vector is mostly that other sentence. A last sentence that names
    nothing ("What is the twin city of Wellington? It is") keeps the sentence before it. Returns a character
    offset at a boundary (the whitespace after . ! ? or the newline), or 0 for the whole text."""
    body = text.rstrip()
    for cut in reversed(sentence_cuts(body)):
        if names(body[cut:], is_common):
            return cut
    return 0


def _starts_sentence(text: str, start: int) -> bool:
    before = text[:start].rstrip()
    return not before or before[-1] in ".?!:\"'(\n"


def coverage(subject: frozenset[str], query: frozenset[str]) -> float:
    """Fraction of the subject words the query contains (1.0 when there is nothing to cover)."""
    if not subject:
        return 1.0
    return len(subject & query) / len(subject)
