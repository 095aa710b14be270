"""Plain data passed between the editing engine and its callers (service, evaluation, benchmarks)."""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # annotations only: importing it would load FAISS
    from routing.key_index import Route


class PromptFormat(StrEnum):
    """How a question reaches the model: as the user turn of its chat template, or as raw text to continue.

    Each format has its own routing keys (the same question's states differ between them)."""

    CHAT = "chat"
    RAW = "raw"


@dataclass(frozen=True)
class ChatContext:
    """What surrounds a question in real chat traffic: an operator's system prompt and earlier turns."""

    system: str | None = None
    history: tuple[tuple[str, str], ...] = ()  # (role, content), role "user" or "assistant"


@dataclass(frozen=True)
class PromptTokens:
    """A formatted prompt's token ids and where the question itself lies in them (the router reads that span)."""

    ids: list[int]
    span: tuple[int, int]  # [start, end) of the question's tokens: the last user turn, or the whole raw prompt
    # Leading tokens the chat template and the context put before the question (system prompt, earlier turns),
    # shared by every prompt with the same context: editors/prefix_cache.py computes them once. 0 for raw prompts.
    prefix: int = 0


@dataclass(frozen=True)
class EngineConfig:
    """Knobs of the editing method. Defaults were chosen by measurement (see studies/README.md)."""

    # The edited layer: keys are the residual stream entering it, LoRA sits in its MLP. None: the same share
    # of the depth as layer 26 of SmolLM2-135M's 30 (measured there, studies/README.md): see default_layer.
    layer: int | None = None
    # Routing score = content cosine x (share of the key's subject words in the query)^2, one threshold for
    # chat and raw prompts alike; routing/relation.py's check decides after it (studies/content_router/README.md).
    threshold: float = 0.40
    tie_margin: float = 1e-3  # keys this close to the best score count as the same fact: the newest edit wins
    rank: int = 4
    alpha: float = 8.0
    learning_rate: float = 5e-2
    max_steps: int = 60
    # Also train until the targets' mean cross-entropy is below this, not only until each target token is the
    # argmax: answers hold their target verbatim more often (studies/adapter_training/README.md).
    target_loss: float | None = 0.02
    max_train_seconds: float | None = None  # an edit not learnt in this long fails (TrainingTimeout)
    seed: int = 0
    generic_contexts: int = 0  # generic prompts also trained to answer the target (see EditingEngine.train_edit)
    search_k: int = 8  # neighbours fetched per query before the threshold / newest-wins rule
    # dtype the bank stores active adapters in ("float16", "bfloat16"; None: the model's). The bank is most of
    # an active edit's memory; the delta is still computed in the model's dtype (studies/bank_precision/README.md).
    bank_dtype: str | None = "float16"


DEFAULT_LAYER_FRACTION = 26 / 30


def default_layer(n_layers: int) -> int:
    """The edited layer of a model `n_layers` deep when none is set: 26 of 30, 24 of 28, 36 of 42."""
    return min(n_layers - 1, round(DEFAULT_LAYER_FRACTION * n_layers))


def resolved_layer(config: EngineConfig, n_layers: int) -> int:
    """The layer `config` edits in a model `n_layers` deep: its own, else default_layer. ValueError if outside."""
    layer = default_layer(n_layers) if config.layer is None else config.layer
    if not 0 <= layer < n_layers:
        raise ValueError(f"edited layer {layer} out of range 0..{n_layers - 1} (SOLA_LAYER)")
    return layer


def parse_overrides(assignments: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings -> EngineConfig field values, typed as the field is (`none` for an optional one).

    Raises ValueError naming the bad assignment and the known fields, so a mistyped knob never runs silently.
    """
    hints = typing.get_type_hints(EngineConfig)
    changes: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or key not in hints:
            known = ", ".join(f.name for f in fields(EngineConfig))
            raise ValueError(f"{assignment!r}: expected KEY=VALUE with KEY one of: {known}")
        kinds = [t for t in typing.get_args(hints[key]) or (hints[key],) if t is not type(None)]
        if raw.lower() == "none":
            if type(None) not in typing.get_args(hints[key]):
                raise ValueError(f"{assignment!r}: {key} cannot be none")
            changes[key] = None
            continue
        kind = kinds[0]
        try:
            changes[key] = {"true": True, "false": False}[raw.lower()] if kind is bool else kind(raw)
        except (KeyError, ValueError):
            raise ValueError(f"{assignment!r}: {key} takes a value of type {kind.__name__}") from None
    return changes


def engine_config(
    layer: int | None = None, threshold: float | None = None, overrides: Sequence[str] = (), **knobs: Any
) -> EngineConfig:
    """EngineConfig's measured defaults with `knobs` (fields by name, taken as given), then `layer` and
    `threshold` unless None, then `KEY=VALUE` overrides (parse_overrides). The one way the engine's knobs are
    set: from the server's settings (`engine_config(**settings.engine_knobs())`) and from `sola eval`'s
    --layer, --threshold and --set. Raises ValueError naming an unknown knob or a mistyped value."""
    unknown = sorted(set(knobs) - {f.name for f in fields(EngineConfig)})
    if unknown:
        raise ValueError(f"not EngineConfig knobs: {', '.join(unknown)}")
    changes = dict(knobs)
    changes |= {name: value for name, value in (("layer", layer), ("threshold", threshold)) if value is not None}
    changes |= parse_overrides(overrides)
    return replace(EngineConfig(), **changes)


@dataclass(frozen=True)
class EditSpec:
    """What one edit is trained from (EditingEngine.train_edits)."""

    prompt: str
    target: str
    rephrases: Sequence[str] = ()


@dataclass
class TrainedEdit:
    """Everything one edit needs to be stored and activated; nothing is active yet."""

    keys: np.ndarray  # float32 [n_keys, hidden]: content vectors (editors/content.py), one per key
    key_kinds: list[str]  # one label per key row, e.g. "chat:prompt", "raw:rephrase:0"
    adapter: bytes  # safetensors bytes (lora_A, lora_B + metadata)
    adapter_sha256: str
    steps: int
    loss: float
    seconds: float  # total wall time of train_edit
    key_seconds: float = 0.0
    train_seconds: float = 0.0


@dataclass
class Generation:
    text: str  # the continuation only
    routed_edit_id: str | None  # the edit that answered, or None
    similarity: float | None  # the best routing score, fired or not (None: no keys, or asked without edits)
    token_ids: list[int] = field(default_factory=list)
    nearest_edit_id: str | None = None  # the edit of that best score, also when it did not fire
    finish_reason: str | None = None  # "stop" (end of turn, stop string) or "length" (served answers)
    prompt_tokens: int = 0

    @classmethod
    def from_events(cls, events: Sequence[RowEvent]) -> Generation:
        """One decoded row's whole answer, from its events (start, text..., end)."""
        start, end = events[0], events[-1]
        assert start.kind == "start" and end.kind == "end", (start.kind, end.kind)
        route = start.route
        return cls(
            text="".join(e.text for e in events if e.kind == "text"),
            routed_edit_id=route.edit_id if route else None,
            similarity=route.similarity if route else None,
            token_ids=list(end.token_ids),
            nearest_edit_id=route.nearest_edit_id if route else None,
            finish_reason=end.finish_reason,
            prompt_tokens=end.prompt_tokens,
        )


@dataclass
class Score:
    """Teacher-forced view of one (prompt, target) pair."""

    target_ids: list[int]
    predicted_ids: list[int]  # argmax at each target position, teacher-forced
    target_logprob: float  # sum of log p(target token) over the target
    routed_edit_id: str | None
    similarity: float | None


# ---- generation requests (editors/batch.py runs them) --------------------------------------------
@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens. Temperature 0 is greedy; a seed makes sampling reproducible."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # strings that end the answer (not included in it)
    min_new_tokens: int = 0  # stop tokens held back this long (benchmarks: equal work for every request)
    logprobs: bool = False  # report each token's log-probability
    top_logprobs: int = 0  # and this many most likely alternatives at each position


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the model, and the most likely alternatives there."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token, logprob), most likely first


SHUTDOWN = "shutdown"  # the finish_reason of the error event every row gets when the server stops


class RowEventKind(StrEnum):
    START = "start"  # routed at prefill: the route, the prompt's tokens
    TEXT = "text"  # more of the answer
    END = "end"  # finished: why, the counts, the tokens
    ERROR = "error"  # the row could not go on (text: why); nothing follows


@dataclass(frozen=True)
class RowEvent:
    """What a row reports as it runs: its route once (at prefill), text as it is decoded, then its end."""

    kind: str  # an RowEventKind
    route: Route | None = None  # start
    text: str = ""  # text: the new part of the answer; error: why
    finish_reason: str | None = None  # end: "stop" (end of turn or a stop string) or "length"
    prompt_tokens: int = 0  # start and end
    completion_tokens: int = 0  # end
    token_ids: tuple[int, ...] = ()  # end: the answer's tokens, stop tokens excluded
    logprobs: tuple[TokenLogprob, ...] = ()  # end, when asked for: one per answer token


@dataclass
class Row:
    """One request as its caller sent it; editors/batch.py keeps its decoding state apart (RowState).
    `emit` runs on the decoding thread."""

    prompt: str
    prompt_format: PromptFormat
    sampling: Sampling
    emit: Callable[[RowEvent], None]
    context: ChatContext | None = None
    use_edits: bool = True
    encoded: PromptTokens | None = None  # the prompt's tokens, if the caller has them already (else encoded there)
    cancelled: bool = False  # set from any thread (client gone): the row leaves at the next step
