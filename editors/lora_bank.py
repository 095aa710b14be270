"""Every active edit's LoRA stacked in one bank, applied per row with a gathered batched matmul."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class RowPlan:
    """Which batch rows get which bank slot during one forward pass."""

    rows: torch.Tensor  # int64 [R], batch rows that were routed to an edit
    slots: torch.Tensor  # int64 [R], bank slot of each routed row's edit


@dataclass(frozen=True)
class TrainPlan:
    """A single trainable adapter applied to every row (used only while training one edit)."""

    lora_A: torch.Tensor  # [rank, in]
    lora_B: torch.Tensor  # [out, rank]
    scale: float


class LoRABank:
    """Stacked adapters [capacity, ...]; slots are reused after removal so the bank stays dense enough."""

    def __init__(self, in_features: int, out_features: int, rank: int, dtype: torch.dtype, device: torch.device):
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.lora_A = torch.zeros(0, rank, in_features, dtype=dtype, device=device)
        self.lora_B = torch.zeros(0, out_features, rank, dtype=dtype, device=device)
        self.scale = torch.zeros(0, dtype=dtype, device=device)
        self._slot_of: dict[str, int] = {}
        self._free: list[int] = []

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
        self.lora_A, self.lora_B, self.scale = (
            _extended(self.lora_A, new),
            _extended(self.lora_B, new),
            _extended(self.scale, new),
        )
        self._free.extend(range(new - 1, old - 1, -1))

    def add(self, edit_id: str, lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> int:
        return self.add_many([edit_id], lora_A[None], lora_B[None], [scale])[0]

    def add_many(
        self, edit_ids: Sequence[str], lora_A: torch.Tensor, lora_B: torch.Tensor, scales: Sequence[float]
    ) -> list[int]:
        """Bank several adapters in one copy: lora_A [N, rank, in], lora_B [N, out, rank]. Returns their slots."""
        expected_A = (len(edit_ids), self.rank, self.in_features)
        expected_B = (len(edit_ids), self.out_features, self.rank)
        if tuple(lora_A.shape) != expected_A or tuple(lora_B.shape) != expected_B or len(scales) != len(edit_ids):
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
        self.scale.index_copy_(0, index, torch.tensor(list(scales), dtype=self.scale.dtype, device=self.scale.device))
        self._slot_of.update(zip(edit_ids, slots, strict=True))
        return slots

    def remove(self, edit_id: str) -> bool:
        slot = self._slot_of.pop(edit_id, None)
        if slot is None:
            return False
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()
        self.scale[slot] = 0
        self._free.append(slot)
        return True

    def delta(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """x: [R, T, in] rows already gathered; returns each row's own edit delta [R, T, out].

        Computed in x's dtype: a bank stored in half precision is widened for the R gathered slots only."""
        a = self.lora_A.index_select(0, slots).to(x.dtype)  # [R, rank, in]
        b = self.lora_B.index_select(0, slots).to(x.dtype)  # [R, out, rank]
        h = torch.bmm(x, a.transpose(1, 2))
        return torch.bmm(h, b.transpose(1, 2)) * self.scale.index_select(0, slots).to(x.dtype)[:, None, None]


class BankedLoRALinear(nn.Module):
    """Wraps the frozen Linear of the edited layer; adds LoRA deltas only to rows the current plan names.

    Rows not in the plan get exactly `base(x)`: nothing is added to them, not even a zero.
    """

    def __init__(self, base: nn.Linear, bank: LoRABank):
        super().__init__()
        self.base = base
        self.bank = bank
        self.plan: RowPlan | TrainPlan | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        plan = self.plan
        if plan is None:
            return out
        if isinstance(plan, TrainPlan):
            return out + (x @ plan.lora_A.T @ plan.lora_B.T) * plan.scale
        delta = self.bank.delta(x.index_select(0, plan.rows), plan.slots)
        return out.index_add(0, plan.rows, delta.to(out.dtype))


def _extended(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t with its first dimension grown to `rows`; the new rows are uninitialised."""
    out = t.new_empty(rows, *t.shape[1:])
    out[: t.shape[0]] = t
    return out
