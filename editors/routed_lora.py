"""The routed-LoRA mechanism, bottom-up: plans -> bank -> banked Linear -> passes -> routed layer.

Every active edit's LoRA is stacked in one bank. The edited decoder layer decides, per batch row and from
the row's own question, which edit (if any) answers it; the edited projection inside it then adds exactly
that edit's delta to exactly those rows. Edits apply only inside a forward pass: outside one the layer is the
untouched base layer, which is what makes "use_edits=False" and exact rollback bit-identical.

Shapes: B batch rows, T tokens, D hidden width (the layer's input), R rows routed to an edit,
r the LoRA rank, in/out the edited projection's widths.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from editors.content import ContentEncoder
from editors.types import PromptFormat
from routing import lexical
from routing.gate import Gate
from routing.key_index import Candidate, KeyIndex, Route


# ---- plans: what the edited projection adds during one forward pass --------------------------------------
@dataclass(frozen=True)
class RowPlan:
    """Which batch rows get which bank slot during one forward pass."""

    rows: torch.Tensor  # int64 [R], batch rows that were routed to an edit
    slots: torch.Tensor  # int64 [R], bank slot of each routed row's edit


@dataclass(frozen=True)
class TrainPlan:
    """A single trainable adapter applied to every row (used only while training one edit)."""

    lora_A: torch.Tensor  # [r, in]
    lora_B: torch.Tensor  # [out, r]
    scaling: float  # alpha / r, as PEFT scales


@dataclass(frozen=True)
class BatchTrainPlan:
    """Several trainable adapters, one per edit, each applied to its own rows (training edits together)."""

    lora_A: torch.Tensor  # [E, r, in]
    lora_B: torch.Tensor  # [E, out, r]
    edit_of_row: torch.Tensor  # int64 [B], which adapter each batch row trains
    scaling: float


# ---- the bank: every active edit's adapter, stacked ---------------------------------------------------
class LoRABank:
    """Stacked adapters [capacity, ...]; slots are reused after removal so the bank stays dense enough.

    A row answering through an edit holds its slot (`acquire` / `release`, as vLLM counts KV block users):
    removing the edit takes it out of `slot()` at once, so no later row can reach it, while its weights stay
    in the slot until the last holder releases it; only then is the slot zeroed and reused."""

    def __init__(self, in_features: int, out_features: int, rank: int, dtype: torch.dtype, device: torch.device):
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.lora_A = torch.zeros(0, rank, in_features, dtype=dtype, device=device)  # [capacity, r, in]
        self.lora_B = torch.zeros(0, out_features, rank, dtype=dtype, device=device)  # [capacity, out, r]
        self.scaling = torch.zeros(0, dtype=dtype, device=device)  # [capacity]
        self._slot_of: dict[str, int] = {}
        self._free: list[int] = []
        self._holders: dict[int, int] = {}  # slot -> rows answering through it
        self._retired: set[int] = set()  # slots of removed edits, still held by a row

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, edit_id: str) -> bool:
        return edit_id in self._slot_of

    def slot(self, edit_id: str) -> int:
        return self._slot_of[edit_id]

    def reserve(self, capacity: int) -> None:
        """Room for `capacity` adapters without regrowing: a startup that knows its edit count allocates
        exactly that, instead of up to twice it by doubling (the bank is most of an edit's memory)."""
        if capacity > self.lora_A.shape[0]:
            self._grow(capacity)

    def _grow(self, new: int | None = None) -> None:
        old = self.lora_A.shape[0]
        new = new or max(16, old * 2)  # doubling keeps appends amortised O(1)
        # Uninitialised beyond the old slots: a slot is written when an edit takes it and read only while
        # a plan names it, so no page of a large reserve is touched before it is used.
        self.lora_A, self.lora_B, self.scaling = (
            _extended(self.lora_A, new),
            _extended(self.lora_B, new),
            _extended(self.scaling, new),
        )
        self._free.extend(range(new - 1, old - 1, -1))

    def add(self, edit_id: str, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> int:
        return self.add_many([edit_id], lora_A[None], lora_B[None], [scaling])[0]

    def add_many(
        self, edit_ids: Sequence[str], lora_A: torch.Tensor, lora_B: torch.Tensor, scalings: Sequence[float]
    ) -> list[int]:
        """Bank several adapters in one copy: lora_A [N, r, in], lora_B [N, out, r]. Returns their slots."""
        expected_A = (len(edit_ids), self.rank, self.in_features)
        expected_B = (len(edit_ids), self.out_features, self.rank)
        if tuple(lora_A.shape) != expected_A or tuple(lora_B.shape) != expected_B or len(scalings) != len(edit_ids):
            raise ValueError(
                f"adapter shapes {tuple(lora_A.shape[1:])}/{tuple(lora_B.shape[1:])} != bank "
                f"{expected_A[1:]}/{expected_B[1:]}"
            )
        taken = [e for e in edit_ids if e in self._slot_of]
        if taken or len(set(edit_ids)) != len(edit_ids):
            raise KeyError(f"edit {(taken or list(edit_ids))[0]} is already in the bank")
        if len(self._free) < len(edit_ids):
            self._grow(max(2 * self.lora_A.shape[0], self.lora_A.shape[0] + len(edit_ids) - len(self._free), 16))
        slots = [self._free.pop() for _ in edit_ids]
        index = torch.tensor(slots, dtype=torch.long, device=self.lora_A.device)
        # index_copy_, not `bank[index] = ...`: the indexed assignment runs several times slower on large banks
        self.lora_A.index_copy_(0, index, lora_A.to(self.lora_A))
        self.lora_B.index_copy_(0, index, lora_B.to(self.lora_B))
        self.scaling.index_copy_(0, index, torch.tensor(list(scalings)).to(self.scaling))
        self._slot_of.update(zip(edit_ids, slots, strict=True))
        return slots

    def remove(self, edit_id: str) -> bool:
        """The edit leaves the bank: no new row can reach it; its slot is freed once no row holds it."""
        slot = self._slot_of.pop(edit_id, None)
        if slot is None:
            return False
        if self._holders.get(slot):
            self._retired.add(slot)
        else:
            self._free_slot(slot)
        return True

    def acquire(self, slot: int) -> None:
        """A row answers through this slot: it keeps its weights until the row releases it."""
        self._holders[slot] = self._holders.get(slot, 0) + 1

    def release(self, slot: int) -> None:
        held = self._holders.get(slot, 0) - 1
        if held > 0:
            self._holders[slot] = held
            return
        self._holders.pop(slot, None)
        if slot in self._retired:
            self._retired.discard(slot)
            self._free_slot(slot)

    def held(self) -> int:
        """Rows holding a slot now (0 once every answer through an edit is out)."""
        return sum(self._holders.values())

    def _free_slot(self, slot: int) -> None:
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()
        self.scaling[slot] = 0
        self._free.append(slot)

    def delta(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Semantics: out[i] = scaling[s] * x[i] @ lora_A[s].T @ lora_B[s].T with s = slots[i].

        x: [R, T, in] rows already gathered -> [R, T, out]. Computed in x's dtype: a bank stored in half
        precision is widened for the R gathered slots only."""
        a = self.lora_A.index_select(0, slots).to(x.dtype)  # [R, r, in]
        b = self.lora_B.index_select(0, slots).to(x.dtype)  # [R, out, r]
        h = torch.bmm(x, a.transpose(1, 2))  # [R, T, r]
        return torch.bmm(h, b.transpose(1, 2)) * self.scaling.index_select(0, slots).to(x.dtype)[:, None, None]


def _extended(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t with its first dimension grown to `rows`; the new rows are uninitialised."""
    out = t.new_empty(rows, *t.shape[1:])
    out[: t.shape[0]] = t
    return out


# ---- the banked Linear: the edited projection ------------------------------------------------------------
class BankedLoRALinear(nn.Module):
    """Wraps the frozen Linear of the edited layer; adds LoRA deltas only to rows the current plan names.

    Rows not in the plan get exactly `base_layer(x)`: nothing is added to them, not even a zero.
    """

    def __init__(self, base_layer: nn.Linear, bank: LoRABank):
        super().__init__()
        self.base_layer = base_layer
        self.bank = bank
        self.plan: RowPlan | TrainPlan | BatchTrainPlan | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, in] -> [B, T, out]
        out: torch.Tensor = self.base_layer(x)
        plan = self.plan
        if plan is None:
            return out
        if isinstance(plan, TrainPlan):
            # The trainable adapter is float32 whatever the model's dtype (no-op casts on a float32 model).
            trained: torch.Tensor = out + ((x.to(plan.lora_A.dtype) @ plan.lora_A.T @ plan.lora_B.T) * plan.scaling).to(
                out.dtype
            )
            return trained
        if isinstance(plan, BatchTrainPlan):  # the same gathered product as bank.delta, every row trained
            a = plan.lora_A.index_select(0, plan.edit_of_row.to(x.device))  # [B, r, in]
            b = plan.lora_B.index_select(0, plan.edit_of_row.to(x.device))  # [B, out, r]
            delta_rows = torch.bmm(torch.bmm(x.to(a.dtype), a.transpose(1, 2)), b.transpose(1, 2))  # [B, T, out]
            batch_trained: torch.Tensor = out + (delta_rows * plan.scaling).to(out.dtype)
            return batch_trained
        rows, slots = plan.rows.to(x.device), plan.slots.to(x.device)  # plans are built on the CPU
        delta = self.bank.delta(x.index_select(0, rows), slots)  # [R, T, out]
        return out.index_add(0, rows, delta.to(out.dtype))


# ---- passes: what one forward pass through the routed layer is for ---------------------------------
class StopForward(Exception):
    """Raised by a capture pass once the edited layer's input is seen: the layers above are not needed."""


@dataclass
class KeySpace:
    """The keys of one prompt format, the score they need to fire, the checks a candidate must also pass, and
    how a question's token states become its content vector in this format."""

    index: KeyIndex
    threshold: float
    encoder: ContentEncoder
    gate: Gate
    # How many tokens an edit's answer takes in this format (target, + end of turn in chat): a routed row
    # gets the edit's delta while it produces that answer, then the base model goes on untouched. Measured
    # (tokenized) when an edit first answers, not at activation: a startup activates 100,000 edits at once.
    answer_length: Callable[[str], int]  # target -> tokens
    targets: dict[str, str] = field(default_factory=dict)  # edit id -> its target
    _answer_tokens: dict[str, int] = field(default_factory=dict)

    def answer_tokens(self, edit_id: str) -> int:
        n = self._answer_tokens.get(edit_id)
        if n is None:
            n = self._answer_tokens[edit_id] = self.answer_length(self.targets[edit_id])
        return n

    def forget(self, edit_id: str) -> None:
        self.targets.pop(edit_id, None)
        self._answer_tokens.pop(edit_id, None)
        self.gate.forget(edit_id)


@dataclass
class RoutingPass:
    """A forward over whole questions (a prefill, scoring): each row routed by its own question, the routed
    rows run with their edit's delta. Decode steps after a prefill run under a DecodePass."""

    prompt_format: PromptFormat  # the batch's prompts are all in this format
    spans: list[tuple[int, int]]  # per row, [start, end) of its question's tokens in the padded batch
    questions: list[str]  # per row, the question's text (the lexical checks read it: routing/gate.py)
    routes: list[Route] | None = None
    plan: RowPlan | None = None
    layer_input: torch.Tensor | None = None  # [B, T, D] the edited layer's input (the batch rebuilds caches from it)


@dataclass
class CapturePass:
    """Records the edited layer's input (and its call kwargs) and stops the forward there, unless `go_on`:
    then the forward continues (training records the call kwargs of layers of another attention kind above)."""

    hidden_states: torch.Tensor | None = None  # [B, T, D]
    kwargs: dict[str, Any] = field(default_factory=dict)
    go_on: bool = False


@dataclass
class TrainPass:
    plan: TrainPlan | BatchTrainPlan


@dataclass
class DecodePass:
    """One decode step of a continuously batched run (editors/batch.py): the caller already knows which
    rows are still producing their edit's answer, and with which slot."""

    plan: RowPlan | None
    layer_input: torch.Tensor | None = None  # [B, 1, D] the edited layer's input at this step


ForwardPass = RoutingPass | CapturePass | TrainPass | DecodePass


# ---- the routed layer: the edited decoder layer ------------------------------------------------------
class RoutedLayer(nn.Module):
    """Wraps the edited decoder layer (`base_layer`); `proj` is its edited projection, already banked."""

    def __init__(
        self,
        base_layer: nn.Module,
        proj: BankedLoRALinear,
        spaces: dict[PromptFormat, KeySpace],
        search_k: int,
        tie_margin: float,
    ):
        super().__init__()
        self.base_layer = base_layer
        self.proj = proj
        self.spaces = spaces
        self.search_k = search_k
        self.tie_margin = tie_margin
        self.forward_pass: ForwardPass | None = None

    @contextlib.contextmanager
    def pass_scope(self, forward_pass: ForwardPass | None) -> Iterator[None]:
        """Every forward pass inside the block runs under `forward_pass` (None: the base layer alone)."""
        self.forward_pass = forward_pass
        try:
            yield
        finally:
            self.forward_pass = None

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> object:  # [B, T, D]
        forward_pass = self.forward_pass
        if forward_pass is None:
            return self.base_layer(hidden_states, *args, **kwargs)
        if isinstance(forward_pass, CapturePass):
            forward_pass.hidden_states = hidden_states.detach()
            forward_pass.kwargs = dict(kwargs)
            if not forward_pass.go_on:
                raise StopForward
            return self.base_layer(hidden_states, *args, **kwargs)
        if isinstance(forward_pass, TrainPass):
            return self._run(forward_pass.plan, hidden_states, args, kwargs)
        forward_pass.layer_input = hidden_states.detach()
        if isinstance(forward_pass, DecodePass):
            return self._run(forward_pass.plan, hidden_states, args, kwargs)
        if forward_pass.routes is None:
            forward_pass.routes, forward_pass.plan = self.route(hidden_states, forward_pass)
        return self._run(forward_pass.plan, hidden_states, args, kwargs)

    def _run(
        self,
        plan: RowPlan | TrainPlan | BatchTrainPlan | None,
        hidden_states: torch.Tensor,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        self.proj.plan = plan
        try:
            return self.base_layer(hidden_states, *args, **kwargs)
        finally:
            self.proj.plan = None

    def search(
        self,
        contents: np.ndarray,
        questions: Sequence[str],
        prompt_format: PromptFormat,
        verify: Callable[[int, Candidate], bool] | None = None,
    ) -> list[Route]:
        """contents [B, D] in `prompt_format`'s space and the questions' texts -> each row's route: its ranked
        candidates (dense + lexical) decided by the gate (routing/gate.py)."""
        space = self.spaces[prompt_format]
        words = [lexical.words(q) for q in questions]
        ranked = space.index.ranked(contents, words, k=self.search_k, tie_margin=self.tie_margin)

        def verifier(row: int) -> Callable[[Candidate], bool] | None:
            return None if verify is None else functools.partial(verify, row)

        return [
            space.gate.decide(contents[row], question, candidates, space.threshold, verifier(row))
            for row, (question, candidates) in enumerate(zip(questions, ranked, strict=True))
        ]

    def route(self, hidden_states: torch.Tensor, forward_pass: RoutingPass) -> tuple[list[Route], RowPlan | None]:
        """hidden_states [B, T, D] at prefill -> each row's route and the bank plan for routed rows."""
        key_space = self.spaces[forward_pass.prompt_format]
        spans = [hidden_states[row, start:end].detach() for row, (start, end) in enumerate(forward_pass.spans)]
        contents = key_space.encoder.encode(spans)  # [B, D]
        routes = self.search(contents.cpu().numpy(), forward_pass.questions, forward_pass.prompt_format)
        routed = [(row, self.proj.bank.slot(r.edit_id)) for row, r in enumerate(routes) if r.edit_id is not None]
        if not routed:
            return routes, None
        rows, slots = np.array(routed, dtype=np.int64).T
        device = hidden_states.device
        return routes, RowPlan(torch.from_numpy(rows).to(device), torch.from_numpy(slots).to(device))
