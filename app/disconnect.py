"""Stop decoding for a client that hung up before its (non-streamed) answer was ready.

A streamed answer notices at its next write; a plain JSON answer writes nothing until the end, so without
this a dropped 512-token request keeps a batch slot busy for nobody."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from app.api_error import ApiError

T = TypeVar("T")
POLL_SECONDS = 0.25  # a disconnect frees the slot within this, plus one decode step


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; if the client disconnects first, cancel it (its rows leave the batch) and answer 499."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=POLL_SECONDS)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            # nginx's "client closed request": nobody reads it, but the access log and metrics say what happened
            raise ApiError(499, "client_closed_request", "the client disconnected before the answer was ready")
