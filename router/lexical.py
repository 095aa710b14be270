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
    found = [(m.group(0), m.group(0).casefold(), _starts_sentence(text, m.start())) for m in WORD.finditer(text)]
    names = {
        f
        for w, f, first in found
        if any(c.isdigit() for c in w)
        # capitalised inside a sentence is a name even when common ("The Game", "New World"), bar the
        # articles and prepositions of titles; at a sentence's start only an uncommon one is ("Which": no)
        or (w[0].isupper() and len(w) > 1 and f not in TITLE_STOPWORDS and (not first or not is_common(f)))
    }
    if names:
        return frozenset(names)
    return frozenset(f for _, f, _ in found if not is_common(f))


def _starts_sentence(text: str, start: int) -> bool:
    before = text[:start].rstrip()
    return not before or before[-1] in ".?!:\"'(\n"


def coverage(subject: frozenset[str], query: frozenset[str]) -> float:
    """Fraction of the subject words the query contains (1.0 when there is nothing to cover)."""
    if not subject:
        return 1.0
    return len(subject & query) / len(subject)
