"""What a candidate edit must pass besides its score, and the decision over a query's ranked candidates.

The dense and lexical stages (routing/key_index.py) rank the edits a query may be about. Scoring over the
threshold is not enough: an edit answers a query only if also

1. the query names every subject word of the edit's matching wording (full coverage: "Harborlight Data
   Summit 2027" covers three of the four subject words of "... Data Summit 2026", and is another event);
2. the query's own question (its last sentence that names something) names nothing the edit's wordings
   never mention: "the Korvane K7 Max" is not "the Korvane K7", "Brightwater Electronics Canada" is not
   "Brightwater Electronics" (a name-like word: holding a digit, or capitalised);
3. the query asks what one of the edit's wordings asks, not another attribute of the same subject
   (routing/relation.py: "What time does X close?" is not "What time does X open?");
4. none of the edit's negatives (questions the operator said it must not answer) is at least as close to
   the query as the edit's best wording: a negative vetoes its own edit and no other;
5. a further check passes, when the caller gives one.

The first candidate over the threshold that passes answers; a refused one leaves the next its chance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from routing import lexical, relation
from routing.key_index import Candidate, Route, normalise

# (row of the batch, candidate) -> accepted? A second stage that needs the query's own features.
Verifier = Callable[[int, Candidate], bool]


@dataclass(frozen=True)
class Negatives:
    """An edit's negatives in one prompt format: content vectors and each one's subject words."""

    vectors: np.ndarray  # [n, D] normalised
    subjects: tuple[frozenset[str], ...]

    def score(self, query: np.ndarray, query_words: frozenset[str]) -> float:
        """The best negative's routing score for this query (cosine x coverage^2, as a wording's)."""
        cosines = self.vectors @ query
        return max(
            float(c) * lexical.coverage(s, query_words) ** 2 for c, s in zip(cosines, self.subjects, strict=True)
        )


@dataclass
class Gate:
    is_common: lexical.IsCommon
    wordings: dict[str, tuple[str, ...]] = field(default_factory=dict)  # edit id -> its prompt and rephrases
    words: dict[str, frozenset[str]] = field(default_factory=dict)  # edit id -> the words of all its wordings
    negatives: dict[str, Negatives] = field(default_factory=dict)  # edit id -> its negatives (this format)
    # The relation check's view of each edit's wordings, made when a query first reaches the edit (a startup
    # activating 100,000 edits does not pay for it).
    _relations: dict[str, tuple[relation.Wording, ...]] = field(default_factory=dict, repr=False)

    def add(self, edit_id: str, wordings: Sequence[str], negatives: Negatives | None = None) -> None:
        self.wordings[edit_id] = tuple(wordings)
        self.words[edit_id] = frozenset().union(*(lexical.words(w) for w in wordings))
        self._relations.pop(edit_id, None)
        if negatives is not None and len(negatives.vectors):
            self.negatives[edit_id] = negatives
        else:
            self.negatives.pop(edit_id, None)

    def forget(self, edit_id: str) -> None:
        self._relations.pop(edit_id, None)
        self.wordings.pop(edit_id, None)
        self.words.pop(edit_id, None)
        self.negatives.pop(edit_id, None)

    def refusal(
        self,
        query: np.ndarray,
        question: str,
        words: frozenset[str],
        candidate: Candidate,
        views: dict[frozenset[str], relation.QueryView] | None = None,
        asked_names: frozenset[str] | None = None,
    ) -> str | None:
        """Why this candidate may not answer the query (checks 1-4 of the module doc), or None. `views` and
        `asked_names` (the names of the question's own sentence): this query's readings, shared across its
        candidates."""
        if candidate.coverage < 1.0:
            return "subject"
        if asked_names is None:
            asked_names = self.asked_names(question)
        if not asked_names <= self.words.get(candidate.edit_id, frozenset()):
            return "name"
        if not relation.same_question(question, self._relation_view(candidate.edit_id), self.is_common, views):
            return "relation"
        negatives = self.negatives.get(candidate.edit_id)
        if negatives is not None and negatives.score(query, words) >= candidate.score:
            return "negative"
        return None

    def asked_names(self, question: str) -> frozenset[str]:
        """The name-like words of the question's own sentence (lexical.question_start)."""
        return lexical.names(question[lexical.question_start(question, self.is_common) :], self.is_common)

    def _relation_view(self, edit_id: str) -> tuple[relation.Wording, ...]:
        view = self._relations.get(edit_id)
        if view is None:
            view = tuple(relation.Wording.of(w, self.is_common) for w in self.wordings.get(edit_id, ()))
            self._relations[edit_id] = view
        return view

    def decide(
        self,
        query: np.ndarray,
        question: str,
        ranked: Sequence[Candidate],
        threshold: float,
        verify: Callable[[Candidate], bool] | None = None,
    ) -> Route:
        """The route of one query from its ranked candidates (best first, key_index.KeyIndex.ranked)."""
        if not ranked:
            return Route(None, None)
        query = normalise(query)[0]
        words = lexical.words(question)
        fired: Candidate | None = None
        vetoed: list[str] = []
        views: dict[frozenset[str], relation.QueryView] = {}
        asked_names: frozenset[str] | None = None
        for candidate in ranked:
            if candidate.score < threshold:
                break
            if asked_names is None and candidate.coverage >= 1.0:
                asked_names = self.asked_names(question)
            refused = self.refusal(query, question, words, candidate, views, asked_names)
            if refused is None and (verify is None or verify(candidate)):
                fired = candidate
                break
            vetoed.append(candidate.edit_id)
        lead = fired or ranked[0]
        others = [c for c in ranked if c.edit_id != lead.edit_id]
        runner_up = others[0] if others else None
        return Route(
            fired.edit_id if fired else None,
            lead.score,
            ranked[0].edit_id,
            runner_up.edit_id if runner_up else None,
            runner_up.score if runner_up else None,
            tuple(vetoed),
        )
