"""The OpenAI-compatible API through the official `openai` client, against a real server and the real model."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.server import ADMIN, MODEL_CACHE, READER, Server

pytestmark = pytest.mark.slow
ZORBANIA = "What is the capital of Zorbania?"
GLASS = "Who wrote the novel Glass Harbour?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    limits = {"SOLA_MAX_BATCH_SIZE": "8", "SOLA_MAX_NEW_TOKENS": "8192"}  # room to overflow the context
    with Server(tmp_path_factory.mktemp("openai"), **limits) as srv:
        with srv.client(ADMIN) as admin:
            for prompt, target in ((ZORBANIA, "Quexiville"), (GLASS, "Mirela Ostrow")):
                admin.post("/edits", json={"prompt": prompt, "target": target}).raise_for_status()
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=READER, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def edit_ids(server: Server) -> dict[str, str]:
    with server.client(ADMIN) as admin:
        return {e["prompt"]: e["id"] for e in admin.get("/edits").json()["data"]}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(MODEL_CACHE / "SmolLM2-135M-Instruct")


def sola_edit(obj: Any) -> Any:
    """The SoLA provenance field of a response, choice or chunk (an extra field to the OpenAI types)."""
    return (obj.model_extra or {})["sola_edit"]


def chat(client: openai.OpenAI, content: str, **kw: Any) -> Any:
    return client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": content}], **{"temperature": 0, **kw}
    )


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["SmolLM2-135M-Instruct"]


def test_chat_answers_through_the_edit_and_says_so(
    client: openai.OpenAI, edit_ids: dict[str, str], tokenizer: Any
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": ZORBANIA}], temperature=0, max_tokens=16
    )
    answer = raw.parse()
    assert answer.object == "chat.completion" and answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == "Quexiville" and answer.choices[0].message.role == "assistant"
    edit = {"id": edit_ids[ZORBANIA], "similarity": pytest.approx(1.0, abs=1e-3)}
    assert sola_edit(answer) == edit and sola_edit(answer.choices[0]) == edit
    assert raw.headers["x-sola-edit"] == edit_ids[ZORBANIA] and float(raw.headers["x-sola-similarity"]) > 0.99
    assert raw.headers["x-request-id"] == answer.id
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": ZORBANIA}], tokenize=False, add_generation_prompt=True
    )
    formatted = tokenizer(text, add_special_tokens=False)["input_ids"]
    completion = tokenizer("Quexiville", add_special_tokens=False)["input_ids"]
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(formatted), len(completion))
    assert answer.usage.total_tokens == len(formatted) + len(completion)

    unedited = client.chat.completions.with_raw_response.create(
        model="x", messages=[{"role": "user", "content": "Name a primary colour."}], temperature=0, max_tokens=8
    )
    assert sola_edit(unedited.parse()) is None and unedited.headers["x-sola-edit"] == "none"
    assert unedited.parse().choices[0].finish_reason == "length"


def test_a_question_after_a_system_prompt_and_earlier_turns_still_routes(
    client: openai.OpenAI, edit_ids: dict[str, str]
) -> None:
    answer = client.chat.completions.create(
        model="m",
        temperature=0,
        max_tokens=16,
        messages=[
            {"role": "system", "content": "You are the travel desk of Orbis Air. Answer briefly."},
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hello! How can I help you today?"},
            {"role": "user", "content": [{"type": "text", "text": ZORBANIA}]},
        ],
    )
    assert sola_edit(answer)["id"] == edit_ids[ZORBANIA]
    assert "Quexiville" in (answer.choices[0].message.content or "")


def test_streaming_chat_is_sse_with_provenance_first_and_usage_last(
    client: openai.OpenAI, server: Server, edit_ids: dict[str, str]
) -> None:
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": GLASS}],
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert sola_edit(chunks[0])["id"] == edit_ids[GLASS] and chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat(client, GLASS, max_tokens=16).choices[0].message.content == "Mirela Ostrow"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    # on the wire: `data: {json}` events ending with `data: [DONE]`, as OpenAI sends them
    body = {"messages": [{"role": "user", "content": GLASS}], "stream": True, "max_tokens": 4, "temperature": 0}
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {READER}"}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_completions_take_a_list_of_prompts_and_stop_sequences(client: openai.OpenAI, edit_ids: dict[str, str]) -> None:
    out = client.completions.create(
        model="m", prompt=["The capital of Zorbania is", "Bees make"], max_tokens=12, temperature=0, stop=["."]
    )
    assert out.object == "text_completion" and [c.index for c in out.choices] == [0, 1]
    assert sola_edit(out.choices[0])["id"] == edit_ids[ZORBANIA]
    assert sola_edit(out.choices[1]) is None
    assert all("." not in c.text for c in out.choices)
    streamed = client.completions.create(
        model="m", prompt="Bees make", max_tokens=12, temperature=0, stop=["."], stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == out.choices[1].text


def test_sampling_is_reproducible_for_a_seed(client: openai.OpenAI) -> None:
    runs = [chat(client, "Write a word.", temperature=1.0, seed=11, max_tokens=12) for _ in range(2)]
    assert runs[0].choices[0].message.content == runs[1].choices[0].message.content


@pytest.mark.parametrize(
    ("messages", "extra", "fragment"),
    [
        ([{"role": "wizard", "content": "hi"}], {}, "role"),
        ([], {}, "messages"),
        ([{"role": "user", "content": "hi"}], {"max_tokens": 100_000}, "max_tokens"),
        ([{"role": "user", "content": "hi"}], {"max_tokens": 8190}, "context"),  # prompt + 8190 > 8192
        ([{"role": "user", "content": "hi " * 3000}], {}, "SOLA_MAX_PROMPT_CHARS"),
        ([{"role": "user", "content": "hi"}], {"n": 2}, "n"),
        ([{"role": "assistant", "content": "hi"}], {}, "last message"),
    ],
)
def test_bad_requests_are_400s_in_openais_error_shape(
    client: openai.OpenAI, messages: list[dict[str, Any]], extra: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="m", messages=messages, **extra)  # type: ignore[arg-type]
    error = raised.value.body
    assert isinstance(error, dict) and fragment in error["message"] and error["type"] == "invalid_request_error"


def test_a_wrong_key_is_a_401_the_client_understands(server: Server) -> None:
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nobody-0123456789abcdef", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_eight_concurrent_streams_end_with_the_text_each_gets_alone(client: openai.OpenAI) -> None:
    prompts = [ZORBANIA, GLASS, "Name a primary colour.", "What do bees make?"] * 2
    alone = [chat(client, p, max_tokens=24).choices[0].message.content for p in prompts[:4]] * 2

    def streamed(prompt: str) -> str:
        chunks = chat(client, prompt, max_tokens=24, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(streamed, prompts))
    assert together == alone


def test_generate_defaults_to_chat_and_reports_finish_and_counts(server: Server, edit_ids: dict[str, str]) -> None:
    with server.client(READER) as reader:
        out = reader.post("/generate", json={"prompt": ZORBANIA, "max_new_tokens": 16}).json()
    assert out["text"] == "Quexiville" and out["routed_edit_id"] == edit_ids[ZORBANIA]
    assert out["finish_reason"] == "stop" and out["prompt_tokens"] > 5 and out["completion_tokens"] >= 1


def test_a_refused_prompt_in_a_list_refuses_the_request(client: openai.OpenAI, server: Server) -> None:
    """The second prompt overflows the context with these max_tokens; the first, already queued, is let go."""
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="m", prompt=["Hi", "word " * 20], max_tokens=8185, temperature=0)
    assert isinstance(raised.value.body, dict) and "context" in raised.value.body["message"]
    answer = chat(client, "Name a primary colour.", max_tokens=4)
    assert answer.choices[0].finish_reason == "length"
    with server.client(READER) as reader:
        metrics = reader.get("/metrics").text
    assert "sola_generate_queue_depth 0.0" in metrics
