"""Scale benchmark: a service whose database holds very many active edits (docs/benchmarks.md, "Scale").

    python scripts/scale_bench.py --edits 100000 --threads 1

Fills a SQLite database with synthetic edits of the real shapes (a rank-4 adapter for the edited layer,
serialised exactly as training does, and one chat and one raw key of the model's width, clustered like
real keys), then starts the service on it in a fresh process, twice: once on an empty database and once on
the full one. Reported per start: seconds from process start to ready (model load included) and resident
memory at ready; per active edit, the difference in memory divided by the number of edits; and the cost
of one replica sync poll with nothing new. With --replicas, two servers then start on the full database:
an edit made on one is timed until the other answers through it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from evaluation.synthetic import fill_synthetic_edits
from storage.db import make_db_engine, sqlite_url
from storage.migrate import upgrade


def start_once(url: str, cache: Path, threads: int, bank_dtype: str | None) -> dict[str, float]:
    """In this (fresh) process: start the service on `url` the way the server does, then measure a sync."""
    started = time.perf_counter()
    from app.metrics import Metrics
    from app.service import EditService
    from app.settings import Settings
    from app.worker import ModelWorker
    from storage.repository import Repository

    settings = Settings(
        data_dir=cache.parent,
        database_url=url,
        model_cache_dir=cache,
        torch_threads=threads,
        sync_interval=0,
        bank_dtype=bank_dtype,
    )
    db = make_db_engine(url)
    upgrade(db)
    svc = EditService(settings, Repository(db), ModelWorker(), Metrics())
    svc.load()
    ready = time.perf_counter() - started
    result = {"ready_s": ready, "rss_mb": rss_mb(), "active": float(len(svc.loaded_engine.active_edit_ids()))}
    idle = []
    for _ in range(20):
        t = time.perf_counter()
        svc._sync_activations()  # the poll a replica makes every interval (nothing new: nothing to revoke)
        idle.append(time.perf_counter() - t)
    result["sync_idle_ms"] = 1000 * float(np.median(idle))
    svc.worker.shutdown()
    return result


def replica_lag(url: str, workdir: Path, threads: int, repeats: int = 5) -> list[float]:
    """Two servers on one database: seconds from replica A's 201 for a new edit until replica B answers
    its question through it (B polled every 20 ms), once per repeat."""
    from evaluation.serving import BenchOptions, bench_server

    opts = BenchOptions(data_dir=Path("var"), threads=threads)
    env = {"SOLA_DATABASE_URL": url}
    a = bench_server(opts, _fresh(workdir / "replica-a"), **env).launch()
    b = bench_server(opts, _fresh(workdir / "replica-b"), **env).launch()
    lags = []
    try:
        a.wait(timeout=900)
        b.wait(timeout=900)
        with httpx.Client(timeout=120) as client:
            for i in range(repeats):
                prompt = f"Who is the head gardener of Quillhaven Abbey {i}?"
                created = client.post(f"{a.url}/edits", json={"prompt": prompt, "target": f"Orla Fenwick {i}"})
                created.raise_for_status()
                start, edit_id = time.perf_counter(), created.json()["id"]
                question = {"prompt": prompt, "max_new_tokens": 1, "chat": True}
                while True:
                    answer = client.post(f"{b.url}/generate", json=question)
                    if answer.json()["routed_edit_id"] == edit_id:
                        break
                    time.sleep(0.02)
                lags.append(time.perf_counter() - start)
                client.delete(f"{a.url}/edits/{edit_id}").raise_for_status()  # leave the database as it was
    finally:
        a.stop()
        b.stop()
    return lags


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=Path("bench-out/scale"))
    parser.add_argument("--cache", type=Path, default=Path("var/models"), help="the dequantized model cache")
    parser.add_argument("--bank-dtype", choices=["float16", "bfloat16", "model"], help="SOLA_BANK_DTYPE")
    parser.add_argument(
        "--stored-dtype",
        choices=["float16", "float32"],
        default="float16",
        help="adapter blobs as training stores them",
    )
    parser.add_argument("--replicas", action="store_true", help="also: two servers, edit on one, time to the other")
    parser.add_argument("--start-only", help=argparse.SUPPRESS)  # internal: one measured start on this URL
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.start_only:
        print(json.dumps(start_once(args.start_only, args.cache.resolve(), args.threads, args.bank_dtype)))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    empty, full = args.dir / "empty.db", args.dir / f"edits-{args.edits}-{args.stored_dtype}.db"
    for path, n in ((empty, 0), (full, args.edits)):
        if not path.exists():  # filled under another name first: an interrupted fill is never reused
            partial = path.with_suffix(".partial")
            for stale in args.dir.glob(partial.name + "*"):
                stale.unlink()
            fill_synthetic_edits(
                sqlite_url(partial), n, args.cache.resolve(), stored_dtype=getattr(torch, args.stored_dtype)
            )
            partial.rename(path)
    results = {}
    for name, path in (("empty", empty), ("full", full)):
        out = subprocess.run(
            [sys.executable, __file__, "--start-only", sqlite_url(path), "--threads", str(args.threads)]
            + (["--bank-dtype", args.bank_dtype] if args.bank_dtype else []),
            check=True,
            capture_output=True,
            text=True,
        )
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, results[name], file=sys.stderr)
    per_edit_kb = 1024 * (results["full"]["rss_mb"] - results["empty"]["rss_mb"]) / max(1, args.edits)
    if args.replicas:
        lags = replica_lag(sqlite_url(full), args.dir, args.threads)
        results["replica_lag_s"] = {"median": float(np.median(lags)), "max": max(lags), "runs": lags}
        print("replica lag", results["replica_lag_s"], file=sys.stderr)
    print(json.dumps({**results, "edits": args.edits, "rss_kb_per_edit": per_edit_kb}, indent=2))


if __name__ == "__main__":
    main()
