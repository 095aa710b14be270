"""The model runner: every forward pass continuous batching makes, behind one typed seam.

editors/batch.py decides which rows run and what they get; this module runs the model for them and is the
only part of decoding that touches the engine's routed layer and adapter bank (vLLM's model runner).

Shapes: n rows of a forward, W padded width, P one row's positions, H kv heads, Dh head width, D hidden width,
V vocabulary, L the edited layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from editors.kv_cache import KV, GrowingCache
from editors.prefix_cache import Prefix
from editors.routed_lora import DecodePass, ForwardPass, RowPlan
from editors.types import ChatContext, PromptFormat, PromptTokens
from routing.key_index import Route

if TYPE_CHECKING:
    from editors.engine import EditingEngine


@dataclass
class Prefill:
    """Whole prompts run together: their last-position logits, cache and routes."""

    logits: torch.Tensor  # [n, V] at each row's last prompt position
    kv: KV  # left-padded to the batch's width
    mask: torch.Tensor  # [n, W] 1 where a real token is
    next_position: torch.Tensor  # [n] the position id of each row's first generated token
    routes: list[Route]
    layer_input: torch.Tensor | None  # [n, W, D] the edited layer's input (None without edits)


@dataclass
class Chunk:
    """One more stretch of a long prompt, run with the base model alone (routing waits for its end)."""

    logits: torch.Tensor  # [V] at the stretch's last position
    kv: KV  # [1, H, done, Dh]: the row's whole cache so far
    layer_input: torch.Tensor  # [n, D] the edited layer's input at the stretch's positions


class ModelRunner:
    def __init__(self, engine: EditingEngine) -> None:
        self._engine = engine
        self.host = engine.host
        self.edited_layer = engine.layer

    # ---- what rows need to know -------------------------------------------------------------------------
    def encode(self, prompt: str, prompt_format: PromptFormat, context: ChatContext | None) -> PromptTokens:
        return self._engine.encode(prompt, prompt_format, context)

    def answer_tokens(self, prompt_format: PromptFormat, edit_id: str) -> int:
        """How many generated tokens an edit's delta covers (its target, + end of turn in chat)."""
        return self._engine.routed.spaces[prompt_format].answer_tokens(edit_id)

    def acquire(self, edit_id: str) -> int:
        """The bank slot of an edit a row answers through, held until release(slot)."""
        bank = self._engine.bank
        slot = bank.slot(edit_id)
        bank.acquire(slot)
        return slot

    def release(self, slot: int) -> None:
        self._engine.bank.release(slot)

    # ---- forward passes -----------------------------------------------------------------------------------
    def _forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: GrowingCache,
        forward_pass: ForwardPass | None,
    ) -> torch.Tensor:
        """One cached forward of tokens [B, T] under `forward_pass` -> the last position's logits [B, V]."""
        device = self.host.device  # the batch's bookkeeping is on the CPU; no-op moves there
        with self._engine.routed.pass_scope(forward_pass):
            out = self.host.model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        last: torch.Tensor = out.logits[:, -1].float()
        return last

    @torch.no_grad()
    def prefill(
        self,
        prompts: Sequence[str],
        encoded: Sequence[PromptTokens],
        prompt_format: PromptFormat,
        use_edits: bool,
        prefix: Prefix | None = None,
    ) -> Prefill:
        """Whole prompts of one format in one forward: each row routed by its own question at the edited layer.

        With `prefix` (every prompt starts with its ids), only what follows it is run, after its cache; the
        result is laid out as a whole-prompt prefill's. Its upper layers are the base model's at the prefix
        positions: the caller recomputes them for rows that route to an edit (upper())."""
        if prefix is None:
            return self._prefill(prompts, encoded, prompt_format, use_edits)
        start = len(prefix.ids)
        rests = [PromptTokens(e.ids[start:], (e.span[0] - start, e.span[1] - start)) for e in encoded]
        n = len(rests)
        kv = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix.kv]  # views; appending copies
        out = self._prefill(prompts, rests, prompt_format, use_edits, kv, start)
        # The cache is [prefix | padding | rest] per row: move each row's padding in front, as left padding.
        rest_width = out.mask.shape[1] - start
        pads = rest_width - out.mask[:, start:].sum(-1)  # [n]
        columns = torch.arange(start + rest_width)
        order = torch.stack(
            [torch.cat([columns[start : start + p], columns[:start], columns[start + p :]]) for p in pads.tolist()]
        ).to(out.mask.device)  # [n, W]
        layer_input = None
        if out.layer_input is not None:  # [n, rest width, D] -> [n, W, D], the prefix's states in their place
            full = torch.cat([prefix.layer_input.expand(n, -1, -1), out.layer_input], dim=1)
            layer_input = full.gather(1, order[:, :, None].expand(-1, -1, full.shape[2]))
        return Prefill(
            out.logits,
            [(_columns(k, order), _columns(v, order)) for k, v in out.kv],
            out.mask.gather(1, order),
            out.next_position,
            out.routes,
            layer_input,
        )

    def _prefill(
        self,
        prompts: Sequence[str],
        encoded: Sequence[PromptTokens],
        prompt_format: PromptFormat,
        use_edits: bool,
        kv: KV | None = None,
        done: int = 0,
    ) -> Prefill:
        """Prompts [n] left-padded into one forward, after `kv` (`done` positions every row has) when given."""
        engine = self._engine
        input_ids, rest_mask = engine.pad([e.ids for e in encoded], left=True)  # [n, W]
        positions = done + (rest_mask.cumsum(-1) - 1).clamp(min=0)
        mask = torch.cat([rest_mask.new_ones((len(encoded), done)), rest_mask], dim=1)  # [n, done + W]
        forward_pass = engine.routing_pass(prompts, encoded, prompt_format, left=True) if use_edits else None
        cache = GrowingCache(kv)
        logits = self._forward(input_ids, mask, positions, cache, forward_pass)
        routes = (forward_pass.routes if forward_pass is not None else None) or [Route(None, None)] * len(encoded)
        layer_input = forward_pass.layer_input if forward_pass is not None else None
        return Prefill(logits, _cached(cache), mask, positions[:, -1] + 1, routes, layer_input)

    @torch.no_grad()
    def prefix(self, ids: tuple[int, ...]) -> Prefix:
        """A prefix's cache, computed alone by the base model (editors/prefix_cache.py)."""
        chunk = self.prefill_chunk(ids, 0, None)
        kv = [(k.clone(), v.clone()) for k, v in chunk.kv]  # exact size: no room shared with anyone
        return Prefix(ids, kv, chunk.layer_input.clone())

    @torch.no_grad()
    def prefill_chunk(self, ids: Sequence[int], done: int, kv: KV | None) -> Chunk:
        """ids [n] at positions done..done+n-1 after a row's cached `kv` (None at the start): base model only."""
        device = self.host.device
        input_ids = torch.tensor([list(ids)], device=device)  # [1, n]
        mask = torch.ones(1, done + len(ids), dtype=torch.long, device=device)
        positions = torch.arange(done, done + len(ids), device=device)[None]
        cache = GrowingCache(kv)
        forward_pass = DecodePass(None)  # records the edited layer's input, adds nothing
        logits = self._forward(input_ids, mask, positions, cache, forward_pass)
        assert forward_pass.layer_input is not None
        return Chunk(logits[0], _cached(cache), forward_pass.layer_input[0])

    def route(self, span_states: torch.Tensor, question: str, prompt_format: PromptFormat) -> Route:
        """The route of one whole prompt from its question's edited-layer states [T, D] (a chunked prompt)."""
        routed = self._engine.routed
        content = routed.spaces[prompt_format].encoder.encode([span_states])  # [1, D]
        return routed.search(content.cpu().numpy(), [question], prompt_format)[0]

    @torch.no_grad()
    def upper(self, layer_input: torch.Tensor, slot: int | None) -> tuple[KV, torch.Tensor]:
        """One row's edited-layer input [1, P, D] -> (keys, values) of the edited layer and each above it, and
        the logits [V] at its last position; with `slot`, that edit's delta at every position."""
        engine = self._engine
        layout = self.host.layout
        length = layer_input.shape[1]
        positions = torch.arange(length, device=layer_input.device)[None]  # [1, P]
        cache = GrowingCache()
        per_type: dict[str, dict[str, Any]] = {}  # each attention kind's mask and rotary, computed once
        for kind in set(layout.layer_types[self.edited_layer :]):
            per_type[kind] = {
                "attention_mask": layout.causal_mask(length, kind, layer_input.dtype, layer_input.device),
                "position_embeddings": layout.position_embeddings(layer_input, positions, kind),
            }
        plan = None if slot is None else RowPlan(torch.tensor([0]), torch.tensor([slot]))
        forward_pass = DecodePass(plan) if plan is not None else None
        h = layer_input
        with engine.routed.pass_scope(forward_pass):
            for index in range(self.edited_layer, len(layout.layers)):
                kwargs = per_type[layout.layer_types[index]]
                h = layout.layers[index](h, position_ids=positions, cache=cache, use_cache=True, **kwargs)
                h = h[0] if isinstance(h, tuple) else h
        logits = layout.logits(h[:, -1:])[0, -1].float()
        return _cached(cache, self.edited_layer), logits

    @torch.no_grad()
    def decode(
        self, last: torch.Tensor, kv: KV, mask: torch.Tensor, next_position: torch.Tensor, plan: RowPlan | None
    ) -> tuple[torch.Tensor, KV, torch.Tensor | None]:
        """One token per running row: last [B, 1] in -> (logits [B, V], the grown cache, the edited layer's
        input [B, 1, D] or None). `plan`: the rows still producing their edit's answer, and their slots."""
        cache = GrowingCache(kv)
        forward_pass = DecodePass(plan)
        logits = self._forward(last, mask, next_position[:, None], cache, forward_pass)
        return logits, _cached(cache), forward_pass.layer_input


def _columns(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """A cache tensor [n, H, W, Dh] with each row's positions in `order` [n, W]."""
    index = order[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3])
    return t.gather(2, index)


def _cached(cache: GrowingCache, start: int = 0) -> KV:
    """Each layer's (keys, values) [B, H, T, Dh] after a forward, from layer `start` up."""
    out = []
    for layer in cache.layers[start:]:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        assert isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor), "a full-attention decoder"
        out.append((keys, values))
    return out
