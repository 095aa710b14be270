"""`sola eval` trains its edits together (evaluation/quality.py apply_edits): the sequential protocol's metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.types import EngineConfig, PromptFormat, TrainedEdit
from evaluation.datasets import load_records
from evaluation.quality import Measurer, apply_edits, measure
from tests.server import MODEL_CACHE

pytestmark = pytest.mark.model

FIXTURE = Path(__file__).parent / "fixtures" / "zsre_first20.json"


def test_batched_edits_give_the_sequential_protocols_metrics(tmp_path: Path) -> None:
    records = load_records(FIXTURE, "zsre", 4).records
    ids = [f"e{i}" for i in range(len(records))]
    engine = EditingEngine(ModelHost.load(None, tmp_path, cache_dir=MODEL_CACHE), EngineConfig())
    m = Measurer(engine, PromptFormat.CHAT)
    results = {}
    for train_batch in (3, None):  # 3 of 4 at once: one edit joins as another is learnt
        trained: dict[str, TrainedEdit] = {}
        timings = apply_edits(engine, records, ids, trained, train_batch=train_batch)
        results[train_batch] = (measure(m, records, ids, with_perplexity=False), timings["steps"])
        for edit_id in ids:
            assert engine.revoke(edit_id)
    assert results[3] == results[None]
    assert results[3][0]["reliability"] == 1.0
