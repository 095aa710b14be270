"""The HTTP layer without a model: settings, auth, error shapes, limits, the bind rule, readiness failure."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.errors import error_type
from app.main import create_app
from app.server import ConfigError, check_bind
from app.settings import Settings, is_loopback, parse_api_keys
from editors.types import EngineConfig, engine_config
from tests.server import REPO

KEYS = "alice:s3cret-a-0123456789:admin,rita:s3cret-r-0123456789:reader"


def test_parse_api_keys() -> None:
    a1, r1, x, y = "a1" * 8, "r1" * 8, "x" * 16, "y" * 16
    keys = parse_api_keys(f" alice:{a1}:admin , rita:{r1}:reader,")
    assert [(k.name, k.secret, k.role) for k in keys] == [("alice", a1, "admin"), ("rita", r1, "reader")]
    assert parse_api_keys("") == []
    bad_specs = [f"alice:{a1}", f"alice:{a1}:root", "alice::admin", "alice:short:admin"]
    for bad in [*bad_specs, f"a:{x}:admin,b:{x}:reader", f"a:{x}:admin,a:{y}:reader"]:
        with pytest.raises(ValueError):
            parse_api_keys(bad)
    with pytest.raises(ValidationError):
        Settings(api_keys=f"alice:{a1}:superuser")


def test_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOLA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SOLA_PORT", "9001")
    monkeypatch.setenv("SOLA_THRESHOLD", "0.9")
    s = Settings()
    assert s.port == 9001 and s.host == "127.0.0.1" and s.model is None
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / 'sola.db').resolve()}"
    assert s.resolved_model_cache_dir == tmp_path / "models"
    # None knobs keep the engine's defaults; set ones override them.
    cfg = engine_config(**s.engine_knobs())
    assert cfg.threshold == 0.9 and cfg.layer == EngineConfig().layer and cfg.rank == EngineConfig().rank
    assert cfg.bank_dtype == "float16"
    monkeypatch.setenv("SOLA_BANK_DTYPE", "model")  # the model's own dtype
    assert engine_config(**Settings().engine_knobs()).bank_dtype is None
    monkeypatch.setenv("SOLA_BANK_DTYPE", "float64")
    with pytest.raises(ValueError, match="bank_dtype"):
        Settings()


def test_bind_rule() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")
    check_bind(Settings(host="127.0.0.1"))
    check_bind(Settings(host="0.0.0.0", api_keys=KEYS))
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0"):
        check_bind(Settings(host="0.0.0.0"))


def test_server_without_keys_refuses_a_public_bind(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "SOLA_HOST": "0.0.0.0", "SOLA_API_KEYS": "", "SOLA_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "app.server"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0" in proc.stderr and "SOLA_API_KEYS" in proc.stderr


def test_bad_settings_exit_with_a_message_that_keeps_secrets(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "SOLA_API_KEYS": "alice:topsecret", "SOLA_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "app.server"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "SOLA_API_KEYS" in proc.stderr and "name:secret:role" in proc.stderr
    assert "topsecret" not in proc.stderr


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app whose model cannot load: everything that needs no model must still behave."""
    data = tmp_path_factory.mktemp("nomodel")
    settings = Settings(
        data_dir=data, model=str(data / "no-such-model"), api_keys=KEYS, max_body_bytes=4096, sync_interval=0
    )
    fatal: list[str] = []
    with TestClient(create_app(settings, on_fatal=fatal.append)) as c:
        c.headers["Authorization"] = "Bearer s3cret-a-0123456789"
        for _ in range(600):  # the background load fails fast (no config.json)
            if c.app.state.service.state == "failed":  # type: ignore[attr-defined]
                break
            time.sleep(0.1)
        assert fatal and "no-such-model" in fatal[0]
        yield c


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "type", "param"}  # OpenAI's shape
    assert body["error"]["type"] == error_type(status) and body["error"]["param"] is None
    return body["error"]


def test_readiness_reports_the_failed_load(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not_ready" and body["model"] == "failed" and "no-such-model" in body["startup_error"]
    assert body["phase"] == "failed"
    assert body["database"] == "ok"  # migrations ran before the model was even touched


def test_model_routes_answer_503_not_500(client: TestClient) -> None:
    err = error(client.post("/generate", json={"prompt": "hi"}), 503)
    assert err["code"] == "not_ready" and "no-such-model" in err["message"]
    assert error(client.post("/edits", json={"prompt": "p", "target": "t"}), 503)["code"] == "not_ready"


def test_reads_work_without_the_model(client: TestClient) -> None:
    assert client.get("/edits").json() == {"data": [], "has_more": False, "next_after": None}
    assert client.get("/events").json() == {"data": [], "has_more": False, "next_after": None}
    assert error(client.get("/edits/ed_x"), 404)["code"] == "not_found"
    assert error(client.delete("/edits/ed_x"), 404)["code"] == "not_found"


def test_auth_errors(client: TestClient) -> None:
    assert error(client.get("/edits", headers={"Authorization": ""}), 401)["code"] == "unauthorized"
    assert error(client.get("/edits", headers={"Authorization": "Basic czNjcmV0LWE="}), 401)["code"] == "unauthorized"
    assert error(client.get("/edits", headers={"Authorization": "Bearer nope"}), 401)["code"] == "unauthorized"
    reader = {"Authorization": "Bearer s3cret-r-0123456789"}
    assert client.get("/edits", headers=reader).status_code == 200
    err = error(client.post("/edits", json={"prompt": "p", "target": "t"}, headers=reader), 403)
    assert err["code"] == "forbidden" and "rita" in err["message"]
    assert error(client.delete("/edits/ed_x", headers=reader), 403)["code"] == "forbidden"


def test_validation_errors_use_the_error_shape(client: TestClient) -> None:
    assert error(client.post("/generate", json={"prompt": 1}), 422)["code"] == "validation_error"
    assert error(client.post("/generate", content=b"{", headers={"content-type": "application/json"}), 400)
    assert error(client.post("/edits", json={"prompt": "p"}), 422)["message"].startswith("target")
    assert error(client.get("/edits", params={"after": "!!"}), 400)["code"] == "invalid_cursor"
    assert error(client.get("/events", params={"limit": 100000}), 422)["code"] == "validation_error"
    assert error(client.get("/nowhere"), 404)["code"] == "not_found"
    assert error(client.patch("/edits"), 405)["code"] == "method_not_allowed"


def test_body_limit_also_for_chunked_uploads(client: TestClient) -> None:
    big = b'{"prompt": "' + b"x" * 5000 + b'"}'
    assert error(client.post("/generate", content=big, headers={"content-type": "application/json"}), 413)

    def chunks() -> Iterator[bytes]:  # no content-length: the limit is counted as the body streams in
        yield big[:3000]
        yield big[3000:]

    response = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert error(response, 413)["code"] == "payload_too_large"


def test_metrics_count_requests_by_route(client: TestClient) -> None:
    client.get("/edits/ed_1")
    client.get("/edits/ed_2")
    text = client.get("/metrics").text
    assert 'sola_http_requests_total{method="GET",route="/edits/{edit_id}",status="404"}' in text
    assert "sola_edits_active 0.0" in text and "sola_edit_train_seconds_count 0.0" in text


@pytest.mark.model  # the server starts loading the model while the test runs
def test_a_keyless_server_answers_only_to_local_host_names(tmp_path: Path) -> None:
    """DNS rebinding: a page at evil.example whose name resolves to 127.0.0.1 reaches a keyless server with
    `Host: evil.example`; it is refused. Names in SOLA_ALLOWED_HOSTS, localhost and addresses are served."""
    from tests.server import Server

    srv = Server(tmp_path, SOLA_API_KEYS="", SOLA_ALLOWED_HOSTS="sola.lan")
    srv.launch()
    try:
        srv.wait(ready=False, timeout=60)
        with srv.client() as c:
            refused = c.get("/healthz", headers={"Host": f"evil.example:{srv.port}"})
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "host_not_allowed"
            for host in (f"127.0.0.1:{srv.port}", f"localhost:{srv.port}", "sola.lan", f"[::1]:{srv.port}"):
                assert c.get("/healthz", headers={"Host": host}).status_code == 200, host
    finally:
        srv.kill()


def test_the_readme_documents_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`SOLA_{name.upper()}`" not in readme]
    assert not missing, f"README's settings table lacks {missing}"
