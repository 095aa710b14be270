"""The service in-process on the real model: failures that the HTTP edge now stops before they reach it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from app.errors import ApiError
from app.main import create_app
from app.schemas import GenerateRequest
from app.service import EditService, GenerateResult
from app.settings import Settings
from tests.server import MODEL_CACHE

pytestmark = pytest.mark.slow


def test_a_row_the_tokenizer_refuses_fails_alone_and_is_counted(tmp_path: Path) -> None:
    """The edge refuses lone surrogates (tests/test_api.py); were one to get past it, the generation job
    must still answer every request it holds: an error for that row, text for the others."""
    settings = Settings(data_dir=tmp_path, model_cache_dir=MODEL_CACHE, sync_interval=0, torch_threads=1)
    with TestClient(create_app(settings)) as client:
        svc: EditService = client.app.state.service  # type: ignore[attr-defined]
        for _ in range(600):
            if svc.state == "ready":
                break
            time.sleep(0.1)
        assert svc.state == "ready"
        bad = GenerateRequest.model_construct(prompt="Hi \udfff", max_new_tokens=4, chat=True)
        good = GenerateRequest(prompt="Name a colour.", max_new_tokens=4, chat=True)

        async def ask_both() -> list[object]:
            return await asyncio.wait_for(
                asyncio.gather(svc.generate(bad), svc.generate(good), return_exceptions=True), timeout=120
            )

        bad_result, good_result = client.portal.call(ask_both)  # type: ignore[union-attr]
        assert isinstance(bad_result, ApiError) and bad_result.status == 422, bad_result
        assert isinstance(good_result, GenerateResult) and good_result.text
        assert "sola_generate_failures_total 1.0" in generate_latest(svc.metrics.registry).decode()
