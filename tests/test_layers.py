"""The package's modules form layers; imports only go down (or sideways), and never in a circle.

Read from the source with ``ast``, so an import hidden inside a function counts too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adadf"

# Lowest first. A module may import modules of its own layer or below.
LAYERS = [
    ("base", ["adadf.errors", "adadf.atomic", "adadf.torchfile", "adadf.threads", "adadf.words", "adadf.fusion",
              "adadf.metrics"]),
    ("config", ["adadf.config", "adadf.conf"]),
    ("parts", ["adadf.models", "adadf.data", "adadf.methods", "adadf.tracking", "adadf.faces"]),
    ("engine", ["adadf.engine"]),
    ("app", ["adadf.app", "adadf.train", "adadf.task", "adadf.cli", "adadf.inference"]),
    ("entry points", ["adadf.train_cli", "adadf.evaluate", "adadf.predict", "adadf.align", "adadf.convert"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    if module == "adadf":
        return 0
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def imports_of(module: str) -> set[str]:
    """adadf modules that ``module`` imports (``from adadf import app`` -> ``adadf.app``)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("adadf")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("adadf") and not node.level:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports_of(m) for m in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down(module):
    mine = layer_of(module)
    upward = [f"{dep} ({LAYERS[layer_of(dep)][0]})" for dep in sorted(GRAPH[module]) if layer_of(dep) > mine]
    assert not upward, f"{module} ({LAYERS[mine][0]}) imports a higher layer: {', '.join(upward)}"


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_checker_sees_function_level_imports():
    """The graph includes imports inside functions (the kind that hides a circle)."""
    assert "adadf.app" in GRAPH["adadf.evaluate"]
