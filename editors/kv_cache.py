"""A KV cache that grows in place, for continuous batching's decode steps.

Hugging Face's DynamicCache concatenates at every step, and wrapping a kept cache in a new DynamicCache
copies it once more: two copies of the whole cache per decode step, 12% of a batch-8 step of the bundled
model. Here each layer's keys and values are views into a buffer with room after their end: a step writes
its one new column and the cache is wrapped without a copy.

Ownership: the room after a tensor made by `append` belongs to that tensor alone. Whoever appends to it must
drop it for the result (the batch always keeps the newest cache); a copy (index_select, cat, clone) has no
room, so its first append reallocates. Never append twice to the same tensor: both results would share the
room.

Shapes: B rows, H kv heads, T cached positions, n new positions, Dh head width.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) [B, H, T, Dh]

ROOM = 64  # positions of room a reallocation adds: one copy of the cache per 64 decode steps
_BUFFER = "_sola_kv_buffer"  # the attribute that marks a tensor made by append(), naming its buffer


def append(cache: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """cache [B, H, T, Dh] + new [B, H, n, Dh] -> [B, H, T+n, Dh], written into cache's room when it has some."""
    length, n = cache.shape[2], new.shape[2]
    buffer: torch.Tensor | None = getattr(cache, _BUFFER, None)
    if buffer is None or length + n > buffer.shape[2] or buffer.shape[:2] != new.shape[:2]:
        shape = (*new.shape[:2], length + n + ROOM, new.shape[3])
        buffer = new.new_empty(shape)
        buffer[:, :, :length] = cache
    grown = buffer[:, :, : length + n]
    grown[:, :, length:] = new
    setattr(grown, _BUFFER, buffer)
    return grown


class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]  # transformers is untyped here
    """A DynamicLayer whose update appends in place (append above)."""

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor) -> GrowingLayer:
        """A layer over cached keys and values [B, H, T, Dh], without copying them."""
        layer = cls()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        return layer

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.keys = key_states.new_empty((*key_states.shape[:2], 0, key_states.shape[3]))
            self.values = value_states.new_empty((*value_states.shape[:2], 0, value_states.shape[3]))
        assert self.keys is not None and self.values is not None
        self.keys = append(self.keys, key_states)
        self.values = append(self.values, value_states)
        return self.keys, self.values


class GrowingCache(DynamicCache):
    """A DynamicCache of GrowingLayers, optionally over an existing per-layer (keys, values) list."""

    def __init__(self, kv: KV | None = None) -> None:
        if kv:
            Cache.__init__(self, layers=[GrowingLayer.holding(k, v) for k, v in kv])
        else:
            Cache.__init__(self, layer_class_to_replicate=GrowingLayer)
