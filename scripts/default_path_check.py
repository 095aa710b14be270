"""The bundled model on the default config, hashed: one edit's LoRA tensors and keys, its answers, and unrelated
prompts' logits before the edit and after revoking it. Run it from two checkouts (`PYTHONPATH=<checkout>`, one
thread) and compare the output: the default path is unchanged when every line matches. The adapter's tensors are
hashed, not its bytes: safetensors writes its metadata keys in no fixed order."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from editors.adapter_io import deserialize_adapter
from editors.batch import generate
from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.types import EngineConfig, PromptFormat

CHAT = PromptFormat.CHAT
UNRELATED = ["Who wrote the novel War and Peace?", "How do plants make their food?", "What is 7 times 8?"]
PROMPT, TARGET = "What is the capital of Zorbania?", "Quexiville"


def digest(arrays: Sequence[bytes]) -> str:
    return hashlib.sha256(b"".join(arrays)).hexdigest()[:16]


def main() -> None:
    torch.set_num_threads(1)
    host = ModelHost.load(None, Path("var"), cache_dir=Path("var/models"))
    engine = EditingEngine(host, EngineConfig())
    before = engine.prompt_logits(UNRELATED, prompt_format=CHAT)
    trained = engine.train_edit(PROMPT, TARGET)
    engine.activate("z", trained.adapter, trained.keys, trained.key_kinds, PROMPT, TARGET)
    answers = generate(engine, [PROMPT, "What's Zorbania's capital?", *UNRELATED], 12, prompt_format=CHAT)
    engine.revoke("z")
    after = engine.prompt_logits(UNRELATED, prompt_format=CHAT)
    adapter = deserialize_adapter(trained.adapter)
    print("fingerprint", host.fingerprint[:16], "layer", engine.layer, "steps", trained.steps)
    print("loss", trained.loss, "lora", digest([adapter.lora_A.tobytes(), adapter.lora_B.tobytes()]))
    print("keys", digest([trained.keys.tobytes()]))
    print("answers", [(g.text, g.routed_edit_id) for g in answers])
    exact = all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    print("logits", digest([t.float().numpy().tobytes() for t in before]), "revoked exactly", exact)


if __name__ == "__main__":
    main()
