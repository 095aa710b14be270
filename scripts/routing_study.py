"""Routing study behind the default layer and thresholds (docs/benchmarks.md, "How the defaults were chosen").

    python scripts/routing_study.py capture ../shared/data/zsre/zsre_mend_train_1k.json zsre states.npz
    python scripts/routing_study.py analyse states.npz

`capture` stores the last-token hidden state entering layers 20-29 for every record's edit prompt,
paraphrase and locality prompt, chat-formatted and raw, plus the fixed calibration prompts. `analyse`
indexes the edit prompts' keys (centred on the calibration mean, normalised) and prints, per layer and
threshold: paraphrases routed to their own edit, paraphrases routed to a wrong edit, locality prompts
routed anywhere, and edit prompts of *other* records routed anywhere once their own key is left out
(an unedited question of the same kind being caught by some edit).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from editors.calibration import CALIBRATION_PROMPTS
from editors.datasets import load_records
from editors.model_host import ModelHost

LAYERS = list(range(20, 30))


def capture(dataset: str, fmt: str, out: str, n: int = 1000) -> None:
    host = ModelHost.load(None, Path("var"))
    records = load_records(dataset, fmt, n).records
    pad = host.tokenizer.pad_token_id or 0

    def states(texts: list[str], chat: bool) -> np.ndarray:
        out_: list[np.ndarray] = []
        for i in range(0, len(texts), 32):
            ids = [host.encode(host.format_prompt(t, chat)) for t in texts[i : i + 32]]
            width = max(map(len, ids))
            inp = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
            att = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
            pos = (att.cumsum(1) - 1).clamp(min=0)  # left padding: real tokens start at position 0
            with torch.no_grad():
                hs = host.model(input_ids=inp, attention_mask=att, position_ids=pos, output_hidden_states=True)
            # hidden_states[L] is the residual stream entering layer L.
            out_.append(np.stack([hs.hidden_states[layer][:, -1].float().numpy() for layer in LAYERS], 1))
        return np.concatenate(out_)

    saved: dict[str, np.ndarray] = {}
    for chat in (True, False):
        tag = "chat" if chat else "raw"
        saved[f"src_{tag}"] = states([r.prompt for r in records], chat)
        saved[f"reph_{tag}"] = states([r.rephrase or r.prompt for r in records], chat)
        saved[f"loc_{tag}"] = states([r.locality_prompt or r.prompt for r in records], chat)
        saved[f"cal_{tag}"] = states(list(CALIBRATION_PROMPTS), chat)
    np.savez(out, **saved)


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def analyse(path: str) -> None:
    data = np.load(path)
    for tag in ("chat", "raw"):
        for li, layer in enumerate(LAYERS):
            src, reph, loc, cal = (data[f"{k}_{tag}"][:, li] for k in ("src", "reph", "loc", "cal"))
            center = cal.mean(0)
            keys, para, unrelated = _norm(src - center), _norm(reph - center), _norm(loc - center)
            s_para, s_loc, s_other = para @ keys.T, unrelated @ keys.T, keys @ keys.T
            np.fill_diagonal(s_other, -9.0)
            own = np.arange(len(keys))
            best, sim = s_para.argmax(1), s_para.max(1)
            t1 = float(np.quantile(s_loc.max(1), 0.99))
            routed_own = np.mean((best == own) & (sim >= t1))
            print(
                f"{tag} L{layer}: paraphrase top-1 {np.mean(best == own):.3f}; at the threshold letting 1% of "
                f"locality prompts through ({t1:.3f}): paraphrases routed to own {routed_own:.3f}"
            )
            if layer not in (26, 29):
                continue
            for t in np.arange(0.50, 0.91, 0.02):
                print(
                    f"    t={t:.2f} para->own {np.mean((best == own) & (sim >= t)):.3f}"
                    f"  para->wrong {np.mean((best != own) & (sim >= t)):.3f}"
                    f"  locality routed {np.mean(s_loc.max(1) >= t):.3f}"
                    f"  other edit prompts routed {np.mean(s_other.max(1) >= t):.3f}"
                )


if __name__ == "__main__":
    if sys.argv[1:2] == ["capture"]:
        capture(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1:2] == ["analyse"]:
        analyse(sys.argv[2])
    else:
        sys.exit(__doc__)
