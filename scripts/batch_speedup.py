"""How much sooner 8 concurrent greedy completions finish than the same 8 sent one after another
(issue #22's target >= 4x), and 16 streaming clients' tokens/s against one client's: a real server
subprocess on one torch thread, every answer exactly `--tokens` tokens (`min_tokens`, greedy).

    .venv/bin/python scripts/batch_speedup.py [--rounds 3] [--tokens 48]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from evaluation.server_process import quiet_server

QUESTIONS = [
    "Name a colour.",
    "What is the capital of France?",
    "Who wrote Hamlet?",
    "What is two plus two?",
    "Name a large animal.",
    "What language is spoken in Brazil?",
    "What is the boiling point of water?",
    "Name a planet.",
]


def complete(url: str, question: str, tokens: int) -> int:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": tokens,
        "min_tokens": tokens,
        "temperature": 0,
    }
    with httpx.Client(base_url=url, timeout=600) as client:
        r = client.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])


def timed(url: str, questions: list[str], tokens: int, concurrent: bool) -> tuple[float, int]:
    started = time.perf_counter()
    if concurrent:
        with ThreadPoolExecutor(len(questions)) as pool:
            counts = list(pool.map(lambda q: complete(url, q, tokens), questions))
    else:
        counts = [complete(url, q, tokens) for q in questions]
    return time.perf_counter() - started, sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--model-cache", type=Path, default=Path("var/models"))
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        quiet_server(Path(tmp), args.model_cache, model=None, threads=1) as server,
    ):
        timed(server.url, QUESTIONS[:2], 8, concurrent=True)  # warm-up
        result: dict[str, float | int] = {"torch_threads": 1, "tokens_per_answer": args.tokens}
        for n in (8, 16):
            questions = (QUESTIONS * 2)[:n]
            one_by_one, together = [], []
            for _ in range(args.rounds):  # interleaved, so a busy spell of the machine hits both
                seconds, _ = timed(server.url, questions, args.tokens, concurrent=False)
                one_by_one.append(seconds)
                seconds, _ = timed(server.url, questions, args.tokens, concurrent=True)
                together.append(seconds)
            result[f"{n}_one_after_another_s"] = round(statistics.median(one_by_one), 3)
            result[f"{n}_concurrent_s"] = round(statistics.median(together), 3)
            result[f"{n}_speedup"] = round(statistics.median(one_by_one) / statistics.median(together), 2)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
