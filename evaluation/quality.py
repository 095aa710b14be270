"""`sola eval`: lifelong sequential editing on a benchmark file, then the literature's metrics plus rollback.

The first N records become N edits applied one after another (all stay active), then everything is
measured on the final model. Afterwards a seeded random fraction of the edits is revoked, to check that
their prompts get the unedited model's logits back bit for bit and that the other edits still work.
"""

from __future__ import annotations

import dataclasses
import json
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm import tqdm

from editors.batch import generate
from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.types import ChatContext, Generation, PromptFormat, Score, TrainedEdit, engine_config
from evaluation import edit_metrics
from evaluation.datasets import BenchmarkRecord, load_records

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


def map_batched(fn: Callable[[Sequence[T]], list[R]], items: Sequence[T], size: int, desc: str) -> list[R]:
    """Apply a batched engine call over `items`, with a progress bar."""
    out: list[R] = []
    with tqdm(total=len(items), desc=desc, unit="row", file=sys.stderr, leave=False) as bar:
        for chunk in batched(items, size):
            out.extend(fn(chunk))
            bar.update(len(chunk))
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclasses.dataclass
class Measurer:
    """Batched scoring / generation / logits on one engine in one prompt format."""

    engine: EditingEngine
    prompt_format: PromptFormat
    batch_size: int = 16

    def score(
        self,
        prompts: Sequence[str],
        targets: Sequence[str],
        use_edits: bool,
        desc: str,
        context: ChatContext | None = None,
    ) -> list[Score]:
        pairs = list(zip(prompts, targets, strict=True))
        return map_batched(
            lambda rows: self.engine.score(
                [p for p, _ in rows], [t for _, t in rows], self.prompt_format, use_edits=use_edits, context=context
            ),
            pairs,
            self.batch_size,
            desc,
        )

    def greedy(
        self, prompts: Sequence[str], budget: int, use_edits: bool, desc: str, prompt_format: PromptFormat | None = None
    ) -> list[Generation]:
        """Greedy generations (token ids, route) of `budget` tokens at most (in this measurer's format by default)."""
        asked = prompt_format or self.prompt_format
        return map_batched(
            lambda rows: generate(self.engine, rows, budget, asked, use_edits=use_edits),
            prompts,
            self.batch_size,
            desc,
        )

    def exact(
        self, prompts: Sequence[str], targets: Sequence[str], target_lengths: Sequence[int], desc: str
    ) -> list[bool]:
        """Does greedy generation contain the target? Budget: the longest target in the batch + a few tokens."""
        rows = list(zip(prompts, targets, target_lengths, strict=True))

        def run(chunk: Sequence[tuple[str, str, int]]) -> list[bool]:
            budget = max(n for _, _, n in chunk) + EXACT_EXTRA_TOKENS
            gens = generate(self.engine, [p for p, _, _ in chunk], budget, self.prompt_format)
            return [edit_metrics.contains_target(g.text, t) for g, (_, t, _) in zip(gens, chunk, strict=True)]

        return map_batched(run, rows, self.batch_size, desc)

    def logits_equal_base(self, prompts: Sequence[str], desc: str) -> list[bool]:
        """Per prompt: are the prompt logits with edits bit-identical to the unedited model's?"""

        def run(chunk: Sequence[str]) -> list[bool]:
            edited = self.engine.prompt_logits(chunk, self.prompt_format, use_edits=True)
            base = self.engine.prompt_logits(chunk, self.prompt_format, use_edits=False)
            return [torch.equal(a, b) for a, b in zip(edited, base, strict=True)]

        # Prompt logits are [prompt_len, vocab] float32 per row: keep the batches small.
        return map_batched(run, prompts, max(1, self.batch_size // 2), desc)


def _mean_accuracy(scores: Sequence[Score]) -> float | None:
    return edit_metrics.mean(edit_metrics.token_accuracy(s.predicted_ids, s.target_ids) for s in scores)


def _mean_perplexity(scores: Sequence[Score]) -> float | None:
    return edit_metrics.mean(
        edit_metrics.perplexity(s.target_logprob, len(s.target_ids)) for s in scores if s.target_ids
    )


def _fraction(flags: Sequence[bool]) -> float | None:
    return edit_metrics.mean(float(f) for f in flags)


def apply_edits(
    engine: EditingEngine, records: Sequence[BenchmarkRecord], ids: Sequence[str], trained_out: dict[str, TrainedEdit]
) -> dict[str, list[float]]:
    """Train and activate every record in order (lifelong: all stay active). Returns per-edit timings;
    the trained edits go into `trained_out` (the counterfactual rollback check re-activates them).

    Paraphrases are NOT given to training: they are the held-out generalization test.
    """
    timings: dict[str, list[float]] = {"edit": [], "key": [], "train": [], "activate": [], "steps": []}
    for seq, (edit_id, record) in enumerate(
        tqdm(list(zip(ids, records, strict=True)), desc="editing", unit="edit", file=sys.stderr), start=1
    ):
        start = time.perf_counter()
        trained = engine.train_edit(record.prompt, record.target)
        activate_start = time.perf_counter()
        engine.activate(
            edit_id, trained.adapter, trained.keys, trained.key_kinds, record.prompt, record.target, seq=seq
        )
        end = time.perf_counter()
        trained_out[edit_id] = trained
        timings["edit"].append(end - start)
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
    other = Measurer(never_revoked, m.prompt_format, m.batch_size)
    same_tokens = [
        a.token_ids == b.token_ids and a.routed_edit_id == b.routed_edit_id
        for a, b in zip(
            m.greedy(probes, NEIGHBOUR_BUDGET, True, "counterfactual (revoked)"),
            other.greedy(probes, NEIGHBOUR_BUDGET, True, "counterfactual (never made)"),
            strict=True,
        )
    ]

    def logits_equal(rows: Sequence[str]) -> list[bool]:
        # Compared batch by batch: holding every probe's [len, vocab] logits for both engines took 12 GB at n=1000.
        ours = m.engine.prompt_logits(rows, m.prompt_format)
        theirs = never_revoked.prompt_logits(rows, m.prompt_format)
        return [torch.equal(a, b) for a, b in zip(ours, theirs, strict=True)]

    same_logits = map_batched(logits_equal, probes, max(1, m.batch_size // 2), "counterfactual logits")
    return _fraction([t and lg for t, lg in zip(same_tokens, same_logits, strict=True)])


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
    dtype: str | None = None,
) -> dict[str, Any]:
    """Run the whole evaluation; returns the results (also written to `out` as JSON when given).

    `prompt_format=None` picks the benchmark's natural one (NATURAL_FORMAT). `host` lets tests reuse a
    loaded model (it must not already carry an engine); the counterfactual engine loads its own copy of
    `model` from `cache_dir` (default: under `data_dir`). `threads` sets torch's intra-op threads (on a
    shared machine 1 avoids oversubscription). Raises evaluation.datasets.DatasetError on bad files.
    """
    if not 0.0 <= revoke_fraction <= 1.0:
        raise ValueError(f"revoke fraction {revoke_fraction} outside [0, 1]")
    loaded = load_records(dataset, record_format, n)  # fail on a bad file before loading the model
    records = loaded.records
    for reason in loaded.skipped:
        print(f"skipped unusable {reason}", file=sys.stderr)
    # Neighbours: the records after the first n (same templates, other subjects), never edited.
    neighbours = load_records(dataset, record_format).records[len(records) + len(loaded.skipped) :][:MAX_NEIGHBOURS]
    prompt_format = prompt_format or NATURAL_FORMAT[record_format]
    config = engine_config(layer, threshold, overrides)  # a bad override fails before the model loads
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    host = host or ModelHost.load(model, data_dir, cache_dir=cache_dir, dtype=dtype)
    engine = EditingEngine(host, config)
    ids = [f"e{i:06d}" for i in range(len(records))]

    trained: dict[str, TrainedEdit] = {}
    timings = apply_edits(engine, records, ids, trained)
    m = Measurer(engine, prompt_format, batch_size)
    quality = measure(m, records, ids, with_perplexity=record_format == "hallucination")
    hard = hard_cases(m, records, neighbours)
    after_rollback, revoked = rollback(m, records, ids, revoke_fraction, seed)
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
        "n": len(records),
        "n_skipped": len(loaded.skipped),
        "model": host.name,
        "dtype": str(host.info["dtype"]),
        "layer": config.layer,
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


def markdown_table(results: dict[str, Any]) -> str:
    head = (
        f"{results['format']} · n={results['n']} · {results['model']} · layer {results['layer']} · "
        f"threshold {results['threshold']} · {results['prompt_format']} prompts"
    )
    lines = [head, "", "| metric | value |", "| --- | ---: |"]
    for key, label in TABLE_ROWS:
        if key in results:
            value = results[key]
            lines.append(f"| {label} | {'n/a' if value is None else f'{100 * value:.1f}%'} |")
    for key, label, fmt in PLAIN_ROWS:
        if key in results:
            value = results[key]
            lines.append(f"| {label} | {'n/a' if value is None else fmt.format(value)} |")
    return "\n".join(lines)
