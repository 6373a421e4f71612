"""MQTT with username/password and TLS against a real mosquitto (certificates made by openssl)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest

from connectors.mqtt.config import MqttConnectorConfig, TlsConfig
from connectors.mqtt.connector import MqttConnector
from tests.conftest import Mosquitto, free_port

pytestmark = pytest.mark.integration


def make_pki(d: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make test certificates")
    def run(*a):
        return subprocess.run(a, cwd=d, check=True, capture_output=True)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=twin-test-ca")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")


@pytest.fixture
def secure_broker(tmp_path: Path):
    d = tmp_path / "sbroker"
    d.mkdir()
    make_pki(d)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(d / "passwd"), "twin", "s3cret"], check=True,
                   capture_output=True)
    m = Mosquitto(d)
    tls_port = free_port()
    m.conf.write_text(m.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
                      + f"password_file {d}/passwd\n"
                      f"listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\n"
                      f"keyfile {d}/server.key\n")
    m.start()
    m.tls_port = tls_port  # type: ignore[attr-defined]
    yield m
    m.stop()


async def _roundtrip(c: MqttConnector, port: int, auth: dict, tls: dict | None) -> float:
    async with c:
        await c.wait_connected(10)
        await asyncio.to_thread(mqtt_publish.single, "s/a", json.dumps({"ts": 1.0, "value": 42.0}), qos=1,
                                hostname="127.0.0.1", port=port, auth=auth, tls=tls)
        async for b in c.batches():
            b.ack()
            return b.readings[0].value
    raise AssertionError("no batch")


async def test_username_password_and_tls(secure_broker: Mosquitto, tmp_path: Path) -> None:
    d = secure_broker.workdir
    auth = {"username": "twin", "password": "s3cret"}
    plain = MqttConnector(MqttConnectorConfig(port=secure_broker.port, client_id="sec-1", topics=["s/#"],
                                              username="twin", password="s3cret"))
    assert await asyncio.wait_for(_roundtrip(plain, secure_broker.port, auth, None), 20) == 42.0
    tls_port = secure_broker.tls_port  # type: ignore[attr-defined]
    over_tls = MqttConnector(MqttConnectorConfig(port=tls_port, client_id="sec-2", topics=["s/#"],
                                                 username="twin", password="s3cret",
                                                 tls=TlsConfig(ca_file=d / "ca.pem")))
    assert await asyncio.wait_for(_roundtrip(over_tls, tls_port, auth, {"ca_certs": str(d / "ca.pem")}), 20) == 42.0


async def test_wrong_password_is_refused_and_retried_with_backoff(secure_broker: Mosquitto) -> None:
    c = MqttConnector(MqttConnectorConfig(port=secure_broker.port, client_id="sec-3", topics=["s/#"],
                                          username="twin", password="wrong",
                                          backoff={"initial_s": 0.1, "max_s": 0.3}))
    async with c:
        await asyncio.sleep(1.5)
        assert not c.counters.connected
        assert c.last_error is not None and "refused" in c.last_error
        assert c.counters.reconnects >= 2  # keeps trying, with backoff, without crashing


async def test_untrusted_broker_certificate_is_refused(secure_broker: Mosquitto, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    make_pki(other)  # a different CA
    c = MqttConnector(MqttConnectorConfig(port=secure_broker.tls_port, client_id="sec-4", topics=["s/#"],  # type: ignore[attr-defined]
                                          username="twin", password="s3cret",
                                          tls=TlsConfig(ca_file=other / "ca.pem"),
                                          backoff={"initial_s": 0.1, "max_s": 0.3}))
    async with c:
        await asyncio.sleep(1.0)
        assert not c.counters.connected
        assert c.last_error is not None and "certificate verify failed" in c.last_error
