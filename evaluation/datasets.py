"""Model-editing benchmark files (ZsRE, CounterFact, KnowEdit, WISE hallucination) as one record type.

Each format names its fields differently; `load_records` normalises all of them into `BenchmarkRecord`.
A record that lacks a field the format requires raises `DatasetError` naming the record and the field;
a record whose prompt or target is blank (a few upstream records are) is skipped and reported; a blank
paraphrase or locality answer only removes that record from the metric it would measure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASET_FORMATS = ("zsre", "counterfact", "knowedit", "hallucination")


# A sentence boundary: a newline, or . ! ? then whitespace (a closing quote or bracket may come between).
SENTENCE_BOUNDARY = re.compile(r"\n|[.!?][\"'\u201d\u2019)\]]*\s")


def is_paraphrase_row(rephrase: str, subject: str) -> bool:
    """CounterFact's `rephrase_prompt` holds one of ROME's paraphrase prompts (the edited relation after an
    unrelated sentence: "...goes still and dies. X, a native") or one of its generation prompts ("X is known
    for"). It is a paraphrase iff a sentence boundary occurs before the subject's first occurrence (agrees
    with ROME's own fields on 1,113 of 1,115 public records; ../shared/data/README.md)."""
    at = rephrase.find(subject)
    return at > 0 and SENTENCE_BOUNDARY.search(rephrase[:at]) is not None


class DatasetError(ValueError):
    """A benchmark file that cannot be read as the requested format."""


@dataclass(frozen=True)
class BenchmarkRecord:
    prompt: str
    target: str
    rephrase: str | None = None  # generalization prompt (None: the format has none)
    locality_prompt: str | None = None  # an unrelated prompt whose prediction must not change
    locality_answer: str | None = None  # its reference continuation (teacher-forced)
    # KnowEdit's Relation_Specificity: the SAME subject asked about ANOTHER relation, (prompt, answer) each.
    relation_locality: tuple[tuple[str, str], ...] = ()
    # Whether `rephrase` asks the edited relation (CounterFact: a paraphrase row, not a generation prompt);
    # True for the other formats, whose rephrases are all paraphrases.
    rephrase_is_paraphrase: bool = True


def _first_string(value: Any) -> str | None:
    """KnowEdit stores answers as a string, a list, or a list of lists: take the first string."""
    while isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, str) else None


class _Unusable(Exception):
    """A well-formed record that cannot be an edit (e.g. a blank target in the upstream data): skipped."""


class _Reader:
    """Field access on one raw record; a malformed field fails with the record index and field name."""

    def __init__(self, raw: Any, index: int):
        if not isinstance(raw, dict):
            raise DatasetError(f"record {index}: expected a JSON object, got {type(raw).__name__}")
        self.raw, self.index = raw, index

    def _get(self, names: tuple[str, ...], required: bool) -> str | None:
        """The first of `names` present (blank: ""); absent: None, or an error when required."""
        for name in names:
            if self.raw.get(name) is not None:
                value = _first_string(self.raw[name])
                if value is None:
                    raise DatasetError(f"record {self.index}: field {name!r} must be a string")
                return value
        if required:
            raise DatasetError(f"record {self.index}: missing field {' or '.join(repr(n) for n in names)}")
        return None

    def edit(self, *names: str) -> str:
        """A field the edit itself needs (prompt, target): a blank one makes the record unusable."""
        value = self._get(names, required=True) or ""
        if not value.strip():
            raise _Unusable(f"record {self.index}: field {names[0]!r} is blank")
        return value

    def probe(self, *names: str, required: bool = True) -> str | None:
        """A test prompt or answer: blank means this record cannot measure that metric (None)."""
        value = self._get(names, required)
        return value if value and value.strip() else None


def _record(
    prompt: str,
    target: str,
    rephrase: str | None,
    locality_prompt: str | None,
    locality_answer: str | None,
    relation_locality: tuple[tuple[str, str], ...] = (),
    rephrase_is_paraphrase: bool = True,
) -> BenchmarkRecord:
    """A record whose locality case is kept only when both its prompt and answer are there."""
    if locality_prompt is None or locality_answer is None:
        locality_prompt = locality_answer = None
    return BenchmarkRecord(
        prompt, target, rephrase, locality_prompt, locality_answer, relation_locality, rephrase_is_paraphrase
    )


def _zsre(r: _Reader) -> BenchmarkRecord:
    return _record(r.edit("src"), r.edit("alt"), r.probe("rephrase"), r.probe("loc"), r.probe("loc_ans"))


def _counterfact(r: _Reader) -> BenchmarkRecord:
    prompt, target, rephrase = r.edit("prompt"), r.edit("target_new"), r.probe("rephrase_prompt")
    subject = r.probe("subject", required=False)
    paraphrase = rephrase is not None and subject is not None and is_paraphrase_row(rephrase, subject)
    locality = r.probe("locality_prompt"), r.probe("locality_ground_truth")
    return _record(prompt, target, rephrase, *locality, rephrase_is_paraphrase=paraphrase)


def _hallucination(r: _Reader) -> BenchmarkRecord:
    prompt, target = r.edit("prompt"), r.edit("target_new")  # WISE's hallucination set has no paraphrases
    return _record(prompt, target, None, r.probe("locality_prompt"), r.probe("locality_ground_truth"))


def _cases(r: _Reader, locality: dict[str, Any], name: str) -> list[tuple[str | None, str | None]]:
    """(prompt, answer) of each case of one KnowEdit locality kind; a blank one is (None, None)."""
    cases = locality.get(name) or []
    if not isinstance(cases, list):
        raise DatasetError(f"record {r.index}: field 'locality.{name}' must be a list")
    out: list[tuple[str | None, str | None]] = []
    for i, case in enumerate(cases):
        field = f"locality.{name}[{i}]"
        if not isinstance(case, dict):
            raise DatasetError(f"record {r.index}: {field!r} must be an object")
        loc = _Reader(case, r.index)
        try:
            out.append((loc.probe("prompt"), loc.probe("ground_truth")))
        except DatasetError as exc:
            raise DatasetError(str(exc).replace("field '", f"field '{field}.")) from None
    return out


def _knowedit(r: _Reader) -> BenchmarkRecord:
    # Field fallbacks follow EasyEdit's KnoweditDataset (WikiBio uses text/labels, some splits lack rephrases).
    # Some upstream records have no locality cases at all (`{}`): they measure no locality, like a blank one.
    locality = r.raw.get("locality", {})
    if not isinstance(locality, dict):
        raise DatasetError(f"record {r.index}: field 'locality' must be an object")
    relation = _cases(r, locality, "Relation_Specificity")
    first = (relation or _cases(r, locality, "Forgetfulness") or [(None, None)])[0]
    return _record(
        r.edit("prompt", "text"),
        r.edit("target_new", "labels"),
        r.probe("rephrase_prompt", "rephrase", required=False),
        *first,
        relation_locality=tuple((p, a) for p, a in relation if p is not None and a is not None),
    )


PARSERS: dict[str, Callable[[_Reader], BenchmarkRecord]] = {
    "zsre": _zsre,
    "counterfact": _counterfact,
    "knowedit": _knowedit,
    "hallucination": _hallucination,
}


@dataclass
class Loaded:
    records: list[BenchmarkRecord]
    skipped: list[str]  # why each unusable record was left out ("record 534: field 'alt' is blank")


def parse_records(raw: Any, fmt: str, n: int | None = None) -> Loaded:
    """Normalise the first `n` records of decoded JSON (a list of records) into BenchmarkRecords (records of a
    benchmark file, not stored edits: those are storage.repository.EditRecord).

    A malformed record (missing field, wrong type) raises DatasetError; a well-formed record that cannot
    be an edit (blank prompt or target, as a few upstream records have) is skipped and reported, so the
    first `n` records can give fewer than `n` edits (the literature's "first N records" protocol).
    """
    if fmt not in PARSERS:
        raise DatasetError(f"unknown format {fmt!r}; choose one of {', '.join(DATASET_FORMATS)}")
    if not isinstance(raw, list):
        raise DatasetError(f"expected a JSON list of records, got {type(raw).__name__}")
    loaded = Loaded([], [])
    for i, item in enumerate(raw if n is None else raw[:n]):
        try:
            loaded.records.append(PARSERS[fmt](_Reader(item, i)))
        except _Unusable as exc:
            loaded.skipped.append(str(exc))
    return loaded


def load_records(path: Path | str, fmt: str, n: int | None = None) -> Loaded:
    """Read a benchmark file (a JSON list, or JSON Lines for *.jsonl): its first `n` records."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".jsonl":
            raw = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from None
    if n is not None and isinstance(raw, list) and len(raw) < n:
        raise DatasetError(f"{path}: asked for {n} records but the file has only {len(raw)}")
    try:
        return parse_records(raw, fmt, n)
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from None
