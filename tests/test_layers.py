"""The import contract (issue 15): the package's layers, lowest first, each importing only its own layer and
those below it; no import cycle; typer/rich only in the CLI; every import of the project's own modules at
module top (a deferred import hides a cycle or a layer breach, and these tests could not see it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rwkvprobe"

#: the layers, lowest first: the data flow profile -> layers -> workloads -> backends -> results -> verdict -> report
LAYERS = [
    ("core", {"rwkvprobe", "rwkvprobe.errors", "rwkvprobe.fsutil", "rwkvprobe.results", "rwkvprobe.records",
              "rwkvprobe.progress"}),
    ("model", {"rwkvprobe.model"}),
    ("backends", {"rwkvprobe.backends"}),
    ("measure", {"rwkvprobe.measure", "rwkvprobe.npu"}),
    ("verdict", {"rwkvprobe.verdict"}),
    ("report", {"rwkvprobe.report"}),
    ("cli", {"rwkvprobe.cli", "rwkvprobe.__main__"}),
]
UI_PACKAGES = ("typer", "rich", "click")


def layer_of(module: str) -> int:
    """The rank of a module's layer: its subpackage's, else the core's (top-level modules)."""
    for rank, (_, members) in enumerate(LAYERS):
        if module in members or any(module.startswith(m + ".") for m in members if m != "rwkvprobe"):
            return rank
    return 0


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module this one imports, at module level or inside functions (absolute names)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    return found


def _graph():
    mods = _modules()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        deps = set()
        for imp in _imports(name, path, known):
            while imp and imp not in known and "." in imp:
                imp = imp.rsplit(".", 1)[0]
            if imp in known and imp != name:
                deps.add(imp)
        graph[name] = deps
    return graph, mods


def _on_cycles(graph: dict[str, set[str]]) -> set[str]:
    """Modules in a strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), set()
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.update(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_typer_and_rich_stay_in_the_cli():
    _, mods = _graph()
    users = {name for name, path in mods.items()
             if {i.split(".")[0] for i in _imports(name, path, set(mods))} & set(UI_PACKAGES)}
    outside = sorted(u for u in users if not u.startswith("rwkvprobe.cli"))
    assert not outside, f"these modules import typer/rich (only rwkvprobe.cli may): {outside}"


def test_each_layer_imports_only_its_own_and_those_below():
    graph, _ = _graph()
    breaches = sorted(f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"
                      for a, deps in graph.items() for b in deps if layer_of(b) > layer_of(a))
    assert not breaches, "imports upward through the layers:\n" + "\n".join(breaches)


def test_no_import_cycle():
    graph, _ = _graph()
    cyclic = _on_cycles(graph)
    assert not cyclic, f"these modules are on an import cycle: {sorted(cyclic)}"


def _deferred(path: Path) -> list[str]:
    """The project's own imports that are not at module top (inside functions, classes or branches)."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if id(node) in top:
            continue
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("rwkvprobe")):
            found.append(f"{path.name}:{node.lineno} from {node.module}")
        elif isinstance(node, ast.Import) and any(a.name.startswith("rwkvprobe") for a in node.names):
            found.append(f"{path.name}:{node.lineno} import {node.names[0].name}")
    return found


def test_project_imports_are_at_module_top():
    _, mods = _graph()
    deferred = [d for name, path in sorted(mods.items()) if name != "rwkvprobe.npu.rknn_worker"
                for d in _deferred(path)]
    assert not deferred, "imports of the project's own modules inside functions:\n" + "\n".join(deferred)


def test_the_cycle_finder_finds_cycles():
    assert _on_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == {"a", "b"}
    assert _on_cycles({"a": {"b"}, "b": set()}) == set()


@pytest.mark.parametrize("module, rank", [("rwkvprobe.results", 0), ("rwkvprobe.model.profile", 1),
                                          ("rwkvprobe.measure.analyze", 3), ("rwkvprobe.npu.board", 3),
                                          ("rwkvprobe.cli.app", 6), ("rwkvprobe", 0)])
def test_layer_of(module, rank):
    assert layer_of(module) == rank


def test_the_deferred_import_finder_finds_one(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom rwkvprobe.errors import InputError\n\ndef f():\n    from rwkvprobe import fsutil\n")
    assert _deferred(f) == ["m.py:5 from rwkvprobe"]


def test_the_console_imports_nothing_of_the_project_but_its_errors():
    graph, _ = _graph()
    assert graph["rwkvprobe.cli.console"] <= {"rwkvprobe", "rwkvprobe.errors"}, graph["rwkvprobe.cli.console"]
