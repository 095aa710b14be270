"""A small cross-attention classifier over two texts' token features: do they ask the same question?"""

from __future__ import annotations

import math

import torch
from torch import nn

from studies.pair_verifier.features import TextFeat, flags

N_FLAGS = 4


def prepare(q: TextFeat, e: TextFeat, subject: frozenset[str]) -> tuple:
    """The model's inputs for one pair: each side's states and lexical flags (computed once per pair)."""
    return q.states[:63], flags(q, e, subject)[:63], e.states[:63], flags(e, q, subject)[:63]


class PairModel(nn.Module):
    def __init__(self, d_in: int, d: int = 128, layers: int = 2, heads: int = 4, positions: bool = False):
        super().__init__()
        self.inp = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d))
        self.flag = nn.Linear(N_FLAGS, d)
        self.segment = nn.Embedding(2, d)
        self.cls = nn.Parameter(torch.zeros(d))
        self.pos = nn.Embedding(64, d) if positions else None
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.1, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))

    def forward(self, batch: list) -> torch.Tensor:
        """Each item: (query states [Tq, D], query flags [Tq, F], edit states [Te, D], edit flags [Te, F])."""
        items = [item if len(item) == 4 else prepare(*item) for item in batch]
        width = 1 + max(len(qs) + len(es) for qs, _, es, _ in items)
        d_in = items[0][0].shape[1]
        feats = torch.zeros(len(items), width, d_in)
        fl = torch.zeros(len(items), width, N_FLAGS)
        seg = torch.zeros(len(items), width, dtype=torch.long)
        pos = torch.zeros(len(items), width, dtype=torch.long)
        pad = torch.ones(len(items), width, dtype=torch.bool)
        for i, (qs, qf, es, ef) in enumerate(items):
            nq, ne = len(qs), len(es)
            feats[i, 1 : 1 + nq], feats[i, 1 + nq : 1 + nq + ne] = qs.float(), es.float()
            fl[i, 1 : 1 + nq], fl[i, 1 + nq : 1 + nq + ne] = qf, ef
            seg[i, 1 + nq : 1 + nq + ne] = 1
            pos[i, 1 : 1 + nq], pos[i, 1 + nq : 1 + nq + ne] = torch.arange(nq), torch.arange(ne)
            pad[i, : 1 + nq + ne] = False
        x = self.inp(feats) + self.flag(fl) + self.segment(seg)
        if self.pos is not None:
            x = x + self.pos(pos)
        x[:, 0] = self.cls
        h = self.enc(x, src_key_padding_mask=pad)
        return self.out(h[:, 0]).squeeze(-1)


def train(
    model: PairModel,
    pairs: list,
    labels: list[float],
    steps: int = 3000,
    batch: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    log_every: int = 500,
) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    y = torch.tensor(labels)
    pos, neg = (y > 0.5).nonzero().squeeze(1), (y <= 0.5).nonzero().squeeze(1)
    model.train()
    for step in range(steps):  # balanced batches: half positives, half negatives
        half = batch // 2
        idx = torch.cat(
            [
                pos[torch.randint(len(pos), (half,), generator=g)],
                neg[torch.randint(len(neg), (batch - half,), generator=g)],
            ]
        ).tolist()
        logits = model([pairs[i] for i in idx])
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y[idx])
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.step()
        if log_every and step % log_every == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    model.eval()


@torch.no_grad()
def predict(model: PairModel, pairs: list, batch: int = 256) -> torch.Tensor:
    model.eval()
    return (
        torch.cat([torch.sigmoid(model(pairs[i : i + batch])) for i in range(0, len(pairs), batch)])
        if pairs
        else torch.zeros(0)
    )
