"""Learn W [D, 128] so that questions asking the same attribute/relation are close after W, others far, and show
the routing frontier on the study sets with a relation check added to the gate."""

from __future__ import annotations

import argparse
import collections
import json
import random

import numpy as np
import torch

from studies.relation_projection.features import OUT
from studies.routing_precision.analyse import Study, fmt, report

TEMPERATURE = 0.1


def train_w(x: torch.Tensor, labels: list[str], groups: list[str], dim: int, steps: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    by_group: dict[str, dict[str, list[int]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for i, (lab, grp) in enumerate(zip(labels, groups, strict=True)):
        by_group[grp][lab].append(i)
    names = sorted(by_group)
    weights = [len(by_group[n]) for n in names]
    w = torch.nn.Parameter(torch.randn(x.shape[1], dim, generator=g) / x.shape[1] ** 0.5)
    opt = torch.optim.Adam([w], lr=1e-3)
    for step in range(steps):
        grp = rng.choices(names, weights)[0]
        rels = [r for r in by_group[grp] if len(by_group[grp][r]) >= 2]
        rels = rng.sample(rels, min(16, len(rels)))
        idx, lab = [], []
        for j, r in enumerate(rels):
            pick = rng.sample(by_group[grp][r], min(4, len(by_group[grp][r])))
            idx += pick
            lab += [j] * len(pick)
        z = torch.nn.functional.normalize(x[idx] @ w, dim=-1)
        y = torch.tensor(lab)
        sim = z @ z.T / TEMPERATURE
        eye = torch.eye(len(idx), dtype=torch.bool)
        sim = sim.masked_fill(eye, -1e9)
        pos = (y[:, None] == y[None]) & ~eye
        logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
        loss = -(logp * pos).sum(1) / pos.sum(1).clamp_min(1)
        loss = loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 1000 == 0:
            print(f"step {step} loss {loss.item():.3f}", flush=True)
    return w.detach()


def relation_vectors(study: Study, center: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    last = torch.stack([s[-1].float() for s in study.states]) - center
    last = torch.nn.functional.normalize(last, dim=-1)
    return torch.nn.functional.normalize(last @ w if w is not None else last, dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="opdev-chat,kecf-chat,kere-chat,zsre-chat,cf-chat")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--no-cf", action="store_true")
    ap.add_argument("--save", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    items = json.loads((OUT / "train.json").read_text())
    x = torch.from_numpy(np.load(OUT / "train-chat.npy"))
    keep = [i for i, (_, _, grp) in enumerate(items) if not (args.no_cf and grp == "cf")]
    x = torch.nn.functional.normalize(x[keep], dim=-1)
    labels = [items[i][1] for i in keep]
    groups = [items[i][2] for i in keep]
    w = train_w(x, labels, groups, args.dim, args.steps)
    if args.save:
        torch.save(w, args.save)
    center = torch.from_numpy(np.load(OUT / "center-chat.npy"))
    for name in args.sets.split(","):
        s = Study(name)
        for label, proj in (("raw cosine", None), ("W", w)):
            r = relation_vectors(s, center, proj)
            print(name, label, "stage1+gate:", fmt(report(s, 0.40, lambda st, q, c: c.cov >= 1)))
            for tau in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):

                def verify(st: Study, q: int, c, tau=tau, r=r) -> bool:
                    if c.cov < 1:
                        return False
                    ks, _ = st.edits[c.edit]
                    return max(float(r[q] @ r[k]) for k in ks) >= tau

                print(f"  tau={tau}: {fmt(report(s, 0.40, verify))}")


if __name__ == "__main__":
    main()
