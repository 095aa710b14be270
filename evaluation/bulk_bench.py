"""`sola bench --bulk N`: edits per second trained one at a time vs together (EditingEngine.train_edits) for
several batch sizes and torch thread counts, side by side in one run on the same records, and a query's latency
over HTTP while a bulk import trains on the server (one training slice at most, app/worker.py)."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.training import TrainingTimeout
from editors.types import EditSpec, EngineConfig
from evaluation.datasets import load_records
from evaluation.server_process import ServerProcess, quiet_server


@dataclass
class BulkBenchOptions:
    dataset: Path
    out_dir: Path = Path("bench-out")
    data_dir: Path = Path("var")
    model: str | None = None
    edits: int = 64  # records trained by every configuration
    batch_sizes: Sequence[int] = (1, 4, 16, 64)
    threads: Sequence[int] = (1, 2)
    http: bool = True  # also: query latency while a bulk import trains on a server
    queries: int = 20  # queries timed during the import (and as many before it, idle)
    extra: dict[str, Any] = field(default_factory=dict)


def _rate(engine: EditingEngine, specs: Sequence[EditSpec], batch: int | None) -> dict[str, Any]:
    """Train every spec (alone when batch is None, else batch_size=batch): edits/s, steps, each edit's seconds."""
    started = time.perf_counter()
    if batch is None:
        results: list[Any] = [engine.train_edit(s.prompt, s.target, s.rephrases) for s in specs]
    else:
        results = engine.train_edits(specs, batch)
    seconds = time.perf_counter() - started
    trained = [r for r in results if not isinstance(r, TrainingTimeout)]
    return {
        "batch": batch,
        "seconds": round(seconds, 2),
        "edits_per_second": round(len(specs) / seconds, 3),
        "median_edit_seconds": round(statistics.median(r.seconds for r in trained), 3) if trained else None,
        "mean_steps": round(statistics.mean(r.steps for r in trained), 2) if trained else None,
        "timeouts": len(results) - len(trained),
    }


def bench_training(opts: BulkBenchOptions, specs: Sequence[EditSpec]) -> list[dict[str, Any]]:
    host = ModelHost.load(opts.model, opts.data_dir)
    engine = EditingEngine(host, EngineConfig())
    rows = []
    for threads in opts.threads:
        torch.set_num_threads(threads)
        alone = _rate(engine, specs, None)
        print(f"threads {threads}: one at a time {alone['edits_per_second']} edits/s", file=sys.stderr, flush=True)
        rows.append({"threads": threads, **alone, "speedup": 1.0})
        for batch in opts.batch_sizes:
            run = _rate(engine, specs, batch)
            run["speedup"] = round(run["edits_per_second"] / alone["edits_per_second"], 2)
            print(f"threads {threads}: B={batch} {run['edits_per_second']} edits/s", file=sys.stderr, flush=True)
            rows.append({"threads": threads, **run})
    return rows


def bench_query_during_import(opts: BulkBenchOptions, specs: Sequence[EditSpec]) -> dict[str, Any]:
    """A keyless server (one torch thread): query latency idle, then while one POST /edits/batch trains."""
    threads = opts.threads[0]
    with tempfile.TemporaryDirectory(prefix="bulk-bench-") as data:
        server = quiet_server(Path(data), opts.data_dir / "models", opts.model, threads)
        return _query_during_import(server, opts, specs, threads)


def _query_during_import(
    server: ServerProcess, opts: BulkBenchOptions, specs: Sequence[EditSpec], threads: int
) -> dict[str, Any]:
    server.start()
    try:
        with (
            httpx.Client(base_url=server.url, timeout=600) as client,
            httpx.Client(base_url=server.url, timeout=3600) as bulk,
        ):
            ask = {"prompt": "What is 7 times 8?", "max_new_tokens": 4, "chat": True}

            def timed() -> float:
                started = time.perf_counter()
                client.post("/generate", json=ask).raise_for_status()
                return time.perf_counter() - started

            idle = [timed() for _ in range(opts.queries)]
            body = {"edits": [{"prompt": s.prompt, "target": s.target, "rephrases": list(s.rephrases)} for s in specs]}
            answer: list[httpx.Response] = []
            worker = threading.Thread(target=lambda: answer.append(bulk.post("/edits/batch", json=body)))
            started = time.perf_counter()
            worker.start()
            time.sleep(1.0)  # the batch is training
            during: list[float] = []
            while worker.is_alive() and len(during) < opts.queries:
                during.append(timed())
            worker.join()
            import_seconds = time.perf_counter() - started
            answer[0].raise_for_status()
            created = answer[0].json()["created"]
    finally:
        server.stop()
    return {
        "server_threads": threads,
        "import_edits": len(specs),
        "import_created": created,
        "import_seconds": round(import_seconds, 2),
        "import_edits_per_second": round(len(specs) / import_seconds, 3),
        "query_ms_idle_median": round(1000 * statistics.median(idle), 1),
        "query_ms_during_import_median": round(1000 * statistics.median(during), 1) if during else None,
        "query_ms_during_import_max": round(1000 * max(during), 1) if during else None,
        "queries_during_import": len(during),
    }


def run_bulk_bench(opts: BulkBenchOptions) -> dict[str, Any]:
    records = load_records(opts.dataset, "zsre", opts.edits).records
    specs = [EditSpec(r.prompt, r.target) for r in records]
    results: dict[str, Any] = {
        "dataset": str(opts.dataset),
        "edits": len(specs),
        "training": bench_training(opts, specs),
    }
    if opts.http:
        print("query latency during a bulk import", file=sys.stderr, flush=True)
        results["query_during_import"] = bench_query_during_import(opts, specs)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    out = opts.out_dir / "bulk.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"wrote {out}", file=sys.stderr)
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"{results['edits']} edits from {Path(results['dataset']).name}, each configuration on the same records",
        "",
        "| torch threads | batch | edits/s | x one at a time | mean steps | median edit s | timeouts |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["training"]:
        batch = "one at a time" if r["batch"] is None else str(r["batch"])
        lines.append(
            f"| {r['threads']} | {batch} | {r['edits_per_second']} | {r['speedup']} | {r['mean_steps']} | "
            f"{r['median_edit_seconds']} | {r['timeouts']} |"
        )
    q = results.get("query_during_import")
    if q:
        lines += [
            "",
            f"Query latency (4 tokens, server on {q['server_threads']} thread): idle median "
            f"{q['query_ms_idle_median']} ms; during a bulk import of {q['import_edits']} edits "
            f"({q['import_edits_per_second']} edits/s) median {q['query_ms_during_import_median']} ms, "
            f"max {q['query_ms_during_import_max']} ms over {q['queries_during_import']} queries",
        ]
    return "\n".join(lines)
