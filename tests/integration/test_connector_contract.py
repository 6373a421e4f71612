"""One contract for every registered connector kind (architecture principle 10).

Each kind provides a fixture that makes a live source and a connector for it; the contract then
checks: the connector is an async context manager; ``batches()`` yields RawBatch objects holding
only the project's own frozen types (no library objects leak); counters count what was received;
acknowledgements are callable; after ``stop()`` the iteration ends. A registered kind without a
fixture here fails the suite."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest

from connectors import registry
from connectors.base import Backoff, Connector
from connectors.mqtt.config import MqttConnectorConfig
from connectors.mqtt.connector import MqttConnector
from connectors.replay.config import ReplayConnectorConfig
from connectors.replay.connector import ReplayConnector
from core.samples import DeadLetter, RawBatch, RawReading, SourceKind
from tests.conftest import Mosquitto

pytestmark = pytest.mark.integration

# kind -> async factory(tmp_path, request) -> (connector, feed), feed() makes the source emit >= 3 readings
Factory = Callable[[Path, pytest.FixtureRequest], Awaitable[tuple[Connector, Callable[[], Awaitable[None]]]]]
FACTORIES: dict[str, Factory] = {}


def contract(kind: str) -> Callable[[Factory], Factory]:
    def deco(fn: Factory) -> Factory:
        FACTORIES[kind] = fn
        return fn
    return deco


@contract("replay")
async def _replay(tmp_path: Path, request: pytest.FixtureRequest):
    f = tmp_path / "r.csv"
    f.write_text("timestamp,a,b\n2026-11-22T10:00:00Z,1,2\n2026-11-22T10:00:01Z,3,x\n")

    async def feed() -> None:
        return None

    return ReplayConnector(ReplayConnectorConfig(path=f), default_line_id="L"), feed


@contract("mqtt")
async def _mqtt(tmp_path: Path, request: pytest.FixtureRequest):
    d = tmp_path / "broker"
    d.mkdir()
    broker = Mosquitto(d)
    broker.start()
    request.addfinalizer(broker.stop)
    c = MqttConnector(MqttConnectorConfig(port=broker.port, client_id="contract", topics=["c/#"]),
                      default_line_id="L")

    async def feed() -> None:
        await c.wait_connected(10)  # type: ignore[attr-defined]
        msgs = [{"topic": "c/a", "payload": json.dumps({"ts": 1.0, "value": 1}), "qos": 1},
                {"topic": "c/batch", "payload": json.dumps({"readings": [{"topic": "c/b", "ts": 2.0, "value": 2},
                                                                         {"topic": "c/c", "ts": 3.0, "value": 3}]}),
                 "qos": 1},
                {"topic": "c/d", "payload": "{broken", "qos": 1}]
        await asyncio.to_thread(mqtt_publish.multiple, msgs, hostname="127.0.0.1", port=broker.port)

    return c, feed


from tests.opcua.contract import opcua_contract  # noqa: E402 - after the MQTT and replay factories, in registry order

FACTORIES["opcua"] = opcua_contract


def test_every_registered_kind_has_a_contract_fixture() -> None:
    assert set(registry.kinds()) == set(FACTORIES), "add a contract fixture for each connector kind"


def _own_types_only(batch: RawBatch) -> None:
    assert isinstance(batch, RawBatch)
    for r in batch.readings:
        assert isinstance(r, RawReading)
        assert isinstance(r.value, (int, float, str, bool, type(None))), type(r.value)
        for name in r._fields:
            v = getattr(r, name)
            assert type(v).__module__.split(".")[0] in ("builtins", "core"), (name, type(v))
    for d in batch.dead_letters:
        assert isinstance(d, DeadLetter) and d.reason


@pytest.mark.parametrize("kind", sorted(FACTORIES))
async def test_connector_contract(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    connector, feed = await FACTORIES[kind](tmp_path, request)
    got: list[RawBatch] = []

    async def collect(it: AsyncIterator[RawBatch]) -> None:
        async for b in it:
            _own_types_only(b)
            b.ack()
            got.append(b)
            if sum(len(x) for x in got) >= 4:
                return

    async with connector:
        await feed()
        await asyncio.wait_for(collect(connector.batches()), 20)
        assert connector.counters.received >= 4
        assert connector.counters.dropped == 0
        await connector.stop()
        # after stop() the iteration ends once drained (no hang)
        await asyncio.wait_for(collect_rest(connector), 10)
    info = connector.describe()
    assert info["name"] and info["kind"] == kind


async def collect_rest(c: Connector) -> None:
    async for _ in c.batches():
        pass


# ---- supervision of the connector task (connectors/base.py) -------------------------------------
class _Flaky(Connector):
    """A source whose task fails ``fails`` times before it delivers its readings and finishes."""

    kind = "flaky"
    RESTART_INITIAL_S = 0.05
    RESTART_MAX_S = 0.2

    def __init__(self, fails: int, finite: bool = True) -> None:
        super().__init__("flaky")
        self.fails = fails
        self.finite = finite
        self.runs = 0

    async def _run(self) -> None:
        self.runs += 1
        if self.runs <= self.fails:
            await self.queue.put(RawBatch((RawReading(SourceKind.REPLAY, f"run{self.runs}", 1.0, 1, 1),)))
            raise ZeroDivisionError(f"failure {self.runs}")
        await self.queue.put(RawBatch((RawReading(SourceKind.REPLAY, "last", 2.0, 2, 2),)))
        self.finished = self.finite
        if not self.finite:
            await asyncio.Event().wait()


async def test_a_failing_task_is_restarted_with_backoff_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    c = _Flaky(fails=3)
    async with c:
        got = [r.address async for b in c.batches() for r in b.readings]
    # every run's readings arrive; the task ran 4 times and stopped once _run returned normally
    assert got == ["run1", "run2", "run3", "last"]
    assert c.runs == 4 and c.finished
    info = c.describe()
    assert info["task_restarts"] == 3
    assert info["last_error"] == "ZeroDivisionError: failure 3"
    # the traceback is logged, rate-limited: once per exception type and minute
    tracebacks = [r for r in caplog.records if r.exc_info and "its task failed" in r.getMessage()]
    assert len(tracebacks) == 1 and tracebacks[0].exc_info[0] is ZeroDivisionError


async def test_a_finished_finite_source_is_not_restarted() -> None:
    c = _Flaky(fails=0)
    async with c:
        got = [r.address async for b in c.batches() for r in b.readings]
        await asyncio.sleep(0.3)
    assert got == ["last"] and c.runs == 1 and c.describe()["task_restarts"] == 0


async def test_stop_ends_a_task_waiting_to_restart() -> None:
    c = _Flaky(fails=10**6)
    c.RESTART_INITIAL_S = c.RESTART_MAX_S = 30.0  # type: ignore[misc]
    async with c:
        while c.counters.extra["task_restarts"] < 1:
            await asyncio.sleep(0.01)
        await asyncio.wait_for(c.stop(), 2)
    assert c.runs == 1


def test_backoff_is_equal_jitter_as_documented() -> None:
    import random

    b = Backoff(0.5, 4.0, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(200)]
    caps = [min(4.0, 0.5 * 2**i) for i in range(200)]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps))
    assert max(delays[-100:]) > 3.5 and min(delays[-100:]) < 2.5  # spread over [cap/2, cap]
    b.reset()
    assert 0.25 <= b.next_delay() <= 0.5
    for _ in range(10_000):  # a long outage: no OverflowError from factor ** attempt
        b.next_delay()
