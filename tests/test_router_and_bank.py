"""Key index and LoRA bank on small hand-made tensors (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editors.lora_bank import BankedLoRALinear, LoRABank, RowPlan
from router.key_index import KeyIndex


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_search_applies_threshold_and_returns_nearest_edit() -> None:
    index = KeyIndex(3)
    index.add("x", unit(1, 0, 0), order=1)
    index.add("y", unit(0, 1, 0), order=2)
    routes = index.search(np.stack([unit(1, 0.1, 0), unit(0, 0, 1), unit(0.1, 1, 0)]), threshold=0.9)
    assert [r.edit_id for r in routes] == ["x", None, "y"]
    assert routes[0].similarity == pytest.approx(float(unit(1, 0.1, 0) @ unit(1, 0, 0)), abs=1e-6)


def test_removal_never_renumbers_other_keys() -> None:
    index = KeyIndex(3)
    for i, name in enumerate("abc"):
        index.add(name, np.eye(3, dtype=np.float32)[i], order=i)
    assert index.remove("b") and not index.remove("b")
    assert len(index) == 2 and index.edit_ids() == {"a", "c"}
    routes = index.search(np.eye(3, dtype=np.float32), threshold=0.5)
    assert [r.edit_id for r in routes] == ["a", None, "c"]


def test_identical_keys_newest_wins_until_revoked() -> None:
    index = KeyIndex(3)
    index.add("old", unit(1, 1, 0), order=1)
    index.add("new", unit(1, 1, 0), order=2)
    assert index.search(unit(1, 1, 0)[None], threshold=0.9)[0].edit_id == "new"
    index.revoke("new")
    assert index.search(unit(1, 1, 0)[None], threshold=0.9)[0].edit_id == "old"


def test_revoked_keys_block_their_neighbourhood_until_restored() -> None:
    index = KeyIndex(3)
    index.add("near", unit(1, 0.3, 0), order=1)
    index.add("gone", unit(1, 0, 0), order=2)
    query = unit(1, 0.05, 0)[None]  # nearest to "gone", also within the threshold of "near"
    assert index.revoke("gone") and not index.revoke("gone")
    assert (len(index), index.revoked_key_count(), index.edit_ids(), index.revoked_ids()) == (1, 1, {"near"}, {"gone"})
    blocked = index.search(query, threshold=0.9)[0]
    assert blocked.edit_id is None and blocked.similarity == pytest.approx(float(query[0] @ unit(1, 0, 0)), abs=1e-6)
    assert index.search(unit(1, 0.3, 0)[None], threshold=0.9)[0].edit_id == "near"
    index.add("gone", unit(1, 0, 0), order=2)  # restore replaces the blockers
    assert index.search(query, threshold=0.9)[0].edit_id == "gone" and index.revoked_key_count() == 0
    index.revoke("gone")
    assert index.remove("gone") and index.search(query, threshold=0.9)[0].edit_id == "near"
    index.add("old", unit(0, 0, 1), order=0, revoked=True)  # blockers for an edit loaded as revoked
    assert index.search(unit(0, 0, 1)[None], threshold=0.5)[0].edit_id is None and "old" not in index


def test_center_is_subtracted_before_cosine() -> None:
    center = np.array([10, 0, 0], dtype=np.float32)
    index = KeyIndex(3, center=center)
    index.add("x", np.array([10, 1, 0], dtype=np.float32), order=1)
    # Raw cosine of these two is ~0.99; once the shared direction is removed they are orthogonal.
    assert index.search(np.array([[10, 0, 1]], dtype=np.float32), threshold=0.5)[0].edit_id is None
    assert index.search(np.array([[10, 2, 0]], dtype=np.float32), threshold=0.5)[0].edit_id == "x"


def test_bank_applies_each_rows_own_adapter_and_leaves_others_untouched() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 4, bias=False)
    bank = LoRABank(6, 4, rank=2, dtype=torch.float32, device=torch.device("cpu"))
    adapters = {name: (torch.randn(2, 6), torch.randn(4, 2)) for name in ("p", "q", "r")}
    for name, (a, b) in adapters.items():
        bank.add(name, a, b, scale=0.5)
    bank.remove("q")  # leaves a hole that must not disturb the others
    layer = BankedLoRALinear(base, bank)
    x = torch.randn(3, 5, 6)
    plan_rows = {0: "r", 2: "p"}
    layer.plan = RowPlan(torch.tensor(list(plan_rows)), torch.tensor([bank.slot(n) for n in plan_rows.values()]))
    out = layer(x)
    for row, name in plan_rows.items():
        a, b = adapters[name]
        torch.testing.assert_close(out[row], base(x[row]) + 0.5 * (x[row] @ a.T @ b.T))
    assert torch.equal(out[1], base(x)[1])


def test_bank_rejects_wrong_shapes() -> None:
    bank = LoRABank(6, 4, rank=2, dtype=torch.float32, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="adapter shapes"):
        bank.add("bad", torch.zeros(3, 6), torch.zeros(4, 3), scale=1.0)
