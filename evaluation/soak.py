"""`sola bench --soak-seconds S`: a real server under mixed load for S seconds, looking for what breaks.

N clients stream chat completions (some questions hit edits, some do not) while one writer creates edits and
revokes and restores them in turn; mixed in are poisoned sampling values (they must answer 200) and oversized
prompts (they must answer 4xx). Reported: 5xx answers, hung streams (no [DONE] within the timeout), revoke
round trips, time to first token while a revoke is in flight and otherwise, requests/s, and the server's
resident memory at the start and the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from evaluation.facts import FACTS, UNRELATED, Fact
from evaluation.server_process import ServerProcess, quiet_server

POISON: dict[str, dict[str, Any]] = {
    "poison_temperature": {"temperature": 1e-40},
    "poison_top_p": {"temperature": 1.0, "top_p": 1e-300},
    "poison_seed": {"temperature": 1.0, "seed": 2**64 + 5},
    "poison_all": {"temperature": 1e-40, "top_p": 1e-300, "seed": 2**64 + 5},
}


@dataclass
class SoakOptions:
    seconds: float
    clients: int = 16
    data_dir: Path = Path("var")  # the model cache is DIR/models
    model: str | None = None
    threads: int = 1  # the server's torch threads (SOLA_TORCH_THREADS), always set explicitly
    database_url: str | None = None  # default: SQLite in a temporary folder
    max_tokens: int = 24
    stream_timeout: float = 120.0  # a stream without [DONE] after this long is hung
    poison_share: float = 0.1  # of client requests
    oversize_share: float = 0.05
    first_edits: int = 3  # edits made before the load starts (the writer revokes and restores them from then)
    create_every: int = 4  # during the load, one more edit every this many revoke/restore cycles
    # the server's prompt limits, set explicitly so that the oversized requests are sized against them
    max_prompt_chars: int = 4000
    max_prompt_tokens: int = 2048
    max_body_bytes: int = 256 * 1024
    seed: int = 0


@dataclass
class Planned:
    kind: str  # "stream", a POISON key, or "oversize_*"
    path: str
    body: dict[str, Any] | bytes
    stream: bool
    want_4xx: bool = False


@dataclass
class SoakLog:
    statuses: Counter[str] = field(default_factory=Counter)  # "kind status" -> count
    server_errors: list[dict[str, Any]] = field(default_factory=list)  # any 5xx
    unexpected: list[dict[str, Any]] = field(default_factory=list)  # a wrong status below 500
    transport_errors: list[dict[str, Any]] = field(default_factory=list)
    hung: list[dict[str, Any]] = field(default_factory=list)  # no [DONE] within the stream timeout
    no_done: list[dict[str, Any]] = field(default_factory=list)  # the stream ended without [DONE]
    ttft: list[tuple[float, float]] = field(default_factory=list)  # (sent, first content) perf_counter
    revokes: list[tuple[float, float]] = field(default_factory=list)  # (sent, answered) of each DELETE
    restores: int = 0
    edits_created: int = 0
    stale_routes: list[dict[str, Any]] = field(default_factory=list)  # a revoked edit still routed
    unrouted_restores: list[dict[str, Any]] = field(default_factory=list)  # a restored edit not routed
    client_requests: int = 0
    completion_tokens: int = 0

    def answer(self, kind: str, status: int, text: str, ok: bool) -> None:
        self.statuses[f"{kind} {status}"] += 1
        if status >= 500:
            self.server_errors.append({"kind": kind, "status": status, "body": text[:500]})
        elif not ok:
            self.unexpected.append({"kind": kind, "status": status, "body": text[:500]})


# ---- what the clients send --------------------------------------------------------------------------------


def chat_body(question: str, opts: SoakOptions, stream: bool, **sampling: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": question}], "max_tokens": opts.max_tokens}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body | sampling


def oversized(kind: str, opts: SoakOptions) -> Planned:
    """A request over one of the server's limits: characters, tokens (under the character limit), body bytes."""
    # "0," is two tokens: a prompt of them has about one token a character, so it can pass the character limit
    many_tokens = "0," * min(opts.max_prompt_chars // 2, opts.max_prompt_tokens)
    chat = "/v1/chat/completions"
    if kind == "oversize_chars":
        return Planned(kind, chat, chat_body("x" * (opts.max_prompt_chars + 1), opts, True), True, want_4xx=True)
    if kind == "oversize_tokens":
        return Planned(kind, chat, chat_body(many_tokens, opts, True), True, want_4xx=True)
    if kind == "oversize_completion":
        body = {"prompt": many_tokens, "max_tokens": opts.max_tokens}
        return Planned(kind, "/v1/completions", body, False, want_4xx=True)
    big = json.dumps(chat_body("y" * (opts.max_body_bytes + 1), opts, False)).encode()
    return Planned("oversize_body", chat, big, False, want_4xx=True)


OVERSIZED = ("oversize_chars", "oversize_tokens", "oversize_completion", "oversize_body")


def plan(rng: random.Random, questions: list[str], opts: SoakOptions) -> Planned:
    roll = rng.random()
    if roll < opts.oversize_share:
        return oversized(rng.choice(OVERSIZED), opts)
    if roll < opts.oversize_share + opts.poison_share:
        kind = rng.choice(sorted(POISON))
        stream = kind != "poison_seed"  # one answered whole, the others streamed
        body = chat_body(rng.choice(questions), opts, stream, **POISON[kind])
        return Planned(kind, "/v1/chat/completions", body, stream)
    sampling = {"temperature": 0} if rng.random() < 0.5 else {"temperature": 0.8, "seed": rng.randrange(2**31)}
    return Planned("stream", "/v1/chat/completions", chat_body(rng.choice(questions), opts, True, **sampling), True)


# ---- sending ----------------------------------------------------------------------------------------------


def brief(body: dict[str, Any] | bytes) -> str:
    """A request body short enough for a report."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else json.dumps(body)
    return text if len(text) <= 300 else f"{text[:300]}... ({len(text)} characters)"


async def send(http: httpx.AsyncClient, req: Planned, log: SoakLog, timeout: float) -> None:
    """One client request; what it got is written to `log`."""
    log.client_requests += 1
    try:
        if req.stream:
            await send_stream(http, req, log, timeout)
        else:
            await send_whole(http, req, log)
    except httpx.TransportError as exc:
        log.transport_errors.append({"kind": req.kind, "error": repr(exc), "request": brief(req.body)})
    except ValueError as exc:  # a chunk that is not JSON
        log.unexpected.append({"kind": req.kind, "status": "malformed", "body": repr(exc)[:500]})


def status_ok(req: Planned, status: int) -> bool:
    return 400 <= status < 500 if req.want_4xx else status == 200


async def send_whole(http: httpx.AsyncClient, req: Planned, log: SoakLog) -> None:
    content = req.body if isinstance(req.body, bytes) else json.dumps(req.body).encode()
    r = await http.post(req.path, content=content, headers={"Content-Type": "application/json"})
    log.answer(req.kind, r.status_code, r.text, status_ok(req, r.status_code))
    if r.status_code >= 500:
        log.server_errors[-1]["request"] = brief(req.body)


async def send_stream(http: httpx.AsyncClient, req: Planned, log: SoakLog, timeout: float) -> None:
    """A streamed completion: its time to the first text, and whether [DONE] came within `timeout`."""
    sent, first, done = time.perf_counter(), None, False
    try:
        async with asyncio.timeout(timeout), http.stream("POST", req.path, json=req.body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                log.answer(req.kind, response.status_code, text, status_ok(req, response.status_code))
                if response.status_code >= 500:
                    log.server_errors[-1]["request"] = brief(req.body)
                return
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                    break
                if not line.startswith("data: "):
                    continue
                chunk = json.loads(line[len("data: ") :])
                choices = chunk.get("choices") or []
                if first is None and choices and choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter()
                if chunk.get("usage"):
                    log.completion_tokens += chunk["usage"]["completion_tokens"]
    except TimeoutError:
        log.hung.append({"kind": req.kind, "request": brief(req.body), "got_text": first is not None})
        return
    log.answer(req.kind, 200, "", status_ok(req, 200))
    if not done:
        log.no_done.append({"kind": req.kind, "request": brief(req.body)})
    if first is not None:
        log.ttft.append((sent, first))


async def client(worker: int, url: str, opts: SoakOptions, log: SoakLog, deadline: float) -> None:
    """One client: request after request until the deadline (the last one is let finish)."""
    rng = random.Random(opts.seed * 10_000 + worker)
    questions = [f.prompt for f in FACTS] + list(UNRELATED)
    timeout = httpx.Timeout(opts.stream_timeout + 60, connect=30)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
        while time.perf_counter() < deadline:
            await send(http, plan(rng, questions, opts), log, opts.stream_timeout)


# ---- the writer -------------------------------------------------------------------------------------------


class Writer:
    """Creates edits, then revokes and restores them in turn (one more edit every few cycles); after each
    revoke and restore it asks /route whether the edit's own question reaches it."""

    def __init__(self, http: httpx.AsyncClient, log: SoakLog, opts: SoakOptions) -> None:
        self.http, self.log, self.opts = http, log, opts
        self.rng = random.Random(opts.seed)
        self.edits: list[tuple[str, Fact]] = []
        self.next_fact = 0

    async def run(self, deadline: float) -> None:
        cycles = 0
        while time.perf_counter() < deadline:
            try:
                if not self.edits:  # no edit could be made: nothing to revoke
                    await asyncio.sleep(1.0)
                    continue
                await self.cycle()
                cycles += 1
                if cycles % self.opts.create_every == 0:
                    await self.create()
            except httpx.TransportError as exc:
                self.log.transport_errors.append({"kind": "writer", "error": repr(exc)})
                await asyncio.sleep(1.0)

    async def create(self) -> None:
        if self.next_fact >= len(FACTS):
            return
        fact = FACTS[self.next_fact]
        self.next_fact += 1
        r = await self.http.post("/edits", json={"prompt": fact.prompt, "target": fact.target})
        self.log.answer("edit", r.status_code, r.text, r.status_code == 201)
        if r.status_code == 201:
            self.edits.append((r.json()["id"], fact))
            self.log.edits_created += 1

    async def cycle(self) -> None:
        edit_id, fact = self.rng.choice(self.edits)
        sent = time.perf_counter()
        r = await self.http.delete(f"/edits/{edit_id}")
        answered = time.perf_counter()
        self.log.answer("revoke", r.status_code, r.text, r.status_code == 200)
        if r.status_code != 200:
            return
        self.log.revokes.append((sent, answered))
        ok, routed = await self.routed_to(fact)
        if ok and routed == edit_id:
            self.log.stale_routes.append({"edit_id": edit_id, "question": fact.prompt})
        await asyncio.sleep(self.rng.uniform(0.1, 0.5))
        r = await self.http.post(f"/edits/{edit_id}/restore")
        self.log.answer("restore", r.status_code, r.text, r.status_code == 200)
        if r.status_code == 200:
            self.log.restores += 1
            ok, routed = await self.routed_to(fact)
            if ok and routed != edit_id:
                self.log.unrouted_restores.append({"edit_id": edit_id, "question": fact.prompt, "routed": routed})
        await asyncio.sleep(self.rng.uniform(0.1, 0.5))

    async def routed_to(self, fact: Fact) -> tuple[bool, str | None]:
        r = await self.http.post("/route", json={"questions": [fact.prompt]})
        self.log.answer("route", r.status_code, r.text, r.status_code == 200)
        return (True, r.json()["routes"][0]["edit_id"]) if r.status_code == 200 else (False, None)


# ---- the run ----------------------------------------------------------------------------------------------


async def sample_rss(server: ServerProcess, stop: asyncio.Event, samples: list[float]) -> None:
    while not stop.is_set():
        if (mb := server.rss_mb()) is not None:
            samples.append(mb)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def soak(server: ServerProcess, opts: SoakOptions) -> dict[str, Any]:
    """The load itself, after a warm-up request and the first edits; the report (without the server's exit)."""
    log = SoakLog()
    async with httpx.AsyncClient(base_url=server.url, timeout=opts.stream_timeout) as http:
        (await http.post("/v1/chat/completions", json=chat_body(UNRELATED[0], opts, False))).raise_for_status()
        writer = Writer(http, log, opts)
        for _ in range(opts.first_edits):
            await writer.create()
        rss: list[float] = []
        rss_start = server.rss_mb()
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(server, stop, rss))
        start = time.perf_counter()
        deadline = start + opts.seconds
        clients = [client(w, server.url, opts, log, deadline) for w in range(opts.clients)]
        await asyncio.gather(writer.run(deadline), *clients)
        wall = time.perf_counter() - start
        stop.set()
        await sampler
    return summarise(log, opts, wall, rss_start, server.rss_mb(), rss)


def ms_percentiles(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"n": 0, "p50_ms": None, "p99_ms": None}
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return {"n": len(seconds), "p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1)}


def split_ttft(ttft: list[tuple[float, float]], revokes: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Times to first text of the streams whose wait overlapped a revoke's round trip, and of the others."""
    during: list[float] = []
    otherwise: list[float] = []
    for sent, first in ttft:
        overlaps = any(a < first and b > sent for a, b in revokes)
        (during if overlaps else otherwise).append(first - sent)
    return during, otherwise


def summarise(
    log: SoakLog, opts: SoakOptions, wall: float, rss_start: float | None, rss_end: float | None, rss: list[float]
) -> dict[str, Any]:
    during, otherwise = split_ttft(log.ttft, log.revokes)
    kinds = Counter(key.rsplit(" ", 1)[0] for key in log.statuses.elements())
    problems = {
        "server_errors_5xx": len(log.server_errors),
        "hung_streams": len(log.hung),
        "streams_without_done": len(log.no_done),
        "transport_errors": len(log.transport_errors),
        "unexpected_status": len(log.unexpected),
        "stale_routes_after_revoke": len(log.stale_routes),
        "unrouted_after_restore": len(log.unrouted_restores),
    }
    return {
        "seconds": opts.seconds,
        "clients": opts.clients,
        "torch_threads": opts.threads,
        "max_tokens": opts.max_tokens,
        "stream_timeout_s": opts.stream_timeout,
        "wall_s": round(wall, 2),
        "requests": log.client_requests,
        "requests_per_s": round(log.client_requests / wall, 3),
        "completion_tokens": log.completion_tokens,
        "tokens_per_s": round(log.completion_tokens / wall, 2),
        "poisoned": sum(kinds[k] for k in POISON),
        "oversized": sum(kinds[k] for k in OVERSIZED),
        "edits_created": log.edits_created,  # the first ones, made before the load, included
        "revokes": len(log.revokes),
        "restores": log.restores,
        "revoke_latency": ms_percentiles([b - a for a, b in log.revokes]),
        "ttft": {"during_revoke": ms_percentiles(during), "otherwise": ms_percentiles(otherwise)},
        "rss_mb": {
            "start": _round(rss_start),
            "end": _round(rss_end),
            "peak": _round(max(rss, default=None)),
            "growth": _round(rss_end - rss_start) if rss_start is not None and rss_end is not None else None,
        },
        "statuses": dict(sorted(log.statuses.items())),
        **problems,
        "ok": not any(problems.values()),
        "samples": {
            "server_errors": log.server_errors[:10],
            "unexpected": log.unexpected[:10],
            "transport_errors": log.transport_errors[:10],
            "hung": log.hung[:10],
            "no_done": log.no_done[:10],
            "stale_routes": log.stale_routes[:10],
            "unrouted_restores": log.unrouted_restores[:10],
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def run_soak(opts: SoakOptions, out: Path | None = None) -> dict[str, Any]:
    """Start a server, soak it, stop it (SIGTERM); print a table and write `out` (JSON) when given."""
    print(
        f"soak: {opts.clients} clients for {opts.seconds:g} s, server torch threads {opts.threads} "
        f"(SOLA_TORCH_THREADS={opts.threads})",
        file=sys.stderr,
    )
    env = {
        "SOLA_MAX_PROMPT_CHARS": str(opts.max_prompt_chars),
        "SOLA_MAX_PROMPT_TOKENS": str(opts.max_prompt_tokens),
        "SOLA_MAX_BODY_BYTES": str(opts.max_body_bytes),
        **({"SOLA_DATABASE_URL": opts.database_url} if opts.database_url else {}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        server = quiet_server(Path(tmp), Path(opts.data_dir) / "models", opts.model, opts.threads, **env)
        try:
            server.start(timeout=600)
            result = asyncio.run(soak(server, opts))
            result["server_alive_at_end"] = server.proc is not None and server.proc.poll() is None
        finally:
            exit_code = server.stop()
            log_tail = server.log_tail(6000)
    result["shutdown_exit_code"] = exit_code
    if not result["ok"] or exit_code != 0:
        result["server_log_tail"] = log_tail
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    print_soak(result)
    return result


def print_soak(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def ms(p: dict[str, Any]) -> str:
        return "-" if not p["n"] else f"{p['p50_ms']:.0f} / {p['p99_ms']:.0f} ms (n={p['n']})"

    rss = r["rss_mb"]
    rows = [
        ("clients / torch threads", f"{r['clients']} / {r['torch_threads']}"),
        ("wall", f"{r['wall_s']:.0f} s ({r['seconds']:g} s of load)"),
        ("requests", f"{r['requests']} ({r['requests_per_s']:.2f}/s; {r['tokens_per_s']:.1f} tok/s)"),
        ("poisoned / oversized", f"{r['poisoned']} / {r['oversized']}"),
        ("edits / revokes / restores", f"{r['edits_created']} / {r['revokes']} / {r['restores']}"),
        ("revoke p50 / p99", ms(r["revoke_latency"])),
        ("TTFT p50 / p99, revoke in flight", ms(r["ttft"]["during_revoke"])),
        ("TTFT p50 / p99, otherwise", ms(r["ttft"]["otherwise"])),
        ("server RSS start / end / peak", f"{rss['start']} / {rss['end']} / {rss['peak']} MB (+{rss['growth']})"),
        ("5xx / hung / no [DONE]", f"{r['server_errors_5xx']} / {r['hung_streams']} / {r['streams_without_done']}"),
        ("transport errors / unexpected", f"{r['transport_errors']} / {r['unexpected_status']}"),
        (
            "stale after revoke / unrouted after restore",
            f"{r['stale_routes_after_revoke']} / {r['unrouted_after_restore']}",
        ),
        ("shutdown exit code", str(r["shutdown_exit_code"])),
    ]
    table = Table(title="Soak " + ("OK" if r["ok"] else "FOUND PROBLEMS"))
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
