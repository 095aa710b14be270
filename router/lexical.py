"""The lexical half of routing: which words name an edit's subject, and does a query mention them.

Dense keys of one model carry the question's template far more than its subject, so "Who is the CEO of
Globex?" sits next to an edit of "Who is the CEO of Acme?". Words settle it: an edit's subject words
are its prompt's name-like words (capitalised or holding a digit, and not a common word); a query covers
them when it contains them. Words are compared whole and case-folded, so "Porsche 924" does not cover
"Porsche 911" (digits tokenize one by one, tokens would match).

"Common" comes from the tokenizer, not a word list: a word whose lower-case form (with its leading space)
is one vocabulary token of low id was merged early by BPE, i.e. is frequent ("what", "the", "city").
"""

from __future__ import annotations

import re
from collections.abc import Callable

WORD = re.compile(r"\w+", re.UNICODE)

IsCommon = Callable[[str], bool]  # takes a case-folded word


def words(text: str) -> frozenset[str]:
    """Every word of a query, case-folded."""
    return frozenset(w.casefold() for w in WORD.findall(text))


def subject_words(text: str, is_common: IsCommon) -> frozenset[str]:
    """The words a query must contain to be about this prompt's subject.

    Name-like words when the prompt has any; otherwise its uncommon words (a lower-case fact such as
    "what does a rhinoplasty cost?"); an empty set only for a prompt of common words alone.
    """
    found = [(w, w.casefold()) for w in WORD.findall(text)]
    names = {f for w, f in found if (w[0].isupper() or any(c.isdigit() for c in w)) and not is_common(f)}
    if names:
        return frozenset(names)
    return frozenset(f for _, f in found if not is_common(f))


def coverage(subject: frozenset[str], query: frozenset[str]) -> float:
    """Fraction of the subject words the query contains (1.0 when there is nothing to cover)."""
    if not subject:
        return 1.0
    return len(subject & query) / len(subject)
