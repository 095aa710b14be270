"""Startup's bulk-load helpers (no model needed)."""

from __future__ import annotations

from app.bulk_load import batches


def test_batches_cover_everything_in_order() -> None:
    assert list(batches(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batches([], 3)) == []
