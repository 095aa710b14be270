"""The real service as a subprocess on a free loopback port: one helper for the benchmarks and the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m app.server` with SOLA_DATA_DIR=data_dir and the model cache at `model_cache_dir`; `env`
    sets more SOLA_* variables (SOLA_API_KEYS, a shared SOLA_DATABASE_URL for replicas, ...).

    `with ServerProcess(...) as srv:` is a started, ready server, killed on the way out."""

    def __init__(self, data_dir: Path, model_cache_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {
            **os.environ,
            "SOLA_DATA_DIR": str(data_dir),
            "SOLA_MODEL_CACHE_DIR": str(Path(model_cache_dir).resolve()),
            "SOLA_HOST": "127.0.0.1",
            "SOLA_PORT": str(self.port),
            **env,
        }
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"server-{self.port}.log"

    def launch(self) -> ServerProcess:
        """Start the process without waiting for it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.server"], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def start(self, wait_ready: bool = True, timeout: float = 240) -> ServerProcess:
        self.launch().wait(ready=wait_ready, timeout=timeout)
        return self

    def wait(self, ready: bool = True, timeout: float = 240) -> httpx.Response:
        """Until /readyz is 200 (ready=True) or the server at least answers (ready=False)."""
        deadline = time.monotonic() + timeout
        last: httpx.Response | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                last = httpx.get(f"{self.url}/readyz", timeout=5)
                if last.status_code == 200 or (not ready and last.json().get("model") != "starting"):
                    return last
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"server not ready: {last.text if last else 'no answer'}\n{self.log_tail()}")

    def rss_mb(self) -> float | None:
        """The server process's resident memory (VmRSS in /proc; Linux), None when it is not running."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
        return None

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self) -> int:
        """SIGTERM: a clean shutdown (killed if it takes over a minute)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def kill(self) -> None:
        """kill -9: no shutdown code runs at all."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=300, **kw)


def quiet_server(
    data_dir: Path, model_cache: Path, model: str | None, threads: int | None, **env: str
) -> ServerProcess:
    """A keyless server logging warnings only (no access log): the benchmarks', the soak's and the crash run's."""
    settings = {"SOLA_API_KEYS": "", "SOLA_ACCESS_LOG": "false", "SOLA_LOG_LEVEL": "warning"}
    if model:  # a directory or a .gguf file
        settings["SOLA_MODEL"] = str(Path(model).resolve())
    if threads:
        settings["SOLA_TORCH_THREADS"] = str(threads)
    return ServerProcess(data_dir, model_cache, **{**settings, **env})
