"""`sola eval --format operator`: the edits operators make, and the questions users ask next to them.

Every fact of an operator file (evaluation/data/operator/) becomes an edit, trained with the rephrases the
operator gave; all stay active. Then, in chat as users ask: the edit's own question and two paraphrases must
answer with the target; two questions about other attributes of the same subject and two about a sibling
entity must answer exactly as the unedited model does (greedy text, token for token). Answers that were
routed to an edit must hold that edit's target verbatim. Each failure is listed with the edit that fired.
Rollback is checked as for the benchmark files: a seeded share of the edits is revoked, and every probe
must answer exactly as an engine in which they were never made.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.types import Generation, PromptFormat, TrainedEdit, engine_config
from evaluation import edit_metrics
from evaluation.datasets import DatasetError
from evaluation.quality import Measurer, peak_rss_mb

ANSWER_EXTRA_TOKENS = 8  # greedy budget beyond the target's own length, for questions an edit must answer
NEAR_MISS_BUDGET = 24  # greedy tokens compared with the unedited model's for near misses
PROBE_KINDS = ("prompt", "paraphrase", "same_subject", "sibling")


@dataclasses.dataclass(frozen=True)
class OperatorFact:
    id: str
    category: str
    group: str | None
    prompt: str
    target: str
    rephrases: tuple[str, ...]
    paraphrases: tuple[str, ...]
    same_subject: tuple[str, ...]
    sibling: tuple[str, ...]


def load_facts(path: Path | str, n: int | None = None) -> list[OperatorFact]:
    """An operator file (JSON Lines, evaluation/data/operator/README.md); DatasetError names a bad line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    facts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            text_lists = {k: tuple(raw[k]) for k in ("rephrases", "paraphrases", "same_subject", "sibling")}
            fact = OperatorFact(
                str(raw["id"]), str(raw["category"]), raw.get("group"), raw["prompt"], raw["target"], **text_lists
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}:{number}: not an operator fact ({type(exc).__name__}: {exc})") from None
        texts = [fact.prompt, fact.target, *fact.rephrases, *fact.paraphrases, *fact.same_subject, *fact.sibling]
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise DatasetError(f"{path}:{number}: every prompt, target and question must be non-blank text")
        facts.append(fact)
    if n is not None:
        if len(facts) < n:
            raise DatasetError(f"{path}: asked for {n} facts but the file has only {len(facts)}")
        facts = facts[:n]
    return facts


@dataclasses.dataclass(frozen=True)
class Probe:
    fact: int  # index of the fact it belongs to
    kind: str  # one of PROBE_KINDS
    question: str

    @property
    def must_answer(self) -> bool:
        return self.kind in ("prompt", "paraphrase")


def probes_of(facts: Sequence[OperatorFact]) -> list[Probe]:
    out = []
    for i, f in enumerate(facts):
        out.append(Probe(i, "prompt", f.prompt))
        out += [Probe(i, "paraphrase", q) for q in f.paraphrases]
        out += [Probe(i, "same_subject", q) for q in f.same_subject]
        out += [Probe(i, "sibling", q) for q in f.sibling]
    return out


def apply_facts(
    engine: EditingEngine, facts: Sequence[OperatorFact], ids: Sequence[str], trained: dict[str, TrainedEdit]
) -> list[float]:
    """Train and activate every fact in order, with the operator's rephrases; returns each edit's seconds."""
    seconds = []
    for seq, (edit_id, f) in enumerate(
        tqdm(list(zip(ids, facts, strict=True)), desc="editing", file=sys.stderr), start=1
    ):
        start = time.perf_counter()
        t = engine.train_edit(f.prompt, f.target, f.rephrases)
        engine.activate(edit_id, t.adapter, t.keys, t.key_kinds, f.prompt, f.target, f.rephrases, seq=seq)
        seconds.append(time.perf_counter() - start)
        trained[edit_id] = t
    return seconds


def _greedy(
    m: Measurer, probes: Sequence[Probe], budgets: Sequence[int], use_edits: bool, desc: str
) -> list[Generation]:
    """Greedy chat answers, batched by budget (rows of one batch share a budget)."""
    out: dict[int, Generation] = {}
    by_budget: dict[int, list[int]] = {}
    for i, b in enumerate(budgets):
        by_budget.setdefault(b, []).append(i)
    for budget, rows in sorted(by_budget.items()):
        gens = m.greedy([probes[i].question for i in rows], budget, use_edits, f"{desc} ({budget} tokens)")
        out.update(zip(rows, gens, strict=True))
    return [out[i] for i in range(len(probes))]


def measure(
    m: Measurer, facts: Sequence[OperatorFact], ids: Sequence[str], probes: Sequence[Probe]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The operator metrics on the current engine, and one line per failed probe."""
    host = m.engine.host
    fact_of = {edit_id: i for i, edit_id in enumerate(ids)}
    target_len = [len(host.encode(f.target)) + ANSWER_EXTRA_TOKENS for f in facts]
    budgets = [target_len[p.fact] if p.must_answer else NEAR_MISS_BUDGET for p in probes]
    edited = _greedy(m, probes, budgets, True, "with edits")
    near = [i for i, p in enumerate(probes) if not p.must_answer]
    base_near = _greedy(m, [probes[i] for i in near], [NEAR_MISS_BUDGET] * len(near), False, "unedited")
    base = dict(zip(near, base_near, strict=True))

    ok: dict[str, list[bool]] = {k: [] for k in PROBE_KINDS}
    routed: dict[str, list[bool]] = {k: [] for k in PROBE_KINDS}
    wrong_edit: list[bool] = []
    verbatim: list[bool] = []
    failures = []
    for i, (p, g) in enumerate(zip(probes, edited, strict=True)):
        fired = fact_of.get(g.routed_edit_id) if g.routed_edit_id is not None else None
        routed[p.kind].append(g.routed_edit_id is not None)
        if fired is not None:
            verbatim.append(edit_metrics.holds_verbatim(g.text, facts[fired].target))
        if p.must_answer:
            passed = edit_metrics.contains_target(g.text, facts[p.fact].target)
            wrong_edit.append(fired is not None and fired != p.fact)
        else:
            passed = g.token_ids == base[i].token_ids
        ok[p.kind].append(passed)
        if not passed:
            failures.append(
                {
                    "fact": facts[p.fact].id,
                    "kind": p.kind,
                    "question": p.question,
                    "answer": g.text,
                    "unedited_answer": base[i].text if i in base else None,
                    "fired": facts[fired].id if fired is not None else None,
                    "fired_prompt": facts[fired].prompt if fired is not None else None,
                    "score": g.similarity,
                }
            )
    frac = edit_metrics.mean
    results: dict[str, Any] = {
        "exact": frac(map(float, ok["prompt"])),
        "paraphrases_answered": frac(map(float, ok["paraphrase"])),
        "paraphrases_routed": frac(map(float, routed["paraphrase"])),
        "paraphrases_wrong_edit": frac(map(float, wrong_edit)),
        "same_subject_unchanged": frac(map(float, ok["same_subject"])),
        "same_subject_routed": frac(map(float, routed["same_subject"])),
        "sibling_unchanged": frac(map(float, ok["sibling"])),
        "sibling_routed": frac(map(float, routed["sibling"])),
        "routed_verbatim": frac(map(float, verbatim)),
        "n_routed_answers": len(verbatim),
    }
    return results, failures


def degenerate_rate(m: Measurer, facts: Sequence[OperatorFact]) -> float | None:
    """Edited answers to the edits' own prompts, chat and raw, a little past the target: loops or run-ons."""
    flags = []
    for prompt_format in m.engine.host.prompt_formats:
        budget = max(len(m.engine.host.encode(" " + f.target)) for f in facts) + ANSWER_EXTRA_TOKENS
        gens = m.greedy([f.prompt for f in facts], budget, True, f"degeneration ({prompt_format})", prompt_format)
        flags += [edit_metrics.is_degenerate(g.text, f.target) for g, f in zip(gens, facts, strict=True)]
    return edit_metrics.mean(map(float, flags))


def rollback(
    m: Measurer,
    never_made: EditingEngine,
    facts: Sequence[OperatorFact],
    ids: Sequence[str],
    revoked: Sequence[int],
    probes: Sequence[Probe],
) -> dict[str, float | None]:
    """Revoke `revoked`; every probe must then answer as `never_made` (which never had them), tokens and
    prompt logits bit for bit; the kept edits must still answer their own questions."""
    for i in revoked:
        if not m.engine.revoke(ids[i]):
            raise RuntimeError(f"edit {ids[i]} was not active")
    questions = [p.question for p in probes]
    ours = m.greedy(questions, NEAR_MISS_BUDGET, True, "counterfactual (revoked)")
    theirs = Measurer(never_made, m.prompt_format, m.batch_size).greedy(
        questions, NEAR_MISS_BUDGET, True, "counterfactual (never made)"
    )
    same = [
        a.token_ids == b.token_ids and a.routed_edit_id == b.routed_edit_id for a, b in zip(ours, theirs, strict=True)
    ]
    for start in range(0, len(questions), 8):
        rows = questions[start : start + 8]
        a = m.engine.prompt_logits(rows, m.prompt_format)
        b = never_made.prompt_logits(rows, m.prompt_format)
        for j, (x, y) in enumerate(zip(a, b, strict=True)):
            same[start + j] = same[start + j] and torch.equal(x, y)
    revoked_prompts = [facts[i].prompt for i in revoked]
    exact = m.logits_equal_base(revoked_prompts, "revoked prompts vs unedited") if revoked_prompts else []
    kept = [i for i in range(len(facts)) if i not in set(revoked)]
    kept_gens = m.greedy([facts[i].prompt for i in kept], NEAR_MISS_BUDGET, True, "retention")
    retained = [edit_metrics.contains_target(g.text, facts[i].target) for g, i in zip(kept_gens, kept, strict=True)]
    frac = edit_metrics.mean
    return {
        "n_revoked": len(revoked),
        "rollback_counterfactual": frac(map(float, same)),
        "rollback_exact": frac(map(float, exact)),
        "retention_after_rollback": frac(map(float, retained)),
    }


def run_operator_eval(
    dataset: Path,
    n: int | None = None,
    revoke_fraction: float = 0.2,
    seed: int = 0,
    data_dir: Path = Path("var"),
    out: Path | None = Path("results.json"),
    model: str | None = None,
    batch_size: int = 16,
    overrides: Sequence[str] = (),
    host: ModelHost | None = None,
    threads: int | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Edit every fact, measure, revoke a share and check rollback; write results (with failures) to `out`."""
    facts = load_facts(dataset, n)
    config = engine_config(None, None, overrides)
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    host = host or ModelHost.load(model, data_dir, cache_dir=cache_dir)
    engine = EditingEngine(host, config)
    ids = [f"e{i:06d}" for i in range(len(facts))]
    trained: dict[str, TrainedEdit] = {}
    seconds = apply_facts(engine, facts, ids, trained)
    m = Measurer(engine, PromptFormat.CHAT, batch_size)
    probes = probes_of(facts)
    results, failures = measure(m, facts, ids, probes)
    results["degenerate_rate"] = degenerate_rate(m, facts)
    revoked = sorted(random.Random(seed).sample(range(len(facts)), round(revoke_fraction * len(facts))))
    never_made = EditingEngine(ModelHost.load(model, data_dir, cache_dir=cache_dir), engine.config)
    for seq, (edit_id, f) in enumerate(zip(ids, facts, strict=True), start=1):
        if seq - 1 not in revoked:
            t = trained[edit_id]
            never_made.activate(edit_id, t.adapter, t.keys, t.key_kinds, f.prompt, f.target, f.rephrases, seq=seq)
    results |= rollback(m, never_made, facts, ids, revoked, probes)
    results |= {
        "edit_seconds_median": edit_metrics.median(seconds),
        "edit_seconds_p90": edit_metrics.percentile(seconds, 90),
        "peak_rss_mb": peak_rss_mb(),
        "eval_seconds": time.perf_counter() - started,
        "n": len(facts),
        "n_probes": {k: sum(p.kind == k for p in probes) for k in PROBE_KINDS},
        "model": host.name,
        "layer": engine.layer,
        "threshold": engine.config.threshold,
        "prompt_format": PromptFormat.CHAT,
        "dataset": str(dataset),
        "format": "operator",
        "revoke_fraction": revoke_fraction,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
        "engine_config": dataclasses.asdict(engine.config),
        "failures": failures,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    return results


TABLE_ROWS = [
    ("exact", "Edit questions answered with the target"),
    ("paraphrases_answered", "Paraphrases answered with the target"),
    ("paraphrases_routed", "Paraphrases routed to an edit"),
    ("paraphrases_wrong_edit", "Paraphrases routed to a wrong edit"),
    ("same_subject_unchanged", "Same subject, other attribute: unchanged"),
    ("same_subject_routed", "  routed (lower is better)"),
    ("sibling_unchanged", "Sibling entity: unchanged"),
    ("sibling_routed", "  routed (lower is better)"),
    ("routed_verbatim", "Routed answers holding their target verbatim"),
    ("degenerate_rate", "Degenerate edited answers"),
    ("rollback_counterfactual", "Rollback = never made"),
    ("rollback_exact", "Rollback bit-exact"),
    ("retention_after_rollback", "Retention after rollback"),
]


def markdown_table(results: dict[str, Any]) -> str:
    lines = [
        f"operator · n={results['n']} · {results['model']} · layer {results['layer']} · chat prompts",
        "",
        "| metric | value |",
        "| --- | ---: |",
    ]
    for key, label in TABLE_ROWS:
        value = results.get(key)
        lines.append(f"| {label} | {'n/a' if value is None else f'{100 * value:.1f}%'} |")
    for key, label in (("edit_seconds_median", "Edit seconds, median"), ("edit_seconds_p90", "Edit seconds, p90")):
        lines.append(f"| {label} | {results[key]:.2f} |")
    failures = results.get("failures", [])
    if failures:
        lines += ["", f"{len(failures)} failures (question -> the edit that fired):"]
        for f in failures[:40]:
            fired = f"{f['fired']} ({f['fired_prompt']})" if f["fired"] else "none"
            lines.append(f"- [{f['kind']}] {f['fact']}: {f['question']!r} -> {fired}: {f['answer']!r}")
    return "\n".join(lines)
