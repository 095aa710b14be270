"""Repository and migrations against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from storage.db import make_db_engine, sqlite_url
from storage.migrate import current_revision, upgrade
from storage.repository import (
    EditNotFound,
    IdempotencyKeyTaken,
    KeyRow,
    NewEdit,
    Repository,
    Supersession,
)
from tests.pg import pg_schema_url, requires_pg
from wire.kinds import EditStatus, EventKind


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, requires_pg])])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = make_db_engine(sqlite_url(tmp_path / "sola.db"))
        upgrade(eng)
        yield eng
        eng.dispose()
        return
    with pg_schema_url() as url:
        eng = make_db_engine(url)
        upgrade(eng)
        yield eng
        eng.dispose()


@pytest.fixture
def repo(db: Engine) -> Repository:
    return Repository(db)


def vec(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def new_edit(prompt: str = "What is the capital of Zorbania?", **kw: object) -> NewEdit:
    adapter = kw.pop("adapter", uuid.uuid4().bytes * 8)
    assert isinstance(adapter, bytes)
    fields: dict[str, object] = dict(
        id=f"ed_{uuid.uuid4().hex}",
        prompt=prompt,
        target="Quexiville",
        rephrases=["Zorbania's capital?"],
        metadata={"ticket": "T-1"},
        created_by="alice",
        base_model="SmolLM2-135M-Instruct",
        base_fingerprint="f" * 64,
        layer=26,
        train_steps=12,
        train_loss=0.01,
        train_seconds=0.9,
        adapter=adapter,
        adapter_sha256=hashlib.sha256(adapter).hexdigest(),
        keys=[KeyRow("chat", vec(1.0, 0.0, 0.5), 3), KeyRow("raw", vec(0.0, 1.0, 0.25), 3)],
    )
    fields.update(kw)
    return NewEdit(**fields)  # type: ignore[arg-type]


def test_migrations_are_idempotent(db: Engine) -> None:
    upgrade(db)  # a second startup must be a no-op
    assert current_revision(db) == "0003"


def test_create_and_read_back_everything(repo: Repository) -> None:
    new = new_edit()
    rec = repo.create_edit(new)
    assert rec.status == "active" and rec.created_by == "alice" and rec.created_at.tzinfo is not None
    got = repo.get_edit(new.id)
    assert got == rec
    assert got.metadata == {"ticket": "T-1"} and got.rephrases == ["Zorbania's capital?"]
    payload = repo.load_payload(new.id)
    assert payload.adapter == new.adapter and payload.adapter_sha256 == new.adapter_sha256
    assert payload.keys == new.keys  # order, kinds and exact float32 bytes survive
    assert repo.get_edit("ed_missing") is None
    with pytest.raises(EditNotFound):
        repo.load_payload("ed_missing")
    events = repo.list_events(new.id).items
    assert [(e.kind, e.actor) for e in events] == [("created", "alice")]
    assert events[0].detail["steps"] == 12


def test_failed_create_leaves_no_trace(repo: Repository) -> None:
    first = repo.create_edit(new_edit())
    # The same public id again violates a unique constraint midway: the whole transaction rolls back.
    with pytest.raises(Exception):  # noqa: B017 - driver-specific IntegrityError
        repo.create_edit(new_edit(id=first.id, prompt="another"))
    assert [e.prompt for e in repo.list_edits().items] == [first.prompt]
    assert len(repo.list_events().items) == 1
    assert repo.active_key_counts() == {first.id: 2}


def test_list_paginates_oldest_first_with_status_filter(repo: Repository) -> None:
    ids = [repo.create_edit(new_edit(f"fact {i}")).id for i in range(7)]
    repo.revoke(ids[2], "bob")
    seen, after = [], None
    while True:
        page = repo.list_edits(limit=3, after=after)
        seen += [e.id for e in page.items]
        if not page.has_more:
            assert page.last_seq is None
            break
        after = page.last_seq
    assert seen == ids
    active = repo.list_edits(status="active", limit=100)
    assert [e.id for e in active.items] == [i for i in ids if i != ids[2]] and not active.has_more
    assert [e.id for e in repo.list_edits(status="revoked").items] == [ids[2]]
    assert repo.count_active() == 6


def test_revoke_restore_events_in_order(repo: Repository) -> None:
    rec = repo.create_edit(new_edit())
    revoked, changed = repo.revoke(rec.id, "bob")
    assert changed and revoked.status == "revoked" and revoked.revoked_by == "bob" and revoked.revoked_at
    again, changed = repo.revoke(rec.id, "carol")
    assert not changed and again.revoked_by == "bob"  # a repeated revoke is a no-op
    assert repo.active_key_counts() == {}
    restored, changed = repo.restore(rec.id, "carol")
    assert changed and restored.status == "active"
    _, changed = repo.restore(rec.id, "carol")
    assert not changed
    events = repo.list_events(rec.id).items
    assert [(e.kind, e.actor) for e in events] == [
        ("created", "alice"),
        ("revoked", "bob"),
        ("restored", "carol"),
    ]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    with pytest.raises(EditNotFound):
        repo.revoke("ed_missing", "bob")
    with pytest.raises(EditNotFound):
        repo.restore("ed_missing", "bob")


def test_events_follow_the_global_log(repo: Repository) -> None:
    a = repo.create_edit(new_edit("a"))
    b = repo.create_edit(new_edit("b"), supersedes=[Supersession(a.id, 0.9995)])
    repo.revoke(a.id, "bob")
    log = repo.list_events(limit=2)
    assert [(e.edit_id, e.kind) for e in log.items] == [(a.id, "created"), (b.id, "created")]
    assert log.has_more
    rest = repo.list_events(after=log.last_seq)
    assert [(e.edit_id, e.kind) for e in rest.items] == [(a.id, "superseded"), (a.id, "revoked")]
    assert rest.items[0].detail == {"by": b.id, "similarity": 0.9995} and rest.items[0].actor == "alice"
    assert not rest.has_more


def test_a_replica_reads_the_log_from_its_cursor_and_asks_again_for_skipped_numbers(repo: Repository) -> None:
    assert repo.last_event_seq() == 0 and repo.events_since(0) == []
    a = repo.create_edit(new_edit("a"))
    cursor = repo.last_event_seq()
    b = repo.create_edit(new_edit("b"))
    repo.revoke(a.id, "bob")
    since = repo.events_since(cursor)
    assert [edit_id for _, edit_id in since] == [b.id, a.id] and since[0][0] > cursor
    assert repo.events_since(since[-1][0]) == []
    # A number below the cursor asked for again (it may have committed late): returned with the new ones.
    assert repo.events_since(since[-1][0], also=[cursor]) == [(cursor, a.id)]
    assert repo.statuses([a.id, b.id, "ed_missing"]) == {a.id: "revoked", b.id: "active"}


def test_idempotency_lookup_and_unique_key(repo: Repository) -> None:
    rec = repo.create_edit(new_edit(idempotency_key="k-1", request_hash="h" * 64))
    found = repo.find_by_idempotency_key("k-1")
    assert found is not None and found.id == rec.id and found.request_hash == "h" * 64
    assert repo.find_by_idempotency_key("k-2") is None
    with pytest.raises(IdempotencyKeyTaken):
        repo.create_edit(new_edit("other", idempotency_key="k-1", request_hash="x" * 64))
    assert len(repo.list_edits().items) == 1


def test_active_payloads_and_keys_skip_revoked(repo: Repository) -> None:
    a = repo.create_edit(new_edit("a"))
    b = repo.create_edit(new_edit("b", keys=[KeyRow("raw", vec(1, 2, 3), 3)]))
    c = repo.create_edit(new_edit("c"))
    repo.revoke(b.id, "bob")
    assert [p.edit.id for p in repo.active_payloads()] == [a.id, c.id]
    assert [len(p.keys) for p in repo.active_payloads()] == [2, 2]
    assert repo.active_key_counts() == {a.id: 2, c.id: 2}
    assert repo.active_key_kinds() == {"chat": 2, "raw": 2}


def test_events_table_is_append_only(repo: Repository, db: Engine) -> None:
    repo.create_edit(new_edit())
    for statement in ("UPDATE events SET actor = 'mallory'", "DELETE FROM events"):
        with pytest.raises(DBAPIError, match="append-only"), db.begin() as conn:
            conn.execute(text(statement))
    assert [e.actor for e in repo.list_events().items] == ["alice"]


def test_the_database_refuses_unknown_statuses_and_event_kinds(repo: Repository, db: Engine) -> None:
    edit = repo.create_edit(new_edit())
    refused = {
        "ck_edits_status": f"UPDATE edits SET status = 'deleted' WHERE id = '{edit.id}'",
        "ck_events_kind": "INSERT INTO events (edit_id, kind, actor, at, detail) "
        f"VALUES ('{edit.id}', 'tampered', 'mallory', CURRENT_TIMESTAMP, '{{}}')",
    }
    for constraint, statement in refused.items():
        with pytest.raises(DBAPIError, match=constraint), db.begin() as conn:
            conn.execute(text(statement))
    found = repo.get_edit(edit.id)
    assert found is not None and found.status == EditStatus.ACTIVE
    assert [e.kind for e in repo.list_events().items] == [EventKind.CREATED]


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path: Path) -> None:
    eng = make_db_engine(sqlite_url(tmp_path / "x" / "sola.db"))  # creates the parent folder
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    eng.dispose()


def test_edits_filter_by_actor_text_metadata_and_time_on_each_database(repo: Repository) -> None:
    from datetime import timedelta

    from storage.models import utcnow
    from storage.repository import EditFilters

    a = repo.create_edit(new_edit("Who founded Velmora 100% Co_op?", metadata={"ticket": "T-9", "n": "1"}))
    b = repo.create_edit(new_edit("Who founded Ostmark?", created_by="bob", target="Hilde"))

    def ids(**kw: object) -> list[str]:
        return [e.id for e in repo.list_edits(filters=EditFilters(**kw)).items]  # type: ignore[arg-type]

    assert ids(actor="bob") == [b.id] and ids(text="VELMORA") == [a.id] and ids(text="hilde") == [b.id]
    assert ids(text="100% co_op") == [a.id] and ids(text="0%_co") == []  # LIKE wildcards are literal here
    assert ids(metadata={"ticket": "T-9"}) == [a.id] and ids(metadata={"ticket": "T-9", "n": "2"}) == []
    now = utcnow()
    assert (
        ids(created_from=now - timedelta(minutes=5)) == [a.id, b.id]
        and ids(created_to=now - timedelta(minutes=5)) == []
    )


def test_a_superseded_edit_names_its_active_successor(repo: Repository) -> None:
    from storage.repository import Supersession

    old = repo.create_edit(new_edit())
    new = repo.create_edit(new_edit(), [Supersession(older_id=old.id, similarity=0.999)])
    got = repo.get_edit(old.id)
    assert got is not None and got.superseded_by == new.id
    assert repo.list_events(new.id, kind="created").items[0].detail["supersedes"] == [
        {"edit_id": old.id, "similarity": 0.999}
    ]
    repo.revoke(new.id, "alice", "wrong")
    got = repo.get_edit(old.id)
    assert got is not None and got.superseded_by is None
    assert repo.list_events(new.id, kind="revoked", actor="alice").items[0].detail == {"reason": "wrong"}
