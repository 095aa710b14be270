"""Training one edit's LoRA against the frozen base model.

The layers below the edited layer never change, so their output is computed once per edit (by the
caller's capture pass) and every step runs only the edited layer and the ones above it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from editors.model_host import DecoderLayout
from editors.routed_lora import BatchTrainPlan, RoutedLayer, TrainPass, TrainPlan
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
    layer_kwargs: dict[str, dict[str, Any]],
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
    forward_pass = TrainPass(TrainPlan(lora_A, lora_B, config.alpha / config.rank))
    loss_value = float("nan")
    steps = 0
    for steps in range(1, config.max_steps + 1):  # noqa: B007 - steps is reported
        with routed.pass_scope(forward_pass):  # per step: between steps the layer serves other requests
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
        torch.autograd.backward(loss)
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
            result: R = done.value
            return result


def length_buckets(lengths: Sequence[int], fill: float = 0.7) -> list[list[int]]:
    """Indices grouped so that each group's rows are at least `fill` of its longest (longest first): padded
    batches of similar lengths instead of one mostly padded batch."""
    order = sorted(range(len(lengths)), key=lambda k: -lengths[k])
    buckets: list[list[int]] = []
    for k in order:
        if buckets and lengths[k] >= fill * lengths[buckets[-1][0]]:
            buckets[-1].append(k)
        else:
            buckets.append([k])
    return buckets


@dataclass
class _Group:
    """Rows of similar length trained in one padded forward (BatchTrainer)."""

    hidden: torch.Tensor  # [n, T, D]
    kwargs: dict[str, dict[str, Any]]  # per attention kind (DecoderLayout.layer_types)
    edit_of_row: torch.Tensor  # int64 [n]: which member's adapter each row trains
    where: tuple[torch.Tensor, torch.Tensor]  # (row, column) of each target token's prediction
    labels: list[int]
    edit_of_label: list[int]


@dataclass
class _Member:
    """One edit training in a shared batch: its rows, its own adapter and optimiser."""

    tag: int
    hidden: torch.Tensor  # [n, T, D] its rows' edited-layer input, T its own longest row
    examples: list[EditExample]
    spent: float
    lora_A: torch.Tensor
    lora_B: torch.Tensor
    optimizer: torch.optim.Optimizer
    steps: int = 0


class BatchTrainer:
    """Trains several edits' LoRAs together: one forward/backward through the edited layer and the layers above
    over every member's rows, each row through its own edit's adapter (gathered per row, as the bank serves).

    Each edit is trained exactly as train_lora_steps trains it alone: the same initial adapter, its own Adam,
    the loss of its own rows (rows never see each other: causal attention over right-padded rows), the same
    stopping rule; an edit leaves the batch as soon as it is learnt, and others may join at any step."""

    def __init__(
        self,
        layout: DecoderLayout,
        routed: RoutedLayer,
        config: EngineConfig,
        layer: int,
        in_features: int,
        out_features: int,
    ) -> None:
        self.layout, self.routed, self.config, self.layer = layout, routed, config, layer
        self.in_features, self.out_features = in_features, out_features
        self.members: list[_Member] = []
        self._groups: list[_Group] = []
        self._labels = self._edit_of_label = torch.zeros(0, dtype=torch.long)
        self._stale = True

    def __len__(self) -> int:
        return len(self.members)

    def add(self, tag: int, hidden: torch.Tensor, examples: list[EditExample], spent: float = 0.0) -> None:
        """A new edit joins at the next step: hidden [n, T, D] is the edited layer's input for its examples."""
        # float32 whatever the model's dtype, on the model's device, as train_lora_steps keeps them
        lora_A, lora_B = (
            w.detach().to(hidden.device).requires_grad_()
            for w in _init_lora(self.config.rank, self.in_features, self.out_features, self.config.seed)
        )
        optimizer = torch.optim.Adam([lora_A, lora_B], lr=self.config.learning_rate)
        self.members.append(_Member(tag, hidden, examples, spent, lora_A, lora_B, optimizer))
        self._stale = True

    def _rebuild(self) -> None:
        """The members' rows as a few right-padded batches of similar lengths (chat rows are about three times
        as long as raw ones: one batch would be mostly padding), and where each target token is."""
        rows = [(i, r) for i, m in enumerate(self.members) for r in range(len(m.examples))]
        lengths = [
            len(self.members[i].examples[r].prompt_ids) + len(self.members[i].examples[r].target_ids) for i, r in rows
        ]
        self._groups = [self._group([rows[k] for k in bucket]) for bucket in length_buckets(lengths)]
        labels = [t for g in self._groups for t in g.labels]
        edit_of_label = [e for g in self._groups for e in g.edit_of_label]
        device = self.members[0].hidden.device
        self._labels = torch.tensor(labels, dtype=torch.long, device=device)
        self._edit_of_label = torch.tensor(edit_of_label, dtype=torch.long, device=device)
        self._stale = False

    def _group(self, rows: list[tuple[int, int]]) -> _Group:
        """One right-padded batch of (member, example) rows."""
        examples = [self.members[i].examples[r] for i, r in rows]
        width = max(len(e.prompt_ids) + len(e.target_ids) for e in examples)
        hidden = torch.stack(
            [
                F.pad(self.members[i].hidden[r, :width], (0, 0, 0, max(0, width - self.members[i].hidden.shape[1])))
                for i, r in rows
            ]
        )
        device = hidden.device
        positions = torch.arange(width, device=device)[None]  # [1, T]
        # Each attention kind's mask (causal; sliding layers: their window) and rotary, as the model's own forward
        # calls its layers; causal, so a row's real tokens never see its padding.
        kwargs = {
            kind: {
                "attention_mask": self.layout.causal_mask(width, kind, hidden.dtype, device),
                "position_ids": positions,
                "position_embeddings": self.layout.position_embeddings(hidden, positions, kind),
            }
            for kind in set(self.layout.layer_types[self.layer :])
        }
        at_row, at_col, labels, edit_of_label = [], [], [], []
        for k, ((i, _), e) in enumerate(zip(rows, examples, strict=True)):
            for j, t in enumerate(e.target_ids):
                at_row.append(k)
                at_col.append(len(e.prompt_ids) - 1 + j)
                labels.append(t)
                edit_of_label.append(i)
        edit_of_row = torch.tensor([i for i, _ in rows], dtype=torch.long, device=device)
        where = (
            torch.tensor(at_row, dtype=torch.long, device=device),
            torch.tensor(at_col, dtype=torch.long, device=device),
        )
        return _Group(hidden, kwargs, edit_of_row, where, labels, edit_of_label)

    def step(self) -> list[tuple[int, TrainResult | TrainingTimeout]]:
        """One step for every member: the ones learnt (or out of steps, or of time) leave with their result."""
        if not self.members:
            return []
        started = time.perf_counter()
        if self._stale:
            self._rebuild()
        members = self.members
        lora_A = torch.stack([m.lora_A for m in members])
        lora_B = torch.stack([m.lora_B for m in members])
        scaling = self.config.alpha / self.config.rank
        outputs = []
        for group in self._groups:
            with self.routed.pass_scope(TrainPass(BatchTrainPlan(lora_A, lora_B, group.edit_of_row, scaling))):
                h = group.hidden
                for index in range(self.layer, len(self.layout.layers)):
                    h = self.layout.layers[index](h, **group.kwargs[self.layout.layer_types[index]])
                    h = h[0] if isinstance(h, tuple) else h
                outputs.append(h[group.where])
        logits = self.layout.logits(torch.cat(outputs))
        labels, edit_of_label = self._labels, self._edit_of_label
        per_token = F.cross_entropy(logits.float(), labels, reduction="none")
        count = torch.zeros(len(members), device=per_token.device).index_add_(
            0, edit_of_label, torch.ones_like(per_token)
        )
        losses = torch.zeros(len(members), device=per_token.device).index_add(0, edit_of_label, per_token) / count
        wrong = torch.zeros(len(members), device=per_token.device).index_add_(
            0, edit_of_label, (logits.detach().argmax(-1) != labels).float()
        )
        loss_values = losses.detach().tolist()
        learnt = [
            w == 0 and (self.config.target_loss is None or v < self.config.target_loss)
            for w, v in zip(wrong.tolist(), loss_values, strict=True)
        ]
        training = [i for i, done in enumerate(learnt) if not done]
        if training:
            # Each edit's gradient is that of its own mean loss (the others' do not depend on its adapter).
            torch.autograd.backward(losses[training].sum())
        share = (time.perf_counter() - started) / len(members)  # each member's part of this step's compute
        finished: list[tuple[int, TrainResult | TrainingTimeout]] = []
        staying: list[_Member] = []
        for i, m in enumerate(members):
            m.steps += 1
            m.spent += share
            budget = self.config.max_train_seconds
            if not learnt[i] and budget is not None and m.spent > budget:
                finished.append((m.tag, TrainingTimeout(m.steps, m.spent, budget)))
                continue
            if not learnt[i]:  # as alone: the last allowed step still updates, then the edit is done
                m.optimizer.step()
                m.optimizer.zero_grad(set_to_none=True)
            if learnt[i] or m.steps >= self.config.max_steps:
                result = TrainResult(
                    m.lora_A.detach().cpu().clone(), m.lora_B.detach().cpu().clone(), m.steps, loss_values[i], m.spent
                )
                finished.append((m.tag, result))
            else:
                staying.append(m)
        if len(staying) != len(members):
            self.members = staying
            self._stale = True
        return finished
