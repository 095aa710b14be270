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
from editors.decoding import ContinuousBatch
from editors.engine import EditingEngine
from editors.model_host import ChatContext, ModelHost, PromptTokens
from editors.types import PromptFormat, Row, RowEvent, Sampling
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
    alone = [engine.generate([p], 24, CHAT)[0] for p in prompts]  # the engine's own (Hugging Face) decoding
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
    for prompt, row, log in zip(prompts, rows, logs, strict=True):
        if row.slot is None:
            continue
        tokens = list(log[-1].token_ids)
        n = row.answer_tokens
        assert len(tokens) > n + 2, tokens
        assert row.route is not None and row.route.edit_id is not None
        assert tokens[:n] == engine.host.encode(" " + targets[row.route.edit_id])
        assert not word_continuing[tokens[n]]
        seen = engine.encode(prompt, raw).ids + tokens[: n + 1]  # prompt, answer, the word boundary
        base_log: list[RowEvent] = []
        budget = Sampling(max_new_tokens=len(tokens) - n - 1)
        base = Row(prompt, raw, budget, base_log.append, use_edits=False, encoded=PromptTokens(seen, (0, len(seen))))
        run(ContinuousBatch(engine), [base], join_at=[0])
        assert list(base_log[-1].token_ids) == tokens[n + 1 :]
    assert [r.route.edit_id if r.route else None for r in rows] == ["zorb", None, "glass"]
