"""Requests that arrive while the model is busy are decoded together, in batches of one format and length.

Each request queues a job and one drain per job on the model worker, so none is ever left waiting: a
drain takes up to `max_batch_size` waiting jobs (often all of them, the later drains then find nothing)."""

from __future__ import annotations

import asyncio
import logging
import queue
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.metrics import Metrics
from app.schemas import GenerateRequest
from app.service_errors import ServiceError, ShuttingDown
from app.worker import ModelWorker
from editors.types import Generation, PromptFormat

log = logging.getLogger(__name__)

# (prompts, max_new_tokens, prompt format, use_edits) -> one Generation per prompt, in order
Decode = Callable[[Sequence[str], int, PromptFormat, bool], list[Generation]]
# A request the model cannot take as it is (too long, wrong format): its error, or None
Check = Callable[[GenerateRequest], ServiceError | None]


@dataclass
class _Job:
    request: GenerateRequest
    future: asyncio.Future[Generation]
    loop: asyncio.AbstractEventLoop

    def resolve(self, result: Generation | None = None, error: BaseException | None = None) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.future, result, error)


def _resolve(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away and its await was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class GenerateBatcher:
    def __init__(self, worker: ModelWorker, metrics: Metrics, max_batch_size: int, check: Check, decode: Decode):
        self.worker = worker
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.check = check
        self.decode = decode
        self._pending: queue.SimpleQueue[_Job] = queue.SimpleQueue()

    async def generate(self, request: GenerateRequest) -> Generation:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Generation] = loop.create_future()
        self._pending.put(_Job(request, future, loop))
        self.metrics.queue_depth.inc()
        try:
            self.worker.submit(self._drain)
        except RuntimeError as exc:  # the worker is shutting down
            raise ShuttingDown("the server is shutting down") from exc
        return await future

    def _drain(self) -> None:
        jobs: list[_Job] = []
        while len(jobs) < self.max_batch_size:
            try:
                jobs.append(self._pending.get_nowait())
            except queue.Empty:
                break
            self.metrics.queue_depth.dec()
        try:
            self._answer(jobs)
        except BaseException as exc:  # a bug here must not leave a client waiting forever
            log.exception("generation job failed for %d requests", len(jobs))
            self.metrics.generate_failures.inc()
            for job in jobs:
                job.resolve(error=exc)
            if not isinstance(exc, Exception):
                raise

    def _answer(self, jobs: list[_Job]) -> None:
        """Decode `jobs` in batches of one format, length and use_edits; every future gets a result or an error."""
        groups: dict[tuple[PromptFormat, int, bool], list[_Job]] = defaultdict(list)
        for job in jobs:
            if job.future.cancelled():
                continue
            error = self.check(job.request)
            if error is not None:
                job.resolve(error=error)
            else:
                request = job.request
                groups[(request.prompt_format, request.max_new_tokens, request.use_edits)].append(job)
        for (prompt_format, max_new_tokens, use_edits), group in groups.items():
            self.metrics.batch_size.observe(len(group))
            try:
                outs = self.decode([j.request.prompt for j in group], max_new_tokens, prompt_format, use_edits)
            except Exception as exc:
                log.exception("generation failed for a batch of %d", len(group))
                self.metrics.generate_failures.inc()
                for job in group:
                    job.resolve(error=exc)
                continue
            for job, out in zip(group, outs, strict=True):
                self._count(out)
                job.resolve(out)

    def _count(self, out: Generation) -> None:
        self.metrics.queries.labels(routed=str(out.routed_edit_id is not None).lower()).inc()
        self.metrics.tokens_generated.inc(len(out.token_ids))
        if out.routed_edit_id is not None:
            self.metrics.edit_hits.hit(out.routed_edit_id)
