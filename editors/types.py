"""Plain data passed between the editing engine and its callers (service, evaluation, benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EngineConfig:
    """Knobs of the editing method. Defaults were chosen by measurement (see docs/benchmarks.md)."""

    layer: int = 26  # the edited layer: keys are the residual stream entering it, LoRA sits in its MLP
    # Measured on 998 ZsRE edits (docs/benchmarks.md): 0.70 lets 0.5% of unrelated questions reach an edit.
    threshold: float = 0.70  # centred cosine a chat-formatted query needs to fire an edit
    # Raw completion prompts (their own key space) fire only on near-verbatim edit prompts: their last-token
    # states hardly carry the subject (CounterFact: 80% of same-template prompts of other subjects reach
    # an edit even at 0.90; 1% at 0.99).
    raw_threshold: float = 0.99
    tie_margin: float = 1e-3  # keys this close to the best hit count as the same fact: the newest edit wins
    rank: int = 4
    alpha: float = 8.0
    learning_rate: float = 5e-2
    max_steps: int = 60
    seed: int = 0
    generic_contexts: int = 0  # generic prompts also trained to answer the target (see EditingEngine.train_edit)
    search_k: int = 8  # neighbours fetched per query before the threshold / newest-wins rule


@dataclass
class TrainedEdit:
    """Everything one edit needs to be stored and activated; nothing is active yet."""

    keys: np.ndarray  # float32 [n_keys, hidden]: raw edited-layer inputs; the router centres and normalises
    key_kinds: list[str]  # one label per key row, e.g. "chat", "raw", "rephrase-chat:0"
    adapter: bytes  # safetensors bytes (lora_A, lora_B + metadata)
    adapter_sha256: str
    steps: int
    loss: float
    seconds: float  # total wall time of train_edit
    key_seconds: float = 0.0
    train_seconds: float = 0.0


@dataclass
class Generation:
    text: str  # the continuation only
    routed_edit_id: str | None
    similarity: float | None
    token_ids: list[int] = field(default_factory=list)


@dataclass
class Score:
    """Teacher-forced view of one (prompt, target) pair."""

    target_ids: list[int]
    predicted_ids: list[int]  # argmax at each target position, teacher-forced
    target_logprob: float  # sum of log p(target token) over the target
    routed_edit_id: str | None
    similarity: float | None

    @property
    def token_accuracy(self) -> float:
        if not self.target_ids:
            return 0.0
        hits = sum(int(p == t) for p, t in zip(self.predicted_ids, self.target_ids, strict=True))
        return hits / len(self.target_ids)
