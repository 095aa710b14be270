"""Picking each row's next token from its logits, by the row's own sampling settings.

Every setting a request may legally send is computable here: a positive temperature as small as 5e-324 is a
greedy choice (logits are shifted by their maximum before dividing, so nothing overflows), any top_p keeps at
least the most likely token, and any integer seed seeds a generator (reduced to 64 bits). A row that still
cannot be sampled raises for that row alone (editors/batch.py fails it and goes on with the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from editors.types import Sampling

NAN_LOGITS = "the model's distribution is not a number (NaN logits)"
SEED_SPACE = 2**64  # torch generators take seeds in [0, 2^64)


def generator(seed: int) -> torch.Generator:
    """A generator for any integer seed (the same seed always samples the same tokens)."""
    return torch.Generator().manual_seed(seed % SEED_SPACE)


@dataclass(frozen=True)
class Pick:
    """The chosen token, its log-probability, and the most likely alternatives (when asked for)."""

    token: int
    logprob: float | None = None  # None unless asked for
    top: tuple[tuple[int, float], ...] = ()  # (token, logprob), most likely first


def pick(
    logits: torch.Tensor, sampling: Sampling, rng: torch.Generator | None, logprobs: bool = False, top_logprobs: int = 0
) -> Pick:
    """logits [V] (already masked where the row must not go) -> the row's next token.

    Log-probabilities (only when asked: a pass over the vocabulary per row and step) are those of the model's
    distribution (temperature 1, no top_p), as OpenAI reports them."""
    if sampling.temperature <= 0 or rng is None:
        token = int(logits.argmax())  # a NaN anywhere is the argmax, so the check below sees it
        if not logprobs:
            if math.isnan(float(logits[token])):
                raise ValueError(NAN_LOGITS)
            return Pick(token)
        scores = logits.double()
    else:
        scores = logits.double()
        shifted = (scores - scores.max()) / sampling.temperature  # <= 0 everywhere: exp never overflows
        probs = torch.softmax(shifted, dim=-1)
        if sampling.top_p < 1.0:  # nucleus: the smallest set of tokens whose probability reaches top_p
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < sampling.top_p
            keep[0] = True
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        token = int(torch.multinomial(probs, 1, generator=rng))
    log_probs = torch.log_softmax(scores, dim=-1)
    chosen = float(log_probs[token])
    if not math.isfinite(chosen) and chosen != -math.inf:
        raise ValueError(NAN_LOGITS)
    if not logprobs:
        return Pick(token)
    top: tuple[tuple[int, float], ...] = ()
    if top_logprobs:
        values, ids = log_probs.topk(min(top_logprobs, log_probs.shape[0]))
        top = tuple((int(i), float(v)) for i, v in zip(ids, values, strict=True))
    return Pick(token, chosen, top)
