"""Loading very many stored edits at startup: in batches, and the heap trimmed after."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter); itertools.batched from Python 3.12."""
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def release_freed_memory() -> None:
    """Return the startup's transient buffers (every adapter blob read once) to the OS: glibc keeps freed
    heap in its arenas, so without this a process that loaded 100,000 edits stays gigabytes larger."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)
