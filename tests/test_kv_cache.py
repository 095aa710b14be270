"""The in-place KV cache (editors/kv_cache.py) and the sampler's greedy path, without a model."""

from __future__ import annotations

import math

import pytest
import torch

from editors.kv_cache import ROOM, GrowingCache, GrowingLayer, append
from editors.sampler import pick
from editors.types import Sampling


def _kv(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, length, 8, generator=torch.Generator().manual_seed(seed))  # [B, H, T, Dh]


def test_append_equals_concatenation_and_reuses_its_room() -> None:
    cache, steps = _kv(2, 5, 0), [_kv(2, 1, i) for i in range(1, ROOM + 3)]
    grown, expected = cache, cache
    pointers = []
    for new in steps:
        grown, expected = append(grown, new), torch.cat([expected, new], dim=2)
        assert torch.equal(grown, expected)
        pointers.append(grown.data_ptr())
    # The first append allocates (a plain tensor has no room); the next ROOM appends write into that buffer;
    # the one after reallocates.
    assert len(set(pointers[: ROOM + 1])) == 1 and pointers[ROOM + 1] != pointers[0]
    assert torch.equal(cache, _kv(2, 5, 0))  # the tensor appended to is never written


def test_a_copy_has_no_room_so_it_never_shares_one() -> None:
    grown = append(_kv(2, 4, 0), _kv(2, 1, 1))
    kept = grown.index_select(0, torch.tensor([1]))  # what the batch makes when a row leaves
    forked = append(kept, _kv(1, 1, 2))
    again = append(grown, _kv(2, 1, 3))
    assert forked.data_ptr() != again.data_ptr()
    assert torch.equal(forked[0, :, :5], grown[1]) and torch.equal(forked[0, :, 5:], _kv(1, 1, 2)[0])


def test_a_cache_wraps_kept_tensors_without_copying_and_grows_them() -> None:
    keys, values = _kv(2, 6, 0), _kv(2, 6, 1)
    cache = GrowingCache([(keys, values)])
    layer = cache.layers[0]
    assert isinstance(layer, GrowingLayer) and layer.keys is keys and cache.get_seq_length() == 6
    new_keys, new_values = cache.update(_kv(2, 1, 2), _kv(2, 1, 3), 0)
    assert new_keys.shape == (2, 3, 7, 8) and torch.equal(new_values[:, :, :6], values)


def test_greedy_picks_the_argmax_and_reports_logprobs_only_when_asked() -> None:
    logits = torch.tensor([0.5, 3.0, -1.0, 2.0])
    greedy = Sampling(max_new_tokens=4)
    assert pick(logits, greedy, None) == pick(logits, greedy, None, logprobs=False)
    plain = pick(logits, greedy, None)
    assert plain.token == 1 and plain.logprob is None and plain.top == ()
    asked = pick(logits, greedy, None, logprobs=True, top_logprobs=2)
    assert asked.token == 1 and asked.logprob == pytest.approx(float(torch.log_softmax(logits.double(), -1)[1]))
    assert [t for t, _ in asked.top] == [1, 3]


@pytest.mark.parametrize("logprobs", [False, True])
def test_nan_logits_fail_the_row_whether_or_not_logprobs_are_asked(logprobs: bool) -> None:
    logits = torch.tensor([0.5, math.nan, 1.0])
    with pytest.raises(ValueError, match="not a number"):
        pick(logits, Sampling(max_new_tokens=4), None, logprobs=logprobs)
