"""The dequantized model cache: processes that start together must not break each other's first load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from editors.model_host import DEFAULT_MODEL_NAME, FINGERPRINT_FILE
from tests.server import REPO

pytestmark = pytest.mark.model  # converts the bundled GGUF, twice at once

BUILD = (
    "import sys; from pathlib import Path; from editors.model_host import cache_bundled_model; "
    "cache_bundled_model(Path(sys.argv[1]))"
)


def test_two_processes_building_the_cache_at_once_both_succeed(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    crashed = cache / DEFAULT_MODEL_NAME  # an earlier run died mid-publish: no fingerprint
    crashed.mkdir(parents=True)
    (crashed / "config.json").write_text("{}")
    procs = [
        subprocess.Popen([sys.executable, "-c", BUILD, str(cache)], cwd=REPO, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    published = cache / DEFAULT_MODEL_NAME
    assert (published / FINGERPRINT_FILE).is_file() and (published / "model.safetensors").is_file()
    assert sorted(p.name for p in cache.iterdir()) == [DEFAULT_MODEL_NAME]  # no staging copies left behind
