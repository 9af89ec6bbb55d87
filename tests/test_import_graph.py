"""longrl's subpackages import each other in one direction: no cycle, read from the source (ast,
nothing is imported or executed).

A node is a subpackage (``longrl.train``) or a top-level module (``longrl.cli``); every import
counts, module-level or inside a function, since a lazy import is still a dependency. ARCHITECTURE.md
draws the resulting order."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "longrl"

# Edges that close a cycle today, each with what removes it. Keep this empty; an entry that no
# longer exists fails the test, so it is deleted with the code that needed it.
KNOWN: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _node(module: str) -> str | None:
    """The subpackage or top-level module of ``longrl.x.y``; None outside longrl or for ``longrl`` itself."""
    parts = module.split(".")
    if parts[0] != "longrl" or len(parts) < 2:
        return None
    return parts[1]


def _modules() -> set[str]:
    return {_module_name(p) for p in SRC.rglob("*.py")}


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The longrl modules ``path`` imports: ``from longrl.x import y`` is ``longrl.x.y`` when that is
    a module, else ``longrl.x`` (its ``__init__``)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
    return {m for m in found if m in modules and m != module}


def import_graph() -> dict[str, dict[str, list[str]]]:
    """node -> imported node -> the files of ``node`` that import it."""
    nodes = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    nodes |= {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    modules = _modules()
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(SRC.rglob("*.py")):
        src = _node(_module_name(path))
        for target in _imports(path, modules):
            dst = _node(target)
            if src and dst and dst != src and dst in nodes:
                files = graph[src][dst]
                if str(path.relative_to(SRC)) not in files:
                    files.append(str(path.relative_to(SRC)))
    return graph


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_known_edges():
    graph = import_graph()
    assert "infra" in graph["train"] and "models" in graph["data"] and "config" in graph["infra"]
    assert "train" not in graph["rollout"] and "data" not in graph["models"]


def test_no_import_cycle_between_subpackages():
    graph = import_graph()
    edges = {src: {dst for dst in dsts if (src, dst) not in KNOWN} for src, dsts in graph.items()}
    cycles = _cycles(edges)
    detail = [
        f"{' <-> '.join(c)}: "
        + "; ".join(f"{a} -> {b} ({', '.join(graph[a][b])})" for a in c for b in c if b in edges.get(a, ()))
        for c in cycles
    ]
    assert not cycles, "import cycle between longrl subpackages:\n" + "\n".join(detail)
    stale = [edge for edge in KNOWN if edge[1] not in graph.get(edge[0], {})]
    assert not stale, f"these KNOWN edges are gone, delete them from KNOWN: {stale}"


def test_no_import_cycle_between_modules():
    """Within and across packages, no two modules import each other, directly or around a loop
    (a package's ``__init__`` counts as a module)."""
    modules = _modules()
    edges = {_module_name(path): _imports(path, modules) for path in SRC.rglob("*.py")}
    assert not _cycles(edges), f"import cycle between longrl modules: {_cycles(edges)}"


def test_the_library_imports_no_benchmark_and_the_benchmarks_no_private_name():
    """Benchmarks live beside the library (``benchmarks/``, run as ``longrl bench``): no module of
    ``src/longrl`` imports them (``longrl.cli`` finds them by path at run time), and they use only
    longrl's public names (no ``_underscore`` import from longrl)."""
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "benchmarks" for n in names), f"{path} imports {names}"
    private = []
    for path in (SRC.parents[1] / "benchmarks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("longrl"):
                module_private = any(part.startswith("_") for part in (node.module or "").split("."))
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
                private += [f"{path.name}: {node.module}"] if module_private else []
    assert not private, private
    assert not (SRC / "bench").exists()
