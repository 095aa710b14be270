"""Loading very many stored edits at startup: in batches, read ahead on a second thread, heap trimmed after."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter); itertools.batched from Python 3.12."""
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def prefetched(items: Iterable[T], depth: int = 2 * 1_000) -> Iterator[T]:
    """`items`, produced by a background thread up to `depth` ahead: the startup's database stream (SQLite
    and hashing release the GIL) overlaps the engine's activation instead of alternating with it."""
    buffer: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    with contextlib.suppress(queue.Full):
                        buffer.put(("item", item), timeout=0.1)
                        break
                if stop.is_set():
                    return
            buffer.put(("done", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            buffer.put(("error", exc))

    thread = threading.Thread(target=produce, name="sola-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()  # a consumer that stops early releases the producer (and its database session)
        thread.join(timeout=5)


def release_freed_memory() -> None:
    """Return the startup's transient buffers (every adapter blob read once) to the OS: glibc keeps freed
    heap in its arenas, so without this a process that loaded 100,000 edits stays gigabytes larger."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)
