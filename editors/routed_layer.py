"""The edited decoder layer: it routes each row by its own input, then runs with that row's LoRA (or none).

Edits apply only inside a session. Outside one, the layer is the untouched base layer, which is what
makes "use_edits=False" and exact rollback trivially bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from editors.lora_bank import BankedLoRALinear, RowPlan, TrainPlan
from router.key_index import KeyIndex, Route


class StopForward(Exception):
    """Raised by a capture session once the edited layer's input is seen: the layers above are not needed."""


@dataclass
class KeySpace:
    """The keys of one prompt format (chat turn or raw completion) and the similarity they need to fire."""

    index: KeyIndex
    threshold: float


@dataclass
class RoutingSession:
    """One batch's routing: decided at prefill from each row's state at `positions`, kept for decode steps."""

    space: str  # which key space the batch's prompts belong to: "chat" or "raw"
    positions: torch.Tensor | None = None  # [B] token index whose state is the row's key; None = last token
    routes: list[Route] | None = None
    plan: RowPlan | None = None


@dataclass
class CaptureSession:
    """Records the edited layer's input (and its call kwargs) and stops the forward there."""

    hidden_states: torch.Tensor | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainSession:
    plan: TrainPlan


Session = RoutingSession | CaptureSession | TrainSession


class RoutedLayer(nn.Module):
    def __init__(
        self,
        layer: nn.Module,
        proj: BankedLoRALinear,
        spaces: dict[str, KeySpace],
        search_k: int,
        tie_margin: float,
    ):
        super().__init__()
        self.layer = layer
        self.proj = proj
        self.spaces = spaces
        self.search_k = search_k
        self.tie_margin = tie_margin
        self.session: Session | None = None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        session = self.session
        if session is None:
            return self.layer(hidden_states, *args, **kwargs)
        if isinstance(session, CaptureSession):
            session.hidden_states = hidden_states.detach()
            session.kwargs = dict(kwargs)
            raise StopForward
        if isinstance(session, TrainSession):
            return self._run(session.plan, hidden_states, args, kwargs)
        if session.routes is None:
            session.routes, session.plan = self.route(hidden_states, session.positions, session.space)
        return self._run(session.plan, hidden_states, args, kwargs)

    def _run(self, plan: RowPlan | TrainPlan | None, hidden_states: torch.Tensor, args: tuple, kwargs: dict) -> Any:
        self.proj.plan = plan
        try:
            return self.layer(hidden_states, *args, **kwargs)
        finally:
            self.proj.plan = None

    def search(self, queries: np.ndarray, space: str) -> list[Route]:
        key_space = self.spaces[space]
        return key_space.index.search(queries, key_space.threshold, k=self.search_k, tie_margin=self.tie_margin)

    def route(
        self, hidden_states: torch.Tensor, positions: torch.Tensor | None, space: str
    ) -> tuple[list[Route], RowPlan | None]:
        batch = hidden_states.shape[0]
        keys = hidden_states[:, -1, :] if positions is None else hidden_states[torch.arange(batch), positions]
        routes = self.search(keys.detach().float().cpu().numpy(), space)
        routed = [(row, self.proj.bank.slot(r.edit_id)) for row, r in enumerate(routes) if r.edit_id is not None]
        if not routed:
            return routes, None
        rows, slots = np.array(routed, dtype=np.int64).T
        device = hidden_states.device
        return routes, RowPlan(torch.from_numpy(rows).to(device), torch.from_numpy(slots).to(device))
