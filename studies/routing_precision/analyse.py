"""Offline routing decisions over a captured study set (extract.py): stage 1 as shipped, then a second stage."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoTokenizer

from routing import lexical

TOKENIZER = AutoTokenizer.from_pretrained("var/models/SmolLM2-135M-Instruct")


@functools.lru_cache(maxsize=100_000)
def is_common(word: str) -> bool:
    ids = TOKENIZER(" " + word.casefold(), add_special_tokens=False)["input_ids"]
    return len(ids) == 1 and ids[0] < 5000


@dataclass
class Cand:
    edit: int
    key: int  # text index of the key
    cos: float
    cov: float

    @property
    def score(self) -> float:
        return self.cos * self.cov**2


class Study:
    def __init__(self, name: str):
        d = torch.load(f"var/study/{name}.pt", weights_only=False)
        self.name = name
        self.texts: list[str] = d["texts"]
        self.states: list[torch.Tensor] = d["states"]
        self.tokens: list[list[str]] = d["tokens"]
        self.contents = d["contents"].numpy()
        self.edits: list[tuple[list[int], str]] = d["edits"]
        self.probes: list[tuple[int, int, str]] = d["probes"]
        self.words = [lexical.words(t) for t in self.texts]
        self.subjects = [lexical.subject_words(t, is_common) for t in self.texts]
        self.key_text = np.array([k for ks, _ in self.edits for k in ks])
        self.key_edit = np.array([e for e, (ks, _) in enumerate(self.edits) for _ in ks])
        self.key_vecs = self.contents[self.key_text]

    def candidates(self, text: int, k: int = 8, exclude: int | None = None) -> list[Cand]:
        cos = self.key_vecs @ self.contents[text]
        top = np.argsort(-cos)[: k + 4]
        out = []
        for j in top:
            e = int(self.key_edit[j])
            if e == exclude:
                continue
            kt = int(self.key_text[j])
            out.append(Cand(e, kt, float(cos[j]), lexical.coverage(self.subjects[kt], self.words[text])))
        out = out[:k]
        out.sort(key=lambda c: -c.score)
        return out


Verifier = Callable[[Study, int, Cand], bool]


def decide(study: Study, text: int, threshold: float, verify: Verifier | None, first_only: bool = False) -> int:
    """The edit a probe routes to (-1: none): the best candidate >= threshold that the verifier accepts,
    judged per edit over all its keys among the candidates."""
    cands = [c for c in study.candidates(text) if c.score >= threshold]
    seen = set()
    for c in cands:
        if c.edit in seen:
            continue
        seen.add(c.edit)
        if verify is None:
            return c.edit
        keys = [d for d in cands if d.edit == c.edit]
        if any(verify(study, text, d) for d in keys):
            return c.edit
        if first_only:
            return -1
    return -1


def report(study: Study, threshold: float = 0.40, verify: Verifier | None = None, first_only: bool = False) -> dict:
    own, wrong, total = Counter(), Counter(), Counter()
    for text, target, kind in study.probes:
        got = decide(study, text, threshold, verify, first_only)
        total[kind] += 1
        if target >= 0:
            own[kind] += got == target
            wrong[kind] += got not in (-1, target)
        else:
            wrong[kind] += got != -1
    out = {}
    for kind in total:
        if kind in ("prompt", "para"):
            out[kind] = own[kind] / total[kind]
            out[kind + "_wrong"] = wrong[kind] / total[kind]
        else:
            out[kind] = wrong[kind] / total[kind]  # routed rate (lower is better)
    return out


def fmt(r: dict) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in sorted(r.items()) if not k.endswith("_wrong") or v > 0)
