"""One edit's LoRA as bytes (safetensors + metadata), and as a standard PEFT adapter directory."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save as save_numpy
from safetensors.torch import save

FORMAT = "sola-lora-v1"
TARGET_MODULE = "mlp.down_proj"  # the edited layer's MLP output projection carries the LoRA
STORED_DTYPES = (torch.float32, torch.float16)
NUMPY_DTYPES = {"F32": "<f4", "F16": "<f2"}  # safetensors dtype -> numpy


@dataclass(frozen=True)
class Adapter:
    # Read-only float32 or float16 views into the stored bytes (no copy: a startup parses 100,000 of them;
    # the bank copies them once, all together).
    lora_A: np.ndarray  # [rank, in_features]
    lora_B: np.ndarray  # [out_features, rank]
    layer: int
    alpha: float
    fingerprint: str  # base-model weights this adapter was trained against

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def serialize_adapter(
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    *,
    layer: int,
    alpha: float,
    fingerprint: str,
    dtype: torch.dtype = torch.float32,
) -> bytes:
    """Safetensors bytes, in float32 or float16 (`dtype`): an engine whose bank is float16 stores what it
    banks, half the bytes for every later start to read, hash and parse."""
    if dtype not in STORED_DTYPES:
        raise ValueError(f"adapters are stored as float32 or float16, not {dtype}")
    metadata = {
        "format": FORMAT,
        "layer": str(layer),
        "alpha": repr(float(alpha)),
        "target_module": TARGET_MODULE,
        "base_fingerprint": fingerprint,
    }
    tensors = {
        "lora_A": lora_A.detach().to(dtype).contiguous(),
        "lora_B": lora_B.detach().to(dtype).contiguous(),
    }
    return save(tensors, metadata=metadata)


def _tensors(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The F32 / F16 tensors (as views) and metadata of safetensors bytes, from one parse of the header.

    safetensors layout: an 8-byte little-endian header size, a JSON header naming each tensor's dtype, shape
    and byte range in the body that follows, and __metadata__."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    body = memoryview(data)[8 + size :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in NUMPY_DTYPES:
            raise ValueError(f"tensor {name} is {info['dtype']}, adapters are stored as F32 or F16")
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(body[start:end], dtype=NUMPY_DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors, header.get("__metadata__", {})


def deserialize_adapter(data: bytes) -> Adapter:
    tensors, meta = _tensors(data)
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} adapter (format={meta.get('format')!r})")
    return Adapter(
        lora_A=tensors["lora_A"],
        lora_B=tensors["lora_B"],
        layer=int(meta["layer"]),
        alpha=float(meta["alpha"]),
        fingerprint=meta["base_fingerprint"],
    )


def adapter_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_peft(adapter: Adapter, out_dir: Path, base_model_name_or_path: str) -> None:
    """Write adapter_config.json + adapter_model.safetensors in PEFT's own layout and key names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"base_model.model.model.layers.{adapter.layer}.{TARGET_MODULE}"
    save_tensors = {
        f"{prefix}.lora_A.weight": np.ascontiguousarray(adapter.lora_A),
        f"{prefix}.lora_B.weight": np.ascontiguousarray(adapter.lora_B),
    }
    (out_dir / "adapter_model.safetensors").write_bytes(save_numpy(save_tensors, metadata={"format": "pt"}))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": [f"model.layers.{adapter.layer}.{TARGET_MODULE}"],
        "fan_in_fan_out": False,
        "inference_mode": True,
        "use_rslora": False,
        "init_lora_weights": True,
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
