"""Key index and LoRA bank on small hand-made tensors (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editors.routed_lora import BankedLoRALinear, LoRABank, RowPlan
from routing import lexical
from routing.key_index import KeyIndex, normalise


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


ACME = frozenset({"acme"})
ANY: list[frozenset[str]] = [frozenset({"acme", "globex"})] * 3  # queries that name every subject below


def test_search_applies_threshold_and_returns_nearest_edit() -> None:
    index = KeyIndex(3)
    index.add("x", unit(1, 0, 0)[None], [ACME], seq=1)
    index.add("y", unit(0, 1, 0)[None], [ACME], seq=2)
    routes = index.search(np.stack([unit(1, 0.1, 0), unit(0, 0, 1), unit(0.1, 1, 0)]), ANY, threshold=0.9)
    assert [r.edit_id for r in routes] == ["x", None, "y"]
    assert routes[0].similarity == pytest.approx(float(unit(1, 0.1, 0) @ unit(1, 0, 0)), abs=1e-6)


def test_score_is_cosine_times_squared_subject_coverage() -> None:
    index = KeyIndex(3)
    index.add("acme-ceo", unit(1, 0, 0)[None], [frozenset({"acme", "corp"})], seq=1)
    query = unit(1, 0.1, 0)[None]
    cosine = float(query[0] @ unit(1, 0, 0))
    full, half, none = (
        index.search(query, [words], threshold=0.2)[0]
        for words in (frozenset({"who", "acme", "corp"}), frozenset({"acme", "globex"}), frozenset({"globex"}))
    )
    assert (full.edit_id, full.similarity) == ("acme-ceo", pytest.approx(cosine, abs=1e-6))
    assert (half.edit_id, half.similarity) == ("acme-ceo", pytest.approx(cosine / 4, abs=1e-6))
    assert (none.edit_id, none.similarity) == (None, 0.0)  # same template, other subject: never fires


def test_lexical_subject_words_and_coverage() -> None:
    common = {"who", "is", "the", "of", "what"}.__contains__
    assert lexical.subject_words("Who is the CEO of Acme Corp?", common) == {"ceo", "acme", "corp"}
    assert lexical.subject_words("Porsche 911, created by", common) == {"porsche", "911"}
    assert lexical.subject_words("what is the boiling point of water?", common) == {"boiling", "point", "water"}
    # Common words capitalised inside a sentence name something ("The Game"); at its start they do not.
    assert lexical.subject_words("The names of the cast members of The Game are", common) == {"game"}
    assert lexical.subject_words("Who wrote The Lord of The Rings?", common) == {"lord", "rings"}
    assert lexical.coverage(frozenset({"porsche", "911"}), lexical.words("The Porsche 924 is made by")) == 0.5
    assert lexical.coverage(frozenset(), lexical.words("anything")) == 1.0


@pytest.mark.parametrize(
    ("text", "question"),
    [
        ("Who is the CEO of Acme?", "Who is the CEO of Acme?"),
        ("I fly out tomorrow. When does the Lisbon office open?", " When does the Lisbon office open?"),
        (
            "Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native",
            " Danielle Darrieux, a native",
        ),
        ('He said "Stop!" Toko Yasuda plays the', " Toko Yasuda plays the"),  # a closing quote after the stop
        ("Archived copy\nToko Yasuda plays the", "Toko Yasuda plays the"),  # after a newline
        # a last sentence that names nothing keeps the one before it
        ("What is the twin city of Wellington? It is", "What is the twin city of Wellington? It is"),
        ("Hi! I have a question about Acme. who is their ceo?", " I have a question about Acme. who is their ceo?"),
        ("no names anywhere. just words", "no names anywhere. just words"),
        ("Version 2.5 of Zorb is out", "Version 2.5 of Zorb is out"),  # a stop inside a number is no boundary
    ],
)
def test_question_start_is_the_last_sentence_that_names_something(text: str, question: str) -> None:
    common = {"who", "is", "the", "of", "what", "when", "does", "it", "hi", "just", "no"}.__contains__
    assert text[lexical.question_start(text, common) :] == question


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_removal_never_renumbers_other_keys(kind: str) -> None:
    index = KeyIndex(3, kind=kind)
    for i, name in enumerate("abc"):
        index.add(name, np.eye(3, dtype=np.float32)[i][None], [ACME], seq=i)
    assert index.remove("b") and not index.remove("b")
    assert len(index) == 2 and index.edit_ids() == {"a", "c"}
    routes = index.search(np.eye(3, dtype=np.float32), ANY, threshold=0.5)
    assert [r.edit_id for r in routes] == ["a", None, "c"]


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_identical_keys_newest_wins_until_removed(kind: str) -> None:
    index = KeyIndex(3, kind=kind)
    index.add("old", unit(1, 1, 0)[None], [ACME], seq=1)
    index.add("new", unit(1, 1, 0)[None], [ACME], seq=2)
    assert index.search(unit(1, 1, 0)[None], ANY[:1], threshold=0.9)[0].edit_id == "new"
    index.remove("new")
    assert index.search(unit(1, 1, 0)[None], ANY[:1], threshold=0.9)[0].edit_id == "old"
    with pytest.raises(KeyError):
        index.add("old", unit(1, 0, 0)[None], [ACME], seq=3)


def test_auto_index_turns_approximate_with_size_and_back_and_agrees_with_flat() -> None:
    rng = np.random.default_rng(0)
    keys = normalise(rng.standard_normal((300, 16)))
    auto, flat = KeyIndex(16, approximate_from=200, nprobe=4), KeyIndex(16, kind="flat")
    for i, key in enumerate(keys):
        for index in (auto, flat):
            index.add(f"e{i}", key[None], [ACME], seq=i)
    assert auto.approximate and not flat.approximate
    queries = normalise(keys + 0.05 * rng.standard_normal(keys.shape))  # a little off every key
    words = [ACME] * len(queries)
    routed = [r.edit_id for r in auto.search(queries, words, threshold=0.5)]
    assert routed == [r.edit_id for r in flat.search(queries, words, threshold=0.5)]
    assert routed == [f"e{i}" for i in range(len(keys))]
    for i in range(250):  # revoke most: below half the threshold it is an exact scan again
        assert auto.remove(f"e{i}")
    assert not auto.approximate and len(auto) == 50
    auto.add("e0", keys[0][None], [ACME], seq=1000)  # restore reuses a freed key id
    assert [r.edit_id for r in auto.search(keys[:1], words[:1], threshold=0.9)] == ["e0"]
    assert [r.edit_id for r in auto.search(keys[1:2], words[:1], threshold=0.9)] == [None]


def test_unknown_index_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown index kind 'hnsw'"):
        KeyIndex(3, kind="hnsw")


def test_bank_applies_each_rows_own_adapter_and_leaves_others_untouched() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 4, bias=False)
    bank = LoRABank(6, 4, rank=2, dtype=torch.float32, device=torch.device("cpu"))
    adapters = {name: (torch.randn(2, 6), torch.randn(4, 2)) for name in ("p", "q", "r")}
    for name, (a, b) in adapters.items():
        bank.add(name, a, b, scaling=0.5)
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


def test_bank_stored_in_half_precision_computes_the_delta_in_the_inputs_dtype() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(2, 6), torch.randn(4, 2)
    bank = LoRABank(6, 4, rank=2, dtype=torch.float16, device=torch.device("cpu"))
    bank.reserve(3)
    slot = bank.add("p", a, b, scaling=0.5)
    x = torch.randn(1, 5, 6)
    delta = bank.delta(x, torch.tensor([slot]))
    assert delta.dtype == torch.float32 and bank.lora_A.dtype == torch.float16 and bank.lora_A.shape[0] == 3
    torch.testing.assert_close(delta[0], 0.5 * (x[0] @ a.half().float().T @ b.half().float().T))


def test_add_many_is_all_or_nothing_and_matches_one_by_one() -> None:
    index = KeyIndex(3)
    with pytest.raises(ValueError, match="dimension"):
        index.add_many(["a", "b"], [unit(1, 0, 0)[None], np.ones((1, 4))], [[ACME], [ACME]], [1, 2])
    assert len(index) == 0 and index.edit_ids() == set()
    index.add_many(["a", "b"], [unit(1, 0, 0)[None], unit(0, 1, 0)[None]], [[ACME], [ACME]], [1, 2])
    routes = index.search(np.stack([unit(1, 0.1, 0), unit(0.1, 1, 0)]), ANY[:2], threshold=0.9)
    assert [r.edit_id for r in routes] == ["a", "b"]


def test_bank_rejects_wrong_shapes() -> None:
    bank = LoRABank(6, 4, rank=2, dtype=torch.float32, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="adapter shapes"):
        bank.add("bad", torch.zeros(3, 6), torch.zeros(4, 3), scaling=1.0)
