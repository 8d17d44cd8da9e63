"""The sidecar's own SASL client: one authentication of one upstream connection, sans I/O.

`SaslClient` yields the request bodies to send and consumes the broker's response bodies, the
exchange of Apache Kafka's SaslClientAuthenticator: ApiVersions v0 (to pick the SaslAuthenticate
version; skipped on re-authentication, which reuses the versions), SaslHandshake v1 naming the
mechanism, then SaslAuthenticate rounds until the mechanism is done. The mechanisms themselves
are kafka-python's (`kafka.net.sasl`: PLAIN per RFC 4616, SCRAM per RFC 5802); this module only
frames their tokens and reads the broker's verdicts. It ends authenticated, with the broker's
session lifetime (KIP-368, SaslAuthenticate v1+), or failed with a `SaslAuthenticationFailed`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka.net.sasl.plain import SaslMechanismPlain
from kafka.net.sasl.scram import SaslMechanismScram
from kafka.protocol.metadata.api_versions import ApiVersionsRequest, ApiVersionsResponse
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)

from proxy.errors import ProxyError
from proxy.wire import error_codes as E
from proxy.wire.apis import ApiKey
from proxy.wire.headers import peek_correlation_id

__all__ = [
    "MECHANISMS",
    "SaslAuthenticationFailed",
    "SaslClient",
    "SaslCredentials",
    "failure_reason",
]

#: The mechanisms the sidecar can authenticate with (--upstream-sasl-mechanism).
MECHANISMS: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

SASL_AUTHENTICATION_FAILED = 58
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATE = 36
#: SaslHandshake v1 announces SaslAuthenticate framing (v0 sends raw tokens; Kafka < 1.0).
_HANDSHAKE_VERSION = 1
#: Highest SaslAuthenticate version sent (v1 adds session_lifetime_ms, v2 flexible encoding).
_MAX_AUTHENTICATE_VERSION = 2
_CLIENT_ID = "idemproxy"

#: Kafka error code -> the `reason` label of idemproxy_sasl_authentication_failures_total.
_REASONS = {
    SASL_AUTHENTICATION_FAILED: "sasl_authentication_failed",
    UNSUPPORTED_SASL_MECHANISM: "unsupported_sasl_mechanism",
    ILLEGAL_SASL_STATE: "illegal_sasl_state",
}


def failure_reason(error_code: int | None) -> str:
    """The metric reason of a Kafka error code (None: no error code, e.g. a closed connection)."""
    return _REASONS.get(error_code, "other") if error_code is not None else "other"


@dataclass(frozen=True, slots=True)
class SaslCredentials:
    """Who the sidecar authenticates as; the password never appears in repr or str."""

    mechanism: str
    username: str
    password: str = field(repr=False)
    #: SCRAM salted passwords by (mechanism, salt, iterations): PBKDF2 costs ~14 ms of CPU
    #: for SCRAM-SHA-512 at 4096 iterations, and the broker's salt for a user is fixed.
    _salted: dict[tuple[str, bytes, int], bytes] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"unsupported SASL mechanism {self.mechanism!r}")

    def mechanism_client(self) -> Any:
        """A fresh kafka-python mechanism object for one exchange."""
        if self.mechanism == "PLAIN":
            return SaslMechanismPlain(
                sasl_plain_username=self.username, sasl_plain_password=self.password
            )
        # RFC 5802 saslname: ',' and '=' escaped (Kafka's ScramFormatter.username unescapes);
        # kafka-python puts the name in client-first-message as given.
        name = self.username.replace("=", "=3D").replace(",", "=2C")
        mechanism = SaslMechanismScram(
            sasl_plain_username=name,
            sasl_plain_password=self.password,
            sasl_mechanism=self.mechanism,
        )
        scram = getattr(mechanism, "_scram_client", None)
        if scram is not None and hasattr(scram, "create_salted_password"):
            scram.create_salted_password = self._salting(scram)
        return mechanism

    def _salting(self, scram: Any) -> Callable[[bytes, int], None]:
        original = scram.create_salted_password
        cache = self._salted

        def create_salted_password(salt: bytes, iterations: int) -> None:
            key = (self.mechanism, bytes(salt), int(iterations))
            salted = cache.get(key)
            if salted is None:
                original(salt, iterations)
                cache.clear()  # one user, one salt: keep the latest only
                cache[key] = scram.salted_password
            else:
                scram.salted_password = salted

        return create_salted_password


class SaslAuthenticationFailed(ProxyError):
    """The upstream SASL authentication failed; `kind` is the metric reason."""

    error_code = SASL_AUTHENTICATION_FAILED

    def __init__(self, reason: str, *, kafka_error: int | None = None) -> None:
        super().__init__(reason)
        self.kafka_error = kafka_error
        self.kind = failure_reason(kafka_error)


@dataclass(frozen=True, slots=True)
class Request:
    """A request of the exchange: its API key and body (header included, no size prefix)."""

    api_key: int
    correlation_id: int
    body: bytes


class SaslClient:
    """One SASL exchange on one connection: `start()`, then `receive()` each response.

    `correlation_ids` gives the id of each request (the proxy's own ids, not a client's).
    `authenticate_version`: known from an earlier exchange on this connection
    (re-authentication); None sends ApiVersions v0 first to learn it.
    """

    def __init__(
        self,
        credentials: SaslCredentials,
        correlation_ids: Callable[[], int],
        authenticate_version: int | None = None,
    ) -> None:
        self.credentials = credentials
        self._ids = correlation_ids
        self.authenticate_version = authenticate_version
        self._mechanism: Any = None
        self._pending: Request | None = None
        self.authenticated = False
        #: KIP-368: ms after which the broker accepts only re-authentication (0: no limit).
        self.session_lifetime_ms = 0

    def start(self) -> Request:
        """The first request to send."""
        if self.authenticate_version is None:
            return self._request(ApiKey.API_VERSIONS, ApiVersionsRequest[0]())
        return self._handshake()

    def receive(self, body: bytes) -> Request | None:
        """Consume the response to the last request: the next request, or None when
        authenticated. Raises SaslAuthenticationFailed (the exchange is over)."""
        pending = self._pending
        if pending is None:
            raise SaslAuthenticationFailed("a response arrived with no SASL request pending")
        self._pending = None
        if len(body) < 4 or peek_correlation_id(body) != pending.correlation_id:
            raise SaslAuthenticationFailed(
                f"the broker answered another request than the proxy's SASL request "
                f"(correlation id {pending.correlation_id})"
            )
        if pending.api_key == ApiKey.API_VERSIONS:
            return self._versions(body)
        if pending.api_key == ApiKey.SASL_HANDSHAKE:
            return self._handshaken(body)
        return self._authenticated(body)

    # -- steps ------------------------------------------------------------------------

    def _versions(self, body: bytes) -> Request:
        response = _decode(ApiVersionsResponse[0], body, "ApiVersions v0")
        if response.error_code != E.NONE:
            raise SaslAuthenticationFailed(
                f"the broker refused ApiVersions v0 (error {response.error_code})",
                kafka_error=response.error_code,
            )
        ranges = {k.api_key: (k.min_version, k.max_version) for k in response.api_keys}
        handshake = ranges.get(ApiKey.SASL_HANDSHAKE)
        authenticate = ranges.get(SASL_AUTHENTICATE)
        if handshake is None or handshake[1] < _HANDSHAKE_VERSION or authenticate is None:
            # Kafka < 1.0: SASL tokens unframed after SaslHandshake v0, not supported.
            raise SaslAuthenticationFailed(
                "the broker offers no SaslHandshake v1 and SaslAuthenticate (Kafka 1.0 or "
                "later is needed)"
            )
        self.authenticate_version = min(authenticate[1], _MAX_AUTHENTICATE_VERSION)
        return self._handshake()

    def _handshake(self) -> Request:
        request = SaslHandshakeRequest[_HANDSHAKE_VERSION](mechanism=self.credentials.mechanism)
        return self._request(ApiKey.SASL_HANDSHAKE, request)

    def _handshaken(self, body: bytes) -> Request:
        response = _decode(SaslHandshakeResponse[_HANDSHAKE_VERSION], body, "SaslHandshake v1")
        mechanism = self.credentials.mechanism
        enabled = ", ".join(response.mechanisms or ()) or "none"
        if response.error_code == UNSUPPORTED_SASL_MECHANISM:
            raise SaslAuthenticationFailed(
                f"the broker does not enable SASL mechanism {mechanism} (enabled: {enabled})",
                kafka_error=response.error_code,
            )
        if response.error_code == ILLEGAL_SASL_STATE:
            # KafkaApis.handleSaslHandshakeRequest: a listener without SASL, or a connection
            # already authenticated whose broker has no connections.max.reauth.ms.
            raise SaslAuthenticationFailed(
                "the broker does not accept a SASL handshake on this connection "
                "(ILLEGAL_SASL_STATE: a listener without SASL?)",
                kafka_error=response.error_code,
            )
        if response.error_code != E.NONE:
            raise SaslAuthenticationFailed(
                f"the broker refused the SASL handshake (error {response.error_code})",
                kafka_error=response.error_code,
            )
        self._mechanism = self.credentials.mechanism_client()
        return self._token()

    def _token(self) -> Request:
        try:
            token = self._mechanism.auth_bytes()
        except Exception as exc:  # kafka-python's mechanisms raise assorted types
            raise SaslAuthenticationFailed(f"{self.credentials.mechanism}: {exc}") from None
        version = self.authenticate_version
        assert version is not None
        request = SaslAuthenticateRequest[version](auth_bytes=bytes(token))
        return self._request(SASL_AUTHENTICATE, request)

    def _authenticated(self, body: bytes) -> Request | None:
        version = self.authenticate_version
        assert version is not None
        response = _decode(SaslAuthenticateResponse[version], body, f"SaslAuthenticate v{version}")
        if response.error_code != E.NONE:
            message = response.error_message or "no message"
            raise SaslAuthenticationFailed(
                f"the broker refused {self.credentials.mechanism} authentication as "
                f"{self.credentials.username!r}: {message}",
                kafka_error=response.error_code,
            )
        mechanism = self._mechanism
        try:
            mechanism.receive(bytes(response.auth_bytes or b""))
        except Exception as exc:  # a SCRAM answer that does not parse or verify
            raise SaslAuthenticationFailed(
                f"{self.credentials.mechanism}: the broker's answer does not verify: {exc!r}"
            ) from None
        if not mechanism.is_done():
            return self._token()
        if not mechanism.is_authenticated():
            raise SaslAuthenticationFailed(
                f"{self.credentials.mechanism}: the broker's final answer does not authenticate"
            )
        self.authenticated = True
        self.session_lifetime_ms = max(0, int(getattr(response, "session_lifetime_ms", 0) or 0))
        return None

    def _request(self, api_key: int, message: Any) -> Request:
        correlation_id = self._ids()
        message.with_header(correlation_id=correlation_id, client_id=_CLIENT_ID)
        request = Request(api_key, correlation_id, bytes(message.encode(header=True)))
        self._pending = request
        return request


def _decode(cls: Any, body: bytes, what: str) -> Any:
    try:
        return cls.decode(body, header=True)
    except Exception as exc:  # kafka-python raises assorted types on bad bytes
        raise SaslAuthenticationFailed(
            f"the broker's {what} answer does not decode: {exc!r}"
        ) from None
