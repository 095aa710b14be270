"""One edit's LoRA as bytes (safetensors + metadata), and as a standard PEFT adapter directory."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load, save

FORMAT = "sola-lora-v1"
TARGET_MODULE = "mlp.down_proj"  # the edited layer's MLP output projection carries the LoRA


@dataclass(frozen=True)
class Adapter:
    lora_A: torch.Tensor  # [rank, in_features]
    lora_B: torch.Tensor  # [out_features, rank]
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
    lora_A: torch.Tensor, lora_B: torch.Tensor, *, layer: int, alpha: float, fingerprint: str
) -> bytes:
    metadata = {
        "format": FORMAT,
        "layer": str(layer),
        "alpha": repr(float(alpha)),
        "target_module": TARGET_MODULE,
        "base_fingerprint": fingerprint,
    }
    tensors = {
        "lora_A": lora_A.detach().to(torch.float32).contiguous(),
        "lora_B": lora_B.detach().to(torch.float32).contiguous(),
    }
    return save(tensors, metadata=metadata)


def _metadata(data: bytes) -> dict[str, str]:
    # safetensors layout: 8-byte little-endian header size, then a JSON header holding __metadata__.
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__", {})


def deserialize_adapter(data: bytes) -> Adapter:
    meta = _metadata(data)
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} adapter (format={meta.get('format')!r})")
    tensors = load(data)
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
        f"{prefix}.lora_A.weight": adapter.lora_A.contiguous(),
        f"{prefix}.lora_B.weight": adapter.lora_B.contiguous(),
    }
    (out_dir / "adapter_model.safetensors").write_bytes(save(save_tensors, metadata={"format": "pt"}))
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
