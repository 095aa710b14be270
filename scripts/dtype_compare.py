"""The bundled model in float32 vs bfloat16 on this machine's CPU, side by side in one run (issue #24): edit
seconds, decode tokens/s at 1 and 8 rows, and whether each edit answers its prompt and revokes bit-exactly.
One torch thread.

    .venv/bin/python scripts/dtype_compare.py [--edits 4] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from editors.batch import generate
from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.types import PromptFormat
from evaluation.datasets import load_records

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "zsre_first20.json"
QUESTIONS = ["Name a colour.", "What is the capital of France?", "Who wrote Hamlet?", "Name a planet."] * 2


def measure(dtype: str, edits: int, tokens: int, cache: Path) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as tmp:
        engine = EditingEngine(ModelHost.load(None, Path(tmp), cache_dir=cache, dtype=dtype))
    records = load_records(FIXTURE, "zsre", edits).records
    prompts = [r.prompt for r in records]
    unedited = engine.prompt_logits(prompts, prompt_format=PromptFormat.CHAT)
    seconds = []
    for i, r in enumerate(records):
        started = time.perf_counter()
        trained = engine.train_edit(r.prompt, r.target)
        seconds.append(time.perf_counter() - started)
        engine.activate(f"e{i}", trained.adapter, trained.keys, trained.key_kinds, r.prompt, r.target)
    answers = generate(engine, prompts, 16, prompt_format=PromptFormat.CHAT)
    answered = sum(a.text.strip().startswith(r.target) for a, r in zip(answers, records, strict=True))
    out: dict[str, float | str] = {"dtype": dtype, "edit_seconds_median": statistics.median(seconds)}
    out["edits_answering_their_prompt"] = answered / len(records)
    for rows in (1, 8):
        started = time.perf_counter()
        generate(engine, QUESTIONS[:rows], tokens, prompt_format=PromptFormat.CHAT, min_new_tokens=tokens)
        out[f"tokens_per_s_{rows}_rows"] = rows * tokens / (time.perf_counter() - started)
    for i in range(len(records)):
        engine.revoke(f"e{i}")
    after = engine.prompt_logits(prompts, prompt_format=PromptFormat.CHAT)
    out["revoke_bit_exact"] = float(all(torch.equal(u, a) for u, a in zip(unedited, after, strict=True)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edits", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--model-cache", type=Path, default=Path("var/models"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure(d, args.edits, args.tokens, args.model_cache) for d in ("float32", "bfloat16")]
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
