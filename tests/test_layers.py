"""beeray's modules form layers: no import circle, lazy (in-function) imports included, and the bottom
modules (errors, metrics, files) import nothing of beeray above them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "beeray"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the beeray modules it imports anywhere in its file (top level, functions, TYPE_CHECKING)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("beeray")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("beeray"):
                # `from beeray import files` names a module; `from beeray.x import y` depends on beeray.x
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                deps |= subs or {node.module}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path per import circle found by a depth-first search."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_circles():
    assert cycles(imports()) == []


def test_the_finder_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_bottom_modules_import_nothing_above_them():
    graph = imports()
    assert graph["beeray.errors"] == set() and graph["beeray.metrics"] == set()
    assert graph["beeray.files"] <= {"beeray.errors"}
    # the config is read before anything runs: it may not pull in the evaluator or the reports
    assert not graph["beeray.config"] & {"beeray.evaluator", "beeray.artifacts", "beeray.tracking"}
    assert "beeray.artifacts" not in graph["beeray.models"] | graph["beeray.evaluator"]


def test_no_recpack_or_copyleft_import():
    """RecPack (AGPL, numpy 1 only) is the oracle the metrics are tested against, never a dependency: no
    beeray or benchmarks module imports it, and the default install does not have it."""
    import importlib.util

    for path in [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in {"recpack", "hyperopt"} for n in names), path
    assert importlib.util.find_spec("recpack") is None or __import__("os").environ.get("BEERAY_ORACLE") == "1"
