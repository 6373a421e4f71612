"""Commands of the simulated line and the OPC-UA tools, for the ``twin`` app to mount::

    from twin.simline.cli import register
    register(app)          # twin simulate-line, twin browse, twin opcua make-cert, twin opcua trust

or one by one: ``app.command("simulate-line")(simulate_line)``, ``app.command("browse")(browse)``,
``app.add_typer(opcua_app, name="opcua")``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from core.samples import now_ns

console = Console(stderr=True)

opcua_app = typer.Typer(help="OPC-UA certificates and trust store.", no_args_is_help=True, add_completion=False)


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {msg}", highlight=False)
    raise typer.Exit(code)


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("twin.simline.server").setLevel(logging.INFO)
    logging.getLogger("asyncua").setLevel(logging.ERROR if not verbose else logging.WARNING)


def _users(user: list[str]) -> dict[str, str] | None:
    if not user:
        return None
    out = {}
    for u in user:
        name, sep, pw = u.partition(":")
        if not sep or not name:
            _fail(f"--user {u!r}: expected NAME:PASSWORD")
        out[name] = pw
    return out


def simulate_line(
    port: int = typer.Option(4840, help="serve opc.tcp://HOST:PORT"),
    host: str = typer.Option("127.0.0.1", help="bind address (policy None only on loopback)"),
    seed: int = typer.Option(0, help="random seed (the run is deterministic for a seed)"),
    rate_hz: float = typer.Option(10.0, "--rate-hz", help="simulation steps (and value updates) per second"),
    extra_tags: int = typer.Option(0, "--extra-tags", help="add N synthetic Int64 tags counting the steps"),
    scenario: str = typer.Option("steady", help="steady, loading_drift, roll_temperature_step or roll_change"),
    scenario_start_s: float = typer.Option(60.0, help="when the scenario acts (simulation seconds)"),
    time_scale: float = typer.Option(1.0, help="simulated seconds per wall-clock second"),
    security: bool = typer.Option(False, "--security", help="require message security and trusted client certificates"),
    policy: list[str] = typer.Option([], "--policy", help="with --security: basic256sha256, aes128_sha256_rsaoaep, "
                                                         "aes256_sha256_rsapss (repeatable; default all three)"),
    mode: list[str] = typer.Option([], "--mode", help="with --security: sign, sign_and_encrypt (default sign_and_encrypt)"),
    pki_dir: Path = typer.Option(Path("var/simline-pki"), "--pki", help="server PKI folder (own/, trusted/, rejected/)"),
    trust_client: list[Path] = typer.Option([], "--trust-client", help="trust this client certificate (repeatable)"),
    user: list[str] = typer.Option([], "--user", help="require NAME:PASSWORD (repeatable)"),
    insecure_remote: bool = typer.Option(False, "--insecure-remote", help="allow policy None on a non-loopback address"),
    mqtt: str | None = typer.Option(None, "--mqtt", help="also publish over MQTT to HOST:PORT"),
    mqtt_prefix: str = typer.Option("pilot", help="MQTT topic prefix"),
    mqtt_rate_hz: float = typer.Option(1.0, help="MQTT publishing rate"),
    line_id: str = typer.Option("pilot-1", help="line id in MQTT topics"),
    csv: Path | None = typer.Option(None, "--csv", help="write a recorded run to this CSV (.gz) instead of serving"),
    duration_s: float = typer.Option(3600.0, "--duration", help="with --csv: simulated seconds"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log connections and writes"),
) -> None:
    """Run the simulated coating -> drying -> calendering line as an OPC-UA server (and over MQTT)."""
    from twin.simline.model import (  # lazy: CLI, each command loads only its own code
        SCENARIOS,
        make_scenario,
        simulate,
        write_csv,
    )

    _logging(verbose)
    if scenario not in SCENARIOS:
        _fail(f"--scenario {scenario!r}: expected one of {', '.join(SCENARIOS)}")
    scen = make_scenario(scenario, start_s=scenario_start_s)
    if csv is not None:
        dt = 1.0 / rate_hz
        n = write_csv(csv, simulate(duration_s, dt, seed=seed, scenario=scen), now_ns() - int(duration_s * 1e9))
        console.print(f"wrote {n} rows ({duration_s:g} s at {rate_hz:g} Hz, scenario {scenario}) to {csv}")
        return
    from twin.simline.opcua_server import (  # lazy: CLI, each command loads only its own code
        ALL_POLICIES,
        ServerSecurity,
        SimLineServer,
    )

    sec = None
    if security:
        sec = ServerSecurity(pki_dir, tuple(policy) or ALL_POLICIES, tuple(mode) or ("sign_and_encrypt",))
        try:
            sec.policy_types()
        except ValueError as err:
            _fail(str(err))
        from connectors.opcua import security as pki  # lazy: CLI, each command loads only its own code

        for c in trust_client:
            try:
                console.print(f"trusted client certificate {pki.trust(c, pki_dir / 'trusted')}")
            except pki.PkiError as err:
                _fail(str(err))
    elif policy or mode or trust_client:
        _fail("--policy, --mode and --trust-client need --security")
    try:
        srv = SimLineServer(host=host, port=port, seed=seed, rate_hz=rate_hz, extra_tags=extra_tags,
                            time_scale=time_scale, scenario=scen, security=sec, users=_users(user),
                            allow_insecure_remote=insecure_remote)
    except ValueError as err:
        _fail(str(err))
        return
    pub = None
    if mqtt:
        from twin.simline.mqtt_publisher import MqttLinePublisher  # lazy: CLI, each command loads only its own code

        mh, _, mp = mqtt.rpartition(":")
        pub = MqttLinePublisher(host=mh or "127.0.0.1", port=int(mp or 1883), prefix=mqtt_prefix, line_id=line_id,
                                rate_hz=mqtt_rate_hz)
        pub.start()
        srv.on_tick.append(pub.publish)

    async def main() -> None:
        await srv.start()
        console.print(f"[bold]simulated line[/] on {srv.url}" + (f" (server certificate {srv.certificate_path})"
                                                                 if sec else " (policy None)")
                      + (f", MQTT {mqtt}/{mqtt_prefix}/{line_id}/..." if mqtt else "") + "  Ctrl-C to stop",
                      highlight=False)
        try:
            await asyncio.Event().wait()
        finally:
            await srv.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except OSError as err:
        _fail(f"cannot serve {srv.url}: {err}")
    finally:
        if pub is not None:
            pub.stop()


def browse(
    url: str = typer.Argument(..., help="opc.tcp://HOST:PORT"),
    write_tagmap: Path | None = typer.Option(None, "--write-tagmap", help="write a tag-map skeleton (TOML)"),
    root: list[str] = typer.Option([], "--root", help="start here (NodeId; repeatable; default Objects)"),
    depth: int = typer.Option(10, help="maximum depth below each root"),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", help="include namespace 0 (the Server object)"),
    policy: str = typer.Option("none", help="none, basic256sha256, aes128_sha256_rsaoaep, aes256_sha256_rsapss"),
    mode: str = typer.Option("sign_and_encrypt", help="sign or sign_and_encrypt"),
    pki_dir: Path = typer.Option(Path("pki"), "--pki", help="client PKI folder (own/, trusted/, rejected/)"),
    username: str | None = typer.Option(None, help="user name"),
    password: str | None = typer.Option(None, help="password (or TWIN_OPCUA_PASSWORD)", envvar="TWIN_OPCUA_PASSWORD"),
    plain: bool = typer.Option(False, "--plain", help="tab-separated lines instead of a table"),
    suggest: bool = typer.Option(False, "--suggest", help="with --plain: add the suggested ontology parameter column "
                                 "(the table always shows it)"),
) -> None:
    """Print the address space: node ids, browse paths, data types, units, access and the suggested ontology
    parameter (twin/semantic.py); write a tag map with those suggestions."""
    from connectors.opcua.browse import browse_variables  # lazy: CLI, each command loads only its own code
    from connectors.opcua.config import (  # lazy: CLI, each command loads only its own code
        OpcUaConnectorConfig,
        SecurityConfig,
    )
    from connectors.opcua.connector import close_client, open_client  # lazy: CLI, each command loads only its own code
    from connectors.opcua.errors import OpcUaError  # lazy: CLI, each command loads only its own code
    from twin.init import tagmap_for_browse  # lazy: CLI, each command loads only its own code

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    try:
        cfg = OpcUaConnectorConfig(
            name="browse", url=url, browse_roots=list(root) or ["i=85"], username=username, password=password,
            security=SecurityConfig(policy=policy, mode=mode, certificate=pki_dir / "own" / "cert.der",
                                    private_key=pki_dir / "own" / "key.pem", trust_dir=pki_dir / "trusted",
                                    rejected_dir=pki_dir / "rejected"))
    except ValueError as err:
        _fail(str(err))
        return

    async def run() -> list:
        client = await open_client(cfg)
        try:
            return await browse_variables(client, cfg.browse_roots, max_depth=depth, include_ns0=all_namespaces)
        finally:
            await close_client(client)

    try:
        nodes = asyncio.run(run())
    except (OpcUaError, ValueError) as err:
        _fail(str(err))
        return
    skeleton, plan = tagmap_for_browse(nodes, url)
    by_node = {sg.point.address: sg for sg in plan.suggestions}
    extra = not plain or suggest
    cols = ("node id", "browse path", "data type", "unit", "range", "access") + (("parameter (confidence)",) if extra
                                                                                 else ())
    rows = []
    for n in nodes:
        rng = f"{n.eu_range[0]:g} .. {n.eu_range[1]:g}" if n.eu_range else ""
        unit = n.unit or (f"({n.unit_display})" if n.unit_display else "")
        row: tuple[Any, ...] = (n.node_id, n.browse_path, n.data_type or "?", unit, rng, n.access)
        sg = by_node.get(n.node_id)
        if extra:
            row += ((f"{sg.term}/{sg.role} ({sg.confidence:.2f})" if sg is not None and sg.term else ""),)
        rows.append(row)
    if plain:
        typer.echo("\t".join(cols))
        for r in rows:
            typer.echo("\t".join(r))
    else:
        table = Table(title=f"{url}: {len(nodes)} variables", show_lines=False)
        for col in cols:
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(*r)
        Console(width=None if sys.stdout.isatty() else 200).print(table)
    if write_tagmap is not None:
        write_tagmap.parent.mkdir(parents=True, exist_ok=True)
        write_tagmap.write_text(skeleton, encoding="utf-8")
        console.print(f"wrote a tag map with {len(plan.suggestions)} tags to {write_tagmap} (review it: each tag "
                      "names the ontology parameter suggested, its confidence and the alternatives)")


@opcua_app.command("make-cert")
def make_cert(
    out: Path = typer.Option(Path("pki"), "--out", help="PKI folder: writes own/cert.der, own/cert.pem, own/key.pem"),
    uri: str = typer.Option("urn:pilotline-twin:client", help="application URI (SubjectAltName)"),
    cn: str = typer.Option("pilotline-twin client", help="common name"),
    host: list[str] = typer.Option([], "--host", help="DNS names (repeatable; default this host and localhost)"),
    ip: list[str] = typer.Option([], "--ip", help="IP addresses (repeatable; default 127.0.0.1)"),
    days: int = typer.Option(730, help="validity in days"),
    server: bool = typer.Option(False, "--server", help="a server certificate (serverAuth + clientAuth)"),
    force: bool = typer.Option(False, "--force", help="replace an existing certificate"),
) -> None:
    """Create the twin's OPC-UA application certificate and key (RSA 2048, self-signed)."""
    from connectors.opcua import security as pki  # lazy: CLI, each command loads only its own code

    try:
        paths = pki.make_certificate(out, application_uri_=uri, common_name_=cn, hostnames=list(host) or None,
                                     ips=list(ip) or None, days=days, server=server, overwrite=force)
    except (pki.PkiError, ValueError) as err:
        _fail(str(err))
        return
    cert = pki.load_certificate(paths.cert_der)
    console.print(f"created {paths.cert_der} and {paths.key_pem}: {pki.describe(cert)}", highlight=False)
    console.print("give the server's administrator the certificate to trust", highlight=False)


@opcua_app.command("trust")
def trust(
    certfile: Path = typer.Argument(..., help="a server certificate (DER or PEM), e.g. from pki/rejected/"),
    pki_dir: Path = typer.Option(Path("pki"), "--pki", help="PKI folder; the certificate goes to <pki>/trusted"),
    trust_dir: Path | None = typer.Option(None, "--trust-dir", help="the trust folder itself (overrides --pki)"),
) -> None:
    """Trust a server (or, for the simulator, client) certificate: copy it into the trust store."""
    from connectors.opcua import security as pki  # lazy: CLI, each command loads only its own code

    try:
        dest = pki.trust(certfile, trust_dir or pki_dir / "trusted")
        cert = pki.load_certificate(dest)
    except pki.PkiError as err:
        _fail(str(err))
        return
    console.print(f"trusted {pki.describe(cert)} -> {dest}", highlight=False)


def register(app: typer.Typer) -> None:
    """Mount ``simulate-line``, ``browse`` and the ``opcua`` group on the twin app."""
    app.command("simulate-line")(simulate_line)
    app.command("browse")(browse)
    app.add_typer(opcua_app, name="opcua")


def cli_main(argv: list[str] | None = None) -> None:
    """``python -m twin.simline.opcua_server [options]`` == ``twin simulate-line [options]``."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(simulate_line)
    app(args=argv, prog_name="simline")
