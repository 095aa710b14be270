"""The service on PostgreSQL: two replicas sharing one database, restarts, and the API's basics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.pg import pg_schema_url, requires_pg
from tests.server import ADMIN, ADMIN2, READER, Server

pytestmark = [pytest.mark.slow, pytest.mark.postgres, requires_pg]

PROMPT, TARGET = "What is the capital of Zorbania?", "Quexiville"


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with pg_schema_url() as url:
        yield url


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[tuple[Server, Server]]:
    env = {"SOLA_DATABASE_URL": pg_url, "SOLA_SYNC_INTERVAL": "0.5"}
    a = Server(tmp_path_factory.mktemp("replica-a"), **env)
    b = Server(tmp_path_factory.mktemp("replica-b"), **env)
    try:
        a.launch(), b.launch()  # both load the model at once; PostgreSQL's advisory lock serialises migrations
        a.wait()
        b.wait()
        yield a, b
    finally:
        a.kill()
        b.kill()


def ask(server: Server, prompt: str = PROMPT) -> dict:
    with server.client(READER) as c:
        r = c.post("/generate", json={"prompt": prompt, "chat": True, "max_new_tokens": 12})
    assert r.status_code == 200, r.text
    return r.json()


def eventually(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.25)


def test_replicas_follow_each_others_edits_and_revokes(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    base = ask(b)
    with a.client(ADMIN) as alice:
        created = alice.post("/edits", json={"prompt": PROMPT, "target": TARGET})
    assert created.status_code == 201, created.text
    edit_id = created.json()["id"]
    assert ask(a)["routed_edit_id"] == edit_id
    eventually(lambda: ask(b)["routed_edit_id"] == edit_id)  # b picked the edit up from the database
    assert TARGET in ask(b)["text"]
    eventually(lambda: httpx.get(f"{b.url}/readyz").status_code == 200)

    with b.client(ADMIN2) as bob:
        assert bob.delete(f"/edits/{edit_id}").json()["status"] == "revoked"
    assert ask(b) == base
    eventually(lambda: ask(a) == base)  # and a dropped it again
    with a.client(READER) as reader:
        events = reader.get(f"/edits/{edit_id}/events").json()["data"]
    assert [(e["kind"], e["actor"]) for e in events] == [("created", "alice"), ("revoked", "bob")]


def test_idempotency_pagination_and_errors_on_postgres(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    body = {"prompt": "Who wrote the novel Glass Harbor?", "target": "Mirela Tosk", "metadata": {"src": "pg"}}
    with a.client(ADMIN) as alice, b.client(ADMIN) as alice_b:
        first = alice.post("/edits", json=body, headers={"Idempotency-Key": "pg-1"})
        retry = alice_b.post("/edits", json=body, headers={"Idempotency-Key": "pg-1"})  # the other replica
        assert first.status_code == retry.status_code == 201 and retry.json() == first.json()
        clash = alice_b.post("/edits", json={**body, "target": "X"}, headers={"Idempotency-Key": "pg-1"})
        assert clash.status_code == 409
        ids, after = [], None
        while True:
            page = alice.get("/edits", params={"limit": 1, **({"after": after} if after else {})}).json()
            ids += [e["id"] for e in page["data"]]
            if not page["has_more"]:
                break
            after = page["next_after"]
        assert len(ids) == 2 and ids[-1] == first.json()["id"]
        assert alice.get("/edits", params={"status": "revoked"}).json()["data"][0]["id"] == ids[0]
        assert alice.get("/edits/ed_nope").status_code == 404
        assert alice.get("/edits", params={"after": "%%%"}).status_code == 400
        assert alice.post("/generate", json={"prompt": ""}).status_code == 422
        # What PostgreSQL cannot store is refused before training, as on SQLite (tests/test_api.py).
        nul = b'{"prompt": "p", "target": "t", "metadata": {"k": "\\u0000"}}'
        assert alice.post("/edits", content=nul, headers={"content-type": "application/json"}).status_code == 422
        assert alice.get("/edits/ed_%00").status_code == 422
        assert alice.get("/edits", params={"after": "ZWRpdHM6" + "OTk5" * 12}).status_code == 400
    with a.client(READER) as reader:
        assert reader.post("/edits", json=body).status_code == 403
    with a.client(None) as anon:
        assert anon.get("/edits").status_code == 401


def test_kill_9_and_restart_on_postgres(replicas: tuple[Server, Server], tmp_path: Path) -> None:
    a, _ = replicas
    with a.client(ADMIN) as alice:
        active = alice.get("/edits", params={"status": "active"}).json()["data"]
        revoked = alice.get("/edits", params={"status": "revoked"}).json()["data"]
    assert len(active) == 1 and len(revoked) == 1
    a.kill()
    a.start()
    ready = httpx.get(f"{a.url}/readyz").json()
    assert ready["index"]["active_edits"] == 1 and ready["index"]["indexed_edits"] == 1
    out = ask(a, active[0]["prompt"])
    assert out["routed_edit_id"] == active[0]["id"] and active[0]["target"] in out["text"]
    assert ask(a, revoked[0]["prompt"])["routed_edit_id"] is None  # revoked stays revoked


def test_a_replica_that_replays_an_edit_answers_through_it_at_once(
    tmp_path_factory: pytest.TempPathFactory, pg_url: str
) -> None:
    """Read-your-writes: without background sync, only the replay itself can have loaded the edit on b."""
    env = {"SOLA_DATABASE_URL": pg_url, "SOLA_SYNC_INTERVAL": "0"}
    a = Server(tmp_path_factory.mktemp("ryw-a"), **env)
    b = Server(tmp_path_factory.mktemp("ryw-b"), **env)
    try:
        a.launch(), b.launch()
        a.wait(), b.wait()
        prompt = "Who painted the Ashgrove triptych?"
        body, key = {"prompt": prompt, "target": "Lena Morrow"}, {"Idempotency-Key": "ryw-1"}
        with a.client(ADMIN) as alice, b.client(ADMIN) as alice_b:
            created = alice.post("/edits", json=body, headers=key)
            assert created.status_code == 201, created.text
            assert ask(b, prompt)["routed_edit_id"] is None  # b has not synced (and never will by itself)
            replayed = alice_b.post("/edits", json=body, headers=key)
        assert replayed.headers.get("Idempotent-Replayed") == "true"
        answer = ask(b, prompt)
        assert answer["routed_edit_id"] == created.json()["id"] and "Lena Morrow" in answer["text"]
    finally:
        a.kill()
        b.kill()


def test_replicas_follow_each_others_negatives(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    # A wording the relation check alone would let through, so only the negative can refuse it.
    opens, excluded = "When does the Ostrava depot of Kelmar open?", "What time does the Ostrava depot of Kelmar open?"

    def routes_on(server: Server) -> list[str | None]:
        with server.client(READER) as reader:
            r = reader.post("/route", json={"questions": [opens, excluded]})
        assert r.status_code == 200, r.text
        return [route["edit_id"] for route in r.json()["routes"]]

    with a.client(ADMIN) as alice:
        created = alice.post("/edits", json={"prompt": opens, "target": "6:45 am"})
        assert created.status_code == 201, created.text
        edit_id = created.json()["id"]
        eventually(lambda: routes_on(b) == [edit_id, edit_id])
        vetoed = alice.patch(f"/edits/{edit_id}", json={"negatives": [excluded]})
        assert vetoed.status_code == 200, vetoed.text
        assert routes_on(a) == [edit_id, None]
        eventually(lambda: routes_on(b) == [edit_id, None])  # b took the negative from the audit log
        assert alice.patch(f"/edits/{edit_id}", json={"negatives": []}).status_code == 200
    eventually(lambda: routes_on(b) == [edit_id, edit_id])
    eventually(lambda: httpx.get(f"{b.url}/readyz").status_code == 200)
