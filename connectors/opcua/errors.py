"""Typed errors of the OPC-UA connector, translated once from asyncua's at the boundary."""

from __future__ import annotations

from pathlib import Path


class OpcUaError(Exception):
    """Base class of the connector's errors."""


class ConnectionFailed(OpcUaError):
    """The server could not be reached, or the connection broke (retried with backoff)."""


class UntrustedServerCertificate(OpcUaError):
    """The server presented a certificate that is not in the trust store (refused before connecting)."""

    def __init__(self, message: str, *, fingerprint: str, saved_to: Path | None) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint
        self.saved_to = saved_to


class SecurityPolicyUnavailable(OpcUaError):
    """The server offers no endpoint with the configured security policy and mode."""


class ClientCertificateRejected(OpcUaError):
    """The server refused our application certificate (not trusted there, expired, wrong URI)."""


class AuthenticationFailed(OpcUaError):
    """The server refused the user identity (wrong user name or password, or anonymous not allowed)."""


class PkiError(OpcUaError):
    """Own certificate or key missing or unreadable."""


class SetpointWriteError(OpcUaError):
    """A setpoint write was refused, failed, or did not read back as written.

    ``code``: not_allowed, not_connected, unknown_node, type, out_of_range, bad_status, verify_failed.
    """

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code
