"""Editing metrics on hand-made cases whose values are worked out by hand (no model needed)."""

from __future__ import annotations

import math

import pytest

from evaluation import edit_metrics
from evaluation.quality import markdown_table


def test_token_accuracy_full_partial_and_zero() -> None:
    assert edit_metrics.token_accuracy([5, 6, 7], [5, 6, 7]) == 1.0
    assert edit_metrics.token_accuracy([5, 0, 7, 0], [5, 6, 7, 8]) == 0.5  # 2 of 4 positions right
    assert edit_metrics.token_accuracy([1, 2, 3], [4, 5, 6]) == 0.0
    assert edit_metrics.token_accuracy([], []) == 0.0  # an empty target was never produced


def test_token_accuracy_rejects_misaligned_lengths() -> None:
    with pytest.raises(ValueError):
        edit_metrics.token_accuracy([1, 2], [1, 2, 3])


def test_unchanged_rate() -> None:
    assert edit_metrics.unchanged_rate([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert edit_metrics.unchanged_rate([1, 2, 3, 4], [1, 9, 3, 9]) == 0.5
    assert edit_metrics.unchanged_rate([1, 2, 3], [7, 8, 9]) == 0.0
    assert edit_metrics.unchanged_rate([1, 2, 3, 4, 5], [1, 2, 3, 4, 0]) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        edit_metrics.unchanged_rate([1], [1, 2])


def test_contains_target_is_case_insensitive_and_stripped() -> None:
    assert edit_metrics.contains_target(" Unmanned Aircraft, made in", "unmanned aircraft ")
    assert edit_metrics.contains_target("The answer is PARIS.", "Paris")
    assert not edit_metrics.contains_target("unmanned air", "unmanned aircraft")  # a prefix is not the target
    assert not edit_metrics.contains_target("London", "Paris")
    assert not edit_metrics.contains_target("anything", "   ")  # an empty target never matches


@pytest.mark.parametrize(
    ("generated", "target", "degenerate"),
    [
        ("Rust? Rust? Rust?", "Rust", True),  # loops on the target
        ("Sheffield Sheffield", "Sheffield", True),
        ("Sheffield's capital, but it's not Sheffield's capital.", "Sheffield", False),  # a later mention
        ("Tomasz Nowakakakzak", "Tomasz Nowak", True),  # runs on inside the last word
        ("$499", "$49", True),
        ("Jane Doe.", "Jane Doe", False),
        ("Rust, a language.", "rust", False),
        ("Python", "Rust", False),  # no target at all: a reliability miss, not a degenerate answer
        ("The answer is 5.", "5", False),
    ],
)
def test_is_degenerate(generated: str, target: str, degenerate: bool) -> None:
    assert edit_metrics.is_degenerate(generated, target) is degenerate


def test_routing_precision_counts_only_routed_queries() -> None:
    # 4 routed (2 right, 2 wrong), 2 not routed -> 2/4
    routed = ["a", "b", "x", None, "d", None]
    expected = ["a", "b", "c", "d", "e", "f"]
    assert edit_metrics.routing_precision(routed, expected) == 0.5
    assert edit_metrics.routing_precision(["b", "a"], ["a", "b"]) == 0.0
    assert edit_metrics.routing_precision(["a", "b"], ["a", "b"]) == 1.0
    assert edit_metrics.routing_precision([None, None], ["a", "b"]) is None


def test_routed_rates() -> None:
    routed = ["a", "x", None, "d"]
    expected = ["a", "b", "c", "d"]
    assert edit_metrics.routed_to_own_rate(routed, expected) == 0.5
    assert edit_metrics.routed_to_own_rate([None, None], ["a", "b"]) == 0.0
    assert edit_metrics.routed_rate(routed) == 0.75
    assert edit_metrics.routed_rate([None, None, None]) == 0.0
    assert edit_metrics.routed_rate([]) is None


def test_perplexity() -> None:
    assert edit_metrics.perplexity(0.0, 3) == 1.0  # every token certain
    # two tokens each with p = 1/4: sum log p = 2 log(1/4), mean NLL = log 4 -> ppl 4
    assert edit_metrics.perplexity(2 * math.log(0.25), 2) == pytest.approx(4.0)
    # p = 1/2 then 1/8: mean NLL = (log 2 + log 8) / 2 = log 4
    assert edit_metrics.perplexity(math.log(0.5) + math.log(0.125), 2) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        edit_metrics.perplexity(-1.0, 0)


def test_mean_median_percentile() -> None:
    assert edit_metrics.mean([]) is None
    assert edit_metrics.mean([0.0, 1.0, 0.5]) == 0.5
    assert edit_metrics.median([3.0, 1.0, 2.0]) == 2.0
    assert edit_metrics.median([1.0, 2.0, 3.0, 4.0]) == 2.5
    # p90 of 1..10: position 0.9 * 9 = 8.1 -> 9 + 0.1 * (10 - 9)
    assert edit_metrics.percentile([float(x) for x in range(1, 11)], 90) == pytest.approx(9.1)
    assert edit_metrics.percentile([5.0], 90) == 5.0
    assert edit_metrics.percentile([], 50) is None
    with pytest.raises(ValueError):
        edit_metrics.percentile([1.0], 101)


def test_markdown_table_shows_percentages_and_missing_values() -> None:
    results = {
        "format": "hallucination",
        "n": 2,
        "model": "m",
        "layer": 3,
        "threshold": 0.5,
        "prompt_format": "raw",
        "reliability": 0.5,
        "generalization": None,
        "ppl_after": 1.234,
    }
    table = markdown_table(results)
    assert "| Reliability (token acc.) | 50.0% |" in table
    assert "| Generalization (token acc.) | n/a |" in table
    assert "| Target perplexity, edited | 1.23 |" in table
    assert "raw prompts" in table.splitlines()[0]
    assert "Locality" not in table  # absent keys are not printed
