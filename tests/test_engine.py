"""The editing engine on the real SmolLM2-135M-Instruct: editing, routing, isolation and exact rollback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from editors.batch import generate
from editors.engine import Activation, AdapterMismatch, EditingEngine
from editors.model_host import ModelHost
from editors.types import EngineConfig, PromptFormat, TrainedEdit
from tests.server import MODEL_CACHE

pytestmark = pytest.mark.model

CHAT, RAW = PromptFormat.CHAT, PromptFormat.RAW

FIXTURES = Path(__file__).parent / "fixtures"
UNRELATED = ["Who wrote the novel War and Peace?", "How do plants make their food?", "What is 7 times 8?"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> EditingEngine:
    host = ModelHost.load(None, tmp_path_factory.mktemp("data"), cache_dir=MODEL_CACHE)
    return EditingEngine(host, EngineConfig())


@pytest.fixture
def eng(engine: EditingEngine) -> Iterator[EditingEngine]:
    """The shared engine, with every edit a test made revoked afterwards."""
    yield engine
    for edit_id in engine.active_edit_ids():
        engine.revoke(edit_id)


def apply(engine: EditingEngine, edit_id: str, prompt: str, target: str) -> TrainedEdit:
    trained = engine.train_edit(prompt, target)
    engine.activate(edit_id, trained.adapter, trained.keys, trained.key_kinds, prompt, target)
    return trained


def test_edit_produces_target_and_paraphrase_routes_to_it(eng: EditingEngine) -> None:
    trained = apply(eng, "zorb", "What is the capital of Zorbania?", "Quexiville")
    assert trained.key_kinds == ["chat:prompt", "raw:prompt"]
    assert 1 <= trained.steps <= eng.config.max_steps

    chat, raw, paraphrase = (
        generate(eng, ["What is the capital of Zorbania?"], 12, prompt_format=CHAT)[0],
        generate(eng, ["What is the capital of Zorbania?"], 12, prompt_format=RAW)[0],
        generate(eng, ["What's Zorbania's capital?"], 12, prompt_format=CHAT)[0],
    )
    assert "Quexiville" in chat.text and chat.routed_edit_id == "zorb"
    assert "Quexiville" in raw.text and raw.routed_edit_id == "zorb"
    assert paraphrase.routed_edit_id == "zorb" and "Quexiville" in paraphrase.text
    assert chat.similarity is not None and chat.similarity > 0.99


def test_unrelated_prompts_keep_bit_identical_logits(eng: EditingEngine) -> None:
    before = eng.prompt_logits(UNRELATED, prompt_format=CHAT)
    apply(eng, "zorb", "What is the capital of Zorbania?", "Quexiville")
    after = eng.prompt_logits(UNRELATED, prompt_format=CHAT)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(g.routed_edit_id is None for g in generate(eng, UNRELATED, 4, prompt_format=CHAT))


def test_twenty_edits_revoke_ten_restores_exact_logits_and_keeps_the_rest(eng: EditingEngine) -> None:
    records = json.loads((FIXTURES / "zsre_first20.json").read_text())
    prompts = [r["src"] for r in records]
    unedited = eng.prompt_logits(prompts, prompt_format=CHAT)
    for i, r in enumerate(records):
        apply(eng, f"z{i}", r["src"], r["alt"])
    edited = eng.prompt_logits(prompts, prompt_format=CHAT)
    assert not any(torch.equal(a, b) for a, b in zip(unedited, edited, strict=True))

    for i in range(0, 20, 2):
        assert eng.revoke(f"z{i}")
    now = eng.prompt_logits(prompts, prompt_format=CHAT)
    for i in range(0, 20, 2):
        assert torch.equal(now[i], unedited[i]), f"revoked edit z{i} left a trace"
    kept = [records[i] for i in range(1, 20, 2)]
    scores = eng.score([r["src"] for r in kept], [r["alt"] for r in kept], prompt_format=CHAT)
    assert [s.routed_edit_id for s in scores] == [f"z{i}" for i in range(1, 20, 2)]
    assert all(s.predicted_ids == s.target_ids for s in scores)  # every target token the argmax


def test_mixed_batch_matches_each_row_alone(eng: EditingEngine) -> None:
    apply(eng, "a", "What is the capital of Zorbania?", "Quexiville")
    apply(eng, "b", "Who is the lead singer of the band Glass Otters?", "Mira Tolsen")
    prompts = [
        "What is the capital of Zorbania?",
        "Who wrote the novel War and Peace?",
        "Who is the lead singer of the band Glass Otters?",
        "What is 7 times 8?",
    ]
    batch = generate(eng, prompts, 10, prompt_format=CHAT)
    alone = [generate(eng, [p], 10, prompt_format=CHAT)[0] for p in prompts]
    assert [g.routed_edit_id for g in batch] == ["a", None, "b", None]
    for b, s in zip(batch, alone, strict=True):
        assert (b.token_ids, b.routed_edit_id) == (s.token_ids, s.routed_edit_id)
        assert b.similarity is None if s.similarity is None else b.similarity == pytest.approx(s.similarity, abs=1e-4)


def test_reedit_newest_wins_and_revoking_it_brings_the_older_back(eng: EditingEngine) -> None:
    prompt = "What is the capital of Zorbania?"
    apply(eng, "old", prompt, "Quexiville")
    apply(eng, "new", prompt, "Brindlemoor")
    first = generate(eng, [prompt], 10, prompt_format=CHAT)[0]
    assert first.routed_edit_id == "new" and "Brindlemoor" in first.text
    eng.revoke("new")
    second = generate(eng, [prompt], 10, prompt_format=CHAT)[0]
    assert second.routed_edit_id == "old" and "Quexiville" in second.text


# Hand-written (edit prompt, target, questions that must reach it, same template about another subject,
# same subject about another relation): the questions users ask next to an edit. Not benchmark records.
ROUTING_CASES = [
    (
        "Who is the CEO of Acme Corporation?",
        "Jane Doe",
        [
            "Hi there! Who is the CEO of Acme Corporation?",
            "Who is the CEO of Acme Corporation? Answer in one word.",
            "Who's the current CEO at Acme Corporation?",
        ],
        ["Who is the CEO of Globex Corporation?"],
        ["Where is Acme Corporation headquartered?", "How many employees does Acme Corporation have?"],
    ),
    (
        "What is the capital of Zorbania?",
        "Quexiville",
        ["What's Zorbania's capital?", "What is the capital of Zorbania? Answer in one word."],
        ["What is the capital of Zorbanistan?", "What is the capital of Quarvia?"],
        ["What is the population of Zorbania?", "What language is spoken in Zorbania?"],
    ),
]


def test_edits_fire_on_their_questions_and_not_on_other_subjects(eng: EditingEngine) -> None:
    for i, (prompt, target, _, _, _) in enumerate(ROUTING_CASES):
        apply(eng, f"case{i}", prompt, target)
    for i, (_, _, fire, other_subject, _) in enumerate(ROUTING_CASES):
        assert [edit for edit, _ in eng.routes_for(fire, prompt_format=CHAT)] == [f"case{i}"] * len(fire), fire
        assert [edit for edit, _ in eng.routes_for(other_subject, prompt_format=CHAT)] == [None] * len(other_subject)


def test_edits_do_not_fire_on_another_relation_of_their_subject(eng: EditingEngine) -> None:
    for i, (prompt, target, _, _, _) in enumerate(ROUTING_CASES):
        apply(eng, f"case{i}", prompt, target)
    for _, _, _, _, other_relation in ROUTING_CASES:
        assert [edit for edit, _ in eng.routes_for(other_relation, prompt_format=CHAT)] == [None] * len(other_relation)


def test_routing_reads_the_questions_own_sentence(eng: EditingEngine) -> None:
    """A sentence about something else before the question does not drown it (CounterFact's paraphrase rows)."""
    apply(eng, "zorb", "What is the capital of Zorbania?", "Quexiville")
    for prompt_format in (CHAT, RAW):
        encoded = eng.encode("My sister moved abroad last spring. What is the capital of Zorbania?", prompt_format)
        question = eng.host.tokenizer.decode(encoded.ids[encoded.span[0] : encoded.span[1]])
        assert question == " What is the capital of Zorbania?", prompt_format
    asked = ["The weather was awful all week and the trains were late. What is the capital of Zorbania?"]
    assert [edit for edit, _ in eng.routes_for(asked, prompt_format=CHAT)] == ["zorb"]


# Hand-written operator facts (not from the operator set or any benchmark): (edit prompt, target, a paraphrase it
# must answer, another attribute of the same subject, the same question about a sibling with an overlapping name).
OPERATOR_TRIPLES = [
    (
        "What time does the Lisbon office of Norvik Freight open?",
        "9:30 am",
        "When does Norvik Freight's Lisbon office open?",
        "What time does the Lisbon office of Norvik Freight close?",
        "What time does the Porto office of Norvik Freight open?",
    ),
    (
        "Who is the CTO of Vellora Systems?",
        "Amaia Costa",
        "Who's Vellora Systems' CTO?",
        "Who is the CFO of Vellora Systems?",
        "Who is the CTO of Vellora Labs?",
    ),
    (
        "How much does the Pro plan of Quillbox cost per month?",
        "$29",
        "Quillbox Pro plan monthly price?",
        "How many seats does the Pro plan of Quillbox include?",
        "How much does the Basic plan of Quillbox cost per month?",
    ),
    (
        "Where is the Harbourline Summit 2027 being held?",
        "Pier 7 Hall, Halifax",
        "What's the venue of the Harbourline Summit 2027?",
        "When does the Harbourline Summit 2027 start?",
        "Where is the Harbourline Summit 2026 being held?",
    ),
    (
        "How long is the warranty on the Korvane K7 vacuum?",
        "3 years",
        "how long is the korvane k7 vacuum warranty",
        "How much does the Korvane K7 vacuum weigh?",
        "How long is the warranty on the Korvane K9 vacuum?",
    ),
]


def test_operator_edits_answer_their_question_and_not_the_near_misses(eng: EditingEngine) -> None:
    for i, (prompt, target, *_) in enumerate(OPERATOR_TRIPLES):
        apply(eng, f"op{i}", prompt, target)
    for i, (prompt, _, paraphrase, same_subject, sibling) in enumerate(OPERATOR_TRIPLES):
        routed = [edit for edit, _ in eng.routes_for([prompt, paraphrase, same_subject, sibling], CHAT)]
        assert routed == [f"op{i}", f"op{i}", None, None], prompt
    answers = generate(eng, [t[2] for t in OPERATOR_TRIPLES], 16, prompt_format=CHAT)
    assert all(t[1] in a.text for t, a in zip(OPERATOR_TRIPLES, answers, strict=True))
    near = [q for t in OPERATOR_TRIPLES for q in t[3:]]
    edited, unedited = generate(eng, near, 16, CHAT), generate(eng, near, 16, CHAT, use_edits=False)
    assert [a.token_ids for a in edited] == [b.token_ids for b in unedited]


def test_an_edit_fires_under_a_custom_system_prompt_and_after_earlier_turns(eng: EditingEngine) -> None:
    from editors.types import ChatContext

    prompt, target = "What is the capital of Zorbania?", "Quexiville"
    apply(eng, "zorb", prompt, target)
    contexts = [
        ChatContext(system="You are the support assistant of a logistics company. Be brief."),
        ChatContext(history=(("user", "Hi! Can you help me plan a trip?"), ("assistant", "Of course, gladly."))),
    ]
    for context in contexts:
        answer = generate(eng, [prompt], 10, prompt_format=CHAT, context=context)[0]
        assert answer.routed_edit_id == "zorb" and target in answer.text, context


def test_revoking_one_of_two_overlapping_edits_is_as_if_it_was_never_made(
    eng: EditingEngine, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Same template, subjects one suffix apart: each must answer only its own question.
    a, b = "What is the capital of Zorbania?", "What is the capital of Zorbanistan?"
    apply(eng, "a", a, "Quexiville")
    base_b = eng.prompt_logits([b], prompt_format=CHAT, use_edits=False)[0]
    assert eng.routes_for([b], prompt_format=CHAT)[0][0] is None  # a does not catch b's question
    trained_b = apply(eng, "b", b, "Brindlemoor")
    assert [edit for edit, _ in eng.routes_for([a, b], prompt_format=CHAT)] == ["a", "b"]
    assert eng.revoke("b") and eng.active_edit_ids() == {"a"} and not eng.revoke("b")

    # An independent engine in which b was never made: every probe answers the same, bit for bit.
    never = EditingEngine(ModelHost.load(None, tmp_path_factory.mktemp("never"), cache_dir=MODEL_CACHE))
    trained_a = never.train_edit(a, "Quexiville")
    never.activate("a", trained_a.adapter, trained_a.keys, trained_a.key_kinds, a, "Quexiville")
    probes = [a, b, "Which city is the capital of Zorbania?", "Who wrote the novel War and Peace?"]
    for got, want in zip(
        generate(eng, probes, 10, prompt_format=CHAT), generate(never, probes, 10, prompt_format=CHAT), strict=True
    ):
        assert (got.token_ids, got.routed_edit_id) == (want.token_ids, want.routed_edit_id)
    for got_logits, want_logits in zip(
        eng.prompt_logits(probes, prompt_format=CHAT), never.prompt_logits(probes, prompt_format=CHAT), strict=True
    ):
        assert torch.equal(got_logits, want_logits)
    assert torch.equal(eng.prompt_logits([b], prompt_format=CHAT)[0], base_b)
    eng.activate("b", trained_b.adapter, trained_b.keys, trained_b.key_kinds, b, "Brindlemoor")  # restore
    assert generate(eng, [b], 10, prompt_format=CHAT)[0].routed_edit_id == "b" and eng.num_keys() == 4


def test_first_router_keys_are_recomputed_from_the_prompt(eng: EditingEngine) -> None:
    """Edits stored by the first router carry last-token keys under kinds "chat"/"raw": re-keyed at load."""
    prompt = "What is the capital of Zorbania?"
    trained = eng.train_edit(prompt, "Quexiville")
    eng.activate("old", trained.adapter, trained.keys * 0 + 1, ["chat", "raw"], prompt, "Quexiville")
    assert eng.routes_for([prompt], prompt_format=CHAT)[0] == ("old", pytest.approx(1.0, abs=1e-5))


def test_a_new_edits_own_keys_route_as_its_prompt_does(eng: EditingEngine) -> None:
    """Supersession reads the new edit's trained keys instead of a forward pass: same decisions."""
    prompt = "What is the capital of Zorbania?"
    apply(eng, "old", prompt, "Quexiville")
    newer = eng.train_edit(prompt, "Brindlemoor")
    by_keys = [(r.edit_id, r.similarity) for r in eng.prompt_routes(newer, prompt)]
    by_forward = [eng.routes_for([prompt], prompt_format=f)[0] for f in eng.host.prompt_formats]
    assert [edit for edit, _ in by_keys] == [edit for edit, _ in by_forward] == ["old"] * len(eng.host.prompt_formats)
    assert [s for _, s in by_keys] == pytest.approx([s for _, s in by_forward], abs=1e-5)


def test_exported_peft_adapter_reproduces_the_edit(eng: EditingEngine, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    prompt, target = "What is the capital of Zorbania?", "Quexiville"
    trained = apply(eng, "zorb", prompt, target)
    eng.export_peft(trained.adapter, tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(MODEL_CACHE / eng.host.name, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ids = torch.tensor([eng.host.encode(eng.host.format_prompt(prompt, CHAT))])
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=10, do_sample=False)
    text = eng.host.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert target in text
    assert text == generate(eng, [prompt], 10, prompt_format=CHAT)[0].text


def test_adapter_from_another_base_model_is_refused(eng: EditingEngine) -> None:
    from editors.adapter_io import deserialize_adapter, serialize_adapter

    trained = eng.train_edit("What is the capital of Zorbania?", "Quexiville")
    parsed = deserialize_adapter(trained.adapter)
    foreign = serialize_adapter(
        torch.from_numpy(parsed.lora_A.copy()),
        torch.from_numpy(parsed.lora_B.copy()),
        layer=parsed.layer,
        alpha=parsed.alpha,
        fingerprint="0" * 64,
    )
    with pytest.raises(AdapterMismatch, match="another base model"):
        eng.activate("foreign", foreign, trained.keys, trained.key_kinds, "What is the capital of Zorbania?", "Q")
    assert "foreign" not in eng.active_edit_ids() and eng.num_keys() == 0
    # In a batch (startup), the foreign adapter is refused alone and the good edit beside it is active.
    prompt = "What is the capital of Zorbania?"
    refused = eng.activate_many(
        [
            Activation("foreign", foreign, trained.keys, trained.key_kinds, prompt, "Quexiville"),
            Activation("good", trained.adapter, trained.keys, trained.key_kinds, prompt, "Quexiville"),
        ]
    )
    assert list(refused) == ["foreign"] and isinstance(refused["foreign"], AdapterMismatch)
    assert eng.active_edit_ids() == {"good"} and eng.num_keys() == len(trained.keys)
    assert generate(eng, [prompt], 6, prompt_format=CHAT)[0].routed_edit_id == "good"
