"""The modules of ``fairret.ops`` import each other without a cycle.

Every import counts, also those inside functions (a deferred import hides a cycle at import time but still ties
the modules together), so the graph is read from the source with ``ast``, not from ``sys.modules``.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import fairret.ops

OPS_DIR = Path(fairret.ops.__file__).resolve().parent
PACKAGE = "fairret.ops"


def _module_name(path: Path, package: str) -> str:
    return package if path.stem == "__init__" else f"{package}.{path.stem}"


def import_graph(folder: Path, package: str) -> Dict[str, Set[str]]:
    """``module -> modules of the same package it imports`` (anywhere in its source, relative or absolute)."""
    files = sorted(folder.glob("*.py"))
    modules = {_module_name(f, package) for f in files}
    graph: Dict[str, Set[str]] = {}
    for f in files:
        name = _module_name(f, package)
        # the package a relative import starts from: the module's own package
        base = package.split(".")
        edges: Set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parent = ".".join(base[: len(base) - (node.level - 1)])
                    mod = f"{parent}.{node.module}" if node.module else parent
                else:
                    mod = node.module or ""
                # `from pkg import sub` takes the submodule `pkg.sub` where there is one, else a name of `pkg`
                subs = [f"{mod}.{alias.name}" for alias in node.names]
                targets = [t for t in subs if t in modules]
                if len(targets) < len(subs):
                    targets.append(mod)
            for t in targets:
                if t in modules and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of the graph as ``[m1, m2, ..., m1]``, or None when it has none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_ops_modules_import_without_a_cycle():
    graph = import_graph(OPS_DIR, PACKAGE)
    # the graph was read: every backend module is a node and the package imports them
    assert {f"{PACKAGE}.{m}" for m in ("tiled", "sorted", "cuda", "reference")} <= set(graph)
    assert f"{PACKAGE}.tiled" in graph[PACKAGE]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in fairret.ops: " + " -> ".join(cycle or [])


def test_cycle_check_finds_a_deferred_cycle(tmp_path):
    """The check itself: a cycle through an import inside a function (as ``sorted`` <-> ``tiled`` had) is found,
    and the same package without it is clean."""
    (tmp_path / "__init__.py").write_text("from .a import f\n")
    (tmp_path / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (tmp_path / "b.py").write_text("def g():\n    from .a import f\n    return f\n")
    (tmp_path / "c.py").write_text("import pkg.a\nfrom pkg import b\nfrom . import f\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg", "pkg.a", "pkg.b"}}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"pkg.a", "pkg.b"}
    (tmp_path / "b.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None
