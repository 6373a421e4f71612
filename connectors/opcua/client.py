"""OPC-UA client and security: opening a session with the configured security policy, mode and
identity; checking the server certificate against the trust store before any session is opened;
translating asyncua and socket errors into the connector's typed errors (once, here); closing.

Shared by the connector (:mod:`connectors.opcua.connector`), ``twin browse`` and ``twin init``.
asyncua objects never leave this folder.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.crypto import security_policies

from connectors.opcua import security as pki
from connectors.opcua.config import OpcUaConnectorConfig, SecurityMode, SecurityPolicy, ServerCertificateCheck
from connectors.opcua.errors import (
    AuthenticationFailed,
    ClientCertificateRejected,
    ConnectionFailed,
    OpcUaError,
    PkiError,
    SecurityPolicyUnavailable,
    UntrustedServerCertificate,
)

log = logging.getLogger("twin.connectors.opcua")

POLICY_CLASSES: dict[SecurityPolicy, type[security_policies.SecurityPolicy]] = {
    SecurityPolicy.NONE: security_policies.SecurityPolicyNone,
    SecurityPolicy.BASIC256SHA256: security_policies.SecurityPolicyBasic256Sha256,
    SecurityPolicy.AES128_SHA256_RSAOAEP: security_policies.SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicy.AES256_SHA256_RSAPSS: security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES = {SecurityMode.SIGN: ua.MessageSecurityMode.Sign,
         SecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt}
_AUTH_CODES = {ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadIdentityTokenInvalid,
               ua.StatusCodes.BadIdentityTokenRejected}
_CERT_CODES = {ua.StatusCodes.BadCertificateUntrusted, ua.StatusCodes.BadCertificateInvalid,
               ua.StatusCodes.BadCertificateTimeInvalid, ua.StatusCodes.BadCertificateUriInvalid,
               ua.StatusCodes.BadCertificateUseNotAllowed, ua.StatusCodes.BadCertificateRevoked,
               ua.StatusCodes.BadSecurityChecksFailed}
_POLICY_CODES = {ua.StatusCodes.BadSecurityPolicyRejected, ua.StatusCodes.BadSecurityModeRejected}


def _status_name(code: int) -> str:
    try:
        return ua.StatusCode(code).name
    except Exception:  # noqa: BLE001 - a code asyncua does not know: shown in hex
        return f"0x{code:08X}"


async def _fetch_endpoints(url: str, timeout: float) -> list[ua.EndpointDescription]:
    probe = Client(url, timeout=timeout)
    try:
        return await probe.connect_and_get_server_endpoints()
    except (TimeoutError, OSError, ConnectionError) as err:
        raise ConnectionFailed(f"cannot reach {url}: {err or type(err).__name__}") from err
    except ua.UaError as err:
        raise ConnectionFailed(f"{url}: GetEndpoints failed: {err}") from err


def _endpoint_list(eps: Sequence[ua.EndpointDescription]) -> str:
    out = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in eps})
    return ", ".join(out) or "none"


def _check_server_certificate(cfg: OpcUaConnectorConfig, der: bytes) -> None:
    sec = cfg.security
    store = pki.TrustStore(sec.trust_dir)
    reason = store.check(der)
    if reason is None:
        return
    cert = pki.x509.load_der_x509_certificate(der)
    if sec.server_certificate_check is ServerCertificateCheck.TRUST_ON_FIRST_USE and reason.startswith("not in"):
        uri = pki.application_uri(cert)
        known = []
        if sec.trust_dir.is_dir():
            for f in sec.trust_dir.iterdir():
                try:
                    known.append(pki.application_uri(pki.load_certificate(f)))
                except PkiError:
                    continue
        if uri not in known:
            path = pki.trust(_write_tmp(der, sec.rejected_dir), sec.trust_dir)
            log.warning("opcua %s: trusting server certificate on first use: %s (stored as %s)", cfg.name,
                        pki.describe(cert), path)
            return
        reason = f"differs from the certificate trusted on first use for {uri}"
    saved = pki.save_rejected(der, sec.rejected_dir)
    hint = f"if you trust it, run: twin opcua trust {saved} --trust-dir {sec.trust_dir}" if saved else \
        f"copy the server's certificate into {sec.trust_dir} if you trust it"
    raise UntrustedServerCertificate(
        f"server certificate of {cfg.url} is not trusted ({reason}): {pki.describe(cert)}; "
        f"the connection was refused before a session was opened; {hint}",
        fingerprint=pki.fingerprint(der), saved_to=saved)


def _write_tmp(der: bytes, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    p = where / f".tofu_{time.time_ns()}.der"
    p.write_bytes(der)
    return p


def _translate(err: BaseException, cfg: OpcUaConnectorConfig) -> OpcUaError:
    """asyncua / socket errors -> the connector's typed errors (once, here)."""
    if isinstance(err, OpcUaError):
        return err
    if isinstance(err, ua.UaStatusCodeError):
        code = err.code
        name = _status_name(code)
        if code in _AUTH_CODES:
            who = f"user {cfg.username!r}" if cfg.username else "an anonymous user"
            return AuthenticationFailed(f"{cfg.url} refused {who} ({name}): wrong user name or password, "
                                        "or the server does not allow this identity")
        if code in _CERT_CODES:
            own = cfg.security.certificate
            fp = ""
            try:
                fp = f" (SHA-256 {pki.fingerprint(pki.cert_der(pki.load_certificate(own)))})"
            except PkiError:
                pass
            return ClientCertificateRejected(f"{cfg.url} refused our application certificate {own}{fp} ({name}): "
                                             "its administrator has to trust it")
        if code in _POLICY_CODES:
            return SecurityPolicyUnavailable(f"{cfg.url} refused security policy {cfg.security.policy.value} "
                                             f"({name})")
        return ConnectionFailed(f"{cfg.url}: {name}")
    if isinstance(err, ua.UaError) and "No matching endpoints" in str(err):
        return SecurityPolicyUnavailable(f"{cfg.url} offers no endpoint with security policy "
                                         f"{cfg.security.policy.value}: {err}")
    if isinstance(err, (OSError, asyncio.TimeoutError, ConnectionError)):
        return ConnectionFailed(f"cannot reach {cfg.url}: {err or type(err).__name__}")
    return ConnectionFailed(f"{cfg.url}: {type(err).__name__}: {err}")


async def open_client(cfg: OpcUaConnectorConfig, *, on_lost: Any = None) -> Client:
    """Connect a session with the configured security and identity; raises the typed errors."""
    sec = cfg.security
    client = Client(cfg.url, timeout=cfg.request_timeout_s, watchdog_intervall=cfg.watchdog_interval_s)
    client.session_timeout = int(cfg.session_timeout_s * 1000)
    client.name = client.description = f"pilotline-twin {cfg.name}"
    client.product_uri = "urn:pilotline-twin"
    client.application_uri = cfg.application_uri or pki.DEFAULT_CLIENT_URI
    if cfg.username is not None:
        client.set_user(cfg.username)
        if cfg.password is not None:
            client.set_password(cfg.password.get_secret_value())
    try:
        if sec.policy is not SecurityPolicy.NONE:
            try:
                own = pki.load_certificate(sec.certificate)
            except PkiError as err:
                raise PkiError(f"{err}; create one with: twin opcua make-cert --out {sec.certificate.parent.parent}") \
                    from err
            if not sec.private_key.exists():
                raise PkiError(f"private key {sec.private_key} not found (it is created with the certificate by "
                               "`twin opcua make-cert`)")
            if cfg.application_uri is None:
                client.application_uri = pki.application_uri(own) or pki.DEFAULT_CLIENT_URI
            eps = await _fetch_endpoints(cfg.url, cfg.request_timeout_s)
            cls, mode = POLICY_CLASSES[sec.policy], MODES[sec.mode]
            match = [e for e in eps if e.SecurityPolicyUri == cls.URI and e.SecurityMode == mode]
            if not match:
                raise SecurityPolicyUnavailable(
                    f"{cfg.url} offers no endpoint with {sec.policy.value}/{sec.mode.value}; it offers: "
                    f"{_endpoint_list(eps)}")
            der = match[0].ServerCertificate
            if not der:
                raise UntrustedServerCertificate(f"{cfg.url} sent no certificate with its secure endpoint",
                                                 fingerprint="", saved_to=None)
            der = _first_cert(der)
            _check_server_certificate(cfg, der)
            await client.set_security(
                cls, str(sec.certificate), str(sec.private_key),
                sec.private_key_password.get_secret_value() if sec.private_key_password else None,
                server_certificate=der, mode=mode)
        if on_lost is not None:
            client.connection_lost_callback = on_lost
        await client.connect()
        return client
    except BaseException as err:
        await close_client(client)
        if isinstance(err, asyncio.CancelledError):
            raise
        typed = _translate(err, cfg)
        if isinstance(typed, SecurityPolicyUnavailable) and sec.policy is SecurityPolicy.NONE:
            try:
                offered = _endpoint_list(await _fetch_endpoints(cfg.url, cfg.request_timeout_s))
                typed = SecurityPolicyUnavailable(f"{cfg.url} does not accept security policy none; it offers: "
                                                  f"{offered}")
            except OpcUaError:
                pass
        raise typed from err


def _first_cert(der: bytes) -> bytes:
    n = int.from_bytes(der[2:4], "big") + 4 if len(der) > 4 and der[1] == 0x82 else len(der)
    return der[:n]


async def close_client(client: Client) -> None:
    """Close a client whether its connection is alive or already dead, without raising."""
    try:
        if client.uaclient.state.name == "CONNECTED":
            await asyncio.wait_for(client.disconnect(), timeout=3.0)
        else:
            await asyncio.wait_for(client.close_session(), timeout=2.0)
    except BaseException:  # noqa: BLE001 - closing must not raise
        pass
    try:
        client.uaclient.request_disconnect()
        client.disconnect_socket()
    except Exception:  # noqa: BLE001 - closing must not raise (the socket may be gone)
        pass
