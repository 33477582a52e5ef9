"""The shape of the code, checked like behaviour: the layer contract (import-linter, imports inside
functions included), no import cycle, no function over 60 lines (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "skulens"
MAX_FUNCTION_LINES = 60


def test_the_layer_contract_holds():
    # in a subprocess: lint-imports reconfigures logging (dictConfig disables every existing logger),
    # which would silence the other tests' log captures
    root = Path(__file__).resolve().parents[1]
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename=sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(root / "pyproject.toml")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, "a module imports from a layer above it:\n" + done.stdout[-3000:]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return out


def test_no_import_cycle():
    graph = grimp.build_graph("skulens", include_external_packages=False, cache_dir=None)
    # a package's __init__ re-exporting its own modules is not a cycle of the pipeline: packages are left out
    packages = {m for m in graph.modules if (SRC.parent / m.replace(".", "/") / "__init__.py").is_file()}
    modules = set(graph.modules) - packages
    edges = {m: set(graph.find_modules_directly_imported_by(m)) & modules for m in modules}
    assert _cycles(edges) == []


def _long_functions() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_over_60_lines():
    assert _long_functions() == []


@pytest.mark.parametrize("module", ["skulens.engines", "skulens.runs", "skulens.data"])
def test_lower_layers_do_not_reach_up(module):
    """Spelled out for the layers every other one stands on (the contract above covers all of them)."""
    graph = grimp.build_graph("skulens", include_external_packages=False, cache_dir=None)
    above = (
        "skulens.training",
        "skulens.recognition",
        "skulens.catalog",
        "skulens.serving",
        "skulens.cli",
        "skulens.api",
    )
    reached = {m for m in graph.find_upstream_modules(module, as_package=True)}
    assert not {m for m in reached if m.startswith(above)}
