"""POST /edits/batch against a real server: per-item answers, idempotency, refusals, queries served meanwhile."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.server import Server

pytestmark = pytest.mark.slow

FACTS: list[dict[str, Any]] = [
    {"prompt": "What is the capital of Zorbania?", "target": "Quexiville"},
    {"prompt": "Who wrote the novel Glass Harbor?", "target": "Mirela Tosk", "metadata": {"ticket": "T-2"}},
    {"prompt": "What is the national animal of Velmora?", "target": "the red lynx"},
]
TOO_LONG: dict[str, Any] = {"prompt": "Why? " * 200, "target": "no"}  # within the character limit, over the token limit


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server(tmp_path_factory.mktemp("bulk"), SOLA_MAX_PROMPT_TOKENS="64", SOLA_MAX_BULK_EDITS="5") as srv:
        yield srv


def test_batch_answers_per_item_refuses_one_without_blocking_and_replays(server: Server) -> None:
    items = [
        {**FACTS[0], "idempotency_key": "k0"},
        {**TOO_LONG, "idempotency_key": "k-long"},
        {**FACTS[1], "idempotency_key": "k1"},
        {"prompt": "Who?", "target": "x" * 2000},  # over SOLA_MAX_TARGET_CHARS: refused before training
        {**FACTS[2]},  # no key: made again if sent again
    ]
    with server.client() as c, server.client() as bulk:
        answers: list[httpx.Response] = []
        batch = threading.Thread(target=lambda: answers.append(bulk.post("/edits/batch", json={"edits": items})))
        batch.start()
        # Queries are served between training steps: one is answered while the batch still trains.
        asked = c.post("/generate", json={"prompt": "What is 7 times 8?", "max_new_tokens": 4})
        assert asked.status_code == 200 and batch.is_alive()
        batch.join()
        first = answers[0]
        assert first.status_code == 200, first.text
        out = first.json()
        assert [i["status"] for i in out["items"]] == ["created", "refused", "created", "refused", "created"]
        assert (out["created"], out["replayed"], out["refused"]) == (3, 0, 2)
        assert out["items"][1]["error"]["code"] == "prompt_too_long" and out["items"][1]["error"]["status"] == 413
        assert out["items"][3]["error"]["code"] == "target_too_long"
        made = {i["index"]: i["edit"] for i in out["items"] if i["edit"]}
        assert made[2]["metadata"] == {"ticket": "T-2"} and made[0]["train"]["steps"] >= 1
        for index, fact in ((0, FACTS[0]), (2, FACTS[1]), (4, FACTS[2])):
            r = c.post("/generate", json={"prompt": fact["prompt"], "max_new_tokens": 12}).json()
            assert r["routed_edit_id"] == made[index]["id"] and fact["target"] in r["text"], r
            events = c.get("/events", params={"edit_id": made[index]["id"]}).json()["data"]
            assert [e["kind"] for e in events] == ["created"]

        again = c.post("/edits/batch", json={"edits": items[:3]}).json()
        assert [i["status"] for i in again["items"]] == ["replayed", "refused", "replayed"]
        assert [again["items"][i]["edit"]["id"] for i in (0, 2)] == [made[0]["id"], made[2]["id"]]
        reused = c.post("/edits/batch", json={"edits": [{**FACTS[2], "idempotency_key": "k0"}]}).json()
        assert reused["items"][0]["error"]["code"] == "idempotency_key_reused"
        assert len(c.get("/edits").json()["data"]) == 3

        over = c.post("/edits/batch", json={"edits": [FACTS[0]] * 6})
        assert over.status_code == 413 and "SOLA_MAX_BULK_EDITS" in over.json()["error"]["message"]
        assert c.post("/edits/batch", json={"edits": []}).status_code == 422


def test_the_batch_endpoint_is_documented(server: Server) -> None:
    with server.client() as c:
        doc = c.get("/openapi.json").json()
    post = doc["paths"]["/edits/batch"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/BulkEditCreate")
    assert "idempotency_key" in doc["components"]["schemas"]["BulkEditItem"]["properties"]
