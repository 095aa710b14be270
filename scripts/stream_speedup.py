"""16 streaming clients' tokens/s against one client's (issue #22's target >= 6x): the HTTP section of `sola
bench` alone, as docs/benchmarks.md's serving table was made (real server subprocesses, one torch thread, every
answer exactly 64 tokens, greedy), on the server holding 1,004 edits and on the unedited one.

    .venv/bin/python scripts/stream_speedup.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import json

import torch

from evaluation.datasets import load_records
from evaluation.serving import BenchOptions, bench_http


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0, help="per client count")
    args = parser.parse_args()
    torch.set_num_threads(1)
    opts = BenchOptions(threads=1, http_clients=(1, 16), http_seconds=args.seconds)
    records = load_records(opts.dataset, "zsre", 16).records
    http = bench_http(opts, records)
    result: dict[str, object] = {"torch_threads": 1, "stream_tokens": http["stream_tokens"]}
    for name in ("edited", "unedited"):
        levels = http[name]["levels"]
        one = levels[0]["tokens_per_s"]
        result[name] = {
            "active_edits": http[name]["active_edits"],
            "tokens_per_s": {str(lv["clients"]): round(lv["tokens_per_s"], 1) for lv in levels},
            "x_one_client": {str(lv["clients"]): round(lv["tokens_per_s"] / one, 2) for lv in levels},
            "ttft_p50_ms": {str(lv["clients"]): round(lv["ttft_p50_ms"]) for lv in levels},
        }
    result["query_while_training"] = http["query_while_training"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
