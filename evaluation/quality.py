"""`sola eval`: lifelong sequential editing on a benchmark file, then the literature's metrics plus rollback.

The first N records become N edits applied one after another (all stay active), then everything is
measured on the final model. Afterwards a seeded random fraction of the edits is revoked, to check that
their prompts get the unedited model's logits back bit for bit and that the other edits still work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from editors.batch import generate
from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.training import TrainingTimeout
from editors.types import ChatContext, EditSpec, Generation, PromptFormat, Score, TrainedEdit, engine_config
from evaluation import edit_metrics
from evaluation.datasets import BenchmarkRecord, DatasetError, load_records

T = TypeVar("T")
R = TypeVar("R")

# Question-style benchmarks are asked as a chat turn; completion-style ones as raw text.
NATURAL_FORMAT = {
    "zsre": PromptFormat.CHAT,
    "counterfact": PromptFormat.RAW,
    "knowedit": PromptFormat.RAW,
    "hallucination": PromptFormat.RAW,
}
EXACT_EXTRA_TOKENS = 4  # greedy generation budget beyond the target's own length


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Phases:
    """Wall seconds the eval spends per phase (summed over repeats, in first-seen order), for results.json."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def map_batched(
    fn: Callable[[Sequence[T]], list[R]], items: Sequence[T], size: int, desc: str, phases: Phases | None = None
) -> list[R]:
    """Apply a batched engine call over `items`, with a progress bar (timed as phase `desc`)."""
    out: list[R] = []
    with (
        phases(desc) if phases else contextlib.nullcontext(),
        tqdm(total=len(items), desc=desc, unit="row", file=sys.stderr, leave=False) as bar,
    ):
        for chunk in batched(items, size):
            out.extend(fn(chunk))
            bar.update(len(chunk))
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_mb() -> float:
    """Resident memory now (Linux /proc; the peak where it is unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_mb()
    return pages * resource.getpagesize() / 2**20


def checkpoint_marks(checkpoints: Sequence[int], n: int, edits: int | None = None) -> list[int]:
    """The edit counts measured, ascending, the last one all `edits` (default n; fewer when the first n records
    held unusable ones, which then count towards no mark)."""
    bad = [c for c in checkpoints if not 1 <= c <= n]
    if bad:
        raise ValueError(f"checkpoints {bad} outside 1..{n} (the number of edits)")
    edits = n if edits is None else edits
    return sorted({min(c, edits) for c in checkpoints} | {edits})


@dataclasses.dataclass
class Measurer:
    """Batched scoring / generation / logits on one engine in one prompt format.

    The unedited model's answers do not depend on the edits, so they are computed once per batch of rows and
    reused (locality, neighbours, rollback before and after revoking, every checkpoint). The key is the whole
    batch, not the row: a row's bits may depend on what it is batched with, and the comparisons with the edited
    model stay batch for batch as before.
    """

    engine: EditingEngine
    prompt_format: PromptFormat
    batch_size: int = 16
    phases: Phases = dataclasses.field(default_factory=Phases)
    query_keys: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # routing keys (edit-independent)
    unedited: dict[tuple[Any, ...], list[Any]] = dataclasses.field(default_factory=dict)

    def _unedited(self, key: tuple[Any, ...], compute: Callable[[], list[R]]) -> list[R]:
        if key not in self.unedited:
            self.unedited[key] = compute()
        return list(self.unedited[key])

    def score(
        self,
        prompts: Sequence[str],
        targets: Sequence[str],
        use_edits: bool,
        desc: str,
        context: ChatContext | None = None,
    ) -> list[Score]:
        pairs = list(zip(prompts, targets, strict=True))

        def run(rows: Sequence[tuple[str, str]]) -> list[Score]:
            def compute() -> list[Score]:
                return self.engine.score(
                    [p for p, _ in rows], [t for _, t in rows], self.prompt_format, use_edits=use_edits, context=context
                )

            if use_edits:
                return compute()
            return self._unedited(("score", self.prompt_format, repr(context), tuple(rows)), compute)

        return map_batched(run, pairs, self.batch_size, desc, self.phases)

    def greedy(
        self, prompts: Sequence[str], budget: int, use_edits: bool, desc: str, prompt_format: PromptFormat | None = None
    ) -> list[Generation]:
        """Greedy generations (token ids, route) of `budget` tokens at most (in this measurer's format by default)."""
        asked = prompt_format or self.prompt_format

        def run(rows: Sequence[str]) -> list[Generation]:
            def compute() -> list[Generation]:
                return generate(self.engine, rows, budget, asked, use_edits=use_edits)

            return compute() if use_edits else self._unedited(("greedy", asked, budget, tuple(rows)), compute)

        return map_batched(run, prompts, self.batch_size, desc, self.phases)

    def exact(
        self, prompts: Sequence[str], targets: Sequence[str], target_lengths: Sequence[int], desc: str
    ) -> list[bool]:
        """Does greedy generation contain the target? Budget: the longest target in the batch + a few tokens."""
        rows = list(zip(prompts, targets, target_lengths, strict=True))

        def run(chunk: Sequence[tuple[str, str, int]]) -> list[bool]:
            budget = max(n for _, _, n in chunk) + EXACT_EXTRA_TOKENS
            gens = generate(self.engine, [p for p, _, _ in chunk], budget, self.prompt_format)
            return [edit_metrics.contains_target(g.text, t) for g, (_, t, _) in zip(gens, chunk, strict=True)]

        return map_batched(run, rows, self.batch_size, desc, self.phases)

    def logits_equal_base(self, prompts: Sequence[str], desc: str) -> list[bool]:
        """Per prompt: are the prompt logits with edits bit-identical to the unedited model's? The unedited side
        is kept as a digest of each row's logits bytes (BLAKE2b, 128 bits), computed once per batch."""

        def run(chunk: Sequence[str]) -> list[bool]:
            def base() -> list[bytes]:
                return logits_digests(*self.engine.padded_prompt_logits(chunk, self.prompt_format, use_edits=False))

            theirs = self._unedited(("logits", self.prompt_format, tuple(chunk)), base)
            ours = logits_digests(*self.engine.padded_prompt_logits(chunk, self.prompt_format, use_edits=True))
            return [a == b for a, b in zip(ours, theirs, strict=True)]

        # Prompt logits are [prompt_len, vocab] float32 per row: keep the batches small.
        return map_batched(run, prompts, max(1, self.batch_size // 2), desc, self.phases)


def logits_digests(logits: torch.Tensor, lengths: Sequence[int]) -> list[bytes]:
    """Each row's real prompt logits (padding left out) as a digest of their exact bytes: equal digests mean
    bit-identical logits (up to a 2^-128 collision), without keeping [len, vocab] floats per row."""
    return [
        hashlib.blake2b(logits[row, :n].contiguous().view(torch.uint8).cpu().numpy().tobytes(), digest_size=16).digest()
        for row, n in enumerate(lengths)
    ]


def rows_equal(ours: tuple[torch.Tensor, list[int]], theirs: tuple[torch.Tensor, list[int]]) -> list[bool]:
    """Per row of two padded prompt-logits batches of the same prompts: bit-identical over the real tokens?
    Compared where the logits are (no copies)."""
    (a, lengths), (b, other) = ours, theirs
    if lengths != other:
        raise ValueError(f"prompt lengths differ: {lengths} vs {other}")
    return [torch.equal(a[row, :n], b[row, :n]) for row, n in enumerate(lengths)]


def _mean_accuracy(scores: Sequence[Score]) -> float | None:
    return edit_metrics.mean(edit_metrics.token_accuracy(s.predicted_ids, s.target_ids) for s in scores)


def _mean_perplexity(scores: Sequence[Score]) -> float | None:
    return edit_metrics.mean(
        edit_metrics.perplexity(s.target_logprob, len(s.target_ids)) for s in scores if s.target_ids
    )


def _fraction(flags: Sequence[bool]) -> float | None:
    return edit_metrics.mean(float(f) for f in flags)


TRAIN_BATCH = 16  # edits trained together by apply_edits (as the server's SOLA_TRAIN_BATCH_SIZE)


def apply_edits(
    engine: EditingEngine,
    records: Sequence[BenchmarkRecord],
    ids: Sequence[str],
    trained_out: dict[str, TrainedEdit],
    train_batch: int | None = TRAIN_BATCH,
    first_seq: int = 1,
) -> dict[str, list[float]]:
    """Train and activate every record in order (lifelong: all stay active), the first one as edit number
    `first_seq` (checkpointed runs call this once per segment). Returns per-edit timings; the trained edits go
    into `trained_out` (the counterfactual rollback check re-activates them). The one place the eval applies
    its edits.

    Every edit trains against the frozen base model alone, never on top of the others, so they are trained
    `train_batch` at a time (EditingEngine.train_edits: each exactly as alone, up to float rounding) and then
    activated in order: the same edits as the sequential protocol (`train_batch=None`), and the same metrics
    (tests/test_evaluation.py checks it on a small n). Paraphrases are NOT given to training: they are the
    held-out generalization test.
    """
    timings: dict[str, list[float]] = {"edit": [], "key": [], "train": [], "activate": [], "steps": []}
    pairs = list(zip(ids, records, strict=True))
    if train_batch is None:
        trained_all: list[TrainedEdit | TrainingTimeout] | None = None
    else:
        trained_all = engine.train_edits([EditSpec(r.prompt, r.target) for r in records], train_batch)
    for k, (edit_id, record) in enumerate(tqdm(pairs, desc="editing", unit="edit", file=sys.stderr)):
        seq = first_seq + k
        start = time.perf_counter()
        trained = engine.train_edit(record.prompt, record.target) if trained_all is None else trained_all[k]
        if isinstance(trained, TrainingTimeout):  # as train_edit raises it (a --set max_train_seconds)
            raise trained
        activate_start = time.perf_counter()
        engine.activate(
            edit_id, trained.adapter, trained.keys, trained.key_kinds, record.prompt, record.target, seq=seq
        )
        end = time.perf_counter()
        trained_out[edit_id] = trained
        # An edit's time is its own compute: its share of the batched steps it took part in, and its activation.
        timings["edit"].append(end - start if trained_all is None else trained.seconds + end - activate_start)
        timings["key"].append(trained.key_seconds)
        timings["train"].append(trained.train_seconds)
        timings["activate"].append(end - activate_start)
        timings["steps"].append(float(trained.steps))
    return timings


def measure(
    m: Measurer, records: Sequence[BenchmarkRecord], ids: Sequence[str], with_perplexity: bool
) -> dict[str, float | None]:
    """Reliability, generalization, locality, exact match and routing on the current (edited) model."""
    prompts, targets = [r.prompt for r in records], [r.target for r in records]
    rel = m.score(prompts, targets, use_edits=True, desc="reliability")
    target_lengths = [len(s.target_ids) for s in rel]
    out: dict[str, float | None] = {
        "reliability": _mean_accuracy(rel),
        "reliability_exact": _fraction(m.exact(prompts, targets, target_lengths, "reliability exact")),
    }

    # Generalization counts real paraphrases of the edited relation (CounterFact: its paraphrase rows, not
    # ROME's generation prompts, as ROME / MEMIT / AlphaEdit report it); the EasyEdit-style figure over every
    # rephrase is kept as generalization_all_rephrases, for comparison with the WISE family.
    with_rephrase = [i for i, r in enumerate(records) if r.rephrase is not None]
    rephrases = [records[i].rephrase or "" for i in with_rephrase]
    gen_all = m.score(rephrases, [targets[i] for i in with_rephrase], use_edits=True, desc="generalization")
    gen_exact_all = m.exact(
        rephrases,
        [targets[i] for i in with_rephrase],
        [target_lengths[i] for i in with_rephrase],
        "generalization exact",
    )
    para = [j for j, i in enumerate(with_rephrase) if records[i].rephrase_is_paraphrase]
    gen = [gen_all[j] for j in para]
    out["generalization"] = _mean_accuracy(gen)
    out["generalization_exact"] = _fraction([gen_exact_all[j] for j in para])
    out["n_paraphrases"] = len(para)
    if len(para) < len(with_rephrase):
        out["generalization_all_rephrases"] = _mean_accuracy(gen_all)
        out["generalization_exact_all_rephrases"] = _fraction(gen_exact_all)

    with_loc = [r for r in records if r.locality_prompt is not None and r.locality_answer is not None]
    loc_prompts = [r.locality_prompt or "" for r in with_loc]
    loc_answers = [r.locality_answer or "" for r in with_loc]
    loc_edited = m.score(loc_prompts, loc_answers, use_edits=True, desc="locality")
    loc_base = m.score(loc_prompts, loc_answers, use_edits=False, desc="locality (unedited)")
    out["locality"] = edit_metrics.mean(
        edit_metrics.unchanged_rate(b.predicted_ids, e.predicted_ids) for b, e in zip(loc_base, loc_edited, strict=True)
    )

    # Routing: every edit prompt and paraphrase should go to its own edit; locality prompts to none.
    gen_ids = [ids[with_rephrase[j]] for j in para]
    routed = [s.routed_edit_id for s in rel] + [s.routed_edit_id for s in gen]
    out["routing_precision"] = edit_metrics.routing_precision(routed, list(ids) + gen_ids)
    out["edit_routed_rate"] = edit_metrics.routed_to_own_rate([s.routed_edit_id for s in rel], ids)
    out["rephrase_routed_rate"] = edit_metrics.routed_to_own_rate([s.routed_edit_id for s in gen], gen_ids)
    out["wrong_edit_rate"] = edit_metrics.mean(
        float(s.routed_edit_id is not None and s.routed_edit_id != own) for s, own in zip(gen, gen_ids, strict=True)
    )
    out["locality_routed_rate"] = edit_metrics.routed_rate([s.routed_edit_id for s in loc_edited])

    if with_perplexity:
        before = m.score(prompts, targets, use_edits=False, desc="perplexity (unedited)")
        out["ppl_before"] = _mean_perplexity(before)
        out["ppl_after"] = _mean_perplexity(rel)
    return out


# Real chat traffic: the edited question under an operator's system prompt, or after an unrelated exchange.
IN_CONTEXT = {
    "system": ChatContext(system="You are the customer-support assistant of a travel agency. Answer briefly."),
    "history": ChatContext(
        history=(
            ("user", "Can you recommend a good book for a long train ride?"),
            ("assistant", "Try The Hobbit: it is light, gripping and easy to pick up again."),
        )
    ),
}
NEIGHBOUR_BUDGET = 8  # greedy tokens compared for neighbours and counterfactual probes
DEGENERATE_EXTRA_TOKENS = 8  # generation budget beyond the target, for degenerate_rate
MAX_NEIGHBOURS = 500
MAX_DEGENERATE_PROBES = 200


MAX_ROUTING_PROBES = 100


def routing_ms(m: Measurer, records: Sequence[BenchmarkRecord], neighbours: Sequence[BenchmarkRecord]) -> float | None:
    """Median wall milliseconds of one request's routing decision (key index search + gate, one row at a time)
    over paraphrases of edited records and neighbours; their query keys do not depend on the edits (cached)."""
    probes = [r.rephrase for r in records if r.rephrase is not None][:MAX_ROUTING_PROBES]
    probes += neighbour_prompts(neighbours)[:MAX_ROUTING_PROBES]
    probes = probes or [r.prompt for r in records[:MAX_ROUTING_PROBES]]
    missing = [p for p in dict.fromkeys(probes) if p not in m.query_keys]
    for chunk in batched(missing, m.batch_size):
        m.query_keys.update(zip(chunk, m.engine.query_keys(chunk, m.prompt_format), strict=True))
    times = []
    with m.phases("routing probes"):
        for prompt in probes:
            start = time.perf_counter()
            m.engine.routed.search(m.query_keys[prompt][None], [prompt], m.prompt_format)
            times.append(1000 * (time.perf_counter() - start))
    return edit_metrics.median(times)


def neighbour_prompts(neighbours: Sequence[BenchmarkRecord]) -> list[str]:
    """Unedited records of the same file: their prompts and paraphrases (same templates, other subjects)."""
    return [p for r in neighbours for p in (r.prompt, r.rephrase) if p is not None]


def hard_cases(
    m: Measurer, records: Sequence[BenchmarkRecord], neighbours: Sequence[BenchmarkRecord]
) -> dict[str, float | None]:
    """The questions users ask next to an edit (routing issue): neighbours, same subject, in context, degeneration."""
    out: dict[str, float | None] = {}
    probes = neighbour_prompts(neighbours)
    if probes:
        edited = m.greedy(probes, NEIGHBOUR_BUDGET, True, "neighbours")
        base = m.greedy(probes, NEIGHBOUR_BUDGET, False, "neighbours (unedited)")
        out["neighbour_routed_rate"] = edit_metrics.routed_rate([g.routed_edit_id for g in edited])
        out["neighbour_unchanged"] = _fraction([e.token_ids == b.token_ids for e, b in zip(edited, base, strict=True)])
    out["n_neighbour_prompts"] = len(probes)

    # A same-subject prompt that is, word for word, another edited record's own prompt is that edit's question
    # (KnowEdit repeats subject/relation pairs across records): answering it through that edit is right, so it
    # is counted apart, not as a locality failure.
    edited_prompts = {r.prompt for r in records}
    cases = [(p, a) for r in records for p, a in r.relation_locality]
    same_subject = [(p, a) for p, a in cases if p not in edited_prompts]
    out["n_same_subject_excluded"] = len(cases) - len(same_subject)
    if same_subject:
        prompts, answers = [p for p, _ in same_subject], [a for _, a in same_subject]
        edited_s = m.score(prompts, answers, use_edits=True, desc="same-subject locality")
        base_s = m.score(prompts, answers, use_edits=False, desc="same-subject locality (unedited)")
        out["same_subject_locality"] = edit_metrics.mean(
            edit_metrics.unchanged_rate(b.predicted_ids, e.predicted_ids) for b, e in zip(base_s, edited_s, strict=True)
        )
        out["same_subject_routed_rate"] = edit_metrics.routed_rate([s.routed_edit_id for s in edited_s])

    if m.prompt_format is PromptFormat.CHAT:
        asked = [(r.prompt, r.target) for r in records]
        asked += [(r.rephrase, r.target) for r in records if r.rephrase and r.rephrase_is_paraphrase]
        for name, context in IN_CONTEXT.items():
            scores = m.score(
                [p for p, _ in asked], [t for _, t in asked], True, f"in context ({name})", context=context
            )
            n_edit = len(records)
            out[f"reliability_in_context_{name}"] = _mean_accuracy(scores[:n_edit])
            out[f"generalization_in_context_{name}"] = _mean_accuracy(scores[n_edit:])
        in_context = [out.get(f"generalization_in_context_{name}") for name in IN_CONTEXT]
        out["generalization_in_context"] = edit_metrics.mean(g for g in in_context if g is not None)

    # Degeneration: the edited answer in both prompt formats, a little past the target's end.
    sample = list(records[:MAX_DEGENERATE_PROBES])
    flags: list[bool] = []
    for prompt_format in m.engine.host.prompt_formats:
        budget = max(len(m.engine.host.encode(" " + r.target)) for r in sample) + DEGENERATE_EXTRA_TOKENS
        gens = m.greedy([r.prompt for r in sample], budget, True, f"degeneration ({prompt_format})", prompt_format)
        flags += [edit_metrics.is_degenerate(g.text, r.target) for g, r in zip(gens, sample, strict=True)]
    out["degenerate_rate"] = _fraction(flags)
    return out


def rollback(
    m: Measurer, records: Sequence[BenchmarkRecord], ids: Sequence[str], fraction: float, seed: int
) -> tuple[dict[str, float | None], list[int]]:
    """Revoke a seeded random `fraction` of the edits; check exact rollback and the kept edits' reliability.
    Returns the metrics and the indices of the revoked records."""
    n_revoke = round(fraction * len(records))
    revoked = sorted(random.Random(seed).sample(range(len(records)), n_revoke))
    kept = sorted(set(range(len(records))) - set(revoked))
    revoked_prompts = [records[i].prompt for i in revoked]
    # Sanity check that rollback is not trivially true: were these prompts' logits changed while active?
    changed_before = [not same for same in m.logits_equal_base(revoked_prompts, "logits before revoke")]
    for i in revoked:
        if not m.engine.revoke(ids[i]):
            raise RuntimeError(f"edit {ids[i]} was not active")
    exact = m.logits_equal_base(revoked_prompts, "logits after revoke")
    kept_scores = m.score(
        [records[i].prompt for i in kept], [records[i].target for i in kept], use_edits=True, desc="retention"
    )
    return {
        "n_revoked": n_revoke,
        "revoked_changed_before": _fraction(changed_before),
        "rollback_exact": _fraction(exact),
        "retention_after_rollback": _mean_accuracy(kept_scores),
    }, revoked


MAX_KEPT_PROBES = 100


def rollback_counterfactual(
    m: Measurer,
    never_revoked: EditingEngine,
    records: Sequence[BenchmarkRecord],
    revoked: Sequence[int],
    neighbours: Sequence[BenchmarkRecord],
) -> float | None:
    """After revoking, every probe answers exactly as an engine in which the revoked edits were never made.

    `never_revoked` is an independent engine (its own model copy) holding only the kept edits. Probes:
    the revoked edits' prompts and paraphrases, some kept edits' prompts and paraphrases, and neighbours;
    compared on greedy tokens and on prompt logits (bit for bit).
    """
    kept = sorted(set(range(len(records))) - set(revoked))[:MAX_KEPT_PROBES]
    probes = [p for i in [*revoked, *kept] for p in (records[i].prompt, records[i].rephrase) if p is not None]
    probes += neighbour_prompts(neighbours)[:MAX_KEPT_PROBES]
    other = Measurer(never_revoked, m.prompt_format, m.batch_size, m.phases)
    same_tokens = [
        a.token_ids == b.token_ids and a.routed_edit_id == b.routed_edit_id
        for a, b in zip(
            m.greedy(probes, NEIGHBOUR_BUDGET, True, "counterfactual (revoked)"),
            other.greedy(probes, NEIGHBOUR_BUDGET, True, "counterfactual (never made)"),
            strict=True,
        )
    ]

    def logits_equal(rows: Sequence[str]) -> list[bool]:
        # Compared batch by batch where the logits are: holding every probe's [len, vocab] logits for both engines
        # took 12 GB at n=1000, and copying each row out cost as much as comparing it.
        ours = m.engine.padded_prompt_logits(rows, m.prompt_format)
        return rows_equal(ours, never_revoked.padded_prompt_logits(rows, m.prompt_format))

    # A probe whose greedy answer already differs has failed: its logits need no comparing.
    agreeing = [p for p, same in zip(probes, same_tokens, strict=True) if same]
    same_logits = iter(
        map_batched(logits_equal, agreeing, max(1, m.batch_size // 2), "counterfactual logits", m.phases)
    )
    return _fraction([same and next(same_logits) for same in same_tokens])


def run_eval(
    dataset: Path,
    record_format: str,
    n: int,
    revoke_fraction: float = 0.2,
    seed: int = 0,
    data_dir: Path = Path("var"),
    out: Path | None = Path("results.json"),
    prompt_format: PromptFormat | None = None,
    layer: int | None = None,
    threshold: float | None = None,
    model: str | None = None,
    batch_size: int = 16,
    overrides: Sequence[str] = (),
    host: ModelHost | None = None,
    threads: int | None = None,
    cache_dir: Path | None = None,
    checkpoints: Sequence[int] = (),
    holdout: int = 0,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Run the whole evaluation; returns the results (also written to `out` as JSON when given).

    `prompt_format=None` picks the benchmark's natural one (NATURAL_FORMAT). `host` lets tests reuse a
    loaded model (it must not already carry an engine); the counterfactual engine loads its own copy of
    `model` from `cache_dir` (default: under `data_dir`). `threads` sets torch's intra-op threads (on a
    shared machine 1 avoids oversubscription). Raises evaluation.datasets.DatasetError on bad files.

    `checkpoints`: edit counts (below n) after which every quality metric is measured too, on the edits made
    so far, as the edits accumulate (one run gives the curve; results["checkpoints"] holds one entry per mark,
    the last at n). Rollback is measured at the end only (revoking is not undone). The top-level metrics are
    the final mark's, the same as a plain run's. Neighbours (never edited: same templates, other subjects)
    are the records after the n edited ones, the same at every mark; `holdout` > 0 takes them from the
    file's last `holdout` records instead (for an n that edits the whole file), which are then never edited.
    """
    if not 0.0 <= revoke_fraction <= 1.0:
        raise ValueError(f"revoke fraction {revoke_fraction} outside [0, 1]")
    if holdout < 0:
        raise ValueError(f"holdout {holdout} is negative")
    loaded = load_records(dataset, record_format, n)  # fail on a bad file before loading the model
    records = loaded.records
    for reason in loaded.skipped:
        print(f"skipped unusable {reason}", file=sys.stderr)
    checkpoint_marks(checkpoints, n)  # a bad mark fails before the model loads
    # Neighbours: unedited records of the same file (same templates, other subjects).
    whole = load_records(dataset, record_format).records
    neighbours_from: str | None
    if holdout:
        if len(whole) - holdout < len(records):
            raise DatasetError(
                f"{dataset}: holding back the last {holdout} records leaves {len(whole) - holdout} to edit, not {n}"
            )
        neighbours = whole[len(whole) - holdout :][:MAX_NEIGHBOURS]
        neighbours_from = f"held back: the file's last {holdout} usable records, the first {len(neighbours)} of them"
    else:
        neighbours = whole[len(records) + len(loaded.skipped) :][:MAX_NEIGHBOURS]
        neighbours_from = f"the {len(neighbours)} usable records after the first {n}" if neighbours else None
    prompt_format = prompt_format or NATURAL_FORMAT[record_format]
    config = engine_config(layer, threshold, overrides)  # a bad override fails before the model loads
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    phases = Phases()
    with phases("load model"):
        host = host or ModelHost.load(model, data_dir, cache_dir=cache_dir, dtype=dtype)
        engine = EditingEngine(host, config)
    ids = [f"e{i:06d}" for i in range(len(records))]

    trained: dict[str, TrainedEdit] = {}
    timings: dict[str, list[float]] = {}
    m = Measurer(engine, prompt_format, batch_size, phases)
    snapshots: list[dict[str, Any]] = []
    marks = checkpoint_marks(checkpoints, n, len(records))
    for first, mark in zip([0, *marks], marks, strict=False):
        with phases("editing"):
            segment = apply_edits(engine, records[first:mark], ids[first:mark], trained, first_seq=first + 1)
        for name, values in segment.items():
            timings.setdefault(name, []).extend(values)
        quality = measure(m, records[:mark], ids[:mark], with_perplexity=record_format == "hallucination")
        hard = hard_cases(m, records[:mark], neighbours)
        snapshots.append(
            {
                "edits": mark,
                **quality,
                **hard,
                "edit_seconds_median": edit_metrics.median(segment["edit"]),  # of the edits since the last mark
                "routing_ms_median": routing_ms(m, records[:mark], neighbours),
                "keys": engine.num_keys(),
                "rss_mb": rss_mb(),
                "peak_rss_mb": peak_rss_mb(),
                "eval_seconds": time.perf_counter() - started,
            }
        )
    after_rollback, revoked = rollback(m, records, ids, revoke_fraction, seed)
    with phases("counterfactual engine"):
        never_made = EditingEngine(ModelHost.load(model, data_dir, cache_dir=cache_dir, dtype=dtype), engine.config)
        for seq, (edit_id, record) in enumerate(zip(ids, records, strict=True), start=1):
            if seq - 1 not in revoked:
                t = trained[edit_id]
                never_made.activate(edit_id, t.adapter, t.keys, t.key_kinds, record.prompt, record.target, seq=seq)
    counterfactual = rollback_counterfactual(m, never_made, records, revoked, neighbours)

    config = engine.config
    results: dict[str, Any] = {
        **quality,
        **hard,
        **after_rollback,
        "rollback_counterfactual": counterfactual,
        "edit_seconds_median": edit_metrics.median(timings["edit"]),
        "edit_seconds_p90": edit_metrics.percentile(timings["edit"], 90),
        "key_seconds_median": edit_metrics.median(timings["key"]),
        "train_seconds_median": edit_metrics.median(timings["train"]),
        "activate_seconds_median": edit_metrics.median(timings["activate"]),
        "train_steps_median": edit_metrics.median(timings["steps"]),
        "peak_rss_mb": peak_rss_mb(),
        "eval_seconds": time.perf_counter() - started,
        "phase_seconds": dict(phases.seconds),
        "neighbours_from": neighbours_from,
        "checkpoints": snapshots,
        "n": len(records),
        "n_skipped": len(loaded.skipped),
        "model": host.name,
        "dtype": str(host.info["dtype"]),
        "layer": engine.layer,
        "threshold": config.threshold,
        "prompt_format": prompt_format,
        "dataset": str(dataset),
        "format": record_format,
        "revoke_fraction": revoke_fraction,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
        "engine_config": dataclasses.asdict(config),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    return results


# Rows of the printed table: (results key, label). Rates print as percentages.
TABLE_ROWS = [
    ("reliability", "Reliability (token acc.)"),
    ("generalization", "Generalization (token acc.)"),
    ("generalization_all_rephrases", "  over every rephrase (EasyEdit)"),
    ("locality", "Locality (unchanged)"),
    ("reliability_exact", "Reliability, exact"),
    ("generalization_exact", "Generalization, exact"),
    ("generalization_exact_all_rephrases", "  over every rephrase (EasyEdit)"),
    ("routing_precision", "Routing precision"),
    ("edit_routed_rate", "Edit prompts routed to own edit"),
    ("rephrase_routed_rate", "Paraphrases routed to own edit"),
    ("locality_routed_rate", "Locality prompts routed (lower is better)"),
    ("wrong_edit_rate", "Paraphrases routed to a wrong edit"),
    ("neighbour_routed_rate", "Neighbours routed (lower is better)"),
    ("neighbour_unchanged", "Neighbours unchanged (greedy)"),
    ("same_subject_locality", "Same-subject locality"),
    ("same_subject_routed_rate", "Same-subject prompts routed"),
    ("generalization_in_context", "Generalization in context"),
    ("generalization_in_context_system", "  under a custom system prompt"),
    ("generalization_in_context_history", "  after an unrelated exchange"),
    ("degenerate_rate", "Degenerate edited answers"),
    ("rollback_counterfactual", "Rollback = never made"),
    ("rollback_exact", "Rollback bit-exact"),
    ("revoked_changed_before", "Revoked prompts changed while active"),
    ("retention_after_rollback", "Retention after rollback"),
]
PLAIN_ROWS = [
    ("ppl_before", "Target perplexity, unedited", "{:.2f}"),
    ("ppl_after", "Target perplexity, edited", "{:.2f}"),
    ("edit_seconds_median", "Edit seconds, median", "{:.2f}"),
    ("edit_seconds_p90", "Edit seconds, p90", "{:.2f}"),
    ("train_steps_median", "Training steps, median", "{:.0f}"),
    ("peak_rss_mb", "Peak RSS (MB)", "{:.0f}"),
]


CHECKPOINT_ROWS = [
    ("routing_ms_median", "Routing ms per request, median", "{:.3f}"),
    ("rss_mb", "Resident memory (MB)", "{:.0f}"),
]


def markdown_table(results: dict[str, Any]) -> str:
    """One value column, or with checkpoints one column per number of edits (rollback: the last only; edit
    seconds there: of the edits since the previous checkpoint)."""
    head = (
        f"{results['format']} · n={results['n']} · {results['model']} · layer {results['layer']} · "
        f"threshold {results['threshold']} · {results['prompt_format']} prompts"
    )
    snapshots = results.get("checkpoints") or []
    if len(snapshots) > 1:
        columns = [{**results, **s} if s is snapshots[-1] else s for s in snapshots]
        titles = [f"{s['edits']:,} edits" for s in snapshots]
    else:
        columns, titles = [{**(snapshots[0] if snapshots else {}), **results}], ["value"]
    lines = [head, "", f"| metric | {' | '.join(titles)} |", f"| --- |{' ---: |' * len(titles)}"]
    rows = [(key, label, None) for key, label in TABLE_ROWS] + PLAIN_ROWS + CHECKPOINT_ROWS
    for key, label, fmt in rows:
        if not any(key in c for c in columns):
            continue
        cells = []
        for c in columns:
            value = c.get(key, "")  # blank: not measured at this checkpoint
            if value is None:
                cells.append("n/a")
            elif isinstance(value, str):
                cells.append(value)
            else:
                cells.append(f"{100 * value:.1f}%" if fmt is None else fmt.format(value))
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)
