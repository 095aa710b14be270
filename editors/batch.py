"""Continuous batching: requests join the running batch at the next turn and leave when they finish.

Iteration-level scheduling as Orca and vLLM do it, on a Hugging Face causal LM. Each turn (step()):

1. prefill: the prompts of admitted rows share a token budget (`prefill_tokens`). A prompt that fits whole is
   run with the others that fit, each row routed by its own question inside the edited layer. A longer one
   is run a stretch at a time with the base model alone (its question is usually at its end, and routing
   needs all of it); at its last stretch the route is decided from the question's states, and if an edit
   answers it, the edited layer and those above are recomputed over the whole prompt with that edit's
   delta, as a whole-prompt prefill would have made them. So a long prompt delays the others by one budget.
2. decode: every running row feeds its newest token and gets its next one, each by its own sampling.

The running batch keeps one KV cache, left-padded so that every row's newest token sits in the same column.
Routing is decided once per row and kept: the edit's delta applies while the row produces its edit's answer,
then the layers above the edited one are rebuilt by the base model for what the row has seen, so the rest is
exactly the base model going on after that text. A row answering through an edit holds its bank slot until
then, so revoking the edit never changes an answer under way (editors/routed_lora.py, LoRABank).

A row that cannot go on (a sampling setting its logits cannot meet, a failed emit, a prompt it cannot
encode) fails alone: it gets an error event and leaves; the other rows never notice.

Shapes: B running rows, T cache width, H kv heads, Dh head width, V vocabulary, D hidden width.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from editors.detokenizer import Detokenizer
from editors.kv_cache import KV
from editors.model_families import SLIDING_ATTENTION
from editors.prefix_cache import Prefix, PrefixCache, prefix_ids
from editors.routed_lora import RowPlan
from editors.runner import ModelRunner
from editors.sampler import Pick, generator, pick
from editors.scheduler import allot
from editors.types import (
    ChatContext,
    Generation,
    PromptFormat,
    PromptTokens,
    Row,
    RowEvent,
    RowEventKind,
    Sampling,
    TokenLogprob,
)
from routing.key_index import Route

if TYPE_CHECKING:
    from editors.engine import EditingEngine

# Prompt tokens one turn prefills: what a long prompt may delay the others by. 96, not 256, since chat prefixes
# are reused: a short request's idle TTFT fell to ~0.2 s, and one 256-token stretch made it wait 4.5x that
# (scripts/prefill_fairness.py, docs/benchmarks.md).
PREFILL_TOKENS = 96


@dataclass
class RowState:
    """One request's decoding state (the request itself, Row, is what the caller sent)."""

    request: Row
    prompt: PromptTokens
    rng: torch.Generator | None
    detok: Detokenizer
    prefix: Prefix | None = None  # the cached prefix it is prefilled after (editors/prefix_cache.py)
    done: int = 0  # prompt tokens in the cache (its prefix, then a long prompt a stretch at a time)
    kv: KV | None = None  # the row's own cache until it joins the batch: its prefix's, then its stretches'
    stretches: list[torch.Tensor] = field(default_factory=list)  # the edited layer's input [n, D] of each stretch
    route: Route = field(default_factory=lambda: Route(None, None))
    slot: int | None = None  # the bank slot it answers through, held until its answer is out
    answer_tokens: int = 0  # generated tokens that get the edit's delta
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    delta_inputs: list[torch.Tensor] = field(default_factory=list)  # edited-layer input [n, D] wherever the delta was

    @property
    def answering(self) -> bool:
        """Still producing its edit's answer (the delta applies)."""
        return self.slot is not None and len(self.tokens) < self.answer_tokens


class ContinuousBatch:
    """The running batch of one engine. Not thread-safe: one thread admits and steps (app/worker.py)."""

    def __init__(
        self, engine: EditingEngine, prefill_tokens: int = PREFILL_TOKENS, reuse_prefixes: bool = True
    ) -> None:
        self.runner = ModelRunner(engine)
        self.host = engine.host
        self.prefill_tokens = prefill_tokens
        self.rows: list[RowState] = []  # decoding, in cache order
        self.prefilling: list[RowState] = []  # admitted, prompt not fully in the cache yet (arrival order)
        self._kv: KV = []  # per layer (keys, values) [B, H, T, Dh]
        self._mask = torch.zeros(0, 0, dtype=torch.long)  # [B, T] 1 where the cache holds a real token
        self._next_position = torch.zeros(0, dtype=torch.long)  # [B] position id of each row's pending token
        self._stop_ids = self.host.end_of_turn_ids()
        # Rows after a shared prefix are padded between it and their rest, and a sliding window counts cache
        # columns, padding included: only full-attention models reuse prefixes (editors/prefix_cache.py).
        full_attention = SLIDING_ATTENTION not in self.host.layout.layer_types
        self.prefixes = PrefixCache(self.runner.prefix) if reuse_prefixes and full_attention else None
        # Decoding the vocabulary takes ~0.8 s (one thread): pay it here, at startup, not on the first request
        # whose answer ends inside a word.
        self._word_continuing = self.host.word_continuing_ids

    def __len__(self) -> int:
        return len(self.rows) + len(self.prefilling)

    def _decode_text(self, ids: list[int]) -> str:
        return str(self.host.tokenizer.decode(ids, skip_special_tokens=True))

    # ---- joining ------------------------------------------------------------------------------------------
    def admit(self, rows: Sequence[Row]) -> None:
        """Queue rows for prefill (the next step() runs it). A row whose prompt cannot be encoded fails alone."""
        for row in rows:
            try:
                prompt = row.encoded or self.runner.encode(row.prompt, row.prompt_format, row.context)
                seed = row.sampling.seed if row.sampling.seed is not None else int.from_bytes(os.urandom(8), "little")
                rng = generator(seed) if row.sampling.temperature > 0 else None
                detok = Detokenizer(self._decode_text, row.sampling.stop)
                state = RowState(row, prompt, rng, detok)
                if self.prefixes is not None and (ids := prefix_ids(prompt.ids, prompt.prefix)) is not None:
                    state.prefix = self.prefixes.get(ids)
                    state.done, state.kv, state.stretches = len(ids), state.prefix.kv, [state.prefix.layer_input]
                self.prefilling.append(state)
            except Exception as exc:  # this row only
                _report(row, exc)

    # ---- one turn ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> None:
        """One turn: prefill within the token budget, then one decode step for every running row."""
        self._drop([i for i, r in enumerate(self.rows) if r.request.cancelled])
        for state in [s for s in self.prefilling if s.request.cancelled]:
            self.prefilling.remove(state)
        self._prefill()
        if self.rows:
            self._decode()

    def _prefill(self) -> None:
        if not self.prefilling:
            return
        takes = allot([len(s.prompt.ids) - s.done for s in self.prefilling], self.prefill_tokens)
        whole: dict[tuple[PromptFormat, bool, tuple[int, ...] | None], list[RowState]] = {}
        stretches: list[tuple[RowState, int]] = []
        for state, take in zip(self.prefilling, takes, strict=True):
            if take == 0:
                continue
            start = len(state.prefix.ids) if state.prefix is not None else 0
            if state.done == start and take == len(state.prompt.ids) - start:  # all of it after its prefix
                shared = state.prefix.ids if state.prefix is not None else None
                key = (state.request.prompt_format, state.request.use_edits, shared)
                whole.setdefault(key, []).append(state)
            else:
                stretches.append((state, take))
        for (prompt_format, use_edits, _), group in whole.items():
            self._prefill_whole(group, prompt_format, use_edits)
        for state, take in stretches:
            self._prefill_stretch(state, take)

    def _prefill_whole(self, group: list[RowState], prompt_format: PromptFormat, use_edits: bool) -> None:
        """Whole prompts of one format in one forward; a forward that fails is retried row by row, so one bad
        row fails alone."""
        prefix = group[0].prefix  # the group shares it (or has none)
        try:
            out = self.runner.prefill(
                [s.request.prompt for s in group], [s.prompt for s in group], prompt_format, use_edits, prefix
            )
        except Exception as exc:
            if len(group) == 1:
                self._fail_prefilling(group[0], exc)
                return
            for state in group:
                self._prefill_whole([state], prompt_format, use_edits)
            return
        for state in group:
            self.prefilling.remove(state)
        width = out.mask.shape[1]
        joined: list[tuple[RowState, int]] = []
        for i, (state, route) in enumerate(zip(group, out.routes, strict=True)):
            n = len(state.prompt.ids)
            delta = out.layer_input[i, width - n :].clone() if out.layer_input is not None else None
            if not self._route(state, route, delta, prompt_format):
                continue
            if prefix is not None and state.slot is not None and delta is not None:
                try:  # the cached prefix holds no delta: the edited layer and above again, with it
                    upper, out.logits[i] = self.runner.upper(delta[None], state.slot)
                    self._splice(out.kv, i, upper)
                except Exception as exc:
                    self._release(state)
                    _report(state.request, exc)
                    continue
            joined.append((state, i))
        if not joined:
            return
        keep = torch.tensor([i for _, i in joined], dtype=torch.long)
        kv = [(k.index_select(0, keep), v.index_select(0, keep)) for k, v in out.kv]
        self._merge([s for s, _ in joined], kv, out.mask.index_select(0, keep), out.next_position.index_select(0, keep))
        self._first_tokens([s for s, _ in joined], out.logits.index_select(0, keep))

    def _prefill_stretch(self, state: RowState, take: int) -> None:
        """One more stretch of a long prompt; at its end, route the row and join it to the batch."""
        ids = state.prompt.ids
        try:
            chunk = self.runner.prefill_chunk(ids[state.done : state.done + take], state.done, state.kv)
            state.kv, state.done = chunk.kv, state.done + take
            state.stretches.append(chunk.layer_input)
            if state.done < len(ids):
                return
            self.prefilling.remove(state)
            layer_input = torch.cat(state.stretches)  # [P, D]
            state.stretches, kv, logits = [], chunk.kv, chunk.logits
            route = Route(None, None)
            request = state.request
            if request.use_edits:
                start, end = state.prompt.span
                route = self.runner.route(layer_input[start:end], request.prompt, request.prompt_format)
            if not self._route(state, route, layer_input, request.prompt_format):
                return
            if state.slot is not None:  # the delta over the whole prompt, as a whole prefill applies it
                upper, logits = self.runner.upper(layer_input[None], state.slot)
                layer = self.runner.edited_layer
                kv = kv[:layer] + upper
            state.kv = None
            mask = torch.ones(1, len(ids), dtype=torch.long)
            self._merge([state], kv, mask, torch.tensor([len(ids)]))
            self._first_tokens([state], logits[None])
        except Exception as exc:
            if state in self.prefilling:
                self.prefilling.remove(state)
            self._fail_prefilling(state, exc)

    def _route(self, state: RowState, route: Route, layer_input: torch.Tensor | None, fmt: PromptFormat) -> bool:
        """Keep the row's route (holding its edit's slot) and send its start event; False if the row failed."""
        try:
            state.route = route
            if route.edit_id is not None:
                state.slot = self.runner.acquire(route.edit_id)
                state.answer_tokens = self.runner.answer_tokens(fmt, route.edit_id)
                if layer_input is not None:  # its own columns, not the padding
                    state.delta_inputs = [layer_input]
            state.request.emit(RowEvent("start", route=route, prompt_tokens=len(state.prompt.ids)))
            return True
        except Exception as exc:
            self._release(state)
            _report(state.request, exc)
            return False

    def _first_tokens(self, joined: list[RowState], logits: torch.Tensor) -> None:
        picks = [self._pick(state, scores) for state, scores in zip(joined, logits, strict=True)]
        self._advance(joined, picks)
        self._rebase_answered()

    # ---- decoding ---------------------------------------------------------------------------------------------
    def _decode(self) -> None:
        last = torch.tensor([[r.tokens[-1]] for r in self.rows])  # [B, 1]
        mask = torch.cat([self._mask, torch.ones(len(self.rows), 1, dtype=torch.long)], dim=1)  # [B, T+1]
        plan = self._plan()
        try:
            logits, self._kv, layer_input = self.runner.decode(last, self._kv, mask, self._next_position, plan)
        except Exception as exc:  # the forward itself: every row of it is suspect
            for state in list(self.rows):
                self._release(state)
                _report(state.request, exc)
            self.rows, self._kv = [], []
            self._mask, self._next_position = torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
            return
        if plan is not None and layer_input is not None:
            for i in plan.rows.tolist():
                self.rows[i].delta_inputs.append(layer_input[i])
        self._mask, self._next_position = mask, self._next_position + 1
        rows = list(self.rows)
        self._advance(rows, [self._pick(state, scores) for state, scores in zip(rows, logits, strict=True)])
        self._rebase_answered()

    def _plan(self) -> RowPlan | None:
        """Rows still producing their edit's answer, and their edits' bank slots."""
        planned = [(i, r.slot) for i, r in enumerate(self.rows) if r.answering]
        if not planned:
            return None
        rows, slots = zip(*planned, strict=True)
        return RowPlan(torch.tensor(rows, dtype=torch.long), torch.tensor(slots, dtype=torch.long))

    def _pick(self, state: RowState, logits: torch.Tensor) -> Pick | Exception:
        """The row's next token, or the reason it cannot have one (it then fails alone)."""
        try:
            sampling = state.request.sampling
            if len(state.tokens) < sampling.min_new_tokens:
                logits = logits.clone()
                logits[self._stop_ids] = -math.inf
            if self._answer_ends_in_word(state):
                # The edit's answer is whole: "Tomasz Nowak" is not the start of "Nowakowski", "$49" not of "$499".
                logits = logits.masked_fill(self._word_continuing[: logits.shape[0]], -math.inf)
            return pick(logits, sampling, state.rng, sampling.logprobs, sampling.top_logprobs)
        except Exception as exc:
            return exc

    def _answer_ends_in_word(self, state: RowState) -> bool:
        """The row has just produced its edit's whole answer, and that answer ends in a letter or digit."""
        if state.route.edit_id is None or len(state.tokens) != state.answer_tokens or not state.tokens:
            return False
        text = self.host.tokenizer.decode(state.tokens[-1:])
        return bool(text) and text[-1].isalnum()

    def _rebase_answered(self) -> None:
        """Rows that just produced their edit's whole answer continue as the base model would after it.

        The prompt and answer positions were computed with the edit's delta, so their keys and values in the
        edited layer and above still carry it and keep pulling the answer back ("Rust? Rust? Rust?",
        "Nowakakak"). From the edited layer's inputs kept for those positions, those layers are recomputed
        by the base model alone; and the row lets go of the edit's bank slot."""
        for i, state in enumerate(self.rows):
            if state.slot is None or len(state.tokens) < state.answer_tokens:
                continue
            if state.delta_inputs:
                layer_input = torch.cat([x.reshape(-1, x.shape[-1]) for x in state.delta_inputs])[None]  # [1, P, D]
                state.delta_inputs = []
                upper, _ = self.runner.upper(layer_input, None)
                self._splice(self._kv, i, upper)
            self._release(state)

    def _splice(self, kv: KV, row: int, upper: KV) -> None:
        """Put one row's recomputed edited layer and above (upper(): [1, H, P, Dh] per layer) over the last P
        columns of that row in `kv`, where its P positions sit (left padding)."""
        for layer, (keys, values) in enumerate(upper, start=self.runner.edited_layer):
            length = keys.shape[2]
            kv[layer][0][row, :, -length:] = keys[0]
            kv[layer][1][row, :, -length:] = values[0]

    def _advance(self, rows: list[RowState], picks: list[Pick | Exception]) -> None:
        """Append each row's new token, stream its new text, and retire the rows that finished or failed."""
        gone: list[RowState] = []
        for state, chosen in zip(rows, picks, strict=True):
            try:
                if isinstance(chosen, Exception):
                    raise chosen
                if self._take(state, chosen):
                    gone.append(state)
            except Exception as exc:
                self._release(state)
                _report(state.request, exc)
                gone.append(state)
        if gone:
            ids = {id(s) for s in gone}
            self._drop([i for i, s in enumerate(self.rows) if id(s) in ids])

    def _take(self, state: RowState, chosen: Pick) -> bool:
        """Add one token to a row; True when the row has finished."""
        sampling = state.request.sampling
        if chosen.token in self._stop_ids:
            self._finish(state, "stop")
            return True
        state.tokens.append(chosen.token)
        if chosen.logprob is not None:
            state.logprobs.append(TokenLogprob(chosen.token, chosen.logprob, chosen.top))
        state.detok.add(chosen.token)
        stop_at = state.detok.stop_at()
        if stop_at is not None:
            self._finish(state, "stop", stop_at)
            return True
        if len(state.tokens) >= sampling.max_new_tokens:
            self._finish(state, "length")
            return True
        text = state.detok.ready()
        if text:
            state.request.emit(RowEvent("text", text=text))
        return False

    def _finish(self, state: RowState, reason: str, upto: int | None = None) -> None:
        if upto is None and state.detok.tokens != state.tokens:  # a split character still pending: decode all
            state.detok.text = str(self.host.tokenizer.decode(state.tokens, skip_special_tokens=True))
        text = state.detok.rest(upto)
        if text:
            state.request.emit(RowEvent("text", text=text))
        self._release(state)
        state.request.emit(
            RowEvent(
                "end",
                finish_reason=reason,
                prompt_tokens=len(state.prompt.ids),
                completion_tokens=len(state.tokens),
                token_ids=tuple(state.tokens),
                logprobs=tuple(state.logprobs),
            )
        )

    # ---- the cache ------------------------------------------------------------------------------------------
    def _merge(self, states: list[RowState], kv: KV, mask: torch.Tensor, next_position: torch.Tensor) -> None:
        """Append prefilled rows to the batch, left-padding whichever side is narrower."""
        if not self.rows:
            self.rows, self._kv, self._mask, self._next_position = list(states), kv, mask, next_position
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
        self.rows += states

    def _drop(self, indices: list[int]) -> None:
        """Remove rows from the batch, and the cache columns no remaining row uses."""
        if not indices:
            return
        gone = set(indices)
        for i in gone:
            self._release(self.rows[i])
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

    def _release(self, state: RowState) -> None:
        if state.slot is not None:
            self.runner.release(state.slot)
            state.slot = None

    def _fail_prefilling(self, state: RowState, exc: Exception) -> None:
        if state in self.prefilling:
            self.prefilling.remove(state)
        self._release(state)
        _report(state.request, exc)

    def fail_all(self, message: str, reason: str | None = None) -> None:
        """Tell every row why it stops (`reason`: SHUTDOWN when the server stops) and empty the batch."""
        states = [*self.rows, *self.prefilling]
        for state in states:
            self._release(state)
        self.rows, self.prefilling, self._kv = [], [], []
        self._mask, self._next_position = torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        for state in states:
            with contextlib.suppress(Exception):  # a consumer that is gone cannot be told
                state.request.emit(RowEvent(RowEventKind.ERROR, text=message, finish_reason=reason))


def _report(row: Row, exc: Exception) -> None:
    """Tell one row why it stopped (an emit that fails too has no one left to tell)."""
    with contextlib.suppress(Exception):
        row.emit(RowEvent(RowEventKind.ERROR, text=f"{type(exc).__name__}: {exc}"))


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dim -2 of a cache tensor [n, H, T, Dh] (or dim 1 of a mask [n, T]) on the left to `width` with zeros."""
    seq_dim = 1 if t.dim() == 2 else 2
    missing = width - t.shape[seq_dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[seq_dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=seq_dim)


@torch.no_grad()
def generate(
    engine: EditingEngine,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    prompt_format: PromptFormat = PromptFormat.RAW,
    min_new_tokens: int = 0,
    context: object | None = None,
    use_edits: bool = True,
) -> list[Generation]:
    """Batched greedy decoding on the serving decoder: each row routed by its own question at prefill, the
    edit's delta applied while the row produces its edit's answer. `min_new_tokens` holds back the stop
    tokens that long (benchmarks: equal work for every model)."""
    events: list[list[RowEvent]] = [[] for _ in prompts]
    sampling = Sampling(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
    chat = context if isinstance(context, ChatContext) else None
    rows = [
        Row(p, prompt_format, sampling, log.append, context=chat, use_edits=use_edits)
        for p, log in zip(prompts, events, strict=True)
    ]
    batch = ContinuousBatch(engine, prefill_tokens=1 << 30)  # whole prompts: one prefill for the lot
    batch.admit(rows)
    while len(batch):
        batch.step()
    out = []
    for log in events:
        if log and log[-1].kind == "error":
            raise RuntimeError(f"generation failed: {log[-1].text}")
        out.append(Generation.from_events(log))
    return out
