"""The dashboard in a real headless Chromium (Debian's chromium driven by playwright-core from npm).

`twin demo` runs as a subprocess (free port, temporary state, a write token, faster simulated time);
tests/browser/drive_dashboard.js drives the page and reports what it saw; this side asserts:
- the plots show data points (counted in the plotly graph divs);
- a new point arrives through the live stream within 5 s, with no API request by the page meanwhile;
- approving the open proposal through the page (401 -> token dialog -> token) changes its state in
  the API (GET /api/v1/proposals/{id}: approved or applied);
- writes without a write-scope token are refused with 401/403;
- the screenshot is not blank (pixel spread over the page and inside a plot).
The proposal part needs the feedback API: when it answers 404 the test fails, it does not skip.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "drive_dashboard.js"
CHROMIUM = "/usr/bin/chromium"


def _need_tools() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run scripts/setup.sh (installs nodejs and npm)")
    if not (HERE / "node" / "node_modules" / "playwright-core").is_dir():
        pytest.fail("playwright-core is not installed in tests/browser/node: run scripts/setup.sh")
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium)")
    return node


def _pixel_spread(png: Path, box: dict[str, float] | None = None) -> tuple[float, int]:
    """(mean per-channel standard deviation, number of distinct colours) of the image or a box of it."""
    from PIL import Image, ImageStat

    with Image.open(png) as im:
        rgb = im.convert("RGB")
        if box is not None:
            rgb = rgb.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"])))
        stat = ImageStat.Stat(rgb)
        colours = rgb.getcolors(maxcolors=1 << 20)
        return sum(stat.stddev) / 3, len(colours) if colours is not None else 1 << 20


def test_dashboard_in_headless_chromium(tmp_path: Path, record_property: Any) -> None:
    node = _need_tools()
    port = free_port()
    token = secrets.token_urlsafe(24)
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "demo.log"
    log = open(log_path, "w")  # noqa: SIM115 - the demo process writes it until the test ends; closed there
    demo = subprocess.Popen([sys.executable, "-m", "twin.cli", "demo", "--port", str(port), "--state-dir",
                             str(tmp_path / "state"), "--time-scale", "30", "--write-token", token],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    shot = tmp_path / "dashboard.png"
    record_property("screenshot", str(shot))  # in the JUnit XML too
    t_start = time.monotonic()
    try:
        deadline = time.monotonic() + 20
        while True:
            assert demo.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the demo did not become healthy within 20 s"
            time.sleep(0.2)

        print(f"demo healthy after {time.monotonic() - t_start:.1f} s")
        args = {"url": base + "/", "token": token, "screenshot": str(shot), "chromium": CHROMIUM,
                "proposal_timeout_s": 25}
        run = subprocess.run([node, str(DRIVER), json.dumps(args)], capture_output=True, text=True, timeout=120)
        print(f"screenshot: {shot} (browser run {time.monotonic() - t_start:.1f} s after the demo's start)")
        try:
            res = json.loads(run.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            pytest.fail(f"driver output unreadable (rc {run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
        print(json.dumps(res, indent=1)[:4000])
        assert "fatal" not in res, res.get("fatal")
        assert not res["page_errors"], res["page_errors"]

        # 1. plots with data points: measured porosity and thickness in the plotly graph divs
        assert res["initial_points"]["plot-porosity"] > 0 and res["initial_points"]["plot-thickness"] > 0, res
        setpoint_traces = {t["name"]: t["finite_y"] for t in res["plot_data"]["plot-setpoints"]}
        assert setpoint_traces.get("gap_setpoint", 0) > 0, setpoint_traces

        # the demo runs the predictor: predicted means with their ±2σ bands are plotted, the domain badge is set
        for plot in ("plot-porosity", "plot-thickness", "plot-tortuosity", "plot-diffusivity"):
            traces = {t["name"]: t["finite_y"] for t in res["plot_data_end"][plot]}
            assert traces["predicted"] > 0 and traces["predicted ±2σ"] > 0 and traces["+2σ"] > 0, (plot, traces)
        assert res["ood_badge"] in ("in domain", "OUT OF DOMAIN"), res["ood_badge"]

        # 2. a new point through the live stream within 5 s, and no polling by the page meanwhile
        live = res["live"]
        assert live["arrived_after_s"] is not None and live["arrived_after_s"] <= 5.0, live
        assert live["streamed_after"] > live["streamed_before"], live
        assert live["api_requests_meanwhile"] == [], live

        # 3. the screenshot is not blank: over the whole page and inside the porosity plot
        assert shot.exists() and shot.stat().st_size > 10_000
        spread, colours = _pixel_spread(shot)
        assert spread > 10 and colours > 50, (spread, colours)
        plot_spread, plot_colours = _pixel_spread(shot, res["plot_boxes"]["plot-porosity"])
        assert plot_spread > 5 and plot_colours > 10, (plot_spread, plot_colours)

        # 4. approve the open proposal through the page; the API shows the new state
        prop = res["proposal"]
        listing = httpx.get(f"{base}/api/v1/proposals", params={"limit": 5})
        assert listing.status_code == 200, f"feedback API: GET /api/v1/proposals -> {listing.status_code} {listing.text[:200]}"
        assert "error" not in prop, f"no proposal approved through the page: {prop}"
        assert prop["reasons_shown"] > 0 and prop["approve_buttons"] == 1, prop
        # the cell consequence (issue #18): capacity now -> with the proposal at C/2 and 2C, in the proposal
        cell_text = prop.get("cell_text") or ""
        assert "mAh/cm²" in cell_text and "0.5C" in cell_text and "2C" in cell_text, cell_text
        assert prop["dialog_reason"].startswith("401"), prop  # the page asked for a token after the API's 401
        assert prop["token_stored"] and prop["write_error"] is None, prop
        assert any(u.endswith(f"/api/v1/proposals/{prop['id']}/approve") for u in prop["writes"]), prop
        api = httpx.get(f"{base}/api/v1/proposals/{prop['id']}")
        assert api.status_code == 200, api.text
        assert api.json()["state"] in ("approved", "applied"), api.json()
        assert prop["state_after"] in ("approved", "applied"), prop
        # marked on the plots: where it was proposed and where it was decided (issue #22)
        marks = res["marks_end"]["plot-setpoints"]
        assert "proposal:proposed" in marks and ("proposal:approved" in marks or "proposal:applied" in marks), marks

        # 5. writes without a write-scope token are refused (401/403), with or without a wrong token
        for headers in ({}, {"Authorization": "Bearer not-the-token"}):
            for action in ("approve", "reject"):
                r = httpx.post(f"{base}/api/v1/proposals/{prop['id']}/{action}", json={}, headers=headers)
                assert r.status_code in (401, 403), (action, headers, r.status_code, r.text)
            targets = httpx.get(f"{base}/api/v1/feedback/targets")
            assert targets.status_code == 200, targets.text
            r = httpx.put(f"{base}/api/v1/feedback/targets", json=targets.json(), headers=headers)
            assert r.status_code in (401, 403), (headers, r.status_code, r.text)
    finally:
        t_stop = time.monotonic()
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(timeout=30)
        finally:
            log.close()
        print(f"demo stopped in {time.monotonic() - t_stop:.1f} s")
    assert demo.returncode == 0, log_path.read_text()[-3000:]


def test_targets_table_shows_units_and_saves_a_porosity_target_in_percent(tmp_path: Path) -> None:
    """The targets table states every unit (porosity in %); a porosity target saved in % through the page is
    stored as the fraction (GET /api/v1/feedback/targets); a refused one (300 %) shows the API's reason and
    changes nothing."""
    node = _need_tools()
    port = free_port()
    token = secrets.token_urlsafe(24)
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "demo.log"
    log = open(log_path, "w")  # noqa: SIM115 - the demo process writes it until the test ends; closed there
    demo = subprocess.Popen([sys.executable, "-m", "twin.cli", "demo", "--port", str(port), "--state-dir",
                             str(tmp_path / "state"), "--time-scale", "30", "--write-token", token],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert demo.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/api/v1/feedback/targets", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the demo did not answer within 60 s"
            time.sleep(0.2)
        before = httpx.get(f"{base}/api/v1/feedback/targets").json()
        assert before["targets"]["porosity"]["unit"] == "1"
        args = {"url": base + "/", "token": token, "chromium": CHROMIUM, "mode": "targets",
                "porosity_percent": 30.5, "tolerance_percent": 1.5}
        run = subprocess.run([node, str(DRIVER), json.dumps(args)], capture_output=True, text=True, timeout=180)
        try:
            res = json.loads(run.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            pytest.fail(f"driver output unreadable (rc {run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
        print(json.dumps(res, indent=1)[:4000])
        assert "fatal" not in res, res.get("fatal")
        assert not res["page_errors"], res["page_errors"]
        t = res["targets"]
        assert "unit" in t["header"], t
        # every row states its unit; porosity is shown in % (the demo's 0.32 as 32)
        assert all(r["unit_shown"].strip() for r in t["before"].values()), t["before"]
        assert t["before"]["porosity"]["unit_shown"] == "%" and t["before"]["porosity"]["unit_sent"] == "percent"
        assert float(t["before"]["porosity"]["target"]) == pytest.approx(before["targets"]["porosity"]["target"] * 100)
        assert t["before"]["thickness_after_um"]["unit_shown"] == "µm"
        # saved in % through the page (after the token dialog): the API stores the fraction
        assert t["dialog_reason"].startswith("401") and t["put_status"] == 200, t
        sent = json.loads(t["puts"][-1])
        assert (sent["targets"]["porosity"]["target"], sent["targets"]["porosity"]["unit"]) == (30.5, "percent")
        stored = httpx.get(f"{base}/api/v1/feedback/targets").json()["targets"]["porosity"]
        assert stored["unit"] == "1" and stored["target"] == 0.305 and stored["tolerance"] == 0.015, stored
        assert float(t["after"]["porosity"]["target"]) == 30.5 and t["after"]["porosity"]["unit_shown"] == "%"
        # refused through the page: 422, the reason is shown, the stored target is unchanged
        assert t["refused_status"] == 422 and "(0, 1)" in t["refused_error"], t
        assert httpx.get(f"{base}/api/v1/feedback/targets").json()["targets"]["porosity"] == stored
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(timeout=30)
        finally:
            log.close()
    assert demo.returncode == 0, log_path.read_text()[-3000:]
