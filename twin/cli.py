"""The ``twin`` command."""

from __future__ import annotations

import asyncio
import enum
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from twin.config import ConfigError, TwinConfig, check_config

if TYPE_CHECKING:  # annotations only: the daemon is loaded by the commands that run it
    from ontology.tagmap import TagMap
    from twin.daemon import Daemon

app = typer.Typer(help="Digital twin of a battery electrode pilot line.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
console = Console(stderr=True)
DEFAULTS = Path(__file__).parent / "defaults"


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("apscheduler", "asyncua"):  # one line per job run / per node added is noise
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {msg}", highlight=False, markup=True)
    raise typer.Exit(code)


def _load(config: Path) -> tuple[TwinConfig, TagMap]:
    try:
        return check_config(config)
    except ConfigError as err:
        _fail(str(err))
        raise  # unreachable


@app.command("check-config")
def check_config_cmd(
    config: Path = typer.Argument(..., help="configuration file (TOML)"),
    connect: bool = typer.Option(False, "--connect", help="also probe each source and the store (with --timeout)"),
    timeout: float = typer.Option(5.0, "--timeout", help="seconds per probe with --connect"),
    strict: bool = typer.Option(False, "--strict", help="warnings (the dashboard's tags) fail too (exit 2)"),
) -> None:
    """Validate a configuration, its tag map and the tags the predictor, feedback and dashboard need.

    Exit 0: usable (warnings printed); 2: a problem (each named by its field path, with the fix);
    3: with --connect, a source or the store did not answer."""
    from twin.config import check_config_report  # lazy: CLI, each command loads only its own code

    try:
        cfg, tagmap, resolutions, warnings = check_config_report(config)
    except ConfigError as err:
        _fail(str(err))
        return
    for r in resolutions:
        if r.ok and r.spec.consumer != "dashboard":
            how = {"tag id": "", "role": f" (by role {r.spec.term}/{r.spec.role})",
                   "term": f" (by term {r.ref})"}.get(r.how, "")
            console.print(f"  {r.spec.path} -> {r.tag_id}{how}", highlight=False, markup=False)
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    connectors: list[Any] = cfg.connectors  # a union built from the registry at import: opaque to mypy
    kinds = ", ".join(f"{c.kind}:{c.name}" for c in connectors) or "none"
    if strict and warnings:
        _fail(f"{len(warnings)} warning(s) with --strict")
    console.print(f"[green]ok[/] {config}: line {cfg.line_id!r}, {len(tagmap.tags)} tags, "
                  f"store {cfg.store.backend.value}, connectors {kinds}", highlight=False)
    if connect:
        from twin.probe import probe  # lazy: CLI, each command loads only its own code

        logging.getLogger("asyncua").setLevel(logging.CRITICAL)
        results = asyncio.run(probe(cfg, tagmap, timeout=timeout))
        for res in results:
            mark = "[green]ok[/]" if res.ok else "[bold red]failed[/]"
            console.print(f"{mark} {res.what}: {res.detail}", highlight=False)
        if not all(res.ok for res in results):
            raise typer.Exit(3)


@app.command("init")
def init_cmd(
    opcua: str | None = typer.Option(None, "--opcua", help="browse this OPC-UA server: opc.tcp://HOST:PORT"),
    mqtt: str | None = typer.Option(None, "--mqtt", help="listen to this MQTT broker: mqtt://HOST:PORT"),
    listen: float = typer.Option(10.0, "--listen", help="with --mqtt: seconds to listen"),
    topic: list[str] = typer.Option([], "--topic", help="with --mqtt: topic filters (repeatable; default #)"),
    out: Path = typer.Option(Path("twin.toml"), "--out", help="configuration to write"),
    tagmap: Path | None = typer.Option(None, "--tagmap", help="tag map to write (default: tagmap.toml beside --out)"),
    yes: bool = typer.Option(False, "--yes", "-y", help="no questions: take the suggestions and --bind"),
    force: bool = typer.Option(False, "--force", help="replace existing files"),
    line_id: str = typer.Option("pilot-1", "--line-id", help="line id of the readings"),
    security: str = typer.Option("none", "--security", help="none, basic256sha256, aes128_sha256_rsaoaep, "
                                 "aes256_sha256_rsapss (a secure policy creates the client certificate)"),
    mode: str = typer.Option("sign_and_encrypt", "--mode", help="sign or sign_and_encrypt"),
    pki: Path = typer.Option(Path("pki"), "--pki", help="client PKI folder (own/, trusted/, rejected/)"),
    trust_server: bool = typer.Option(False, "--trust-server", help="trust the server certificate it presents"),
    username: str | None = typer.Option(None, "--username", help="user name"),
    password: str | None = typer.Option(None, "--password", envvar="TWIN_OPCUA_PASSWORD",
                                           help="password (or TWIN_OPCUA_PASSWORD); never written to the file"),
    root: list[str] = typer.Option([], "--root", help="browse below this NodeId (repeatable; default Objects)"),
    min_confidence: float = typer.Option(0.5, "--min-confidence", help="take a suggested parameter at or above this"),
    bind: list[str] = typer.Option([], "--bind", help="ROLE=ADDRESS, e.g. gap=ns=3;i=1001 or "
                                   "gap_setpoint=ns=3;s=GapSP (roles: dry_thickness, areal_loading, gap, roll_speed, "
                                   "roll_temperature, porosity, thickness_after, gap_setpoint, roll_temperature_setpoint)"),
    no_predictor: bool = typer.Option(False, "--no-predictor", help="do not enable the predictor"),
    no_feedback: bool = typer.Option(False, "--no-feedback", help="do not enable the feedback service"),
    manipulate: list[str] = typer.Option([], "--manipulate", help="setpoints the feedback may propose: gap, "
                                         "roll_temperature (repeatable; default gap)"),
    limit: list[str] = typer.Option([], "--limit", help="NAME=LO:HI[unit]: limits of a setpoint the feedback may "
                                    "write, for one that states no range (gap=40:200 in um, or gap=0.04:0.2mm)"),
    store: Path = typer.Option(Path("var/twin.sqlite"), "--store", help="embedded store file (relative: to --out)"),
    port: int = typer.Option(8000, "--port", help="API and dashboard port"),
) -> None:
    """Guided set-up: discover the line, map its points to the ontology, write and check twin.toml."""
    from twin.init import InitError, InitOptions, run_init  # lazy: CLI, each command loads only its own code

    binds: dict[str, str] = {}
    for b in bind:
        k, sep, v = b.partition("=")
        if not sep or not k or not v:
            _fail(f"--bind {b!r}: expected ROLE=ADDRESS")
        binds[k.strip()] = v.strip()
    limits: dict[str, str] = {}
    for b in limit:
        k, sep, v = b.partition("=")
        if not sep or not k or not v:
            _fail(f"--limit {b!r}: expected NAME=LO:HI[unit]")
        limits[k.strip()] = v.strip()
    opts = InitOptions(opcua=opcua, mqtt=mqtt, out=out, tagmap=tagmap, line_id=line_id, yes=yes, force=force,
                       security=security, mode=mode, pki=pki, username=username, password=password,
                       trust_server=trust_server, roots=list(root), listen_s=listen,
                       mqtt_topics=list(topic) or ["#"], min_confidence=min_confidence, binds=binds,
                       predictor=not no_predictor, feedback=not no_feedback,
                       manipulate=list(manipulate) or ["gap"], store_path=store, api_port=port,
                       limits=limits)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    ask = None if yes else (lambda q, d: typer.prompt(q, default=d))
    try:
        code = run_init(opts, ask=ask, say=say)
    except InitError as err:
        _fail(str(err))
        return
    raise typer.Exit(code)


@app.command("token")
def token_cmd(name: str = typer.Argument(..., help="who will hold the token"),
              write: bool = typer.Option(False, "--write", help="grant the write scope too")) -> None:
    """Print a new API token and the [[api.tokens]] entry (with its SHA-256) for the config."""
    import hashlib
    import secrets

    tok = secrets.token_urlsafe(32)
    scopes = '["read", "write"]' if write else '["read"]'
    print(f"token (give it to {name}; it is not stored): {tok}")
    print(f'[[api.tokens]]\nname = "{name}"\nsha256 = "{hashlib.sha256(tok.encode()).hexdigest()}"\nscopes = {scopes}')


def _run_daemon(cfg: TwinConfig, tagmap: TagMap, *, ack_log: Path | None = None, exit_when_finished: bool = False) -> int:
    from twin.daemon import Daemon  # lazy: CLI, each command loads only its own code

    _logging(cfg.log_level.value)
    try:
        daemon = Daemon(cfg, tagmap=tagmap, ack_log=ack_log, exit_when_finished=exit_when_finished)
    except (OSError, ValueError) as err:
        _fail(f"cannot start: {err}")
        return 2
    asyncio.run(daemon.run())
    return 0


@app.command("run")
def run_cmd(config: Path = typer.Option(..., "--config", "-c", help="configuration file (TOML)")) -> None:
    """Run the daemon: connectors -> tagging -> store, with the API."""
    cfg, tagmap = _load(config)
    raise typer.Exit(_run_daemon(cfg, tagmap))


@app.command("replay")
def replay_cmd(
    file: Path = typer.Argument(..., help="recorded line data (CSV or JSONL, optionally .gz)"),
    config: Path = typer.Option(..., "--config", "-c", help="configuration file (TOML)"),
    speed: str = typer.Option("max", help="'realtime', 'max', or a factor such as '10' (10x faster)"),
    ack_log: Path | None = typer.Option(None, help="append the number of rows stored after each commit"),
    serve_api: bool = typer.Option(False, "--api/--no-api", help="also serve the API while replaying"),
) -> None:
    """Replay a recorded file through the same pipeline as live data, then exit.

    Ends with one summary line on stderr (rows read, stored, not stored, dead letters). Exit status:
    0 the whole file was read and every row stored (bad rows as dead letters, counted in the line);
    1 the file could not be read to its end (truncated gzip, binary or non-UTF-8 content, an
    over-long line, a CSV without its time column...: everything before the error is stored);
    3 rows were read but could not be stored (the store kept failing); 2 configuration errors.
    """
    from connectors.replay.config import (  # lazy: CLI, each command loads only its own code
        ReplayConnectorConfig,
        ReplaySpeed,
    )

    cfg, tagmap = _load(config)
    if not file.exists():
        _fail(f"recorded file {file} does not exist")
    try:
        if speed in ("realtime", "max"):
            rc = ReplayConnectorConfig(path=file.resolve(), speed=ReplaySpeed(speed))
        else:
            rc = ReplayConnectorConfig(path=file.resolve(), speed=ReplaySpeed.FACTOR, speed_factor=float(speed))
    except ValueError as err:
        _fail(f"--speed {speed!r}: {err}")
        return
    cfg = cfg.model_copy(update={"connectors": [rc], "api": cfg.api.model_copy(update={"enabled": serve_api})})
    from twin.daemon import Daemon  # lazy: CLI, each command loads only its own code

    _logging(cfg.log_level.value)
    try:
        daemon = Daemon(cfg, tagmap=tagmap, ack_log=ack_log, exit_when_finished=True)
    except (OSError, ValueError) as err:
        _fail(f"cannot start: {err}")
        return
    asyncio.run(daemon.run())
    line, code = replay_summary(file, daemon)
    print(line, file=sys.stderr, flush=True)
    raise typer.Exit(code)


def replay_summary(file: Path, daemon: Daemon) -> tuple[str, int]:
    """The one line ``twin replay`` ends with, and its exit status (see replay_cmd)."""
    conn: Any = daemon.connectors[0]  # `twin replay` runs one ReplayConnector (rows_sent, rows_acked, error)
    st = daemon.pipeline.stats
    read, acked = conn.rows_sent, min(conn.rows_acked, conn.rows_sent)
    not_stored = read - acked
    counts = (f"{read} rows read, {acked} stored, {not_stored} not stored "
              f"({st.stored} samples stored, {st.duplicates} duplicates already stored, {st.rejected} dead letters"
              + (f", {st.unstorable} rows unstorable even as dead letters" if st.unstorable else "") + ")")
    lost = ""
    if not_stored or st.unstorable:
        lost = ("; rows not stored are not redelivered (a file is read once): the --ack-log records the rows "
                "stored, replay the file again to store the rest")
    err = conn.error
    if err is not None:
        where = f"line {err.line}: " if err.line else ""
        line = f"twin replay: {file}: {where}{err.problem}; stopped there: {counts}{lost}"
        return line, 3 if (not_stored or st.unstorable) else 1
    stopped = daemon.stop_event is not None and daemon.stop_event.is_set() and not conn.finished
    state = "stopped on request before the end of the file" if stopped else "done"
    return f"twin replay: {file}: {state}: {counts}{lost}", 3 if (not_stored or st.unstorable) else 0


class DemoSource(str, enum.Enum):
    SIMULATED = "simulated"
    RECORDED = "recorded"


async def _demo_simulated(cfg: TwinConfig, tagmap: TagMap, opcua_port: int, seed: int, scenario: str = "steady",
                          time_scale: float = 1.0) -> None:
    from twin.daemon import Daemon  # lazy: CLI, each command loads only its own code
    from twin.simline.model import make_scenario  # lazy: CLI, each command loads only its own code
    from twin.simline.opcua_server import SimLineServer  # lazy: CLI, each command loads only its own code

    async with SimLineServer(port=opcua_port, seed=seed, scenario=make_scenario(scenario),
                             time_scale=time_scale) as line:
        configured: list[Any] = cfg.connectors  # a union built from the registry at import: opaque to mypy
        conns = [c.model_copy(update={"url": line.url}) if c.kind == "opcua" else c for c in configured]
        daemon = Daemon(cfg.model_copy(update={"connectors": conns}), tagmap=tagmap)
        await daemon.run()


@app.command("demo")
def demo_cmd(
    port: int = typer.Option(8000, help="port of the API and dashboard on localhost"),
    state_dir: Path = typer.Option(Path("var/demo"), help="where the demo keeps its store"),
    source: DemoSource = typer.Option(DemoSource.SIMULATED, help="simulated line over OPC-UA, or the recorded run"),
    opcua_port: int = typer.Option(0, help="OPC-UA port of the simulated line on loopback (0: a free one)"),
    seed: int = typer.Option(0, help="random seed of the simulated line"),
    scenario: str = typer.Option("loading_drift", help="scenario of the simulated line: steady, loading_drift, "
                                 "roll_temperature_step, roll_change"),
    time_scale: float = typer.Option(1.0, help="simulated seconds per wall-clock second"),
    write_token: str = typer.Option("", envvar="TWIN_DEMO_WRITE_TOKEN", help=(
        "a bearer token with read and write scopes for this demo session (approve / reject proposals, "
        "targets); without one the demo is read-only")),
) -> None:
    """Run the twin on embedded defaults beside a simulated line (no external server needed)."""
    cfg, tagmap = _load(DEFAULTS / ("demo.toml" if source is DemoSource.SIMULATED else "demo_recorded.toml"))
    state_dir.mkdir(parents=True, exist_ok=True)
    store = cfg.store.model_copy(update={"embedded": cfg.store.embedded.model_copy(
        update={"path": (state_dir / "twin.sqlite").resolve()})})
    api = cfg.api.model_copy(update={"port": port})
    if write_token:
        import hashlib

        from twin.config import ApiToken  # lazy: CLI, each command loads only its own code

        api = api.model_copy(update={"tokens": [*api.tokens, ApiToken(
            name="demo", sha256=hashlib.sha256(write_token.encode()).hexdigest(), scopes=["read", "write"])]})
    cfg = cfg.model_copy(update={"api": api, "store": store})
    console.print(f"[bold]pilot-line twin demo[/] ({source.value} line): http://127.0.0.1:{port}/  "
                  "(Ctrl-C to stop)", highlight=False)
    if source is DemoSource.RECORDED:
        raise typer.Exit(_run_daemon(cfg, tagmap))
    _logging(cfg.log_level.value)
    if opcua_port == 0:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            opcua_port = sock.getsockname()[1]
    from twin.simline.model import SCENARIOS  # lazy: CLI, each command loads only its own code

    if scenario not in SCENARIOS:
        raise typer.BadParameter(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    asyncio.run(_demo_simulated(cfg, tagmap, opcua_port, seed, scenario, time_scale))


surrogates_app = typer.Typer(help="Surrogates: physics reference data set, training, evaluation.",
                             no_args_is_help=True)
ontology_app = typer.Typer(help="Ontology: build the committed OWL files.", no_args_is_help=True)


@ontology_app.command("build")
def ontology_build_cmd(check: bool = typer.Option(False, "--check",
                                                  help="only compare with the committed files (exit 1 if stale)")) -> None:
    """Regenerate ontology/pilotline.owl and ontology/alignment.owl from ontology/build.py and the seed table."""
    from ontology.build import ALIGNMENT_PATH, OWL_PATH, build  # lazy: CLI, each command loads only its own code

    owl, alignment = build(write=False)
    stale = [p for p, b in ((OWL_PATH, owl), (ALIGNMENT_PATH, alignment)) if not p.exists() or p.read_bytes() != b]
    if check:
        if stale:
            _fail("stale: " + ", ".join(str(p) for p in stale) + " (run `twin ontology build`)", 1)
        console.print("[green]ok[/] ontology files are up to date", highlight=False)
        return
    build(write=True)
    console.print(f"[green]wrote[/] {OWL_PATH} ({len(owl)} bytes), {ALIGNMENT_PATH} ({len(alignment)} bytes)",
                  highlight=False)


def _mount() -> None:
    from twin.simline.cli import register  # lazy: CLI, each command loads only its own code

    register(app)  # simulate-line, browse, opcua make-cert / trust
    try:  # the physics reference needs the [physics] extra only when its commands run
        from surrogates.reference import cli as reference_cli  # lazy: CLI, may be missing in a trimmed install

        surrogates_app.command("generate")(reference_cli.generate)
    except ImportError:  # pragma: no cover - folder missing in a trimmed install
        pass
    try:
        from surrogates.train import cli as train_cli  # lazy: CLI, may be missing; torch only inside its commands

        for name in ("train", "evaluate"):
            if hasattr(train_cli, name):
                surrogates_app.command(name)(getattr(train_cli, name))
    except ImportError:
        pass
    app.add_typer(surrogates_app, name="surrogates")
    app.add_typer(ontology_app, name="ontology")
    from connectors.mqtt.discover import cli_app as mqtt_app  # lazy: CLI, twin mqtt discover

    app.add_typer(mqtt_app, name="mqtt")
    from twin.lab.cli import lab_app  # lazy: CLI, twin lab import

    app.add_typer(lab_app, name="lab")


_mount()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
