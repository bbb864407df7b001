"""The package's shape, read from its source with ``ast``: arrows between packages point one way,
the serving path never imports the simulated upstreams, and functions and modules stay small."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "truckllm"

# Entry points of the serving path: what `truckllm -config ...` and an embedding app run.
SERVING = ("truckllm.api", "truckllm.runner", "truckllm.workers")
# The command line may start the simulated upstreams (`truckllm demo`, `truckllm mock`), but only
# from inside those commands' functions, never at import.
LAZY_TESTING_IMPORTERS = {"truckllm.cli"}
# Layers that must not know of the ones above them (design brief: providers know nothing of
# routing; only the gateway knows both; admin and reload see narrow interfaces, never the app).
FORBIDDEN = {
    "providers": {"routing", "gateway", "api", "admin", "accounting", "coordination"},
    "routing": {"gateway", "api", "admin", "accounting", "coordination"},
    "stores": {"routing", "gateway", "api", "admin", "accounting", "coordination", "providers"},
    "gateway": {"api", "admin", "accounting", "coordination", "reload", "telemetry"},
    "admin": {"api", "coordination"},
    "reload": {"api", "admin"},
    "accounting": {"api", "admin", "coordination"},
    "telemetry": {"api", "admin", "accounting", "gateway"},
    "http": {"api", "gateway", "providers", "routing"},
    "cache": {"api", "admin", "coordination", "reload"},
}
HTTP_LAYERS = {"truckllm/http/server.py", "truckllm/http/client.py"}
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module
    top_level: bool  # at import time (not inside a function)
    type_only: bool  # under ``if TYPE_CHECKING:``


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def package_of(module: str) -> str:
    """The unit arrows are drawn between: ``truckllm.<first part>`` (a subpackage or a
    top-level module)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "truckllm"


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if path.name != "__init__.py":
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _walk(node: ast.AST, in_function: bool, type_only: bool) -> Iterator[tuple[ast.AST, bool, bool]]:
    for child in ast.iter_child_nodes(node):
        yield child, in_function, type_only
        nested_fn = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
        nested_tc = type_only or (
            isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
        )
        yield from _walk(child, nested_fn, nested_tc)


def imports() -> list[Import]:
    out = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        for node, in_function, type_only in _walk(tree, False, False):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path, node)
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            for target in targets:
                if target in MODULES:
                    out.append(Import(module, target, not in_function, type_only))
    return out


IMPORTS = imports()


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in IMPORTS:  # type-only imports count: they are dependencies all the same
        a, b = package_of(imp.source), package_of(imp.target)
        if a != b:
            graph.setdefault(a, set()).add(b)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_walker_sees_the_package() -> None:
    assert "truckllm.api.app" in MODULES and "truckllm.gateway.attempts" in MODULES
    assert Import("truckllm.api.app", "truckllm.gateway", True, False) in IMPORTS
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_cycle_among_packages() -> None:
    assert find_cycle(package_graph()) is None


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_do_not_know_the_upper(package: str) -> None:
    wrong = sorted(
        f"{imp.source} -> {imp.target}"
        for imp in IMPORTS
        if package_of(imp.source) == package and package_of(imp.target) in FORBIDDEN[package]
    )
    assert wrong == []


def test_nothing_in_the_serving_path_imports_the_simulated_upstreams() -> None:
    reached, todo = set(), list(SERVING)
    while todo:  # every import counts here, inside functions too
        module = todo.pop()
        if module in reached:
            continue
        reached.add(module)
        todo.extend(imp.target for imp in IMPORTS if imp.source == module)
        parent = module.rpartition(".")[0]
        if parent in MODULES:  # importing a.b.c runs a and a.b first
            todo.append(parent)
    assert "truckllm.api.app" in reached and "truckllm.gateway.attempts" in reached
    assert sorted(m for m in reached if m.startswith("truckllm.testing")) == []
    at_import = sorted(
        f"{imp.source} -> {imp.target}"
        for imp in IMPORTS
        if imp.target.startswith("truckllm.testing")
        and not imp.source.startswith("truckllm.testing")
        and (imp.top_level or imp.source not in LAZY_TESTING_IMPORTERS)
    )
    assert at_import == []


def test_functions_and_modules_stay_small() -> None:
    too_long = []
    for module, path in MODULES.items():
        text = path.read_text()
        rel = path.relative_to(SRC).as_posix()
        if text.count("\n") > MAX_MODULE_LINES and rel not in HTTP_LAYERS:
            too_long.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {lines} lines")
    assert too_long == []
