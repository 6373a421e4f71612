"""``twin lab import``: a lab file imported into the configured stores (the twin's store must know the rolls);
its report; exit 1 when rows became dead letters; a second import stores nothing twice."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from tests.lab.conftest import lab_daemon, replay
from tests.lab.test_lab_ingest import BAD_FILE
from twin.cli import app
from twin.lab.store import LabStore


def test_twin_lab_import(tmp_path: Path) -> None:
    d = lab_daemon(tmp_path, predictor=False)
    asyncio.run(replay(d, keep=lambda i: i < 200, rows_per_batch=100))
    d.store.close()
    f = tmp_path / "lims.csv"
    f.write_bytes(BAD_FILE)
    runner = CliRunner()
    r = runner.invoke(app, ["lab", "import", str(f), "--config", str(tmp_path / "twin.toml")])
    assert r.exit_code == 1, r.output
    (rep,) = json.loads(r.stdout)
    assert rep["stored"] == 2 and rep["dead_letters"] == 7 and rep["origin"] == "file:lims.csv"
    r = runner.invoke(app, ["lab", "import", str(tmp_path), "--config", str(tmp_path / "twin.toml")])
    (rep,) = json.loads(r.stdout)
    assert rep["stored"] == 0 and rep["duplicates"] == 2
    s = LabStore(tmp_path / "lab.sqlite")
    assert s.count_results() == 2 and {x["source"] for x in s.results()} == {"lab-cli"}
    s.close()
    r = runner.invoke(app, ["lab", "import", str(f)])
    assert r.exit_code == 2


async def test_twin_lab_import_through_a_running_twin(tmp_path: Path) -> None:
    """--url: the file is posted to a running daemon's API (real uvicorn), with a write-scope token."""
    from tests.lab.conftest import WRITER

    d = lab_daemon(tmp_path, predictor=False)
    await replay(d, keep=lambda i: i < 200, rows_per_batch=100)
    run = asyncio.create_task(d.run(install_signals=False))
    try:
        for _ in range(400):
            if d.api_port is not None:
                break
            await asyncio.sleep(0.02)
        assert d.api_port is not None
        f = tmp_path / "lims.csv"
        f.write_bytes(BAD_FILE)
        url = f"http://127.0.0.1:{d.api_port}"
        runner = CliRunner()
        r = await asyncio.to_thread(runner.invoke, app, ["lab", "import", str(f), "--url", url, "--token", WRITER])
        assert r.exit_code == 1, r.output
        (rep,) = json.loads(r.stdout)
        assert rep["stored"] == 2 and rep["dead_letters"] == 7 and rep["origin"] == "file:lims.csv:engineer"
        r = await asyncio.to_thread(runner.invoke, app, ["lab", "import", str(f), "--url", url, "--token", "nope"])
        assert r.exit_code == 2 and "HTTP 401" in r.stdout
    finally:
        d.request_stop()
        await asyncio.wait_for(run, 30)
