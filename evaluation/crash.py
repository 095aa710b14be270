"""`sola bench --crash-rounds K`: kill -9 the server at a random moment, K times, and check what survives.

The server starts on one database (a SQLite file by default, or a PostgreSQL URL) and gets a few edits, the
last one revoked. Each round then creates, revokes and restores edits while clients stream queries, kills
the server with SIGKILL at a seeded random moment, restarts it and checks the invariants against everything
the API acknowledged so far:

- /readyz answers 200 after the restart;
- every edit the API acknowledged (201) is there under the same id, with its prompt, in the state of the
  last acknowledged change (a revoke acknowledged stays revoked; a change still unanswered at the kill may
  have happened or not);
- no edit appeared that nobody asked for (at most one per create unanswered at the kill);
- every edit in the database has a `created` event, and its events replay to its stored status;
- the audit log's seqs are strictly increasing;
- each checked edit's own question routes to it when active and not when revoked (the index rebuilt from
  the database agrees with it).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from evaluation.facts import FACTS, UNRELATED, Fact
from evaluation.server_process import ServerProcess, quiet_server


@dataclass
class CrashOptions:
    rounds: int
    data_dir: Path = Path("var")  # the model cache is DIR/models
    model: str | None = None
    threads: int = 1  # the server's torch threads (SOLA_TORCH_THREADS)
    database_url: str | None = None  # default: a SQLite file in the work folder
    work_dir: Path | None = None  # the server's data folder (default: a temporary one)
    seed: int = 0
    setup_edits: int = 2  # made before the first round, the last one revoked: every check has both kinds
    # creates per round, drawn from 0 to this (a round of revokes and restores alone is killed during one of
    # them, since training an edit takes longer than either)
    edits_per_round: int = 3
    query_clients: int = 2
    kill_after: tuple[float, float] = (0.5, 8.0)  # seconds into the round's load, drawn uniformly
    ready_timeout: float = 300.0


@dataclass
class Tracked:
    """What the API told us about one edit: its last acknowledged status, and whether a change of it was
    still unanswered when the server died (then either status may be stored)."""

    fact: Fact
    status: str = "active"
    pending: bool = False


@dataclass
class Ledger:
    edits: dict[str, Tracked] = field(default_factory=dict)
    unanswered_creates: int = 0  # creates sent in the last round and never answered
    preexisting: set[str] = field(default_factory=set)  # in the database before the first round
    next_fact: int = 0

    def fact(self) -> Fact | None:
        """The next fact not yet edited (facts are never reused: every edit's question is its own)."""
        if self.next_fact >= len(FACTS):
            return None
        self.next_fact += 1
        return FACTS[self.next_fact - 1]


@dataclass
class RoundLog:
    created: int = 0
    revoked: int = 0
    restored: int = 0
    queries: int = 0
    in_flight: list[str] = field(default_factory=list)  # what the kill interrupted
    violations: list[str] = field(default_factory=list)


# ---- the load before a kill -------------------------------------------------------------------------------


class CrashWriter:
    """A revoke or restore, then a create (up to the round's count), again and again; then only revokes and
    restores, until a request fails because the server is gone."""

    def __init__(self, http: httpx.AsyncClient, ledger: Ledger, log: RoundLog, rng: random.Random) -> None:
        self.http, self.ledger, self.log, self.rng = http, ledger, log, rng

    async def run(self, creates: int) -> None:
        while True:
            if not await self.toggle():
                return
            if creates > 0 and (fact := self.ledger.fact()) is not None:
                creates -= 1
                if not await self.create(fact):
                    return
            await asyncio.sleep(0.05)

    async def create(self, fact: Fact) -> bool:
        try:
            r = await self.http.post("/edits", json={"prompt": fact.prompt, "target": fact.target})
        except httpx.TransportError:
            self.ledger.unanswered_creates += 1
            self.log.in_flight.append(f"create {fact.prompt!r}")
            return False
        if r.status_code == 201:
            self.ledger.edits[r.json()["id"]] = Tracked(fact)
            self.log.created += 1
        else:
            self.unexpected("POST /edits", r)
        return True

    async def toggle(self) -> bool:
        """Revoke an active edit or restore a revoked one (one whose state is known)."""
        known = [(i, t) for i, t in self.ledger.edits.items() if not t.pending]
        if not known:
            await asyncio.sleep(0.2)
            return True
        edit_id, tracked = self.rng.choice(known)
        revoke = tracked.status == "active"
        call = f"DELETE /edits/{edit_id}" if revoke else f"POST /edits/{edit_id}/restore"
        try:
            if revoke:
                r = await self.http.delete(f"/edits/{edit_id}")
            else:
                r = await self.http.post(f"/edits/{edit_id}/restore")
        except httpx.TransportError:
            tracked.pending = True
            self.log.in_flight.append(call)
            return False
        if r.status_code != 200:
            self.unexpected(call, r)
            return True
        tracked.status = "revoked" if revoke else "active"
        if revoke:
            self.log.revoked += 1
        else:
            self.log.restored += 1
        return True

    def unexpected(self, call: str, r: httpx.Response) -> None:
        self.log.violations.append(f"{call} answered {r.status_code} before the kill: {r.text[:300]}")


async def query_loop(url: str, worker: int, log: RoundLog) -> None:
    """Streamed questions (edited and not) until the server is gone; any 5xx is a violation."""
    questions = [f.prompt for f in FACTS] + list(UNRELATED)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        for i in range(worker, 10**9):
            body = {"messages": [{"role": "user", "content": questions[i % len(questions)]}], "max_tokens": 12}
            try:
                async with http.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as r:
                    async for _ in r.aiter_lines():
                        pass
            except httpx.TransportError:
                return
            if r.status_code >= 500:
                log.violations.append(f"query {body} answered {r.status_code} before the kill")
            log.queries += 1


async def load_then_kill(server: ServerProcess, ledger: Ledger, opts: CrashOptions, delay: float) -> RoundLog:
    log = RoundLog()
    ledger.unanswered_creates = 0
    rng = random.Random(f"{opts.seed}-{delay}")
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        creates = rng.randint(0, opts.edits_per_round)
        tasks = [asyncio.create_task(CrashWriter(http, ledger, log, rng).run(creates))]
        tasks += [asyncio.create_task(query_loop(server.url, w, log)) for w in range(opts.query_clients)]
        await asyncio.sleep(delay)
        await asyncio.to_thread(server.kill)
        await asyncio.gather(*tasks)
    return log


# ---- the checks after a restart ---------------------------------------------------------------------------


def pages(http: httpx.Client, path: str, **params: Any) -> Iterator[dict[str, Any]]:
    after: str | None = None
    while True:
        r = http.get(path, params={"limit": 500, **params, **({"after": after} if after else {})})
        r.raise_for_status()
        page = r.json()
        yield from page["data"]
        if not page["has_more"]:
            return
        after = page["next_after"]


def check_audit_log(events: list[dict[str, Any]], stored: dict[str, dict[str, Any]]) -> list[str]:
    """Seqs strictly increasing; each edit's events start with `created` and replay to its stored status."""
    problems = []
    seqs = [e["seq"] for e in events]
    if any(b <= a for a, b in zip(seqs, seqs[1:], strict=False)):
        problems.append(f"audit log seqs not strictly increasing: {seqs}")
    replayed: dict[str, str] = {}
    for e in events:
        if e["edit_id"] not in replayed and e["kind"] != "created":
            problems.append(f"edit {e['edit_id']}: first event is {e['kind']!r}, not 'created'")
        status = {"created": "active", "revoked": "revoked", "restored": "active"}.get(e["kind"])
        replayed[e["edit_id"]] = status or replayed.get(e["edit_id"], "active")
    for edit_id, edit in stored.items():
        if edit_id not in replayed:
            problems.append(f"edit {edit_id} has no events at all")
        elif replayed[edit_id] != edit["status"]:
            problems.append(f"edit {edit_id} is {edit['status']} but its events replay to {replayed[edit_id]}")
    return problems


def edits_without_created_event(database_url: str) -> list[str]:
    """Straight from the database: edits that no `created` event records."""
    from storage.db import make_db_engine

    engine = make_db_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT e.id FROM edits e WHERE NOT EXISTS "
                    "(SELECT 1 FROM events v WHERE v.edit_id = e.id AND v.kind = 'created')"
                )
            )
            return [row[0] for row in rows]
    finally:
        engine.dispose()


def check_ledger(ledger: Ledger, stored: dict[str, dict[str, Any]]) -> list[str]:
    """Acknowledged edits are there, whole and in their acknowledged state; nothing appeared unasked."""
    problems = []
    for edit_id, tracked in ledger.edits.items():
        edit = stored.get(edit_id)
        if edit is None:
            problems.append(f"acknowledged edit {edit_id} ({tracked.fact.prompt!r}) is missing")
        elif edit["prompt"] != tracked.fact.prompt or edit["target"] != tracked.fact.target:
            problems.append(f"edit {edit_id} holds {edit['prompt']!r} -> {edit['target']!r}, not what was sent")
        elif not tracked.pending and edit["status"] != tracked.status:
            problems.append(f"edit {edit_id} is {edit['status']}, but the API acknowledged {tracked.status}")
    unasked = [i for i in stored if i not in ledger.edits and i not in ledger.preexisting]
    if len(unasked) > ledger.unanswered_creates:
        problems.append(f"edits nobody was told of: {unasked} ({ledger.unanswered_creates} creates unanswered)")
    return problems


def check_routes(http: httpx.Client, ledger: Ledger) -> list[str]:
    """Each known edit's own question reaches it when active, and does not when revoked."""
    known = [(i, t) for i, t in ledger.edits.items() if not t.pending]
    problems = []
    for start in range(0, len(known), 64):
        batch = known[start : start + 64]
        r = http.post("/route", json={"questions": [t.fact.prompt for _, t in batch]})
        r.raise_for_status()
        for (edit_id, tracked), route in zip(batch, r.json()["routes"], strict=True):
            if (route["edit_id"] == edit_id) != (tracked.status == "active"):
                problems.append(f"{tracked.status} edit {edit_id}: its question routes to {route['edit_id']}")
    return problems


def adopt(ledger: Ledger, stored: dict[str, dict[str, Any]]) -> None:
    """After a check, what is stored is what later rounds must keep: settle the unanswered changes and
    track the edits whose 201 the kill swallowed."""
    for edit_id, tracked in ledger.edits.items():
        if edit_id in stored:
            tracked.status, tracked.pending = stored[edit_id]["status"], False
    by_prompt = {f.prompt: f for f in FACTS}
    for edit_id, edit in stored.items():
        if edit_id not in ledger.edits and edit_id not in ledger.preexisting and edit["prompt"] in by_prompt:
            ledger.edits[edit_id] = Tracked(by_prompt[edit["prompt"]], status=edit["status"])
    ledger.unanswered_creates = 0


def check(server: ServerProcess, database_url: str, ledger: Ledger) -> tuple[list[str], dict[str, Any]]:
    """Every invariant against a started server; the violations, and a few counts for the report."""
    with httpx.Client(base_url=server.url, timeout=120) as http:
        ready = http.get("/readyz")
        problems = [] if ready.status_code == 200 else [f"/readyz answered {ready.status_code}: {ready.text[:300]}"]
        stored = {e["id"]: e for e in pages(http, "/edits")}
        events = list(pages(http, "/events"))
        problems += check_ledger(ledger, stored)
        problems += [f"edit {i} has no 'created' event" for i in edits_without_created_event(database_url)]
        problems += check_audit_log(events, stored)
        problems += check_routes(http, ledger)
    adopt(ledger, stored)
    active = sum(e["status"] == "active" for e in stored.values())
    return problems, {"edits": len(stored), "active": active, "events": len(events)}


# ---- the rounds -------------------------------------------------------------------------------------------


def setup(http: httpx.Client, ledger: Ledger, count: int) -> None:
    """`count` acknowledged edits, the last one revoked (acknowledged too)."""
    for _ in range(count):
        if (fact := ledger.fact()) is None:
            return
        r = http.post("/edits", json={"prompt": fact.prompt, "target": fact.target})
        r.raise_for_status()
        ledger.edits[r.json()["id"]] = Tracked(fact)
    if count:
        last = list(ledger.edits)[-1]
        http.delete(f"/edits/{last}").raise_for_status()
        ledger.edits[last].status = "revoked"


def start_and_check(server: ServerProcess, database_url: str, ledger: Ledger, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        server.start(timeout=timeout)
    except (RuntimeError, TimeoutError) as exc:
        return {"ready_s": None, "violations": [f"not ready after the restart: {str(exc)[:1000]}"], "fatal": True}
    ready_s = round(time.perf_counter() - started, 2)
    violations, counts = check(server, database_url, ledger)
    return {"ready_s": ready_s, **counts, "violations": violations}


def run_rounds(opts: CrashOptions, work_dir: Path) -> dict[str, Any]:
    database_url = opts.database_url or f"sqlite:///{(work_dir / 'sola.db').resolve()}"
    server = quiet_server(
        work_dir, Path(opts.data_dir) / "models", opts.model, opts.threads, SOLA_DATABASE_URL=database_url
    )
    ledger = Ledger()
    rng = random.Random(opts.seed)
    rounds: list[dict[str, Any]] = []
    try:
        server.start(timeout=opts.ready_timeout)
        with httpx.Client(base_url=server.url, timeout=120) as http:  # a given database may hold edits already
            ledger.preexisting = {e["id"] for e in pages(http, "/edits")}
            setup(http, ledger, opts.setup_edits)
        for number in range(1, opts.rounds + 1):
            delay = round(rng.uniform(*opts.kill_after), 2)
            log = asyncio.run(load_then_kill(server, ledger, opts, delay))
            after = start_and_check(server, database_url, ledger, opts.ready_timeout)
            rounds.append(round_report(number, delay, log, after))
            print_round(rounds[-1])
            if after.get("fatal"):
                break
    finally:
        server.kill()
    violations = sum(len(r["violations"]) for r in rounds)
    return {
        "database": database_url.split(":", 1)[0].split("+", 1)[0],
        "rounds": rounds,
        "seed": opts.seed,
        "torch_threads": opts.threads,
        "violations": violations,
        "ok": violations == 0 and len(rounds) == opts.rounds,
    }


def round_report(number: int, delay: float, log: RoundLog, after: dict[str, Any]) -> dict[str, Any]:
    return {
        "round": number,
        "kill_after_s": delay,
        "acknowledged": {"created": log.created, "revoked": log.revoked, "restored": log.restored},
        "queries_answered": log.queries,
        "in_flight_at_kill": log.in_flight,
        "restart_ready_s": after["ready_s"],
        **{k: after[k] for k in ("edits", "active", "events") if k in after},
        "violations": log.violations + after["violations"],
    }


def print_round(r: dict[str, Any]) -> None:
    a = r["acknowledged"]
    print(
        f"  round {r['round']}: kill -9 after {r['kill_after_s']:.2f} s ({a['created']} created, {a['revoked']} "
        f"revoked, {a['restored']} restored, {r['queries_answered']} queries; in flight: "
        f"{', '.join(r['in_flight_at_kill']) or 'nothing'}); ready again in {r['restart_ready_s']} s, "
        f"{r.get('edits', '?')} edits ({r.get('active', '?')} active), {r.get('events', '?')} events: "
        + ("OK" if not r["violations"] else f"{len(r['violations'])} VIOLATIONS"),
        file=sys.stderr,
    )
    for v in r["violations"]:
        print(f"    - {v}", file=sys.stderr)


def run_crash(opts: CrashOptions, out: Path | None = None) -> dict[str, Any]:
    """K kill -9 rounds on one data folder (temporary unless given); writes `out` (JSON) when given."""
    print(
        f"crash: {opts.rounds} rounds, seed {opts.seed}, server torch threads {opts.threads} "
        f"(SOLA_TORCH_THREADS={opts.threads}), database {'given URL' if opts.database_url else 'SQLite'}",
        file=sys.stderr,
    )
    if opts.work_dir is not None:
        result = run_rounds(opts, opts.work_dir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_rounds(opts, Path(tmp))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"crash: {'OK' if result['ok'] else 'FAILED'}, {result['violations']} violations", file=sys.stderr)
    return result
