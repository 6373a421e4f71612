"""The Grafana dashboard (deploy/grafana) stays in sync with the twin:

- every tag id it names, literally or through a regular expression (expanded to the finite set of
  names it matches), is a tag of the default tag map, of a plant example config's tag map, or a
  predicted tag of the surrogate predictor; a regular expression matches at least one of them;
- every value it compares a tag's kind / role / step with exists among those tags;
- measurements, tag keys and fields in its InfluxQL are those the InfluxDB backend writes (taken
  from the backend's own line protocol for a sample, a dead letter and a roll);
- template variables it uses are defined.
"""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from pathlib import Path
from typing import Any

try:  # Python 3.11+: the regex parser moved
    import re._parser as sre_parse  # type: ignore[import-not-found]
    from re._constants import AT, BRANCH, IN, LITERAL, MAX_REPEAT, MIN_REPEAT, RANGE, SUBPATTERN  # type: ignore
except ImportError:  # pragma: no cover
    import sre_parse  # type: ignore[no-redef]
    from sre_constants import AT, BRANCH, IN, LITERAL, MAX_REPEAT, MIN_REPEAT, RANGE, SUBPATTERN  # type: ignore

import pytest

from core.samples import DeadLetter, Quality, RollEvent, Sample, SourceKind
from ontology.tagmap import TagMap
from twin.predictor import predicted_tag_specs
from twin.store.influx import LineProtocol, tag_info_from_tagmap

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
TAG_ID = re.compile(r"(?<![\w\\.$])([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)(?![\w(])")
KEY_COND = re.compile(r'"(\w+)"\s*(=~|!~|=|!=|<>)\s*(/(?:[^/\\]|\\.)*/|\'(?:[^\'\\]|\\.)*\')')
FROM = re.compile(r'\bFROM\s+"(\w+)"', re.I)


# -- what the twin has ------------------------------------------------------------------------
def _tagmaps() -> list[Path]:
    maps = {ROOT / "twin" / "defaults" / "tagmap.toml"}
    for cfg in sorted((ROOT / "deploy" / "config").glob("*.toml")) + sorted((ROOT / "twin" / "defaults").glob("*.toml")):
        doc = tomllib.loads(cfg.read_text())
        if isinstance(doc.get("tagmap"), str):
            maps.add((cfg.parent / doc["tagmap"]).resolve())
    return sorted(p for p in maps if p.exists())


def _known_tags() -> dict[str, Any]:
    tags: dict[str, Any] = {}
    for path in _tagmaps():
        tm = TagMap.load(path)
        tm.add_tags(predicted_tag_specs("calendering"))
        tags.update(tm.tags)
    return tags


KNOWN = _known_tags()


def _influx_schema() -> dict[str, tuple[set[str], set[str]]]:
    """measurement -> (tag keys, field keys), from the backend's own line protocol."""
    tm = TagMap.load(ROOT / "twin" / "defaults" / "tagmap.toml")
    lp = LineProtocol(tag_info=tag_info_from_tagmap(tm), writer="w1")
    lines = [lp.sample(Sample("pilot-1", "calendering.gap_actual", 85.0, "um", 10**18, 10**18 + 5, Quality.GOOD,
                              "R-1", 1.5)),
             lp.dead_letter(DeadLetter(SourceKind.MQTT, "pilot/x", "{bad", "invalid JSON", "malformed_payload",
                                       10**18, "mqtt", "pilot-1")),
             lp.roll(RollEvent("pilot-1", "calendering", "R-1", 10**18, "calendering.roll_id"))]
    schema: dict[str, tuple[set[str], set[str]]] = {}
    for raw in lines:
        head, rest = re.split(r"(?<!\\) ", raw.decode(), maxsplit=1)
        fields = rest.rsplit(" ", 1)[0]
        meas, *tag_pairs = re.split(r"(?<!\\),", head)
        keys = {p.split("=", 1)[0] for p in tag_pairs}
        fkeys = {k for k, _ in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|[^,]*)', fields)}
        schema[meas] = (keys, fkeys)
    return schema


# -- what the dashboard says ------------------------------------------------------------------
def _strings(o: Any, key: str = "") -> list[tuple[str, str]]:
    if isinstance(o, dict):
        return [s for k, v in o.items() for s in _strings(v, k)]
    if isinstance(o, list):
        return [s for v in o for s in _strings(v, key)]
    return [(key, o)] if isinstance(o, str) else []


def _queries(dash: dict[str, Any]) -> list[str]:
    return [s for k, s in _strings(dash) if k in ("query", "rawSql", "expr", "definition") and s.strip()]


def _expand(pattern: str, limit: int = 10_000) -> set[str] | None:
    """The finite set of strings a regular expression matches (anchors ignored), or None if infinite."""

    def seq(items: Any) -> list[str] | None:
        out = [""]
        for op, av in items:
            alts = node(op, av)
            if alts is None:
                return None
            out = [a + b for a, b in itertools.product(out, alts)]
            if len(out) > limit:
                return None
        return out

    def node(op: Any, av: Any) -> list[str] | None:
        if op == LITERAL:
            return [chr(av)]
        if op == AT:
            return [""]
        if op == SUBPATTERN:
            return seq(av[-1])
        if op == BRANCH:
            out: list[str] = []
            for b in av[1]:
                r = seq(b)
                if r is None:
                    return None
                out += r
            return out
        if op in (MAX_REPEAT, MIN_REPEAT):
            lo, hi, body = av
            if hi > 5:
                return None
            one = seq(body)
            if one is None:
                return None
            out = []
            for n in range(lo, hi + 1):
                out += ["".join(p) for p in itertools.product(one, repeat=n)]
            return out
        if op == IN:
            chars: list[str] = []
            for o, a in av:
                if o == LITERAL:
                    chars.append(chr(a))
                elif o == RANGE and a[1] - a[0] < 64:
                    chars += [chr(c) for c in range(a[0], a[1] + 1)]
                else:
                    return None
            return chars
        return None

    r = seq(sre_parse.parse(pattern))
    return None if r is None else set(r)


def _template_names(dash: dict[str, Any]) -> set[str]:
    return {v["name"] for v in dash.get("templating", {}).get("list", [])} | {
        "timeFilter", "__interval", "__interval_ms", "__timeFilter", "__from", "__to", "__all", "__name", "__range",
        "tag_line", "tag_tag", "tag_unit", "tag_reason_code", "tag_step", "tag_roll", "tag_kind", "tag_role", "col"}


# -- tests -------------------------------------------------------------------------------------
def test_dashboards_exist_and_known_tags_loaded() -> None:
    assert DASHBOARDS, "no Grafana dashboard in deploy/grafana/dashboards"
    assert "calendering.gap_actual" in KNOWN and "calendering.porosity_predicted_std" in KNOWN


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_tag_named_in_the_dashboard_exists(path: Path) -> None:
    dash = json.loads(path.read_text())
    named: set[str] = set()
    steps = {t.step for t in KNOWN.values()}
    for key, s in _strings(dash):
        if key in ("uid", "type", "datasource", "pluginVersion", "version", "schemaVersion", "timezone"):
            continue
        for m in TAG_ID.finditer(s):
            if m.group(1) in steps:
                named.add(m.group(0))
    regexes: dict[str, set[str]] = {}
    for q in _queries(dash):
        for key, _op, val in KEY_COND.findall(q):
            if key != "tag" or not val.startswith("/") or re.search(r"\$\{?\w", val):
                continue  # a template variable ($tag) stands for the stored tags themselves
            expanded = _expand(val[1:-1])
            if expanded is None:
                matching = {t for t in KNOWN if re.search(val[1:-1], t)}
                assert matching, f"{path.name}: {val} matches no tag"
            else:
                regexes[val] = expanded
                named |= expanded
        for key, _op, val in KEY_COND.findall(q):
            if key == "tag" and val.startswith("'"):
                named.add(val[1:-1])
    unknown = sorted(n for n in named if n not in KNOWN)
    assert not unknown, f"{path.name} names tags the twin does not have: {unknown}"
    for rx, names in regexes.items():
        assert names & KNOWN.keys(), f"{path.name}: {rx} matches no tag"
    assert named, "the dashboard names no tag at all: the check would be empty"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_kind_role_step_values_exist(path: Path) -> None:
    dash = json.loads(path.read_text())
    have = {"kind": {t.kind.value for t in KNOWN.values()}, "role": {t.role.value for t in KNOWN.values()},
            "step": {t.step for t in KNOWN.values()}}
    for q in _queries(dash):
        for key, _op, val in KEY_COND.findall(q):
            if key in have and val.startswith("'") and "$" not in val:
                assert val[1:-1] in have[key], f"{path.name}: {key} = {val}: no tag has it ({sorted(have[key])})"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_influxql_uses_the_backend_schema(path: Path) -> None:
    dash = json.loads(path.read_text())
    schema = _influx_schema()
    variables = _template_names(dash)
    checked = 0
    for q in _queries(dash):
        for var in re.findall(r"\$\{?(\w+)", q):
            assert var in variables, f"{path.name}: undefined template variable ${var} in {q}"
        froms = FROM.findall(q)
        for meas in froms:
            assert meas in schema, f"{path.name}: measurement {meas!r} is not written by the InfluxDB backend"
        if not froms:
            continue
        keys, fields = schema[froms[0]]
        if q.lstrip().upper().startswith("SHOW TAG VALUES"):
            for k in re.findall(r'WITH KEY\s*=\s*"(\w+)"', q, re.I):
                assert k in keys, f"{path.name}: tag key {k!r} not in {sorted(keys)}"
        select = re.search(r"SELECT\s+(.*?)\s+FROM", q, re.I | re.S)
        if select:
            sel = re.sub(r'\bAS\s+"[^"]*"', "", select.group(1), flags=re.I)
            for f in re.findall(r'"(\w+)"', sel):
                assert f in fields | keys, f"{path.name}: field {f!r} of {froms[0]} not in {sorted(fields)}"
        for key, _, _ in KEY_COND.findall(q):
            assert key in keys | fields, f"{path.name}: {key!r} is not a tag key of {froms[0]} ({sorted(keys)})"
        group = re.search(r"GROUP BY\s+(.*?)(?:\s+fill\(|\s+ORDER|\s+LIMIT|$)", q, re.I | re.S)
        if group:
            for k in re.findall(r'"(\w+)"', group.group(1)):
                assert k in keys, f"{path.name}: GROUP BY {k!r} is not a tag key of {froms[0]} ({sorted(keys)})"
        checked += 1
    assert checked >= 3, "fewer InfluxQL queries than expected: the parser misses them"
