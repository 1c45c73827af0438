"""Imports run downward: between the package's rooms (its subpackages, its top-level modules and
`baselines`) the import graph has no circle, lazy imports inside functions included."""

from __future__ import annotations

import ast

from alice.config import REPO_ROOT


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "baselines":
        return "baselines"
    if parts[0] != "alice" or len(parts) < 2:
        return None
    path = REPO_ROOT / "alice" / parts[1]
    return "alice." + parts[1] if (path.is_dir() or path.with_suffix(".py").is_file()) else None


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in [*sorted((REPO_ROOT / "alice").rglob("*.py")), *sorted((REPO_ROOT / "baselines").glob("*.py"))]:
        rel = path.relative_to(REPO_ROOT).with_suffix("")
        here = _room(".".join(rel.parts))
        if here is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                     else [])
            for name in names:
                there = _room(name)
                if there and there != here:
                    edges.setdefault(here, set()).add(there)
    return edges


def test_no_import_circle_between_rooms():
    edges = _graph()
    assert "alice.ssl" in edges and "alice.training" in edges["alice.ssl"]  # the graph is read
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(room: str) -> None:
        state[room] = 1
        path.append(room)
        for nxt in sorted(edges.get(room, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[room] = 2

    for room in sorted(edges):
        if room not in state:
            visit(room)
