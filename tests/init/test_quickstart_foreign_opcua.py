"""Acceptance: docs/quickstart-real-line.md, step by step, against a foreign OPC-UA server.

The server is node-opcua (tests/init/foreign_server.js), not the project's simulator: its own node ids
(ns=1;i=51001, ns=1;s=TT-4711, ...), browse names (RollGapActual, RollTemp, CoatWeight...) and units
(mm, °F by UNECE code FAH, N/mm, ft/min, g/m²). The test runs the quickstart's commands as written
(each one is checked to appear in the document), edits no file, and checks stored values in canonical
units, predictions and the feedback service's status through the API.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.init.conftest import ForeignServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart-real-line.md"
TWIN = [sys.executable, "-m", "twin.cli"]


def doc_commands() -> list[str]:
    """Every line of the quickstart's ```bash blocks (comments and continuations joined)."""
    text = QUICKSTART.read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(re.sub(r"\s+", " ", line))
    return out


def step(cmd: str) -> str:
    """A quickstart command as the document writes it (the test fails when the document changes)."""
    assert cmd in doc_commands(), f"the quickstart no longer says: {cmd}"
    return cmd


def twin(args: list[str], cwd: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(TWIN + args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


def wait_for(what: str, fn: Any, timeout: float, proc: subprocess.Popen | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the twin exited ({proc.returncode}) while waiting for {what}")
        try:
            last = fn()
            if last:
                return last
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {timeout} s (last: {last!r})")


def test_quickstart_against_a_foreign_opcua_server(foreign_server: ForeignServer, tmp_path: Path) -> None:
    work = tmp_path / "site"
    work.mkdir()
    api_port = free_port()

    # step 3: guided set-up, non-interactive
    cmd = step('twin init --opcua "$PLC" --out twin.toml --yes --port 8000')
    args = cmd.split()[1:]
    args[args.index('"$PLC"')] = foreign_server.url
    args[args.index("8000")] = str(api_port)
    res = twin(args, work)
    assert res.returncode == 0, res.stderr
    assert f"run --config {work / 'twin.toml'}" in res.stdout
    assert "ExecStart=" in res.stdout
    cfg = tomllib.loads((work / "twin.toml").read_text())
    tm = tomllib.loads((work / "tagmap.toml").read_text())
    by_node = {t["sources"][0]["opcua"]: t for t in tm["tags"]}
    # semantic mapping of the foreign names and units
    gap = by_node["ns=1;i=51001"]
    assert (gap["parameter"], gap["role"], gap["canonical_unit"], gap["range"]) == \
        ("CalenderGap", "actual", "um", [0.0, 500.0])
    assert gap["sources"][0]["unit"] == "mm"
    temp = by_node["ns=1;s=TT-4711"]  # °F, UNECE FAH: not in our table, read from the display name by pint
    assert (temp["parameter"], temp["canonical_unit"], temp["sources"][0]["unit"]) == \
        ("CalenderRollTemperature", "degC", "degF")
    assert temp["range"] == pytest.approx([0.0, (400 - 32) / 1.8])
    assert by_node["ns=1;s=TC-4711.SP"]["role"] == "setpoint"
    assert by_node["ns=1;i=51005"]["parameter"] == "CalenderPressure" and \
        by_node["ns=1;i=51005"]["canonical_unit"] == "N/mm"
    assert by_node["ns=1;s=QCS/ThkIn"]["parameter"] == "DryCoatingThickness"
    assert by_node["ns=1;s=QCS/ThkOut"]["parameter"] == "CalenderedCoatingThickness"
    # the services are bound to ontology terms, not to the plant's ids
    assert cfg["predictor"]["enabled"] and cfg["feedback"]["enabled"]
    assert cfg["predictor"]["inputs"]["gap"] == "CalenderGap/actual"
    assert cfg["connectors"][0]["writes"]["allowed_nodes"] == ["ns=1;i=51002"]

    # step 4: check it, with the connections
    res = twin(step("twin check-config twin.toml --connect").split()[1:], work)
    assert res.returncode == 0, res.stderr
    assert "ok connector opcua:plc" in res.stderr and "ok store embedded" in res.stderr
    assert "predictor.inputs.gap -> calendering.gap_actual (by term CalenderGap/actual)" in res.stderr

    # step 5: run the twin
    proc = subprocess.Popen(TWIN + step("twin run --config twin.toml").split()[1:], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "twin.log").open("w"),
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        step("curl -s http://127.0.0.1:8000/api/v1/latest")

        def latest() -> dict[str, Any] | None:
            rows = {r["tag"]: r for r in get(api_port, "/api/v1/latest")}
            need = ("calendering.gap_actual", "calendering.roll_temperature", "calendering.roll_speed",
                    "coating.areal_loading", "calendering.line_load", "calendering.porosity_online")
            return rows if all(k in rows for k in need) else None

        rows = wait_for("stored values", latest, 60, proc)
        # canonical units: 0.085 mm -> 85 um; 122 °F -> 50 °C; 19.685 ft/min -> 6 m/min; 228 g/m² -> 22.8 mg/cm²
        assert rows["calendering.gap_actual"]["unit"] == "um"
        assert rows["calendering.gap_actual"]["value"] == pytest.approx(85.0, abs=2.0)
        assert rows["calendering.roll_temperature"]["unit"] == "degC"
        assert rows["calendering.roll_temperature"]["value"] == pytest.approx(50.0, abs=1.0)
        assert rows["calendering.roll_speed"]["value"] == pytest.approx(6.0, abs=0.1)
        assert rows["coating.areal_loading"]["value"] == pytest.approx(22.8, abs=0.2)
        assert rows["calendering.line_load"]["value"] == pytest.approx(1300.0, abs=100.0)

        step("curl -s http://127.0.0.1:8000/api/v1/predictions/latest")
        preds = wait_for("a prediction", lambda: get(api_port, "/api/v1/predictions/latest")["predictions"], 60, proc)
        pred = next(p for p in preds if p["line_id"] == "pilot-1")
        assert pred["line_inputs"]["gap"] == pytest.approx(85.0, abs=2.0)
        assert pred["line_inputs"]["roll_temperature"] == pytest.approx(50.0, abs=1.0)
        assert 0.0 < pred["mean"]["porosity"] < 1.0

        step("curl -s http://127.0.0.1:8000/api/v1/feedback/status")
        status = wait_for("a feedback decision", lambda: get(api_port, "/api/v1/feedback/status")["decisions"], 60,
                          proc)
        assert "pilot-1" in status and status["pilot-1"]["reasons"] is not None
        fb = get(api_port, "/api/v1/feedback/status")
        assert fb["limits"]["gap"] == [40.0, 200.0]  # the setpoint's EURange 0.04-0.2 mm in um
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(5)
    assert rc == 0, (tmp_path / "twin.log").read_text()[-3000:]
