"""`sola` command line: serve, eval, bench."""

from __future__ import annotations

import typer

cli = typer.Typer(no_args_is_help=True, add_completion=False, help="SoLA lifelong model-editing service.")


@cli.callback()
def _root() -> None:
    """Keeps `sola serve` a subcommand (typer would otherwise run a lone command as the root)."""


@cli.command()
def serve() -> None:
    """Run the HTTP service in the foreground (settings from SOLA_* environment variables)."""
    from app.server import serve as run_server

    run_server()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
