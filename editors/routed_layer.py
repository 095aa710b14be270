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

from editors.content import ContentEncoder
from editors.lora_bank import BankedLoRALinear, RowPlan, TrainPlan
from router.key_index import KeyIndex, Route


class StopForward(Exception):
    """Raised by a capture session once the edited layer's input is seen: the layers above are not needed."""


@dataclass
class KeySpace:
    """The keys of one prompt format (chat turn or raw completion), the score they need to fire, and how
    a question's token states become its content vector in this format."""

    index: KeyIndex
    threshold: float
    encoder: ContentEncoder
    # Per edit, how many tokens its answer takes in this format (target, + end of turn in chat): a routed
    # row gets the edit's delta while it produces that answer, then the base model goes on untouched.
    answer_tokens: dict[str, int] = field(default_factory=dict)


@dataclass
class RoutingSession:
    """One batch's routing: decided at prefill from each row's question, kept for its decode steps."""

    space: str  # which key space the batch's prompts belong to: "chat" or "raw"
    spans: list[tuple[int, int]]  # per row, [start, end) of its question's tokens in the padded batch
    words: list[frozenset[str]]  # per row, the question's words (router/lexical.py)
    routes: list[Route] | None = None
    plan: RowPlan | None = None
    answer_tokens: torch.Tensor | None = None  # [R] answer length of each planned row's edit
    decode_step: int = 0  # forwards since prefill


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
        if session.routes is None:  # prefill: the only step that sees the whole question
            session.routes, session.plan = self.route(hidden_states, session)
        elif session.plan is not None:  # decode step s produces answer token s + 1
            session.decode_step += 1
            self._retire_answered(session)
        return self._run(session.plan, hidden_states, args, kwargs)

    @staticmethod
    def _retire_answered(session: RoutingSession) -> None:
        """Drop rows whose edit has produced its whole answer: the base model continues from there."""
        assert session.plan is not None and session.answer_tokens is not None
        keep = session.answer_tokens > session.decode_step
        if bool(keep.all()):
            return
        if not bool(keep.any()):
            session.plan, session.answer_tokens = None, None
            return
        session.plan = RowPlan(session.plan.rows[keep], session.plan.slots[keep])
        session.answer_tokens = session.answer_tokens[keep]

    def _run(self, plan: RowPlan | TrainPlan | None, hidden_states: torch.Tensor, args: tuple, kwargs: dict) -> Any:
        self.proj.plan = plan
        try:
            return self.layer(hidden_states, *args, **kwargs)
        finally:
            self.proj.plan = None

    def search(self, contents: np.ndarray, words: list[frozenset[str]], space: str) -> list[Route]:
        key_space = self.spaces[space]
        return key_space.index.search(contents, words, key_space.threshold, k=self.search_k, tie_margin=self.tie_margin)

    def route(self, hidden_states: torch.Tensor, session: RoutingSession) -> tuple[list[Route], RowPlan | None]:
        """hidden_states [B, T, D] at prefill -> each row's route and the bank plan for routed rows."""
        spans = [hidden_states[row, start:end].detach() for row, (start, end) in enumerate(session.spans)]
        contents = self.spaces[session.space].encoder.encode(spans)  # [B, D]
        routes = self.search(contents.cpu().numpy(), session.words, session.space)
        key_space = self.spaces[session.space]
        routed = [
            (row, self.proj.bank.slot(r.edit_id), key_space.answer_tokens[r.edit_id])
            for row, r in enumerate(routes)
            if r.edit_id is not None
        ]
        if not routed:
            return routes, None
        rows, slots, lengths = np.array(routed, dtype=np.int64).T
        device = hidden_states.device
        session.answer_tokens = torch.from_numpy(lengths)
        return routes, RowPlan(torch.from_numpy(rows).to(device), torch.from_numpy(slots).to(device))
