from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.server import Server

# pytest-xdist's workers set COLUMNS=80; the client CLI's tests expect what a pipe gets, as in a serial run
# (client/cli.py: one line per table row unless COLUMNS says otherwise).
os.environ.pop("COLUMNS", None)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Servers started by one test; all are killed at its end whatever happened."""
    started: list[Server] = []

    def make(data_dir: Path | None = None, **env: str) -> Server:
        server = Server(data_dir or tmp_path / "data", **env)
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()
