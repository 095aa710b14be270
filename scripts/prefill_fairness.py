"""A short request's time to first token while a maximal legal prompt is prefilling, against its idle TTFT
(issue "no request can hurt another", target <= 3x). A real server subprocess on one torch thread.

The long prompt is the most this server takes: ~1,990 tokens (SOLA_MAX_PROMPT_TOKENS is 2048) in 3,980
characters (SOLA_MAX_PROMPT_CHARS is 4000); it is prefilled in stretches of SOLA_PREFILL_TOKENS between
decode steps, so the short request should wait about one stretch, not the whole prompt.

    .venv/bin/python scripts/prefill_fairness.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from evaluation.server_process import quiet_server

SHORT = {"model": "m", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4}
LONG = {"model": "m", "prompt": "x " * 1990, "max_tokens": 1, "temperature": 0}


def ttft(client: httpx.Client) -> float:
    """Seconds from sending the short request to its first content chunk."""
    started = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", json={**SHORT, "stream": True, "temperature": 0}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content":' in line and '"content":""' not in line:
                return time.perf_counter() - started
    raise RuntimeError("no content came back")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model-cache", type=Path, default=Path("var/models"))
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        quiet_server(Path(tmp), args.model_cache, model=None, threads=1) as server,
        httpx.Client(base_url=server.url, timeout=600) as client,
    ):
        for _ in range(2):  # warm-up
            ttft(client)
        idle = [ttft(client) for _ in range(args.rounds)]
        long_alone, during = [], []
        for _ in range(args.rounds):
            started = time.perf_counter()
            client.post("/v1/completions", json=LONG).raise_for_status()
            long_alone.append(time.perf_counter() - started)

        def send_long() -> None:
            with httpx.Client(base_url=server.url, timeout=600) as other:
                other.post("/v1/completions", json=LONG).raise_for_status()

        for _ in range(args.rounds):
            sender = threading.Thread(target=send_long)
            sender.start()
            time.sleep(0.2 * statistics.median(long_alone))  # the long prompt is well into its prefill
            during.append(ttft(client))
            sender.join()
        result = {
            "torch_threads": 1,
            "idle_ttft_s": statistics.median(idle),
            "long_prompt_alone_s": statistics.median(long_alone),
            "ttft_during_long_prefill_s": statistics.median(during),
            "ratio": statistics.median(during) / statistics.median(idle),
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
