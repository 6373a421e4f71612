"""Feedback state survives a restart: `twin run` as a subprocess beside the simulated line (real asyncua server
on loopback), the embedded store on disk. Targets set through the API, a gain learnt from an applied proposal
and an open proposal are the same after SIGTERM and a new daemon on the same store; an open proposal that
expired while the daemon was down becomes expired (audited). Wrong units and ranges in the configuration
refuse the start-up."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from ontology.tagmap import TagMap
from tests.conftest import free_port
from tests.feedback.conftest import WRITE_TOKEN, twin_config
from twin.config import ConfigError, check_config
from twin.daemon import Daemon
from twin.simline.model import make_scenario
from twin.simline.opcua_server import SimLineServer
from twin.store.sqlite import SQLiteStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {WRITE_TOKEN}"}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if v == v and abs(v) != float("inf") else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(type(v))


def write_config(tmp_path: Path, url: str, name: str, feedback: dict[str, Any], api_port: int) -> Path:
    cfg = twin_config(tmp_path, url, feedback=feedback, api=True, time_scale=10.0)
    raw = cfg.model_dump(mode="json")
    raw["api"]["port"] = api_port
    p = tmp_path / name
    p.write_text(_flat_toml(raw))
    check_config(p)
    return p


def _flat_toml(raw: dict[str, Any]) -> str:
    """Top-level scalars, then one [table] per top-level dict (its nested dicts inline) and [[array]] per list of
    dicts (nested values inline): enough for the twin's configuration."""
    out = []
    for k, v in raw.items():
        if v is None or isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
            continue
        out.append(f"{json.dumps(k)} = {_toml_value(v)}")
    for k, v in raw.items():
        if isinstance(v, dict):
            out.append(f"\n[{json.dumps(k)}]")
            out += [f"{json.dumps(a)} = {_toml_value(b)}" for a, b in v.items() if b is not None]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for x in v:
                out.append(f"\n[[{json.dumps(k)}]]")
                out += [f"{json.dumps(a)} = {_toml_value(b)}" for a, b in x.items() if b is not None]
    return "\n".join(out) + "\n"


class TwinProcess:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1"
        self.log_path = log
        self.log = open(log, "a")  # noqa: SIM115 - the process writes it while it runs; closed on stop
        self.proc = subprocess.Popen([sys.executable, "-m", "twin.cli", "run", "--config", str(config)],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    async def ready(self, http: httpx.AsyncClient, timeout: float = 120.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if (await http.get(f"{self.base}/feedback/targets")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert loop.time() < end, "the daemon did not answer within the timeout"
            await asyncio.sleep(0.2)

    async def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(self.proc.wait, 60)
        self.log.close()
        return rc


async def poll(fn: Any, timeout: float, step: float = 0.25) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        got = await fn()
        if got:
            return got
        if loop.time() > end:
            return got
        await asyncio.sleep(step)


def state_of(targets: dict[str, Any], status: dict[str, Any], current: Any, listing: list[dict[str, Any]]) -> dict:
    return {"targets": targets, "gain": status["gain"], "gain_observations": status["gain_observations"],
            "current": current,
            "proposals": [(p["id"], p["state"], p["settings"], p["predicted"], p["realised"]) for p in listing]}


async def snapshot(http: httpx.AsyncClient, base: str) -> dict[str, Any]:
    return state_of((await http.get(f"{base}/feedback/targets")).json(),
                    (await http.get(f"{base}/feedback/status")).json(),
                    (await http.get(f"{base}/proposals/current")).json(),
                    (await http.get(f"{base}/proposals", params={"limit": 100})).json())


async def test_targets_gains_and_open_proposals_survive_a_restart(tmp_path: Path) -> None:
    srv = SimLineServer(port=free_port(), seed=3, scenario=make_scenario("steady"), time_scale=10.0)
    await srv.start()
    port = free_port()
    fb: dict[str, Any] = {"manipulables": [{"name": "gap", "setpoint_tag": "calendering.gap_setpoint", "min": 40.0,
                                            "max": 200.0, "max_step": 5.0, "settle_s": 15.0}]}
    cfg = write_config(tmp_path, srv.url, "twin.toml", fb, port)
    log = tmp_path / "twin.log"
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            a = TwinProcess(cfg, port, log)
            try:
                await a.ready(http)
                base = a.base
                # targets through the API, porosity in percent: stored as a fraction
                r = await http.put(f"{base}/feedback/targets", headers=AUTH, json={
                    "recipe": "restart test", "targets": {
                        "porosity": {"target": 33.5, "tolerance": 1.0, "weight": 1.0, "unit": "percent"},
                        "thickness_after_um": {"target": 0.075, "tolerance": 0.004, "weight": 0.0, "unit": "mm"}}})
                assert r.status_code == 200, r.text
                assert r.json()["targets"]["porosity"] == {"target": 0.335, "tolerance": 0.01, "weight": 1.0,
                                                           "unit": "1"}

                async def current() -> Any:
                    return (await http.get(f"{base}/proposals/current")).json()

                p1 = await poll(current, 120)
                assert p1, (await http.get(f"{base}/feedback/status")).json()["decisions"]
                r = await http.post(f"{base}/proposals/{p1['id']}/approve", headers=AUTH, json={})
                assert r.status_code == 200 and r.json()["state"] == "applied", r.text

                async def learnt() -> bool:
                    st = (await http.get(f"{base}/feedback/status")).json()
                    return st["gain_observations"].get("pilot-1", {}).get("porosity", 0) >= 1

                assert await poll(learnt, 180), (await http.get(f"{base}/proposals/{p1['id']}")).json()
                p2 = await poll(current, 120)  # the next step towards the target, open
                assert p2 and p2["id"] != p1["id"], (await http.get(f"{base}/feedback/status")).json()["decisions"]
                before = await snapshot(http, base)
            finally:
                assert await a.stop() == 0, log.read_text()[-3000:]
            assert before["current"]["id"] == p2["id"] and before["current"]["state"] == "proposed"
            assert before["gain"]["pilot-1"]["porosity"] != 1.0  # learnt, not the initial value
            assert before["targets"]["recipe"] == "restart test"

            b = TwinProcess(cfg, port, log)
            try:
                await b.ready(http)
                after = await snapshot(http, b.base)
            finally:
                assert await b.stop() == 0, log.read_text()[-3000:]
            assert after == before

            # a third start with a short time-to-live: the open proposal expired while the twin was down
            await asyncio.sleep(1.5)
            cfg_ttl = write_config(tmp_path, srv.url, "twin_ttl.toml", {**fb, "proposal_ttl_s": 1.0}, port)
            c = TwinProcess(cfg_ttl, port, log)
            try:
                await c.ready(http)
                after_ttl = await snapshot(http, c.base)
            finally:
                assert await c.stop() == 0, log.read_text()[-3000:]
            assert after_ttl["current"] is None
            states = {pid: state for pid, state, *_ in after_ttl["proposals"]}
            assert states[p2["id"]] == "expired"
            assert states[p1["id"]] == {pid: state for pid, state, *_ in before["proposals"]}[p1["id"]] == "evaluated"
            assert after_ttl["targets"] == before["targets"] and after_ttl["gain"] == before["gain"]
        store = SQLiteStore(tmp_path / "store.sqlite")
        try:
            kinds = [r["kind"] for r in store.audit(p2["id"])]
            assert kinds[0] == "proposal.expired" and "proposal.proposed" in kinds
            assert "while the twin was not running" in " ".join(store.audit(p2["id"])[0]["body"]["reasons"])
        finally:
            store.close()
    finally:
        await srv.stop()


async def test_configured_targets_replace_saved_ones_when_the_configuration_changed(tmp_path: Path) -> None:
    """The saved targets win over an unchanged configuration; an edited configuration wins over them."""
    url = "opc.tcp://127.0.0.1:1/nothing"  # the daemon is only constructed, never run

    def daemon(targets: dict[str, Any]) -> Any:
        cfg = twin_config(tmp_path, url, feedback={"targets": targets}, api=False)
        return Daemon(cfg, tagmap=TagMap.load(cfg.tagmap))

    conf = {"porosity": {"target": 0.32, "tolerance": 0.01, "weight": 1.0, "unit": "1"}}
    d1 = daemon(conf)
    svc = d1.extensions["feedback"]
    await svc.set_targets("r2", {"porosity": svc.cfg.targets["porosity"].model_copy(
        update={"target": 31.0, "tolerance": 0.5, "unit": "%"})}, "test")
    d1.store.close()
    d2 = daemon(conf)
    assert d2.extensions["feedback"].targets_json() == {
        "recipe": "r2", "targets": {"porosity": {"target": 0.31, "tolerance": 0.005, "weight": 1.0, "unit": "1"}}}
    d2.store.close()
    d3 = daemon({"porosity": {"target": 33.0, "tolerance": 1.0, "weight": 1.0, "unit": "percent"}})
    assert d3.extensions["feedback"].targets_json()["targets"]["porosity"]["target"] == 0.33
    d3.store.close()


@pytest.mark.parametrize("manip, words", [
    ({"unit": "furlongs"}, "furlongs"),  # a length: converts, and 40 furlongs are far beyond the gap's range
    ({"unit": "degC"}, "degC"),
    ({"unit": "mm", "min": 0.04, "max": 0.2, "max_step": 500.0}, "max_step"),
    ({"min": 1.0, "max": 5000.0}, "exceed the tag's range"),
])
def test_manipulable_limits_are_unit_and_range_checked_at_start_up(tmp_path: Path, manip: dict[str, Any],
                                                                   words: str) -> None:
    gap = {"name": "gap", "setpoint_tag": "calendering.gap_setpoint", "min": 40.0, "max": 200.0, "max_step": 5.0,
           **manip}
    cfg = twin_config(tmp_path, "opc.tcp://127.0.0.1:1/x", feedback={"manipulables": [gap]})
    with pytest.raises(ValueError) as err:
        Daemon(cfg, tagmap=TagMap.load(cfg.tagmap))
    assert words in str(err.value) and "gap" in str(err.value)


def test_limits_in_another_unit_are_converted_to_the_setpoint_tags_unit(tmp_path: Path) -> None:
    gap = {"name": "gap", "setpoint_tag": "calendering.gap_setpoint", "unit": "mm", "min": 0.04, "max": 0.2,
           "max_step": 0.005}
    cfg = twin_config(tmp_path, "opc.tcp://127.0.0.1:1/x", feedback={"manipulables": [gap]})
    d = Daemon(cfg, tagmap=TagMap.load(cfg.tagmap))
    svc = d.extensions["feedback"]
    assert svc.limits == [(40.0, 200.0)] and svc.cfg.manipulables[0].max_step == 5.0
    assert svc.cfg.manipulables[0].unit == "um"
    d.store.close()


def test_a_porosity_target_as_a_percentage_with_unit_1_is_refused_by_check_config(tmp_path: Path) -> None:
    demo = ROOT / "twin" / "defaults" / "demo.toml"
    text = demo.read_text().replace('tagmap = "tagmap.toml"', f'tagmap = "{demo.parent / "tagmap.toml"}"')
    p = tmp_path / "twin.toml"
    p.write_text(text.replace("target = 0.32", "target = 32"))
    with pytest.raises(ConfigError) as err:
        check_config(p)
    assert "porosity" in str(err.value) and "(0, 1)" in str(err.value) and '"percent"' in str(err.value)
    p.write_text(text.replace('target = 0.32\ntolerance = 0.01\nweight = 1.0\nunit = "1"',
                              'target = 32\ntolerance = 1\nweight = 1.0\nunit = "percent"'))
    cfg, _ = check_config(p)
    assert cfg.feedback.targets["porosity"].target == 0.32 and cfg.feedback.targets["porosity"].unit == "1"
