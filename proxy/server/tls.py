"""TLS both ways: the contexts, why a handshake failed, who a client certificate names.

Pure helpers, no I/O but reading (and stat-ing) the certificate files when a context is
built. :func:`upstream_context` makes a client ``ssl.SSLContext`` (TLS 1.2 or later,
certificate and host name verification always on) from the CA bundle (default: the system's
trust store) and an optional client certificate and key for mutual TLS;
:func:`listener_context` makes the server context of the proxy's own listeners, requiring a
client certificate when given a client CA. :func:`failure_reason` names a handshake failure
with one of :data:`HANDSHAKE_FAILURE_REASONS`, a bounded set fit for a metric label;
:func:`client_principal` names a verified client certificate as Kafka does; :class:`Reloadable`
rebuilds a context when its files change (secret rotation).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.address import Address

__all__ = [
    "HANDSHAKE_FAILURE_REASONS",
    "Reloadable",
    "TLSSetupError",
    "UpstreamTLS",
    "client_principal",
    "describe_failure",
    "failure_reason",
    "files_stamp",
    "is_handshake_failure",
    "listener_context",
    "looks_like_tls",
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
    "certificate_required",  # a client sent no certificate to a listener requiring one (mTLS)
    "plaintext_listener",  # a client began a TLS handshake with a listener without TLS
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
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "certificate_required",  # our listener, mTLS
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "NO_PROTOCOLS_AVAILABLE": "protocol_version",
    "WRONG_VERSION_NUMBER": "not_tls",
    "PACKET_LENGTH_TOO_LONG": "not_tls",
    "RECORD_LAYER_FAILURE": "not_tls",
    "HTTP_REQUEST": "not_tls",
    "HTTPS_PROXY_REQUEST": "not_tls",
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
        _load_ca(context, ca, "upstream_ca")
    if cert is not None and key is not None:
        _load_chain(context, cert, key, "upstream_cert", "upstream_key")
    return context


def listener_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The server context of the proxy's client listeners: TLS 1.2+, the proxy's certificate.

    With client_ca (a PEM bundle), every client must present a certificate it signed
    (CERT_REQUIRED: mutual TLS, like a broker's ``ssl.client.auth=required``). Raises
    TLSSetupError naming the listen_tls_* option whose file cannot be used.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key, "listen_tls_cert", "listen_tls_key")
    if client_ca is not None:
        _load_ca(context, client_ca, "listen_tls_client_ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load_ca(context: ssl.SSLContext, ca: Path, option: str) -> None:
    try:
        context.load_verify_locations(cafile=str(ca))
    except ssl.SSLError as exc:  # before OSError, its base class
        raise TLSSetupError(option, f"no usable PEM certificate in {ca}: {_why(exc)}") from None
    except OSError as exc:
        raise TLSSetupError(option, f"cannot read {ca}: {_why(exc)}") from None
    if not context.get_ca_certs():
        raise TLSSetupError(option, f"no CA certificate in {ca}")


def _load_chain(
    context: ssl.SSLContext, cert: Path, key: Path, cert_option: str, key_option: str
) -> None:
    for option, path in ((cert_option, cert), (key_option, key)):
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
        raise TLSSetupError(key_option, reason) from None


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


def describe_failure(exc: BaseException, peer: str = "the broker") -> str:
    """A short human explanation, e.g. ``certificate has expired`` (for logs and /readyz)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None):
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, ConnectionAbortedError | TimeoutError):
        return "the handshake did not finish in time"
    if isinstance(exc, ConnectionError | EOFError):
        return f"connection closed by {peer} during the handshake"
    return str(exc) or type(exc).__name__


def looks_like_tls(first: bytes) -> bool:
    """Whether the first bytes of a client's stream are a TLS handshake record.

    A TLS record starts with content type 22 (handshake) and major version 3. As a Kafka
    frame size, 0x16 0x03 would announce more than 369 MB, beyond any broker's
    socket.request.max.bytes (100 MB by default; SocketServer refuses larger requests).
    """
    return first[:1] == b"\x16" and first[1:2] in (b"", b"\x03")


# RFC 2253 section 2.3 keywords, as X500Principal.getName() (RFC2253) prints them; any
# other attribute is printed as its dotted OID and the hex of its DER value.
_RFC2253_KEYWORDS = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
# Attributes OpenSSL names without an RFC 2253 keyword: their OID and the DER string tag of
# their value (PKCS#9 emailAddress is an IA5String; the X.520 ones are DirectoryStrings,
# taken as UTF8String, what current CAs write).
_OTHER_ATTRIBUTES = {
    "emailAddress": ("1.2.840.113549.1.9.1", 0x16),
    "serialNumber": ("2.5.4.5", 0x13),  # X.520: PrintableString
    "title": ("2.5.4.12", 0x0C),
    "surname": ("2.5.4.4", 0x0C),
    "givenName": ("2.5.4.42", 0x0C),
    "initials": ("2.5.4.43", 0x0C),
    "generationQualifier": ("2.5.4.44", 0x0C),
    "dnQualifier": ("2.5.4.46", 0x13),  # X.520: PrintableString
    "pseudonym": ("2.5.4.65", 0x0C),
    "businessCategory": ("2.5.4.15", 0x0C),
    "postalCode": ("2.5.4.17", 0x0C),
    "name": ("2.5.4.41", 0x0C),
    "organizationIdentifier": ("2.5.4.97", 0x0C),
}
_ESCAPED = frozenset(',+"\\<>;=#')


def client_principal(peercert: Mapping[str, Any] | None) -> str | None:
    """The name Kafka gives a client certificate: its subject as an RFC 2253 string.

    What the broker's DefaultKafkaPrincipalBuilder takes for an SSL connection (with the
    default ssl.principal.mapping.rules, SslPrincipalMapper's DEFAULT rule keeps it as it
    is): ``X500Principal.getName()``, the most specific RDN first (``CN=app,OU=team,O=corp``),
    multi-valued RDNs joined by ``+``, special characters escaped with a backslash. peercert
    is ``SSLSocket.getpeercert()``; None (or no subject: no certificate verified) gives None.
    """
    if not peercert:
        return None
    subject = peercert.get("subject")
    if not subject:
        return None
    return ",".join(
        "+".join(_attribute(str(name), str(value)) for name, value in rdn)
        for rdn in reversed(tuple(subject))
    )


def _attribute(name: str, value: str) -> str:
    keyword = _RFC2253_KEYWORDS.get(name)
    if keyword is not None:
        return f"{keyword}={_escape(value)}"
    oid, tag = _OTHER_ATTRIBUTES.get(name, (name, 0x0C))
    return f"{oid}=#{_der(tag, value.encode()).hex()}"


def _escape(value: str) -> str:
    # As sun.security.x509.AVA.toRFC2253String: a backslash before each of , = + < > # ; " \\
    # anywhere, NUL as \\00, and before every leading and trailing whitespace character.
    lead = len(value) - len(value.lstrip())
    trail = len(value.rstrip())
    out = []
    for i, char in enumerate(value):
        if char == "\0":
            out.append("\\00")
        elif char in _ESCAPED or i < lead or i >= trail:
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


# --- rotation ---------------------------------------------------------------------------

#: What identifies a file's content without reading it: (inode, size, mtime in ns), or None
#: when it cannot be stat-ed. Kubernetes swaps a secret's files by renaming a symlinked
#: directory, which changes the inode the path resolves to.
Stamp = tuple[tuple[int, int, int] | None, ...]


def files_stamp(paths: Sequence[Path]) -> Stamp:
    """The stamp of each path (following symlinks), in order."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


class Reloadable:
    """A context built from files, rebuilt when one of them changes (secret rotation).

    ``context`` is what a new connection uses; connections already open keep the context
    they were made with. :meth:`check` rebuilds when the files' stamps differ from those of
    the last build attempt: a rotation to files that cannot be used keeps the old context
    (and is not retried until the files change again).
    """

    def __init__(self, build: Callable[[], ssl.SSLContext], paths: Sequence[Path]) -> None:
        self._build = build
        self.paths = tuple(paths)
        self._stamp = files_stamp(self.paths)
        self.context = build()

    def check(self) -> bool:
        """True when the files changed and the context was rebuilt, False when none changed.

        Raises TLSSetupError (naming the option) when the changed files cannot be used; the
        old context stays.
        """
        stamp = files_stamp(self.paths)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        self.context = self._build()
        return True
