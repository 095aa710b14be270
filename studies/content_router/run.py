"""Routing study behind the router's defaults (studies/content_router/README.md).

    python -m studies.content_router.run ../shared/data/zsre/zsre_mend_train_1k.json zsre --n 300 --prompt-format chat
    python -m studies.content_router.run ../shared/data/counterfact/counterfact_train.json counterfact --n 500 \\
        --prompt-format raw

Router only, no training: the first N records' prompts become keys in the product's own KeyIndex (content
vectors from the engine, subject words from routing/lexical.py), then every probe is routed and, per
threshold, the study prints: paraphrases routed to their own edit / to a wrong one, the paraphrases asked
in context (custom system prompt, after an unrelated exchange; chat only), locality prompts routed,
neighbours routed (prompts and paraphrases of the records after the first N: same templates, other
subjects) and same-subject prompts routed (KnowEdit's Relation_Specificity). A threshold is chosen on
these dev records as the lowest that keeps every "routed (lower is better)" column <= 2%.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.types import ChatContext, PromptFormat
from evaluation.datasets import load_records
from evaluation.quality import IN_CONTEXT, neighbour_prompts
from routing import lexical
from routing.key_index import KeyIndex


def keys_of(engine: EditingEngine, texts: Sequence[str], asked: PromptFormat, context: ChatContext | None = None):
    contents, words = [], []
    for start in range(0, len(texts), 32):
        chunk = texts[start : start + 32]
        contents.append(engine.query_keys(chunk, asked, context))
        words += [lexical.words(t) for t in chunk]
    return np.concatenate(contents), words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("format")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--neighbours", type=int, default=300)
    parser.add_argument("--prompt-format", type=PromptFormat, choices=list(PromptFormat), default=PromptFormat.CHAT)
    parser.add_argument("--thresholds", default="0.30,0.35,0.40,0.45,0.50,0.60")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    records_all = load_records(args.dataset, args.format).records
    records, later = records_all[: args.n], records_all[args.n : args.n + args.neighbours]
    engine = EditingEngine(ModelHost.load(None, Path("var")))
    index = KeyIndex(engine.host.hidden_size)
    contents, _ = keys_of(engine, [r.prompt for r in records], args.prompt_format)
    for i, (record, content) in enumerate(zip(records, contents, strict=True)):
        index.add(f"e{i}", content[None], [engine.subject_words(record.prompt)], seq=i)

    own_probes: dict[str, tuple[list[str], list[str], ChatContext | None]] = {}
    with_reph = [i for i, r in enumerate(records) if r.rephrase]
    own_probes["paraphrase"] = ([records[i].rephrase or "" for i in with_reph], [f"e{i}" for i in with_reph], None)
    if args.prompt_format is PromptFormat.CHAT:
        for name, context in IN_CONTEXT.items():
            own_probes[f"in context ({name})"] = (own_probes["paraphrase"][0], own_probes["paraphrase"][1], context)
    other_probes = {
        "locality": [r.locality_prompt for r in records if r.locality_prompt],
        "neighbours": neighbour_prompts(later),
        "same subject": [p for r in records for p, _ in r.relation_locality],
    }

    thresholds = [float(t) for t in args.thresholds.split(",")]
    table: dict[str, list[str]] = {f"{t:.2f}": [] for t in thresholds}
    header = []
    for name, (texts, owners, probe_context) in own_probes.items():
        if not texts:
            continue
        c, w = keys_of(engine, texts, args.prompt_format, probe_context)
        routes = index.search(c, w, threshold=-1.0, k=engine.config.search_k)
        header += [f"{name} -> own", f"{name} -> wrong"]
        for t in thresholds:
            fired = [r.similarity is not None and r.similarity >= t for r in routes]
            own = np.mean([f and r.edit_id == o for f, r, o in zip(fired, routes, owners, strict=True)])
            wrong = np.mean([f and r.edit_id != o for f, r, o in zip(fired, routes, owners, strict=True)])
            table[f"{t:.2f}"] += [f"{own:.3f}", f"{wrong:.3f}"]
    for name, texts in other_probes.items():
        if not texts:
            continue
        c, w = keys_of(engine, texts, args.prompt_format)
        scores = np.array([r.similarity or 0.0 for r in index.search(c, w, threshold=-1.0)])
        header.append(f"{name} routed (n={len(texts)})")
        for t in thresholds:
            table[f"{t:.2f}"].append(f"{np.mean(scores >= t):.3f}")
    fmt = args.prompt_format
    print(f"{args.format}, first {len(records)} records as keys, {fmt} prompts, layer {engine.config.layer}")
    print("| threshold | " + " | ".join(header) + " |")
    print("| ---: |" + " ---: |" * len(header))
    for label, row in table.items():
        print(f"| {label} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
