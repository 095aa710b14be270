"""What the model thread does next: a pure policy over plain state (vLLM's scheduler), no model needed.

Each turn the model thread may run one slice of a job (an edit's training step, a revoke, a sync) and one
turn of the running batch: queued requests join while there is room, the prompts still to prefill share a
token budget, and every row already answering decodes one token. So a long prompt delays the others by at
most one budget's worth of prefill, and an edit's training gets at most half the thread while rows decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class JobKind(StrEnum):
    PLAIN = "plain"  # runs whole when its turn comes (a revoke, a restore, a sync)
    STEPPED = "stepped"  # runs one slice per turn (an edit's training steps)


@dataclass(frozen=True)
class TurnState:
    running: int  # rows decoding
    prefilling: int  # rows admitted whose prompts are not fully in the cache yet
    waiting: int  # requests queued at the door
    job: JobKind | None  # the first queued job
    training_debt: float  # seconds of stepped slices not yet matched by as many seconds of batch turns
    max_batch: int


@dataclass(frozen=True)
class TurnPlan:
    run_job: bool  # run one slice of the first job
    admit: int  # how many queued requests join (first come, first served)


def schedule(state: TurnState) -> TurnPlan:
    """The next turn's plan. Jobs and rows alternate: a plain job runs at once; a stepped job waits while its
    last slice took longer than the batch turns since (so training gets at most half of the thread)."""
    busy = state.running + state.prefilling > 0
    run_job = state.job is JobKind.PLAIN or (state.job is JobKind.STEPPED and (not busy or state.training_debt <= 0))
    room = max(0, state.max_batch - state.running - state.prefilling)
    return TurnPlan(run_job=run_job, admit=min(room, state.waiting))


def allot(remaining: Sequence[int], budget: int) -> list[int]:
    """Prompt tokens to prefill this turn for each row still prefilling (in arrival order).

    Prompts that fit whole go first (a 4-token question is not queued behind a 4,000-token one), within the
    budget less a quarter kept for the oldest prompt too long to fit (so it always progresses); what is left
    goes first come, first served. Every turn prefills something while a prompt is waiting."""
    left = max(1, budget)
    out = [0] * len(remaining)
    long_ones = [i for i, need in enumerate(remaining) if need > left]
    reserve = min(left // 4, remaining[long_ones[0]]) if long_ones else 0
    for i, need in enumerate(remaining):
        if i not in long_ones and need <= left - reserve:
            out[i], left = need, left - need
    for i, need in enumerate(remaining):
        take = min(need - out[i], left)
        out[i], left = out[i] + take, left - take
    return out
