"""The one model worker thread. Every engine call runs here, so a query never sees a half-applied edit,
and the event loop only awaits (never blocks on) model work."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class ModelWorker:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sola-model")

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run fn on the worker thread and await its result. Jobs run one at a time, in submission order."""
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def submit(self, fn: Callable[[], None]) -> None:
        """Fire-and-forget job (its result is delivered by fn itself)."""
        self._pool.submit(fn)

    def shutdown(self) -> None:
        # Let the running job finish (an edit either commits or leaves no trace); drop queued ones.
        self._pool.shutdown(wait=True, cancel_futures=True)
