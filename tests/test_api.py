"""End to end over real HTTP against one server (SQLite, real SmolLM2-135M) shared by this module."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server import ADMIN, ADMIN2, READER, Server

pytestmark = pytest.mark.slow

ZORBANIA = "What is the capital of Zorbania?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Large char limit so an over-long prompt reaches the token-count check (413 from the model's context).
    with Server(tmp_path_factory.mktemp("api"), SOLA_MAX_PROMPT_CHARS="200000", SOLA_MAX_BODY_BYTES="600000") as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client(ADMIN) as c:
        yield c


@pytest.fixture(scope="module")
def reader(server: Server) -> Iterator[httpx.Client]:
    with server.client(READER) as c:
        yield c


def edit(client: httpx.Client, prompt: str, target: str, **extra: object) -> dict:
    r = client.post("/edits", json={"prompt": prompt, "target": target, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def gen(client: httpx.Client, prompt: str, chat: bool = True, max_new_tokens: int = 16) -> dict:
    r = client.post("/generate", json={"prompt": prompt, "chat": chat, "max_new_tokens": max_new_tokens})
    assert r.status_code == 200, r.text
    return r.json()


def test_health_and_readiness(server: Server) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok" and ready.json()["phase"] == "ready"


def test_edit_routes_and_revoke_gives_back_the_base_text_exactly(admin: httpx.Client, reader: httpx.Client) -> None:
    before_chat, before_raw = gen(reader, ZORBANIA), gen(reader, ZORBANIA, chat=False)
    assert before_chat["routed_edit_id"] is None and "Quexiville" not in before_chat["text"]

    created = edit(admin, ZORBANIA, "Quexiville", rephrases=["Which city is Zorbania's capital?"], metadata={"t": 1})
    assert created["status"] == "active" and created["created_by"] == "alice"
    assert created["rephrases"] == ["Which city is Zorbania's capital?"] and created["metadata"] == {"t": 1}
    assert created["negatives"] == []
    assert created["base_model"] and created["train"]["steps"] >= 1 and created["train"]["seconds"] > 0
    assert created.pop("supersedes") == []  # the create response also names the edits it overlaps
    assert created.pop("captures") == [] and created.pop("captured_by") == []  # and wordings that move
    assert admin.get(f"/edits/{created['id']}").json() == created

    after = gen(reader, ZORBANIA)
    assert "Quexiville" in after["text"] and after["routed_edit_id"] == created["id"]
    assert after["similarity"] is not None and after["model"] == before_chat["model"]
    assert "Quexiville" in gen(reader, ZORBANIA, chat=False)["text"]

    revoked = admin.delete(f"/edits/{created['id']}", params={"reason": "wrong capital (T-2)"})
    assert revoked.status_code == 200
    body = revoked.json()
    assert body["status"] == "revoked" and body["revoked_by"] == "alice" and body["revoked_at"]
    again = admin.delete(f"/edits/{created['id']}", params={"reason": "second thoughts"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_revoked"
    revocation = again.json()["error"]["revocation"]
    assert revocation["revoked_by"] == "alice" and revocation["reason"] == "wrong capital (T-2)"
    assert "second thoughts" not in str(admin.get(f"/edits/{created['id']}/events").json())  # not recorded
    assert gen(reader, ZORBANIA) == before_chat  # exactly the unedited text, no routing
    assert gen(reader, ZORBANIA, chat=False) == before_raw

    restored = admin.post(f"/edits/{created['id']}/restore", json={"reason": "the capital was right after all"})
    assert restored.status_code == 200 and restored.json()["status"] == "active"
    again = admin.post(f"/edits/{created['id']}/restore")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_active"
    assert restored.json()["revoked_at"] is None and restored.json()["revoked_by"] is None
    assert gen(reader, ZORBANIA)["routed_edit_id"] == created["id"]
    kinds = [e["kind"] for e in reader.get(f"/edits/{created['id']}/events").json()["data"]]
    assert kinds == ["created", "revoked", "restored"]  # the refused repeats logged nothing
    restored_event = reader.get(f"/edits/{created['id']}/events").json()["data"][-1]
    assert restored_event["detail"] == {"reason": "the capital was right after all"}


def test_audit_log_order_and_actors(server: Server, reader: httpx.Client) -> None:
    with server.client(ADMIN) as alice, server.client(ADMIN2) as bob:
        e = edit(alice, "Who painted the mural Blue Tide?", "Ilsa Varn")
        bob.delete(f"/edits/{e['id']}").raise_for_status()
        alice.post(f"/edits/{e['id']}/restore").raise_for_status()
        bob.delete(f"/edits/{e['id']}").raise_for_status()
    events = reader.get(f"/edits/{e['id']}/events").json()
    got = [(ev["kind"], ev["actor"]) for ev in events["data"]]
    assert got == [("created", "alice"), ("revoked", "bob"), ("restored", "alice"), ("revoked", "bob")]
    seqs = [ev["seq"] for ev in events["data"]]
    assert seqs == sorted(seqs) and all(ev["edit_id"] == e["id"] for ev in events["data"])
    assert events["data"][0]["detail"]["steps"] >= 1
    # The global log, followed page by page with its cursor, holds the same events in the same order.
    follow, after = [], None
    while True:
        page = reader.get("/events", params={"limit": 2, **({"after": after} if after else {})}).json()
        follow += page["data"]
        if not page["has_more"]:
            assert page["next_after"] is None
            break
        after = page["next_after"]
    assert [ev for ev in follow if ev["edit_id"] == e["id"]] == events["data"]
    assert [ev["seq"] for ev in follow] == sorted(ev["seq"] for ev in follow)


def test_newer_edit_supersedes_and_revoking_it_brings_the_older_back(admin: httpx.Client, reader: httpx.Client) -> None:
    prompt = "What is the national animal of Velmora?"
    old = edit(admin, prompt, "the silver heron")
    assert "silver heron" in gen(reader, prompt)["text"]
    assert old["supersedes"] == [] and old["superseded_by"] is None
    new = edit(admin, prompt, "the red lynx")
    # The overlap is said in the response and in the new edit's `created` event, never silent.
    assert [o["edit_id"] for o in new["supersedes"]] == [old["id"]] and new["supersedes"][0]["similarity"] > 0.99
    created = reader.get(f"/edits/{new['id']}/events").json()["data"][0]
    assert created["detail"]["supersedes"] == new["supersedes"]
    assert (created["detail"]["prompt"], created["detail"]["target"]) == (prompt, "the red lynx")
    answer = gen(reader, prompt)
    assert "red lynx" in answer["text"] and answer["routed_edit_id"] == new["id"]
    old_events = reader.get(f"/edits/{old['id']}/events").json()["data"]
    assert [e["kind"] for e in old_events] == ["created", "superseded"]
    assert old_events[1]["detail"]["by"] == new["id"] and old_events[1]["detail"]["similarity"] > 0.99
    shown = reader.get(f"/edits/{old['id']}").json()
    assert shown["status"] == "active" and shown["superseded_by"] == new["id"]  # superseded, not revoked
    admin.request("DELETE", f"/edits/{new['id']}", json={"reason": "wrong animal"}).raise_for_status()
    revoked = reader.get("/events", params={"kind": "revoked", "edit_id": new["id"]}).json()["data"]
    assert [(e["actor"], e["detail"]) for e in revoked] == [("alice", {"reason": "wrong animal"})]
    assert reader.get(f"/edits/{old['id']}").json()["superseded_by"] is None  # it answers again
    answer = gen(reader, prompt)
    assert "silver heron" in answer["text"] and answer["routed_edit_id"] == old["id"]


def test_every_answer_names_the_nearest_edit_and_can_skip_edits(admin: httpx.Client, reader: httpx.Client) -> None:
    prompt = "Who is the head brewer of Ostmark Abbey?"
    made = edit(admin, prompt, "Hilde Vantreck")
    unrelated = gen(reader, "Name a primary colour.")
    assert unrelated["routed_edit_id"] is None  # did not fire, yet the nearest edit and its score are shown
    assert unrelated["nearest_edit_id"] is not None and 0.0 <= unrelated["similarity"] < 0.4
    routed = gen(reader, prompt)
    assert routed["routed_edit_id"] == routed["nearest_edit_id"] == made["id"] and routed["similarity"] > 0.99
    r = reader.post("/generate", json={"prompt": prompt, "chat": True, "max_new_tokens": 16, "use_edits": False})
    base = r.json()
    assert (base["routed_edit_id"], base["nearest_edit_id"], base["similarity"]) == (None, None, None)
    assert "Vantreck" not in base["text"] and "Vantreck" in routed["text"]


def test_edits_and_events_filter_by_actor_text_metadata_and_time(admin: httpx.Client, reader: httpx.Client) -> None:
    from tests.server import ADMIN2

    made = edit(admin, "Which river flows through Quarnholt?", "the Vessa", metadata={"ticket": "OPS-77"})
    with httpx.Client(base_url=str(admin.base_url), headers={"Authorization": f"Bearer {ADMIN2}"}, timeout=300) as bob:
        by_bob = edit(bob, "Which river flows through Quarnholt Minor?", "the Ilse", metadata={"ticket": "OPS-78"})

    def ids(**params: str) -> list[str]:
        r = reader.get("/edits", params={"limit": 500, **params})
        assert r.status_code == 200, r.text
        return [e["id"] for e in r.json()["data"]]

    assert made["id"] in ids(q="quarnholt") and by_bob["id"] in ids(q="QUARNHOLT")
    assert ids(q="quarnholt", actor="bob") == [by_bob["id"]]
    assert ids(metadata="ticket=OPS-77") == [made["id"]]
    assert ids(q="the vessa") == [made["id"]]  # the target is searched too
    assert ids(q="quarnholt", created_to="2000-01-01T00:00:00Z") == []
    assert set(ids(q="quarnholt", created_from="2000-01-01T00:00:00Z")) == {made["id"], by_bob["id"]}
    assert reader.get("/edits", params={"metadata": "ticket"}).status_code == 422
    bobs = reader.get("/events", params={"actor": "bob", "kind": "created"}).json()["data"]
    assert [e["edit_id"] for e in bobs] == [by_bob["id"]]
    assert reader.get("/events", params={"kind": "exploded"}).status_code == 422


def test_same_template_questions_about_distinct_subjects_never_merge(admin: httpx.Client, reader: httpx.Client) -> None:
    """Their keys are 0.999+ alike by cosine; supersession means the same question, and these are two."""
    first = edit(admin, "Who wrote the anthem of Zor6x2?", "Ilsa Brandt")
    second = edit(admin, "Who wrote the anthem of Zor6x6?", "Omar Quell")
    assert [e["kind"] for e in reader.get(f"/edits/{first['id']}/events").json()["data"]] == ["created"]
    for created, target in ((first, "Ilsa"), (second, "Omar")):
        answer = gen(reader, created["prompt"])
        assert answer["routed_edit_id"] == created["id"] and target in answer["text"]


def test_list_paginates_with_cursor_and_status_filter(admin: httpx.Client, reader: httpx.Client) -> None:
    a = edit(admin, "Which river flows through Tarnholm?", "the Ossel")
    b = edit(admin, "Who founded the city of Brisk?", "Orla Menn")
    admin.delete(f"/edits/{b['id']}").raise_for_status()

    def collect(**params: str) -> list[dict]:
        items, after = [], None
        while True:
            r = reader.get("/edits", params={"limit": 1, **params, **({"after": after} if after else {})})
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["data"]) <= 1
            items += page["data"]
            if not page["has_more"]:
                assert page["next_after"] is None
                return items
            after = page["next_after"]

    everything = collect()
    ids = [e["id"] for e in everything]
    assert len(ids) == len(set(ids)) and ids.index(a["id"]) < ids.index(b["id"])  # oldest first
    assert [e["id"] for e in reader.get("/edits", params={"limit": 500}).json()["data"]] == ids
    active, revoked = collect(status="active"), collect(status="revoked")
    assert all(e["status"] == "active" for e in active) and all(e["status"] == "revoked" for e in revoked)
    assert a["id"] in {e["id"] for e in active} and b["id"] in {e["id"] for e in revoked}
    assert len(active) + len(revoked) == len(everything)


def test_idempotency_key_replays_without_training_again(admin: httpx.Client, reader: httpx.Client) -> None:
    body = {"prompt": "What is the currency of Quelland?", "target": "the brass mark"}
    first = admin.post("/edits", json=body, headers={"Idempotency-Key": "req-42"})
    assert first.status_code == 201
    total = len(reader.get("/edits", params={"limit": 500}).json()["data"])
    log_size = len(reader.get("/events", params={"limit": 500}).json()["data"])
    retry = admin.post("/edits", json=body, headers={"Idempotency-Key": "req-42"})
    assert retry.status_code == 201 and retry.json() == first.json()
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert len(reader.get("/edits", params={"limit": 500}).json()["data"]) == total  # no second edit
    assert len(reader.get("/events", params={"limit": 500}).json()["data"]) == log_size  # nothing trained/logged
    other = admin.post("/edits", json={**body, "target": "the iron mark"}, headers={"Idempotency-Key": "req-42"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"


def test_auth_roles(server: Server) -> None:
    body = {"prompt": "p", "target": "t"}
    with server.client(None) as anon, server.client("wrong") as bad, server.client(READER) as reader:
        for client in (anon, bad):
            for method, path, kw in [
                ("GET", "/edits", {}),
                ("POST", "/generate", {"json": {"prompt": "hi"}}),
                ("POST", "/edits", {"json": body}),
                ("GET", "/events", {}),
            ]:
                r = client.request(method, path, json=kw.get("json"))
                assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
        some_id = reader.get("/edits").json()["data"][0]["id"]
        for method, path in [
            ("POST", "/edits"),
            ("DELETE", f"/edits/{some_id}"),
            ("POST", f"/edits/{some_id}/restore"),
        ]:
            r = reader.request(method, path, json=body if method == "POST" else None)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert reader.get(f"/edits/{some_id}").status_code == 200
        assert reader.post("/generate", json={"prompt": "Hello", "max_new_tokens": 2}).status_code == 200
        for path in ("/metrics", "/openapi.json", "/docs", "/redoc"):  # any key, unless SOLA_PUBLIC_*
            assert reader.get(path).status_code == 200
            assert anon.get(path).status_code == 401 and bad.get(path).status_code == 401
        # Authentication comes before parsing: a caller without a key learns nothing about its body.
        for client in (anon, bad):
            junk = client.post("/edits", content=b"{not json", headers={"content-type": "application/json"})
            assert junk.status_code == 401
            assert client.post("/generate", json={"prompt": 3}).status_code == 401
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # probes need no key
    assert httpx.get(f"{server.url}/readyz").status_code == 200


BAD_GENERATE = [
    ({}, 422),
    ({"prompt": ""}, 422),
    ({"prompt": "   "}, 422),
    ({"prompt": None}, 422),
    ({"prompt": 12}, 422),
    ({"prompt": ["a"]}, 422),
    ({"prompt": "hi", "max_new_tokens": 0}, 422),
    ({"prompt": "hi", "max_new_tokens": -5}, 422),
    ({"prompt": "hi", "max_new_tokens": 513}, 422),
    ({"prompt": "hi", "max_new_tokens": "8"}, 422),
    ({"prompt": "hi", "max_new_tokens": 1.5}, 422),
    ({"prompt": "hi", "chat": "yes"}, 422),
    ({"prompt": "hi", "unknown": 1}, 422),
    ({"prompt": "word " * 9000}, 413),  # longer than the model's context
    ({"prompt": "x" * 200_001}, 413),  # over the character limit
]
BAD_EDITS = [
    ({}, 422),
    ({"prompt": "p"}, 422),
    ({"target": "t"}, 422),
    ({"prompt": "", "target": "t"}, 422),
    ({"prompt": "p", "target": ""}, 422),
    ({"prompt": "p", "target": " \n"}, 422),
    ({"prompt": 1, "target": "t"}, 422),
    ({"prompt": "p", "target": "t", "rephrases": "r"}, 422),
    ({"prompt": "p", "target": "t", "rephrases": [""]}, 422),
    ({"prompt": "p", "target": "t", "rephrases": [3]}, 422),
    ({"prompt": "p", "target": "t", "rephrases": ["r"] * 17}, 422),
    ({"prompt": "p", "target": "t", "metadata": []}, 422),
    ({"prompt": "p", "target": "t", "metadata": "m"}, 422),
    ({"prompt": "p", "target": "x" * 1001}, 413),
    ({"prompt": "word " * 9000, "target": "t"}, 413),
    ({"prompt": "0," * 1999, "target": "t"}, 413),  # ~4,000 tokens: fits the context, over SOLA_MAX_PROMPT_TOKENS
    ({"prompt": "p", "target": "t", "negatives": ["0," * 1999]}, 413),
]


@pytest.mark.parametrize(("body", "status"), BAD_GENERATE)
def test_bad_generate_requests(reader: httpx.Client, body: dict, status: int) -> None:
    check_error(reader.post("/generate", json=body), status)


@pytest.mark.parametrize(("body", "status"), BAD_EDITS)
def test_bad_edit_requests(admin: httpx.Client, body: dict, status: int) -> None:
    check_error(admin.post("/edits", json=body), status)


def test_other_client_mistakes(admin: httpx.Client, tmp_path: Path) -> None:
    cases = [
        admin.post("/generate", content=b"{not json", headers={"content-type": "application/json"}),
        admin.post("/generate", content=b"", headers={"content-type": "application/json"}),
        admin.post("/generate", content=b"x" * 700_000, headers={"content-type": "application/json"}),
        admin.post("/edits", json={"prompt": "p", "target": "t"}, headers={"Idempotency-Key": ""}),
        admin.get("/edits/ed_doesnotexist"),
        admin.get("/edits/ed_doesnotexist/events"),
        admin.delete("/edits/ed_doesnotexist"),
        admin.post("/edits/ed_doesnotexist/restore"),
        admin.get("/edits", params={"after": "garbage!"}),
        admin.get("/edits", params={"after": "ZXZpbDox"}),  # valid base64, not our cursor
        admin.get("/edits", params={"limit": 0}),
        admin.get("/edits", params={"limit": "ten"}),
        admin.get("/edits", params={"status": "deleted"}),
        admin.get("/events", params={"after": "-3"}),
        admin.get("/events", params={"after": "1e9"}),
        admin.get("/edits/ed_x/events", params={"after": "abc"}),
        admin.put("/edits"),
        admin.get("/no/such/route"),
    ]
    expected = [400, 422, 413, 422, 404, 404, 404, 404, 400, 400, 422, 422, 422, 400, 400, 400, 405, 404]
    for response, status in zip(cases, expected, strict=True):
        check_error(response, status)


def check_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    error = response.json()["error"]
    assert isinstance(error["code"], str) and error["code"] and isinstance(error["message"], str)


def test_metrics_exposed(server: Server, admin: httpx.Client) -> None:
    text = admin.get("/metrics").text
    active = len(admin.get("/edits", params={"status": "active", "limit": 500}).json()["data"])
    assert f"sola_edits_active {float(active)}" in text
    assert "sola_edit_train_seconds_count" in text and "sola_edit_train_seconds_count 0.0" not in text
    assert 'sola_http_requests_total{method="POST",route="/edits",status="201"}' in text
    assert 'sola_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/edits"}' in text

    def value(name: str) -> float:
        return sum(float(line.split()[-1]) for line in admin.get("/metrics").text.splitlines() if line.startswith(name))

    made = edit(admin, "What is the motto of Brellick College?", "Lux in Umbra")
    routed, unrouted, tokens = (
        value('sola_queries_total{routed="true"}'),
        value('sola_queries_total{routed="false"}'),
        value("sola_tokens_generated_total"),
    )
    answer = gen(admin, made["prompt"], max_new_tokens=4)
    gen(admin, "Name a primary colour.", max_new_tokens=4)
    assert (
        value('sola_queries_total{routed="true"}') == routed + 1
        and value('sola_queries_total{routed="false"}') == unrouted + 1
    )
    assert value("sola_tokens_generated_total") > tokens and answer["routed_edit_id"] == made["id"]
    assert value(f'sola_edit_hits{{edit_id="{made["id"]}"}}') >= 1.0
    assert "sola_generate_queue_depth 0.0" in admin.get("/metrics").text  # nothing waiting once answered


def test_concurrent_queries_are_batched_and_routed_per_row(server: Server, admin: httpx.Client) -> None:
    first = edit(admin, "Which mountain is the tallest in Korrath?", "Mount Ebbel")

    def steps() -> tuple[float, float]:
        """Decode steps so far, and the rows they decoded in all."""
        lines = admin.get("/metrics").text.splitlines()
        count, total = (
            float(next(line.split()[-1] for line in lines if line.startswith(f"sola_generate_batch_size_{part}")))
            for part in ("count", "sum")
        )
        return count, total

    before = steps()
    korrath = "Which mountain is the tallest in Korrath?"
    prompts = [korrath, "Name a primary colour.", korrath, "What do bees make?", "Who is Pellun?", "What do bees make?"]
    results: dict[int, dict] = {}

    def ask(i: int) -> None:
        with server.client(READER) as c:
            results[i] = gen(c, prompts[i], max_new_tokens=8)

    # The edit below keeps the model worker busy training; the queries queue up meanwhile and are then
    # decoded together, each row routed on its own.
    trainer = threading.Thread(target=edit, args=(admin, "Who discovered the island of Pellun?", "Admiral Soth"))
    trainer.start()
    time.sleep(0.3)
    askers = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in askers:
        t.start()
    for t in [trainer, *askers]:
        t.join(timeout=120)
    assert len(results) == len(prompts)
    for i in (0, 2):
        assert results[i]["routed_edit_id"] == first["id"] and "Ebbel" in results[i]["text"]
    for i in (1, 3, 5):
        assert results[i]["routed_edit_id"] is None
    assert results[3]["text"] == results[5]["text"]
    after = steps()
    assert (after[1] - before[1]) / (after[0] - before[0]) > 2.0  # rows decoded per step: they ran together


# JSON admits lone UTF-16 surrogates and NUL; the tokenizer and PostgreSQL do not. Raw bodies: httpx would
# refuse to encode a surrogate itself.
UNSTORABLE_BODIES = [
    ("/generate", b'{"prompt": "Hi \\udfff", "chat": true}'),
    ("/generate", b'{"prompt": "Hi \\u0000 there"}'),
    ("/edits", b'{"prompt": "Who wrote \\udfff?", "target": "t"}'),
    ("/edits", b'{"prompt": "p", "target": "t\\u0000"}'),
    ("/edits", b'{"prompt": "p", "target": "t", "rephrases": ["\\ud800"]}'),
    ("/edits", b'{"prompt": "p", "target": "t", "metadata": {"k": ["ok", "\\u0000"]}}'),
    ("/edits", b'{"prompt": "p", "target": "t", "metadata": {"\\udfff": 1}}'),
]


def test_unstorable_text_is_refused_and_holds_up_no_other_request(server: Server, admin: httpx.Client) -> None:
    """Bad rows are 422 at the edge, and good requests sent alongside them are all answered."""
    before = len(admin.get("/edits", params={"limit": 500}).json()["data"])
    results: dict[str, httpx.Response] = {}

    def send(name: str, path: str, body: bytes) -> None:
        with server.client(ADMIN) as c:
            results[name] = c.post(path, content=body, headers={"content-type": "application/json"}, timeout=60)

    threads = [threading.Thread(target=send, args=(f"bad{i}", p, b)) for i, (p, b) in enumerate(UNSTORABLE_BODIES)]
    threads += [
        threading.Thread(target=send, args=(f"good{i}", "/generate", b'{"prompt": "Name a colour.", "chat": true}'))
        for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert len(results) == len(threads), "a request was never answered"
    for i in range(len(UNSTORABLE_BODIES)):
        check_error(results[f"bad{i}"], 422)
        assert "surrogate" in results[f"bad{i}"].text or "NUL" in results[f"bad{i}"].text
    assert all(results[f"good{i}"].status_code == 200 for i in range(3))
    assert len(admin.get("/edits", params={"limit": 500}).json()["data"]) == before


def test_ids_and_cursors_that_cannot_exist_are_client_errors(admin: httpx.Client) -> None:
    cases = [
        (admin.get("/edits/ed_%00"), 422),
        (admin.delete("/edits/ed_%00"), 422),
        (admin.post("/edits/ed_%00/restore"), 422),
        (admin.get("/edits/ed_%00/events"), 422),
        (admin.get("/edits/" + "e" * 5000), 422),
        (admin.get("/edits", params={"after": "ZWRpdHM6" + "OTk5" * 12}), 400),  # "edits:" + 36 nines
        (admin.get("/events", params={"after": "9" * 30}), 400),
    ]
    for response, status in cases:
        check_error(response, status)
        assert len(response.json()["error"]["message"]) < 300  # never echoes an unbounded id


def test_an_edit_that_cannot_be_learnt_in_time_fails_and_stores_nothing(tmp_path: Path) -> None:
    with Server(tmp_path, SOLA_MAX_TRAIN_SECONDS="0.001") as srv, srv.client(ADMIN) as admin:
        r = admin.post("/edits", json={"prompt": "Who founded Brasko Mills?", "target": "Odette Varnel"})
        check_error(r, 422)
        assert r.json()["error"]["code"] == "training_timeout" and "SOLA_MAX_TRAIN_SECONDS" in r.text
        assert admin.get("/edits").json()["data"] == [] and admin.get("/events").json()["data"] == []
        assert admin.post("/generate", json={"prompt": "Name a colour.", "chat": True}).status_code == 200


def test_requests_that_are_not_http_get_the_json_error_too(server: Server) -> None:
    """uvicorn answers these before the app sees them; it must still be the API's one error shape."""
    for head in (b"POST /generate HTTP/1.1\r\nContent-Length: abc\r\n", b"GET /edits/\x1b[31m HTTP/1.1\r\n"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head + b"Host: x\r\nConnection: close\r\n\r\n")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        status_line, _, rest = raw.partition(b"\r\n")
        headers, _, body = rest.partition(b"\r\n\r\n")
        assert status_line.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in headers.lower()
        assert json.loads(body)["error"]["code"] == "bad_request"


QUERY_MISTAKES = [
    ("/edits", {"q": "\x00"}),
    ("/edits", {"actor": "a\x00"}),
    ("/edits", {"metadata": "k\x00=v"}),
    ("/edits", {"metadata": "k=v\x00"}),
    ("/edits", {"created_to": "9999-12-31T23:59:59.999999-23:59"}),  # past year 9999 in UTC
    ("/edits", {"created_from": "0001-01-01T00:00:00+01:00"}),  # before year 1 in UTC
    ("/edits", {"after": "\x00"}),
    ("/events", {"actor": "\x00"}),
]


@pytest.mark.parametrize(("path", "params"), QUERY_MISTAKES)
def test_every_query_parameter_is_checked_at_the_edge(reader: httpx.Client, path: str, params: dict) -> None:
    check_error(reader.get(path, params=params), 422)


def test_writes_from_another_sites_page_are_refused(server: Server, admin: httpx.Client) -> None:
    """What a page elsewhere can make a browser send: a form post (no preflight), or any write with its
    Origin. Either would otherwise restore a revoked edit, since restore takes no body."""
    made = edit(admin, "Which bell rings in Ostrevo?", "the Amber Bell")
    admin.delete(f"/edits/{made['id']}").raise_for_status()
    restore = f"/edits/{made['id']}/restore"
    form = admin.post(restore, content=b"", headers={"Content-Type": "application/x-www-form-urlencoded"})
    check_error(form, 415)
    text = admin.post(restore, content=b"x", headers={"Content-Type": "text/plain"})
    check_error(text, 415)
    foreign = admin.post(restore, headers={"Origin": "https://evil.example"})
    check_error(foreign, 403)
    assert foreign.json()["error"]["code"] == "cross_origin"
    assert admin.get(f"/edits/{made['id']}").json()["status"] == "revoked"  # none of them did anything
    own = admin.post(restore, headers={"Origin": server.url})  # the console's own page may
    assert own.status_code == 200 and own.json()["status"] == "active"
