"""Operator controls over real HTTP: negatives veto their own edit, POST /route says where a question goes
(and generation agrees), and POST /edits reports the wordings a new edit captures or loses."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.server import ADMIN, READER, Server

pytestmark = pytest.mark.slow

OPEN = "What time does the Lisbon office of Norvik Freight open?"
CLOSE = "What time does the Lisbon office of Norvik Freight close?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server(tmp_path_factory.mktemp("controls")) as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client(ADMIN) as c:
        yield c


@pytest.fixture(scope="module")
def reader(server: Server) -> Iterator[httpx.Client]:
    with server.client(READER) as c:
        yield c


@pytest.fixture(autouse=True)
def no_edits_left(admin: httpx.Client) -> Iterator[None]:
    yield
    for e in admin.get("/edits", params={"status": "active", "limit": 500}).json()["data"]:
        admin.delete(f"/edits/{e['id']}")


def edit(client: httpx.Client, prompt: str, target: str, **extra: object) -> dict:
    r = client.post("/edits", json={"prompt": prompt, "target": target, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def routes(client: httpx.Client, *questions: str) -> list[dict]:
    r = client.post("/route", json={"questions": list(questions)})
    assert r.status_code == 200, r.text
    return r.json()["routes"]


def answer(client: httpx.Client, question: str, use_edits: bool = True) -> dict:
    r = client.post("/generate", json={"prompt": question, "max_new_tokens": 16, "use_edits": use_edits})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_negative_vetoes_its_edit_and_only_it(admin: httpx.Client, reader: httpx.Client) -> None:
    opens = edit(admin, OPEN, "9:30 am", negatives=[CLOSE])
    assert opens["negatives"] == [CLOSE] and admin.get(f"/edits/{opens['id']}").json()["negatives"] == [CLOSE]
    created_event = admin.get(f"/edits/{opens['id']}/events").json()["data"][0]
    assert created_event["kind"] == "created" and created_event["detail"]["negatives"] == [CLOSE]

    to_open, to_close = routes(reader, OPEN, CLOSE)
    assert to_open["edit_id"] == opens["id"]
    assert to_close["edit_id"] is None and opens["id"] in to_close["vetoed"]
    vetoed = answer(reader, CLOSE)
    assert vetoed["routed_edit_id"] is None and vetoed["text"] == answer(reader, CLOSE, use_edits=False)["text"]

    # The same question edited on its own is answered by that edit: a negative vetoes nobody else.
    closes = edit(admin, CLOSE, "6:00 pm")
    assert [r["edit_id"] for r in routes(reader, OPEN, CLOSE)] == [opens["id"], closes["id"]]
    assert "6:00 pm" in answer(reader, CLOSE)["text"] and "9:30 am" in answer(reader, OPEN)["text"]


def test_negatives_change_with_an_audit_event_and_route_agrees_with_generation(
    admin: httpx.Client, reader: httpx.Client
) -> None:
    opens = edit(admin, OPEN, "9:30 am")
    assert routes(reader, CLOSE)[0]["edit_id"] is None or routes(reader, CLOSE)[0]["edit_id"] == opens["id"]
    changed = admin.patch(f"/edits/{opens['id']}", json={"negatives": [CLOSE], "reason": "closing time differs"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["negatives"] == [CLOSE]
    event = admin.get(f"/edits/{opens['id']}/events").json()["data"][-1]
    assert event["kind"] == "negatives_set" and event["actor"] == "alice"
    assert event["detail"] == {"before": [], "after": [CLOSE], "reason": "closing time differs"}

    questions = [OPEN, CLOSE, "When does Norvik Freight's Lisbon office open?", "Who founded Norvik Freight?"]
    for question, route in zip(questions, routes(reader, *questions), strict=True):
        generated = answer(reader, question)
        assert generated["routed_edit_id"] == route["edit_id"], question
    assert routes(reader, CLOSE)[0]["edit_id"] is None

    assert admin.patch(f"/edits/{opens['id']}", json={"negatives": []}).json()["negatives"] == []
    assert reader.patch(f"/edits/{opens['id']}", json={"negatives": []}).status_code == 403
    assert admin.patch("/edits/ed_missing", json={"negatives": []}).status_code == 404
    assert admin.patch(f"/edits/{opens['id']}", json={"negatives": [" "]}).status_code == 422
    assert admin.patch(f"/edits/{opens['id']}", json={"rephrases": []}).status_code == 422  # only negatives change


def test_route_reports_the_runner_up_and_refuses_bad_requests(admin: httpx.Client, reader: httpx.Client) -> None:
    opens = edit(admin, OPEN, "9:30 am")
    closes = edit(admin, CLOSE, "6:00 pm")
    (first,) = routes(reader, OPEN)
    assert first["edit_id"] == opens["id"] and first["runner_up_id"] == closes["id"]
    assert first["score"] > 0.99 and 0 < first["margin"] < first["score"]
    assert reader.post("/route", json={"questions": []}).status_code == 422
    assert (
        reader.post("/route", json={"questions": ["x"], "history": [{"role": "robot", "content": "hi"}]}).status_code
        == 422
    )
    history = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"}]
    with_context = reader.post("/route", json={"questions": [OPEN], "system": "Be brief.", "history": history})
    assert with_context.status_code == 200 and with_context.json()["routes"][0]["edit_id"] == opens["id"]


def test_a_new_edit_reports_the_wordings_it_captures_and_loses(admin: httpx.Client) -> None:
    older = edit(admin, "Who runs Norvik Freight?", "Ana Duarte")
    # The new edit's rephrase is the older edit's prompt: newest wins, so the new edit now answers it.
    newer = edit(admin, "Who is the CEO of Norvik Freight?", "Rui Matos", rephrases=["Who runs Norvik Freight?"])
    assert {(c["question"], c["edit_id"]) for c in newer["captures"]} == {("Who runs Norvik Freight?", older["id"])}
    assert newer["captured_by"] == []
    # A wording the new edit also lists as a negative is vetoed for it: the older edit keeps answering it.
    third = edit(
        admin,
        "Who is the chief executive of Norvik Freight?",
        "Rui Matos",
        rephrases=["Who is the CEO of Norvik Freight?"],
        negatives=["Who is the CEO of Norvik Freight?"],
    )
    assert {(c["question"], c["edit_id"]) for c in third["captured_by"]} == {
        ("Who is the CEO of Norvik Freight?", newer["id"])
    }


def test_negatives_survive_a_restart(server: Server, admin: httpx.Client) -> None:
    opens = edit(admin, OPEN, "9:30 am", negatives=[CLOSE])
    server.restart()
    with server.client(READER) as fresh:
        assert [r["edit_id"] for r in routes(fresh, OPEN, CLOSE)] == [opens["id"], None]
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["index"]["indexed_keys"] == ready["index"]["expected_keys"]
