"""Continuous batching: requests join the running batch at the next decode step and leave when they finish.

Iteration-level scheduling as Orca and vLLM do it, on a Hugging Face causal LM. The running batch keeps one
KV cache, left-padded so that every row's newest token sits in the same column; a joining row is prefilled
on its own (with the rows that join with it), its cache padded to the batch's width and appended, and a
finished row is dropped from it. Routing is decided per row at its prefill, from its own question, and kept
for its decode steps: the edit's delta applies while the row produces its edit's answer, then the base
model goes on alone (as `EditingEngine.generate`).

Shapes: B running rows, T cache width, H kv heads, D head width, V vocabulary.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from editors.model_host import PromptTokens
from editors.routed_lora import DecodeSession, RowPlan
from editors.types import PromptFormat, Row, RowEvent
from router.key_index import Route


class ContinuousBatch:
    """The running batch of one engine. Not thread-safe: one thread admits and steps (app/scheduler.py)."""

    def __init__(self, engine: Any) -> None:  # engine: editors.engine.EditingEngine
        self.engine = engine
        self.host = engine.host
        self.rows: list[Row] = []
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer (keys, values) [B, H, T, D]
        self._mask = torch.zeros(0, 0, dtype=torch.long)  # [B, T] 1 where the cache holds a real token
        self._next_position = torch.zeros(0, dtype=torch.long)  # [B] position id of each row's pending token
        self._stop_ids = self.host.end_of_turn_ids()
        # Decoding the vocabulary takes ~0.8 s (one thread): pay it here, at startup, not on the first request
        # whose answer ends inside a word.
        self._word_continuing = self.host.word_continuing_ids

    def __len__(self) -> int:
        return len(self.rows)

    # ---- joining -----------------------------------------------------------------------------------
    @torch.no_grad()
    def admit(self, rows: Sequence[Row]) -> None:
        """Prefill `rows` (by format, and with or without edits), sample their first tokens, add them."""
        groups: dict[tuple[PromptFormat, bool], list[Row]] = {}
        for row in rows:
            groups.setdefault((row.prompt_format, row.use_edits), []).append(row)
        for (prompt_format, use_edits), group in groups.items():
            self._admit(group, prompt_format, use_edits)

    def _admit(self, rows: list[Row], prompt_format: PromptFormat, use_edits: bool) -> None:
        engine = self.engine
        encoded: list[PromptTokens] = [r.encoded or engine.encode(r.prompt, prompt_format, r.context) for r in rows]
        input_ids, mask = engine.pad([e.ids for e in encoded], left=True)  # [n, W]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        session = engine.routing_session([r.prompt for r in rows], encoded, prompt_format, left=True)
        cache = DynamicCache(config=self.host.model.config)
        with engine.routed.session_scope(session if use_edits else None):
            out = self.host.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        routes = (session.routes if use_edits else None) or [Route(None, None)] * len(rows)
        space = engine.routed.spaces[prompt_format]
        for i, (row, e, route) in enumerate(zip(rows, encoded, routes, strict=True)):
            row.route = route
            row.slot = engine.bank.slot(route.edit_id) if route.edit_id is not None else None
            row.answer_tokens = space.answer_tokens(route.edit_id) if route.edit_id is not None else 0
            row.prompt_tokens = len(e.ids)
            if row.sampling.temperature > 0:
                seed = row.sampling.seed if row.sampling.seed is not None else int.from_bytes(os.urandom(8), "little")
                row._generator = torch.Generator().manual_seed(seed)
            row.emit(RowEvent("start", route=row.route, prompt_tokens=row.prompt_tokens))
            if row.slot is not None and session.layer_input is not None:  # its own columns, not the padding
                row._delta_inputs = [session.layer_input[i, -len(e.ids) :].clone()]  # not the whole batch's
        kv = _cached(cache)
        self._merge(rows, kv, mask, positions[:, -1] + 1)
        first = self._sample(out.logits[:, -1].float(), rows)
        self._advance(rows, first)
        self._rebase_answered()

    def _merge(
        self,
        rows: list[Row],
        kv: list[tuple[torch.Tensor, torch.Tensor]],
        mask: torch.Tensor,
        next_position: torch.Tensor,
    ) -> None:
        """Append prefilled rows to the batch, left-padding whichever side is narrower."""
        if not self.rows:
            self.rows, self._kv, self._mask, self._next_position = list(rows), kv, mask, next_position
            return
        width = max(self._mask.shape[1], mask.shape[1])
        self._kv = [
            (
                torch.cat([_left_pad(k0, width), _left_pad(k1, width)]),
                torch.cat([_left_pad(v0, width), _left_pad(v1, width)]),
            )
            for (k0, v0), (k1, v1) in zip(self._kv, kv, strict=True)
        ]
        self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(mask, width)])
        self._next_position = torch.cat([self._next_position, next_position])
        self.rows += rows

    # ---- decoding ----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> None:
        """One decode step for every running row: each row's newest token in, its next token out."""
        self._drop([i for i, r in enumerate(self.rows) if r.cancelled])
        if not self.rows:
            return
        last = torch.tensor([[r.tokens[-1]] for r in self.rows])  # [B, 1]
        mask = torch.cat([self._mask, torch.ones(len(self.rows), 1, dtype=torch.long)], dim=1)  # [B, T+1]
        cache = DynamicCache(ddp_cache_data=self._kv)
        session = DecodeSession(self._plan())
        with self.engine.routed.session_scope(session):
            out = self.host.model(
                input_ids=last,
                attention_mask=mask,
                position_ids=self._next_position[:, None],
                cache=cache,
                use_cache=True,
            )
        if session.plan is not None and session.layer_input is not None:
            for i in session.plan.rows.tolist():
                self.rows[i]._delta_inputs.append(session.layer_input[i])
        self._kv = _cached(cache)
        self._mask, self._next_position = mask, self._next_position + 1
        self._advance(list(self.rows), self._sample(out.logits[:, -1].float(), self.rows))
        self._rebase_answered()

    def _rebase_answered(self) -> None:
        """Rows that just produced their edit's whole answer continue as the base model would after it.

        The prompt and answer positions were computed with the edit's delta, so their keys and values in the
        edited layer and above still carry it and keep pulling the answer back ("Rust? Rust? Rust?",
        "Nowakakak"). From the edited layer's inputs kept for those positions, those layers are recomputed
        by the base model alone: what follows the answer is then exactly the base model continuing the
        prompt + answer text."""
        for i, row in enumerate(self.rows):
            if not row._delta_inputs or len(row.tokens) < row.answer_tokens:
                continue
            layer_input = torch.cat(row._delta_inputs)[None]  # [1, P, D], P = every position fed so far
            row._delta_inputs = []
            length = layer_input.shape[1]
            first = self.engine.config.layer
            for layer, (keys, values) in enumerate(self.engine.base_upper_cache(layer_input), start=first):
                self._kv[layer][0][i, :, -length:] = keys[0]
                self._kv[layer][1][i, :, -length:] = values[0]

    def _plan(self) -> RowPlan | None:
        """Rows still producing their edit's answer, and their edits' bank slots."""
        planned = [
            (i, r.slot) for i, r in enumerate(self.rows) if r.slot is not None and len(r.tokens) < r.answer_tokens
        ]
        if not planned:
            return None
        rows, slots = zip(*planned, strict=True)
        return RowPlan(torch.tensor(rows, dtype=torch.long), torch.tensor(slots, dtype=torch.long))

    def _sample(self, logits: torch.Tensor, rows: Sequence[Row]) -> list[int]:
        """logits [n, V] -> one token per row, each by its own sampling settings."""
        chosen = []
        for row, scores in zip(rows, logits, strict=True):
            if len(row.tokens) < row.sampling.min_new_tokens:
                scores = scores.clone()
                scores[self._stop_ids] = -math.inf
            if self._answer_ends_in_word(row):
                # The edit's answer is whole: "Tomasz Nowak" is not the start of "Nowakowski", "$49" not of "$499".
                scores = scores.masked_fill(self._word_continuing[: scores.shape[0]], -math.inf)
            s = row.sampling
            if s.temperature <= 0 or row._generator is None:
                chosen.append(int(scores.argmax()))
                continue
            probs = torch.softmax(scores / s.temperature, dim=-1)
            if s.top_p < 1.0:  # nucleus: the smallest set of tokens whose probability reaches top_p
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(-1) - sorted_probs < s.top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            chosen.append(int(torch.multinomial(probs, 1, generator=row._generator)))
        return chosen

    def _answer_ends_in_word(self, row: Row) -> bool:
        """The row has just produced its edit's whole answer, and that answer ends in a letter or digit."""
        if row.slot is None or len(row.tokens) != row.answer_tokens or not row.tokens:
            return False
        text = self.host.tokenizer.decode(row.tokens[-1:])
        return bool(text) and text[-1].isalnum()

    def _advance(self, rows: list[Row], tokens: list[int]) -> None:
        """Append each row's new token, stream its new text, and retire the rows that finished."""
        done: list[Row] = []
        for row, token in zip(rows, tokens, strict=True):
            if token in self._stop_ids:
                self._finish(row, "stop")
                done.append(row)
                continue
            row.tokens.append(token)
            text = self._text(row)
            stop_at = _find_stop(text, row.sampling.stop, row._sent)
            if stop_at is not None:
                self._finish(row, "stop", text[:stop_at])
                done.append(row)
            elif len(row.tokens) >= row.sampling.max_new_tokens:
                self._finish(row, "length", text)
                done.append(row)
            else:
                self._stream(row, text)
        if done:
            finished = {id(r) for r in done}
            self._drop([i for i, r in enumerate(self.rows) if id(r) in finished])

    def _text(self, row: Row) -> str:
        return str(self.host.tokenizer.decode(row.tokens, skip_special_tokens=True))

    def _stream(self, row: Row, text: str) -> None:
        """Emit the text that can no longer change: not a half-decoded character, not a possible stop prefix."""
        hold = max((len(s) - 1 for s in row.sampling.stop), default=0)
        end = len(text) - hold
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens
            end = min(end, len(text) - 1)
        if end > row._sent:
            row.emit(RowEvent("text", text=text[row._sent : end]))
            row._sent = end

    def _finish(self, row: Row, reason: str, text: str | None = None) -> None:
        text = self._text(row) if text is None else text
        if len(text) > row._sent:
            row.emit(RowEvent("text", text=text[row._sent :]))
            row._sent = len(text)
        row.emit(
            RowEvent(
                "end",
                finish_reason=reason,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=len(row.tokens),
                token_ids=tuple(row.tokens),
            )
        )

    def _drop(self, indices: list[int]) -> None:
        """Remove rows from the batch, and the cache columns no remaining row uses."""
        if not indices:
            return
        gone = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._kv, self._mask, self._next_position = (
                [],
                torch.zeros(0, 0, dtype=torch.long),
                torch.zeros(0, dtype=torch.long),
            )
            return
        index = torch.tensor(keep, dtype=torch.long)
        mask = self._mask.index_select(0, index)
        first = int(mask.any(dim=0).nonzero()[0])  # leading columns that are padding for every row
        self._mask = mask[:, first:]
        self._kv = [
            (k.index_select(0, index)[:, :, first:], v.index_select(0, index)[:, :, first:]) for k, v in self._kv
        ]
        self._next_position = self._next_position.index_select(0, index)


def _cached(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (keys, values) [B, H, T, D] after a forward."""
    out = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        assert isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor), "a full-attention decoder"
        out.append((keys, values))
    return out


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dim -2 of a cache tensor [n, H, T, D] (or dim 1 of a mask [n, T]) on the left to `width` with zeros."""
    seq_dim = 1 if t.dim() == 2 else 2
    missing = width - t.shape[seq_dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[seq_dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=seq_dim)


def _find_stop(text: str, stops: Sequence[str], sent: int) -> int | None:
    """Where the first stop string starts in `text` (looking only where a new one can be), or None."""
    found = [i for s in stops if s and (i := text.find(s, max(0, sent - len(s)))) >= 0]
    return min(found) if found else None
