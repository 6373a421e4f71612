"""Fixtures: a real influxd 1.6.7 and a real VictoriaMetrics, each on free loopback ports in the
test's temporary folder (tests/influx/servers.py), and InfluxDB store configs pointing at them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.influx.servers import InfluxD, VictoriaMetrics
from twin.config import InfluxStoreConfig


def _start(server: Any) -> Any:
    try:
        server.start()
    except FileNotFoundError as err:
        pytest.fail(str(err))
    return server


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[InfluxD]:
    s = _start(InfluxD(tmp_path / "influxd"))
    yield s
    s.stop()


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    s = _start(VictoriaMetrics(tmp_path / "vm"))
    yield s
    s.stop()


def v1_config(server: InfluxD, tmp_path: Path, **kw: Any) -> InfluxStoreConfig:
    """v1 write (/write) + InfluxQL against influxd 1.6.7; short timings so the tests are quick."""
    base: dict[str, Any] = dict(url=server.url, write_api="v1", database=server.database,
                                outbox_path=tmp_path / "outbox.sqlite", batch_size=1000, max_in_flight_batches=1,
                                flush_interval_ms=50, timeout_ms=2000,
                                retry={"interval_ms": 200, "max_retries": 3, "max_delay_ms": 1000,
                                       "max_time_ms": 5000})
    base.update(kw)
    return InfluxStoreConfig(**base)


def v2_config(server: VictoriaMetrics, tmp_path: Path, **kw: Any) -> InfluxStoreConfig:
    """v2 write (influxdb-client batching WriteApi -> /api/v2/write) against VictoriaMetrics."""
    base: dict[str, Any] = dict(url=server.url, write_api="v2", bucket="twin", org="plant", token="unused",
                                outbox_path=tmp_path / "outbox.sqlite", batch_size=1000, max_in_flight_batches=2,
                                flush_interval_ms=50, timeout_ms=2000, read_barrier_s=0,
                                retry={"interval_ms": 200, "max_retries": 3, "max_delay_ms": 1000,
                                       "max_time_ms": 5000})
    base.update(kw)
    return InfluxStoreConfig(**base)
