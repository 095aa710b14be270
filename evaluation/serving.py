"""`sola bench`: generation latency vs active edits, routing time vs keys, edit latency, HTTP throughput.

Every figure is measured in one run on this machine and written to <out>/bench.json and <out>/bench.png.
Generation latency compares the edited engine with an unedited one (a second engine with no edits)
on the same prompts, interleaved repetition by repetition so load drift hits both alike.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import torch
from tqdm import tqdm

from editors.adapter_io import serialize_adapter
from editors.batch import generate
from editors.engine import EditingEngine, key_kind
from editors.model_host import ModelHost
from editors.types import EngineConfig, PromptFormat, TrainedEdit
from evaluation import edit_metrics
from evaluation.datasets import BenchmarkRecord, load_records
from evaluation.server_process import ServerProcess, quiet_server
from routing.key_index import KeyIndex, normalise

DEFAULT_DATASET = Path("../shared/data/zsre/zsre_mend_train_1k.json")


@dataclass
class BenchOptions:
    out_dir: Path = Path("bench-out")
    data_dir: Path = Path("var")
    model: str | None = None
    dtype: str | None = None  # float32, bfloat16, float16 (None: float32 on the CPU)
    dataset: Path = DEFAULT_DATASET  # ZsRE-format records: real edits and their prompts
    edit_counts: Sequence[int] = (0, 100, 1_000, 10_000)
    real_edits: int = 1_000  # trained edits; active edits beyond this are random keys + random adapters
    routing_sizes: Sequence[int] = (1_000, 10_000, 100_000, 1_000_000)
    max_new_tokens: int = 16
    repeats: int = 5
    # Prompt format of the latency prompts (every run decodes exactly max_new_tokens, so both compare alike).
    prompt_format: PromptFormat = PromptFormat.RAW
    http: bool = True
    http_clients: Sequence[int] = (1, 4, 16)
    http_seconds: float = 30.0  # per concurrency level (16 clients x 64 tokens: several rounds)
    http_edits: int = 4  # edits created through the API before the load test
    stream_tokens: int = 64  # every streamed answer is exactly this long
    synthetic_edits: int = 1_000  # active edits of the edited server, besides the real ones
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    seed: int = 0

    @classmethod
    def make(cls, quick: bool = False, **overrides: Any) -> BenchOptions:
        """Full or quick defaults; overrides that are None keep the default (convenient for CLI options)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls.quick(**given) if quick else cls(**given)

    @classmethod
    def quick(cls, **overrides: Any) -> BenchOptions:
        """A smoke run of every section in a few minutes."""
        small = {
            "edit_counts": (0, 10, 100),
            "real_edits": 4,
            "routing_sizes": (1_000, 10_000),
            "max_new_tokens": 8,
            "repeats": 2,
            "http_clients": (1, 4),
            "http_seconds": 3.0,
            "http_edits": 1,
            "stream_tokens": 8,
            "synthetic_edits": 20,
        }
        return cls(**{**small, **overrides})


# ---- section 1: edits and generation latency ------------------------------------------------------------


@dataclass
class RealEdit:
    edit_id: str
    record: BenchmarkRecord
    keys: np.ndarray  # raw routing keys, one row per kind
    key_kinds: list[str]


@dataclass
class EditTimings:
    key: list[float] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    commit: list[float] = field(default_factory=list)
    activate: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)


class EditCommitter:
    """Stores each edit in a fresh SQLite database as the service does: its own row builder and repository."""

    def __init__(self, path: Path, host: ModelHost, layer: int):
        from storage.db import make_db_engine, sqlite_url
        from storage.migrate import upgrade
        from storage.repository import Repository

        self.db = make_db_engine(sqlite_url(path))
        upgrade(self.db)
        self.repo = Repository(self.db)
        self.host, self.layer = host, layer

    def commit(self, edit_id: str, record: BenchmarkRecord, trained: TrainedEdit) -> float:
        from storage.repository import stored_edit
        from wire.schemas import EditCreate

        body = EditCreate(prompt=record.prompt, target=record.target)
        new = stored_edit(edit_id, body, trained, self.host, self.layer, actor="bench")
        start = time.perf_counter()
        self.repo.create_edit(new)
        return time.perf_counter() - start

    def close(self) -> None:
        self.db.dispose()


def add_real_edits(
    engine: EditingEngine,
    records: Sequence[BenchmarkRecord],
    first: int,
    committer: EditCommitter,
    timings: EditTimings,
) -> list[RealEdit]:
    """Train each edit, commit its row, then activate it: the service's order of operations."""
    added: list[RealEdit] = []
    for i, record in enumerate(tqdm(records, desc="real edits", unit="edit", file=sys.stderr), start=first):
        edit_id = f"real{i:05d}"
        trained = engine.train_edit(record.prompt, record.target)
        timings.key.append(trained.key_seconds)
        timings.train.append(trained.train_seconds)
        timings.steps.append(float(trained.steps))
        timings.commit.append(committer.commit(edit_id, record, trained))
        start = time.perf_counter()
        engine.activate(edit_id, trained.adapter, trained.keys, trained.key_kinds, record.prompt, record.target)
        timings.activate.append(time.perf_counter() - start)
        added.append(RealEdit(edit_id, record, trained.keys, trained.key_kinds))
    return added


class RandomEdits:
    """Filler edits with adapters of the real shapes, random unit content keys, and a made-up subject that
    no real prompt mentions: they cost the router what real keys cost, and never fire on a real prompt."""

    def __init__(self, engine: EditingEngine, seed: int):
        self.engine = engine
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.formats = list(engine.routed.spaces)
        self.count = 0

    def add(self, n: int) -> None:
        bank, config = self.engine.bank, self.engine.config
        for _ in tqdm(range(n), desc="random edits", unit="edit", file=sys.stderr, leave=False):
            lora_A = torch.randn(config.rank, bank.in_features, generator=self.gen) * 0.01
            lora_B = torch.randn(bank.out_features, config.rank, generator=self.gen) * 0.01
            adapter = serialize_adapter(
                lora_A, lora_B, layer=self.engine.layer, alpha=config.alpha, fingerprint=self.engine.host.fingerprint
            )
            keys = self.rng.standard_normal((len(self.formats), self.engine.host.hidden_size)).astype(np.float32)
            kinds = [key_kind(prompt_format, None) for prompt_format in self.formats]
            prompt = f"Who founded Qzx{self.count}v Wrk{self.count}?"
            self.engine.activate(f"rand{self.count:06d}", adapter, keys, kinds, prompt, "Jo Random")
            self.count += 1


def timed_generate(
    engine: EditingEngine, prompts: Sequence[str], max_new_tokens: int, prompt_format: PromptFormat
) -> dict[str, Any]:
    """Exactly `max_new_tokens` decode steps for every row (stop tokens held back): an edited answer and
    the unedited one often differ in length, and latency must compare equal work."""
    start = time.perf_counter()
    gens = generate(engine, prompts, max_new_tokens, prompt_format, min_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps": max_new_tokens, "routed": [g.routed_edit_id for g in gens]}


def latency_point(
    edited: EditingEngine,
    unedited: EditingEngine,
    prompts: Sequence[str],
    expected: Sequence[str | None],
    opts: BenchOptions,
) -> dict[str, Any]:
    """Interleaved edited/unedited generation of the same batch; medians of wall time and time per step."""
    for engine in (edited, unedited):  # warm-up
        timed_generate(engine, prompts, opts.max_new_tokens, opts.prompt_format)
    runs: dict[str, list[dict[str, Any]]] = {"edited": [], "unedited": []}
    for _ in range(opts.repeats):
        runs["edited"].append(timed_generate(edited, prompts, opts.max_new_tokens, opts.prompt_format))
        runs["unedited"].append(timed_generate(unedited, prompts, opts.max_new_tokens, opts.prompt_format))
    point: dict[str, Any] = {"batch": len(prompts)}
    for name, rs in runs.items():
        point[f"{name}_ms"] = 1000 * (edit_metrics.median([r["seconds"] for r in rs]) or 0.0)
        point[f"{name}_ms_per_step"] = 1000 * (edit_metrics.median([r["seconds"] / r["steps"] for r in rs]) or 0.0)
        point[f"{name}_steps"] = edit_metrics.median([float(r["steps"]) for r in rs])
    point["ratio"] = point["edited_ms"] / point["unedited_ms"]
    point["ratio_per_step"] = point["edited_ms_per_step"] / point["unedited_ms_per_step"]
    routed = runs["edited"][-1]["routed"]
    point["rows_routed_as_expected"] = sum(int(r == e) for r, e in zip(routed, expected, strict=True)) / len(routed)
    point["distinct_edits"] = len({r for r in routed if r is not None})
    return point


def bench_generation(opts: BenchOptions, records: Sequence[BenchmarkRecord]) -> tuple[dict[str, Any], EditTimings]:
    """Latency at each active-edit count (ascending): real edits first, random filler beyond the cap."""
    host = ModelHost.load(opts.model, opts.data_dir, dtype=opts.dtype)
    base_host = ModelHost.load(
        opts.model, opts.data_dir, dtype=opts.dtype
    )  # a second copy of the weights: the unedited engine
    edited, unedited = EditingEngine(host, EngineConfig()), EditingEngine(base_host, EngineConfig())
    timings = EditTimings()
    real: list[RealEdit] = []
    filler = RandomEdits(edited, opts.seed)
    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        committer = EditCommitter(Path(tmp) / "bench.db", host, edited.layer)
        try:
            for count in sorted(opts.edit_counts):
                want_real = min(count, opts.real_edits, len(records))
                if want_real > len(real):
                    added = add_real_edits(edited, records[len(real) : want_real], len(real), committer, timings)
                    real += added
                filler.add(count - len(edited.active_edit_ids()))
                points += latency_points(edited, unedited, real, records, opts)
        finally:
            committer.close()
    summary = {
        "points": points,
        "real_edits": len(real),
        "max_new_tokens": opts.max_new_tokens,
        "prompt_format": opts.prompt_format,
        "model": host.name,
        "dtype": str(host.info["dtype"]),
        "hidden_size": host.hidden_size,
        "layer": edited.layer,
    }
    return summary, timings


def latency_points(
    edited: EditingEngine,
    unedited: EditingEngine,
    real: Sequence[RealEdit],
    records: Sequence[BenchmarkRecord],
    opts: BenchOptions,
) -> list[dict[str, Any]]:
    """Batch 1 (one real edit's prompt) and batch 8 (each row a different real edit, cycling if fewer)."""
    cases: list[tuple[list[str], list[str | None]]]
    if real:
        batches = [real[:1], [real[i % len(real)] for i in range(8)]]
        cases = [([e.record.prompt for e in b], [e.edit_id for e in b]) for b in batches]
    else:  # no edits yet: the same prompts, nothing to route to
        cases = [([records[0].prompt], [None]), ([r.prompt for r in records[:8]], [None] * 8)]
    points = []
    for prompts, expected in cases:
        point = latency_point(edited, unedited, prompts, expected, opts)
        point["active_edits"] = len(edited.active_edit_ids())
        point["keys"] = edited.num_keys()
        points.append(point)
        print(
            f"  {point['active_edits']:>6} edits, batch {point['batch']}: edited {point['edited_ms']:.0f} ms, "
            f"unedited {point['unedited_ms']:.0f} ms (x{point['ratio']:.2f})",
            file=sys.stderr,
        )
    return points


# ---- section 2: routing time vs number of keys ----------------------------------------------------------


def bench_routing(opts: BenchOptions, dim: int, threshold: float = 0.40, k: int = 8) -> list[dict[str, Any]]:
    """Routing time per request through the router's KeyIndex as keys grow: exact ("flat") beside the
    default ("auto": IVF from `approximate_from` keys on), and the approximate index's recall.

    Keys are synthetic but shaped like real ones, which cluster (one template, one topic): each is drawn
    around one of 2,000 random topic directions (cosine ~0.7 to it). Each query is a stored key moved as far
    as a paraphrase moves from its edit's key (cosine ~0.9). Recall@1: the default index's best key is the
    exact best; recall@k: the share of the exact top-k keys it also returns. Keys are added 1,000 per
    pseudo-edit (both indexes give the same keys the same ids).
    """
    rng = np.random.default_rng(opts.seed)
    topics = normalise(rng.standard_normal((2_000, dim)))
    exact, default = KeyIndex(dim, kind="flat"), KeyIndex(dim)
    subject = frozenset({"acme"})

    def shaped_keys(n: int) -> np.ndarray:
        # topic + noise of 1x its norm per dimension: cosine to the topic ~0.7
        picked = topics[rng.integers(0, len(topics), n)]
        return normalise(picked + rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim))

    group, points = 1_000, []
    stored: list[np.ndarray] = []
    for size in sorted(opts.routing_sizes):
        with tqdm(total=size - len(exact), desc=f"keys to {size:,}", unit="key", file=sys.stderr, leave=False) as bar:
            while len(exact) < size:
                n = min(group, size - len(exact))
                keys = shaped_keys(n)
                stored.append(keys[:1])  # a few stored keys to move into queries
                name, seq = f"g{len(exact)}", len(exact)
                for index in (exact, default):
                    index.add(name, keys, [subject] * n, seq=seq)
                bar.update(n)
        picks = np.concatenate(stored)[rng.integers(0, len(stored), 256)]
        queries = normalise(picks + 0.5 * rng.standard_normal(picks.shape).astype(np.float32) / np.sqrt(dim))
        words = [subject] * len(queries)
        point: dict[str, Any] = {"keys": size, "approximate": default.approximate, "index_mb": default.nbytes / 2**20}
        repeats = max(5, min(200, int(2e7 / size)))  # fewer repeats where an exact search is slow
        for name, index in (("flat", exact), ("default", default)):
            single = _search_times(index, queries, words, threshold, k, batch=1, repeats=repeats)
            batch = _search_times(index, queries, words, threshold, k, batch=8, repeats=max(3, repeats // 4))
            point[f"{name}_batch1_ms"] = 1000 * (edit_metrics.median(single) or 0.0)
            point[f"{name}_batch8_ms_per_query"] = 1000 * (edit_metrics.median(batch) or 0.0) / 8
        found, truth = default.nearest_keys(queries, k), exact.nearest_keys(queries, k)
        point["recall_at_1"] = float(np.mean(found[:, 0] == truth[:, 0]))
        point[f"recall_at_{k}"] = float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]))
        points.append(point)
        print(
            f"  {size:>9,} keys: flat {point['flat_batch1_ms']:.3f} ms, default {point['default_batch1_ms']:.3f} ms"
            f" ({'IVF' if default.approximate else 'flat'}), recall@1 {point['recall_at_1']:.3f}",
            file=sys.stderr,
        )
    return points


def _search_times(
    index: KeyIndex,
    queries: np.ndarray,
    words: list[frozenset[str]],
    threshold: float,
    k: int,
    batch: int,
    repeats: int,
) -> list[float]:
    """Seconds per search of `batch` queries, cycling through `queries`."""
    times = []
    for r in range(repeats):
        rows = [(r * batch + j) % len(queries) for j in range(batch)]
        times.append(_timed(functools.partial(index.search, queries[rows], [words[i] for i in rows], threshold, k)))
    return times


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- section 3: HTTP throughput -------------------------------------------------------------------------


def bench_server(opts: BenchOptions, data_dir: Path, **env: str) -> ServerProcess:
    """A keyless, quiet server for the benchmarks, with the bench's model and thread settings."""
    dtype = {"SOLA_DTYPE": opts.dtype} if opts.dtype else {}
    return quiet_server(data_dir, Path(opts.data_dir) / "models", opts.model, opts.threads, **{**dtype, **env})


@dataclass
class StreamStats:
    tokens: int = 0
    requests: int = 0
    errors: int = 0
    ttft: list[float] = field(default_factory=list)  # seconds from request to the first text
    gaps: list[float] = field(default_factory=list)  # seconds between consecutive text chunks


async def _stream_once(http: httpx.AsyncClient, url: str, prompt: str, tokens: int, stats: StreamStats | None) -> None:
    """One streamed chat completion of exactly `tokens` tokens (min_tokens holds the end back)."""
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "min_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    last: float | None = None
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            if stats is not None:
                stats.errors += 1
            await response.aread()
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            now = time.perf_counter()
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                if stats is not None:
                    (stats.ttft if last is None else stats.gaps).append(now - (start if last is None else last))
                last = now
            if chunk.get("usage") and stats is not None:
                stats.tokens += chunk["usage"]["completion_tokens"]
                stats.requests += 1


async def _stream_level(url: str, prompts: Sequence[str], clients: int, seconds: float, tokens: int) -> dict[str, Any]:
    """`clients` concurrent loops of streamed completions for `seconds`, after one warm-up request each."""
    stats = StreamStats()

    async def client(worker: int, http: httpx.AsyncClient, deadline: float | None) -> None:
        i = worker
        while True:
            await _stream_once(http, url, prompts[i % len(prompts)], tokens, stats if deadline else None)
            i += clients
            if deadline is None or time.perf_counter() >= deadline:
                return

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(w, http, None) for w in range(clients)))
        start = time.perf_counter()
        await asyncio.gather(*(client(w, http, start + seconds) for w in range(clients)))
        wall = time.perf_counter() - start

    def ms(values: list[float], q: float) -> float:
        return 1000 * (edit_metrics.percentile(values, q) or 0.0)

    return {
        "clients": clients,
        "requests": stats.requests,
        "errors": stats.errors,
        "tokens_per_s": stats.tokens / wall,
        "ttft_p50_ms": ms(stats.ttft, 50),
        "ttft_p99_ms": ms(stats.ttft, 99),
        "gap_p50_ms": ms(stats.gaps, 50),
        "gap_p99_ms": ms(stats.gaps, 99),
    }


async def _query_ms(url: str, n: int) -> list[float]:
    """n sequential 4-token chat queries: their latencies."""
    out = []
    async with httpx.AsyncClient(timeout=600) as http:
        for i in range(n):
            body = {
                "messages": [{"role": "user", "content": f"Name a colour ({i})."}],
                "max_tokens": 4,
                "min_tokens": 4,
            }
            start = time.perf_counter()
            (await http.post(f"{url}/v1/chat/completions", json={**body, "temperature": 0})).raise_for_status()
            out.append(1000 * (time.perf_counter() - start))
    return out


async def _query_during_training(url: str, records: Sequence[BenchmarkRecord]) -> tuple[list[float], list[float]]:
    """4-token queries sent one after another while each edit trains: their latencies, and the edits'."""
    latencies: list[float] = []
    edits: list[float] = []
    async with httpx.AsyncClient(timeout=600) as http:
        for record in records:
            start = time.perf_counter()
            body = {"prompt": record.prompt, "target": record.target}
            edit = asyncio.create_task(http.post(f"{url}/edits", json=body))
            await asyncio.sleep(0.05)  # the edit reaches the model thread first
            while not edit.done():
                latencies += await _query_ms(url, 1)
            (await edit).raise_for_status()
            edits.append(1000 * (time.perf_counter() - start))
    return latencies, edits


def bench_http(opts: BenchOptions, records: Sequence[BenchmarkRecord]) -> dict[str, Any]:
    """Streaming throughput of /v1/chat/completions on a real server subprocess, with and without edits.

    Tokens per second at each client count (every answer exactly `stream_tokens` long), time to first token
    and gaps between tokens; the same on a server without edits; then a 4-token query's latency idle and
    while an edit trains (the model thread interleaves training steps with decode steps)."""
    if importlib.util.find_spec("app.server") is None:
        return {"skipped": "app.server is not available"}
    from evaluation.synthetic import fill_synthetic_edits
    from storage.db import sqlite_url

    edited = records[: opts.http_edits]
    # Half the prompts are the real edits' questions, half unrelated (the next records' questions).
    prompts = [r.prompt for r in edited] + [r.prompt for r in records[opts.http_edits : 2 * opts.http_edits]]
    out: dict[str, Any] = {"stream_tokens": opts.stream_tokens, "real_edits": len(edited)}
    for name, synthetic in (("edited", opts.synthetic_edits), ("unedited", 0)):
        with tempfile.TemporaryDirectory() as tmp:
            url = sqlite_url(Path(tmp) / "sola.db")
            if synthetic:
                fill_synthetic_edits(url, synthetic, Path(opts.data_dir).resolve() / "models")
            server = bench_server(opts, Path(tmp), SOLA_DATABASE_URL=url)
            try:
                server.start(timeout=600)
                for r in edited if synthetic else []:  # a few real edits so that some requests are routed
                    body = {"prompt": r.prompt, "target": r.target}
                    httpx.post(f"{server.url}/edits", json=body, timeout=600).raise_for_status()
                levels = []
                for clients in opts.http_clients:
                    levels.append(
                        asyncio.run(_stream_level(server.url, prompts, clients, opts.http_seconds, opts.stream_tokens))
                    )
                    level = levels[-1]
                    print(
                        f"  {name} {clients:>2} clients: {level['tokens_per_s']:.1f} tok/s, "
                        f"TTFT p50 {level['ttft_p50_ms']:.0f} ms, gap p50 {level['gap_p50_ms']:.0f} ms",
                        file=sys.stderr,
                    )
                out[name] = {"active_edits": synthetic + (len(edited) if synthetic else 0), "levels": levels}
                if not synthetic:
                    idle = asyncio.run(_query_ms(server.url, 4 * opts.repeats))
                    training, edit_ms = asyncio.run(_query_during_training(server.url, records[-opts.repeats :]))
                    out["query_while_training"] = {
                        "idle_ms_median": edit_metrics.median(idle),
                        "training_ms_median": edit_metrics.median(training),
                        "queries_during_training": len(training),
                        "edit_ms": edit_metrics.median(edit_ms),
                    }
            finally:
                server.stop()
    return out


# ---- report ---------------------------------------------------------------------------------------------


def summarise_edits(t: EditTimings) -> dict[str, Any]:
    parts = {"key": t.key, "train": t.train, "commit": t.commit, "activate": t.activate}
    out: dict[str, Any] = {"n": len(t.key), "steps_median": edit_metrics.median(t.steps)}
    for name, values in parts.items():
        out[f"{name}_ms_median"] = 1000 * v if (v := edit_metrics.median(values)) is not None else None
        out[f"{name}_ms_p90"] = 1000 * v if (v := edit_metrics.percentile(values, 90)) is not None else None
    return out


def environment(opts: BenchOptions) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_at_start": os.getloadavg()[0],
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(opts).items()},
    }


def print_tables(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    g = results["generation"]
    fmt = g["prompt_format"]
    gen = Table(title=f"Generation latency, edited vs unedited (up to {g['max_new_tokens']} new tokens, {fmt} prompts)")
    for col in (
        "active edits",
        "batch",
        "edited ms",
        "unedited ms",
        "ratio",
        "steps e/u",
        "ms/step ratio",
        "routed ok",
    ):
        gen.add_column(col, justify="right")
    for p in results["generation"]["points"]:
        gen.add_row(
            f"{p['active_edits']:,}",
            str(p["batch"]),
            f"{p['edited_ms']:.0f}",
            f"{p['unedited_ms']:.0f}",
            f"{p['ratio']:.2f}",
            f"{p['edited_steps']:.0f}/{p['unedited_steps']:.0f}",
            f"{p['ratio_per_step']:.2f}",
            f"{100 * p['rows_routed_as_expected']:.0f}%",
        )
    console.print(gen)

    routing = Table(title="Routing: KeyIndex search time vs keys (exact scan vs the default index)")
    for col in ("keys", "default is", "flat ms", "default ms", "default b8 ms/q", "recall@1", "recall@8", "MB"):
        routing.add_column(col, justify="right")
    for p in results["routing"]:
        routing.add_row(
            f"{p['keys']:,}",
            "IVF" if p["approximate"] else "flat",
            f"{p['flat_batch1_ms']:.3f}",
            f"{p['default_batch1_ms']:.3f}",
            f"{p['default_batch8_ms_per_query']:.3f}",
            f"{p['recall_at_1']:.3f}",
            f"{p['recall_at_8']:.3f}",
            f"{p['index_mb']:.0f}",
        )
    console.print(routing)

    e = results["edit_latency"]
    edits = Table(title=f"Edit latency ({e['n']} real edits, median steps {e['steps_median']})")
    for col in ("phase", "median ms", "p90 ms"):
        edits.add_column(col, justify="right")
    for phase in ("key", "train", "commit", "activate"):
        median_ms, p90_ms = e[f"{phase}_ms_median"], e[f"{phase}_ms_p90"]
        edits.add_row(phase, f"{median_ms:.1f}" if median_ms is not None else "-", f"{p90_ms:.1f}" if p90_ms else "-")
    console.print(edits)

    http = results.get("http", {})
    if "edited" in http:
        table = Table(title=f"Streaming /v1/chat/completions ({http['stream_tokens']}-token answers)")
        for col in (
            "server",
            "active edits",
            "clients",
            "tok/s",
            "x 1 client",
            "TTFT p50",
            "TTFT p99",
            "gap p50",
            "gap p99",
        ):
            table.add_column(col, justify="right")
        for name in ("edited", "unedited"):
            run = http[name]
            one = run["levels"][0]["tokens_per_s"] or 1.0
            for lv in run["levels"]:
                table.add_row(
                    name,
                    str(run["active_edits"]),
                    str(lv["clients"]),
                    f"{lv['tokens_per_s']:.1f}",
                    f"{lv['tokens_per_s'] / one:.2f}",
                    *(f"{lv[k]:.0f} ms" for k in ("ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms")),
                )
        console.print(table)
        q = http["query_while_training"]
        console.print(
            f"4-token query: {q['idle_ms_median']:.0f} ms idle, {q['training_ms_median']:.0f} ms while an edit trains "
            f"({q['queries_during_training']} queries while edits trained, {q['edit_ms']:.0f} ms per edit median)"
        )
    elif http:
        console.print(f"HTTP: skipped ({http.get('skipped')})")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    ax = axes[0][0]
    points = results["generation"]["points"]
    for batch, style in ((1, "o"), (8, "s")):
        rows = [p for p in points if p["batch"] == batch]
        xs = [max(p["active_edits"], 1) for p in rows]
        ax.plot(xs, [p["edited_ms"] for p in rows], f"-{style}", label=f"edited, batch {batch}")
        ax.plot(xs, [p["unedited_ms"] for p in rows], f"--{style}", label=f"unedited, batch {batch}")
    ax.set(xscale="log", xlabel="active edits (0 drawn at 1)", ylabel="ms per generate call", title="Generation")
    ax.legend()

    ax = axes[0][1]
    routing = results["routing"]
    ax.plot([p["keys"] for p in routing], [p["flat_batch1_ms"] for p in routing], "-o", label="exact scan")
    ax.plot([p["keys"] for p in routing], [p["default_batch1_ms"] for p in routing], "-s", label="default index")
    ax.set(xscale="log", yscale="log", xlabel="keys in index", ylabel="ms per query", title="Routing (flat index)")
    ax.legend()

    ax = axes[1][0]
    e = results["edit_latency"]
    phases = ["key", "train", "commit", "activate"]
    ax.bar(phases, [e[f"{p}_ms_median"] or 0.0 for p in phases])
    ax.set(yscale="log", ylabel="median ms", title=f"Edit latency split ({e['n']} edits)")

    ax = axes[1][1]
    http = results.get("http", {})
    if "edited" in http:
        for name, style in (("edited", "-o"), ("unedited", "--s")):
            levels = http[name]["levels"]
            label = f"{name} ({http[name]['active_edits']} edits)"
            ax.plot([lv["clients"] for lv in levels], [lv["tokens_per_s"] for lv in levels], style, label=label)
        ax.set(xlabel="concurrent streaming clients", ylabel="tokens / s", title="Streaming /v1/chat/completions")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "HTTP not measured", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Run every section, print rich tables, write <out>/bench.json and <out>/bench.png; returns the results."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
        faiss.omp_set_num_threads(opts.threads)  # the routing section's searches and k-means
    needed = max(opts.real_edits, opts.http_edits * 2 + 4, 8)
    records = load_records(opts.dataset, "zsre", needed).records
    started = time.perf_counter()
    results: dict[str, Any] = {"environment": environment(opts)}
    print("generation latency", file=sys.stderr)
    results["generation"], timings = bench_generation(opts, records)
    results["edit_latency"] = summarise_edits(timings)
    gc.collect()  # drop both engines before the big routing index and the server
    print("routing", file=sys.stderr)
    results["routing"] = bench_routing(opts, dim=results["generation"]["hidden_size"])
    gc.collect()
    if opts.http:
        print("HTTP", file=sys.stderr)
        results["http"] = bench_http(opts, records)
    results["seconds"] = time.perf_counter() - started
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    (opts.out_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, opts.out_dir / "bench.png")
    print_tables(results)
    print(f"wrote {opts.out_dir / 'bench.json'} and {opts.out_dir / 'bench.png'}", file=sys.stderr)
    return results
