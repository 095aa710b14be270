"""Training one edit's LoRA against the frozen base model.

The layers below the edited layer never change, so their output is computed once per edit (by the
caller's capture pass) and every step runs only the edited layer and the ones above it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F

from editors.model_host import DecoderLayout
from editors.routed_lora import RoutedLayer, TrainPlan, TrainSession
from editors.types import EngineConfig


@dataclass(frozen=True)
class EditExample:
    prompt_ids: list[int]
    target_ids: list[int]


R = TypeVar("R")


class TrainingTimeout(Exception):
    """Training ran past its time budget before the edit was learnt; nothing of it may be kept."""

    def __init__(self, steps: int, seconds: float, budget: float) -> None:
        super().__init__(f"training did not converge within {budget:g} s ({steps} steps in {seconds:.1f} s)")
        self.steps, self.seconds, self.budget = steps, seconds, budget


@dataclass
class TrainResult:
    lora_A: torch.Tensor
    lora_B: torch.Tensor
    steps: int
    loss: float
    seconds: float  # compute time of the whole edit (the `spent` passed in, plus the steps)


def _init_lora(rank: int, in_features: int, out_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    # PEFT's default init: A Kaiming-uniform, B zero, so the edit starts as the identity.
    gen = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(in_features)
    lora_A = (torch.rand(rank, in_features, generator=gen) * 2 - 1) * bound
    return lora_A.requires_grad_(), torch.zeros(out_features, rank, requires_grad=True)


def train_lora_steps(
    layout: DecoderLayout,
    routed: RoutedLayer,
    config: EngineConfig,
    hidden: torch.Tensor,
    layer_kwargs: dict[str, dict],
    layer: int,
    examples: list[EditExample],
    in_features: int,
    out_features: int,
    spent: float = 0.0,
) -> Generator[None, None, TrainResult]:
    """Adam on (A, B) until every target token is the argmax in every example and the mean loss is under
    `config.target_loss`, or `max_steps`; yields after each step, so the model thread can decode for other
    requests between steps (app/worker.py).

    With `config.max_train_seconds`, raises TrainingTimeout once this edit's own compute time (`spent` so
    far, plus its steps; not the time others used between them) passes that budget without convergence:
    checked after each step, so the overrun is at most one step."""
    resumed = time.perf_counter()
    # Trainable weights and Adam's state in float32 whatever the model's dtype, on the model's device.
    lora_A, lora_B = (
        w.detach().to(hidden.device).requires_grad_()
        for w in _init_lora(config.rank, in_features, out_features, config.seed)
    )
    optimizer = torch.optim.Adam([lora_A, lora_B], lr=config.learning_rate)
    # Logit at position t predicts token t+1: gather only target positions, so lm_head runs on few rows.
    rows = torch.tensor([r for r, e in enumerate(examples) for _ in e.target_ids])
    cols = torch.tensor([len(e.prompt_ids) - 1 + i for e in examples for i in range(len(e.target_ids))])
    labels = torch.tensor([t for e in examples for t in e.target_ids], device=hidden.device)
    upper = [(layout.layers[i], layout.layer_types[i]) for i in range(layer, len(layout.layers))]
    no_cache = ("past_key_values", "past_key_value", "cache")
    kwargs = {kind: {k: v for k, v in kw.items() if k not in no_cache} for kind, kw in layer_kwargs.items()}
    session = TrainSession(TrainPlan(lora_A, lora_B, config.alpha / config.rank))
    loss_value = float("nan")
    steps = 0
    for steps in range(1, config.max_steps + 1):  # noqa: B007 - steps is reported
        with routed.session_scope(session):  # per step: between steps the layer serves other requests
            h = hidden
            for module, kind in upper:
                h = module(h, **kwargs[kind])
                h = h[0] if isinstance(h, tuple) else h
            logits = layout.logits(h[rows, cols])
        loss = F.cross_entropy(logits.float(), labels)
        loss_value = float(loss.detach())
        if bool((logits.detach().argmax(-1) == labels).all()) and (
            config.target_loss is None or loss_value < config.target_loss
        ):
            break
        spent += time.perf_counter() - resumed
        if config.max_train_seconds is not None and spent > config.max_train_seconds:
            raise TrainingTimeout(steps, spent, config.max_train_seconds)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        yield
        resumed = time.perf_counter()
    spent += time.perf_counter() - resumed
    return TrainResult(lora_A.detach().cpu().clone(), lora_B.detach().cpu().clone(), steps, loss_value, spent)


def drain(steps: Generator[None, None, R]) -> R:
    """Run a stepped computation to its end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
