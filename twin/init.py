"""``twin init``: from an empty folder to a checked configuration beside a real line.

1. **Discover** the line's points: browse the OPC-UA server (``connectors.opcua.browse``, the same
   walk as ``twin browse``), or listen to the MQTT broker for ``--listen`` seconds.
2. **Map** each point to the ontology (:mod:`twin.semantic`): parameter, role, canonical unit, range
   converted by pint, a tag id; with confidence and alternatives.
3. **Bind** the roles the predictor and the feedback service need (:mod:`twin.roles`) to ontology
   terms; the tag map says which point is which term, so the config names terms, not ids. The
   setpoints the feedback service may write become the connector's write allow-list.
4. **Secure**: with a security policy other than ``none``, the client certificate is created
   (``connectors.opcua.security``) and the server certificate, refused on first contact and saved to
   ``<pki>/rejected``, is trusted after it was shown (``--trust-server`` without questions).
5. **Write** ``tagmap.toml`` and ``twin.toml`` with comments (what each point was taken for, how
   sure, the alternatives), **check** them as ``twin check-config`` does, and print the command
   that starts the twin and the systemd unit line.

Interactive by default (each choice is asked, the suggestion is the default answer); ``--yes``
takes every suggestion at or above ``--min-confidence`` and every ``--bind ROLE=ADDRESS``.

MQTT: ``connectors.mqtt.discover.discover_points(config, seconds)`` listens (the same listener as
``twin mqtt discover``, asking Sparkplug B edge nodes seen without a birth for one) and returns one
dict per point the connector will read: ``topic`` (the address), ``name``, ``folder``,
``description``, ``unit``, ``range``, ``data_type``, ``sparkplug`` (a Sparkplug B metric), and
``connector``: the ``[[connectors]]`` settings it needs (``payloads`` mappings for plain numbers and
custom JSON, ``sparkplug`` with the groups seen, ``missing_timestamp``); rows with ``unmapped`` name
topics nothing reads. The Sparkplug metric in the role of a setpoint the feedback service may write
goes on the connector's ``[[connectors.writes.setpoints]]`` (a DCMD); a plain topic's command topic
cannot be heard, so it gets a commented entry. MQTT seldom states ranges: the feedback service's
limits then come from ``--limit gap=LO:HI`` (or the question), else the feedback stays off with the
reason. Without that module, init listens itself and understands the built-in JSON payloads only.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from connectors.mqtt.config import MqttConnectorConfig
from connectors.mqtt.discover import discover_points
from connectors.mqtt.payload import parse_payload
from connectors.opcua.config import OpcUaConnectorConfig, SecurityConfig
from connectors.opcua.errors import ClientCertificateRejected, OpcUaError, UntrustedServerCertificate
from ontology.plant import ontology_index
from twin.config import ConfigError, check_config_report
from twin.roles import FEEDBACK_MEASURED_ROLES, FEEDBACK_ROLES, FEEDBACK_SETPOINT_ROLES, PREDICTOR_ROLES, RoleSpec
from twin.semantic import Point, Suggestion, _conv, point_from_browsed, suggest_all


class InitError(RuntimeError):
    """Set-up cannot go on; the message says why and what to do."""


@dataclass
class InitOptions:
    opcua: str | None = None
    mqtt: str | None = None  # mqtt://host:port
    out: Path = Path("twin.toml")
    tagmap: Path | None = None  # default: tagmap.toml beside out
    line_id: str = "pilot-1"
    yes: bool = False
    force: bool = False
    # OPC-UA
    security: str = "none"
    mode: str = "sign_and_encrypt"
    pki: Path = Path("pki")
    username: str | None = None
    password: str | None = None
    trust_server: bool = False
    roots: list[str] = field(default_factory=list)
    depth: int = 10
    connector_name: str = "plc"
    # MQTT
    listen_s: float = 10.0
    mqtt_topics: list[str] = field(default_factory=lambda: ["#"])
    # mapping and services
    min_confidence: float = 0.5
    binds: dict[str, str] = field(default_factory=dict)  # role key -> address
    predictor: bool = True
    feedback: bool = True
    manipulate: list[str] = field(default_factory=lambda: ["gap"])
    max_step: dict[str, float] = field(default_factory=lambda: {"gap": 5.0, "roll_temperature": 2.0})
    limits: dict[str, str] = field(default_factory=dict)  # manipulable -> "LO:HI[unit]" (--limit gap=40:200)
    store_path: Path = Path("var/twin.sqlite")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    timeout_s: float = 10.0


Ask = Callable[[str, str], str]  # (question, default) -> answer


# -- discovery -------------------------------------------------------------------------------------

def _opcua_config(opts: InitOptions) -> Any:
    pki = opts.pki
    return OpcUaConnectorConfig(
        name="init", url=opts.opcua, browse_roots=list(opts.roots) or ["i=85"], username=opts.username,
        password=opts.password, request_timeout_s=opts.timeout_s,
        security=SecurityConfig(policy=opts.security, mode=opts.mode, certificate=pki / "own" / "cert.der",
                                private_key=pki / "own" / "key.pem", trust_dir=pki / "trusted",
                                rejected_dir=pki / "rejected"))


def ensure_client_certificate(opts: InitOptions, say: Callable[[str], None]) -> None:
    """A secure policy needs the twin's application certificate: create it once (reuses `twin opcua make-cert`)."""
    from connectors.opcua import security as pki  # lazy: cryptography, only for an OPC-UA line

    if (opts.pki / "own" / "cert.der").exists():
        say(f"client certificate: {opts.pki / 'own' / 'cert.der'} (exists)")
        return
    host = urlparse(opts.opcua or "").hostname
    ips = ["127.0.0.1"] + ([host] if host and host.replace(".", "").isdigit() and host != "127.0.0.1" else [])
    paths = pki.make_certificate(opts.pki, ips=ips)
    say(f"created the client certificate {paths.cert_der}: {pki.describe(pki.load_certificate(paths.cert_der))}")
    say(f"the server's administrator must trust it (copy {paths.cert_der} into the server's trusted folder)")


async def _browse(opts: InitOptions) -> list[Any]:
    from connectors.opcua.browse import browse_variables  # lazy: asyncua, only for an OPC-UA line
    from connectors.opcua.connector import close_client, open_client  # lazy: asyncua, only for an OPC-UA line

    cfg = _opcua_config(opts)
    client = await open_client(cfg)
    try:
        return await browse_variables(client, cfg.browse_roots, max_depth=opts.depth)
    finally:
        await close_client(client)


def discover_opcua(opts: InitOptions, say: Callable[[str], None], ask: Ask | None) -> list[Point]:
    """Browse the server; with a secure policy, create the client certificate and trust the server's."""
    from connectors.opcua import security as pki  # lazy: cryptography, only for an OPC-UA line
    if opts.security != "none":
        ensure_client_certificate(opts, say)
    for _attempt in range(3):
        try:
            nodes = asyncio.run(_browse(opts))
            break
        except UntrustedServerCertificate as err:
            if err.saved_to is None:
                raise InitError(str(err)) from err
            cert = pki.load_certificate(err.saved_to)
            say(f"the server presents {pki.describe(cert)}")
            ok = opts.trust_server or (ask is not None and ask("trust this server certificate? [y/n]", "n")
                                       .strip().lower().startswith("y"))
            if not ok:
                raise InitError(f"server certificate not trusted (saved to {err.saved_to}); trust it with "
                                f"`twin opcua trust {err.saved_to} --pki {opts.pki}` or give --trust-server") from err
            say(f"trusted -> {pki.trust(err.saved_to, opts.pki / 'trusted')}")
        except ClientCertificateRejected as err:
            raise InitError(f"{err}; give the administrator {opts.pki / 'own' / 'cert.der'}, then run "
                            "`twin init` again") from err
        except (OpcUaError, ValueError) as err:
            raise InitError(str(err)) from err
    else:  # pragma: no cover - the trust loop converges in two attempts
        raise InitError("could not open a session with the server")
    numeric_or_text = [n for n in nodes if n.readable]
    say(f"browsed {opts.opcua}: {len(nodes)} variables")
    return [point_from_browsed(n) for n in numeric_or_text]


SPARKPLUG_POINTS = "__sparkplug_points__"  # key of discover_mqtt's extra: addresses that are Sparkplug metrics


def _mqtt_discoverer() -> Callable[..., Any] | None:
    return discover_points


def _readings(topic: str, payload: bytes) -> list[tuple[str, Any, str | None, bool]]:
    """(address, value, unit, has_ts) of the readings the MQTT connector itself takes from this message
    (its own parser, so init proposes only topics the running twin understands); empty if none."""
    recv = 1  # a receive time no real timestamp equals: tells readings without ts apart
    readings, _dead = parse_payload(topic, payload, recv, fill_receive_time=True)
    return [(r.address, r.value, r.unit, r.source_ts_ns != recv) for r in readings]


def discover_mqtt(opts: InitOptions, say: Callable[[str], None]) -> tuple[list[Point], dict[str, Any]]:
    """Listen to the broker; (points, extra settings for the written [[connectors]] table)."""
    u = urlparse(opts.mqtt or "")
    if u.scheme not in ("mqtt", "mqtts", "tcp") or not u.hostname:
        raise InitError(f"--mqtt {opts.mqtt!r}: expected mqtt://HOST:PORT")
    cfg = MqttConnectorConfig(name="init", host=u.hostname, port=u.port or 1883, topics=opts.mqtt_topics,
                              client_id=f"pilotline-twin-init-{os.getpid()}", username=opts.username,
                              password=opts.password)
    found = _mqtt_discoverer()
    if found is not None:
        try:
            rows = list(found(cfg, opts.listen_s))
        except OSError as err:
            raise InitError(f"cannot listen to the MQTT broker {cfg.host}:{cfg.port}: {err}") from err
        extra: dict[str, Any] = {}
        pts = []
        spb: list[str] = []
        unmapped = []
        for r in rows:
            extra.update(r.get("connector") or {})
            topic = r["topic"]
            if r.get("unmapped"):
                unmapped.append(f"{topic} ({r['unmapped']})")
                continue
            parts = topic.split("/")
            folder = r.get("folder") or (parts[-2] if len(parts) > 1 else "")
            pts.append(Point(topic, r.get("name") or parts[-1], folder, topic, r.get("description", ""), None,
                             r.get("unit"), tuple(r["range"]) if r.get("range") else None, bool(r.get("writable")),
                             r.get("data_type"), "mqtt"))
            if r.get("sparkplug"):
                spb.append(topic)
        if spb:
            extra[SPARKPLUG_POINTS] = spb
        say(f"listened to {u.hostname}:{cfg.port} ({opts.listen_s:g} s, connectors.mqtt.discover): {len(pts)} points"
            + (f" ({len(spb)} Sparkplug B metrics)" if spb else "")
            + (f", {len(unmapped)} topics with other payloads (not mapped: see `twin mqtt discover`)" if unmapped
               else ""))
        for line in unmapped[:20]:
            say(f"  not mapped: {line}")
        return pts, extra
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    seen: dict[str, tuple[Any, str | None, bool]] = {}
    refused: set[str] = set()
    lock = threading.Lock()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        with lock:
            if len(seen) + len(refused) > 10_000:  # bounded: a broker with more topics is narrowed by --topic
                return
            got = _readings(msg.topic, msg.payload)
            if not got:
                refused.add(msg.topic)
            for address, value, unit, has_ts in got:
                seen[address] = (value, unit, has_ts)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id)
    if opts.username:
        client.username_pw_set(opts.username, opts.password)
    client.on_message = on_message
    def on_connect(c: Any, *_a: Any) -> None:
        for t in opts.mqtt_topics:
            c.subscribe(t, qos=0)

    client.on_connect = on_connect
    try:
        client.connect(cfg.host, cfg.port, keepalive=30)
    except OSError as err:
        raise InitError(f"cannot reach the MQTT broker {cfg.host}:{cfg.port}: {err}") from err
    client.loop_start()
    try:
        time.sleep(opts.listen_s)
    finally:
        client.disconnect()
        client.loop_stop()
    pts = []
    for topic, (value, unit, _ts) in sorted(seen.items()):
        parts = topic.split("/")
        pts.append(Point(topic, parts[-1], parts[-2] if len(parts) > 1 else "", topic, "", None, unit, None, False,
                         "String" if isinstance(value, str) else "Double", "mqtt"))
    if not opts.mqtt_topics or opts.mqtt_topics == ["#"]:
        pts = [p for p in pts if not p.address.startswith("$")]
    say(f"listened to {cfg.host}:{cfg.port} for {opts.listen_s:g} s: {len(pts)} topics the MQTT connector reads"
        + (f", {len(refused)} topics with other payloads (not mapped: see `twin mqtt discover`)" if refused else ""))
    extra = {"missing_timestamp": "receive_time"} if any(not ts for _, _, ts in seen.values()) else {}
    return pts, extra


# -- plan ------------------------------------------------------------------------------------------

@dataclass
class Plan:
    suggestions: list[Suggestion]
    accepted: dict[str, bool]  # address -> parameter written (confidence high enough or confirmed)
    roles: dict[str, tuple[RoleSpec, Suggestion | None]]  # role key -> (spec, the point bound)
    manipulables: list[str]
    predictor: bool
    feedback: bool
    notes: list[str] = field(default_factory=list)
    limits: dict[str, tuple[float, float]] = field(default_factory=dict)  # manipulable -> (lo, hi), canonical


ROLE_KEYS: dict[str, RoleSpec] = {
    **{f"predictor.{k}": v for k, v in PREDICTOR_ROLES.items()},
    **{f"feedback.{k}": v for k, v in FEEDBACK_ROLES.items()},
    **{f"measured.{k}": v for k, v in FEEDBACK_MEASURED_ROLES.items()},
    **{f"setpoint.{k}": v for k, v in FEEDBACK_SETPOINT_ROLES.items()},
}
# short names for --bind: gap, dry_thickness, porosity, gap_setpoint, ...
BIND_ALIASES = {
    "dry_thickness": "predictor.dry_thickness", "areal_loading": "predictor.areal_loading", "gap": "predictor.gap",
    "roll_speed": "predictor.roll_speed", "roll_temperature": "predictor.roll_temperature",
    "porosity": "measured.porosity", "thickness_after": "measured.thickness_after_um",
    "gap_setpoint": "setpoint.gap", "roll_temperature_setpoint": "setpoint.roll_temperature",
}


def _retarget(s: Suggestion, spec: RoleSpec) -> None:
    """The user bound this point to a role: it takes the role's term, role and id."""
    term = ontology_index().terms[spec.term]
    s.term, s.iri, s.role, s.kind = term.local, term.iri, spec.role, term.kind
    s.tag_id, s.step = spec.default_id, spec.default_id.split(".", 1)[0]
    s.canonical_unit = term.canonical_unit
    s.range = _conv(s.point.eu_range, s.unit, term.canonical_unit) if s.point.eu_range and s.unit else None
    s.confidence = 1.0
    s.reasons = ("bound by the user",)


def make_plan(points: Sequence[Point], opts: InitOptions, ask: Ask | None, say: Callable[[str], None]) -> Plan:
    sugg = suggest_all(points)
    by_addr = {s.point.address: s for s in sugg}
    accepted = {s.point.address: s.term is not None and s.confidence >= opts.min_confidence for s in sugg}
    if ask is not None:  # interactive: confirm the uncertain ones
        for s in sugg:
            if s.term is None or accepted[s.point.address]:
                continue
            alts = ", ".join(f"{a.term} ({a.confidence:.2f})" for a in s.alternatives)
            ans = ask(f"{s.point.address} {s.point.name!r}: {s.term} / {s.role} (confidence {s.confidence:.2f}; "
                      f"alternatives: {alts or 'none'}). Take it? [y/n/<Term>]", "n").strip()
            if ans.lower().startswith("y"):
                accepted[s.point.address] = True
            elif ans and ans.lower() not in ("n", "no"):
                if ontology_index().resolve(ans) is None:
                    say(f"  {ans!r} is not a term of the ontology: left unmapped")
                else:
                    spec = RoleSpec("", ans, s.role if s.role != "setpoint" or
                                    ontology_index().terms[ans].kind == "MP" else "actual",
                                    f"{s.step}.{ans.lower()}", "", "")
                    _retarget(s, spec)
                    accepted[s.point.address] = True
    for key in opts.limits:
        if key not in FEEDBACK_SETPOINT_ROLES:
            raise InitError(f"--limit {key}=...: unknown setpoint; known: {', '.join(FEEDBACK_SETPOINT_ROLES)}")
    for key, addr in opts.binds.items():
        full = BIND_ALIASES.get(key, key)
        if full not in ROLE_KEYS:
            raise InitError(f"--bind {key}=...: unknown role; known: {', '.join(sorted(BIND_ALIASES))}")
        if addr not in by_addr:
            raise InitError(f"--bind {key}={addr}: no such point (browsed addresses: "
                            f"{', '.join(sorted(by_addr)[:10])}...)")
        _retarget(by_addr[addr], ROLE_KEYS[full])
        accepted[addr] = True
    # unique ids again after user choices
    used: dict[str, str] = {}
    for s in sorted(sugg, key=lambda x: -x.confidence):
        base, k = s.tag_id, 2
        while s.tag_id in used and used[s.tag_id] != s.point.address:
            s.tag_id, k = f"{base}_{k}", k + 1
        used[s.tag_id] = s.point.address
    roles: dict[str, tuple[RoleSpec, Suggestion | None]] = {}
    for key, spec in ROLE_KEYS.items():
        cands = [s for s in sugg if accepted[s.point.address] and s.term == spec.term and s.role == spec.role]
        cands.sort(key=lambda s: (s.tag_id != spec.default_id, -s.confidence))
        pick = cands[0] if cands else None
        if ask is not None and len(cands) > 1:
            ans = ask(f"{spec.what}: which point? " + ", ".join(f"{c.point.address} ({c.point.name})" for c in cands),
                      cands[0].point.address).strip()
            pick = next((c for c in cands if c.point.address == ans), pick)
            if pick is not None and pick.tag_id != spec.default_id:
                other = next((c for c in sugg if c.tag_id == spec.default_id), None)
                if other is not None:
                    other.tag_id, pick.tag_id = pick.tag_id, spec.default_id
        if ask is not None and pick is None and not key.startswith("feedback.") and (
                key.startswith("predictor.") or opts.feedback):
            ans = ask(f"{spec.what} ({spec.term}/{spec.role}): no point found; its address (empty: none)", "").strip()
            if ans in by_addr and by_addr[ans].tag_id != spec.default_id:
                pick = by_addr[ans]
                _retarget(pick, spec)
                accepted[ans] = True
            elif ans:
                say(f"  {ans!r} is not a browsed address: {spec.term}/{spec.role} stays unbound")
        roles[key] = (spec, pick)
    notes: list[str] = []
    missing_pred = [spec.term + "/" + spec.role for k, (spec, s) in roles.items() if k.startswith("predictor.")
                    and s is None]
    predictor = opts.predictor and not missing_pred
    if opts.predictor and missing_pred:
        notes.append(f"predictor disabled: no point found for {', '.join(missing_pred)} (bind one with --bind, "
                     "or add it to the tag map, then set [predictor] enabled = true)")
    manips = [m for m in opts.manipulate if roles.get(f"setpoint.{m}", (None, None))[1] is not None]
    if ask is not None and opts.feedback:
        for m in list(manips):
            sp = roles[f"setpoint.{m}"][1]
            assert sp is not None
            if not ask(f"may the feedback service propose writes to {sp.point.address} ({sp.point.name}, "
                       f"{m} setpoint; each needs approval)? [y/n]", "y").strip().lower().startswith("y"):
                manips.remove(m)
    missing_fb = [spec.term + "/" + spec.role for k, (spec, s) in roles.items()
                  if (k.startswith("feedback.") or k == "measured.porosity") and s is None]
    limits: dict[str, tuple[float, float]] = {}
    for m in list(manips):
        sp = roles[f"setpoint.{m}"][1]
        assert sp is not None
        text = opts.limits.get(m)
        if text is None and sp.range is None and ask is not None and opts.feedback:
            text = ask(f"limits of the {m} setpoint {sp.point.address} (it states no range), LO:HI in "
                       f"{sp.canonical_unit} or with a unit (0.04:0.2mm); empty: none", "").strip() or None
        if text is not None:
            limits[m] = parse_limit(m, text, sp.canonical_unit)
        elif sp.range is None:
            manips.remove(m)
            missing_fb.append(f"limits of the {m} setpoint ({sp.point.address} states no range: give --limit "
                              f"{m}=LO:HI in {sp.canonical_unit}, or with a unit such as {m}=0.04:0.2mm)")
    if not manips and not any(x.startswith("limits of") for x in missing_fb):
        missing_fb.append("a writable setpoint (CalenderGap/setpoint or CalenderRollTemperature/setpoint)")
    feedback = opts.feedback and predictor and not missing_fb
    if opts.feedback and not feedback:
        why = ", ".join(missing_fb) if missing_fb else "the predictor is disabled"
        notes.append(f"feedback disabled: {why}")
    return Plan(sugg, accepted, roles, manips, predictor, feedback, notes, limits)


def parse_limit(name: str, text: str, canonical: str) -> tuple[float, float]:
    """``--limit gap=40:200`` (canonical unit) or ``gap=0.04:0.2mm`` (converted by pint) -> (lo, hi) canonical."""
    import re

    hit = re.fullmatch(r"\s*([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*:\s*([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*(\S.*)?",
                       text)
    if hit is None:
        raise InitError(f"--limit {name}={text}: expected LO:HI with an optional unit (40:200 or 0.04:0.2mm)")
    try:
        lo, hi = float(hit.group(1)), float(hit.group(2))
    except ValueError as err:
        raise InitError(f"--limit {name}={text}: {err}") from err
    unit = (hit.group(3) or "").strip()
    if unit and unit != canonical:
        conv = _conv((lo, hi), unit, canonical)
        if conv is None:
            raise InitError(f"--limit {name}={text}: {unit!r} does not convert to {canonical}")
        lo, hi = conv
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InitError(f"--limit {name}={text}: LO must be below HI")
    return lo, hi


# -- writing ---------------------------------------------------------------------------------------

def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _num(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x)) if not float(x).is_integer() else f"{x:.1f}"


def render_tagmap(plan: Plan, source_url: str, opts: InitOptions, *, gap_tag: bool = True) -> str:
    idx = ontology_index()
    n_map = sum(1 for s in plan.suggestions if plan.accepted[s.point.address])
    out = [f"# Tag map written by `twin init` from {source_url} on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
           f"# {len(plan.suggestions)} points, {n_map} mapped to an ontology parameter (docs/ontology.md). Each",
           "# tag says what the point was taken for, how sure the mapping is and the alternatives; review",
           "# the ones marked REVIEW. Values are stored in the canonical unit; ranges are in it too.",
           "version = 1", "", "[plant]", f"name = {_q(source_url)}", ""]
    for s in sorted(plan.suggestions, key=lambda x: x.tag_id):
        p = s.point
        mapped = plan.accepted[p.address]
        term = idx.terms.get(s.term) if s.term and mapped else None
        alts = ", ".join(f"{a.term} {a.confidence:.2f}" for a in s.alternatives)
        head = f"# {p.name!s} ({p.path or p.address})"
        if p.description:
            head += f": {p.description}"
        out.append(head)
        if term is not None:
            flag = "" if s.confidence >= opts.min_confidence else "  REVIEW"
            out.append(f"# -> {term.local} ({term.label}), {s.role}, confidence {s.confidence:.2f}{flag}"
                       + (f"; alternatives: {alts}" if alts else "") + (f"; {'; '.join(s.reasons)}" if s.reasons else ""))
        elif s.term:
            out.append(f"# REVIEW: not mapped (best guess {s.term}, confidence {s.confidence:.2f}"
                       + (f"; alternatives: {alts}" if alts else "") + "): set parameter = \"<Term>\" if you know it")
        else:
            out.append("# no ontology parameter fits: stored as a plain tag")
        unit_note = {"display name (pint)": f"unit {p.unit_display!r} read by pint from the display name "
                                            "(its UNECE code is not in connectors/opcua/units.py)"}.get(s.unit_how)
        if unit_note:
            out.append(f"# {unit_note}")
        if term is not None and s.unit is None and s.value_type != "string" and term.canonical_unit not in (
                "", "dimensionless"):
            out.append(f"# REVIEW: the source states no unit; its values are taken as {term.canonical_unit}")
        out.append("[[tags]]")
        out.append(f"id = {_q(s.tag_id)}")
        out.append(f"step = {_q(s.step)}")
        kind = s.kind if term is not None else ("TRACE" if s.value_type == "string" else "MP")
        role = s.role if term is not None else ("setpoint" if p.writable else "actual")
        if kind in ("MP", "TRACE") and role == "measured":
            role = "actual"
        out.append(f'kind = "{kind}"')
        out.append(f'role = "{role}"')
        if term is not None:
            out.append(f"parameter = {_q(term.local)}")
        canonical = s.canonical_unit if term is not None else (
            "dimensionless" if s.value_type == "string" or s.unit is None else s.canonical_unit)
        out.append(f"canonical_unit = {_q(canonical)}")
        if s.value_type == "string":
            out.append('value_type = "string"')
            if s.traceability and term is not None:
                out.append(f'traceability = "{s.traceability}"')
        elif s.traceability and term is not None:
            out.append(f'traceability = "{s.traceability}"')
        rng = s.range if term is not None or canonical == s.canonical_unit else None
        if rng is not None and s.value_type != "string":
            src = f" (source: {p.eu_range[0]:g} .. {p.eu_range[1]:g} {s.unit})" if p.eu_range and s.unit and \
                s.unit != canonical else ""
            out.append(f"range = [{_num(rng[0])}, {_num(rng[1])}]" + (f"  #{src}" if src else ""))
        online = term.online if term is not None else None
        if online is False:
            out.append("online = false")
        if p.description:
            out.append(f"description = {_q(p.description)}")
        src_unit = f", unit = {_q(s.unit)}" if s.unit and s.value_type != "string" else ""
        out.append(f"sources = [ {{ {p.source} = {_q(p.address)}{src_unit} }} ]")
        out.append("")
    if opts.opcua and gap_tag:
        out += ["# data gap of the OPC-UA connector (seconds without data), see docs/opcua.md", "[[tags]]",
                f'id = "connector.{opts.connector_name}_gap"', 'step = "line"', 'kind = "TRACE"',
                'canonical_unit = "s"', "range = [0, 1e9]",
                f'sources = [ {{ opcua = "__connector__/{opts.connector_name}/gap", unit = "s" }} ]', ""]
    return "\n".join(out)


def _ref_comment(s: Suggestion | None) -> str:
    if s is None:
        return "not found"
    return f"{s.tag_id} <- {s.point.address} {s.point.name!r}" + (f" ({s.unit})" if s.unit else "")


def render_config(plan: Plan, opts: InitOptions, tagmap_rel: str, extra_connector: dict[str, Any]) -> str:
    src = opts.opcua or opts.mqtt
    out = [f"# twin.toml written by `twin init` from {src} on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
           "# Every field is documented in docs/configuration.md. Check:  twin check-config THIS --connect",
           "# Start:  twin run --config THIS",
           f"line_id = {_q(opts.line_id)}",
           f"tagmap = {_q(tagmap_rel)}               # source addresses -> tags, written with this file",
           'log_level = "info"', "",
           "[store]", 'backend = "embedded"               # embedded | influxdb (docs/influxdb.md)',
           "[store.embedded]", f"path = {_q(str(opts.store_path))}", "",
           "[api]", f"host = {_q(opts.api_host)}               # loopback; see docs/deploy.md to serve others",
           f"port = {opts.api_port}",
           "# writes (approve a proposal) need a token: `twin token NAME --write` prints an [[api.tokens]] entry", ""]
    writes = [s.point.address for m in plan.manipulables if plan.feedback
              for s in [plan.roles[f"setpoint.{m}"][1]] if s is not None]
    mapped = [s.point.address for s in plan.suggestions]
    if opts.opcua:
        out += ["[[connectors]]", 'kind = "opcua"', f"name = {_q(opts.connector_name)}", f"url = {_q(opts.opcua)}",
                'mode = "subscription"',
                "nodes = [" + ", ".join(_q(a) for a in mapped) + "]"]
        if opts.username:
            out.append(f"username = {_q(opts.username)}          # password: TWIN_CONNECTORS__0__PASSWORD")
        out += ["[connectors.security]", f'policy = "{opts.security}"']
        if opts.security != "none":
            pki = opts.pki.resolve()
            out += [f'mode = "{opts.mode}"', f"certificate = {_q(str(pki / 'own' / 'cert.der'))}",
                    f"private_key = {_q(str(pki / 'own' / 'key.pem'))}",
                    f"trust_dir = {_q(str(pki / 'trusted'))}", f"rejected_dir = {_q(str(pki / 'rejected'))}"]
        out += ["[connectors.subscription]", "publishing_interval_ms = 200.0", "[connectors.writes]",
                "allowed_nodes = [" + ", ".join(_q(a) for a in writes) + "]"
                + "   # the only nodes the feedback service may write (each write needs approval)", ""]
    else:
        out += _mqtt_connector(plan, opts, mapped, extra_connector)
    out += ["# Surrogate predictions of the calendered electrode. Each model input is bound to an ontology term and",
            "# role (twin/roles.py): the tag map's tag with that parameter and role feeds it, whatever its id.",
            "[predictor]", f"enabled = {'true' if plan.predictor else 'false'}"]
    out += [f"# {n}" for n in plan.notes if n.startswith("predictor")]
    out.append("[predictor.inputs]")
    for key, spec in PREDICTOR_ROLES.items():
        s = plan.roles[f"predictor.{key}"][1]
        out.append(f'{key} = "{spec.term}/{spec.role}"'.ljust(52) + f"# {_ref_comment(s)}")
    out += ["", "# Proposals of calender settings, approval-gated (docs/feedback.md).", "[feedback]",
            f"enabled = {'true' if plan.feedback else 'false'}"]
    out += [f"# {n}" for n in plan.notes if n.startswith("feedback")]
    for key, spec in FEEDBACK_ROLES.items():
        s = plan.roles[f"feedback.{key}"][1]
        out.append(f'{key} = "{spec.term}/{spec.role}"'.ljust(52) + f"# {_ref_comment(s)}")
    for key, spec in FEEDBACK_MEASURED_ROLES.items():
        s = plan.roles[f"measured.{key}"][1]
        if s is None and key != "porosity":
            continue
        out += [f"[feedback.measured.{key}]", f'tag = "{spec.term}/{spec.role}"'.ljust(52) + f"# {_ref_comment(s)}"]
    for m in plan.manipulables or ["gap"]:
        spec = FEEDBACK_SETPOINT_ROLES[m]
        s = plan.roles[f"setpoint.{m}"][1]
        unit = s.canonical_unit if s is not None else ""
        out += ["[[feedback.manipulables]]", f'name = "{m}"',
                f'setpoint_tag = "{spec.term}/{spec.role}"'.ljust(52) + f"# {_ref_comment(s)}",
                *([f"min = {_num(plan.limits[m][0])}", f"max = {_num(plan.limits[m][1])}".ljust(52)
                   + f"# {unit}, given with --limit"] if m in plan.limits else []),
                f"max_step = {_num(opts.max_step.get(m, 5.0))}".ljust(52)
                + f"# {unit} per proposal; limits: the tag's range (min / max to narrow it)",
                "auto_apply = false"]
    out.append("")
    return "\n".join(out)


def _tv(v: Any) -> str:
    """A TOML value (inline tables for dicts)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return _num(v) if isinstance(v, float) else str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_tv(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_q(str(k))} = {_tv(x)}" for k, x in v.items()) + " }"
    return _q(str(v))


def _limits_in(plan: Plan, m: str, s: Suggestion, unit: str | None) -> tuple[float, float] | None:
    """The manipulable's limits (given, else the tag's range), canonical -> ``unit``."""
    lim = plan.limits.get(m) or s.range
    if lim is None or not unit or unit == s.canonical_unit:
        return lim
    return _conv(lim, s.canonical_unit, unit)


def _mqtt_connector(plan: Plan, opts: InitOptions, mapped: list[str], extra_connector: dict[str, Any]) -> list[str]:
    """The [[connectors]] table of an MQTT line: plain topics, payload mappings, Sparkplug B, setpoint writes."""
    u = urlparse(opts.mqtt or "")
    extra = dict(extra_connector)
    spb = set(extra.pop(SPARKPLUG_POINTS, []))
    spb_cfg = extra.pop("sparkplug", None)
    payloads = extra.pop("payloads", [])
    plain = [a for a in mapped if a not in spb]
    topics = sorted({a.split("/", 1)[0] + "/#" for a in plain})
    if not topics:
        topics = [f"spBv1.0/{g}/#" for g in spb_cfg["groups"]] if spb_cfg else list(opts.mqtt_topics)
    out = ["[[connectors]]", 'kind = "mqtt"', 'name = "broker"', f"host = {_q(u.hostname or '')}",
           f"port = {u.port or 1883}",
           f"topics = {_tv(topics)}" + ("   # plain topics; Sparkplug B: [connectors.sparkplug] groups" if spb else "")]
    if opts.username:
        out.append(f"username = {_q(opts.username)}          # password: TWIN_CONNECTORS__0__PASSWORD")
    for k, v in extra.items():
        out.append(f"{k} = {_tv(v)}" + ("   # readings of the built-in format without \"ts\" get the receive time"
                                       if k == "missing_timestamp" else ""))
    if payloads:
        out += ["# Payload field mappings proposed from the messages seen (connectors/mqtt/README.md, \"Payload field",
                "# mapping\"); the first pattern that matches a topic wins. Check the time zone of timestamps without",
                "# an offset, and the unit of plain numbers (the tag map's source unit, else the canonical unit)."]
    for t in payloads:
        out.append("[[connectors.payloads]]")
        for k, v in t.items():
            note = "   # of timestamps without an offset: the zone the source writes them in" if k == "timezone" else ""
            out.append(f"{k} = {_tv(v)}{note}")
    if spb_cfg:
        out += ["# Sparkplug B host application: births, aliases, sequence numbers (a gap asks the edge node for a",
                "# rebirth), deaths; host_id publishes the twin's STATE (connectors/mqtt/README.md, \"Sparkplug B\")",
                "[connectors.sparkplug]"] + [f"{k} = {_tv(v)}" for k, v in spb_cfg.items()]
    setpoints, todo = [], []
    for m in plan.manipulables if plan.feedback else []:
        s = plan.roles[f"setpoint.{m}"][1]
        if s is None:
            continue
        lim = _limits_in(plan, m, s, s.unit)
        if s.point.address in spb:
            sp = ["[[connectors.writes.setpoints]]", f"address = {_q(s.point.address)}",
                  "sparkplug = true                  # written with a DCMD, confirmed by the metric's next value"]
            if lim is not None:
                sp += [f"min = {_num(lim[0])}", f"max = {_num(lim[1])}" + (f"   # {s.unit}" if s.unit else "")]
            setpoints.append(sp)
        else:
            todo.append(s.point.address)
    if setpoints or todo:
        out += ["# Setpoints the feedback service may write (each write needs approval; nothing else is ever",
                "# published as a command). docs/feedback.md, \"MQTT write-back\".", "[connectors.writes]",
                "confirm_timeout_s = 5.0"]
        for sp in setpoints:
            out += sp
        for a in todo:
            out += [f"# {a} is a plain MQTT topic: the controller's command topic is not known. To let the",
                    "# feedback service write it, add:", "# [[connectors.writes.setpoints]]", f"# address = {_q(a)}",
                    '# command_topic = "..."            # where the controller takes the new value']
    out.append("")
    return out


def tagmap_for_browse(nodes: Sequence[Any], source_url: str, *, min_confidence: float = 0.5) -> tuple[str, Plan]:
    """``twin browse --write-tagmap``: the same semantic tag map as ``twin init`` writes (no questions, no
    connector gap tag), and the plan with every suggestion."""
    opts = InitOptions(opcua=source_url, yes=True, min_confidence=min_confidence, predictor=False, feedback=False)
    plan = make_plan([point_from_browsed(n) for n in nodes], opts, None, lambda _m: None)
    return render_tagmap(plan, source_url, opts, gap_tag=False), plan


def run_init(opts: InitOptions, *, ask: Ask | None, say: Callable[[str], None]) -> int:
    """The whole set-up; returns the exit status (0 ok, 2 a problem named in the output)."""
    if (opts.opcua is None) == (opts.mqtt is None):
        raise InitError("give the line's server: --opcua opc.tcp://HOST:PORT or --mqtt mqtt://HOST:PORT")
    out = opts.out
    tagmap = opts.tagmap or out.with_name("tagmap.toml")
    for f in (out, tagmap):
        if f.exists() and not opts.force and (
                ask is None or not ask(f"{f} exists; replace it? [y/n]", "n").strip().lower().startswith("y")):
            raise InitError(f"{f} exists (give --force to replace it)")
    extra: dict[str, Any] = {}
    if opts.opcua:
        points = discover_opcua(opts, say, ask)
    else:
        points, extra = discover_mqtt(opts, say)
    if not points:
        raise InitError("no points found: nothing to map (check --root / --topic and that the line publishes)")
    plan = make_plan(points, opts, ask, say)
    say(f"{'point':<28} {'->':<2} {'tag':<38} {'parameter / role':<40} {'conf':>5}  unit")
    for s in sorted(plan.suggestions, key=lambda x: x.tag_id):
        mapped = plan.accepted[s.point.address]
        term = f"{s.term}/{s.role}" if mapped and s.term else f"({s.term or '-'})"
        unit = f"{s.unit or '-'} -> {s.canonical_unit}" if s.unit and s.unit != s.canonical_unit else (s.unit or "")
        say(f"{s.point.name[:28]:<28} -> {s.tag_id:<38} {term:<40} {s.confidence:5.2f}  {unit}")
    for n in plan.notes:
        say(f"note: {n}")
    if ask is not None and not ask(f"write {tagmap} and {out}? [y/n]", "y").strip().lower().startswith("y"):
        raise InitError("nothing written")
    out.parent.mkdir(parents=True, exist_ok=True)
    tagmap.parent.mkdir(parents=True, exist_ok=True)
    tagmap.write_text(render_tagmap(plan, opts.opcua or opts.mqtt or "", opts), encoding="utf-8")
    rel = os.path.relpath(tagmap.resolve(), out.resolve().parent)
    out.write_text(render_config(plan, opts, rel, extra), encoding="utf-8")
    say(f"wrote {tagmap} and {out}")
    try:
        cfg, tm, _res, warnings = check_config_report(out)
    except ConfigError as err:
        say(f"check-config: {err}")
        return 2
    for w in warnings:
        say(f"warning: {w}")
    say(f"check-config: ok ({len(tm.tags)} tags; predictor {'on' if cfg.predictor.enabled else 'off'}, "
        f"feedback {'on' if cfg.feedback.enabled else 'off'})")
    twin_bin = shutil.which("twin") or str(Path(sys.executable).with_name("twin"))
    cfg_abs = out.resolve()
    say("start the twin:")
    print(f"{twin_bin} run --config {cfg_abs}", flush=True)
    say("as a service (deploy/systemd/pilotline-twin.service), the unit's line:")
    print(f"ExecStart={twin_bin} run --config {cfg_abs}", flush=True)
    return 0
