"""Does a bank stored in half precision answer exactly as the float32 bank? (studies/bank_precision/README.md)

    python -m studies.bank_precision.run --n 100 --threads 1

The first N records of ZsRE (chat) and CounterFact (raw) are trained once and activated together in two
engines that differ only in `bank_dtype`: the model's float32 (bank_dtype None), and each half-precision
candidate. Per
record, the edit prompt and its paraphrase are asked in both: greedy answers (target length + 8 tokens)
must be the same text, and the teacher-forced predictions of the target the same token ids. Also printed:
the largest difference of a target's teacher-forced log-probability.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from editors.batch import generate
from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.types import EngineConfig, PromptFormat
from evaluation.datasets import load_records
from evaluation.quality import DEGENERATE_EXTRA_TOKENS

FILES = {
    "zsre-chat": ("../shared/data/zsre/zsre_mend_train_1k.json", "zsre", PromptFormat.CHAT),
    "cf-raw": ("../shared/data/counterfact/counterfact_train.json", "counterfact", PromptFormat.RAW),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--dtypes", default="float16,bfloat16")
    parser.add_argument("--files", default=",".join(FILES))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path("var")
    reference = EditingEngine(ModelHost.load(None, data), dataclasses.replace(EngineConfig(), bank_dtype=None))
    candidates = {
        name: EditingEngine(ModelHost.load(None, data), dataclasses.replace(EngineConfig(), bank_dtype=name))
        for name in args.dtypes.split(",")
    }
    print(f"n={args.n} per file, torch threads {args.threads}")
    print("| file | bank | greedy text same | teacher-forced ids same | max abs diff of log p(target) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name in args.files.split(","):
        path, fmt, asked = FILES[name]
        records = load_records(path, fmt, n=args.n).records
        for i, r in enumerate(tqdm(records, desc=f"train {name}", file=sys.stderr)):
            trained = reference.train_edit(r.prompt, r.target)
            for engine in (reference, *candidates.values()):
                engine.activate(f"{name}{i}", trained.adapter, trained.keys, trained.key_kinds, r.prompt, r.target)
        prompts = [p for r in records for p in (r.prompt, r.rephrase) if p]
        targets = [r.target for r in records for p in (r.prompt, r.rephrase) if p]
        budget = max(len(reference.host.encode(" " + t)) for t in targets) + DEGENERATE_EXTRA_TOKENS
        # one question per batch: batch padding must not be what differs
        expected_text = [generate(reference, [p], budget, asked)[0].text for p in prompts]
        expected = reference.score(prompts, targets, asked)
        for dtype, engine in candidates.items():
            texts = [generate(engine, [p], budget, asked)[0].text for p in prompts]
            scores = engine.score(prompts, targets, asked)
            same_text = sum(a == b for a, b in zip(expected_text, texts, strict=True)) / len(texts)
            same_ids = sum(a.predicted_ids == b.predicted_ids for a, b in zip(expected, scores, strict=True))
            diff = max(abs(a.target_logprob - b.target_logprob) for a, b in zip(expected, scores, strict=True))
            print(f"| {name} | {dtype} | {same_text:.3f} | {same_ids / len(scores):.3f} | {diff:.2e} |", flush=True)
            for prompt, target, a, b in zip(prompts, targets, expected_text, texts, strict=True):
                if a != b:  # where and how they part: within the target, or in the words after it
                    print(f"  differs: {prompt!r} -> {target!r}: {a!r} vs {b!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
