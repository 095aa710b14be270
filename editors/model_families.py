"""The decoder layouts the engine can host: where each model family keeps the parts the engine touches.

The engine swaps one decoder layer for its routed wrapper, puts its LoRA on that layer's MLP down projection,
and runs the layers above it by hand (training, and rebuilding a routed row's cache in editors/runner.py).
Everything else (embeddings and Gemma's embedding scale, q/k norms, attention softcapping) stays inside the
Hugging Face modules, which are called as they are. What a by-hand call must still supply is per layer:
its rotary embedding (Gemma 3: local or global) and its attention mask (sliding-window layers), and after
the final norm, Gemma's logit softcapping. An architecture not listed here is refused at load: a layout
guessed wrongly would edit the wrong module silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


@dataclass(frozen=True)
class ModelFamily:
    name: str  # what /readyz reports
    model_types: tuple[str, ...]  # the config.json `model_type`s of the family
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    rotary_embedding: str = "model.rotary_emb"
    lm_head: str = "lm_head"
    edited_projection: str = "mlp.down_proj"  # inside a decoder layer
    rotary_takes_layer_type: bool = False  # Gemma 3: rotary_emb(x, positions, layer_type), local vs global


FAMILIES = (
    ModelFamily("llama", ("llama",)),  # Llama 2 / 3, SmolLM / SmolLM2
    ModelFamily("qwen2", ("qwen2",)),  # Qwen2, Qwen2.5
    ModelFamily("qwen3", ("qwen3",)),
    ModelFamily("mistral", ("mistral",)),
    ModelFamily("gemma2", ("gemma2",)),
    ModelFamily("gemma3", ("gemma3_text",), rotary_takes_layer_type=True),
    ModelFamily("phi3", ("phi3",)),  # Phi-3, Phi-3.5, Phi-4 (mini)
)


class UnsupportedModel(ValueError):
    """A model whose architecture has no layout here."""


def supported_model_types() -> list[str]:
    return [t for family in FAMILIES for t in family.model_types]


def family_of(config: Any) -> ModelFamily:
    """The family of a transformers config, or UnsupportedModel naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    hint = " (a Gemma 3 checkpoint with vision: use its text-only gemma3_text part)" if model_type == "gemma3" else ""
    raise UnsupportedModel(
        f"model_type {model_type!r} is not supported{hint}; supported model types: {', '.join(supported_model_types())}"
    )


def layer_types(config: Any) -> list[str]:
    """Each decoder layer's attention kind, as the model's own forward picks its mask (and Gemma 3 its rotary)."""
    n = int(config.num_hidden_layers)
    declared = getattr(config, "layer_types", None)
    if declared:
        return [str(t) for t in declared[:n]]
    # Mistral and Phi-3 have no per-layer list: one window (or none) for every layer.
    kind = SLIDING_ATTENTION if getattr(config, "sliding_window", None) else FULL_ATTENTION
    return [kind] * n
