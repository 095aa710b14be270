"""GET /edits/{id}/adapter: one edit as a zip that stands on its own outside the service.

`<edit_id>/` holds the PEFT adapter (adapter_config.json + adapter_model.safetensors), `sola_edit.json`
(the base model's identity and the edit's routing data: keys, threshold, wordings, negatives) and a README
saying what the adapter is. Without the router PEFT applies the adapter to every token, so it changes
answers to every question (the README says so first)."""

from __future__ import annotations

import base64
import io
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from storage.repository import EditPayload

ROUTING_RULE = (
    "score = cosine(query key, edit key) x (share of the key's subject words the query contains)^2, the query "
    "key being the mean of the edited layer's input states over the question's tokens, minus the model's "
    "calibration centre; the edit answers when its best key scores at least `threshold` and the gate agrees "
    "(routing/gate.py: subject fully covered, no new names, the same relation, no negative closer)"
)


@dataclass(frozen=True)
class BaseModelIdentity:
    name: str
    hub_id: str | None  # where anyone can fetch the weights; None for a local model without one
    fingerprint: str
    dtype: str
    local_path: str | None  # where this server loaded them from


def adapter_archive(payload: EditPayload, base: BaseModelIdentity, threshold: float) -> bytes:
    from editors.adapter_io import TARGET_MODULE, deserialize_adapter, export_peft  # torch: loaded with the model

    edit = payload.edit
    adapter = deserialize_adapter(payload.adapter)
    described = {
        "edit": {
            "id": edit.id,
            "status": edit.status,
            "prompt": edit.prompt,
            "target": edit.target,
            "rephrases": edit.rephrases,
            "negatives": edit.negatives,
            "created_at": edit.created_at.isoformat(),
            "created_by": edit.created_by,
        },
        "base_model": {
            "name": base.name,
            "hub_id": base.hub_id,
            "fingerprint": edit.base_fingerprint,  # of the weights it was trained on (sha256 of the tensors)
            "dtype": base.dtype,
            "local_path_on_server": base.local_path,
            "edited_layer": adapter.layer,
            "edited_module": f"model.layers.{adapter.layer}.{TARGET_MODULE}",
        },
        "lora": {"rank": adapter.rank, "alpha": adapter.alpha, "scaling": adapter.scaling},
        "routing": {
            "threshold": threshold,
            "rule": ROUTING_RULE,
            "keys": [
                {"kind": key.kind, "dim": key.dim, "float32_le_base64": base64.b64encode(key.vector).decode()}
                for key in payload.keys
            ],
        },
    }
    buffer = io.BytesIO()
    with (
        tempfile.TemporaryDirectory(prefix="sola-peft-") as tmp,
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf,
    ):
        folder = Path(tmp) / edit.id
        export_peft(adapter, folder, base.hub_id or base.local_path or base.name)
        (folder / "sola_edit.json").write_text(json.dumps(described, indent=2, ensure_ascii=False))
        (folder / "README.md").write_text(readme(edit.id, edit.prompt, edit.target, base, adapter.layer, threshold))
        for file in sorted(folder.iterdir()):
            zf.write(file, f"{edit.id}/{file.name}")
    return buffer.getvalue()


def readme(edit_id: str, prompt: str, target: str, base: BaseModelIdentity, layer: int, threshold: float) -> str:
    source = base.hub_id or base.local_path or base.name
    return f"""# {edit_id}: one SoLA edit as a PEFT LoRA adapter

The edit: "{prompt}" -> "{target}". A rank-r LoRA on `model.layers.{layer}.mlp.down_proj` of {base.name}
(weights fingerprint in `sola_edit.json`; train and serve on exactly those weights, {base.dtype}).

**Read this first: the adapter alone changes every answer.** The SoLA service applies it only to the
questions its router sends to this edit (`sola_edit.json` -> `routing`, threshold {threshold}); every other
question gets the unedited model. Loaded with plain PEFT there is no router, so the adapter acts on every
token of every prompt, and unrelated questions come out wrong.

## With the router (what the service does)

Import the archive into a SoLA server (the edit's record, keys and adapter), or route yourself: compute the
query key as `sola_edit.json` -> `routing.rule` says, compare it with `routing.keys` (float32,
little-endian, base64), and enable the adapter only for queries that pass; `negatives` are questions the
operator ruled out.

## Without the router

Only for prompts that are this edit's question:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{source}", torch_dtype="{base.dtype}")
model = PeftModel.from_pretrained(base, "{edit_id}")  # this folder
```
"""
