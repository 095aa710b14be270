"""`sola edits ...`, `sola ask` and `sola route`: operate a running server over its HTTP API (through client.http).

Human-readable tables by default, `--json` for scripts (the API's own JSON on stdout). Expected failures (the
server unreachable, an API error) print one line on stderr and exit 1, never a traceback.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from client.http import (
    DEFAULT_URL,
    CreatedEdit,
    EditQuery,
    SolaApiError,
    SolaClient,
    SolaConnectionError,
    SolaError,
    content_key,
    edit_request,
    extract_adapter,
)
from evaluation.datasets import DATASET_FORMATS, DatasetError, load_records
from wire.kinds import EventKind
from wire.schemas import EditCreate, EditOut, EventOut, GenerateOut

PIPED_WIDTH = 200

edits = typer.Typer(no_args_is_help=True, help="Make, inspect, revoke, restore, import and export edits.")


def console(stderr: bool = False) -> Console:
    """Rich's own width on a terminal; piped (grep, a file), one line per table row rather than 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(file=stream, highlight=False, width=PIPED_WIDTH if piped else None)


def emit(*renderables: Any) -> None:
    console().print(*renderables)


def note(message: str) -> None:
    console(stderr=True).print(Text(message))


# Options every command here takes.
Url = Annotated[str, typer.Option("--url", envvar="SOLA_URL", help="The server's base URL.")]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="SOLA_TOKEN", help="API key (sent as a Bearer token).", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON (the API's own shapes) instead of tables.")]
EditIdArg = Annotated[str, typer.Argument(help="An edit id (ed_...).", show_default=False)]


class Status(StrEnum):
    active = "active"
    revoked = "revoked"


# Dates on the command line: local time unless an offset is given (2025-11-26, 2025-11-26T09:30:00+01:00).
DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]


# Import formats: the benchmark loaders' (evaluation/datasets.py), plus JSON Lines of POST /edits bodies.
ImportFormat = StrEnum("ImportFormat", {name: name for name in (*DATASET_FORMATS, "jsonl", "csv")})  # type: ignore[misc]


# ---- plumbing ------------------------------------------------------------------------------------------------
def describe(exc: SolaError) -> str:
    if isinstance(exc, SolaApiError):
        return f"{exc.message} (HTTP {exc.status} {exc.code})"
    return str(exc)


def fail(message: str, code: int = 1) -> typer.Exit:
    note(f"error: {message}")
    return typer.Exit(code)


@contextmanager
def connect(url: str, token: str | None) -> Iterator[SolaClient]:
    """A client for one command; a SolaError anywhere inside becomes one line on stderr and exit status 1."""
    try:
        with SolaClient(url, token) as client:
            yield client
    except SolaError as exc:
        raise fail(describe(exc)) from None


def print_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    """JSON on stdout, unwrapped (rich would fold long lines)."""
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, dict):
        data = value
    else:
        data = [item.model_dump(mode="json") for item in value]
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


# Columns never wrapped or cut: an id is what the next command needs, and the others are a word long.
_WHOLE = {"id", "edit", "seq", "status", "kind"}


def table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    """A listing: the whole columns as wide as their longest cell, free text (prompts, targets) wrapped."""
    rows = list(rows)
    t = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, name in enumerate(columns):
        whole = name in _WHOLE
        width = max([len(name), *(len(row[i]) for row in rows)]) if whole else None
        t.add_column(name, no_wrap=whole, min_width=width)
    for row in rows:
        t.add_row(*(Text(cell) for cell in row))  # Text: a prompt's "[...]" is not rich markup
    return t


def when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def edit_table(items: Iterable[EditOut]) -> Table:
    rows = ((e.id, e.status, e.prompt, e.target, e.created_by, when(e.created_at)) for e in items)
    return table(("id", "status", "prompt", "target", "by", "created"), rows)


def edit_details(e: EditOut, created: CreatedEdit | None = None) -> Table:
    """One edit in full; `created`: what POST /edits answered (the edits this one now answers in place of, and
    the wordings it captures from older edits or loses to them)."""
    t = Table(show_header=False, box=None)
    revoked = f"{when(e.revoked_at)} by {e.revoked_by}" if e.revoked_at else "-"
    rows = {
        "id": e.id,
        "status": e.status,
        "prompt": e.prompt,
        "target": e.target,
        "rephrases": "\n".join(e.rephrases) or "-",
        "negatives": "\n".join(e.negatives) or "-",
        "metadata": json.dumps(e.metadata, ensure_ascii=False) if e.metadata else "-",
        "created": f"{when(e.created_at)} by {e.created_by}",
        "revoked": revoked,
        "superseded by": e.superseded_by or "-",
        "base model": f"{e.base_model} ({e.base_fingerprint[:12]}), layer {e.layer}",
        "training": f"{e.train.steps} steps, loss {e.train.loss:.4f}, {e.train.seconds:.2f} s",
    }
    if created is not None:
        rows["supersedes"] = (
            "\n".join(f"{s.edit_id} (similarity {s.similarity:.3f})" for s in created.supersedes) or "-"
        )
        rows["captures"] = "\n".join(f"{c.question!r} of {c.edit_id} ({c.prompt_format})" for c in created.captures)
        rows["captured by"] = "\n".join(
            f"{c.question!r} reaches {c.edit_id} ({c.prompt_format})" for c in created.captured_by
        )
        rows["captures"] = rows["captures"] or "-"
        rows["captured by"] = rows["captured by"] or "-"
    for key, value in rows.items():
        t.add_row(Text(key, style="bold"), Text(value))
    return t


def event_table(items: Iterable[EventOut]) -> Table:
    rows = ((str(ev.seq), when(ev.at), ev.kind, ev.actor, ev.edit_id, brief(ev.detail)) for ev in items)
    return table(("seq", "at", "kind", "actor", "edit", "detail"), rows)


def brief(detail: dict[str, Any]) -> str:
    """An event's detail as key=value, numbers to 3 significant digits (training loss and seconds)."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in detail.items())


def parse_meta(pairs: list[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="--meta")
        meta[key] = value
    return meta


# ---- single edits --------------------------------------------------------------------------------------------
@edits.command("add")
def add(
    prompt: Annotated[str, typer.Argument(help="The question or prompt the edit answers.", show_default=False)],
    target: Annotated[str, typer.Argument(help="The answer the model should give.", show_default=False)],
    rephrase: Annotated[
        list[str] | None, typer.Option("--rephrase", help="Another wording of the prompt (repeatable).")
    ] = None,
    negative: Annotated[
        list[str] | None,
        typer.Option("--negative", help="A question the edit must NOT answer (repeatable)."),
    ] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", help="Metadata key=value (repeatable).")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Send again with the same key: the first edit is returned, not a second.")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Train and store one edit (waits while it trains: seconds)."""
    metadata = parse_meta(meta or [])
    with connect(url, token) as client:
        created = client.create_edit(prompt, target, rephrase or [], metadata, idempotency_key, negative or [])
    if created.replayed:
        note(f"edit {created.edit.id} already existed under this Idempotency-Key: nothing was trained")
    if as_json:
        print_json(created.as_json())
        return
    emit(Text(f"created {created.edit.id}" if not created.replayed else f"existing {created.edit.id}"))
    emit(edit_details(created.edit, created))


@edits.command("list")
def list_(
    status: Annotated[Status | None, typer.Option(help="Only edits with this status.")] = None,
    actor: Annotated[str | None, typer.Option(help="Only edits made by this key name.")] = None,
    q: Annotated[
        str | None, typer.Option("--q", help="Only edits with this text in the prompt or target (any case).")
    ] = None,
    meta: Annotated[
        list[str] | None, typer.Option("--meta", help="Only edits whose metadata has key=value (repeatable).")
    ] = None,
    created_from: Annotated[
        datetime | None, typer.Option(formats=DATE_FORMATS, help="Only edits created at or after this (local) time.")
    ] = None,
    created_to: Annotated[
        datetime | None, typer.Option(formats=DATE_FORMATS, help="Only edits created before this (local) time.")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Every edit (or those matching the filters), oldest first."""
    where = EditQuery(actor, q, parse_meta(meta or []), created_from, created_to)
    with connect(url, token) as client:
        items = list(client.iter_edits(status.value if status else None, where=where))
    if as_json:
        print_json(items)
    else:
        emit(edit_table(items))
        emit(Text(f"{len(items)} edit(s)"))


@edits.command("show")
def show(edit_id: EditIdArg, url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """One edit in full."""
    with connect(url, token) as client:
        edit = client.get_edit(edit_id)
    if as_json:
        print_json(edit)
    else:
        emit(edit_details(edit))


def _switch(
    action: Callable[[SolaClient, str], EditOut], verb: str, edit_id: str, url: str, token: str | None, as_json: bool
) -> None:
    with connect(url, token) as client:
        edit = action(client, edit_id)
    if as_json:
        print_json(edit)
    else:
        emit(Text(f"{verb} {edit.id}: now {edit.status}"))


@edits.command("revoke")
def revoke(
    edit_id: EditIdArg,
    reason: Annotated[str | None, typer.Option(help="Why: kept in the audit log's `revoked` event.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Stop serving an edit: queries answer as if it had never been made (it stays listed, as revoked)."""
    _switch(lambda client, i: client.revoke(i, reason), "revoked", edit_id, url, token, as_json)


@edits.command("restore")
def restore(
    edit_id: EditIdArg,
    reason: Annotated[str | None, typer.Option(help="Why: kept in the audit log's `restored` event.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Serve a revoked edit again."""
    _switch(lambda client, i: client.restore(i, reason), "restored", edit_id, url, token, as_json)


@edits.command("log")
def log(
    edit_id: Annotated[str | None, typer.Argument(help="Only this edit's events.", show_default=False)] = None,
    kind: Annotated[EventKind | None, typer.Option(help="Only events of this kind.")] = None,
    actor: Annotated[str | None, typer.Option(help="Only events by this key name.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """The audit log (created, revoked, restored, superseded), oldest first."""
    with connect(url, token) as client:
        items = list(client.events(edit_id, kind=kind.value if kind else None, actor=actor))
    if as_json:
        print_json(items)
    else:
        emit(event_table(items))


@edits.command("export")
def export(
    edit_id: EditIdArg,
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the PEFT adapter into.", show_default=False)],
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Write the edit's adapter as a PEFT adapter folder.

    DIR gets adapter_config.json and adapter_model.safetensors (load them with
    `PeftModel.from_pretrained(base_model, DIR)`), sola_edit.json (the base model's identity and the edit's
    routing data) and a README: without the router the adapter changes every answer. A revoked edit's
    adapter can be exported too."""
    with connect(url, token) as client:
        archive = client.download_adapter(edit_id)
        try:
            files = extract_adapter(archive, out_dir)
        except OSError as exc:
            raise SolaError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
    described = out_dir / "sola_edit.json"
    base = json.loads(described.read_text())["base_model"] if described.is_file() else {}
    if as_json:
        print_json({"id": edit_id, "dir": str(out_dir), "files": [f.name for f in files], "base_model": base})
        return
    emit(Text(f"wrote {', '.join(f.name for f in files)} to {out_dir}"))
    if base:
        where = base.get("local_path_on_server") or "not on the server (it serves another model now)"
        emit(Text(f"base model: {base.get('hub_id') or base.get('name')} (on the server: {where})"))
        emit(Text("without the router this adapter changes every answer: see README.md there"))


@edits.command("negatives")
def negatives(
    edit_id: EditIdArg,
    questions: Annotated[
        list[str] | None, typer.Argument(help="The questions the edit must not answer (none: clear them).")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the negatives_set event).")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Replace an edit's negatives: each vetoes this edit (and no other) for questions closer to it."""
    with connect(url, token) as client:
        changed = client.set_negatives(edit_id, questions or [], reason)
    if as_json:
        print_json(changed)
        return
    emit(edit_details(changed))


# ---- asking ----------------------------------------------------------------------------------------------------
def route(
    questions: Annotated[list[str], typer.Argument(help="The questions.", show_default=False)],
    raw: Annotated[bool, typer.Option("--raw", help="Plain completion instead of the chat format.")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Which edit each question would reach, with the runner-up and the margin, without generating."""
    with connect(url, token) as client:
        routes = client.route(questions, chat=not raw)
    if as_json:
        print_json(routes)
        return

    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = (
        (r.question, r.edit_id or "none", score(r.score), r.runner_up_id or "-", score(r.margin), ", ".join(r.vetoed))
        for r in routes
    )
    emit(table(("question", "edit", "score", "runner-up", "margin", "vetoed"), rows))


def ask(
    prompt: Annotated[str, typer.Argument(help="The question.", show_default=False)],
    raw: Annotated[bool, typer.Option("--raw", help="Plain completion instead of the chat format.")] = False,
    use_edits: Annotated[
        bool, typer.Option("--edits/--no-edits", help="--no-edits: the unedited base model answers (A/B checks).")
    ] = True,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer, in tokens.")] = 32,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Ask the edited model; says which edit answered, or which edit was nearest and how similar it was."""
    with connect(url, token) as client:
        answer = client.generate(prompt, chat=not raw, max_new_tokens=max_new_tokens, use_edits=use_edits)
    if as_json:
        print_json(answer)
        return
    emit(Text(answer.text.strip()))
    emit(Text(provenance(answer, use_edits), style="dim"))


def provenance(answer: GenerateOut, use_edits: bool = True) -> str:
    if not use_edits:
        return f"answered by the unedited base model {answer.model} (--no-edits)"
    if answer.routed_edit_id is not None:
        return f"answered by edit {answer.routed_edit_id} (similarity {answer.similarity:.3f})"
    if answer.nearest_edit_id is not None and answer.similarity is not None:
        nearest = f"; the nearest edit, {answer.nearest_edit_id}, scored {answer.similarity:.3f}"
    else:
        nearest = "; there are no active edits"
    return f"answered by the base model {answer.model} (no edit fired{nearest})"


# ---- bulk import -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    label: str  # where it came from, for the report: "record 12", "line 3"
    body: dict[str, Any]  # the POST /edits body


@dataclass
class ImportReport:
    created: list[tuple[str, str]] = field(default_factory=list)  # (label, edit id)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # replays: made by an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (label, why)
    not_attempted: int = 0  # left when the server became unreachable or the operator pressed Ctrl-C

    def as_json(self) -> dict[str, Any]:
        return {
            "created": [{"record": label, "id": i} for label, i in self.created],
            "skipped": [{"record": label, "id": i} for label, i in self.skipped],
            "failed": [{"record": label, "error": why} for label, why in self.failed],
            "not_attempted": self.not_attempted,
        }


_RECORD_LABEL = re.compile(r"record \d+")


def benchmark_records(path: Path, fmt: str, limit: int | None) -> tuple[list[Record], list[tuple[str, str]]]:
    """A benchmark file's usable records as edits (the rephrase, when there is one, trains as a rephrase), and
    the records the loader left out (blank prompt or target) as failures, each labelled by its place in the file."""
    loaded = load_records(path, fmt, limit)
    unusable = [_labelled(message) for message in loaded.skipped]
    left_out = {label for label, _ in unusable}
    places = (f"record {i}" for i in range(len(loaded.records) + len(loaded.skipped)))
    labels = [label for label in places if label not in left_out]
    records = [
        Record(label, edit_request(r.prompt, r.target, [r.rephrase] if r.rephrase else [], {"source": fmt}))
        for label, r in zip(labels, loaded.records, strict=False)
    ]
    return records, unusable


def _labelled(message: str) -> tuple[str, str]:
    """The loader's "record 534: field 'alt' is blank" as ("record 534", "field 'alt' is blank")."""
    label, sep, why = message.partition(": ")
    return (label, why) if sep and _RECORD_LABEL.fullmatch(label) else ("record", message)


def jsonl_records(path: Path, limit: int | None) -> tuple[list[Record], list[tuple[str, str]]]:
    """One POST /edits body per line, each checked against the API's own request schema."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    records: list[Record] = []
    bad: list[tuple[str, str]] = []
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    for n, line in numbered[:limit]:
        try:
            body = EditCreate.model_validate_json(line)
        except ValidationError as exc:
            bad.append((f"line {n}", _validation_message(exc)))
        else:
            fields = (body.prompt, body.target, body.rephrases, body.metadata, body.negatives)
            records.append(Record(f"line {n}", edit_request(*fields)))
    return records, bad


CSV_COLUMNS = ("prompt", "target", "rephrases", "negatives")  # every other column is metadata


def csv_records(path: Path, limit: int | None) -> tuple[list[Record], list[tuple[str, str]]]:
    """One edit per row of a CSV file with a header: prompt, target, rephrases and negatives (each list
    separated by `|`), and any other column as a metadata field (left out where the cell is empty)."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [(reader.line_num, row) for row in itertools.islice(reader, limit)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    missing = [c for c in ("prompt", "target") if c not in header]
    if missing:
        raise DatasetError(f"{path}: the header row lacks {', '.join(missing)} (columns: prompt, target, rephrases)")
    records: list[Record] = []
    bad: list[tuple[str, str]] = []
    for n, row in rows:
        if None in row:  # more cells than the header names
            bad.append((f"line {n}", "more cells than the header has columns"))
            continue

        def listed(column: str, cells: dict[str, str | None] = row) -> list[str]:
            return [part.strip() for part in (cells.get(column) or "").split("|") if part.strip()]

        metadata = {k: v for k, v in row.items() if k not in CSV_COLUMNS and v}
        fields = {"prompt": row["prompt"] or "", "target": row["target"] or "", "rephrases": listed("rephrases")}
        fields |= {"negatives": listed("negatives"), "metadata": metadata}
        try:
            body = EditCreate.model_validate(fields)
        except ValidationError as exc:
            bad.append((f"line {n}", _validation_message(exc)))
        else:
            records.append(
                Record(
                    f"line {n}", edit_request(body.prompt, body.target, body.rephrases, body.metadata, body.negatives)
                )
            )
    return records, bad


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts)


def send_all(
    client: SolaClient, records: list[Record], report: ImportReport, progress: Progress, batch: int = 32
) -> None:
    """POST the records in batches (POST /edits/batch), each with an Idempotency-Key of its own content: a re-run
    replays what an earlier run made (even part of a batch cut short) and trains only the rest."""
    task = progress.add_task("importing", total=len(records), rate="")
    started = time.perf_counter()
    trained = 0
    for first in range(0, len(records), batch):
        chunk = records[first : first + batch]
        try:
            # The server trains the whole batch before it answers: allow each edit its own training budget.
            answer = client.create_edits(
                [(r.body, content_key(r.body)) for r in chunk], timeout=client.timeout + 30.0 * len(chunk)
            )
        except SolaConnectionError as exc:
            report.failed.extend((r.label, describe(exc)) for r in chunk)
            if not exc.sent:  # the server is gone: every further record would fail the same way
                report.not_attempted = len(records) - first - len(chunk)
                return
        except SolaApiError as exc:
            report.failed.extend((r.label, describe(exc)) for r in chunk)
        except KeyboardInterrupt:  # Ctrl-C: still report what was done (the batch in flight may be partly made)
            report.not_attempted = len(records) - first
            return
        else:
            for record, item in zip(chunk, answer.items, strict=True):
                if item.edit is not None:
                    (report.skipped if item.status == "replayed" else report.created).append(
                        (record.label, item.edit.id)
                    )
                    trained += item.status == "created"
                elif item.error is not None:
                    report.failed.append((record.label, f"{item.error.message} ({item.error.code})"))
        elapsed = time.perf_counter() - started
        progress.update(task, advance=len(chunk), rate=f"{trained / elapsed:.2f} edits/s" if elapsed > 0 else "")


def print_report(report: ImportReport) -> None:
    emit(
        Text(
            f"created {len(report.created)}, skipped {len(report.skipped)} (already imported), "
            f"failed {len(report.failed)}" + (f", not attempted {report.not_attempted}" if report.not_attempted else "")
        )
    )
    for label, why in report.failed:
        emit(Text(f"  failed {label}: {why}"))
    if report.not_attempted:
        emit(Text("stopped early: run the same import again to resume where it stopped"))


@edits.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="The records to import.", show_default=False)],
    format: Annotated[
        ImportFormat,
        typer.Option(
            "--format",
            help="A benchmark format; jsonl: one {prompt, target, rephrases?, negatives?, metadata?} a line; csv: "
            "a header row prompt,target[,rephrases][,negatives][,more columns as metadata], lists separated by |.",
        ),
    ],
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N records.")] = None,
    batch: Annotated[
        int, typer.Option(min=1, help="Records per POST /edits/batch (at most the server's SOLA_MAX_BULK_EDITS).")
    ] = 32,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Make one edit per record from a file; running it again resumes (what is done is skipped).

    Records go in batches (POST /edits/batch: the server trains a batch's edits together). Each record's
    Idempotency-Key is the sha256 of its own request, so a re-run after a crash is answered with the edits already
    made instead of training them twice. Exits 1 if any record failed."""
    try:
        if format.value == "jsonl":
            records, report_failed = jsonl_records(file, limit)
        elif format.value == "csv":
            records, report_failed = csv_records(file, limit)
        else:
            records, report_failed = benchmark_records(file, format.value, limit)
    except DatasetError as exc:
        raise fail(str(exc), code=2) from None
    report = ImportReport(failed=report_failed)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with connect(url, token) as client, Progress(*columns, console=console(stderr=True), transient=True) as progress:
        send_all(client, records, report, progress, batch)
    if as_json:
        print_json(report.as_json())
    else:
        print_report(report)
    if report.failed or report.not_attempted:
        raise typer.Exit(1)
