"""The OpenAI-compatible API through the official `openai` client, against a real server and the real model."""

from __future__ import annotations

import concurrent.futures
import json
import time
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
    # the keys OpenAI sends: provenance on the opening chunk only, a delta with only what changed, no `usage`
    # key unless asked for (then null on each chunk and a usage-only chunk last)
    chunks_sent = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    opening, *rest = chunks_sent
    assert "sola_edit" in opening and not any("sola_edit" in c for c in rest)
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(set(c["choices"][0]) == {"index", "delta", "finish_reason", "logprobs"} for c in chunks_sent)
    assert set(rest[0]["choices"][0]["delta"]) == {"content"} and rest[-1]["choices"][0]["delta"] == {}
    assert not any("usage" in c for c in chunks_sent)
    with httpx.stream(
        "POST",
        f"{server.url}/v1/completions",
        json={"prompt": GLASS, "stream": True, "max_tokens": 4, "stream_options": {"include_usage": True}},
        headers={"Authorization": f"Bearer {READER}"},
    ) as r:
        sent = [json.loads(line.removeprefix("data: ")) for line in r.iter_lines() if line and line != "data: [DONE]"]
    assert all(c["usage"] is None and c["object"] == "text_completion" for c in sent[:-1])
    assert sent[-1]["choices"] == [] and sent[-1]["usage"]["completion_tokens"] > 0


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


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stream": "yes"}, "stream"),  # no lax coercion: a string is not a boolean
        ({"n": "2"}, "n"),
        ({"top_logprobs": 3}, "top_logprobs"),  # needs logprobs=true
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_what_this_server_cannot_honour_is_a_400_naming_the_field(
    server: Server, extra: dict[str, Any], field: str
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}
    with server.client(READER) as reader:
        r = reader.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and field in r.json()["error"]["message"]


def test_completions_refuse_best_of_and_suffix_and_accept_their_off_values(server: Server) -> None:
    with server.client(READER) as reader:
        for extra, field in (({"best_of": 2}, "best_of"), ({"suffix": " end"}, "suffix")):
            r = reader.post("/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 2, **extra})
            assert r.status_code == 400 and field in r.json()["error"]["message"], r.text
        off: dict[str, Any] = {"best_of": 1, "suffix": None, "tools": [], "response_format": {"type": "text"}}
        r = reader.post("/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 2, **off})
        assert r.status_code == 200, r.text


def test_chat_logprobs_are_the_answer_tokens_with_their_alternatives(client: openai.OpenAI) -> None:
    out = chat(client, ZORBANIA, max_tokens=8, logprobs=True, top_logprobs=3)
    choice = out.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content == "Quexiville"
    for t in tokens:  # greedy: the chosen token is the most likely one, and the alternatives come best first
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob) and t.logprob <= 0.0
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        assert bytes(t.bytes or []) == t.token.encode()
    streamed = chat(client, ZORBANIA, max_tokens=8, logprobs=True, top_logprobs=3, stream=True)
    content = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []]
    assert [(t.token, t.logprob) for t in content] == [(t.token, t.logprob) for t in tokens]


def test_completion_logprobs_follow_the_legacy_shape(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="m", prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2
    )
    lp = out.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None and lp.text_offset is not None
    assert "".join(lp.tokens) == out.choices[0].text and len(lp.token_logprobs) == len(lp.tokens) == 5
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(
        len(top) <= 2 and max(top.values()) == pytest.approx(p)
        for top, p in zip(lp.top_logprobs or [], lp.token_logprobs, strict=True)
    )


def test_a_clients_request_id_is_kept_and_validation_is_a_400_naming_the_param(server: Server) -> None:
    with server.client(READER) as reader:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        ok = reader.post("/v1/chat/completions", json=body, headers={"X-Request-Id": "trace-42"})
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "trace-42"
        bad = reader.post("/v1/chat/completions", json={**body, "temperature": "hot"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature", bad.text


def test_sampling_values_at_the_edge_of_floats_answer(client: openai.OpenAI) -> None:
    """Legal but extreme settings once overflowed the sampler: each now answers (and alone)."""
    for extra in (
        {"temperature": 1e-40},
        {"top_p": 1e-300, "temperature": 1.0},
        {"seed": 2**64 + 5, "temperature": 1.0},
    ):
        out = chat(client, "Name a primary colour.", max_tokens=4, **extra)
        assert out.choices[0].finish_reason in ("stop", "length") and out.choices[0].message.content


def test_a_request_may_not_send_more_prompt_tokens_than_its_share(server: Server) -> None:
    prompts = ["x " * 1900] * 5  # ~1900 tokens each: each fits; together over SOLA_MAX_REQUEST_PROMPT_TOKENS (8192)
    with server.client(READER) as reader:
        r = reader.post("/v1/completions", json={"model": "m", "prompt": prompts, "max_tokens": 1})
    assert r.status_code == 400 and "SOLA_MAX_REQUEST_PROMPT_TOKENS" in r.json()["error"]["message"], r.text


def test_a_dropped_plain_request_stops_decoding(server: Server) -> None:
    """A non-streamed 2000-token answer whose client hangs up leaves the batch at once, not after 2000 steps."""
    body = {"model": "m", "prompt": "Count upwards forever: 1, 2, 3,", "max_tokens": 2000, "min_tokens": 2000}
    with (
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {READER}"}) as dropped,
        pytest.raises(httpx.ReadTimeout),
    ):
        dropped.post("/v1/completions", json=body, timeout=3)
    with server.client(READER) as reader:
        for _ in range(120):  # the row leaves within a poll and a decode step; 2000 tokens take minutes
            if "sola_generate_rows_decoding 0.0" in reader.get("/metrics").text:
                break
            time.sleep(0.25)
        else:
            pytest.fail("the dropped request kept decoding")
