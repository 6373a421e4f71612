"""``twin mqtt discover``: listen to a broker for a while and propose the MQTT connector's payload mapping.

What it does: subscribes (QoS 0, clean session, its own client id, so it takes nothing from the
twin's persistent session) to the given topics for ``seconds``, classifies each topic's payloads and
prints TOML to paste into the ``[[connectors]]`` table of the MQTT connector:

- topics in the built-in format (``{"value": ...}``, ``<...>/batch``) need no mapping and are listed
  as comments;
- a plain number -> ``format = "number"``;
- custom JSON -> the value, timestamp (with its format; naive times get a ``timezone`` line to
  check), quality and unit paths, or a list path with the item's name path;
- topics with the same structure under one parent are folded into one ``+`` pattern (when no other
  topic seen under that parent would match it), listed after the exact topics (the first match wins);
- Sparkplug B (``spBv1.0/...``): ``[connectors.sparkplug]`` with the groups seen, and each metric of
  the births (name, alias, data type, and its unit and range where the birth states them: the
  ``engUnit`` / ``engLow`` / ``engHigh`` properties, else a unit in brackets at the end of the
  metric's description, ``"roll gap [mm]"``) as the tag map source address it will have. With
  ``request_rebirth`` an edge node seen without a birth is asked for one (NCMD Node Control/Rebirth).

:func:`discover_points` is ``twin init --mqtt``'s seam (twin/init.py): the points the connector will
read with the proposed configuration, found by parsing what arrived with the proposed mappings.

:func:`discover` returns a :class:`Discovery` (topics, classifications, Sparkplug metrics) and
:func:`proposal_toml` its TOML; the CLI command is :func:`discover_cmd`.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from connectors.mqtt.config import PayloadMapping, TimestampPolicy
from connectors.mqtt.mapping import PayloadMapper
from connectors.mqtt.payload import parse_payload
from connectors.mqtt.sparkplug import rebirth_command, strip_unsupported

MAX_TOPICS = 5000  # topics remembered, at most
SAMPLES = 3  # payloads kept per topic

VALUE_KEYS = ("value", "v", "val", "Value", "y", "reading")
TS_KEYS = ("ts", "t", "time", "timestamp", "Timestamp", "datetime", "date_time", "sourceTimestamp")
QUALITY_KEYS = ("quality", "q", "status", "Quality")
UNIT_KEYS = ("unit", "u", "eu", "engUnit", "Unit")
NAME_KEYS = ("name", "n", "id", "tag", "topic", "address")
STRPTIME_CANDIDATES = ("%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M:%S.%f", "%Y/%m/%d %H:%M:%S", "%m/%d/%Y %H:%M:%S",
                       "%d/%m/%Y %H:%M:%S", "%Y%m%d%H%M%S")


@dataclass
class TopicSeen:
    topic: str
    messages: int = 0
    samples: list[bytes] = field(default_factory=list)
    kind: str = ""  # builtin | batch | number | json | list | sparkplug | unknown
    mapping: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class Discovery:
    host: str
    port: int
    seconds: float
    topics: dict[str, TopicSeen] = field(default_factory=dict)
    sparkplug_groups: set[str] = field(default_factory=set)
    sparkplug_metrics: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # address -> (type, alias)
    # address -> what the birth says about the metric: device, name, description, unit, range (engUnit ...)
    sparkplug_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    sparkplug_nodes_without_birth: set[str] = field(default_factory=set)
    rebirths_requested: int = 0
    messages: int = 0


# -- classification ---------------------------------------------------------------------------------
def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def guess_timestamp(v: Any) -> tuple[str, bool] | None:
    """(timestamp_format, naive?) for a timestamp value, or None if it is not one."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        a = abs(v)
        if 1e8 <= a < 1e11:
            return "epoch_s", False
        if 1e11 <= a < 1e14:
            return "epoch_ms", False
        if 1e14 <= a < 1e17:
            return "epoch_us", False
        if 1e17 <= a < 1e20:
            return "epoch_ns", False
        return None
    if not isinstance(v, str) or len(v) > 64:
        return None
    text = v.strip()
    try:
        dt = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
        return "auto", dt.tzinfo is None
    except ValueError:
        pass
    for fmt in STRPTIME_CANDIDATES:
        try:
            datetime.strptime(text, fmt)
            return fmt, True
        except ValueError:
            continue
    return None


def _scalar_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fields(obj: dict[str, Any]) -> dict[str, Any]:
    """value / timestamp / quality / unit paths of one JSON object (relative to it)."""
    out: dict[str, Any] = {}
    ts_key = next((k for k in TS_KEYS if k in obj and guess_timestamp(obj[k]) is not None), None)
    value_key = next((k for k in VALUE_KEYS if k in obj and (_scalar_number(obj[k]) or isinstance(obj[k], str))
                      and k != ts_key), None)
    if value_key is None:
        numeric = [k for k, v in obj.items() if _scalar_number(v) and k != ts_key and k not in QUALITY_KEYS]
        if len(numeric) == 1:
            value_key = numeric[0]
    if value_key is None:
        return {}
    out["value"] = value_key
    if ts_key is not None:
        fmt, naive = guess_timestamp(obj[ts_key])  # type: ignore[misc]
        out["timestamp"] = ts_key
        if fmt != "auto":
            out["timestamp_format"] = fmt
        if naive:
            out["timezone"] = "UTC"
            out["_naive"] = True
    else:
        out["timestamp"] = None
        out["missing_timestamp"] = "receive_time"
    q = next((k for k in QUALITY_KEYS if k in obj), None)
    if q is not None:
        out["quality"] = q
    u = next((k for k in UNIT_KEYS if k in obj and isinstance(obj[k], str)), None)
    if u is not None:
        out["unit_path"] = u
    return out


def classify(topic: str, payload: bytes, batch_suffix: str = "batch") -> tuple[str, dict[str, Any], str]:
    """(kind, proposed mapping fields, note) of one message."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown", {}, "not UTF-8 (binary)"
    if _number(text.strip()) and text.strip():
        return "number", {"format": "number"}, "plain number: stamped with the receive time"
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return "unknown", {}, "neither JSON nor a plain number"
    if _scalar_number(obj):
        return "number", {"format": "number"}, "plain number: stamped with the receive time"
    if not isinstance(obj, dict):
        return "unknown", {}, f"a JSON {type(obj).__name__}"
    if topic.rsplit("/", 1)[-1] == batch_suffix and isinstance(obj.get("readings"), list):
        return "batch", {}, "built-in batch format"
    if "value" in obj and ("ts" in obj or len(obj) == 1 or set(obj) <= {"value", "ts", "unit", "quality", "roll",
                                                                        "web_pos_m"}):
        ts = obj.get("ts")
        fmt = guess_timestamp(ts) if ts is not None else ("auto", False)
        if fmt is not None and fmt[0] in ("auto", "epoch_s") and not fmt[1]:
            return "builtin", {}, "built-in format"
    for k, v in obj.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            item = _fields(v[0])
            if not item:
                continue
            name = next((n for n in NAME_KEYS if n in v[0] and isinstance(v[0][n], (str, int))), None)
            if item.get("timestamp") is None:  # a timestamp for the whole message?
                outer = _fields({**{kk: vv for kk, vv in obj.items() if kk != k}, "value": 0})
                if outer.get("timestamp"):
                    item = {**item, **{kk: vv for kk, vv in outer.items() if kk in ("timestamp_format", "timezone",
                                                                                  "_naive")},
                            "timestamp": "$." + outer["timestamp"]}
                    item.pop("missing_timestamp", None)
            fields = {"readings": k, **item}
            if name is not None:
                fields["address"] = name
            return "list", fields, f"{len(v)} readings per message" + (f", named by {name!r}" if name else "")
    fields = _fields(obj)
    if not fields:
        return "unknown", {}, "no numeric value field found"
    return "json", fields, "custom JSON fields"


# -- listening ----------------------------------------------------------------------------------------
def discover(host: str = "127.0.0.1", port: int = 1883, seconds: float = 10.0, topics: list[str] | None = None, *,
             username: str | None = None, password: str | None = None, request_rebirth: bool = False,
             batch_suffix: str = "batch") -> Discovery:
    """Listen to a broker for ``seconds`` and classify what arrives. Raises OSError if it cannot connect."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    disc = Discovery(host, port, seconds)
    lock = threading.Lock()
    subs = list(topics or ["#"])
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"twin-discover-{uuid.uuid4().hex[:8]}")
    if username is not None:
        client.username_pw_set(username, password)
    connected = threading.Event()
    births: dict[tuple[str, str], bool] = {}

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            c.subscribe([(t, 0) for t in subs])
            connected.set()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            return
        with lock:
            disc.messages += 1
            seen = disc.topics.get(topic)
            if seen is None:
                if len(disc.topics) >= MAX_TOPICS:
                    return
                seen = disc.topics[topic] = TopicSeen(topic)
            seen.messages += 1
            if len(seen.samples) < SAMPLES:
                seen.samples.append(bytes(msg.payload[:2048]))
            if topic.startswith("spBv1.0/"):
                _sparkplug(disc, topic, msg.payload, births, c if request_rebirth else None)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(host, port, 30)
    client.loop_start()
    try:
        if not connected.wait(min(10.0, max(seconds, 2.0))):
            raise OSError(f"no connection to the broker at {host}:{port}")
        time.sleep(seconds)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        for seen in disc.topics.values():
            if seen.topic.startswith("spBv1.0/"):
                seen.kind = "sparkplug"
                continue
            kinds = [classify(seen.topic, p, batch_suffix) for p in seen.samples]
            seen.kind, seen.mapping, seen.note = kinds[0] if kinds else ("unknown", {}, "")
    return disc


def _sparkplug(disc: Discovery, topic: str, payload: bytes, births: dict[tuple[str, str], bool], client: Any) -> None:
    parts = topic.split("/")
    if len(parts) < 4 or parts[1] == "STATE":
        return
    group, mtype, edge = parts[1], parts[2], parts[3]
    device = parts[4] if len(parts) > 4 else None
    disc.sparkplug_groups.add(group)
    if mtype in ("NBIRTH", "DBIRTH"):
        try:
            import pysparkplug as spb

            raw, _aliases, _dropped = strip_unsupported(bytes(payload), set())  # DataSets etc.: the rest counts
            birth = (spb.DBirth if device else spb.NBirth).decode(raw)
            props = _birth_properties(raw)
        except Exception:  # noqa: BLE001 - a bad birth is left out of the proposal
            return
        births[(group, edge)] = True
        disc.sparkplug_nodes_without_birth.discard(f"{group}/{edge}")
        for m in birth.metrics:
            if not m.name or m.name == "bdSeq" or m.name.startswith("Node Control/"):
                continue
            addr = f"{group}/{edge}/{device}/{m.name}" if device else f"{group}/{edge}/{m.name}"
            if addr not in disc.sparkplug_metrics and len(disc.sparkplug_metrics) >= MAX_TOPICS:
                continue
            disc.sparkplug_metrics[addr] = (m.datatype.name, m.alias)
            desc = (m.metadata.description or "") if m.metadata is not None else ""
            disc.sparkplug_meta[addr] = {"group": group, "edge": edge, "device": device, "name": m.name,
                                         "description": desc[:256], **metric_unit_range(props.get(m.name, {}), desc)}
    elif mtype in ("NDATA", "DDATA") and (group, edge) not in births:
        disc.sparkplug_nodes_without_birth.add(f"{group}/{edge}")
        if client is not None:
            births[(group, edge)] = False  # asked once
            client.publish(f"spBv1.0/{group}/NCMD/{edge}", rebirth_command(int(time.time() * 1000)), qos=0)
            disc.rebirths_requested += 1


ENG_UNIT_KEYS = ("engunit", "engunits", "unit", "units", "eu")
ENG_LOW_KEYS = ("englow", "eulow", "min", "low")
ENG_HIGH_KEYS = ("enghigh", "euhigh", "max", "high")
_UNIT_IN_TEXT = re.compile(r"\[([^\[\]]{1,32})\]\s*$")


def _birth_properties(raw: bytes) -> dict[str, dict[str, Any]]:
    """metric name -> {property key (lower case): scalar value} of a birth's PropertySets (Sparkplug B
    carries engineering units and limits there, e.g. Ignition's engUnit / engLow / engHigh; pysparkplug
    0.6 does not decode them, so they are read from the protobuf)."""
    from pysparkplug import _protobuf as pb

    out: dict[str, dict[str, Any]] = {}
    for m in pb.Payload.FromString(raw).metrics:
        if not m.name or not m.HasField("properties"):
            continue
        vals: dict[str, Any] = {}
        for key, pv in zip(m.properties.keys, m.properties.values):
            which = pv.WhichOneof("value")
            if which in ("int_value", "long_value", "float_value", "double_value", "boolean_value", "string_value") \
                    and not pv.is_null:
                vals[str(key).lower()[:64]] = getattr(pv, which)
        out[m.name] = vals
    return out


def metric_unit_range(props: dict[str, Any], description: str) -> dict[str, Any]:
    """unit and range of a Sparkplug metric: its properties (engUnit, engLow, engHigh), else a unit in
    brackets at the end of its description ("roll gap, actual [mm]")."""
    out: dict[str, Any] = {"unit": None, "range": None}
    unit = next((props[k] for k in ENG_UNIT_KEYS if isinstance(props.get(k), str) and props[k].strip()), None)
    if unit is None:
        hit = _UNIT_IN_TEXT.search(description or "")
        unit = hit.group(1) if hit else None
    out["unit"] = unit.strip()[:64] if unit else None
    lo = next((props[k] for k in ENG_LOW_KEYS if _scalar_number(props.get(k))), None)
    hi = next((props[k] for k in ENG_HIGH_KEYS if _scalar_number(props.get(k))), None)
    if lo is not None and hi is not None and float(lo) < float(hi):
        out["range"] = (float(lo), float(hi))
    return out


# -- the proposal ---------------------------------------------------------------------------------------
def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v, ensure_ascii=False)


def _fold(disc: Discovery) -> list[tuple[str, TopicSeen, list[str]]]:
    """(pattern, a representative, the topics) with topics of the same structure under one parent folded
    into ``parent/+``."""
    groups: dict[tuple[str, str, str], list[TopicSeen]] = {}
    for seen in disc.topics.values():
        if seen.kind not in ("number", "json", "list"):
            continue
        parent = seen.topic.rsplit("/", 1)[0] if "/" in seen.topic else ""
        sig = json.dumps(seen.mapping, sort_keys=True)
        groups.setdefault((parent, seen.kind, sig), []).append(seen)
    children: dict[str, set[str]] = {}  # parent -> every topic seen one level below it (what parent/+ matches)
    for t in disc.topics:
        if "/" in t:
            children.setdefault(t.rsplit("/", 1)[0], set()).add(t)
    out = []
    for (parent, _, _), members in sorted(groups.items(), key=lambda kv: kv[1][0].topic):
        names = {m.topic for m in members}
        if len(members) > 1 and parent and children.get(parent, set()) <= names:  # + would catch no other topic
            out.append((parent + "/+", members[0], sorted(names)))
        else:
            out += [(m.topic, m, [m.topic]) for m in members]
    return sorted(out, key=lambda x: ("+" in x[0], x[0]))  # exact topics first: the first match wins


def proposal_toml(disc: Discovery) -> str:
    """TOML for the MQTT connector's [[connectors]] table (payload mappings, Sparkplug), with comments."""
    kinds = Counter(s.kind for s in disc.topics.values())
    lines = [f"# twin mqtt discover: {len(disc.topics)} topics, {disc.messages} messages in {disc.seconds:g} s "
             f"from {disc.host}:{disc.port}",
             "# paste below the [[connectors]] table of the MQTT connector (kind = \"mqtt\"); check each guess"]
    builtin = sorted(s.topic for s in disc.topics.values() if s.kind in ("builtin", "batch"))
    if builtin:
        lines.append(f"# {len(builtin)} topic(s) in the built-in format need no mapping:")
        lines += [f"#   {t}" for t in builtin[:50]] + ([f"#   ... and {len(builtin) - 50} more"] if len(builtin) > 50
                                                       else [])
    unknown = sorted((s for s in disc.topics.values() if s.kind == "unknown"), key=lambda s: s.topic)
    for s in unknown[:50]:
        lines.append(f"# not mapped: {s.topic} ({s.note})")
    for pattern, rep, members in _fold(disc):
        lines.append("")
        lines.append("[[connectors.payloads]]")
        example = rep.samples[0][:120].decode("utf-8", "replace") if rep.samples else ""
        lines.append(f"topic = {_toml(pattern)}")
        lines.append(f"# {rep.note}; {sum(disc.topics[m].messages for m in members)} message(s) on "
                     f"{len(members)} topic(s); e.g. {example!r}")
        for k, v in rep.mapping.items():
            if k.startswith("_") or v is None and k != "timestamp":
                continue
            if k == "timestamp" and v is None:
                continue
            comment = ""
            if k == "timezone" and rep.mapping.get("_naive"):
                comment = "  # the timestamps carry no offset: set the zone the source writes them in"
            lines.append(f"{k} = {_toml(v)}{comment}")
        if "unit_path" not in rep.mapping and rep.kind != "unknown":
            lines.append('# unit = "..."                     # the unit the source speaks, if the tag map does not say')
    if disc.sparkplug_groups:
        lines += ["", "[connectors.sparkplug]", "enabled = true",
                  f"groups = {_toml(sorted(disc.sparkplug_groups))}",
                  '# host_id = "twin"                 # publish the STATE of this host application']
        if disc.sparkplug_metrics:
            lines.append("# Sparkplug metrics from the births (tag map source addresses, data type, alias):")
            for addr, (dtype, alias) in sorted(disc.sparkplug_metrics.items()):
                unit = disc.sparkplug_meta.get(addr, {}).get("unit")
                shown = _toml(unit) if unit else '"..."'
                lines.append(f"#   {{ mqtt = {_toml(addr)}, unit = {shown} }}"
                             f"   # {dtype}" + (f", alias {alias}" if alias is not None else ""))
        for node in sorted(disc.sparkplug_nodes_without_birth):
            lines.append(f"# edge node {node}: data seen but no birth while listening "
                         "(run again with --rebirth to ask it for one)")
    if not disc.topics:
        lines.append("# nothing arrived: check the topics, the broker address and that the line publishes")
    lines.append(f"# kinds seen: {dict(sorted(kinds.items()))}")
    return "\n".join(lines) + "\n"


def payload_tables(disc: Discovery) -> list[dict[str, Any]]:
    """The proposed ``[[connectors.payloads]]`` tables (what :func:`proposal_toml` prints, as data)."""
    out = []
    for pattern, rep, _members in _fold(disc):
        out.append({"topic": pattern,
                    **{k: v for k, v in rep.mapping.items() if not k.startswith("_") and v is not None}})
    return out


_STRING_TYPES = ("STRING", "TEXT", "UUID")


def discover_points(config: Any, seconds: float) -> list[dict[str, Any]]:
    """``twin init --mqtt``'s seam (twin/init.py): listen with :func:`discover` (asking Sparkplug edge nodes
    seen without a birth for one) and return one dict per point the MQTT connector will read with the
    proposed configuration: ``topic`` (the reading's address, the tag map's ``mqtt`` source), ``name``,
    ``folder``, ``description``, ``unit``, ``range``, ``data_type``, ``sparkplug`` (a Sparkplug metric:
    writable with DCMD) and ``connector``: the settings of the ``[[connectors]]`` table (``payloads``,
    ``sparkplug``, ``missing_timestamp``), the same in every row. Points are found by parsing the
    messages that arrived with the proposed mappings (the connector's own parsers), so init proposes
    only addresses the running twin produces. Topics nothing reads come as rows with ``unmapped`` (the
    reason) instead. Raises OSError if the broker cannot be reached."""
    disc = discover(config.host, config.port, seconds, list(config.topics), username=config.username,
                    password=config.password, request_rebirth=True, batch_suffix=config.batch_topic_suffix)
    tables = payload_tables(disc)
    mapper = PayloadMapper([PayloadMapping.model_validate(t) for t in tables], TimestampPolicy.RECEIVE_TIME)
    recv = 1  # a receive time no real timestamp equals: tells readings without a timestamp apart
    seen: dict[str, tuple[Any, str | None]] = {}
    unmapped: dict[str, str] = {}
    builtin_without_ts = False
    for t in sorted(disc.topics.values(), key=lambda x: x.topic):
        if t.kind == "sparkplug" or t.topic.startswith("$"):
            continue
        if t.kind == "unknown":
            unmapped[t.topic] = t.note or "unknown payload"
            continue
        topic_b = t.topic.encode()
        m = mapper.match(topic_b) if t.kind in ("number", "json", "list") else None
        got = []
        for sample in t.samples:
            if m is not None:
                rs, _dead = mapper.parse(m, topic_b, sample, recv)
            else:
                rs, _dead = parse_payload(topic_b, sample, recv, fill_receive_time=True,
                                          batch_suffix=config.batch_topic_suffix)
                builtin_without_ts |= any(r.source_ts_ns == recv for r in rs)
            got += rs
        if not got:
            unmapped[t.topic] = "no reading in the payloads seen"
        for r in got:
            if len(seen) < MAX_TOPICS:
                seen[r.address] = (r.value, r.unit)
    connector: dict[str, Any] = {}
    if builtin_without_ts:
        connector["missing_timestamp"] = "receive_time"
    if tables:
        connector["payloads"] = tables
    if disc.sparkplug_groups:
        connector["sparkplug"] = {"enabled": True, "groups": sorted(disc.sparkplug_groups), "host_id": "pilotline-twin"}
    rows: list[dict[str, Any]] = []
    for address, (value, unit) in sorted(seen.items()):
        parts = address.split("/")
        rows.append({"topic": address, "name": parts[-1], "folder": parts[-2] if len(parts) > 1 else "",
                     "unit": unit, "data_type": "String" if isinstance(value, str) else "Double",
                     "connector": connector})
    for address, (dtype, _alias) in sorted(disc.sparkplug_metrics.items()):
        meta = disc.sparkplug_meta.get(address, {})
        name_parts = str(meta.get("name") or address.rsplit("/", 1)[-1]).split("/")
        folder = name_parts[-2] if len(name_parts) > 1 else (meta.get("device") or meta.get("edge") or "")
        rows.append({"topic": address, "name": name_parts[-1], "folder": folder,
                     "description": meta.get("description", ""), "unit": meta.get("unit"), "range": meta.get("range"),
                     "data_type": "String" if dtype in _STRING_TYPES else "Double", "sparkplug": True,
                     "connector": connector})
    for topic, why in sorted(unmapped.items()):
        rows.append({"topic": topic, "unmapped": why, "connector": connector})
    for node in sorted(disc.sparkplug_nodes_without_birth):
        rows.append({"topic": f"spBv1.0/{node}", "unmapped": "Sparkplug edge node seen without a birth (asked for a "
                     "rebirth; listen longer)", "connector": connector})
    return rows


# -- the command ------------------------------------------------------------------------------------------
def discover_cmd(
    host: str = typer.Option("127.0.0.1", help="broker host"),
    port: int = typer.Option(1883, help="broker port"),
    seconds: float = typer.Option(10.0, min=0.5, max=3600, help="how long to listen"),
    topic: list[str] = typer.Option(["#"], "--topic", "-t", help="subscription (repeatable)"),
    username: str | None = typer.Option(None, help="user name"),
    password: str | None = typer.Option(None, envvar="TWIN_MQTT_PASSWORD", help="password (or TWIN_MQTT_PASSWORD)"),
    rebirth: bool = typer.Option(False, "--rebirth", help="ask Sparkplug edge nodes seen without a birth for one"),
    output: Path | None = typer.Option(None, "--output", "-o", help="write the TOML here instead of stdout"),
) -> None:
    """Listen to an MQTT broker and propose the connector's payload mapping (TOML to paste)."""
    try:
        disc = discover(host, port, seconds, topic, username=username, password=password, request_rebirth=rebirth)
    except OSError as err:
        typer.echo(f"error: cannot listen to {host}:{port}: {err}", err=True)
        raise typer.Exit(2) from err
    text = proposal_toml(disc)
    if output is not None:
        output.write_text(text)
        typer.echo(f"wrote {output} ({len(disc.topics)} topics)", err=True)
    else:
        typer.echo(text, nl=False)


cli_app = typer.Typer(help="MQTT: listen to a broker and propose the payload mapping.", no_args_is_help=True)
cli_app.command("discover")(discover_cmd)
