"""Prompt prefixes computed once: the keys and values of what a chat prompt carries before its question.

Every chat request starts with the chat template's system turn (24 of the ~35 tokens of a short question with
the bundled model's default), and every turn of a conversation repeats the ones before it. Prefilling that
again for each request cost a fifth of the time 8 concurrent requests took. vLLM caches prefixes by blocks of
tokens; here the unit is the whole prefix before the question (PromptTokens.prefix), which is what prompts
share.

Same answers whatever was cached before: a prefix is always computed alone ([1, P], base model) and every
prompt that has one is prefilled after it, cached or not, so no answer depends on the cache's history. The
base model's keys and values fit every row: at the edited layer and above, a row that routes to an edit is
recomputed over its whole prompt with that edit's delta (editors/batch.py), as a whole-prompt prefill would
have made it.

Only models without sliding-window layers reuse prefixes: rows prefilled together after one are padded between
it and their rest, and a sliding window counts cache columns, padding included, so it would hide part of the
prefix from them.

Shapes: P prefix positions, H kv heads, Dh head width, D hidden width.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from editors.kv_cache import KV

MIN_PREFIX = 8  # shorter prefixes are prefilled with their prompt: a separate forward would cost more than it saves
MAX_PREFIX = 128  # longer ones too: a new prefix is computed outside the turn's prefill budget, so it stays small
CACHED_TOKENS = 4096  # prefix positions kept (the bundled model: 46 KB each)


@dataclass(frozen=True)
class Prefix:
    """A prefix's cache, as its own forward made it."""

    ids: tuple[int, ...]
    kv: KV  # [1, H, P, Dh] every layer's keys and values; exact-size copies, so appending after them never writes here
    layer_input: torch.Tensor  # [P, D] the edited layer's input at its positions (routing and the delta need it)


def prefix_ids(ids: Sequence[int], prefix: int) -> tuple[int, ...] | None:
    """The prefix a prompt is prefilled after, or None when it is prefilled whole."""
    if not MIN_PREFIX <= prefix <= MAX_PREFIX or prefix >= len(ids):
        return None
    return tuple(ids[:prefix])


class PrefixCache:
    """Least recently used prefixes, up to `tokens` positions in all."""

    def __init__(self, compute: Callable[[tuple[int, ...]], Prefix], tokens: int = CACHED_TOKENS) -> None:
        self._compute = compute
        self.tokens = tokens
        self._entries: OrderedDict[tuple[int, ...], Prefix] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, ids: tuple[int, ...]) -> Prefix:
        entry = self._entries.get(ids)
        if entry is not None:
            self._entries.move_to_end(ids)
            self.hits += 1
            return entry
        self.misses += 1
        entry = self._compute(ids)
        self._entries[ids] = entry
        while sum(len(key) for key in self._entries) > self.tokens:
            self._entries.popitem(last=False)
        return entry
