"""Certificates and the trust store of OPC-UA application authentication.

Layout of a PKI folder (the same for the twin's client and for the simulator's server)::

    pki/own/cert.der        the application's certificate (`twin opcua make-cert --out pki`)
    pki/own/cert.pem        the same, PEM (for people and other tools)
    pki/own/key.pem         its private key (mode 0600)
    pki/trusted/*.der|pem   certificates of the peers we trust (`twin opcua trust CERT`)
    pki/rejected/*.der      certificates we refused, kept for review; trusting one is a copy

A peer certificate is trusted when its SHA-256 fingerprint equals that of a certificate in
``trusted/`` (the usual case: self-signed application certificates), or when it verifies against a
CA certificate placed there, and it is within its validity period.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connectors.opcua.errors import PkiError

DEFAULT_CLIENT_URI = "urn:pilotline-twin:client"


@dataclass(frozen=True)
class CertPaths:
    cert_der: Path
    cert_pem: Path
    key_pem: Path


def fingerprint(der: bytes) -> str:
    """SHA-256 fingerprint, colon-separated upper-case hex (as UaExpert and openssl show it)."""
    h = hashlib.sha256(der).hexdigest().upper()
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


def load_certificate(path: str | Path) -> x509.Certificate:
    """A certificate from a DER or PEM file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise PkiError(f"cannot read certificate {p}: {err.strerror or err}") from err
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as err:
        raise PkiError(f"{p} is not a DER or PEM certificate: {err}") from err


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def common_name(cert: x509.Certificate) -> str:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else cert.subject.rfc4514_string()


def application_uri(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def describe(cert: x509.Certificate) -> str:
    """One line for people: CN, application URI, validity, fingerprint."""
    uri = application_uri(cert)
    return (f"CN={common_name(cert)}" + (f", URI={uri}" if uri else "")
            + f", valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"
            + f", SHA-256 {fingerprint(cert_der(cert))}")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:40] or "cert"


def cert_file_name(cert: x509.Certificate) -> str:
    return f"{_safe_name(common_name(cert))}_{hashlib.sha256(cert_der(cert)).hexdigest()[:16]}.der"


def make_certificate(out_dir: str | Path, *, application_uri_: str = DEFAULT_CLIENT_URI,
                     common_name_: str = "pilotline-twin client", hostnames: list[str] | None = None,
                     ips: list[str] | None = None, days: int = 730, server: bool = False,
                     overwrite: bool = False) -> CertPaths:
    """Create a self-signed OPC-UA application instance certificate (RSA 2048, SHA-256; fits
    Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss) in ``out_dir/own/`` and the
    ``trusted/`` and ``rejected/`` folders next to it."""
    from asyncua.crypto import cert_gen

    out = Path(out_dir)
    own = out / "own"
    paths = CertPaths(own / "cert.der", own / "cert.pem", own / "key.pem")
    if paths.cert_der.exists() and not overwrite:
        raise PkiError(f"{paths.cert_der} exists; pass overwrite=True (--force) to replace it")
    for d in (own, out / "trusted", out / "rejected"):
        d.mkdir(parents=True, exist_ok=True)
    hosts = hostnames if hostnames is not None else sorted({socket.gethostname(), "localhost"})
    addrs = ips if ips is not None else ["127.0.0.1"]
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri_)]
    sans += [x509.DNSName(h) for h in hosts]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addrs]
    key = cert_gen.generate_private_key()
    eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = cert_gen.generate_self_signed_app_certificate(key, common_name_, {"organizationName": "pilotline-twin"},
                                                         sans, eku, days=days)
    paths.cert_der.write_bytes(cert_der(cert))
    paths.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(paths.key_pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(cert_gen.dump_private_key_as_pem(key))
    return paths


def trust(cert_path: str | Path, trust_dir: str | Path) -> Path:
    """Copy a peer certificate into the trust store (as DER, named by CN and fingerprint)."""
    cert = load_certificate(cert_path)
    d = Path(trust_dir)
    d.mkdir(parents=True, exist_ok=True)
    dest = d / cert_file_name(cert)
    dest.write_bytes(cert_der(cert))
    return dest


def save_rejected(der: bytes, rejected_dir: str | Path) -> Path | None:
    """Keep a refused certificate for review; None if it cannot be written."""
    try:
        cert = x509.load_der_x509_certificate(der)
        d = Path(rejected_dir)
        d.mkdir(parents=True, exist_ok=True)
        dest = d / cert_file_name(cert)
        dest.write_bytes(der)
        return dest
    except (OSError, ValueError):
        return None


class TrustStore:
    """The certificates in one folder; reloaded when the folder changes (a `trust` needs no restart)."""

    def __init__(self, trust_dir: str | Path) -> None:
        self.dir = Path(trust_dir)
        self._stamp: tuple[float, int] | None = None
        self._fingerprints: set[str] = set()
        self._cas: list[x509.Certificate] = []

    def _scan(self) -> None:
        try:
            st = self.dir.stat()
            files = sorted(p for p in self.dir.iterdir() if p.suffix.lower() in (".der", ".pem", ".crt", ".cer"))
        except OSError:
            self._fingerprints, self._cas, self._stamp = set(), [], None
            return
        stamp = (st.st_mtime, len(files))
        if stamp == self._stamp:
            return
        fps: set[str] = set()
        cas: list[x509.Certificate] = []
        for f in files:
            try:
                c = load_certificate(f)
            except PkiError:
                continue
            fps.add(fingerprint(cert_der(c)))
            try:
                bc = c.extensions.get_extension_for_class(x509.BasicConstraints).value
                ku = c.extensions.get_extension_for_class(x509.KeyUsage).value
                if bc.ca and ku.key_cert_sign:
                    cas.append(c)
            except x509.ExtensionNotFound:
                pass
        self._fingerprints, self._cas, self._stamp = fps, cas, stamp

    def __len__(self) -> int:
        self._scan()
        return len(self._fingerprints)

    def check(self, der: bytes) -> str | None:
        """None when trusted; otherwise the reason it is not."""
        self._scan()
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as err:
            return f"not a valid certificate: {err}"
        now = _dt.datetime.now(_dt.UTC)
        if cert.not_valid_after_utc < now:
            return f"expired on {cert.not_valid_after_utc:%Y-%m-%d}"
        if cert.not_valid_before_utc > now:
            return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
        if fingerprint(der) in self._fingerprints:
            return None
        if self._cas and self._issued_by_trusted_ca(cert):
            return None
        return f"not in the trust store {self.dir}"

    def _issued_by_trusted_ca(self, cert: x509.Certificate) -> bool:
        try:
            from cryptography.x509 import verification

            store = verification.Store(self._cas)
            verifier = verification.PolicyBuilder().store(store).extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            ).build_client_verifier()
            verifier.verify(cert, [])
            return True
        except Exception:  # noqa: BLE001 - any verification failure means "not trusted"
            return False
