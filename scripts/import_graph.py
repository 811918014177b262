"""Print the package's import graph and fail on an import cycle.

Every ``import`` of a module of the package counts, at module level or inside a function (a function-level import
hides a cycle from Python, not from the design); imports under ``if TYPE_CHECKING:`` do not (they never run).
Importing ``a.b.c`` from outside ``a.b`` also runs ``a.b/__init__.py``: that counts as an import of ``a.b`` (a
package ``__init__`` that imports its submodules closes a cycle through any of them that imports back).

    python scripts/import_graph.py            # one line per module: what it imports; then the cycles
    python scripts/import_graph.py --layers   # modules by layer: each imports only modules of lower layers

Exit status 1 when the graph has a cycle.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "esvit"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``module -> modules of the package it imports`` for every module under ``root``."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_lines(tree)
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from pkg import sub` imports the submodule `pkg.sub` when there is one, else a name of `pkg`
                subs = {f"{module}.{a.name}" for a in node.names} & files.keys()
                targets.update(subs or {module})
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}  # itself and its packages
        packages = {".".join(t.split(".")[:i]) for t in targets for i in range(1, t.count(".") + 1)}
        implicit = {p for p in packages if p not in own}  # an explicit import of its own package still counts
        graph[name] = {t for t in targets | implicit if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layers(graph: dict[str, set[str]]) -> list[list[str]]:
    """Modules by depth: layer 0 imports nothing of the package, layer n only modules of layers below n."""
    depth: dict[str, int] = {}

    def of(v: str, seen: tuple[str, ...] = ()) -> int:
        if v not in depth:
            depth[v] = 1 + max((of(w, seen + (v,)) for w in graph[v]), default=-1)
        return depth[v]

    for v in graph:
        of(v)
    out: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    for v, d in depth.items():
        out[d].append(v)
    return [sorted(layer) for layer in out]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", action="store_true", help="print the modules by layer (needs no cycle)")
    args = parser.parse_args(argv)
    graph = import_graph()
    found = cycles(graph)
    if args.layers and not found:
        for i, layer in enumerate(layers(graph)):
            print(f"layer {i}: {' '.join(layer)}")
    elif not args.layers:
        for name in sorted(graph):
            print(f"{name} -> {' '.join(sorted(graph[name])) or '-'}")
    for component in found:
        print(f"cycle: {' <-> '.join(component)}", file=sys.stderr)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports, {len(found)} cycles", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
