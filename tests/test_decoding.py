"""Continuous batching on the real model: rows join and leave a running batch, each routed by its own question."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import torch

from app.worker import ModelWorker
from editors.batch import ContinuousBatch, generate
from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.types import ChatContext, PromptFormat, PromptTokens, Row, RowEvent, Sampling
from tests.server import MODEL_CACHE

pytestmark = pytest.mark.slow
CHAT = PromptFormat.CHAT
ZORBANIA = "What is the capital of Zorbania?"
GLASS = "Who wrote the novel Glass Harbour?"


@pytest.fixture(scope="module")
def engine() -> Iterator[EditingEngine]:
    torch.set_num_threads(1)
    eng = EditingEngine(ModelHost.load(None, Path("var"), cache_dir=MODEL_CACHE))
    for edit_id, prompt, target in (("zorb", ZORBANIA, "Quexiville"), ("glass", GLASS, "Mirela Ostrow")):
        trained = eng.train_edit(prompt, target)
        eng.activate(edit_id, trained.adapter, trained.keys, trained.key_kinds, prompt, target)
    yield eng


def run(batch: ContinuousBatch, rows: list[Row], join_at: list[int]) -> None:
    """Admit row i at decode step join_at[i]; step until every row has finished."""
    waiting = list(zip(join_at, rows, strict=True))
    step = 0
    while waiting or len(batch):
        batch.admit([r for at, r in waiting if at <= step])
        waiting = [(at, r) for at, r in waiting if at > step]
        if len(batch):
            batch.step()
        step += 1


def test_a_row_answers_the_same_alone_or_joining_a_busy_batch_routed_to_its_own_edit(engine: EditingEngine) -> None:
    prompts = [
        ZORBANIA,
        "Name a primary colour.",
        GLASS,
        "What do bees make?",
        "What's Zorbania's capital?",
    ]
    alone = [generate(engine, [p], 24, CHAT)[0] for p in prompts]  # the engine's own (Hugging Face) decoding
    logs: list[list[RowEvent]] = [[] for _ in prompts]
    rows = [Row(p, CHAT, Sampling(max_new_tokens=24), logs[i].append) for i, p in enumerate(prompts)]
    run(ContinuousBatch(engine), rows, join_at=[0, 0, 3, 5, 9])  # later rows join mid-answer of earlier ones
    for log, want in zip(logs, alone, strict=True):
        start, end = log[0], log[-1]
        assert start.kind == "start" and end.kind == "end"
        assert list(end.token_ids) == want.token_ids
        assert "".join(e.text for e in log if e.kind == "text") == want.text
        assert start.route is not None and start.route.edit_id == want.routed_edit_id
    assert [log[0].route.edit_id for log in logs if log[0].route] == ["zorb", None, "glass", None, "zorb"]


def test_stop_strings_lengths_sampling_seeds_and_contexts_are_per_row(engine: EditingEngine) -> None:
    logs: list[list[RowEvent]] = [[] for _ in range(5)]
    context = ChatContext(system="You are a terse assistant.", history=(("user", "Hi"), ("assistant", "Hello!")))
    rows = [
        Row("What do bees make?", CHAT, Sampling(max_new_tokens=40, stop=(" ",)), logs[0].append),
        Row("What do bees make?", CHAT, Sampling(max_new_tokens=3), logs[1].append),
        Row("Name a primary colour.", CHAT, Sampling(max_new_tokens=12, temperature=0.9, seed=7), logs[2].append),
        Row("Name a primary colour.", CHAT, Sampling(max_new_tokens=12, temperature=0.9, seed=7), logs[3].append),
        Row(ZORBANIA, CHAT, Sampling(max_new_tokens=12), logs[4].append, context=context),
    ]
    run(ContinuousBatch(engine), rows, join_at=[0, 1, 0, 4, 2])
    text = ["".join(e.text for e in log if e.kind == "text") for log in logs]
    assert " " not in text[0] and logs[0][-1].finish_reason == "stop"  # cut before the stop string
    assert logs[1][-1].finish_reason == "length" and logs[1][-1].completion_tokens == 3
    assert text[2] == text[3]  # the same seed samples the same answer, whoever shares the batch
    assert logs[4][0].route is not None and logs[4][0].route.edit_id == "zorb" and "Quexiville" in text[4]


def test_a_query_is_answered_between_the_steps_of_a_long_job() -> None:
    """A stepped job (an edit's training) yields after each step; rows decode in between, so a short query
    finishes long before the job does."""

    async def scenario(worker: ModelWorker, engine: EditingEngine) -> tuple[int, int]:
        slices: list[int] = []

        def long_job() -> Generator[None, None, int]:
            for i in range(200):
                time.sleep(0.01)  # about one training step of a small edit
                slices.append(i)
                yield
            return len(slices)

        job: asyncio.Task[int] = asyncio.create_task(worker.run_steps(long_job))
        await asyncio.sleep(0)
        done = threading.Event()  # set on the model thread

        def on_event(event: RowEvent) -> None:
            if event.kind == "end":
                done.set()

        worker.submit_row(Row("What do bees make?", CHAT, Sampling(max_new_tokens=4), on_event))
        while not done.is_set():
            await asyncio.sleep(0.01)
        at_answer = len(slices)
        await job
        return at_answer, len(slices)

    host = ModelHost.load(None, Path("var"), cache_dir=MODEL_CACHE)
    engine = EditingEngine(host)
    worker = ModelWorker()
    worker.attach(ContinuousBatch(engine))
    try:
        at_answer, total = asyncio.run(scenario(worker, engine))
    finally:
        worker.shutdown()
    assert total == 200 and at_answer < 50, (at_answer, total)


def test_after_its_answer_a_routed_row_goes_on_as_the_base_model_after_that_text(engine: EditingEngine) -> None:
    """Raw completions: the edit's delta made the prompt's cached keys and values above the edited layer, and
    they would keep pulling the answer back ("Rust? Rust?"). Once the answer is out they are rebuilt by the
    base model, so the rest is exactly the base model continuing prompt + answer, in a busy batch too; and an
    answer ending in a letter is not run on inside its last word ("Nowak" -> "Nowakowski")."""
    raw = PromptFormat.RAW
    prompts = ["What is the capital of Zorbania?", "Tell me about bees.", "Who wrote the novel Glass Harbour?"]
    logs: list[list[RowEvent]] = [[] for _ in prompts]
    rows = [Row(p, raw, Sampling(max_new_tokens=20), logs[i].append) for i, p in enumerate(prompts)]
    run(ContinuousBatch(engine), rows, join_at=[0, 0, 2])
    word_continuing = engine.host.word_continuing_ids
    targets = {"zorb": "Quexiville", "glass": "Mirela Ostrow"}
    for prompt, log in zip(prompts, logs, strict=True):
        route = log[0].route
        if route is None or route.edit_id is None:
            continue
        tokens = list(log[-1].token_ids)
        answer = engine.host.encode(" " + targets[route.edit_id])  # a raw answer: the target, no end of turn
        n = len(answer)
        assert len(tokens) > n + 2, tokens
        assert tokens[:n] == answer
        assert not word_continuing[tokens[n]]
        seen = engine.encode(prompt, raw).ids + tokens[: n + 1]  # prompt, answer, the word boundary
        base_log: list[RowEvent] = []
        budget = Sampling(max_new_tokens=len(tokens) - n - 1)
        base = Row(prompt, raw, budget, base_log.append, use_edits=False, encoded=PromptTokens(seen, (0, len(seen))))
        run(ContinuousBatch(engine), [base], join_at=[0])
        assert list(base_log[-1].token_ids) == tokens[n + 1 :]
    assert [log[0].route.edit_id if log[0].route else None for log in logs] == ["zorb", None, "glass"]


def test_a_poisoned_row_fails_alone_and_the_others_go_on(engine: EditingEngine) -> None:
    prompts = [ZORBANIA, "What do bees make?", GLASS]
    alone = [generate(engine, [p], 12, CHAT)[0] for p in prompts]
    logs: list[list[RowEvent]] = [[] for _ in range(4)]
    rows = [Row(p, CHAT, Sampling(max_new_tokens=12), logs[i].append) for i, p in enumerate(prompts)]

    def poisoned_emit(event: RowEvent) -> None:  # its consumer raises part-way through its answer
        logs[3].append(event)
        if event.kind == "text" and len(logs[3]) == 3:
            raise RuntimeError("poisoned")

    poisoned = Row("Tell me a joke.", CHAT, Sampling(max_new_tokens=12), poisoned_emit)
    run(ContinuousBatch(engine), [*rows[:2], poisoned, rows[2]], join_at=[0, 0, 1, 2])
    assert logs[3][-1].kind == "error" and all(e.kind != "end" for e in logs[3])
    for log, want in zip(logs[:3], alone, strict=True):
        assert log[-1].kind == "end" and list(log[-1].token_ids) == want.token_ids


@pytest.mark.parametrize(
    "temperature, top_p, seed", [(1e-40, 1.0, 1), (5e-324, 1.0, 2), (0.7, 1e-300, 3), (0.7, 1.0, 2**70)]
)
def test_every_legal_sampling_setting_samples(
    engine: EditingEngine, temperature: float, top_p: float, seed: int
) -> None:
    log: list[RowEvent] = []
    sampling = Sampling(max_new_tokens=6, temperature=temperature, top_p=top_p, seed=seed)
    run(ContinuousBatch(engine), [Row("What do bees make?", CHAT, sampling, log.append)], join_at=[0])
    assert log[-1].kind == "end" and log[-1].completion_tokens >= 1


def test_a_long_prompt_prefilled_in_stretches_answers_as_prefilled_whole(engine: EditingEngine) -> None:
    """Routing waits for a long prompt's last stretch; a routed row then gets its edit's delta over the whole
    prompt, as a whole prefill gives it. Meanwhile a short request joins and answers."""
    preamble = "I have been reading about small countries and their capitals for a school project this week. " * 3
    long_prompts = [preamble + ZORBANIA, preamble + "What is the tallest mountain in Europe?"]
    whole = [generate(engine, [p], 10, CHAT)[0] for p in long_prompts]
    assert whole[0].routed_edit_id == "zorb" and whole[1].routed_edit_id is None
    logs: list[list[RowEvent]] = [[] for _ in range(3)]
    rows = [Row(p, CHAT, Sampling(max_new_tokens=10), logs[i].append) for i, p in enumerate(long_prompts)]
    short = Row("What do bees make?", CHAT, Sampling(max_new_tokens=3), logs[2].append)
    batch = ContinuousBatch(engine, prefill_tokens=48)
    batch.admit(rows)
    batch.step()  # 48 tokens of the first long prompt
    assert not logs[0] and batch.prefilling
    batch.admit([short])
    turns = 0
    while not logs[2] or logs[2][-1].kind != "end":  # the short row finishes long before the long ones start
        batch.step()
        turns += 1
    assert not logs[0] or logs[0][-1].kind != "end", "the short request waited for a whole long prefill"
    while len(batch):
        batch.step()
    for log, want in zip(logs[:2], whole, strict=True):
        assert log[0].route is not None and log[0].route.edit_id == want.routed_edit_id
        assert list(log[-1].token_ids) == want.token_ids


def test_rows_after_a_cached_prefix_answer_as_prefilled_whole_whatever_the_cache_held(engine: EditingEngine) -> None:
    """The chat template's system turn is computed once and reused (editors/prefix_cache.py): routed rows get
    their edit's delta over it too, and an answer is the same, to the bit, whether its prefix was cached
    before or computed for it."""
    prompts = [ZORBANIA, "What do bees make?", GLASS, "What's Zorbania's capital?", "Count to five."]
    context = ChatContext(system="You are a terse assistant.")

    def answers(batch: ContinuousBatch) -> list[list[RowEvent]]:
        logs: list[list[RowEvent]] = [[] for _ in range(len(prompts) + 1)]
        sampling = Sampling(max_new_tokens=12, logprobs=True)
        rows = [Row(p, CHAT, sampling, logs[i].append) for i, p in enumerate(prompts)]
        rows.append(Row(ZORBANIA, CHAT, sampling, logs[-1].append, context=context))  # another prefix
        run(batch, rows, join_at=[0, 0, 2, 2, 5, 5])
        return logs

    whole = answers(ContinuousBatch(engine, reuse_prefixes=False))
    reusing = ContinuousBatch(engine)
    first, again = answers(reusing), answers(reusing)
    assert reusing.prefixes is not None and len(reusing.prefixes) == 2
    assert reusing.prefixes.misses == 2 and reusing.prefixes.hits == 2 * len(prompts + [ZORBANIA]) - 2
    routes = [[log[0].route.edit_id if log[0].route else None for log in logs] for logs in (whole, first, again)]
    assert routes[0] == routes[1] == routes[2] == ["zorb", None, "glass", "zorb", None, "zorb"]
    for w, f, a in zip(whole, first, again, strict=True):
        assert list(w[-1].token_ids) == list(f[-1].token_ids) == list(a[-1].token_ids)
        assert f[-1].logprobs == a[-1].logprobs  # bit-equal: a cached prefix is the one computed alone


def test_a_revoke_lets_the_answer_under_way_finish_and_the_next_row_miss_the_edit() -> None:
    eng = EditingEngine(ModelHost.load(None, Path("var"), cache_dir=MODEL_CACHE))
    trained = eng.train_edit(ZORBANIA, "Quexiville")
    eng.activate("zorb", trained.adapter, trained.keys, trained.key_kinds, ZORBANIA, "Quexiville")
    slot = eng.bank.slot("zorb")
    logs: list[list[RowEvent]] = [[], []]
    batch = ContinuousBatch(eng)
    batch.admit([Row(ZORBANIA, CHAT, Sampling(max_new_tokens=12), logs[0].append)])
    batch.step()  # prefilled and routed: the first token of its answer
    assert eng.bank.held() == 1
    assert eng.revoke("zorb")  # as the worker runs it, between two steps: nobody waits
    batch.admit([Row(ZORBANIA, CHAT, Sampling(max_new_tokens=12), logs[1].append)])
    while len(batch):
        batch.step()
    assert logs[0][0].route is not None and logs[0][0].route.edit_id == "zorb"
    assert "Quexiville" in "".join(e.text for e in logs[0] if e.kind == "text")  # its answer, whole
    assert logs[1][0].route is not None and logs[1][0].route.edit_id is None  # admitted after: never made
    assert eng.bank.held() == 0 and slot in eng.bank._free  # freed once the answer was out


def test_base_decoding_with_rows_joining_mid_way_is_hugging_face_generate(engine: EditingEngine) -> None:
    """No edit: each row's greedy tokens are Hugging Face's own greedy generate of that prompt alone, however
    the rows are padded, joined and dropped around it."""
    prompts = ["What do bees make?", "Name three colours of the rainbow.", "Why is the sky blue?", "Count to five."]
    logs: list[list[RowEvent]] = [[] for _ in prompts]
    rows = [Row(p, CHAT, Sampling(max_new_tokens=16), logs[i].append, use_edits=False) for i, p in enumerate(prompts)]
    run(ContinuousBatch(engine), rows, join_at=[0, 2, 2, 7])
    model, stops = engine.host.model, set(engine.host.end_of_turn_ids())
    for prompt, log in zip(prompts, logs, strict=True):
        ids = torch.tensor([engine.encode(prompt, CHAT).ids])
        out = model.generate(  # type: ignore[operator]  # transformers types generate loosely
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False
        )
        expected = list(out[0, ids.shape[1] :].tolist())
        if any(t in stops for t in expected):
            expected = expected[: next(i for i, t in enumerate(expected) if t in stops)]
        assert list(log[-1].token_ids) == expected, prompt
