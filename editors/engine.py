"""SoLA editing engine: one frozen LoRA per edit, routed inside the edited layer by semantic keys.

Not thread-safe: the service drives it from a single model worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from editors.adapter_io import adapter_sha256, deserialize_adapter, export_peft, serialize_adapter
from editors.calibration import CALIBRATION_PROMPTS
from editors.lora_bank import BankedLoRALinear, LoRABank
from editors.model_host import ModelHost
from editors.routed_layer import CaptureSession, KeySpace, RoutedLayer, RoutingSession, Session, StopForward
from editors.training import EditExample, train_lora
from editors.types import EngineConfig, Generation, Score, TrainedEdit
from router.key_index import KeyIndex


class AdapterMismatch(ValueError):
    """An adapter that was trained for another base model, layer or rank: refused, never used."""


def space_of(key_kind: str) -> str:
    """Key kinds are "chat", "raw", "rephrase-chat:0", ...: each lives in its prompt format's space."""
    return "chat" if "chat" in key_kind else "raw"


class EditingEngine:
    def __init__(self, host: ModelHost, config: EngineConfig | None = None, index_kind: str = "flat"):
        self.host = host
        self.config = config or EngineConfig()
        layers = host.model.model.layers
        if not 0 <= self.config.layer < len(layers):
            raise ValueError(f"edited layer {self.config.layer} out of range 0..{len(layers) - 1}")
        original = layers[self.config.layer]
        if isinstance(original, RoutedLayer):
            raise ValueError("this model already hosts an engine; load a fresh ModelHost per engine")
        down = original.mlp.down_proj
        param = next(host.model.parameters())
        self.bank = LoRABank(down.in_features, down.out_features, self.config.rank, param.dtype, param.device)
        proj = BankedLoRALinear(down, self.bank)
        original.mlp.down_proj = proj
        self.routed = RoutedLayer(original, proj, {}, self.config.search_k, self.config.tie_margin)
        layers[self.config.layer] = self.routed
        thresholds = {"chat": self.config.threshold, "raw": self.config.raw_threshold}
        for space in ("chat", "raw") if host.has_chat_template else ("raw",):
            center = self._calibration_center(chat=space == "chat")
            index = KeyIndex(host.hidden_size, kind=index_kind, center=center)
            self.routed.spaces[space] = KeySpace(index, thresholds[space])
        self._orders = itertools.count(1)

    def _calibration_center(self, chat: bool) -> np.ndarray:
        """Mean edited-layer input at the last token of fixed generic prompts (see editors/calibration.py).

        Deterministic for a given model, layer and prompt set, so it is cached beside the bundled weights.
        """
        tag = hashlib.sha256("\n".join(CALIBRATION_PROMPTS).encode()).hexdigest()[:12]
        name = f"sola-center-{self.host.fingerprint[:12]}-L{self.config.layer}-{'chat' if chat else 'raw'}-{tag}.npy"
        cached = self.host.artifact_dir / name if self.host.artifact_dir else None
        if cached is not None and cached.is_file():
            return np.load(cached)
        examples = [EditExample(self._prompt_ids(p, chat), []) for p in CALIBRATION_PROMPTS]
        center = self._key_states(examples).mean(axis=0)
        if cached is not None:
            partial = cached.with_suffix(".partial.npy")
            np.save(partial, center)
            partial.replace(cached)  # atomic: concurrent starts never read half a file
        return center

    # ---- sessions -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _session(self, session: Session | None) -> Iterator[None]:
        self.routed.session = session
        try:
            yield
        finally:
            self.routed.session = None

    # ---- tokenisation helpers -------------------------------------------------------------------
    def _prompt_ids(self, prompt: str, chat: bool) -> list[int]:
        return self.host.encode(self.host.format_prompt(prompt, chat))

    def _target_ids(self, target: str, chat: bool) -> list[int]:
        # A completion continues the prompt after a space; a chat answer starts the assistant turn.
        text = target if chat or target[:1].isspace() else " " + target
        return self.host.encode(text)

    def _space(self, chat: bool) -> str:
        return "chat" if chat else "raw"

    def _formats(self) -> list[bool]:
        return [True, False] if self.host.has_chat_template else [False]

    # ---- editing --------------------------------------------------------------------------------
    def train_edit(self, prompt: str, target: str, rephrases: Sequence[str] = ()) -> TrainedEdit:
        """Keys + a fresh LoRA trained alone against the frozen base model. Activates nothing."""
        start = time.perf_counter()
        examples: list[EditExample] = []
        kinds: list[str] = []
        eot = self.host.end_of_turn_ids()[:1]
        for i, text in enumerate([prompt, *rephrases]):
            for chat in self._formats():
                target_ids = self._target_ids(target, chat) + (eot if chat else [])
                examples.append(EditExample(self._prompt_ids(text, chat), target_ids))
                kinds.append(("chat" if chat else "raw") if i == 0 else f"rephrase-{'chat' if chat else 'raw'}:{i - 1}")
        n_keys = len(examples)
        # The router alone decides when an edit applies, so its LoRA may answer the target whatever the
        # question: training it on a few unrelated generic prompts too makes it carry over to paraphrases.
        rng = random.Random(f"{self.config.seed}:{prompt}")
        for text in rng.sample(CALIBRATION_PROMPTS, self.config.generic_contexts):
            chat = self.host.has_chat_template
            examples.append(
                EditExample(self._prompt_ids(text, chat), self._target_ids(target, chat) + (eot if chat else []))
            )
        hidden, kwargs = self._capture(examples)
        key_pos = torch.tensor([len(e.prompt_ids) - 1 for e in examples[:n_keys]])
        keys = hidden[torch.arange(n_keys), key_pos].float().numpy()
        key_seconds = time.perf_counter() - start
        result = train_lora(
            self.host.model,
            self.routed,
            self.config,
            hidden,
            kwargs,
            examples,
            self.bank.in_features,
            self.bank.out_features,
        )
        adapter = serialize_adapter(
            result.lora_A,
            result.lora_B,
            layer=self.config.layer,
            alpha=self.config.alpha,
            fingerprint=self.host.fingerprint,
        )
        total = time.perf_counter() - start
        return TrainedEdit(
            keys=keys,
            key_kinds=kinds,
            adapter=adapter,
            adapter_sha256=adapter_sha256(adapter),
            steps=result.steps,
            loss=result.loss,
            seconds=total,
            key_seconds=key_seconds,
            train_seconds=total - key_seconds,
        )

    def _capture(self, examples: Sequence[EditExample]) -> tuple[torch.Tensor, dict]:
        """One partial forward (layers below the edited one) over the right-padded training batch."""
        seqs = [e.prompt_ids + e.target_ids for e in examples]
        input_ids, attention_mask = self._pad(seqs, left=False)
        session = CaptureSession()
        with self._session(session), torch.no_grad(), contextlib.suppress(StopForward):
            self.host.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        assert session.hidden_states is not None
        return session.hidden_states, session.kwargs

    def _key_states(self, examples: Sequence[EditExample]) -> np.ndarray:
        hidden, _ = self._capture(examples)
        pos = torch.tensor([len(e.prompt_ids) - 1 for e in examples])
        return hidden[torch.arange(len(examples)), pos].float().numpy()

    def activate(
        self,
        edit_id: str,
        adapter: bytes,
        keys: np.ndarray,
        order: int | None = None,
        key_kinds: Sequence[str] | None = None,
    ) -> None:
        """Bank the weights and index the keys (raw hidden states from train_edit, one kind per row)."""
        if edit_id in self.bank:
            return
        parsed = deserialize_adapter(adapter)
        if parsed.fingerprint != self.host.fingerprint:
            raise AdapterMismatch(f"edit {edit_id} was trained on another base model ({parsed.fingerprint[:12]})")
        if parsed.layer != self.config.layer or parsed.rank != self.config.rank:
            raise AdapterMismatch(
                f"edit {edit_id} targets layer {parsed.layer} rank {parsed.rank}; "
                f"engine is layer {self.config.layer} rank {self.config.rank}"
            )
        keys = np.asarray(keys, dtype=np.float32).reshape(-1, self.host.hidden_size)
        spaces = self._key_spaces(edit_id, keys, key_kinds)
        order = order if order is not None else next(self._orders)
        self.bank.add(edit_id, parsed.lora_A, parsed.lora_B, parsed.scale)
        try:
            for name, key_space in self.routed.spaces.items():
                rows = [i for i, s in enumerate(spaces) if s == name]
                if rows:
                    key_space.index.add(edit_id, keys[rows], order)
        except Exception:
            self.forget(edit_id)  # a failed activation leaves nothing behind, not even blockers
            raise

    def _key_spaces(self, edit_id: str, keys: np.ndarray, key_kinds: Sequence[str] | None) -> list[str]:
        if key_kinds is None or len(key_kinds) != len(keys):
            raise ValueError(f"edit {edit_id}: key_kinds must name the prompt format of each of the {len(keys)} keys")
        spaces = [space_of(k) for k in key_kinds]
        if unknown := set(spaces) - set(self.routed.spaces):
            raise AdapterMismatch(f"edit {edit_id} has {sorted(unknown)} keys; this model has no such format")
        return spaces

    def deactivate(self, edit_id: str) -> bool:
        """Revoke: the weights leave the bank and the keys stay only as blockers (see router/key_index.py),
        so this edit's prompts get the unedited model back even where other edits are near."""
        revoked = [space.index.revoke(edit_id) for space in self.routed.spaces.values()]
        return self.bank.remove(edit_id) or any(revoked)

    def add_revoked(self, edit_id: str, keys: np.ndarray, key_kinds: Sequence[str], order: int | None = None) -> None:
        """Blockers for an edit revoked before this engine saw it active (startup rebuild, other replicas)."""
        if edit_id in self.bank:
            self.deactivate(edit_id)
            return
        keys = np.asarray(keys, dtype=np.float32).reshape(-1, self.host.hidden_size)
        spaces = self._key_spaces(edit_id, keys, key_kinds)
        order = order if order is not None else next(self._orders)
        for name, key_space in self.routed.spaces.items():
            rows = [i for i, s in enumerate(spaces) if s == name]
            if rows and not key_space.index.is_revoked(edit_id):
                key_space.index.add(edit_id, keys[rows], order, revoked=True)

    def forget(self, edit_id: str) -> bool:
        """Drop an edit entirely, blockers included (the engine then behaves as if it never existed)."""
        removed = [space.index.remove(edit_id) for space in self.routed.spaces.values()]
        return self.bank.remove(edit_id) or any(removed)

    def active_edit_ids(self) -> set[str]:
        return set().union(*(space.index.edit_ids() for space in self.routed.spaces.values()))

    def is_revoked(self, edit_id: str) -> bool:
        """Are this edit's keys held as blockers here?"""
        return any(space.index.is_revoked(edit_id) for space in self.routed.spaces.values())

    def revoked_edit_ids(self) -> set[str]:
        return set().union(*(space.index.revoked_ids() for space in self.routed.spaces.values()))

    def num_keys(self) -> int:
        """Keys of active edits."""
        return sum(len(space.index) for space in self.routed.spaces.values())

    def num_revoked_keys(self) -> int:
        return sum(space.index.revoked_key_count() for space in self.routed.spaces.values())

    def export_peft(self, adapter: bytes, out_dir: Path) -> None:
        export_peft(deserialize_adapter(adapter), Path(out_dir), self.host.name)

    # ---- querying -------------------------------------------------------------------------------
    def _pad(self, seqs: Sequence[Sequence[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.host.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            cols = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, cols] = torch.tensor(seq, dtype=torch.long)
            mask[row, cols] = 1
        return ids.to(self.host.device), mask.to(self.host.device)

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[str], max_new_tokens: int = 32, chat: bool = False, min_new_tokens: int = 0
    ) -> list[Generation]:
        """Batched greedy decoding; each row routed by its own last prompt token, decided once at prefill.

        `min_new_tokens` holds back the stop tokens that long (benchmarks: equal work for every model)."""
        seqs = [self._prompt_ids(p, chat) for p in prompts]
        input_ids, attention_mask = self._pad(seqs, left=True)  # left padding: every row's last token is at -1
        stop = self.host.end_of_turn_ids()
        session = RoutingSession(space=self._space(chat))
        with self._session(session):
            out = self.host.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens or None,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=stop,
                pad_token_id=self.host.tokenizer.pad_token_id,
            )
        assert session.routes is not None
        results = []
        for row, route in enumerate(session.routes):
            tokens = out[row, input_ids.shape[1] :].tolist()
            cut = next((i for i, t in enumerate(tokens) if t in stop), len(tokens))
            tokens = tokens[:cut]
            fired = route.edit_id is not None
            results.append(
                Generation(
                    text=self.host.tokenizer.decode(tokens, skip_special_tokens=True),
                    routed_edit_id=route.edit_id,
                    similarity=route.similarity if fired else None,
                    token_ids=tokens,
                )
            )
        return results

    @torch.no_grad()
    def score(
        self, prompts: Sequence[str], targets: Sequence[str], chat: bool = False, use_edits: bool = True
    ) -> list[Score]:
        """Teacher-forced argmax and log-probability of each target after its prompt."""
        prompt_ids = [self._prompt_ids(p, chat) for p in prompts]
        target_ids = [self._target_ids(t, chat) for t in targets]
        input_ids, attention_mask = self._pad([p + t for p, t in zip(prompt_ids, target_ids, strict=True)], left=False)
        positions = torch.tensor([len(p) - 1 for p in prompt_ids])
        session = RoutingSession(self._space(chat), positions) if use_edits else None
        with self._session(session):
            logits = self.host.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        scores = []
        for row, (p, t) in enumerate(zip(prompt_ids, target_ids, strict=True)):
            span = logits[row, len(p) - 1 : len(p) - 1 + len(t)].float()
            logprobs = torch.log_softmax(span, dim=-1)
            route = session.routes[row] if session and session.routes else None
            fired = route is not None and route.edit_id is not None
            scores.append(
                Score(
                    target_ids=t,
                    predicted_ids=span.argmax(-1).tolist(),
                    target_logprob=float(logprobs[torch.arange(len(t)), torch.tensor(t)].sum()),
                    routed_edit_id=route.edit_id if fired else None,
                    similarity=route.similarity if fired else None,
                )
            )
        return scores

    @torch.no_grad()
    def prompt_logits(self, prompts: Sequence[str], chat: bool = False, use_edits: bool = True) -> list[torch.Tensor]:
        seqs = [self._prompt_ids(p, chat) for p in prompts]
        input_ids, attention_mask = self._pad(seqs, left=False)
        positions = torch.tensor([len(s) - 1 for s in seqs])
        session = RoutingSession(self._space(chat), positions) if use_edits else None
        with self._session(session):
            logits = self.host.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return [logits[row, : len(s)].float().clone() for row, s in enumerate(seqs)]

    def routes_for(self, prompts: Sequence[str], chat: bool = False) -> list[tuple[str | None, float | None]]:
        """Routing decisions only (edit id, best similarity), from a partial forward up to the edited layer."""
        examples = [EditExample(self._prompt_ids(p, chat), []) for p in prompts]
        routes = self.routed.search(self._key_states(examples), self._space(chat))
        return [(r.edit_id, r.similarity) for r in routes]
