"""The import graph of core/ and tui/: no cycles (lazy and TYPE_CHECKING imports count), layers respected.

Built from the source with ``ast``, so an import inside a function or under
``if TYPE_CHECKING:`` is an edge too: a circle hidden that way is still
coupling in the design, and the next change turns it into an import error.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "tui")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module ``name`` is or lies in (``core.x.y`` imported as ``from core.x import y``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its source."""
    known = _modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for mod, path in known.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            for n in names:
                target = _resolve(n, known)
                if target and target != mod and not mod.startswith(target + "."):
                    graph[mod].add(target)
    # The CLI's dispatch table imports its command modules by name (importlib): edges too.
    graph["core.cli.parser"] |= {m for m in _dispatch_table() if m in known}
    return graph


def _dispatch_table() -> list[str]:
    tree = ast.parse((ROOT / "core" / "cli" / "parser.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMMANDS" for t in node.targets):
            return [elt.value for elt in getattr(node.value, "elts", []) if isinstance(elt, ast.Constant)]
    raise AssertionError("core/cli/parser.py has no COMMANDS table")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component with more than one module (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_even_lazy_ones() -> None:
    assert find_cycles(import_graph()) == []


def test_the_finder_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_tui_talks_only_to_the_engine() -> None:
    graph = import_graph()
    bad = sorted((m, t) for m, targets in graph.items() if m.startswith("tui")
                 for t in targets if t.startswith(("core.catalog", "core.storage", "core.repository", "core.ops")))
    assert bad == []


def test_core_never_imports_the_tui() -> None:
    graph = import_graph()
    # The one exception: the CLI (core.cli.*) launches the console (tui.app).
    assert sorted((m, t) for m, ts in graph.items() if m.startswith("core") for t in ts if t.startswith("tui")
                  if not (m.startswith("core.cli.") and t == "tui.app")) == []
