"""The simulated pilot line as an OPC-UA server (asyncua).

Address space (namespace ``urn:pilotline-twin:simline``, index 2)::

    Objects/PilotLine/{Line, Coater, Dryer, Calender, Gauges}/<Variable>   e.g. ns=2;s=Calender.GapActual
    Objects/PilotLine/Synthetic/Tag000 ...                                 with --extra-tags N

Every variable carries EngineeringUnits (EUInformation, UNECE codes) and EURange (machine limits for
setpoints, measuring range otherwise). Setpoints are writable; a write outside the machine limits is
refused with BadOutOfRange, a write of the wrong type with BadTypeMismatch, a write to anything else
with BadNotWritable. Values are stamped with the time of the simulation step (SourceTimestamp).
Synthetic tags count up by one per step (their value is the step number), so a test can check that
every change arrived exactly once.

Security: by default only policy None is offered and only on a loopback address, so any OPC-UA client
can browse it. ``ServerSecurity`` makes it require Basic256Sha256 / Aes128_Sha256_RsaOaep /
Aes256_Sha256_RsaPss (Sign and/or SignAndEncrypt) with client certificates from its trust store
(``<pki>/trusted``; refused ones land in ``<pki>/rejected``); a session on a None channel is refused
with BadSecurityPolicyRejected. ``users`` makes user name and password mandatory.

Run it: ``python -m twin.simline.opcua_server --port 4840`` or ``twin simulate-line --port 4840``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager

from connectors.opcua import security as pki
from connectors.opcua.units import UNECE_NAMESPACE, eu_for
from twin.simline.model import (
    SIGNALS,
    LineParams,
    LineSimulation,
    Outputs,
    Scenario,
    SetpointError,
    Setpoints,
    Signal,
    check_setpoint,
)

log = logging.getLogger("twin.simline.server")

NAMESPACE_URI = "urn:pilotline-twin:simline"
APPLICATION_URI = "urn:pilotline-twin:simline:server"

POLICY_TYPES = {
    ("basic256sha256", "sign"): ua.SecurityPolicyType.Basic256Sha256_Sign,
    ("basic256sha256", "sign_and_encrypt"): ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ("aes128_sha256_rsaoaep", "sign"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ("aes128_sha256_rsaoaep", "sign_and_encrypt"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ("aes256_sha256_rsapss", "sign"): ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ("aes256_sha256_rsapss", "sign_and_encrypt"): ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}
ALL_POLICIES = ("basic256sha256", "aes128_sha256_rsaoaep", "aes256_sha256_rsapss")

_VARIANTS = {"double": ua.VariantType.Double, "int": ua.VariantType.Int32, "string": ua.VariantType.String}


@dataclass
class ServerSecurity:
    """Require message security and trusted client certificates."""

    pki_dir: Path
    policies: tuple[str, ...] = ALL_POLICIES
    modes: tuple[str, ...] = ("sign_and_encrypt",)

    def policy_types(self) -> list[ua.SecurityPolicyType]:
        out = []
        for p in self.policies:
            for m in self.modes:
                if (p, m) not in POLICY_TYPES:
                    raise ValueError(f"unknown security policy/mode {p}/{m}; policies: {', '.join(ALL_POLICIES)}, "
                                     "modes: sign, sign_and_encrypt")
                out.append(POLICY_TYPES[(p, m)])
        return out


class _Users(UserManager):
    def __init__(self, users: dict[str, str] | None) -> None:
        self.users = users

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if self.users is None:
            return User(role=UserRole.User, name=username)
        if username is None or username not in self.users:
            return None
        if hmac.compare_digest(self.users[username].encode(), (password or "").encode()):
            return User(role=UserRole.User, name=username)
        return None


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerStats:
    ticks: int = 0
    overruns: int = 0
    writes_accepted: int = 0
    writes_refused: int = 0
    sessions_refused: int = 0
    refused_certificates: list[str] = field(default_factory=list)


class SimLineServer:
    """The line behind an OPC-UA endpoint. ``async with SimLineServer(port=...) as srv: ...``"""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 4840, seed: int = 0, rate_hz: float = 10.0,
                 extra_tags: int = 0, time_scale: float = 1.0, scenario: Scenario | None = None,
                 params: LineParams | None = None, setpoints: Setpoints | None = None,
                 security: ServerSecurity | None = None, users: dict[str, str] | None = None,
                 allow_insecure_remote: bool = False, sim: LineSimulation | None = None) -> None:
        if rate_hz <= 0 or time_scale <= 0:
            raise ValueError("rate_hz and time_scale must be > 0")
        if security is None and not _is_loopback(host) and not allow_insecure_remote:
            raise ValueError(f"refusing to serve policy None on {host}: it is not a loopback address "
                             "(use security, or allow_insecure_remote=True / --insecure-remote)")
        self.host, self.port = host, port
        self.rate_hz, self.time_scale = rate_hz, time_scale
        self.extra_tags = extra_tags
        self.security = security
        self.users = users
        self.sim = sim or LineSimulation(params, setpoints, seed=seed, scenario=scenario)
        self.stats = ServerStats()
        self.extra_seq = 0  # value of every synthetic tag after the last step
        self.on_tick: list[Callable[[Outputs, int], object]] = []  # (outputs, source ts ns) after each step
        self.server: Server | None = None
        self._nodes: dict[str, ua.NodeId] = {}
        self._sig_by_node: dict[ua.NodeId, Signal] = {}
        self._extra_nodes: list[ua.NodeId] = []
        self._last: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._paused = asyncio.Event()
        self._paused.set()  # set = running
        self._trust: pki.TrustStore | None = None
        self.idx = 2

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}"

    @property
    def certificate_path(self) -> Path | None:
        return self.security.pki_dir / "own" / "cert.der" if self.security else None

    def node_id(self, signal_id: str) -> str:
        """The NodeId string of a signal, e.g. 'ns=2;s=Calender.GapActual'."""
        return self._nodes[signal_id].to_string()

    def extra_node_ids(self) -> list[str]:
        return [n.to_string() for n in self._extra_nodes]

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> SimLineServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        server = Server(user_manager=_Users(self.users))
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("pilotline-twin simulated line")
        await server.set_application_uri(APPLICATION_URI)
        server.product_uri = "urn:pilotline-twin"
        server.allow_remote_admin(False)
        tokens: list[type] = [ua.UserNameIdentityToken] if self.users is not None else \
            [ua.AnonymousIdentityToken, ua.UserNameIdentityToken]
        if self.security is not None:
            await self._setup_security(server)
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens(tokens)
        self.server = server
        await self._build(server)
        self._wrap_writes(server)
        await self._publish(self.sim.outputs or self.sim.advance(1.0 / self.rate_hz * self.time_scale))
        await server.start()
        self._task = asyncio.create_task(self._loop(), name="simline")
        log.info("simulated line on %s (%s)", self.url,
                 "policy None" if self.security is None else
                 f"{', '.join(self.security.policies)} / {', '.join(self.security.modes)}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping must not raise
                pass
            self._task = None
        if self.server is not None:
            try:
                await self.server.stop()
            except Exception:  # noqa: BLE001 - stopping must not raise
                pass
            self.server = None

    def pause(self) -> None:
        """Stop stepping the line (values freeze; the server keeps serving)."""
        self._paused.clear()

    def resume(self) -> None:
        self._paused.set()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            while True:
                await asyncio.sleep(3600)
        finally:
            await self.stop()

    # -- security ----------------------------------------------------------------------------------
    async def _setup_security(self, server: Server) -> None:
        sec = self.security
        assert sec is not None
        own = sec.pki_dir / "own"
        if not (own / "cert.der").exists() or not (own / "key.pem").exists():
            hosts = sorted({socket.gethostname(), "localhost"} | ({self.host} if not _is_ip(self.host) else set()))
            ips = sorted({"127.0.0.1"} | ({self.host} if _is_ip(self.host) else set()))
            pki.make_certificate(sec.pki_dir, application_uri_=APPLICATION_URI, common_name_="pilotline-twin simline",
                                 hostnames=hosts, ips=ips, server=True, overwrite=True)
            log.info("created the server certificate %s", own / "cert.der")
        (sec.pki_dir / "trusted").mkdir(parents=True, exist_ok=True)
        await server.load_certificate(str(own / "cert.der"))
        await server.load_private_key(str(own / "key.pem"))
        server.set_security_policy(sec.policy_types())
        self._trust = pki.TrustStore(sec.pki_dir / "trusted")
        server.set_certificate_validator(self._validate_client_certificate)
        iserver = server.iserver
        orig_create = iserver.create_session

        def create_session(name: str, user: User = User(role=UserRole.Anonymous), external: bool = False) -> Any:
            session = orig_create(name, user=user, external=external)
            orig_activate = session.activate_session

            def activate_session(params: ua.ActivateSessionParameters, peer_certificate: bytes | None) -> Any:
                # asyncua lets a session run on a None channel even when None is not offered: refuse it
                if not peer_certificate:
                    self.stats.sessions_refused += 1
                    log.warning("refused a session without message security (policy None is not offered)")
                    raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
                self._check_trusted(bytes(peer_certificate))
                return orig_activate(params, peer_certificate)

            session.activate_session = activate_session
            return session

        iserver.create_session = create_session

    def _check_trusted(self, der: bytes) -> None:
        assert self._trust is not None and self.security is not None
        reason = self._trust.check(der)
        if reason is None:
            return
        saved = pki.save_rejected(der, self.security.pki_dir / "rejected")
        self.stats.sessions_refused += 1
        self.stats.refused_certificates.append(pki.fingerprint(der))
        log.warning("refused client certificate (%s), saved to %s; trust it with: twin opcua trust %s --pki %s",
                    reason, saved, saved, self.security.pki_dir)
        raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    async def _validate_client_certificate(self, cert: Any, app_description: ua.ApplicationDescription) -> None:
        self._check_trusted(pki.cert_der(cert))

    # -- address space -----------------------------------------------------------------------------
    async def _build(self, server: Server) -> None:
        idx = await server.register_namespace(NAMESPACE_URI)
        self.idx = idx
        root = await server.nodes.objects.add_object(ua.NodeId("PilotLine", idx), ua.QualifiedName("PilotLine", idx))
        folders: dict[str, Any] = {}
        out = self.sim.outputs or self.sim.advance(1e-3)
        for sig in SIGNALS:
            if sig.folder not in folders:
                folders[sig.folder] = await root.add_object(ua.NodeId(sig.folder, idx),
                                                            ua.QualifiedName(sig.folder, idx))
            name = sig.node.split(".", 1)[1]
            vt = _VARIANTS[sig.value_type]
            v = out.values[sig.id]
            init = float(v) if vt == ua.VariantType.Double else int(v) if vt == ua.VariantType.Int32 else str(v)
            nid = ua.NodeId(sig.node, idx)
            var = await folders[sig.folder].add_variable(nid, ua.QualifiedName(name, idx), ua.Variant(init, vt))
            await var.write_attribute(ua.AttributeIds.Description,
                                      ua.DataValue(ua.Variant(ua.LocalizedText(sig.description),
                                                              ua.VariantType.LocalizedText)))
            if sig.unit is not None:
                eu = eu_for(sig.unit)
                info = ua.EUInformation(NamespaceUri=UNECE_NAMESPACE, UnitId=eu.unit_id,
                                        DisplayName=ua.LocalizedText(eu.display),
                                        Description=ua.LocalizedText(eu.description))
                await var.add_property(ua.NodeId(f"{sig.node}.EngineeringUnits", idx),
                                       ua.QualifiedName("EngineeringUnits", 0), info,
                                       datatype=ua.NodeId(ua.ObjectIds.EUInformation))
            if sig.range is not None and sig.value_type == "double":
                await var.add_property(ua.NodeId(f"{sig.node}.EURange", idx), ua.QualifiedName("EURange", 0),
                                       ua.Range(Low=float(sig.range[0]), High=float(sig.range[1])),
                                       datatype=ua.NodeId(ua.ObjectIds.Range))
            if sig.setpoint:
                await var.set_writable(True)
            self._nodes[sig.id] = nid
            self._sig_by_node[nid] = sig
        if self.extra_tags:
            folder = await root.add_object(ua.NodeId("Synthetic", idx), ua.QualifiedName("Synthetic", idx))
            width = max(3, len(str(self.extra_tags - 1)))
            for i in range(self.extra_tags):
                nid = ua.NodeId(f"Synthetic.Tag{i:0{width}d}", idx)
                await folder.add_variable(nid, ua.QualifiedName(f"Tag{i:0{width}d}", idx),
                                          ua.Variant(self.extra_seq, ua.VariantType.Int64))
                self._extra_nodes.append(nid)

    # -- setpoint writes ---------------------------------------------------------------------------
    def _wrap_writes(self, server: Server) -> None:
        service = server.iserver.attribute_service
        orig_write = service.write

        async def write(params: ua.WriteParameters, user: User = User(role=UserRole.Admin)) -> list[ua.StatusCode]:
            results: list[ua.StatusCode | None] = [None] * len(params.NodesToWrite)
            passed: list[tuple[int, ua.WriteValue, str | None, float | int | None]] = []
            now = datetime.now(UTC)
            for i, wv in enumerate(params.NodesToWrite):
                sig = self._sig_by_node.get(wv.NodeId)
                if sig is None or user.role == UserRole.Admin:
                    passed.append((i, wv, None, None))  # not a line variable, or the server itself
                    continue
                if wv.AttributeId != ua.AttributeIds.Value or not sig.setpoint:
                    results[i] = ua.StatusCode(ua.StatusCodes.BadNotWritable)
                    continue
                variant = wv.Value.Value if wv.Value is not None else None
                expected = _VARIANTS[sig.value_type]
                if variant is None or variant.VariantType != expected:
                    results[i] = ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
                    continue
                try:
                    v = check_setpoint(sig.setpoint, variant.Value)
                except SetpointError as err:
                    results[i] = ua.StatusCode(ua.StatusCodes.BadOutOfRange if err.code == "out_of_range"
                                               else ua.StatusCodes.BadTypeMismatch)
                    continue
                stamped = ua.WriteValue(NodeId=wv.NodeId, AttributeId=wv.AttributeId,
                                        Value=ua.DataValue(ua.Variant(variant.Value, expected), SourceTimestamp=now,
                                                           ServerTimestamp=now))
                passed.append((i, stamped, sig.setpoint, v))
            if passed:
                sub = ua.WriteParameters()
                sub.NodesToWrite = [wv for _, wv, _, _ in passed]
                res = await orig_write(sub, user=user)
                for (i, _, name, value), st in zip(passed, res):
                    results[i] = st
                    if name is not None and value is not None and st.is_good():
                        self.sim.write(name, value)
                        self._last[self._sig_by_node_name(name)] = value
            if user.role != UserRole.Admin:
                for st in results:
                    if st is not None and st.is_good():
                        self.stats.writes_accepted += 1
                    else:
                        self.stats.writes_refused += 1
            return [st or ua.StatusCode(ua.StatusCodes.BadInternalError) for st in results]

        service.write = write

    @staticmethod
    def _sig_by_node_name(setpoint: str) -> str:
        for s in SIGNALS:
            if s.setpoint == setpoint:
                return s.id
        raise KeyError(setpoint)

    # -- stepping ----------------------------------------------------------------------------------
    async def _publish(self, out: Outputs) -> None:
        assert self.server is not None
        now = datetime.now(UTC)
        write = self.server.iserver.aspace.write_attribute_value
        value_attr = ua.AttributeIds.Value
        for sig in SIGNALS:
            v = out.values[sig.id]
            if (sig.value_type != "double" or sig.setpoint) and self._last.get(sig.id) == v:
                continue  # setpoints, modes and roll ids: only on change
            self._last[sig.id] = v
            vt = _VARIANTS[sig.value_type]
            await write(self._nodes[sig.id], value_attr,
                        ua.DataValue(ua.Variant(v, vt), SourceTimestamp=now, ServerTimestamp=now))
        if self._extra_nodes:
            variant = ua.Variant(self.extra_seq, ua.VariantType.Int64)
            for nid in self._extra_nodes:
                await write(nid, value_attr, ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now))
        ts_ns = int(now.timestamp() * 1e6) * 1000
        for fn in self.on_tick:
            try:
                fn(out, ts_ns)
            except Exception:
                log.exception("on_tick hook failed")

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate_hz
        next_t = loop.time()
        while True:
            await self._paused.wait()
            next_t += period
            out = self.sim.advance(period * self.time_scale)
            if self._extra_nodes:
                self.extra_seq += 1
            await self._publish(out)
            self.stats.ticks += 1
            delay = next_t - loop.time()
            if delay < -period:
                self.stats.overruns += 1
                next_t = loop.time()
                delay = 0.0
            await asyncio.sleep(max(delay, 0.0))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


if __name__ == "__main__":  # pragma: no cover
    # ``python -m twin.simline.opcua_server``: the same options as ``twin simulate-line``. Imported here, in
    # the script's entry point (the module ``__main__``), because twin.simline.cli imports this module.
    from twin.simline.cli import cli_main

    cli_main()
