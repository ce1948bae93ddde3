"""runtime/ is one package per program: no import cycles, the UI never reaches for the app, one vocabulary."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.runtime.conftest import ROOT

RUNTIME = ROOT / "runtime"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """Runtime modules ``path`` imports anywhere (function-level and TYPE_CHECKING imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found & modules


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in RUNTIME.rglob("*.py")}
    return {name: runtime_imports(path, set(files)) - {name} for name, path in files.items()}


def test_no_import_cycles() -> None:
    graph = import_graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_the_ui_depends_on_the_service_not_on_the_app() -> None:
    ui = import_graph()["runtime.server.ui"]
    assert "runtime.server.service" in ui
    assert not ui & {"runtime.server.app", "runtime.server.routes", "runtime.server.__main__"}


def test_devices_are_called_devices() -> None:
    """*device* is what torch runs on; no other word for it (artifacts, compile, manifests included)."""
    for path in RUNTIME.rglob("*.py"):
        assert not re.search(r"\bchips?\b", path.read_text(), re.IGNORECASE), path
