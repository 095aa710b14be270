"""How the packages depend on each other: the client imports nothing of the server, evaluation nothing of the
app, and no module imports itself back through another (inline and TYPE_CHECKING imports count too)."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.server import REPO

PACKAGES = ("app", "client", "editors", "evaluation", "routing", "storage", "wire")


def loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running `statement` in the repository."""
    script = f"import sys; {statement}; print(' '.join(sys.modules))"
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    return set(run.stdout.split())


def test_the_client_imports_nothing_of_the_server() -> None:
    loaded = loaded_after("import client.cli")
    server = {"app", "editors", "storage", "routing", "fastapi", "starlette", "sqlalchemy", "torch", "numpy"}
    assert not server & {name.split(".")[0] for name in loaded}
    assert {name for name in loaded if name.split(".")[0] in PACKAGES} <= {
        "client",
        "client.cli",
        "client.http",
        "wire",
        "wire.kinds",
        "wire.schemas",
        "evaluation",
        "evaluation.datasets",  # `sola edits import --format zsre` reads benchmark files (standard library only)
    }


def test_evaluation_imports_nothing_of_the_app() -> None:
    imported = {name for module, names in _imports().items() if module.startswith("evaluation") for name in names}
    assert not {name for name in imported if name == "app" or name.startswith("app.")}


def test_no_import_cycles() -> None:
    graph = _imports()
    cycles: list[list[str]] = []

    def walk(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in done:
                walk(target, [*path, target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            walk(module, [module])
    assert not cycles, cycles


def _imports() -> dict[str, set[str]]:
    """Every project module and the project modules it names in any import statement."""
    files = {
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[module] = {name for name in names if name in files and name != module}
    return graph
