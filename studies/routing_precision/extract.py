"""Capture what the router sees for a study set: per text, its edited-layer token states, content vector, words.

Writes var/study/<name>.pt: {"texts": [...], "fmt": str, "states": [T_i, D] f16 list, "tokens": [[str]],
"contents": [N, D] f32, "edits": [(edit_texts_idx list, target)], "probes": [(text_idx, own_edit or -1, kind)]}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.training import EditExample
from editors.types import PromptFormat
from evaluation.datasets import load_records

DATA = Path("../shared/data")


def is_paraphrase(prompt: str, subject: str) -> bool:
    import re

    i = prompt.find(subject)
    before = prompt[:i] if i >= 0 else ""
    return bool(re.search(r"(\n|[.!?][\"')\]]*\s)", before))


def build(name: str) -> tuple[list[tuple[list[str], str]], list[tuple[str, int, str]]]:
    """edits: ([prompt, *rephrases], target); probes: (text, own edit index or -1, kind)."""
    edits: list[tuple[list[str], str]] = []
    probes: list[tuple[str, int, str]] = []
    if name.startswith("zsre"):
        recs = load_records(DATA / "zsre/zsre_mend_train_1k.json", "zsre").records
        for i, r in enumerate(recs[:500]):
            edits.append(([r.prompt], r.target))
            probes.append((r.prompt, i, "prompt"))
            if r.rephrase:
                probes.append((r.rephrase, i, "para"))
        for r in recs[500:1000]:
            probes.append((r.prompt, -1, "nbr"))
            if r.rephrase:
                probes.append((r.rephrase, -1, "nbr"))
    elif name.startswith("cf"):
        raw = json.loads((DATA / "counterfact/counterfact_train.json").read_text())
        for i, r in enumerate(raw[:1000]):
            edits.append(([r["prompt"]], r["target_new"]))
            probes.append((r["prompt"], i, "prompt"))
            kind = "para" if is_paraphrase(r["rephrase_prompt"], r["subject"]) else "genprompt"
            probes.append((r["rephrase_prompt"], i, kind))
            probes.append((r["locality_prompt"], -1, "loc"))
        for r in raw[1000:1500]:
            probes.append((r["prompt"], -1, "nbr"))
            probes.append((r["rephrase_prompt"], -1, "nbr"))
    elif name.startswith("kecf") or name.startswith("kere"):
        file = "wiki_counterfact_train.json" if name.startswith("kecf") else "wiki_recent_train.json"
        recs = load_records(DATA / "knowedit" / file, "knowedit").records
        n = 1000 if name.startswith("kecf") else len(recs)
        for i, r in enumerate(recs[:n]):
            edits.append(([r.prompt], r.target))
            probes.append((r.prompt, i, "prompt"))
            for p, _ in r.relation_locality:
                probes.append((p, -1, "same"))
        for r in recs[n:]:
            probes.append((r.prompt, -1, "nbr"))
    elif name.startswith("op"):
        split = "dev" if "dev" in name else "test"
        lines = Path(f"evaluation/data/operator/{split}.jsonl").read_text().splitlines()
        facts = [json.loads(line) for line in lines if line.strip()]
        for i, f in enumerate(facts):
            edits.append(([f["prompt"], *f["rephrases"]], f["target"]))
            probes.append((f["prompt"], i, "prompt"))
            for p in f["paraphrases"]:
                probes.append((p, i, "para"))
            for p in f["same_subject"]:
                probes.append((p, -1, "same"))
            for p in f["sibling"]:
                probes.append((p, -1, "sibling"))
    else:
        raise SystemExit(f"unknown set {name}")
    return edits, probes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")  # e.g. zsre-chat, cf-raw, kecf-chat, opdev-chat
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fmt = PromptFormat.RAW if args.name.endswith("raw") else PromptFormat.CHAT
    edits, probes = build(args.name)
    texts = sorted({t for ts, _ in edits for t in ts} | {p for p, _, _ in probes})
    random.Random(0).shuffle(texts)
    engine = EditingEngine(ModelHost.load(None, Path("var")))
    tok = engine.host.tokenizer
    encoded = [engine.encode(t, fmt) for t in texts]
    states: list[torch.Tensor] = []
    tokens: list[list[str]] = []
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))
    out_states: dict[int, torch.Tensor] = {}
    for start in range(0, len(order), 32):
        chunk = order[start : start + 32]
        hidden, _ = engine._capture([EditExample(encoded[i].ids, []) for i in chunk])
        for row, i in enumerate(chunk):
            s, e = encoded[i].span
            out_states[i] = hidden[row, s:e].to(torch.float16).clone()
        print(f"\r{start + len(chunk)}/{len(texts)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    space = engine.routed.spaces[fmt]
    states = [out_states[i] for i in range(len(texts))]
    contents = space.encoder.encode([s.float() for s in states])
    for e in encoded:
        s, t = e.span
        tokens.append([tok.decode([x]) for x in e.ids[s:t]])
    index = {t: i for i, t in enumerate(texts)}
    Path("var/study").mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "texts": texts,
            "fmt": str(fmt),
            "states": states,
            "tokens": tokens,
            "contents": contents,
            "edits": [([index[t] for t in ts], target) for ts, target in edits],
            "probes": [(index[p], own, kind) for p, own, kind in probes],
        },
        f"var/study/{args.name}.pt",
    )
    print(f"{args.name}: {len(edits)} edits, {len(probes)} probes, {len(texts)} texts")


if __name__ == "__main__":
    main()
