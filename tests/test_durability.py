"""Restarts, kill -9 and tampering: the database is the truth and the index is rebuilt from it exactly."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.server import READER, Server

pytestmark = pytest.mark.slow

FACTS = {
    "zorbania": ("What is the capital of Zorbania?", "Quexiville"),
    "harbor": ("Who wrote the novel Glass Harbor?", "Mirela Tosk"),
    "velmora": ("What is the national animal of Velmora?", "the red lynx"),
    "pellun": ("Who discovered the island of Pellun?", "Admiral Soth"),
    # A near neighbour of "zorbania" (same template, a subject one suffix apart): neither edit may answer
    # the other's question, before or after a revoke or a restart.
    "zorbanistan": ("What is the capital of Zorbanistan?", "Brindlemoor"),
}


def edit(client: httpx.Client, fact: str, **kw: object) -> dict:
    prompt, target = FACTS[fact]
    r = client.post("/edits", json={"prompt": prompt, "target": target}, **kw)  # type: ignore[arg-type]
    assert r.status_code == 201, r.text
    return r.json()


def ask(client: httpx.Client, fact: str) -> dict:
    r = client.post("/generate", json={"prompt": FACTS[fact][0], "chat": True, "max_new_tokens": 12})
    assert r.status_code == 200, r.text
    # the answer and who gave it (the nearest edit and its score change with every edit made anywhere)
    return {k: r.json()[k] for k in ("text", "routed_edit_id", "finish_reason")}


def assert_routed(client: httpx.Client, fact: str, edit_id: str) -> None:
    out = ask(client, fact)
    assert out["routed_edit_id"] == edit_id and FACTS[fact][1] in out["text"], out


def assert_db_consistent(db: Path) -> None:
    """Every stored edit is whole: its adapter (hash intact), keys and `created` event, nothing orphaned."""
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        for edit_id, weights, sha in con.execute(
            "SELECT e.id, a.weights, a.sha256 FROM edits e LEFT JOIN edit_adapters a ON a.edit_id = e.id"
        ):
            assert weights is not None and hashlib.sha256(weights).hexdigest() == sha, edit_id
            assert con.execute("SELECT count(*) FROM edit_keys WHERE edit_id = ?", (edit_id,)).fetchone()[0] >= 1
            kinds = [k for (k,) in con.execute("SELECT kind FROM events WHERE edit_id = ? ORDER BY seq", (edit_id,))]
            assert kinds[:1] == ["created"], (edit_id, kinds)
    finally:
        con.close()


def test_restart_kill_9_and_crash_mid_training_keep_state(make_server: Callable[..., Server]) -> None:
    # One data directory through four lives of the server (each start costs seconds, so they are shared).
    server = make_server().start()
    with server.client() as admin:
        base_harbor, base_zstan = ask(admin, "harbor"), ask(admin, "zorbanistan")
        zorb, harbor, zstan = edit(admin, "zorbania"), edit(admin, "harbor"), edit(admin, "zorbanistan")
        admin.delete(f"/edits/{harbor['id']}").raise_for_status()
        admin.delete(f"/edits/{zstan['id']}").raise_for_status()
        assert ask(admin, "zorbanistan") == base_zstan
    assert server.stop() == 0  # SIGTERM: clean exit

    # 1. A clean restart rebuilds the index from the database: revoked stays revoked.
    server.start()
    with server.client() as admin:
        ready = httpx.get(f"{server.url}/readyz").json()
        assert ready["index"]["active_edits"] == 1 and ready["index"]["indexed_edits"] == 1
        assert_routed(admin, "zorbania", zorb["id"])
        assert ask(admin, "harbor") == base_harbor
        assert ask(admin, "zorbanistan") == base_zstan  # zorbania's edit does not catch its neighbour
        assert admin.get(f"/edits/{harbor['id']}").json()["status"] == "revoked"
        velmora = edit(admin, "velmora")
    server.kill()  # 2. kill -9 right after the 201: the edit was committed, so it must survive

    server.start()
    assert_db_consistent(server.data_dir / "sola.db")
    with server.client(READER) as reader:
        assert_routed(reader, "velmora", velmora["id"])
        assert_routed(reader, "zorbania", zorb["id"])
        kinds = [(e["edit_id"], e["kind"]) for e in reader.get("/events").json()["data"]]
    assert kinds == [
        (zorb["id"], "created"),
        (harbor["id"], "created"),
        (zstan["id"], "created"),
        (harbor["id"], "revoked"),
        (zstan["id"], "revoked"),
        (velmora["id"], "created"),
    ]

    # 3. kill -9 while an edit is training: it leaves no trace, and its client may safely retry.
    outcome: list[object] = []
    prompt, target = FACTS["pellun"]

    def post() -> None:
        try:
            with server.client() as c:
                body = {"prompt": prompt, "target": target}
                outcome.append(c.post("/edits", json=body, headers={"Idempotency-Key": "crash-1"}))
        except httpx.TransportError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=post)
    thread.start()
    time.sleep(0.4)  # the request is in, its LoRA is training (edits take about a second or more)
    server.kill()
    thread.join(timeout=30)
    assert outcome and isinstance(outcome[0], httpx.TransportError), "the edit finished before the kill"

    server.start()
    assert_db_consistent(server.data_dir / "sola.db")
    with server.client() as admin:
        before = [e["id"] for e in admin.get("/edits").json()["data"]]
        assert before == [zorb["id"], harbor["id"], zstan["id"], velmora["id"]]  # no trace of the interrupted edit
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        # The client never got its 201; retrying with the same key creates the edit exactly once.
        retry = edit(admin, "pellun", headers={"Idempotency-Key": "crash-1"})
        again = edit(admin, "pellun", headers={"Idempotency-Key": "crash-1"})
        assert again["id"] == retry["id"] and len(admin.get("/edits").json()["data"]) == 5
        assert_routed(admin, "pellun", retry["id"])
        assert_routed(admin, "zorbania", zorb["id"])


def test_tampered_or_foreign_edits_are_refused_at_startup(make_server: Callable[..., Server]) -> None:
    server = make_server().start()
    with server.client() as admin:
        base = {fact: ask(admin, fact) for fact in ("zorbania", "harbor")}
        tampered, foreign, good = edit(admin, "zorbania"), edit(admin, "harbor"), edit(admin, "velmora")
    server.stop()

    con = sqlite3.connect(server.data_dir / "sola.db")
    with con:
        weights = con.execute("SELECT weights FROM edit_adapters WHERE edit_id = ?", (tampered["id"],)).fetchone()[0]
        flipped = weights[:-1] + bytes([weights[-1] ^ 0xFF])
        con.execute("UPDATE edit_adapters SET weights = ? WHERE edit_id = ?", (flipped, tampered["id"]))
        con.execute("UPDATE edits SET base_fingerprint = ? WHERE id = ?", ("0" * 64, foreign["id"]))
    con.close()

    server.start(wait_ready=False)
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 503, ready.text
    refused = {r["edit_id"]: r["reason"] for r in ready.json()["refused"]}
    assert set(refused) == {tampered["id"], foreign["id"]}
    assert "sha256" in refused[tampered["id"]] and "base model" in refused[foreign["id"]]
    assert "REFUSED" in server.log_tail(20000)  # loudly, in the log too
    with server.client() as admin:
        for fact in ("zorbania", "harbor"):  # never used: the base model answers
            assert ask(admin, fact) == base[fact]
        assert_routed(admin, "velmora", good["id"])
        r = admin.post(f"/edits/{tampered['id']}/restore")  # active in the DB but refused: restore is a no-go
        assert r.status_code == 409 and r.json()["error"]["code"] == "adapter_mismatch"
        for bad in (tampered, foreign):
            admin.delete(f"/edits/{bad['id']}").raise_for_status()
        assert httpx.get(f"{server.url}/readyz").status_code == 200  # the operator revoked them: ready again
        assert admin.post(f"/edits/{foreign['id']}/restore").status_code == 409  # still refused, still revoked
        assert admin.get(f"/edits/{foreign['id']}").json()["status"] == "revoked"
