"""The one model thread: every engine call runs here, interleaved at the grain of one decode step.

It runs two kinds of work, alternating so neither starves the other (editors/scheduler.py decides each turn):
- jobs (load, edit, revoke, restore, sync): a plain job runs whole; a stepped job (a generator, such as an
  edit's training) runs one slice per turn, so a query arriving during training waits about one training
  step, not the whole edit; while rows decode, stepped slices get at most half of the thread's time. A
  revoke takes effect at once for every row that arrives after it, and never pauses anyone: a row already
  answering through the edit holds its bank slot until its answer is out (editors/routed_lora.py, LoRABank).
- rows (generation requests, editors/batch.py): they join the running batch at the next turn and leave
  when they finish; each turn prefills within a token budget and decodes one token for every running row.
The event loop only awaits this thread (never blocks on model work).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ParamSpec, TypeVar, cast

from editors.scheduler import JobKind, TurnState, schedule
from editors.types import SHUTDOWN, Row, RowEvent, RowEventKind

if TYPE_CHECKING:  # torch loads with the model, not at import
    from editors.batch import ContinuousBatch

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class _Job:
    call: Callable[[], object]
    future: asyncio.Future[object]
    loop: asyncio.AbstractEventLoop
    stepped: bool
    steps: Generator[None, None, object] | None = None  # a stepped job once started

    def resolve(self, result: object = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():  # the caller went away
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        self.loop.call_soon_threadsafe(settle)


class ModelWorker:
    def __init__(self, max_batch_size: int = 16, on_step: Callable[[int], None] | None = None) -> None:
        self.max_batch_size = max_batch_size
        self.on_step = on_step  # told the number of rows after each decode step (the batch-size metric)
        self.batch: ContinuousBatch | None = None  # attached once the model is loaded
        self._jobs: collections.deque[_Job] = collections.deque()
        self._incoming: collections.deque[Row] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        # Seconds of stepped-job slices not yet matched by as many seconds of decoding: while rows decode, a
        # stepped job (training) gets at most half of this thread, so a query is at most ~2x slower meanwhile.
        self._training_debt = 0.0
        self._thread = threading.Thread(target=self._loop, name="sola-model", daemon=True)
        self._thread.start()

    # ---- the event loop's side --------------------------------------------------------------------
    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run fn whole on the model thread and await its result. Jobs run in submission order."""
        return cast(R, await self._submit(functools.partial(fn, *args, **kwargs), stepped=False))

    async def run_steps(self, fn: Callable[P, Generator[None, None, R]], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a generator function one `yield` at a time, a decode step between slices; await its return."""
        return cast(R, await self._submit(functools.partial(fn, *args, **kwargs), stepped=True))

    async def _submit(self, call: Callable[[], object], stepped: bool) -> object:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        job = _Job(functools.partial(ctx.run, call), loop.create_future(), loop, stepped)
        with self._cv:
            if self._stopping:
                raise RuntimeError("the model worker is shutting down")
            self._jobs.append(job)
            self._cv.notify()
        return await job.future

    def submit_row(self, row: Row) -> None:
        """Queue a generation request; it joins the running batch at the next turn."""
        with self._cv:
            if self._stopping or self.batch is None:
                raise RuntimeError("the model worker is not serving")
            self._incoming.append(row)
            self._cv.notify()

    def pending_rows(self) -> int:
        return len(self._incoming)

    def decoding_rows(self) -> int:
        """Rows in the batch now, prefilling or decoding (read from any thread: a len is atomic)."""
        return len(self.batch) if self.batch is not None else 0

    def attach(self, batch: ContinuousBatch) -> None:
        self.batch = batch

    def shutdown(self) -> None:
        """Let the running job slice finish (an edit either commits or leaves no trace); drop the rest."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join()

    # ---- the model thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._stopping or self._jobs or self._incoming or self._busy()):
                    self._cv.wait()
                if self._stopping:
                    break
                if not self._busy():
                    self._training_debt = 0.0
                plan = schedule(self._state())
                job = self._jobs.popleft() if plan.run_job else None
                joining = [self._incoming.popleft() for _ in range(plan.admit)]
            if job is not None:
                self._run_slice(job)
            self._turn(joining)
        self._close()

    def _state(self) -> TurnState:
        """What the scheduler decides from (under the lock)."""
        batch = self.batch
        first = self._jobs[0] if self._jobs else None
        return TurnState(
            running=len(batch.rows) if batch is not None else 0,
            prefilling=len(batch.prefilling) if batch is not None else 0,
            waiting=len(self._incoming) if batch is not None else 0,
            job=None if first is None else JobKind.STEPPED if first.stepped else JobKind.PLAIN,
            training_debt=self._training_debt,
            max_batch=self.max_batch_size,
        )

    def _busy(self) -> bool:
        return self.batch is not None and len(self.batch) > 0

    def _run_slice(self, job: _Job) -> None:
        try:
            if not job.stepped:
                job.resolve(job.call())
                return
            if job.steps is None:
                job.steps = cast(Generator[None, None, object], job.call())  # run_steps took a generator function
            started = time.perf_counter()
            try:
                next(job.steps)
            finally:
                self._training_debt += time.perf_counter() - started
        except StopIteration as done:
            job.resolve(done.value)
            return
        except BaseException as exc:  # the caller gets the error; the thread lives on
            job.resolve(error=exc)
            if not isinstance(exc, Exception):
                raise
            return
        if job.stepped:
            with self._cv:
                self._jobs.appendleft(job)  # its next slice comes after one decode step

    def _turn(self, joining: list[Row]) -> None:
        batch = self.batch
        if batch is None:
            return
        live = [r for r in joining if not r.cancelled]
        started = time.perf_counter()
        try:
            if live:
                batch.admit(live)
            if len(batch):
                rows = len(batch)
                batch.step()
                if self.on_step is not None:
                    self.on_step(rows)
            self._training_debt = max(0.0, self._training_debt - (time.perf_counter() - started))
        except Exception as exc:  # a bug outside any one row: no client may be left waiting
            log.exception("the batch failed for %d rows", len(batch))
            batch.fail_all(f"{type(exc).__name__}: {exc}")

    def _close(self) -> None:
        error = RuntimeError("the model worker is shutting down")
        for job in self._jobs:
            job.resolve(error=error)
        for row in self._incoming:
            row.emit(RowEvent(RowEventKind.ERROR, text="the server is shutting down", finish_reason=SHUTDOWN))
        if self.batch is not None:
            self.batch.fail_all("the server is shutting down", SHUTDOWN)
