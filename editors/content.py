"""Content vectors: one vector per question that says what it is about, from the edited layer's input.

The last prompt token's state (the first router's key) mostly encodes the template and the chat turn
around the question; pooled over the question's own tokens, with each token weighted by how unlike any
token of a fixed generic background it is, the vector is dominated by the question's distinctive words
(its subject and relation) and barely moved by a system prompt or earlier turns. Measured in
studies/content_router: paraphrase -> own edit in the top 1 rises from 0.79 to 0.95 for raw prompts
and from 0.79 to 0.93 under a custom system prompt.

Semantics, for span states s [T, D] of one question:
    t_i = normalise(s_i - center)                     # center: mean background token state
    w_i = max(0, 1 - max_j <t_i, b_j>)                # b: normalised background token states [Nb, D]
    content = normalise(sum_i w_i t_i / sum_i w_i)    # all-zero weights: the plain mean
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _normalise(x: torch.Tensor) -> torch.Tensor:
    normalised: torch.Tensor = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return normalised


@dataclass(frozen=True)
class ContentEncoder:
    center: torch.Tensor  # [D] mean background token state
    background: torch.Tensor  # [Nb, D] centred, normalised background token states

    @classmethod
    def fit(cls, background_states: torch.Tensor) -> ContentEncoder:
        """`background_states` [Nb, D]: the question-span token states of fixed generic prompts."""
        states = background_states.float()
        center = states.mean(0)
        return cls(center, _normalise(states - center))

    def encode(self, spans: list[torch.Tensor]) -> torch.Tensor:
        """One content vector [D] per question span ([T_i, D] each) -> [len(spans), D] float32."""
        out = []
        for states in spans:
            tokens = _normalise(states.float() - self.center)  # [T, D]
            weights = (1 - (tokens @ self.background.T).amax(dim=1)).clamp_min(0)  # [T]
            if float(weights.sum()) <= 1e-6:
                weights = torch.ones_like(weights)
            out.append(_normalise((weights[:, None] * tokens).sum(0) / weights.sum()))
        return torch.stack(out)
