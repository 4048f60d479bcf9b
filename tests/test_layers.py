"""The import contract (issue 15): the package's import graph has no cycle, and typer/rich stay in the CLI
layer (cli.py, console.py), or at least never spread. UI_BASELINE lists today's engine modules that still
import typer or rich (their command functions live there): it may only shrink; a module that starts
importing them fails here, and fixing one means deleting it here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rwkvprobe"

#: modules allowed to import typer or rich: the CLI, and today's engine modules that still do (to shrink)
UI_ALLOWED = {"rwkvprobe.cli.app", "rwkvprobe.cli.console"}
UI_BASELINE = {"rwkvprobe.measure.bandwidth", "rwkvprobe.verdict.compare", "rwkvprobe.model.importer", "rwkvprobe.measure.sweep",
               "rwkvprobe.measure.validate"}
#: modules on an import cycle: none since console.py and validation.py broke the circles through the CLI
#: and report <-> validate; none may join
CYCLE_BASELINE: set[str] = set()


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
             if {i.split(".")[0] for i in _imports(name, path, set(mods))} & {"typer", "rich", "click"}}
    new = users - UI_ALLOWED - UI_BASELINE
    assert not new, f"these modules now import typer/rich (only the CLI may): {sorted(new)}"
    fixed = UI_BASELINE - users
    assert not fixed, f"no longer importing typer/rich, delete them from UI_BASELINE: {sorted(fixed)}"


def test_no_new_import_cycle():
    graph, _ = _graph()
    cyclic = _on_cycles(graph)
    new = cyclic - CYCLE_BASELINE
    assert not new, f"these modules joined an import cycle: {sorted(new)}"
    fixed = CYCLE_BASELINE - cyclic
    assert not fixed, f"off every cycle now, delete them from CYCLE_BASELINE: {sorted(fixed)}"


def test_the_cycle_finder_finds_cycles():
    assert _on_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == {"a", "b"}
    assert _on_cycles({"a": {"b"}, "b": set()}) == set()
