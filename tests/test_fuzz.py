"""Schemathesis against a real server process: the OpenAPI document tells the truth and no input gives a 500.

Every check runs (`--checks all`) except those that contradict a documented design decision (README,
"Fuzzing the API"): `use_after_free`, because DELETE is a soft revoke and the record stays readable; and
`positive_data_acceptance`, because limits set at runtime (characters, rephrases, tokens against the model's
context, the training budget) are not part of the static schema, so schema-valid bodies can be a 413/422.
Bounded: a fixed seed and few examples; POST /edits (each example trains a LoRA) gets the fewest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server import ADMIN, Server

pytestmark = pytest.mark.slow

BY_DESIGN = "use_after_free,positive_data_acceptance"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # A short training budget keeps every answer well under schemathesis' 10 s response-time check.
    with Server(tmp_path_factory.mktemp("fuzz"), SOLA_MAX_NEW_TOKENS="8", SOLA_MAX_TRAIN_SECONDS="5") as srv:
        yield srv


def fuzz(server: Server, report: Path, *selection: str, examples: int) -> None:
    cmd = [
        str(SCHEMATHESIS),
        "run",
        f"{server.url}/openapi.json",
        "--checks=all",
        f"--exclude-checks={BY_DESIGN}",
        f"--max-examples={examples}",
        "--seed=7",
        "--workers=1",
        "--request-timeout=120",
        f"--header=Authorization: Bearer {ADMIN}",
        "--report=junit",
        f"--report-junit-path={report}",
        *selection,
    ]
    # cwd: schemathesis keeps a cache folder where it runs; keep it out of the repository.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=report.parent)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert server.proc is not None and server.proc.poll() is None, "the server died"


def test_every_read_and_query_operation_holds_to_its_schema(server: Server, tmp_path: Path) -> None:
    fuzz(server, tmp_path / "reads.xml", "--exclude-operation-id-regex=create_edit", examples=25)


def test_creating_edits_holds_to_its_schema(server: Server, tmp_path: Path) -> None:
    fuzz(server, tmp_path / "edits.xml", "--include-method=POST", "--include-path=/edits", examples=4)


def test_openapi_declares_bearer_errors_and_plain_text_metrics(server: Server) -> None:
    assert httpx.get(f"{server.url}/openapi.json").status_code == 401  # SOLA_PUBLIC_DOCS is off
    spec = httpx.get(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    create = spec["paths"]["/edits"]["post"]
    assert create["security"] == [{"bearer": []}]
    assert create["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    assert {"401", "403", "409", "413", "422"} <= set(create["responses"])
    assert "HTTPValidationError" not in json.dumps(spec)
    (metrics_type,) = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert metrics_type.startswith("text/plain")
