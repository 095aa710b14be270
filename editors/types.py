"""Plain data passed between the editing engine and its callers (service, evaluation, benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class PromptFormat(StrEnum):
    """How a question reaches the model: as the user turn of its chat template, or as raw text to continue.

    Each format has its own routing keys (the same question's states differ between them)."""

    CHAT = "chat"
    RAW = "raw"


@dataclass(frozen=True)
class EngineConfig:
    """Knobs of the editing method. Defaults were chosen by measurement (see docs/benchmarks.md)."""

    layer: int = 26  # the edited layer: keys are the residual stream entering it, LoRA sits in its MLP
    # Routing score = content cosine x (share of the key's subject words in the query)^2, one threshold for
    # chat and raw prompts alike. Chosen in scripts/routing_study.py as the value that keeps neighbours
    # (same template, other subject) and locality prompts routed <= 2% on ZsRE and CounterFact dev records.
    threshold: float = 0.40
    tie_margin: float = 1e-3  # keys this close to the best score count as the same fact: the newest edit wins
    rank: int = 4
    alpha: float = 8.0
    learning_rate: float = 5e-2
    max_steps: int = 60
    max_train_seconds: float | None = None  # an edit not learnt in this long fails (TrainingTimeout)
    seed: int = 0
    generic_contexts: int = 0  # generic prompts also trained to answer the target (see EditingEngine.train_edit)
    search_k: int = 8  # neighbours fetched per query before the threshold / newest-wins rule
    # dtype the bank stores active adapters in ("float16", "bfloat16"; None: the model's). The bank is most of
    # an active edit's memory; the delta is still computed in the model's dtype. float16 halves it and left
    # every edit's answer as float32 gave it (docs/benchmarks.md, "Scale": scripts/bank_precision_study.py).
    bank_dtype: str | None = "float16"


@dataclass
class TrainedEdit:
    """Everything one edit needs to be stored and activated; nothing is active yet."""

    keys: np.ndarray  # float32 [n_keys, hidden]: content vectors (editors/content.py), one per key
    key_kinds: list[str]  # one label per key row, e.g. "chat:prompt", "raw:rephrase:0"
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
    routed_edit_id: str | None  # the edit that answered, or None
    similarity: float | None  # the best routing score, fired or not (None: no keys, or asked without edits)
    token_ids: list[int] = field(default_factory=list)
    nearest_edit_id: str | None = None  # the edit of that best score, also when it did not fire


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
