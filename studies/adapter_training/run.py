"""Adapter study: what one edit's LoRA does to its own questions, with the router taken out of the picture.

    python -m studies.adapter_training.run --n 30 --set max_steps=30 --threads 1

Each of the first N records of each dev file is trained as an edit, activated ALONE, measured and
revoked, so every figure is the adapter's (routing among many edits is measured by `sola eval` and
studies/content_router). Per file: Rel and Gen (teacher-forced token accuracy of the target after
the prompt / paraphrase), same-subject locality (KnowEdit's Relation_Specificity: teacher-forced
unchanged rate, the same as `sola eval`), the share of same-subject prompts routed, degeneration of the
edited answer (chat and raw, greedy, target length + 8 tokens) and the training steps and seconds.
`--set key=value` overrides an EngineConfig field, so variants run side by side from one script.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

import torch

from editors.batch import generate
from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.types import EngineConfig, PromptFormat, parse_overrides
from evaluation import edit_metrics
from evaluation.datasets import load_records
from evaluation.quality import DEGENERATE_EXTRA_TOKENS

CHAT, RAW = PromptFormat.CHAT, PromptFormat.RAW

FILES = {
    "zsre-chat": ("../shared/data/zsre/zsre_mend_train_1k.json", "zsre", CHAT),
    "cf-chat": ("../shared/data/counterfact/counterfact_train.json", "counterfact", CHAT),
    "cf-raw": ("../shared/data/counterfact/counterfact_train.json", "counterfact", RAW),
    "wiki_cf-chat": ("../shared/data/knowedit/wiki_counterfact_train.json", "knowedit", CHAT),
    "wiki_recent-chat": ("../shared/data/knowedit/wiki_recent_train.json", "knowedit", CHAT),
}


def accuracy(engine: EditingEngine, prompts: list[str], targets: list[str], asked: PromptFormat) -> list[float]:
    return [edit_metrics.token_accuracy(s.predicted_ids, s.target_ids) for s in engine.score(prompts, targets, asked)]


def study(engine: EditingEngine, name: str, n: int) -> dict[str, float | None]:
    path, fmt, asked = FILES[name]
    records = load_records(path, fmt, n=n).records
    rel: list[float] = []
    gen: list[float] = []
    same: list[float] = []
    same_routed: list[bool] = []
    degenerate: list[bool] = []
    steps: list[int] = []
    seconds: list[float] = []
    for i, r in enumerate(records):
        trained = engine.train_edit(r.prompt, r.target)
        steps.append(trained.steps)
        seconds.append(trained.seconds)
        edit_id = f"e{i}"
        engine.activate(edit_id, trained.adapter, trained.keys, trained.key_kinds, r.prompt, r.target)
        rel += accuracy(engine, [r.prompt], [r.target], asked)
        if r.rephrase:
            gen += accuracy(engine, [r.rephrase], [r.target], asked)
        if r.relation_locality:
            prompts, answers = [p for p, _ in r.relation_locality], [a for _, a in r.relation_locality]
            edited = engine.score(prompts, answers, asked)
            base = engine.score(prompts, answers, asked, use_edits=False)
            same += [
                edit_metrics.unchanged_rate(b.predicted_ids, e.predicted_ids) for b, e in zip(base, edited, strict=True)
            ]
            same_routed += [e.routed_edit_id is not None for e in edited]
        budget = len(engine.host.encode(" " + r.target)) + DEGENERATE_EXTRA_TOKENS
        for prompt_format in engine.host.prompt_formats:
            g = generate(engine, [r.prompt], budget, prompt_format)[0]
            degenerate.append(edit_metrics.is_degenerate(g.text, r.target))
        engine.revoke(edit_id)

    def mean(xs: list) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return {
        "rel": mean(rel),
        "gen": mean(gen),
        "same_subject_locality": mean(same),
        "same_subject_routed": mean(same_routed),
        "degenerate": mean(degenerate),
        "steps_median": statistics.median(steps),
        "edit_s_median": statistics.median(seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--files", default=",".join(FILES))
    parser.add_argument("--set", action="append", default=[], help="EngineConfig override, e.g. max_steps=30")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)
    config = dataclasses.replace(EngineConfig(), **overrides)
    engine = EditingEngine(ModelHost.load(None, Path("var")), config)
    print(f"variant: {overrides or 'defaults'}, n={args.n}, torch threads {args.threads}")
    cols = ["rel", "gen", "same_subject_locality", "same_subject_routed", "degenerate", "steps_median", "edit_s_median"]
    print("| file | " + " | ".join(cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for name in args.files.split(","):
        row = study(engine, name, args.n)
        cells = ["" if row[c] is None else f"{row[c]:.3f}" for c in cols]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
