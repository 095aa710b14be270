"""Semantic key index: which active edit, if any, a query is about (FAISS + subject words).

Two stages per query (see docs/benchmarks.md, "How routing decides"):
1. dense: the query's content vector (router/content.py) against every key's by cosine, top `k` (FAISS);
2. lexical: each candidate's cosine is multiplied by the square of the share of the key's subject words
   that the query contains (router/lexical.py). The best product fires its edit if >= the threshold.

A key is one prompt of an edit (its own, or a rephrase the operator gave) in one prompt format. The index
is ID-mapped: each key row gets a stable int64 id, so removing an edit never renumbers the others.
Revoking an edit removes its keys: the index is then exactly what it would be had the edit never been made.

The "flat" kind scans every key stored as float16 (half the memory traffic of float32: 0.7 ms instead of
1.3-1.5 ms per query at 10,000 keys, docs/benchmarks.md) to find the `k` candidates, then scores those
candidates exactly from float32 copies: every decision and reported similarity is the float32 cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np

from router.lexical import coverage


@dataclass(frozen=True)
class Route:
    edit_id: str | None
    similarity: float | None  # best routing score seen (cosine x coverage^2), reported even below threshold


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class _Key:
    edit_id: str
    subject: frozenset[str]


@dataclass
class KeyIndex:
    dim: int
    kind: str = "flat"  # "flat" (exact) or "hnsw" (approximate, for very many keys)
    _index: faiss.IndexIDMap2 = field(init=False, repr=False)
    _keys: dict[int, _Key] = field(default_factory=dict, init=False, repr=False)  # key id -> owner
    _order: dict[str, int] = field(default_factory=dict, init=False, repr=False)  # edit id -> recency
    _key_ids: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _vectors: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)  # exact [dim] copies
    _next_id: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind == "flat":
            inner = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        elif self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"unknown index kind {self.kind!r} (use 'flat' or 'hnsw')")
        self._index = faiss.IndexIDMap2(inner)

    def __len__(self) -> int:
        """Keys held."""
        return int(self._index.ntotal)

    @property
    def nbytes(self) -> int:
        """Vector memory: the searched codes (float16 when flat) plus the exact float32 copies."""
        return len(self) * self.dim * (2 if self.kind == "flat" else 4) + len(self._vectors) * self.dim * 4

    def __contains__(self, edit_id: str) -> bool:
        return edit_id in self._key_ids

    def edit_ids(self) -> set[str]:
        return set(self._key_ids)

    def add(self, edit_id: str, contents: np.ndarray, subjects: Sequence[frozenset[str]], order: int) -> None:
        """`contents` [n, dim]: one content vector per key; `subjects`: each key's subject words."""
        if edit_id in self._key_ids:
            raise KeyError(f"edit {edit_id} already has keys in the index")
        contents = normalise(contents)
        if contents.shape[1] != self.dim:
            raise ValueError(f"key dimension {contents.shape[1]} != index dimension {self.dim}")
        if len(subjects) != len(contents):
            raise ValueError(f"{len(subjects)} subject word sets for {len(contents)} keys")
        ids = np.arange(self._next_id, self._next_id + len(contents), dtype=np.int64)
        self._next_id += len(contents)
        self._index.add_with_ids(contents, ids)
        self._key_ids[edit_id] = ids
        self._order[edit_id] = order
        for key_id, subject, vector in zip(ids.tolist(), subjects, contents, strict=True):
            self._keys[key_id] = _Key(edit_id, subject)
            self._vectors[key_id] = vector

    def remove(self, edit_id: str) -> bool:
        """Forget an edit's keys; False if it had none here."""
        ids = self._key_ids.pop(edit_id, None)
        if ids is None:
            return False
        self._index.remove_ids(faiss.IDSelectorBatch(ids))
        for key_id in ids.tolist():
            del self._keys[key_id]
            del self._vectors[key_id]
        del self._order[edit_id]
        return True

    def search(
        self,
        queries: np.ndarray,
        query_words: Sequence[frozenset[str]],
        threshold: float,
        k: int = 8,
        tie_margin: float = 1e-3,
    ) -> list[Route]:
        """Per query: the edit whose key scores best (cosine x subject coverage^2), if >= `threshold`.

        Keys scoring within `tie_margin` of the best are the same fact edited more than once: the newest
        edit wins, so revoking it hands the query back to the older one.
        """
        queries = normalise(queries)
        if len(query_words) != len(queries):
            raise ValueError(f"{len(query_words)} word sets for {len(queries)} queries")
        if self._index.ntotal == 0:
            return [Route(None, None) for _ in range(len(queries))]
        _, ids = self._index.search(queries, min(k, int(self._index.ntotal)))
        routes: list[Route] = []
        for query, row_ids, qwords in zip(queries, ids, query_words, strict=True):
            candidates = [int(i) for i in row_ids if i >= 0]
            cosines = np.stack([self._vectors[i] for i in candidates]) @ query  # exact float32 [k]
            scored = [
                (float(c) * coverage(self._keys[i].subject, qwords) ** 2, self._keys[i].edit_id)
                for c, i in zip(cosines, candidates, strict=True)
            ]
            best = max(score for score, _ in scored)
            if best < threshold:
                routes.append(Route(None, best))
                continue
            tied = {edit_id for score, edit_id in scored if score >= best - tie_margin}
            routes.append(Route(max(tied, key=self._order.__getitem__), best))
        return routes
