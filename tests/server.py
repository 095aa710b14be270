"""The real service as a subprocess for end-to-end tests over HTTP (evaluation/server_process.py), with
the tests' API keys and model cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from evaluation.server_process import REPO, ServerProcess, free_port

__all__ = ["ADMIN", "ADMIN2", "API_KEYS", "MODEL_CACHE", "READER", "REPO", "Server", "free_port"]

# One dequantized model cache for every server in the session (and across runs): the first start
# converts the bundled GGUF (~30 s), later ones load safetensors in about a second.
MODEL_CACHE = Path(os.environ.get("SOLA_TEST_MODEL_CACHE", REPO / "var" / "models"))

ADMIN = "alice-secret-0123456789"
ADMIN2 = "bob-secret-0123456789"
READER = "rita-secret-0123456789"
API_KEYS = f"alice:{ADMIN}:admin,bob:{ADMIN2}:admin,rita:{READER}:reader"


class Server(ServerProcess):
    def __init__(self, data_dir: Path, **env: str) -> None:
        defaults = {
            "SOLA_API_KEYS": API_KEYS,
            # One torch thread per server: no oversubscription when tests share 2 cores with other work.
            "SOLA_TORCH_THREADS": os.environ.get("SOLA_TEST_TORCH_THREADS", "1"),
        }
        super().__init__(data_dir, MODEL_CACHE, **{**defaults, **env})

    def start(self, wait_ready: bool = True, timeout: float = 240) -> Server:
        super().start(wait_ready, timeout)
        return self

    def __enter__(self) -> Server:
        return self.start()

    def restart(self) -> Server:
        self.stop()
        return self.start()

    def client(self, token: str | None = ADMIN, **kw: Any) -> httpx.Client:
        return super().client(token, **kw)
