"""Tiny random-weight models of every supported family, saved as real Hugging Face directories.

4 layers, hidden 64, the bundled SmolLM2 tokenizer (so the chat template and the lexical router are the
real ones). Windows are short (16 tokens) so chat prompts run past them: the sliding-window layers of
Mistral, Gemma 2 / 3 and Phi-3 then really attend differently from full layers, and Gemma 3 alternates
local and global layers (two rotary embeddings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen3Config,
)

from editors.model_host import bundled_gguf_path

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3")
WINDOW = 16
ALTERNATING = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def bundled_tokenizer() -> PreTrainedTokenizerBase:
    gguf = bundled_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def tiny_config(family: str, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 2048,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": True,
        "initializer_range": 0.2,  # peaked enough logits that one LoRA can make an answer near-certain
    }
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "qwen3":
        return Qwen3Config(**common)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=WINDOW)
    if family == "gemma2":
        common |= {"final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0}
        return Gemma2Config(**common, sliding_window=WINDOW, query_pre_attn_scalar=16)
    if family == "gemma3":
        return Gemma3TextConfig(**common, sliding_window=WINDOW, query_pre_attn_scalar=16, layer_types=ALTERNATING)
    if family == "phi3":
        common.pop("head_dim")
        return Phi3Config(**common, sliding_window=WINDOW)
    raise ValueError(family)


def save_tiny_model(family: str, tokenizer: PreTrainedTokenizerBase, target: Path) -> Path:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, tokenizer), dtype=torch.float32)
    if family.startswith("gemma"):
        # Gemma normalises each MLP output (post_feedforward_layernorm, weight zero-initialised: scale 1), so
        # in a random model the top layer's MLP is a small share of the residual stream and no LoRA on it can
        # make an answer likely (the loss stalls near 8). Trained Gemmas learn large scales there; give the
        # top layer one too.
        with torch.no_grad():
            model.model.layers[-1].post_feedforward_layernorm.weight.fill_(10.0)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
