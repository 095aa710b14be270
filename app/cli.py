"""`sola` command line: serve, eval, bench, and the API client commands (`sola edits ...`, `sola ask`)."""

from __future__ import annotations

import os
from enum import StrEnum
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated

import typer

from client import cli as client_cli
from editors.types import PromptFormat, engine_config
from evaluation.datasets import DATASET_FORMATS

cli = typer.Typer(no_args_is_help=True, add_completion=False, help="SoLA lifelong model-editing service.")


# the loaders' formats, and the operator facts (evaluation/operator.py), as CLI choices (built from DATASET_FORMATS,
# which mypy cannot enumerate)
Format = StrEnum("Format", {name: name for name in (*DATASET_FORMATS, "operator")})  # type: ignore[misc]
DtypeName = StrEnum("DtypeName", {name: name for name in ("float32", "bfloat16", "float16")})  # type: ignore[misc]

# Options that `eval` and `bench` share.
DataDir = Annotated[Path, typer.Option(help="Data directory (model cache under DIR/models).")]
Model = Annotated[str | None, typer.Option(help="Local Hugging Face model directory or .gguf file (default: bundled).")]
Threads = Annotated[int | None, typer.Option(min=1, help="torch intra-op threads.")]
Dtype = Annotated[
    DtypeName | None, typer.Option(help="Model dtype (default: float32 on the CPU; edits are bound to it).")
]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"sola {package_version('sola')}")
        raise typer.Exit()


@cli.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Keeps `sola serve` a subcommand (typer would otherwise run a lone command as the root)."""


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (sets SOLA_HOST).", show_default=False)] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (sets SOLA_PORT).", show_default=False)
    ] = None,
) -> None:
    """Run the HTTP service in the foreground (settings from SOLA_* environment variables)."""
    from app.server import serve as run_server

    # Settings read the environment: the options are shorthands for the variables, so both mean the same.
    if host is not None:
        os.environ["SOLA_HOST"] = host
    if port is not None:
        os.environ["SOLA_PORT"] = str(port)

    run_server()


@cli.command("eval")
def evaluate(
    dataset: Annotated[Path, typer.Option(help="Benchmark file (JSON list of records; operator: JSON Lines).")],
    format: Annotated[Format, typer.Option("--format", help="Record format of the file.")],
    n: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Apply the first N records as sequential edits (blank targets are skipped). "
            "Default: 1000; operator: every fact.",
            show_default=False,
        ),
    ] = None,
    revoke_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of edits revoked for the rollback metrics.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed for choosing the revoked edits.")] = 0,
    data_dir: DataDir = Path("var"),
    out: Annotated[Path, typer.Option(help="Where to write the results JSON.")] = Path("results.json"),
    prompt_format: Annotated[
        PromptFormat | None,
        typer.Option(
            "--prompt-format", help="Ask as a chat turn or as raw text (default: the benchmark's natural one)."
        ),
    ] = None,
    layer: Annotated[int | None, typer.Option(help="Edited layer (default: the engine's).")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Routing threshold (score = content cosine x subject coverage^2).")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override an engine knob (editors.types.EngineConfig), e.g. --set target_loss=0.02; repeatable.",
        ),
    ] = None,
    model: Model = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per scoring batch.")] = 16,
    threads: Threads = None,
    checkpoints: Annotated[
        str | None,
        typer.Option(
            help="Also measure every metric after this many edits, e.g. 1000,3000,10000 (N defaults to the "
            "largest); the table gets a column per checkpoint.",
            show_default=False,
        ),
    ] = None,
    holdout: Annotated[
        int,
        typer.Option(
            min=0,
            help="Take the neighbour probes from the file's last K records, never edited (for an N that "
            "reaches the end of the file). 0: the records after the first N.",
        ),
    ] = 0,
    dtype: Dtype = None,
) -> None:
    """Lifelong editing benchmark: N sequential edits, then Rel/Gen/Loc, exact match, routing and rollback."""
    from evaluation import operator
    from evaluation.datasets import DatasetError
    from evaluation.quality import checkpoint_marks, markdown_table, run_eval

    if not dataset.is_file():
        raise typer.BadParameter(f"no such file: {dataset}", param_hint="--dataset")
    chat_only = layer is None and threshold is None and prompt_format in (None, PromptFormat.CHAT)
    if format.value == "operator" and not chat_only:
        raise typer.BadParameter("operator facts are asked in chat; set knobs with --set KEY=VALUE")
    try:
        engine_config(layer, threshold, overrides or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from exc
    if checkpoints and format.value == "operator":
        raise typer.BadParameter("checkpoints apply to the benchmark formats, not operator", param_hint="--checkpoints")
    if format.value == "operator":
        try:
            results = operator.run_operator_eval(
                dataset, n, revoke_fraction, seed, data_dir, out, model, batch_size, overrides or [], threads=threads
            )
        except DatasetError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        typer.echo(operator.markdown_table(results))
        typer.echo(f"\nwrote {out}")
        return
    try:
        marks = [int(c) for c in checkpoints.split(",") if c.strip()] if checkpoints else []
    except ValueError as exc:
        raise typer.BadParameter(
            f"expected edit counts separated by commas: {exc}", param_hint="--checkpoints"
        ) from exc
    n = n or max(marks, default=1000)
    try:
        checkpoint_marks(marks, n)
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}; raise --n or lower the checkpoints", param_hint="--checkpoints") from exc
    try:
        results = run_eval(
            dataset,
            format.value,
            n,
            revoke_fraction=revoke_fraction,
            seed=seed,
            data_dir=data_dir,
            out=out,
            prompt_format=prompt_format,
            layer=layer,
            threshold=threshold,
            overrides=overrides or [],
            model=model,
            batch_size=batch_size,
            threads=threads,
            checkpoints=marks,
            holdout=holdout,
            dtype=dtype.value if dtype else None,
        )
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(markdown_table(results))
    typer.echo(f"\nwrote {out}")


@cli.command()
def bench(
    out_dir: Annotated[Path, typer.Option(help="Folder for bench.json and bench.png.")] = Path("bench-out"),
    data_dir: DataDir = Path("var"),
    dataset: Annotated[Path | None, typer.Option(help="ZsRE-format file for the real edits.")] = None,
    model: Model = None,
    real_edits: Annotated[
        int | None, typer.Option(min=1, help="Trained edits; larger edit counts are filled with random ones.")
    ] = None,
    repeats: Annotated[int | None, typer.Option(min=1, help="Timed repetitions per latency point.")] = None,
    http: Annotated[bool, typer.Option("--http/--no-http", help="Run the HTTP load test.")] = True,
    threads: Threads = None,
    dtype: Dtype = None,
    quick: Annotated[bool, typer.Option(help="Small smoke run of every section (a few minutes).")] = False,
    seed: Annotated[int | None, typer.Option(help="Seed: synthetic edits, soak requests, crash kill times.")] = None,
    soak_seconds: Annotated[
        float | None,
        typer.Option(
            min=1.0, help="Instead of the sections: soak a server this long (writes soak.json).", show_default=False
        ),
    ] = None,
    soak_clients: Annotated[int, typer.Option(min=1, help="Concurrent streaming clients of the soak.")] = 16,
    crash_rounds: Annotated[
        int | None,
        typer.Option(
            min=1, help="Instead of the sections: this many kill -9 rounds (writes crash.json).", show_default=False
        ),
    ] = None,
    crash_database_url: Annotated[
        str | None, typer.Option(help="Database of the crash rounds (default: SQLite in a temporary folder).")
    ] = None,
    bulk: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Instead of the sections: train this many edits one at a time and together (batches of 1, 4, 16, "
            "64) on 1 and 2 torch threads (--threads: only that many), and time a query during a bulk import "
            "(writes bulk.json).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Latency (edited vs unedited, 0 to 10k edits), routing time vs keys, edit latency split, HTTP throughput.

    With --soak-seconds or --crash-rounds, only the soak and/or the crash rounds run (exit 1 on a problem)."""
    if bulk is not None:
        from evaluation.bulk_bench import BulkBenchOptions, run_bulk_bench
        from evaluation.serving import DEFAULT_DATASET

        source = dataset or DEFAULT_DATASET
        if not source.is_file():
            raise typer.BadParameter(f"no such file: {source}", param_hint="--dataset")
        thread_counts = (threads,) if threads else (1, 2)
        options = BulkBenchOptions(source, out_dir, data_dir, model, bulk, threads=thread_counts, http=http)
        run_bulk_bench(options)
        return
    if soak_seconds is not None or crash_rounds is not None:
        _soak_and_crash(
            out_dir, data_dir, model, threads, seed or 0, soak_seconds, soak_clients, crash_rounds, crash_database_url
        )
        return
    from evaluation.serving import BenchOptions, run_bench

    opts = BenchOptions.make(
        quick,
        out_dir=out_dir,
        data_dir=data_dir,
        dataset=dataset,
        model=model,
        real_edits=real_edits,
        repeats=repeats,
        http=http,
        threads=threads,
        seed=seed,
        dtype=dtype.value if dtype else None,
    )
    if not opts.dataset.is_file():
        raise typer.BadParameter(f"no such file: {opts.dataset}", param_hint="--dataset")
    run_bench(opts)


def _soak_and_crash(
    out_dir: Path,
    data_dir: Path,
    model: str | None,
    threads: int | None,
    seed: int,
    soak_seconds: float | None,
    soak_clients: int,
    crash_rounds: int | None,
    crash_database_url: str | None,
) -> None:
    """`sola bench --soak-seconds` / `--crash-rounds`: the server's torch threads are always set explicitly."""
    from app.settings import default_torch_threads
    from evaluation.crash import CrashOptions, run_crash
    from evaluation.soak import SoakOptions, run_soak

    server_threads = threads or default_torch_threads()
    failed = False
    if soak_seconds is not None:
        soak = SoakOptions(soak_seconds, soak_clients, data_dir, model, server_threads, seed=seed)
        failed |= not run_soak(soak, out_dir / "soak.json")["ok"]
        typer.echo(f"wrote {out_dir / 'soak.json'}")
    if crash_rounds is not None:
        crash = CrashOptions(crash_rounds, data_dir, model, server_threads, database_url=crash_database_url, seed=seed)
        failed |= not run_crash(crash, out_dir / "crash.json")["ok"]
        typer.echo(f"wrote {out_dir / 'crash.json'}")
    if failed:
        raise typer.Exit(1)


# The API client commands (client/cli.py): they talk to a running server over HTTP.
cli.add_typer(client_cli.edits, name="edits")
cli.command("ask")(client_cli.ask)
cli.command("route")(client_cli.route)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
