"""Browse an OPC-UA address space into plain records, and turn them into a tag-map skeleton.

``browse_variables(client, roots)`` walks the hierarchical references below the roots (Objects by
default, namespace 0 skipped), breadth first with batched Browse / Read / TranslateBrowsePaths
requests, and returns one :class:`BrowsedNode` per variable: node id, browse path, data type,
engineering unit (EUInformation), EURange, access level and description. asyncua objects stay inside
this folder; a BrowsedNode is plain data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import Client, ua

from connectors.opcua.units import unit_from_eu

OBJECTS = "i=85"
_HAS_PROPERTY = ua.NodeId(ua.ObjectIds.HasProperty)
_HIERARCHICAL = ua.NodeId(ua.ObjectIds.HierarchicalReferences)
_CHUNK = 500


@dataclass(frozen=True)
class BrowsedNode:
    node_id: str  # e.g. "ns=2;s=Calender.GapActual"
    browse_path: str  # e.g. "/Objects/2:PilotLine/2:Calender/2:GapActual"
    display_name: str
    data_type: str | None  # e.g. "Double"
    unit: str | None  # pint spelling from EUInformation (None: no unit or unknown code)
    unit_display: str | None  # the server's display name of the unit
    eu_range: tuple[float, float] | None
    readable: bool
    writable: bool
    description: str
    folder: str  # browse name of the parent

    @property
    def access(self) -> str:
        return ("r" if self.readable else "") + ("w" if self.writable else "") or "-"


def parse_node_id(text: str) -> ua.NodeId:
    try:
        return ua.NodeId.from_string(text.strip())
    except Exception as err:
        raise ValueError(f"{text!r} is not a NodeId (expected e.g. 'ns=2;s=Calender.GapActual' or 'i=85')") from err


def node_str(nid: Any) -> str:
    return ua.NodeId(nid.Identifier, nid.NamespaceIndex, nid.NodeIdType).to_string()


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


async def _browse_children(client: Client, parents: list[ua.NodeId]) -> list[list[ua.ReferenceDescription]]:
    out: list[list[ua.ReferenceDescription]] = []
    for chunk in _chunks(parents):
        params = ua.BrowseParameters()
        params.NodesToBrowse = [
            ua.BrowseDescription(NodeId=p, BrowseDirection=ua.BrowseDirection.Forward, ReferenceTypeId=_HIERARCHICAL,
                                 IncludeSubtypes=True,
                                 NodeClassMask=int(ua.NodeClass.Object | ua.NodeClass.Variable),
                                 ResultMask=int(ua.BrowseResultMask.All))
            for p in chunk]
        results = await client.uaclient.browse(params)
        for res in results:
            refs = list(res.References)
            cp = res.ContinuationPoint
            while cp:
                nxt = ua.BrowseNextParameters()
                nxt.ReleaseContinuationPoints = False
                nxt.ContinuationPoints = [cp]
                more = (await client.uaclient.browse_next(nxt))[0]
                refs.extend(more.References)
                cp = more.ContinuationPoint
            out.append(refs)
    return out


async def walk(client: Client, roots: Sequence[str] = (OBJECTS,), *, max_depth: int = 10,
               include_ns0: bool = False, max_nodes: int = 200_000) -> list[tuple[ua.NodeId, str, str, str]]:
    """Variables below the roots: (node id, browse path, display name, parent browse name)."""
    found: list[tuple[ua.NodeId, str, str, str]] = []
    seen: set[str] = set()
    level: list[tuple[ua.NodeId, str, str]] = []
    for r in roots:
        nid = parse_node_id(r)
        name = "Objects" if nid == ua.NodeId(ua.ObjectIds.ObjectsFolder) else nid.to_string()
        level.append((nid, "/" + name, name))
    for _depth in range(max_depth):
        if not level:
            break
        children = await _browse_children(client, [n for n, _, _ in level])
        nxt: list[tuple[ua.NodeId, str, str]] = []
        for (_parent, ppath, pname), refs in zip(level, children):
            for ref in refs:
                if ref.ReferenceTypeId == _HAS_PROPERTY:
                    continue  # properties (EngineeringUnits, EURange, ...) describe their parent
                nid = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
                if nid.NamespaceIndex == 0 and not include_ns0:
                    continue
                key = nid.to_string()
                if key in seen:
                    continue
                seen.add(key)
                bn = ref.BrowseName
                path = f"{ppath}/{bn.NamespaceIndex}:{bn.Name}"
                if ref.NodeClass == ua.NodeClass.Variable:
                    found.append((nid, path, ref.DisplayName.Text or bn.Name, pname))
                else:
                    nxt.append((nid, path, bn.Name))
                if len(found) >= max_nodes:
                    return found
        level = nxt
    return found


async def read_engineering_units(client: Client, node_ids: Sequence[ua.NodeId]
                                 ) -> tuple[dict[str, tuple[str | None, str | None]], dict[str, tuple[float, float]]]:
    """EngineeringUnits -> {node: (unit, display)} and EURange -> {node: (low, high)} of the nodes that have them."""
    units: dict[str, tuple[str | None, str | None]] = {}
    ranges: dict[str, tuple[float, float]] = {}
    for prop in ("EngineeringUnits", "EURange"):
        for chunk in _chunks(list(node_ids)):
            paths = []
            for nid in chunk:
                bp = ua.BrowsePath()
                bp.StartingNode = nid
                el = ua.RelativePathElement()
                el.ReferenceTypeId = _HAS_PROPERTY
                el.IsInverse = False
                el.IncludeSubtypes = False
                el.TargetName = ua.QualifiedName(prop, 0)
                bp.RelativePath.Elements = [el]
                paths.append(bp)
            results = await client.uaclient.translate_browsepaths_to_nodeids(paths)
            targets: list[tuple[ua.NodeId, ua.NodeId]] = []
            for nid, res in zip(chunk, results):
                if res.StatusCode.is_good() and res.Targets:
                    t = res.Targets[0].TargetId
                    targets.append((nid, ua.NodeId(t.Identifier, t.NamespaceIndex, t.NodeIdType)))
            if not targets:
                continue
            params = ua.ReadParameters()
            params.NodesToRead = [ua.ReadValueId(NodeId=t, AttributeId=ua.AttributeIds.Value) for _, t in targets]
            dvs = await client.uaclient.read(params)
            for (nid, _), dv in zip(targets, dvs):
                v = dv.Value.Value if dv.Value is not None else None
                if prop == "EngineeringUnits" and isinstance(v, ua.EUInformation):
                    disp = v.DisplayName.Text if v.DisplayName is not None else None
                    units[nid.to_string()] = (unit_from_eu(v.NamespaceUri, v.UnitId, disp), disp)
                elif prop == "EURange" and isinstance(v, ua.Range):
                    ranges[nid.to_string()] = (float(v.Low), float(v.High))
    return units, ranges


async def _data_type_names(client: Client, dtypes: Iterable[ua.NodeId]) -> dict[str, str]:
    names: dict[str, str] = {}
    unknown: list[ua.NodeId] = []
    for d in {x.to_string(): x for x in dtypes}.values():
        if d.NamespaceIndex == 0 and isinstance(d.Identifier, int) and d.Identifier in ua.ObjectIdNames:
            names[d.to_string()] = ua.ObjectIdNames[d.Identifier]
        else:
            unknown.append(d)
    for chunk in _chunks(unknown):
        params = ua.ReadParameters()
        params.NodesToRead = [ua.ReadValueId(NodeId=d, AttributeId=ua.AttributeIds.BrowseName) for d in chunk]
        for d, dv in zip(chunk, await client.uaclient.read(params)):
            v = dv.Value.Value if dv.Value is not None else None
            names[d.to_string()] = v.Name if isinstance(v, ua.QualifiedName) else d.to_string()
    return names


async def browse_variables(client: Client, roots: Sequence[str] = (OBJECTS,), *, max_depth: int = 10,
                           include_ns0: bool = False) -> list[BrowsedNode]:
    """Every variable below the roots, described (see module doc)."""
    found = await walk(client, roots, max_depth=max_depth, include_ns0=include_ns0)
    ids = [n for n, _, _, _ in found]
    attrs = (ua.AttributeIds.DataType, ua.AttributeIds.AccessLevel, ua.AttributeIds.Description)
    values: list[list[Any]] = []
    for chunk in _chunks(ids, _CHUNK // 3):
        params = ua.ReadParameters()
        params.NodesToRead = [ua.ReadValueId(NodeId=n, AttributeId=a) for n in chunk for a in attrs]
        dvs = await client.uaclient.read(params)
        for i in range(len(chunk)):
            values.append([dv.Value.Value if dv.Value is not None else None for dv in dvs[3 * i:3 * i + 3]])
    dtype_names = await _data_type_names(client, [v[0] for v in values if isinstance(v[0], ua.NodeId)])
    units, ranges = await read_engineering_units(client, ids)
    out = []
    for (nid, path, disp, parent), (dtype, access, desc) in zip(found, values):
        key = nid.to_string()
        unit, udisp = units.get(key, (None, None))
        acc = int(access) if isinstance(access, int) else 0
        out.append(BrowsedNode(
            node_id=key, browse_path=path, display_name=disp,
            data_type=dtype_names.get(dtype.to_string()) if isinstance(dtype, ua.NodeId) else None,
            unit=unit, unit_display=udisp, eu_range=ranges.get(key),
            readable=bool(acc & 1), writable=bool(acc & 2),  # AccessLevel bits CurrentRead, CurrentWrite
            description=desc.Text or "" if isinstance(desc, ua.LocalizedText) else "",
            folder=parent))
    return out


# ------------------------------------------------------------------------------------------------
# tag-map skeleton

_STEP_GUESS = {"coater": "coating", "coating": "coating", "dryer": "drying", "drying": "drying",
               "calender": "calendering", "calendering": "calendering", "calendar": "calendering",
               "mixer": "mixing", "slitter": "slitting"}


def snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    s = re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower()
    return s or "value"


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tagmap_skeleton(nodes: Sequence[BrowsedNode], *, source_url: str = "") -> str:
    """A tag-map TOML skeleton (the ontology issue's plant file format) with one tag per variable.

    Ids, steps, kinds and roles are guesses from the browse names; review them. Units come from
    EUInformation; ranges from EURange.
    """
    lines = ["# Tag-map skeleton written by `twin browse`" + (f" from {source_url}" if source_url else "") + ".",
             "# Review every tag: id, step, kind (MP/PP/SP/TRACE), role and range are guesses from browse names.",
             "version = 1", ""]
    used: set[str] = set()
    for n in nodes:
        step = _STEP_GUESS.get(n.folder.lower(), snake(n.folder))
        param = snake(n.display_name)
        tid = f"{step}.{param}"
        k = 2
        while tid in used:
            tid, k = f"{step}.{param}_{k}", k + 1
        used.add(tid)
        is_string = n.data_type in ("String", "LocalizedText")
        low = param.lower()
        role = "setpoint" if (n.writable or low.endswith("setpoint")) else "actual"
        trace = "roll_id" if is_string and "roll" in low and low.endswith("id") else \
            "web_position" if "web_pos" in low else None
        gauge = "gauge" in n.folder.lower()
        kind = "TRACE" if trace else "SP" if gauge and role != "setpoint" else "MP"
        if kind == "SP":
            role = "measured"
        lines.append("[[tags]]")
        lines.append(f"id = {_toml_str(tid)}")
        lines.append(f"step = {_toml_str(step)}")
        lines.append(f'kind = "{kind}"')
        lines.append(f'role = "{role}"')
        lines.append(f"canonical_unit = {_toml_str(n.unit or 'dimensionless')}")
        if is_string:
            lines.append('value_type = "string"')
        if trace:
            lines.append(f'traceability = "{trace}"')
        if n.eu_range is not None and not is_string:
            lines.append(f"range = [{n.eu_range[0]:g}, {n.eu_range[1]:g}]")
        if n.description:
            lines.append(f"description = {_toml_str(n.description)}")
        src = f"opcua = {_toml_str(n.node_id)}" + (f", unit = {_toml_str(n.unit)}" if n.unit else "")
        lines.append(f"sources = [ {{ {src} }} ]")
        lines.append("")
    return "\n".join(lines)
