"""The package's imports point one way: down the layers of docs/design.md, with no cycles.

Every ``import`` of a ``mnistlab`` module counts, at module level or inside a function (a cycle
broken only by a deferred import is still a cycle). The layer table below is the one drawn in
docs/design.md; a test checks the two agree.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"

# Top to bottom. A module may import its own layer or any layer below it; the most specific
# prefix decides a module's layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("mnistlab.cli", "mnistlab.__main__")),
    ("serve", ("mnistlab.serve",)),
    ("predict", ("mnistlab.predict", "mnistlab.export", "mnistlab.read", "mnistlab.export_mobile",
                 "mnistlab.read_ctc")),
    ("orchestration", ("mnistlab.runner", "mnistlab.splits", "mnistlab.finetune", "mnistlab.search",
                       "mnistlab.cv", "mnistlab.seeds", "mnistlab.assess", "mnistlab.pretrain",
                       "mnistlab.read_train")),
    ("training", ("mnistlab.train", "mnistlab.train_state", "mnistlab.evaluate", "mnistlab.checkpoint",
                  "mnistlab.artifact", "mnistlab.optim", "mnistlab.distributed", "mnistlab.device",
                  "mnistlab.runs", "mnistlab.explain", "mnistlab.calibration", "mnistlab.finetune.semi",
                  "mnistlab.finetune.self_training", "mnistlab.ssl")),
    ("fine-tuning", ("mnistlab.finetune.strategies",)),
    ("models", ("mnistlab.models",)),
    ("data", ("mnistlab.data",)),
    ("config", ("mnistlab.config",)),
    ("foundation", ("mnistlab", "mnistlab.errors", "mnistlab.fileio")),
]
# Pairs that must never import each other, whatever the layers say.
FORBIDDEN = [
    ("mnistlab.models", "mnistlab.data"),  # a model never sees how data is loaded
    ("mnistlab.serve", "mnistlab.train"),  # the server never imports training
    ("mnistlab.serve", "mnistlab.runner"),
    ("mnistlab.serve", "mnistlab.finetune"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "mnistlab").rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The mnistlab modules that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("mnistlab") and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def layer_of(name: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{name} is in no layer of tests/test_layers.py; add it (and to docs/design.md)"
    return rank


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_imports_point_down_the_layers():
    upward = [
        f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
        for a, targets in graph().items() for b in sorted(targets)
        if layer_of(b) < layer_of(a) and not a.startswith(b + ".")  # a package's own __init__ is fine
    ]
    assert upward == []


def test_forbidden_imports():
    bad = [f"{a} imports {b}" for a, targets in graph().items() for b in targets for lo, hi in FORBIDDEN
           if (a == lo or a.startswith(lo + ".")) and (b == hi or b.startswith(hi + "."))]
    assert bad == []


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search, three colours)."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if not colour.get(nxt) and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(edges):
        if not colour.get(node) and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    # A package's __init__ re-exporting its submodules is not a cycle of logic: leave those edges out.
    edges = {a: {b for b in targets if not b.startswith(a + ".")} for a, targets in graph().items()}
    assert find_cycle(edges) is None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_layers_of_the_design_document_match():
    text = DESIGN.read_text()
    table = re.findall(r"^\|\s*(\d+)\s*\|\s*([\w -]+?)\s*\|", text, flags=re.M)
    assert [name for _, name in table] == [name for name, _ in LAYERS]


@pytest.mark.parametrize("name", ["mnistlab.data.dataset", "mnistlab.train", "mnistlab.serve.app"])
def test_the_import_reader_sees_real_imports(name):
    assert graph()[name], f"no imports read from {name}"
