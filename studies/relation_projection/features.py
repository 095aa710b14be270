"""Last-question-token states (edited layer input, centred) of training texts: attribute templates + CounterFact."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.training import EditExample
from editors.types import PromptFormat
from studies.pair_verifier.pairs import CF, is_paraphrase

OUT = Path("var/study/relation")


def template_texts(files: list[Path], rng: random.Random, subjects: int = 2) -> list[tuple[str, str, str]]:
    """(text, relation label, group) for every question of every attribute, about `subjects` subjects."""
    out = []
    for file in files:
        for line in file.read_text().splitlines():
            if not line.strip():
                continue
            et = json.loads(line)
            group = et["entity_type"]
            for subj in rng.sample(et["subjects"], min(subjects, len(et["subjects"]))):
                for a in et["attributes"]:
                    label = f"{group}/{a['attribute']}"
                    for q in a["questions"] + [f"The {a['attribute']} of {{S}} is"]:
                        out.append((q.replace("{S}", subj["name"]), label, group))
    return out


def counterfact_texts(rng: random.Random, start: int = 1500, n: int = 2500) -> list[tuple[str, str, str]]:
    """Records no evaluation uses: each prompt labelled by its template, its real paraphrase with it."""
    raw = json.loads(CF.read_text())[start : start + n]
    out = []
    for r in raw:
        if r["subject"] not in r["prompt"]:
            continue
        label = "cf/" + r["prompt"].replace(r["subject"], "{}", 1)
        out.append((r["prompt"], label, "cf"))
        if is_paraphrase(r["rephrase_prompt"], r["subject"]):
            out.append((r["rephrase_prompt"], label, "cf"))
    return out


def states(engine: EditingEngine, texts: list[str], fmt: PromptFormat) -> np.ndarray:
    """[n, D]: each text's last question token state at the edited layer, minus the calibration centre."""
    center = engine.routed.spaces[fmt].encoder.center
    out = np.zeros((len(texts), engine.host.hidden_size), np.float32)
    for start in range(0, len(texts), 32):
        encoded = [engine.encode(t, fmt) for t in texts[start : start + 32]]
        hidden, _ = engine._capture([EditExample(e.ids, []) for e in encoded])
        for i, e in enumerate(encoded):
            out[start + i] = (hidden[i, e.span[1] - 1].float() - center).numpy()
        print(f"\r{start + len(encoded)}/{len(texts)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return out


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    rng = random.Random(0)
    files = sorted((Path(__file__).parents[1] / "relation_templates").glob("part-*.jsonl"))
    items = template_texts(files, rng, subjects=1) + counterfact_texts(rng, n=1500)
    engine = EditingEngine(ModelHost.load(None, Path("var")))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "train.json").write_text(json.dumps([[t, lab, g] for t, lab, g in items]))
    formats = [PromptFormat(f) for f in (sys.argv[2:] or ["chat"])]
    for fmt in formats:
        x = states(engine, [t for t, _, _ in items], fmt)
        np.save(OUT / f"train-{fmt}.npy", x)
        np.save(OUT / f"center-{fmt}.npy", engine.routed.spaces[fmt].encoder.center.numpy())
    (OUT / "train.json").write_text(json.dumps([[t, lab, g] for t, lab, g in items]))
    print(len(items), "texts")


if __name__ == "__main__":
    main()
