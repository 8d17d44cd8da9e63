"""TLS towards the upstream brokers: the client context, and why a handshake failed.

Pure helpers, no I/O but reading the certificate files once when the context is built.
:func:`upstream_context` makes a client ``ssl.SSLContext`` (TLS 1.2 or later, certificate
and host name verification always on) from the CA bundle (default: the system's trust
store) and an optional client certificate and key for mutual TLS. :func:`failure_reason`
names a handshake failure with one of :data:`HANDSHAKE_FAILURE_REASONS`, a bounded set fit
for a metric label.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from proxy.address import Address

__all__ = [
    "HANDSHAKE_FAILURE_REASONS",
    "TLSSetupError",
    "UpstreamTLS",
    "describe_failure",
    "failure_reason",
    "is_handshake_failure",
    "upstream_context",
]

#: Why a handshake failed (the `reason` label of idemproxy_tls_handshake_failures_total).
HANDSHAKE_FAILURE_REASONS: tuple[str, ...] = (
    "certificate_verify_failed",  # the peer's chain does not lead to a trusted CA (or is bad)
    "certificate_expired",
    "certificate_not_yet_valid",
    "hostname_mismatch",  # the certificate does not name the host (or IP) connected to
    "certificate_rejected",  # the peer refused our certificate, or wanted one (mTLS)
    "protocol_version",  # no TLS version both sides accept
    "not_tls",  # the peer does not speak TLS on that port
    "handshake_failed",  # anything else, including the peer closing during the handshake
)

# OpenSSL X509_V_ERR_* codes (x509_vfy.h), as in ssl.SSLCertVerificationError.verify_code.
_VERIFY_CODES = {
    9: "certificate_not_yet_valid",  # X509_V_ERR_CERT_NOT_YET_VALID
    10: "certificate_expired",  # X509_V_ERR_CERT_HAS_EXPIRED
    62: "hostname_mismatch",  # X509_V_ERR_HOSTNAME_MISMATCH
    64: "hostname_mismatch",  # X509_V_ERR_IP_ADDRESS_MISMATCH
}
# OpenSSL reason strings (ssl.SSLError.reason) of alerts and record-layer errors.
_ALERTS = {
    "SSLV3_ALERT_BAD_CERTIFICATE": "certificate_rejected",
    "TLSV1_ALERT_UNKNOWN_CA": "certificate_rejected",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "certificate_rejected",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate_rejected",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate_rejected",
    "TLSV1_ALERT_ACCESS_DENIED": "certificate_rejected",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "certificate_rejected",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "NO_PROTOCOLS_AVAILABLE": "protocol_version",
    "WRONG_VERSION_NUMBER": "not_tls",
    "PACKET_LENGTH_TOO_LONG": "not_tls",
    "RECORD_LAYER_FAILURE": "not_tls",
}


class TLSSetupError(Exception):
    """A TLS setting cannot be used: ``option`` names it (``"upstream_key"``)."""

    def __init__(self, option: str, reason: str) -> None:
        self.option = option
        self.reason = reason
        super().__init__(f"{option}: {reason}")


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """The context every upstream connection uses, and the name it verifies."""

    context: ssl.SSLContext
    server_name: str | None = None
    """Verified and sent as SNI for every broker instead of the broker's own host."""

    def hostname(self, target: Address) -> str:
        """The name verified (and sent as SNI) when connecting to target."""
        return self.server_name or target.host


def upstream_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context: TLS 1.2+, CERT_REQUIRED, host names checked.

    ca: a PEM bundle of trusted CAs (None: the system's trust store). cert and key: the
    client certificate (PEM, chain allowed) and its private key, for brokers that require
    one. Raises TLSSetupError naming the option whose file cannot be used.
    """
    if (cert is None) != (key is None):
        missing = "upstream_key" if key is None else "upstream_cert"
        raise TLSSetupError(missing, "a client certificate needs both a certificate and a key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    if ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        try:
            context.load_verify_locations(cafile=str(ca))
        except ssl.SSLError as exc:  # before OSError, its base class
            raise TLSSetupError(
                "upstream_ca", f"no usable PEM certificate in {ca}: {_why(exc)}"
            ) from None
        except OSError as exc:
            raise TLSSetupError("upstream_ca", f"cannot read {ca}: {_why(exc)}") from None
        if not context.get_ca_certs():
            raise TLSSetupError("upstream_ca", f"no CA certificate in {ca}")
    if cert is not None and key is not None:
        for option, path in (("upstream_cert", cert), ("upstream_key", key)):
            try:
                path.read_bytes()
            except OSError as exc:
                raise TLSSetupError(option, f"cannot read {path}: {_why(exc)}") from None
        try:
            context.load_cert_chain(certfile=str(cert), keyfile=str(key))
        except (OSError, ssl.SSLError) as exc:
            reason = (
                f"{key} is not the private key of {cert}"
                if "KEY_VALUES_MISMATCH" in str(exc)
                else f"cannot load {cert} with {key}: {_why(exc)}"
            )
            raise TLSSetupError("upstream_key", reason) from None
    return context


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None):
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def is_handshake_failure(exc: BaseException) -> bool:
    """Whether exc, raised while opening a TLS connection, comes from the handshake.

    asyncio raises the ssl errors themselves, ConnectionResetError when the peer closes
    during the handshake (a plaintext Kafka listener does on a ClientHello), and
    ConnectionAbortedError when the handshake times out.
    """
    return isinstance(exc, ssl.SSLError | ConnectionResetError | ConnectionAbortedError)


def failure_reason(exc: BaseException) -> str:
    """The reason (one of HANDSHAKE_FAILURE_REASONS) of a failed TLS handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_CODES.get(exc.verify_code, "certificate_verify_failed")
    if isinstance(exc, ssl.SSLError):
        return _ALERTS.get(str(getattr(exc, "reason", None)), "handshake_failed")
    return "handshake_failed"


def describe_failure(exc: BaseException) -> str:
    """A short human explanation, e.g. ``certificate has expired`` (for logs and /readyz)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None):
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, ConnectionError | EOFError):
        return "connection closed by the broker during the handshake"
    return str(exc) or type(exc).__name__
