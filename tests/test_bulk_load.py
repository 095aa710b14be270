"""Startup's bulk-load helpers (no model needed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from app.bulk_load import batches, prefetched


def test_batches_cover_everything_in_order() -> None:
    assert list(batches(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batches([], 3)) == []


def test_prefetched_yields_everything_in_order_from_another_thread() -> None:
    producers: set[str] = set()

    def items() -> Iterator[int]:
        for i in range(5_000):
            producers.add(threading.current_thread().name)
            yield i

    assert list(prefetched(items(), depth=16)) == list(range(5_000))
    assert producers == {"sola-prefetch"}


def test_prefetched_raises_the_producers_error_and_frees_it_when_stopped_early() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetched(failing()))
    finished = threading.Event()

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            finished.set()

    stream = prefetched(endless(), depth=4)
    assert next(stream) == 0
    stream.close()  # the consumer gives up: the producer must stop rather than block on a full buffer
    assert finished.wait(5)
