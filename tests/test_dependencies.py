"""Every third-party package the code imports is declared in pyproject.toml (issue #20).

Read with `ast`, like tests/test_import_graph.py. The daemon's packages (core, connectors, ontology, twin) may
import only [project] dependencies (and the pinned no-deps packages of [tool.pilotline]); surrogates may also
use the `train` and `physics` extras; tests/, bench/ and data/ any of them and the `dev` extra. An import
name is mapped to its distribution by the installed metadata (`pysparkplug`, `PIL` -> pillow, `yaml` ->
pyyaml); one not installed counts under its own name.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = {"core", "connectors", "ontology", "twin", "surrogates", "tests", "bench", "data"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(reqs: list[str]) -> set[str]:
    return {_norm(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in reqs}


def _imports(folders: list[str]) -> dict[str, set[str]]:
    """top-level import name -> files importing it (standard library and our packages left out)."""
    out: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            # installed packages are not our code: npm's, and virtual environments a benchmark builds for a
            # contender (bench/peers/.venv-tb, the ThingsBoard gateway's)
            if "node_modules" in path.parts or any(p.startswith(".venv") or p == "site-packages" for p in path.parts):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    mods = [node.module]
                else:
                    continue
                for m in mods:
                    top = m.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in OURS and not top.startswith("_"):
                        out.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return out


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
MAIN = _names(PROJECT["project"]["dependencies"]) | _names(PROJECT["tool"]["pilotline"]["no-deps"])
EXTRAS = {k: _names(v) for k, v in PROJECT["project"]["optional-dependencies"].items()}
DISTS = md.packages_distributions()


def _undeclared(folders: list[str], declared: set[str]) -> list[str]:
    bad = []
    for name, files in sorted(_imports(folders).items()):
        dists = {_norm(d) for d in DISTS.get(name, [name])}
        if not dists & declared:
            bad.append(f"{name} ({', '.join(sorted(dists))}) imported by {sorted(files)[:3]}")
    return bad


def test_the_daemon_imports_only_declared_dependencies() -> None:
    bad = _undeclared(["core", "connectors", "ontology", "twin"], MAIN)
    assert not bad, bad


def test_surrogates_import_only_declared_dependencies_or_their_extras() -> None:
    bad = _undeclared(["surrogates"], MAIN | EXTRAS["train"] | EXTRAS["physics"])
    assert not bad, bad


def test_tests_and_benchmarks_import_only_declared_packages() -> None:
    everything = MAIN | set().union(*EXTRAS.values())
    bad = _undeclared(["tests", "bench", "data"], everything)
    assert not bad, bad


def test_the_check_sees_imports() -> None:
    """Guards against a reader that finds nothing: known imports are found and mapped."""
    found = _imports(["connectors", "twin"])
    assert {"asyncua", "paho", "pydantic", "fastapi"} <= set(found)
    assert "paho-mqtt" in {_norm(d) for d in DISTS.get("paho", [])}
