"""Every active edit's LoRA stacked in one bank, applied per row with a gathered batched matmul."""

from __future__ import annotations

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

    def _grow(self) -> None:
        old = self.lora_A.shape[0]
        new = max(16, old * 2)  # doubling keeps appends amortised O(1)
        self.lora_A = torch.cat([self.lora_A, self.lora_A.new_zeros(new - old, *self.lora_A.shape[1:])])
        self.lora_B = torch.cat([self.lora_B, self.lora_B.new_zeros(new - old, *self.lora_B.shape[1:])])
        self.scale = torch.cat([self.scale, self.scale.new_zeros(new - old)])
        self._free.extend(range(new - 1, old - 1, -1))

    def add(self, edit_id: str, lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> int:
        if edit_id in self._slot_of:
            raise KeyError(f"edit {edit_id} is already in the bank")
        expected_A = (self.rank, self.in_features)
        expected_B = (self.out_features, self.rank)
        if tuple(lora_A.shape) != expected_A or tuple(lora_B.shape) != expected_B:
            raise ValueError(
                f"adapter shapes {tuple(lora_A.shape)}/{tuple(lora_B.shape)} != bank {expected_A}/{expected_B}"
            )
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self.lora_A[slot] = lora_A.to(self.lora_A)
        self.lora_B[slot] = lora_B.to(self.lora_B)
        self.scale[slot] = scale
        self._slot_of[edit_id] = slot
        return slot

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
        """x: [R, T, in] rows already gathered; returns each row's own edit delta [R, T, out]."""
        a = self.lora_A.index_select(0, slots)  # [R, rank, in]
        b = self.lora_B.index_select(0, slots)  # [R, out, rank]
        h = torch.bmm(x, a.transpose(1, 2))
        return torch.bmm(h, b.transpose(1, 2)) * self.scale.index_select(0, slots)[:, None, None]


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
