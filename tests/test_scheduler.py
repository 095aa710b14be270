"""The model thread's turn policy (editors/scheduler.py): plain state in, a plan out; no model."""

from __future__ import annotations

import pytest

from editors.scheduler import JobKind, TurnState, allot, schedule


def state(**kw: object) -> TurnState:
    base = {"running": 0, "prefilling": 0, "waiting": 0, "job": None, "training_debt": 0.0, "max_batch": 4}
    return TurnState(**(base | kw))  # type: ignore[arg-type]


def test_requests_join_while_there_is_room() -> None:
    assert schedule(state(waiting=3)).admit == 3
    assert schedule(state(waiting=3, running=2)).admit == 2
    assert schedule(state(waiting=3, running=2, prefilling=2)).admit == 0


def test_a_plain_job_runs_at_once_even_while_rows_decode() -> None:
    # a revoke, a restore: nobody waits for the batch to drain, and the batch does not wait either
    plan = schedule(state(job=JobKind.PLAIN, running=4, waiting=1, training_debt=5.0))
    assert plan.run_job and plan.admit == 0  # full batch: the queued request waits for a row to finish


@pytest.mark.parametrize(("running", "debt", "runs"), [(0, 9.0, True), (2, 0.0, True), (2, 0.5, False)])
def test_training_gets_at_most_half_the_thread_while_rows_decode(running: int, debt: float, runs: bool) -> None:
    assert schedule(state(job=JobKind.STEPPED, running=running, training_debt=debt)).run_job is runs


def test_prompts_share_the_prefill_budget_short_ones_first() -> None:
    assert allot([10, 10, 10], 25) == [10, 10, 5]  # first come, first served among prompts that fit
    assert allot([600, 4], 256) == [252, 4]  # a short prompt is not queued behind a long one
    assert allot([4, 600], 256) == [4, 252]
    assert allot([600, 250, 3], 256) == [253, 0, 3]  # the long one keeps its quarter and more; 250 waits a turn
    assert allot([7], 0) == [1]  # every prompt makes progress
