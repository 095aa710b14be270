"""Semantic key index: cosine nearest-key search over every active edit's keys (FAISS).

Keys live in a routing space: the raw hidden state minus a `center` (the mean state of generic prompts,
which removes the direction every state shares), then L2-normalised, so inner product = cosine. The
index is ID-mapped: each key row gets a stable int64 id, so removing an edit never renumbers the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np


@dataclass(frozen=True)
class Route:
    edit_id: str | None
    similarity: float | None  # best similarity seen, also reported when below threshold for debugging


def normalise(keys: np.ndarray) -> np.ndarray:
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    if keys.ndim == 1:
        keys = keys[None, :]
    norms = np.linalg.norm(keys, axis=1, keepdims=True)
    return keys / np.maximum(norms, 1e-12)


@dataclass
class KeyIndex:
    dim: int
    kind: str = "flat"  # "flat" (exact) or "hnsw" (approximate, for very many keys)
    center: np.ndarray | None = None  # subtracted from keys and queries before normalising
    _index: faiss.IndexIDMap2 = field(init=False, repr=False)
    _owner: dict[int, str] = field(default_factory=dict, init=False, repr=False)  # key id -> edit id
    _order: dict[str, int] = field(default_factory=dict, init=False, repr=False)  # edit id -> recency
    _key_ids: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _revoked: set[str] = field(default_factory=set, init=False, repr=False)  # edits whose keys only block
    _next_id: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind == "flat":
            inner = faiss.IndexFlatIP(self.dim)
        elif self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"unknown index kind {self.kind!r} (use 'flat' or 'hnsw')")
        self._index = faiss.IndexIDMap2(inner)

    def __len__(self) -> int:
        """Keys of active edits (blockers of revoked edits not counted)."""
        return int(self._index.ntotal) - self.revoked_key_count()

    def __contains__(self, edit_id: str) -> bool:
        """Is the edit active here?"""
        return edit_id in self._key_ids and edit_id not in self._revoked

    def edit_ids(self) -> set[str]:
        """Active edits."""
        return set(self._key_ids) - self._revoked

    def revoked_ids(self) -> set[str]:
        return set(self._revoked)

    def is_revoked(self, edit_id: str) -> bool:
        return edit_id in self._revoked

    def revoked_key_count(self) -> int:
        return sum(len(self._key_ids[e]) for e in self._revoked)

    def to_space(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        return normalise(vectors if self.center is None else vectors - self.center)

    def add(self, edit_id: str, keys: np.ndarray, order: int, revoked: bool = False) -> None:
        """`keys` are raw hidden states [n, dim]; they are moved into the routing space here.

        Adding an edit that is present as revoked replaces its blockers (restore). `revoked=True` adds
        blockers only (a revoked edit loaded at startup).
        """
        if edit_id in self._revoked:
            self.remove(edit_id)
        elif edit_id in self._key_ids:
            raise KeyError(f"edit {edit_id} already has keys in the index")
        keys = self.to_space(keys)
        if keys.shape[1] != self.dim:
            raise ValueError(f"key dimension {keys.shape[1]} != index dimension {self.dim}")
        ids = np.arange(self._next_id, self._next_id + len(keys), dtype=np.int64)
        self._next_id += len(keys)
        self._index.add_with_ids(keys, ids)
        self._key_ids[edit_id] = ids
        self._order[edit_id] = order
        for key_id in ids.tolist():
            self._owner[key_id] = edit_id
        if revoked:
            self._revoked.add(edit_id)

    def revoke(self, edit_id: str) -> bool:
        """Turn an active edit's keys into blockers; False if it was not active here."""
        if edit_id not in self:
            return False
        self._revoked.add(edit_id)
        return True

    def remove(self, edit_id: str) -> bool:
        """Forget an edit's keys entirely (active or revoked)."""
        ids = self._key_ids.pop(edit_id, None)
        if ids is None:
            return False
        self._index.remove_ids(faiss.IDSelectorBatch(ids))
        for key_id in ids.tolist():
            del self._owner[key_id]
        del self._order[edit_id]
        self._revoked.discard(edit_id)
        return True

    def search(self, queries: np.ndarray, threshold: float, k: int = 8, tie_margin: float = 1e-3) -> list[Route]:
        """Per query: the edit whose key is nearest, if within `threshold` (and that edit is active).

        Keys within `tie_margin` of the best hit are the same fact edited more than once: an active edit
        beats a revoked one and the newest wins among the rest, so revoking the newest hands the query back
        to the older one. If the winner is a revoked edit, the query goes to no edit.
        """
        queries = self.to_space(queries)
        if self._index.ntotal == 0:
            return [Route(None, None) for _ in range(len(queries))]
        sims, ids = self._index.search(queries, min(k, int(self._index.ntotal)))
        routes: list[Route] = []
        for row_sims, row_ids in zip(sims, ids, strict=True):
            best = float(row_sims[0])
            if row_ids[0] < 0 or best < threshold:
                routes.append(Route(None, best if row_ids[0] >= 0 else None))
                continue
            tied = [
                self._owner[int(i)] for s, i in zip(row_sims, row_ids, strict=True) if i >= 0 and s >= best - tie_margin
            ]
            winner = max(tied, key=lambda e: (e not in self._revoked, self._order[e]))
            routes.append(Route(None if winner in self._revoked else winner, best))
        return routes
