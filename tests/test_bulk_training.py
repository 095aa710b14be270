"""Edits trained together (EditingEngine.train_edits) on the real model: each as good as alone, each its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.types import EditSpec, EngineConfig, PromptFormat
from tests.server import MODEL_CACHE

pytestmark = pytest.mark.model

CHAT = PromptFormat.CHAT
RECORDS = json.loads((Path(__file__).parent / "fixtures" / "zsre_first20.json").read_text())
# Four facts of different subjects; the first is trained alone too, to compare.
SPECS = [EditSpec(r["src"], r["alt"]) for r in RECORDS[:4]]


@pytest.fixture(scope="module")
def eng(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EditingEngine]:
    engine = EditingEngine(ModelHost.load(None, tmp_path_factory.mktemp("data"), cache_dir=MODEL_CACHE), EngineConfig())
    yield engine


def test_edits_trained_together_answer_their_own_prompt_only_and_revoke_exactly(eng: EditingEngine) -> None:
    prompts = [s.prompt for s in SPECS]
    unedited = eng.prompt_logits(prompts, prompt_format=CHAT)
    # Room for 3 of the 4: the last joins the batch when the first is learnt.
    together = eng.train_edits(SPECS, batch_size=3)
    alone = [eng.train_edit(s.prompt, s.target) for s in SPECS[:1]]
    for t, a in zip(together[:1], alone, strict=True):  # the same training, up to float noise of the batch
        assert not isinstance(t, Exception)
        assert t.steps == a.steps
        assert t.loss == pytest.approx(a.loss, abs=2e-3)
        assert t.key_kinds == a.key_kinds
        np.testing.assert_allclose(t.keys, a.keys, atol=1e-4)

    for i, (spec, trained) in enumerate(zip(SPECS, together, strict=True)):
        assert not isinstance(trained, Exception)
        eng.activate(f"e{i}", trained.adapter, trained.keys, trained.key_kinds, spec.prompt, spec.target)
    ids = [f"e{i}" for i in range(len(SPECS))]
    for prompt_format in eng.host.prompt_formats:
        scores = eng.score(prompts, [s.target for s in SPECS], prompt_format=prompt_format)
        assert [s.routed_edit_id for s in scores] == ids, prompt_format
        assert all(s.predicted_ids == s.target_ids for s in scores), prompt_format

    assert eng.revoke("e2")
    after = eng.prompt_logits(prompts, prompt_format=CHAT)
    assert torch.equal(after[2], unedited[2])  # as if that edit had never been made
    kept = [i for i in range(len(SPECS)) if i != 2]
    scores = eng.score([prompts[i] for i in kept], [SPECS[i].target for i in kept], prompt_format=CHAT)
    assert [s.routed_edit_id for s in scores] == [f"e{i}" for i in kept]
    assert all(s.predicted_ids == s.target_ids for s in scores)


def test_batch_size_must_be_positive(eng: EditingEngine) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        eng.train_edits(SPECS[:1], batch_size=0)
