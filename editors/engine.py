"""SoLA editing engine: one frozen LoRA per edit, routed inside the edited layer by semantic keys.

Not thread-safe: the service drives it from a single model worker.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import random
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from editors.adapter_io import Adapter, adapter_sha256, deserialize_adapter, export_peft, serialize_adapter
from editors.calibration import CALIBRATION_PROMPTS
from editors.content import ContentEncoder
from editors.model_host import ModelHost
from editors.routed_lora import (
    BankedLoRALinear,
    CapturePass,
    KeySpace,
    LoRABank,
    RoutedLayer,
    RoutingPass,
    StopForward,
)
from editors.training import (
    BatchTrainer,
    EditExample,
    TrainingTimeout,
    TrainResult,
    drain,
    length_buckets,
    train_lora_steps,
)
from editors.types import (
    ChatContext,
    EditSpec,
    EngineConfig,
    PromptFormat,
    PromptTokens,
    Score,
    TrainedEdit,
    resolved_layer,
)
from routing import lexical
from routing.gate import Gate, Negatives
from routing.key_index import KeyIndex, Route, normalise


class EditRefused(ValueError):
    """A stored edit the engine cannot put into service (unreadable adapter, keys it cannot place)."""


class AdapterMismatch(EditRefused):
    """An adapter that was trained for another base model, layer or rank: refused, never used."""


@dataclass(frozen=True)
class Activation:
    """One stored edit to put into service: what `EditingEngine.activate` takes."""

    edit_id: str
    adapter: bytes  # serialised by editors/adapter_io.py
    keys: np.ndarray  # [n, hidden]
    key_kinds: Sequence[str]  # one per key row, see key_kind()
    prompt: str
    target: str
    rephrases: Sequence[str] = ()
    seq: int | None = None  # recency among edits of the same fact (None: after every edit so far)
    negatives: Sequence[str] = ()  # questions the edit must not answer (their keys are among `keys`)


@dataclass(frozen=True)
class _Prepared:
    """An Activation whose adapter parsed and whose keys were checked, grouped by prompt format."""

    item: Activation
    adapter: Adapter
    keys: np.ndarray  # [n, hidden] float32
    kinds: list[str]
    rows: dict[PromptFormat, list[int]]  # prompt format -> the key rows of its wordings (prompt, rephrases)
    negative_rows: dict[PromptFormat, list[int]]  # prompt format -> the key rows of its negatives
    seq: int  # the item's, or the next one after every edit so far


@dataclass(frozen=True)
class _TrainingPlan:
    """What one edit trains on (EditingEngine._training_plan)."""

    examples: list[EditExample]
    spans: list[tuple[int, int]]  # the question span of each of the first n_keys examples
    kinds: list[str]  # the key kind of each of the first n_keys examples
    n_keys: int


class KeyKind(NamedTuple):
    """What one routing key was made from: a prompt format, and the prompt, a rephrase or a negative."""

    prompt_format: PromptFormat
    rephrase: int | None = None  # index into the edit's rephrases (None: its prompt, or a negative)
    negative: int | None = None  # index into the edit's negatives: a question it must not answer


def key_kind(prompt_format: PromptFormat, rephrase: int | None = None, negative: int | None = None) -> str:
    """Names one routing key, e.g. "chat:prompt", "raw:rephrase:0", "chat:negative:1"."""
    if negative is not None:
        return f"{prompt_format}:negative:{negative}"
    return f"{prompt_format}:" + ("prompt" if rephrase is None else f"rephrase:{rephrase}")


FORMAT_NAMES = frozenset(f.value for f in PromptFormat)


def is_legacy_kind(kind: str) -> bool:
    """Kinds of the first router ("chat", "raw", "rephrase-chat:0"): their vectors are last-token states,
    not content vectors, so the engine recomputes those keys from the stored prompt text."""
    return kind in ("chat", "raw") or kind.startswith("rephrase-")


@functools.lru_cache(maxsize=1024)  # a handful of distinct kinds, parsed for every key of every edit at startup
def parse_kind(kind: str) -> KeyKind:
    """The KeyKind of a key kind's name, legacy kinds included."""
    if is_legacy_kind(kind):
        legacy = PromptFormat.CHAT if "chat" in kind else PromptFormat.RAW
        return KeyKind(legacy, int(kind.rsplit(":", 1)[1]) if kind.startswith("rephrase-") else None)
    name, _, rest = kind.partition(":")
    role, _, index = rest.partition(":")
    valid = (role == "prompt" and not index) or (role in ("rephrase", "negative") and index.isdigit())
    if name not in FORMAT_NAMES or not valid:
        raise ValueError(f"unknown key kind {kind!r}")
    if role == "negative":
        return KeyKind(PromptFormat(name), None, int(index))
    return KeyKind(PromptFormat(name), int(index) if role == "rephrase" else None)


class EditingEngine:
    def __init__(self, host: ModelHost, config: EngineConfig | None = None, index_kind: str = "auto"):
        self.host = host
        layout = host.layout
        layers = layout.layers
        config = config or EngineConfig()
        self.layer = resolved_layer(config, len(layers))
        self.config = dataclasses.replace(config, layer=self.layer)  # what reports and adapters say it is
        original = layers[self.layer]
        if isinstance(original, RoutedLayer):
            raise ValueError("this model already hosts an engine; load a fresh ModelHost per engine")
        down = layout.edited_projection(original)
        param = next(host.model.parameters())
        bank_dtype = getattr(torch, self.config.bank_dtype) if self.config.bank_dtype else param.dtype
        self.bank = LoRABank(down.in_features, down.out_features, self.config.rank, bank_dtype, param.device)
        # New adapters are stored as the bank holds them when that is float16 (nothing is lost that the
        # bank would keep); otherwise as float32, so SOLA_BANK_DTYPE=model serves them exactly as trained.
        self.stored_dtype = torch.float16 if bank_dtype == torch.float16 else torch.float32
        proj = BankedLoRALinear(down, self.bank)
        layout.replace_edited_projection(original, proj)
        self.routed = RoutedLayer(original, proj, {}, self.config.search_k, self.config.tie_margin)
        layers[self.layer] = self.routed
        for prompt_format in host.prompt_formats:
            index = KeyIndex(host.hidden_size, kind=index_kind)
            encoder = self._content_encoder(prompt_format)
            answer_length = functools.partial(self._answer_length, prompt_format=prompt_format)
            gate = Gate(host.is_common_word)
            self.routed.spaces[prompt_format] = KeySpace(index, self.config.threshold, encoder, gate, answer_length)
        self._seqs = itertools.count(1)

    def _content_encoder(self, prompt_format: PromptFormat) -> ContentEncoder:
        """Background token states of fixed generic prompts (editors/calibration.py) in one prompt format.

        Deterministic for a given model, layer and prompt set, so it is cached beside the bundled weights.
        """
        tag = hashlib.sha256("\n".join(CALIBRATION_PROMPTS).encode()).hexdigest()[:12]
        name = f"sola-background-{self.host.fingerprint[:12]}-L{self.layer}-{prompt_format}-{tag}.npy"
        cached = self.host.artifact_dir / name if self.host.artifact_dir else None
        if cached is not None and cached.is_file():
            return ContentEncoder.fit(torch.from_numpy(np.load(cached)))
        prompts = [self.encode(p, prompt_format) for p in CALIBRATION_PROMPTS]
        hidden, _ = self._capture([EditExample(p.ids, []) for p in prompts])
        states = torch.cat([hidden[row, p.span[0] : p.span[1]] for row, p in enumerate(prompts)]).float()
        if cached is not None:
            partial = cached.with_suffix(".partial.npy")
            np.save(partial, states.cpu().numpy())
            partial.replace(cached)  # atomic: concurrent starts never read half a file
        return ContentEncoder.fit(states)

    # ---- tokenisation helpers -------------------------------------------------------------------
    def encode(self, prompt: str, prompt_format: PromptFormat, context: ChatContext | None = None) -> PromptTokens:
        """The prompt's tokens; the span the router reads is the question's own sentence (lexical.question_start)."""
        question_from = lexical.question_start(prompt, self.host.is_common_word)
        tokens = self.host.encode_prompt(prompt, prompt_format, context, question_from)
        start, end = tokens.span
        if prompt_format is PromptFormat.RAW and start == 0 and end > 1:
            # A raw prompt's first token is the attention sink: its state is huge and says nothing of the text.
            return PromptTokens(tokens.ids, (1, end))
        return tokens

    @staticmethod
    def _target_text(target: str, prompt_format: PromptFormat) -> str:
        # A completion continues the prompt after a space; a chat answer starts the assistant turn.
        chat = prompt_format is PromptFormat.CHAT
        return target if chat or target[:1].isspace() else " " + target

    def _target_ids(self, target: str, prompt_format: PromptFormat) -> list[int]:
        return self.host.encode(self._target_text(target, prompt_format))

    def _answer_end(self, prompt_format: PromptFormat) -> list[int]:
        """What follows the target in an edit's answer: in chat the end of the turn, else nothing."""
        return self.host.end_of_turn_ids()[:1] if prompt_format is PromptFormat.CHAT else []

    def _answer_ids(self, target: str, prompt_format: PromptFormat) -> list[int]:
        """What the edit answers after a prompt: the target, and in chat the end of the turn."""
        return self._target_ids(target, prompt_format) + self._answer_end(prompt_format)

    def _answer_length(self, target: str, prompt_format: PromptFormat) -> int:
        """len(self._answer_ids(target, prompt_format)): how many generated tokens an edit's delta covers."""
        return len(self._answer_ids(target, prompt_format))

    def subject_words(self, text: str) -> frozenset[str]:
        return lexical.subject_words(text, self.host.is_common_word)

    # ---- editing --------------------------------------------------------------------------------
    def train_edit(self, prompt: str, target: str, rephrases: Sequence[str] = ()) -> TrainedEdit:
        """Keys + a fresh LoRA trained alone against the frozen base model. Activates nothing."""
        return drain(self.train_edit_steps(prompt, target, rephrases))

    def train_edit_steps(
        self, prompt: str, target: str, rephrases: Sequence[str] = ()
    ) -> Generator[None, None, TrainedEdit]:
        """train_edit one slice at a time: the keys, then each optimiser step (app/worker.py decodes for
        other requests in between). Times are this edit's own compute, not the waits between slices."""
        start = time.perf_counter()
        plan = self._training_plan(prompt, target, rephrases)
        hidden, kwargs = self._capture(plan.examples)
        keys = self._contents(hidden[: plan.n_keys], plan.spans, plan.kinds)
        key_seconds = time.perf_counter() - start
        yield
        result = yield from train_lora_steps(
            self.host.layout,
            self.routed,
            self.config,
            hidden,
            kwargs,
            self.layer,
            plan.examples,
            self.bank.in_features,
            self.bank.out_features,
            spent=key_seconds,
        )
        return self._trained(keys, plan.kinds, result, key_seconds)

    def train_edits(self, specs: Sequence[EditSpec], batch_size: int = 16) -> list[TrainedEdit | TrainingTimeout]:
        """Many edits trained together (train_edits_steps), in the order given; each as train_edit trains it."""
        results: dict[int, TrainedEdit | TrainingTimeout] = {}
        for finished in self.train_edits_steps(specs, batch_size):
            results.update(finished)
        return [results[i] for i in range(len(specs))]

    def train_edits_steps(
        self, specs: Sequence[EditSpec], batch_size: int = 16
    ) -> Generator[list[tuple[int, TrainedEdit | TrainingTimeout]], None, None]:
        """Train up to `batch_size` edits at once (training.BatchTrainer): one forward/backward per step over
        all their rows, each edit with its own adapter and keys, leaving the batch as soon as it is learnt and
        its place taken by the next spec. Yields after each slice (a capture or a step) the edits finished in it,
        by index into `specs`: a TrainedEdit, or the TrainingTimeout of one not learnt in time."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        trainer = BatchTrainer(
            self.host.layout, self.routed, self.config, self.layer, self.bank.in_features, self.bank.out_features
        )
        waiting = collections.deque(enumerate(specs))
        keyed: dict[int, tuple[np.ndarray, list[str], float]] = {}  # tag -> keys, kinds, key seconds
        while waiting or len(trainer):
            room = batch_size - len(trainer)
            if waiting and room > 0:
                joining = [waiting.popleft() for _ in range(min(room, len(waiting)))]
                keyed.update(self._join(trainer, joining))
                yield []
            finished = trainer.step()
            out: list[tuple[int, TrainedEdit | TrainingTimeout]] = []
            for tag, result in finished:
                keys, kinds, key_seconds = keyed.pop(tag)
                out.append(
                    (
                        tag,
                        result
                        if isinstance(result, TrainingTimeout)
                        else self._trained(keys, kinds, result, key_seconds),
                    )
                )
            yield out

    def _join(
        self, trainer: BatchTrainer, joining: Sequence[tuple[int, EditSpec]]
    ) -> dict[int, tuple[np.ndarray, list[str], float]]:
        """One partial forward for the joining edits' rows: their keys, and their rows join the trainer."""
        start = time.perf_counter()
        plans = [self._training_plan(spec.prompt, spec.target, spec.rephrases) for _, spec in joining]
        examples = [e for plan in plans for e in plan.examples]
        states: list[torch.Tensor] = [torch.empty(0)] * len(examples)  # each row's [its length, D]
        for bucket in length_buckets([len(e.prompt_ids) + len(e.target_ids) for e in examples]):
            hidden, _ = self._capture([examples[k] for k in bucket])  # similar lengths: little padding
            for row, k in enumerate(bucket):
                states[k] = hidden[row, : len(examples[k].prompt_ids) + len(examples[k].target_ids)]
        share = (time.perf_counter() - start) / len(joining)
        keyed = {}
        first = 0
        for (tag, _), plan in zip(joining, plans, strict=True):
            rows = torch.nn.utils.rnn.pad_sequence(states[first : first + len(plan.examples)], batch_first=True)
            first += len(plan.examples)
            keyed[tag] = (self._contents(rows[: plan.n_keys], plan.spans, plan.kinds), plan.kinds, share)
            trainer.add(tag, rows, plan.examples, spent=share)
        return keyed

    def _training_plan(self, prompt: str, target: str, rephrases: Sequence[str]) -> _TrainingPlan:
        """What an edit trains on: each wording in each prompt format answered by the target (the first
        `n_keys` rows, whose question spans are its keys), and any generic contexts."""
        answers = {f: self._answer_ids(target, f) for f in self.host.prompt_formats}
        encoded, kinds = self._key_prompts(prompt, rephrases)
        examples = [EditExample(e.ids, answers[parse_kind(k)[0]]) for e, k in zip(encoded, kinds, strict=True)]
        spans = [e.span for e in encoded]
        n_keys = len(examples)
        # The router alone decides when an edit applies, so its LoRA may answer the target whatever the
        # question: training it on a few unrelated generic prompts too makes it carry over to paraphrases.
        rng = random.Random(f"{self.config.seed}:{prompt}")
        for text in rng.sample(CALIBRATION_PROMPTS, self.config.generic_contexts):
            for f in self.host.prompt_formats:
                examples.append(EditExample(self.encode(text, f).ids, answers[f]))
        return _TrainingPlan(examples, spans, kinds, n_keys)

    def _trained(self, keys: np.ndarray, kinds: list[str], result: TrainResult, key_seconds: float) -> TrainedEdit:
        adapter = serialize_adapter(
            result.lora_A,
            result.lora_B,
            dtype=self.stored_dtype,
            layer=self.layer,
            alpha=self.config.alpha,
            fingerprint=self.host.fingerprint,
        )
        return TrainedEdit(
            keys=keys,
            key_kinds=kinds,
            adapter=adapter,
            adapter_sha256=adapter_sha256(adapter),
            steps=result.steps,
            loss=result.loss,
            seconds=result.seconds,
            key_seconds=key_seconds,
            train_seconds=result.seconds - key_seconds,
        )

    def _contents(self, hidden: torch.Tensor, spans: Sequence[tuple[int, int]], kinds: Sequence[str]) -> np.ndarray:
        """Content vectors [n, D] of right-padded rows, each in its own kind's space."""
        out = np.zeros((len(spans), self.host.hidden_size), dtype=np.float32)
        for prompt_format, key_space in self.routed.spaces.items():
            rows = [i for i, k in enumerate(kinds) if parse_kind(k)[0] == prompt_format]
            if rows:
                encoder = key_space.encoder
                out[rows] = encoder.encode([hidden[i, spans[i][0] : spans[i][1]] for i in rows]).cpu().numpy()
        return out

    def _key_prompts(self, prompt: str, rephrases: Sequence[str]) -> tuple[list[PromptTokens], list[str]]:
        """Every prompt an edit is keyed on, in every prompt format, and each key's kind."""
        encoded: list[PromptTokens] = []
        kinds: list[str] = []
        for i, text in enumerate([prompt, *rephrases]):
            for prompt_format in self.host.prompt_formats:
                encoded.append(self.encode(text, prompt_format))
                kinds.append(key_kind(prompt_format, None if i == 0 else i - 1))
        return encoded, kinds

    def content_keys(
        self, prompt: str, rephrases: Sequence[str] = (), negatives: Sequence[str] = ()
    ) -> tuple[np.ndarray, list[str]]:
        """The routing keys train_edit would store for this edit, and its negatives' keys, without training
        (re-keying old edits)."""
        encoded, kinds = self._key_prompts(prompt, rephrases)
        negative_keys, negative_kinds = self.negative_keys(negatives)
        hidden, _ = self._capture([EditExample(e.ids, []) for e in encoded])
        keys = self._contents(hidden, [e.span for e in encoded], kinds)
        return np.concatenate([keys, negative_keys]), kinds + negative_kinds

    def negative_keys(self, negatives: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Keys [n, D] of the questions an edit must not answer, in every prompt format, and their kinds."""
        encoded: list[PromptTokens] = []
        kinds: list[str] = []
        for i, text in enumerate(negatives):
            for prompt_format in self.host.prompt_formats:
                encoded.append(self.encode(text, prompt_format))
                kinds.append(key_kind(prompt_format, negative=i))
        if not encoded:
            return np.zeros((0, self.host.hidden_size), dtype=np.float32), []
        hidden, _ = self._capture([EditExample(e.ids, []) for e in encoded])
        return self._contents(hidden, [e.span for e in encoded], kinds), kinds

    def _capture(self, examples: Sequence[EditExample]) -> tuple[torch.Tensor, dict[str, dict[str, Any]]]:
        """One partial forward (layers below the edited one) over the right-padded training batch: the edited
        layer's input, and the call kwargs (mask, rotary) of each attention kind from the edited layer up."""
        seqs = [e.prompt_ids + e.target_ids for e in examples]
        input_ids, attention_mask = self.pad(seqs, left=False)
        forward_pass = CapturePass()
        layout, edited = self.host.layout, self.layer
        kinds = layout.layer_types
        per_type: dict[str, dict[str, Any]] = {}
        # Layers of another attention kind above (Gemma's sliding / global alternation) are called with their
        # own mask and rotary: recorded from the model's own forward, which then stops at the last one needed.
        others = {kinds[i]: i for i in reversed(range(edited + 1, len(kinds))) if kinds[i] != kinds[edited]}
        hooks = []
        for kind, index in others.items():

            def record(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], kind: str = kind) -> None:
                per_type[kind] = dict(kwargs)
                if len(per_type) == len(others):
                    raise StopForward

            hooks.append(layout.layers[index].register_forward_pre_hook(record, with_kwargs=True))
        forward_pass.go_on = bool(others)
        try:
            with self.routed.pass_scope(forward_pass), torch.no_grad(), contextlib.suppress(StopForward):
                self.host.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        assert forward_pass.hidden_states is not None
        per_type[kinds[edited]] = forward_pass.kwargs
        return forward_pass.hidden_states, per_type

    def activate(
        self,
        edit_id: str,
        adapter: bytes,
        keys: np.ndarray,
        key_kinds: Sequence[str],
        prompt: str,
        target: str,
        rephrases: Sequence[str] = (),
        seq: int | None = None,
        negatives: Sequence[str] = (),
    ) -> None:
        """Bank the weights and index the keys (from train_edit, one kind per row); raises if refused.

        `prompt` and `rephrases` are the texts the keys were made from: their subject words are the
        lexical half of each key, and keys of the first router's kinds are recomputed from them. `target`
        sets how many generated tokens the edit's delta applies to (its answer). `negatives` are the questions
        of the negative keys among `keys` (negative_keys)."""
        item = Activation(edit_id, adapter, keys, key_kinds, prompt, target, rephrases, seq, negatives)
        refused = self.activate_many([item])
        if edit_id in refused:
            raise refused[edit_id]

    def activate_many(self, items: Sequence[Activation]) -> dict[str, EditRefused]:
        """Activate several edits at once, as `activate` does one: a startup with 100,000 edits makes one
        tokenizer call and one index insert per prompt format and batch instead of one per edit.

        Returns the edits refused and why; every other edit is active afterwards (an edit already active is
        left as it is)."""
        refused: dict[str, EditRefused] = {}
        ready: list[_Prepared] = []
        seen: set[str] = set()
        for item in items:
            if item.edit_id in self.bank or item.edit_id in seen:
                continue
            seen.add(item.edit_id)
            try:
                ready.append(self._prepare(item))
            except EditRefused as exc:
                refused[item.edit_id] = exc
        if not ready:
            return refused
        subjects: dict[str, frozenset[str]] = {}  # one prompt's subject words serve its keys in every format
        try:
            self.bank.add_many(
                [p.item.edit_id for p in ready],
                torch.from_numpy(np.stack([p.adapter.lora_A for p in ready])),  # the one copy of the bytes
                torch.from_numpy(np.stack([p.adapter.lora_B for p in ready])),
                [p.adapter.scaling for p in ready],
            )
            for prompt_format, key_space in self.routed.spaces.items():
                placed = [p for p in ready if prompt_format in p.rows]
                if not placed:
                    continue
                key_space.targets.update((p.item.edit_id, p.item.target) for p in placed)
                for p in placed:
                    negatives = self._negatives(p, prompt_format, subjects)
                    key_space.gate.add(p.item.edit_id, [p.item.prompt, *p.item.rephrases], negatives)
                key_space.index.add_many(
                    [p.item.edit_id for p in placed],
                    [p.keys[p.rows[prompt_format]] for p in placed],
                    [[self._subject_of(p, r, subjects) for r in p.rows[prompt_format]] for p in placed],
                    [p.seq for p in placed],
                )
        except (ValueError, KeyError) as exc:  # the bank or index refused the batch: it leaves nothing behind
            for p in ready:
                self.revoke(p.item.edit_id)
                refused[p.item.edit_id] = EditRefused(f"edit {p.item.edit_id} could not be activated: {exc}")
        except Exception:
            for p in ready:
                self.revoke(p.item.edit_id)
            raise
        return refused

    def _prepare(self, item: Activation) -> _Prepared:
        """Parse and check one edit's adapter and keys; raises EditRefused (or AdapterMismatch) if refused."""
        try:
            parsed = deserialize_adapter(item.adapter)
        except Exception as exc:  # safetensors raises its own error types for damaged bytes
            raise AdapterMismatch(f"edit {item.edit_id}: the adapter cannot be read ({exc})") from exc
        if parsed.fingerprint != self.host.fingerprint:
            raise AdapterMismatch(f"edit {item.edit_id} was trained on another base model ({parsed.fingerprint[:12]})")
        if parsed.layer != self.layer or parsed.rank != self.config.rank:
            raise AdapterMismatch(
                f"edit {item.edit_id} targets layer {parsed.layer} rank {parsed.rank}; "
                f"engine is layer {self.layer} rank {self.config.rank}"
            )
        keys, key_kinds = item.keys, list(item.key_kinds)
        if len(key_kinds) != len(keys):
            raise EditRefused(f"edit {item.edit_id}: {len(key_kinds)} key kinds for {len(keys)} keys")
        if any(map(is_legacy_kind, key_kinds)) or self._rekeyed_texts(item):
            keys, key_kinds = self.content_keys(item.prompt, item.rephrases, item.negatives)
        try:
            keys = np.asarray(keys, dtype=np.float32).reshape(-1, self.host.hidden_size)
        except ValueError as exc:
            raise EditRefused(f"edit {item.edit_id}: keys are not of width {self.host.hidden_size}") from exc
        rows: dict[PromptFormat, list[int]] = {}
        negative_rows: dict[PromptFormat, list[int]] = {}
        for row, kind in enumerate(key_kinds):
            try:
                prompt_format, rephrase, negative = parse_kind(kind)
            except ValueError as exc:
                raise EditRefused(f"edit {item.edit_id}: {exc}") from exc
            if prompt_format not in self.routed.spaces:
                raise AdapterMismatch(f"edit {item.edit_id} has {prompt_format} keys; this model has no such format")
            if rephrase is not None and rephrase >= len(item.rephrases):
                raise EditRefused(f"edit {item.edit_id}: key {kind!r} names a rephrase it does not have")
            if negative is not None and negative >= len(item.negatives):
                raise EditRefused(f"edit {item.edit_id}: key {kind!r} names a negative it does not have")
            (rows if negative is None else negative_rows).setdefault(prompt_format, []).append(row)
        seq = item.seq if item.seq is not None else next(self._seqs)
        return _Prepared(item, parsed, keys, key_kinds, rows, negative_rows, seq)

    def _negatives(
        self, prepared: _Prepared, prompt_format: PromptFormat, cache: dict[str, frozenset[str]]
    ) -> Negatives | None:
        rows = prepared.negative_rows.get(prompt_format)
        if not rows:
            return None
        texts = [prepared.item.negatives[parse_kind(prepared.kinds[r]).negative or 0] for r in rows]
        for text in texts:
            if text not in cache:
                cache[text] = self.subject_words(text)
        return Negatives(normalise(prepared.keys[rows]), tuple(cache[t] for t in texts))

    def set_negatives(
        self, edit_id: str, negatives: Sequence[str], keys: np.ndarray | None, key_kinds: Sequence[str]
    ) -> None:
        """Replace an active edit's negatives (keys from negative_keys) without touching its adapter or keys."""
        words: dict[str, frozenset[str]] = {}
        for prompt_format, space in self.routed.spaces.items():
            if edit_id not in space.gate.words:
                continue
            rows = [i for i, k in enumerate(key_kinds) if parse_kind(k).prompt_format == prompt_format]
            subjects = []
            for i in rows:
                text = negatives[parse_kind(key_kinds[i]).negative or 0]
                words[text] = words.get(text) or self.subject_words(text)
                subjects.append(words[text])
            if rows and keys is not None:
                space.gate.negatives[edit_id] = Negatives(normalise(keys[rows]), tuple(subjects))
            else:
                space.gate.negatives.pop(edit_id, None)

    def _rekeyed_texts(self, item: Activation) -> bool:
        """Whether a text of this edit routes on its last sentence only (lexical.question_start): keys stored
        before that rule pooled the whole text, so such an edit's keys are recomputed from its text (a forward
        pass; rare: a prompt or rephrase with a sentence before the question)."""
        texts = (item.prompt, *item.rephrases, *item.negatives)
        return any(lexical.question_start(t, self.host.is_common_word) > 0 for t in texts)

    def _subject_of(self, prepared: _Prepared, row: int, cache: dict[str, frozenset[str]]) -> frozenset[str]:
        text = [prepared.item.prompt, *prepared.item.rephrases][self._text_of(prepared.kinds[row])]
        if text not in cache:
            cache[text] = self.subject_words(text)
        return cache[text]

    @staticmethod
    def _text_of(kind: str) -> int:
        """Index into [prompt, *rephrases] of the text a key was made from."""
        rephrase = parse_kind(kind).rephrase
        return 0 if rephrase is None else rephrase + 1

    def revoke(self, edit_id: str) -> bool:
        """The weights leave the bank and the keys the index: queries answer as if the edit was never made."""
        removed = [space.index.remove(edit_id) for space in self.routed.spaces.values()]
        for space in self.routed.spaces.values():
            space.forget(edit_id)
        return self.bank.remove(edit_id) or any(removed)

    def reserve(self, edits: int, keys_by_kind: dict[str, int]) -> None:
        """Preallocate for a startup that will activate `edits` edits holding keys of these kinds (counts):
        memory is then what they use, not up to twice it from doubling."""
        self.bank.reserve(edits)
        per_format: dict[PromptFormat, int] = {}
        for kind, n in keys_by_kind.items():
            with contextlib.suppress(ValueError):  # an unknown kind is refused at activation, not here
                prompt_format = parse_kind(kind)[0]
                per_format[prompt_format] = per_format.get(prompt_format, 0) + n
        for prompt_format, n in per_format.items():
            if prompt_format in self.routed.spaces:
                self.routed.spaces[prompt_format].index.reserve(n)

    def active_edit_ids(self) -> set[str]:
        return set().union(*(space.index.edit_ids() for space in self.routed.spaces.values()))

    def num_keys(self) -> int:
        """Keys held: every wording's, and every negative's (as the database counts them)."""
        negatives = sum(len(n.vectors) for space in self.routed.spaces.values() for n in space.gate.negatives.values())
        return sum(len(space.index) for space in self.routed.spaces.values()) + negatives

    def export_peft(self, adapter: bytes, out_dir: Path) -> None:
        export_peft(deserialize_adapter(adapter), Path(out_dir), self.host.name)

    # ---- querying -------------------------------------------------------------------------------
    def pad(self, seqs: Sequence[Sequence[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.host.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            cols = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, cols] = torch.tensor(seq, dtype=torch.long)
            mask[row, cols] = 1
        return ids.to(self.host.device), mask.to(self.host.device)

    def routing_pass(
        self, prompts: Sequence[str], encoded: Sequence[PromptTokens], prompt_format: PromptFormat, left: bool
    ) -> RoutingPass:
        """Each row's question span (in padded coordinates) and words, for the edited layer to route on."""
        width = max(len(e.ids) for e in encoded)
        spans = []
        for e in encoded:
            shift = width - len(e.ids) if left else 0
            spans.append((e.span[0] + shift, e.span[1] + shift))
        return RoutingPass(prompt_format, spans, list(prompts))

    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[str],
        targets: Sequence[str],
        prompt_format: PromptFormat = PromptFormat.RAW,
        use_edits: bool = True,
        context: ChatContext | None = None,
    ) -> list[Score]:
        """Teacher-forced argmax and log-probability of each target after its prompt."""
        encoded = [self.encode(p, prompt_format, context) for p in prompts]
        target_ids = [self._target_ids(t, prompt_format) for t in targets]
        seqs = [e.ids + t for e, t in zip(encoded, target_ids, strict=True)]
        input_ids, attention_mask = self.pad(seqs, left=False)
        forward_pass = self.routing_pass(prompts, encoded, prompt_format, left=False) if use_edits else None
        with self.routed.pass_scope(forward_pass):
            logits = self.host.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        scores = []
        for row, (e, t) in enumerate(zip(encoded, target_ids, strict=True)):
            n = len(e.ids)
            span = logits[row, n - 1 : n - 1 + len(t)].float()
            logprobs = torch.log_softmax(span, dim=-1)
            route = forward_pass.routes[row] if forward_pass and forward_pass.routes else None
            fired = route if route is not None and route.edit_id is not None else None
            scores.append(
                Score(
                    target_ids=t,
                    predicted_ids=span.argmax(-1).tolist(),
                    target_logprob=float(logprobs[torch.arange(len(t)), torch.tensor(t)].sum()),
                    routed_edit_id=fired.edit_id if fired else None,
                    similarity=fired.similarity if fired else None,
                )
            )
        return scores

    @torch.no_grad()
    def prompt_logits(
        self,
        prompts: Sequence[str],
        prompt_format: PromptFormat = PromptFormat.RAW,
        use_edits: bool = True,
        context: ChatContext | None = None,
    ) -> list[torch.Tensor]:
        encoded = [self.encode(p, prompt_format, context) for p in prompts]
        input_ids, attention_mask = self.pad([e.ids for e in encoded], left=False)
        forward_pass = self.routing_pass(prompts, encoded, prompt_format, left=False) if use_edits else None
        with self.routed.pass_scope(forward_pass):
            logits = self.host.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return [logits[row, : len(e.ids)].float().clone() for row, e in enumerate(encoded)]

    @torch.no_grad()
    def padded_prompt_logits(
        self, prompts: Sequence[str], prompt_format: PromptFormat = PromptFormat.RAW, use_edits: bool = True
    ) -> tuple[torch.Tensor, list[int]]:
        """prompt_logits without copying each row out (bit-exact comparisons, evaluation/quality.py): the batch's
        right-padded logits [B, T, V] as the model made them, and each row's prompt length."""
        encoded = [self.encode(p, prompt_format) for p in prompts]
        input_ids, attention_mask = self.pad([e.ids for e in encoded], left=False)
        forward_pass = self.routing_pass(prompts, encoded, prompt_format, left=False) if use_edits else None
        with self.routed.pass_scope(forward_pass):
            logits = self.host.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return logits, [len(e.ids) for e in encoded]

    def query_keys(
        self, prompts: Sequence[str], prompt_format: PromptFormat = PromptFormat.RAW, context: ChatContext | None = None
    ) -> np.ndarray:
        """What the edited layer routes each prompt on: its content vector [n, D]."""
        encoded = [self.encode(p, prompt_format, context) for p in prompts]
        hidden, _ = self._capture([EditExample(e.ids, []) for e in encoded])
        return self._contents(hidden, [e.span for e in encoded], [key_kind(prompt_format)] * len(encoded))

    def prompt_routes(self, trained: TrainedEdit, prompt: str) -> list[Route]:
        """Where `prompt` routes now, in each prompt format, from the keys train_edit made for it: the same
        decision as route([prompt]) without its forward pass (the keys are the prompt's content)."""
        routes = []
        for row, kind in enumerate(trained.key_kinds):
            parsed = parse_kind(kind)
            if parsed.rephrase is None and parsed.negative is None and parsed.prompt_format in self.routed.spaces:
                routes += self.routed.search(trained.keys[row][None], [prompt], parsed.prompt_format)
        return routes

    def route(
        self, prompts: Sequence[str], prompt_format: PromptFormat = PromptFormat.RAW, context: ChatContext | None = None
    ) -> list[Route]:
        """Where each prompt would route (which edit answers, its score, the runner-up), from a partial forward
        up to the edited layer: the decision generation takes at prefill, without generating."""
        return self.routed.search(self.query_keys(prompts, prompt_format, context), prompts, prompt_format)

    def routes_for(
        self, prompts: Sequence[str], prompt_format: PromptFormat = PromptFormat.RAW, context: ChatContext | None = None
    ) -> list[tuple[str | None, float | None]]:
        """(edit id, score) of route()."""
        return [(r.edit_id, r.similarity) for r in self.route(prompts, prompt_format, context)]
