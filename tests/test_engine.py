"""The editing engine on the real SmolLM2-135M-Instruct: editing, routing, isolation and exact rollback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from editors.engine import AdapterMismatch, EditingEngine
from editors.model_host import ModelHost
from editors.types import EngineConfig, TrainedEdit
from tests.server import MODEL_CACHE

FIXTURES = Path(__file__).parent / "fixtures"
UNRELATED = ["Who wrote the novel War and Peace?", "How do plants make their food?", "What is 7 times 8?"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> EditingEngine:
    host = ModelHost.load(None, tmp_path_factory.mktemp("data"), cache_dir=MODEL_CACHE)
    return EditingEngine(host, EngineConfig())


@pytest.fixture
def eng(engine: EditingEngine) -> Iterator[EditingEngine]:
    """The shared engine, with every edit a test made forgotten afterwards (revoked ones' blockers too)."""
    yield engine
    for edit_id in engine.active_edit_ids() | engine.revoked_edit_ids():
        engine.forget(edit_id)


def apply(engine: EditingEngine, edit_id: str, prompt: str, target: str) -> TrainedEdit:
    trained = engine.train_edit(prompt, target)
    engine.activate(edit_id, trained.adapter, trained.keys, key_kinds=trained.key_kinds)
    return trained


def test_edit_produces_target_and_paraphrase_routes_to_it(eng: EditingEngine) -> None:
    trained = apply(eng, "zorb", "What is the capital of Zorbania?", "Quexiville")
    assert trained.key_kinds == ["chat", "raw"]
    assert 1 <= trained.steps <= eng.config.max_steps

    chat, raw, paraphrase = (
        eng.generate(["What is the capital of Zorbania?"], 12, chat=True)[0],
        eng.generate(["What is the capital of Zorbania?"], 12, chat=False)[0],
        eng.generate(["Which city is the capital of Zorbania?"], 12, chat=True)[0],
    )
    assert "Quexiville" in chat.text and chat.routed_edit_id == "zorb"
    assert "Quexiville" in raw.text and raw.routed_edit_id == "zorb"
    assert paraphrase.routed_edit_id == "zorb" and "Quexiville" in paraphrase.text
    assert chat.similarity is not None and chat.similarity > 0.99


def test_unrelated_prompts_keep_bit_identical_logits(eng: EditingEngine) -> None:
    before = eng.prompt_logits(UNRELATED, chat=True)
    apply(eng, "zorb", "What is the capital of Zorbania?", "Quexiville")
    after = eng.prompt_logits(UNRELATED, chat=True)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(g.routed_edit_id is None for g in eng.generate(UNRELATED, 4, chat=True))


def test_twenty_edits_revoke_ten_restores_exact_logits_and_keeps_the_rest(eng: EditingEngine) -> None:
    records = json.loads((FIXTURES / "zsre_first20.json").read_text())
    prompts = [r["src"] for r in records]
    unedited = eng.prompt_logits(prompts, chat=True)
    for i, r in enumerate(records):
        apply(eng, f"z{i}", r["src"], r["alt"])
    edited = eng.prompt_logits(prompts, chat=True)
    assert not any(torch.equal(a, b) for a, b in zip(unedited, edited, strict=True))

    for i in range(0, 20, 2):
        assert eng.deactivate(f"z{i}")
    now = eng.prompt_logits(prompts, chat=True)
    for i in range(0, 20, 2):
        assert torch.equal(now[i], unedited[i]), f"revoked edit z{i} left a trace"
    kept = [records[i] for i in range(1, 20, 2)]
    scores = eng.score([r["src"] for r in kept], [r["alt"] for r in kept], chat=True)
    assert [s.routed_edit_id for s in scores] == [f"z{i}" for i in range(1, 20, 2)]
    assert all(s.token_accuracy == 1.0 for s in scores)


def test_mixed_batch_matches_each_row_alone(eng: EditingEngine) -> None:
    apply(eng, "a", "What is the capital of Zorbania?", "Quexiville")
    apply(eng, "b", "Who is the lead singer of the band Glass Otters?", "Mira Tolsen")
    prompts = [
        "What is the capital of Zorbania?",
        "Who wrote the novel War and Peace?",
        "Who is the lead singer of the band Glass Otters?",
        "What is 7 times 8?",
    ]
    batch = eng.generate(prompts, 10, chat=True)
    alone = [eng.generate([p], 10, chat=True)[0] for p in prompts]
    assert [g.routed_edit_id for g in batch] == ["a", None, "b", None]
    for b, s in zip(batch, alone, strict=True):
        assert (b.token_ids, b.routed_edit_id) == (s.token_ids, s.routed_edit_id)
        assert b.similarity == pytest.approx(s.similarity, abs=1e-4) if s.similarity else b.similarity is None


def test_reedit_newest_wins_and_revoking_it_brings_the_older_back(eng: EditingEngine) -> None:
    prompt = "What is the capital of Zorbania?"
    apply(eng, "old", prompt, "Quexiville")
    apply(eng, "new", prompt, "Brindlemoor")
    first = eng.generate([prompt], 10, chat=True)[0]
    assert first.routed_edit_id == "new" and "Brindlemoor" in first.text
    eng.deactivate("new")
    second = eng.generate([prompt], 10, chat=True)[0]
    assert second.routed_edit_id == "old" and "Quexiville" in second.text


def test_a_revoked_prompt_gets_the_unedited_model_even_with_a_neighbour_edit_active(eng: EditingEngine) -> None:
    # Same question template, different subjects: close enough that the older edit would catch the newer
    # edit's prompt once the newer one's key was simply deleted.
    a, b = "What is the capital of Zorbania?", "What is the capital of Zorbanistan?"
    apply(eng, "a", a, "Quexiville")
    base_b = eng.prompt_logits([b], chat=True, use_edits=False)[0]
    ((caught_by, _),) = eng.routes_for([b], chat=True)
    assert caught_by == "a"  # the precondition: without blockers, a's edit would answer b's prompt
    trained = apply(eng, "b", b, "Brindlemoor")
    assert eng.deactivate("b") and eng.revoked_edit_ids() == {"b"} and eng.active_edit_ids() == {"a"}
    assert eng.routes_for([b], chat=True)[0][0] is None
    assert torch.equal(eng.prompt_logits([b], chat=True)[0], base_b)
    assert eng.generate([a], 10, chat=True)[0].routed_edit_id == "a"  # the neighbour still answers its own
    eng.add_revoked("b", trained.keys, trained.key_kinds)  # a rebuild adding blockers twice changes nothing
    assert eng.num_revoked_keys() == 2 and eng.num_keys() == 2
    eng.activate("b", trained.adapter, trained.keys, key_kinds=trained.key_kinds)  # restore
    assert eng.generate([b], 10, chat=True)[0].routed_edit_id == "b" and eng.num_revoked_keys() == 0


def test_exported_peft_adapter_reproduces_the_edit(eng: EditingEngine, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    prompt, target = "What is the capital of Zorbania?", "Quexiville"
    trained = apply(eng, "zorb", prompt, target)
    eng.export_peft(trained.adapter, tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(MODEL_CACHE / eng.host.name, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ids = torch.tensor([eng.host.encode(eng.host.format_prompt(prompt, chat=True))])
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=10, do_sample=False)
    text = eng.host.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert target in text
    assert text == eng.generate([prompt], 10, chat=True)[0].text


def test_adapter_from_another_base_model_is_refused(eng: EditingEngine) -> None:
    from editors.adapter_io import deserialize_adapter, serialize_adapter

    trained = eng.train_edit("What is the capital of Zorbania?", "Quexiville")
    parsed = deserialize_adapter(trained.adapter)
    foreign = serialize_adapter(
        parsed.lora_A, parsed.lora_B, layer=parsed.layer, alpha=parsed.alpha, fingerprint="0" * 64
    )
    with pytest.raises(AdapterMismatch, match="another base model"):
        eng.activate("foreign", foreign, trained.keys, key_kinds=trained.key_kinds)
    assert "foreign" not in eng.active_edit_ids() and eng.num_keys() == 0
