"""Model-editing metrics as pure functions over token ids, texts and routing decisions (no model needed).

Definitions follow EasyEdit / WISE / GRACE (see ../shared/data/README.md):
reliability and generalization are teacher-forced target-token accuracy, locality is the fraction of
teacher-forced next-token predictions left unchanged from the unedited model, and the stricter
"exact" variants ask greedy generation to contain the target.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence


def token_accuracy(predicted: Sequence[int], target: Sequence[int]) -> float:
    """Fraction of target positions where the argmax prediction equals the target token."""
    if len(predicted) != len(target):
        raise ValueError(f"{len(predicted)} predictions for {len(target)} target tokens")
    if not target:
        return 0.0
    return sum(int(p == t) for p, t in zip(predicted, target, strict=True)) / len(target)


def unchanged_rate(base: Sequence[int], edited: Sequence[int]) -> float:
    """Locality of one prompt: fraction of positions whose edited prediction equals the unedited one."""
    if len(base) != len(edited):
        raise ValueError(f"{len(base)} unedited predictions vs {len(edited)} edited")
    if not base:
        return 1.0  # nothing to predict, nothing changed
    return sum(int(b == e) for b, e in zip(base, edited, strict=True)) / len(base)


def contains_target(generated: str, target: str) -> bool:
    """Exact-match variant: the greedy continuation contains the target (case-insensitive, stripped)."""
    needle = target.strip().lower()
    return bool(needle) and needle in generated.strip().lower()


def holds_verbatim(generated: str, target: str) -> bool:
    """The answer holds the target exactly, as a whole: same characters, not inside a longer word or number
    ("Torstrasse 1400" does not hold "Torstrasse 140", "$499" does not hold "$49")."""
    needle = target.strip()
    if not needle:
        return False
    pattern = (r"(?<![^\W_])" if needle[0].isalnum() else "") + re.escape(needle)
    pattern += r"(?![^\W_])" if needle[-1].isalnum() else ""
    return re.search(pattern, generated) is not None


def is_degenerate(generated: str, target: str) -> bool:
    """An edited answer that loops on the target ("Rust? Rust? Rust?": the target again right after itself)
    or runs on inside it ("$499" for "$49", "Tomasz Nowakakak" for "Tomasz Nowak"). Case-insensitive; a later,
    separate mention is normal text, and an answer without the target is a reliability miss, not counted."""
    needle, text = target.strip().lower(), generated.strip().lower()
    if not needle or needle not in text:
        return False
    if re.search(re.escape(needle) + r"[\W_]{0,3}" + re.escape(needle), text):
        return True
    after = text[text.index(needle) + len(needle) :][:1]
    return needle[-1].isalnum() and after.isalnum()


def routing_precision(routed: Sequence[str | None], expected: Sequence[str]) -> float | None:
    """Of the queries that were routed to some edit, the fraction routed to their own edit (None: none routed)."""
    pairs = [(r, e) for r, e in zip(routed, expected, strict=True) if r is not None]
    if not pairs:
        return None
    return sum(int(r == e) for r, e in pairs) / len(pairs)


def routed_to_own_rate(routed: Sequence[str | None], expected: Sequence[str]) -> float | None:
    """Recall-style: fraction of all queries routed to their own edit."""
    if not routed:
        return None
    return sum(int(r == e) for r, e in zip(routed, expected, strict=True)) / len(routed)


def routed_rate(routed: Sequence[str | None]) -> float | None:
    """Fraction of queries routed to any edit (for locality prompts: lower is better)."""
    if not routed:
        return None
    return sum(int(r is not None) for r in routed) / len(routed)


def perplexity(target_logprob: float, n_tokens: int) -> float:
    """exp of the mean negative log-likelihood per target token."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one target token")
    return math.exp(-target_logprob / n_tokens)


def mean(values: Iterable[float]) -> float | None:
    """Arithmetic mean, or None for no values (a metric the dataset cannot measure)."""
    values = list(values)
    return sum(values) / len(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside [0, 100]")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 50)
