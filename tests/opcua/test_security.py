"""Message security, certificates and user identity against the simulator in --security mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from asyncua import Client, ua

from connectors.opcua import security as pki
from connectors.opcua.connector import OpcUaConnector
from connectors.opcua.errors import (
    AuthenticationFailed,
    ClientCertificateRejected,
    SecurityPolicyUnavailable,
    UntrustedServerCertificate,
)
from tests.conftest import free_port
from tests.opcua.conftest import collect, sample_config
from twin.simline.opcua_server import ServerSecurity, SimLineServer

pytestmark = pytest.mark.integration

USERS = {"operator": "s3cret-pw"}


@pytest.fixture
async def secure(tmp_path: Path):
    """A simulator that requires security, with a client PKI whose certificate it trusts; the
    client does not trust the server yet."""
    server_pki = tmp_path / "server-pki"
    srv = SimLineServer(port=free_port(), security=ServerSecurity(server_pki), users=USERS)
    client_pki = tmp_path / "client-pki"
    paths = pki.make_certificate(client_pki, application_uri_="urn:pilotline-twin:client:test")
    pki.trust(paths.cert_der, server_pki / "trusted")
    await srv.start()
    yield srv, client_pki
    await srv.stop()


def secure_config(srv: SimLineServer, client_pki: Path, policy: str = "basic256sha256",
                  mode: str = "sign_and_encrypt", username: str | None = "operator",
                  password: str | None = USERS["operator"]):
    return sample_config(
        srv.url, browse_roots=[], nodes=["ns=2;s=Calender.GapActual", "ns=2;s=Calender.LineLoad"],
        username=username, password=password,
        security={"policy": policy, "mode": mode, "certificate": str(client_pki / "own" / "cert.der"),
                  "private_key": str(client_pki / "own" / "key.pem"), "trust_dir": str(client_pki / "trusted"),
                  "rejected_dir": str(client_pki / "rejected")})


@pytest.mark.parametrize("policy", ["basic256sha256", "aes256_sha256_rsapss", "aes128_sha256_rsaoaep"])
async def test_sign_and_encrypt_with_trusted_certificates(secure, policy: str) -> None:
    srv, client_pki = secure
    pki.trust(srv.certificate_path, client_pki / "trusted")
    async with OpcUaConnector(secure_config(srv, client_pki, policy), default_line_id="x") as c:
        await c.wait_connected(20)
        readings = await collect(c, 1.0, lambda rs: len({r.address for r in rs}) == 2)
    assert {r.address for r in readings} == {"ns=2;s=Calender.GapActual", "ns=2;s=Calender.LineLoad"}
    assert srv.stats.sessions_refused == 0


async def test_untrusted_server_certificate_is_refused_then_trusted_by_command(secure) -> None:
    srv, client_pki = secure
    conn = OpcUaConnector(secure_config(srv, client_pki), default_line_id="x")
    with pytest.raises(UntrustedServerCertificate) as ei:
        await conn.check()
    err = ei.value
    msg = str(err)
    assert "not trusted" in msg and "twin opcua trust" in msg and "CN=pilotline-twin simline" in msg
    assert err.saved_to is not None and err.saved_to.parent == client_pki / "rejected"
    assert err.fingerprint == pki.fingerprint(pki.cert_der(pki.load_certificate(srv.certificate_path)))
    assert str(err.saved_to) in msg
    # the running connector reports the same error and keeps retrying
    async with conn:
        with pytest.raises(TimeoutError) as ti:
            await conn.wait_connected(1.5)
        assert "not trusted" in str(ti.value)
        assert isinstance(conn.last_exception, UntrustedServerCertificate)
        # the explicit command: trust the saved certificate; the next retry connects
        pki.trust(err.saved_to, client_pki / "trusted")
        await conn.wait_connected(15)


async def test_client_without_the_required_policy_is_refused(secure, monkeypatch: pytest.MonkeyPatch) -> None:
    srv, client_pki = secure
    pki.trust(srv.certificate_path, client_pki / "trusted")
    cfg = secure_config(srv, client_pki, policy="none", password=None, username=None)
    with pytest.raises(SecurityPolicyUnavailable) as ei:
        await OpcUaConnector(cfg, default_line_id="x").check()
    assert "does not accept security policy none" in str(ei.value)
    assert "Aes256_Sha256_RsaPss/SignAndEncrypt" in str(ei.value) and "Basic256Sha256/SignAndEncrypt" in str(ei.value)
    # a client that skips its own endpoint check is refused by the simulator itself
    raw = Client(srv.url)
    orig = Client.find_endpoint

    def any_endpoint(eps, mode, uri):
        try:
            return orig(eps, mode, uri)
        except ua.UaError:
            return eps[0]

    monkeypatch.setattr(Client, "find_endpoint", staticmethod(any_endpoint))
    raw.set_user("operator")
    raw.set_password(USERS["operator"])
    with pytest.raises(ua.UaStatusCodeError) as ri:
        await raw.connect()
    assert ri.value.code == ua.StatusCodes.BadSecurityPolicyRejected
    assert srv.stats.sessions_refused >= 1
    monkeypatch.undo()
    # a mode the server does not offer
    with pytest.raises(SecurityPolicyUnavailable) as mi:
        await OpcUaConnector(secure_config(srv, client_pki, mode="sign"), default_line_id="x").check()
    assert "sign" in str(mi.value) and "SignAndEncrypt" in str(mi.value)


async def test_untrusted_client_certificate_is_refused_by_the_simulator(secure, tmp_path: Path) -> None:
    srv, _ = secure
    other = tmp_path / "other-pki"
    pki.make_certificate(other, application_uri_="urn:pilotline-twin:client:other")
    pki.trust(srv.certificate_path, other / "trusted")
    with pytest.raises(ClientCertificateRejected) as ei:
        await OpcUaConnector(secure_config(srv, other), default_line_id="x").check()
    assert "BadCertificateUntrusted" in str(ei.value)
    rejected = list((srv.security.pki_dir / "rejected").iterdir())
    assert len(rejected) == 1


async def test_wrong_password_and_anonymous_are_refused(secure) -> None:
    srv, client_pki = secure
    pki.trust(srv.certificate_path, client_pki / "trusted")
    with pytest.raises(AuthenticationFailed) as ei:
        await OpcUaConnector(secure_config(srv, client_pki, password="wrong"), default_line_id="x").check()
    assert "operator" in str(ei.value) and "BadUserAccessDenied" in str(ei.value)
    with pytest.raises(AuthenticationFailed):
        await OpcUaConnector(secure_config(srv, client_pki, username=None, password=None),
                             default_line_id="x").check()
    ok = await OpcUaConnector(secure_config(srv, client_pki), default_line_id="x").check()
    assert ok["nodes"] == 2 and ok["with_unit"] == 2


def test_none_policy_needs_loopback_or_security() -> None:
    with pytest.raises(ValueError, match="loopback"):
        SimLineServer(host="0.0.0.0", port=free_port())


def test_trust_store(tmp_path: Path) -> None:
    a = pki.make_certificate(tmp_path / "a")
    b = pki.make_certificate(tmp_path / "b")
    store = pki.TrustStore(tmp_path / "store")
    der_a = a.cert_der.read_bytes()
    assert "not in the trust store" in (store.check(der_a) or "")
    pki.trust(a.cert_pem, tmp_path / "store")  # PEM in, DER stored
    assert store.check(der_a) is None
    assert store.check(b.cert_der.read_bytes()) is not None
    assert len(store) == 1
    with pytest.raises(pki.PkiError):
        pki.make_certificate(tmp_path / "a")  # no silent overwrite
    assert (tmp_path / "a" / "own" / "key.pem").stat().st_mode & 0o077 == 0


async def test_sign_only_mode_when_the_server_offers_it(tmp_path: Path) -> None:
    server_pki, client_pki = tmp_path / "s", tmp_path / "c"
    paths = pki.make_certificate(client_pki, application_uri_="urn:pilotline-twin:client:test")
    pki.trust(paths.cert_der, server_pki / "trusted")
    srv = SimLineServer(port=free_port(), security=ServerSecurity(server_pki, ("basic256sha256",),
                                                                  ("sign", "sign_and_encrypt")), users=USERS)
    await srv.start()
    try:
        pki.trust(srv.certificate_path, client_pki / "trusted")
        ok = await OpcUaConnector(secure_config(srv, client_pki, mode="sign"), default_line_id="x").check()
        assert ok["nodes"] == 2
        with pytest.raises(SecurityPolicyUnavailable, match="Basic256Sha256/Sign"):
            await OpcUaConnector(secure_config(srv, client_pki, policy="aes256_sha256_rsapss"),
                                 default_line_id="x").check()
    finally:
        await srv.stop()
