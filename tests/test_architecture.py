"""The layering that docs/architecture.md describes: no module imports upwards, and the config stays torch-free."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "acgan"
TRAINING_SIDE = {"acgan.train", "acgan.trainer", "acgan.saver", "acgan.runlog", "acgan.cli"}


def _module_name(path: Path) -> str:
    return ".".join(("acgan", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")


def _imports() -> dict[str, set[str]]:
    """Every module's acgan imports (package re-exports resolved to the package itself)."""
    graph = {}
    for path in SRC.rglob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("acgan"):
                deps |= {node.module} if node.module != "acgan" else {f"acgan.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("acgan")}
        graph[_module_name(path)] = deps
    return graph


def _packages_collapsed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between top-level units (data, models and metrics as one node each)."""
    def unit(name: str) -> str:
        return ".".join(name.split(".")[:2])

    out: dict[str, set[str]] = {}
    for mod, deps in graph.items():
        out.setdefault(unit(mod), set()).update(unit(d) for d in deps if unit(d) != unit(mod))
    return out


def test_no_import_cycles_between_modules_or_packages():
    graph = _packages_collapsed(_imports())
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in graph.get(node, ()):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join([*path, node, dep])}"
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])


def test_config_and_errors_stay_at_the_bottom_and_torch_free():
    graph = _imports()
    assert graph["acgan.errors"] == set() and graph["acgan.config"] <= {"acgan.errors"}
    tree = ast.parse((SRC / "config.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.split(".")[0] in ("torch", "numpy") for m in imported)


def test_only_the_training_side_knows_torchrun():
    users = {mod for mod, deps in _imports().items() if "acgan.distributed" in deps}
    assert users <= TRAINING_SIDE, users - TRAINING_SIDE


def test_metrics_models_and_data_never_import_training():
    training = {"acgan.train", "acgan.trainer", "acgan.runlog", "acgan.saver"}
    for mod, deps in _imports().items():
        if mod.startswith(("acgan.metrics", "acgan.models", "acgan.data")):
            assert not deps & training, (mod, deps & training)
