"""Semantic key index: which active edit, if any, a query is about (FAISS + subject words).

Two stages per query (see studies/content_router/README.md):
1. dense: the query's content vector (editors/content.py) against every key's by cosine, top `k` (FAISS);
2. lexical: each candidate's cosine is multiplied by the square of the share of the key's subject words
   that the query contains (routing/lexical.py). The best product fires its edit if >= the threshold.

A key is one prompt of an edit (its own, or a rephrase the operator gave) in one prompt format. The index
is ID-mapped: each key row gets a stable int64 id, so removing an edit never renumbers the others.
Revoking an edit removes its keys: the index is then exactly what it would be had the edit never been made.

Candidates come from a FAISS index whose codes are float16 (half the memory traffic of float32, about half
the time: studies/content_router/README.md); they are then scored exactly from
float32 copies, so every decision and reported similarity is the float32 cosine whichever index found them.
Index kinds: "flat" scans every key (exact); "ivf" scans the `nprobe` nearest of about sqrt(n) k-means
cells (approximate; FAISS removes from it in place, unlike HNSW); "auto" (the default) is flat below
`approximate_from` keys and IVF above, rebuilt when the key count crosses it or doubles since the last
k-means, so the cells keep fitting the keys. The figures behind these choices: docs/benchmarks.md, "Scale".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np

from routing.lexical import coverage


@dataclass(frozen=True)
class Route:
    edit_id: str | None  # the edit that fired, else None
    similarity: float | None  # routing score (cosine x coverage^2): the fired edit's, else the best seen
    nearest_edit_id: str | None = None  # the edit of the best score, fired or not (operators explain routing)
    runner_up_id: str | None = None  # the best-scoring other edit (than the fired one, or the nearest)
    runner_up_similarity: float | None = None
    vetoed: tuple[str, ...] = ()  # edits that scored over the threshold but a check refused (routing/gate.py)

    @property
    def margin(self) -> float | None:
        """How far the answering (or nearest) edit's score is above the runner-up's."""
        if self.similarity is None or self.runner_up_similarity is None:
            return None
        return self.similarity - self.runner_up_similarity


@dataclass(frozen=True)
class Candidate:
    """One edit a query may be about: the score of its best key among the query's nearest keys."""

    edit_id: str
    score: float  # cosine x (share of that key's subject words in the query)^2
    coverage: float  # that share
    key_id: int  # which key scored it (one wording of the edit, in this index's prompt format)


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return unit


@dataclass(frozen=True)
class _Key:
    edit_id: str
    subject: frozenset[str]


KINDS = ("auto", "flat", "ivf")


@dataclass
class KeyIndex:
    dim: int
    kind: str = "auto"  # "auto", "flat" (exact) or "ivf" (approximate, for very many keys); see the module doc
    approximate_from: int = 50_000  # "auto": IVF from this many keys on, flat below half of it
    nprobe: int = 64  # IVF cells scanned per query (recall vs time: docs/benchmarks.md, "Scale")
    _index: faiss.Index = field(init=False, repr=False)
    _approximate: bool = field(default=False, init=False, repr=False)  # the FAISS index now is IVF
    _trained_size: int = field(default=0, init=False, repr=False)  # keys when the IVF cells were fitted
    _keys: dict[int, _Key] = field(default_factory=dict, init=False, repr=False)  # key id -> owner
    _seq: dict[str, int] = field(default_factory=dict, init=False, repr=False)  # edit id -> its seq (recency)
    _key_ids: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    # Exact float32 copies, row = key id. Ids of removed keys are reused, so the matrix never outgrows the
    # most keys ever held at once.
    _vectors: np.ndarray = field(init=False, repr=False)
    _free: list[int] = field(default_factory=list, init=False, repr=False)
    _next_id: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r} (use one of {', '.join(KINDS)})")
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        self._rebuild(approximate=self.kind == "ivf")

    def __len__(self) -> int:
        """Keys held."""
        return len(self._keys)

    @property
    def approximate(self) -> bool:
        """Whether candidates currently come from the IVF index (else an exact scan)."""
        return self._approximate

    @property
    def nbytes(self) -> int:
        """Vector memory: the searched float16 codes plus the exact float32 copies."""
        return len(self) * self.dim * 2 + self._vectors.nbytes

    def __contains__(self, edit_id: str) -> bool:
        return edit_id in self._key_ids

    def edit_ids(self) -> set[str]:
        return set(self._key_ids)

    def owner(self, key_id: int) -> str | None:
        """The edit a key id belongs to (None: no such key now)."""
        key = self._keys.get(key_id)
        return key.edit_id if key is not None else None

    def add(self, edit_id: str, contents: np.ndarray, subjects: Sequence[frozenset[str]], seq: int) -> None:
        """`contents` [n, dim]: one content vector per key; `subjects`: each key's subject words."""
        self.add_many([edit_id], [contents], [subjects], [seq])

    def add_many(
        self,
        edit_ids: Sequence[str],
        contents: Sequence[np.ndarray],
        subjects: Sequence[Sequence[frozenset[str]]],
        seqs: Sequence[int],
    ) -> None:
        """`add` for several edits in one FAISS insert (startup). Checks everything before changing anything."""
        if not (len(edit_ids) == len(contents) == len(subjects) == len(seqs)):
            raise ValueError("edit_ids, contents, subjects and seqs differ in length")
        if len(set(edit_ids)) != len(edit_ids):
            raise ValueError("an edit appears twice in one add_many")
        blocks = [np.atleast_2d(c) for c in contents]  # [n_i, dim] per edit
        counts = [len(b) for b in blocks]
        vectors = normalise(np.concatenate(blocks)) if blocks else None
        if vectors is not None and vectors.shape[1] != self.dim:
            raise ValueError(f"key dimension {vectors.shape[1]} != index dimension {self.dim}")
        for edit_id, words, n in zip(edit_ids, subjects, counts, strict=True):
            if edit_id in self._key_ids:
                raise KeyError(f"edit {edit_id} already has keys in the index")
            if len(words) != n:
                raise ValueError(f"{len(words)} subject word sets for {n} keys")
        if vectors is None:
            return
        ids = self._allocate_many(len(vectors))
        self._vectors[ids] = vectors
        per_edit = np.split(ids, np.cumsum(counts)[:-1])
        for edit_id, own, words, seq in zip(edit_ids, per_edit, subjects, seqs, strict=True):
            self._key_ids[edit_id] = own
            self._seq[edit_id] = seq
            for key_id, subject in zip(own.tolist(), words, strict=True):
                self._keys[key_id] = _Key(edit_id, subject)
        if self._wants_rebuild():
            self._rebuild(approximate=self._should_be_approximate())
        else:
            self._index.add_with_ids(vectors, ids)

    def remove(self, edit_id: str) -> bool:
        """Forget an edit's keys; False if it had none here."""
        ids = self._key_ids.pop(edit_id, None)
        if ids is None:
            return False
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        # An id array (not a batch hash set): IVF's id -> cell table accepts only this selector.
        self._index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))
        for key_id in ids.tolist():
            del self._keys[key_id]
        self._free.extend(ids.tolist())
        del self._seq[edit_id]
        if self._wants_rebuild():
            self._rebuild(approximate=self._should_be_approximate())
        return True

    # ---- the FAISS index behind the candidates ----------------------------------------------------------
    def reserve(self, keys: int) -> None:
        """Room for `keys` exact vectors without regrowing (startup knows how many it will add)."""
        if keys > len(self._vectors):
            grown = np.zeros((keys, self.dim), dtype=np.float32)
            grown[: len(self._vectors)] = self._vectors
            self._vectors = grown

    def _allocate_many(self, n: int) -> np.ndarray:
        """n free key ids (rows of the exact-vector matrix): freed ones first, then new ones."""
        reused = [self._free.pop() for _ in range(min(n, len(self._free)))]
        fresh = n - len(reused)
        if self._next_id + fresh > len(self._vectors):  # grow geometrically: amortised O(1) per key
            self.reserve(max(1024, 2 * len(self._vectors), self._next_id + fresh))
        ids = np.concatenate([np.array(reused, dtype=np.int64), np.arange(self._next_id, self._next_id + fresh)])
        self._next_id += fresh
        return ids

    def _should_be_approximate(self) -> bool:
        if self.kind != "auto":
            return self.kind == "ivf"
        # Hysteresis: a few revokes around the boundary must not rebuild the index back and forth.
        return len(self) >= self.approximate_from if not self._approximate else len(self) >= self.approximate_from // 2

    def _wants_rebuild(self) -> bool:
        if self._should_be_approximate() != self._approximate:
            return True
        # IVF cells fitted on fewer keys (or none, for kind "ivf") fit the keys ever worse: refit at 2x. (At
        # 4x, 100,000 keys sat in cells fitted on 50,000: recall@8 0.981 and 1.31 ms, against 0.990, 0.92 ms.)
        return self._approximate and len(self) >= 2 * max(self._trained_size, 256)

    def _rebuild(self, approximate: bool) -> None:
        """A fresh FAISS index over every key held: flat, or IVF with k-means cells fitted to these keys."""
        ids = np.array(sorted(self._keys), dtype=np.int64)
        vectors = self._vectors[ids]
        if not approximate:
            index: faiss.Index = faiss.IndexIDMap2(
                faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
            )
        else:
            # sqrt(n) cells balance the two costs of a query: comparing to every centroid, scanning nprobe cells.
            cells = max(16, int(np.sqrt(max(len(ids), 256))))
            quantizer = faiss.IndexFlatIP(self.dim)
            ivf = faiss.IndexIVFScalarQuantizer(
                quantizer, self.dim, cells, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
            # faiss's Python wrapper keeps `quantizer` alive as long as `ivf` (a reference in its constructor)
            ivf.cp.seed = 0  # deterministic cells for the same keys
            ivf.train(self._training_sample(vectors, cells))
            hashtable = faiss.DirectMap.Hashtable  # type: ignore[attr-defined]  # (not in faiss's type stubs)
            ivf.set_direct_map_type(hashtable)  # remove_ids by id lookup, not a full scan
            ivf.nprobe = min(self.nprobe, cells)
            index = ivf
            self._trained_size = len(ids)
        if len(ids):
            index.add_with_ids(vectors, ids)
        self._index, self._approximate = index, approximate

    def _training_sample(self, vectors: np.ndarray, cells: int) -> np.ndarray:
        """k-means input: every key when few, else a fixed-seed sample of 64 per cell (FAISS's own advice)."""
        if len(vectors) >= cells:
            if len(vectors) <= 64 * cells:
                return vectors
            rows = np.random.default_rng(0).choice(len(vectors), 64 * cells, replace=False)
            return vectors[np.sort(rows)]
        # Too few keys for the cells (kind "ivf" from empty): random unit vectors give usable cells until
        # the refit at 4x puts them where the keys are.
        return normalise(np.random.default_rng(0).standard_normal((max(39 * cells, 256), self.dim)))

    def nearest_keys(self, queries: np.ndarray, k: int) -> np.ndarray:
        """[n, k] key ids of each query's top-k keys by the index's (float16, maybe approximate) inner
        product; -1 where fewer were found. `queries` must be normalised."""
        if not self._keys:
            return np.full((len(queries), k), -1, dtype=np.int64)
        _, ids = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(self._keys)))
        return ids

    def ranked(
        self, queries: np.ndarray, query_words: Sequence[frozenset[str]], k: int = 8, tie_margin: float = 1e-3
    ) -> list[list[Candidate]]:
        """Per query: the edits of its `k` nearest keys, one Candidate each (its best key), best score first.

        Keys scoring within `tie_margin` of the best are the same fact edited more than once: the newest
        edit comes first, so revoking it hands the query back to the older one."""
        queries = normalise(queries)
        if len(query_words) != len(queries):
            raise ValueError(f"{len(query_words)} word sets for {len(queries)} queries")
        if not self._keys:
            return [[] for _ in range(len(queries))]
        out = []
        for query, row_ids, qwords in zip(queries, self.nearest_keys(queries, k), query_words, strict=True):
            ids = [int(i) for i in row_ids if i >= 0]  # IVF: the probed cells may hold fewer than k
            cosines = self._vectors[ids] @ query if ids else np.zeros(0, dtype=np.float32)  # exact float32
            best: dict[str, Candidate] = {}
            for cosine, key_id in zip(cosines.tolist(), ids, strict=True):
                key = self._keys[key_id]
                cover = coverage(key.subject, qwords)
                cand = Candidate(key.edit_id, cosine * cover**2, cover, key_id)
                if key.edit_id not in best or cand.score > best[key.edit_id].score:
                    best[key.edit_id] = cand
            ranked = sorted(best.values(), key=lambda c: -c.score)
            if ranked:
                top = ranked[0].score
                tied = sorted((c for c in ranked if c.score >= top - tie_margin), key=lambda c: -self._seq[c.edit_id])
                ranked = tied + [c for c in ranked if c.score < top - tie_margin]
            out.append(ranked)
        return out

    def search(
        self,
        queries: np.ndarray,
        query_words: Sequence[frozenset[str]],
        threshold: float,
        k: int = 8,
        tie_margin: float = 1e-3,
    ) -> list[Route]:
        """Per query: the edit whose key scores best (cosine x subject coverage^2), if >= `threshold` (the
        dense and lexical stages alone; the routed layer adds routing/gate.py's checks)."""
        routes = []
        for ranked in self.ranked(queries, query_words, k, tie_margin):
            if not ranked:
                routes.append(Route(None, None))
                continue
            best, runner_up = ranked[0], ranked[1] if len(ranked) > 1 else None
            fired = best.edit_id if best.score >= threshold else None
            routes.append(
                Route(
                    fired,
                    best.score,
                    best.edit_id,
                    runner_up.edit_id if runner_up else None,
                    runner_up.score if runner_up else None,
                )
            )
        return routes
