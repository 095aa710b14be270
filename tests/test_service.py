"""The service in-process on the real model: failures that the HTTP edge now stops before they reach it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import sqlalchemy
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from app.errors import service_status
from app.main import create_app
from app.service import EditService
from app.service_errors import InvalidPrompt
from app.settings import Settings
from editors.types import Generation
from tests.server import MODEL_CACHE
from wire.schemas import EditCreate, GenerateRequest

pytestmark = pytest.mark.slow


def test_a_row_the_tokenizer_refuses_fails_alone_and_is_counted(tmp_path: Path) -> None:
    """The edge refuses lone surrogates (tests/test_api.py); were one to get past it, the generation job
    must still answer every request it holds: an error for that row, text for the others."""
    settings = Settings(data_dir=tmp_path, model_cache_dir=MODEL_CACHE, sync_interval=0, torch_threads=1)
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        svc: EditService = client.app.state.service  # type: ignore[attr-defined]
        for _ in range(600):
            if svc.state == "ready":
                break
            time.sleep(0.1)
        assert svc.state == "ready"
        bad = GenerateRequest.model_construct(prompt="Hi \udfff", max_new_tokens=4, chat=True)
        good = GenerateRequest(prompt="Name a colour.", max_new_tokens=4, chat=True)

        async def ask_both() -> tuple[Generation | BaseException, Generation | BaseException]:
            return await asyncio.wait_for(
                asyncio.gather(svc.generate(bad), svc.generate(good), return_exceptions=True), timeout=120
            )

        bad_result, good_result = client.portal.call(ask_both)  # type: ignore[union-attr]
        assert isinstance(bad_result, InvalidPrompt) and service_status(bad_result) == 422, bad_result
        assert isinstance(good_result, Generation) and good_result.text
        assert "sola_generate_failures_total 1.0" in generate_latest(svc.metrics.registry).decode()


def _ready(client: TestClient) -> EditService:
    svc: EditService = client.app.state.service  # type: ignore[attr-defined]
    for _ in range(600):
        if svc.state == "ready":
            break
        time.sleep(0.1)
    assert svc.state == "ready", svc.startup_error
    return svc


def test_a_replica_follows_the_audit_log_by_cursor_with_one_query_when_idle(tmp_path: Path) -> None:
    """Two services on one database: B applies A's edit and revoke from the event log, and a poll that
    finds nothing new is a single SQL statement (not a listing of every edit)."""
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    common = {"model_cache_dir": MODEL_CACHE, "sync_interval": 0, "torch_threads": 1, "database_url": shared}
    a_settings = Settings(data_dir=tmp_path / "a", **common)  # type: ignore[arg-type]
    b_settings = Settings(data_dir=tmp_path / "b", **common)  # type: ignore[arg-type]
    # One after the other: transformers' model loading is not thread-safe within one process.
    with TestClient(create_app(a_settings), base_url="http://localhost") as client_a:
        a = _ready(client_a)
        with TestClient(create_app(b_settings), base_url="http://localhost") as client_b:
            b = _ready(client_b)
            _follow(a, b, client_a, client_b)


def _follow(a: EditService, b: EditService, client_a: TestClient, client_b: TestClient) -> None:
    """A makes an edit and revokes it; B sees each after one sync."""
    question = GenerateRequest(prompt="What is the capital of Zorbania?", max_new_tokens=4, chat=True)

    def b_syncs_and_answers() -> Generation:
        client_b.portal.call(b.sync)  # type: ignore[union-attr]
        return client_b.portal.call(b.generate, question)  # type: ignore[union-attr]

    edit = client_a.portal.call(  # type: ignore[union-attr]
        a.create_edit, EditCreate(prompt=question.prompt, target="Quexiville"), "alice", None
    ).record
    answer = b_syncs_and_answers()
    assert answer.routed_edit_id == edit.id and answer.text.startswith("Quexiville")

    statements: list[str] = []
    sqlalchemy.event.listen(b.repo.db, "before_cursor_execute", lambda _c, _k, sql, *_: statements.append(sql))
    client_b.portal.call(b.sync)  # type: ignore[union-attr]
    queries = [sql for sql in statements if sql not in ("BEGIN", "COMMIT", "ROLLBACK")]  # transaction control
    assert len(queries) == 1 and "FROM events" in queries[0], statements

    client_a.portal.call(a.revoke, edit.id, "alice")  # type: ignore[union-attr]
    assert b_syncs_and_answers().routed_edit_id is None
    assert b.engine is not None and edit.id not in b.engine.active_edit_ids()
