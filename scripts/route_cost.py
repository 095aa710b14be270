"""Routing cost per query at 10,000 edits: the dense + lexical ranking (routing/key_index.py) and the gate
(routing/gate.py: coverage, names, relation, negatives) over the ranked candidates, on one CPU thread.

Worst case for the gate: 1,250 subjects x 8 attributes, so every query's 8 nearest edits are its subject's
and all score over the threshold with full subject coverage; each is then put through the relation check
until one passes (the asked attribute) or all are refused (an attribute no edit has). Keys are synthetic
(no model needed); the words are real questions, and common words come from the bundled tokenizer.

    .venv/bin/python scripts/route_cost.py [--edits 10000] [--dim 576]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from editors.model_host import COMMON_WORD_MAX_ID, DEFAULT_MODEL_NAME
from routing import lexical
from routing.gate import Gate
from routing.key_index import KeyIndex, normalise

ATTRIBUTES = [
    ("What time does {s} open?", "What time does {s} open its doors?"),
    ("What time does {s} close?", "When does {s} close for the day?"),
    ("Who is the CEO of {s}?", "Who runs {s} as chief executive?"),
    ("Who is the CFO of {s}?", "Who is {s}'s chief financial officer?"),
    ("Where is {s} headquartered?", "Where are {s}'s headquarters?"),
    ("How much does {s} cost per month?", "What is the monthly price of {s}?"),
    ("What is the warranty on {s}?", "How long is {s}'s warranty?"),
    ("When was {s} founded?", "In which year was {s} founded?"),
]
UNASKED = "What colour is the logo of {s}?"  # an attribute no edit has: every candidate is refused


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edits", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=576)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--model-cache", type=Path, default=Path("var/models"))
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model_cache / DEFAULT_MODEL_NAME)
    common: dict[str, bool] = {}

    def is_common(word: str) -> bool:
        if word not in common:
            ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            common[word] = len(ids) == 1 and ids[0] < COMMON_WORD_MAX_ID
        return common[word]

    rng = np.random.default_rng(0)
    subjects = [f"Vandor{i} Logistics" for i in range(args.edits // len(ATTRIBUTES))]
    centres = normalise(rng.standard_normal((len(subjects), args.dim)).astype(np.float32))
    index, gate = KeyIndex(args.dim), Gate(is_common)
    keys: dict[str, np.ndarray] = {}
    for s, (subject, centre) in enumerate(zip(subjects, centres, strict=True)):
        for a, (prompt, rephrase) in enumerate(ATTRIBUTES):
            edit_id = f"ed_{s}_{a}"
            key = normalise(centre + 0.15 * rng.standard_normal(args.dim).astype(np.float32) / np.sqrt(args.dim))
            words = lexical.subject_words(prompt.format(s=subject), is_common)
            index.add(edit_id, key, [words], seq=s * len(ATTRIBUTES) + a)
            gate.add(edit_id, [prompt.format(s=subject), rephrase.format(s=subject)])
            keys[edit_id] = key[0]
    print(f"{len(index):,} keys, {len(subjects):,} subjects x {len(ATTRIBUTES)} attributes, dim {args.dim}")

    for label, asked in (("asks an edited attribute", None), ("asks an attribute no edit has", UNASKED)):
        rank_ms, gate_ms, fired = [], [], 0
        for q in range(args.queries):
            s, a = int(rng.integers(len(subjects))), int(rng.integers(len(ATTRIBUTES)))
            question = (asked or ATTRIBUTES[a][0]).format(s=subjects[s])
            query = normalise(keys[f"ed_{s}_{a}"] + 0.05 * rng.standard_normal(args.dim).astype(np.float32))
            words = lexical.words(question)
            started = time.perf_counter()
            ranked = index.ranked(query, [words], k=8)[0]
            ranked_at = time.perf_counter()
            route = gate.decide(query[0], question, ranked, threshold=0.40)
            done = time.perf_counter()
            if q >= 100:  # warm-up: the relation view of an edit is built when a query first reaches it
                rank_ms.append(1000 * (ranked_at - started))
                gate_ms.append(1000 * (done - ranked_at))
            fired += route.edit_id is not None
        total = [r + g for r, g in zip(rank_ms, gate_ms, strict=True)]
        print(
            f"{label}: rank {statistics.median(rank_ms):.3f} ms + gate {statistics.median(gate_ms):.3f} ms = "
            f"{statistics.median(total):.3f} ms median, p10 {np.percentile(total, 10):.3f} ms (an idle machine's "
            f"figure when others share the cores), p99 {np.percentile(total, 99):.3f} ms; "
            f"routed {fired / args.queries:.3f}"
        )


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    import faiss

    faiss.omp_set_num_threads(1)
    main()
