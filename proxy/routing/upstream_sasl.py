"""SASL done by the sidecar on one connection's upstream side (--upstream-sasl-mechanism).

The application connects to the proxy without credentials; the proxy authenticates the
connection's upstream side itself, before any client request goes up (the session holds them),
and again before the broker's session lifetime runs out (KIP-368). A re-authentication runs on
the live connection: its SaslHandshake is sent after the requests already in flight (the broker
reads a connection's requests one at a time, SocketServer muting it until each response is
sent) and nothing else goes up until its last SaslAuthenticate is answered, since the broker's
SaslServerAuthenticator reads the requests following a SaslHandshake as the exchange's. The
responses are the proxy's, paired in the session's order with its own correlation ids.

A client that starts SASL itself is answered as by a Kafka listener without SASL
(KafkaApis.handleSaslHandshakeRequest / handleSaslAuthenticateRequest): ILLEGAL_SASL_STATE.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from kafka.protocol.sasl import SaslAuthenticateResponse, SaslHandshakeResponse

from proxy.errors import UnsupportedVersion
from proxy.routing.handlers import BaseHandler
from proxy.routing.session import Exchange, Output, Session
from proxy.wire.apis import ApiKey
from proxy.wire.codec import response_class
from proxy.wire.frames import frame
from proxy.wire.headers import RequestHeader, peek_request_header
from proxy.wire.sasl_client import (
    ILLEGAL_SASL_STATE,
    SASL_AUTHENTICATE,
    SASL_AUTHENTICATION_FAILED,
    Request,
    SaslAuthenticationFailed,
    SaslClient,
    SaslCredentials,
)

__all__ = ["SASL_APIS", "UpstreamSasl", "refused_api_versions"]

#: The API keys of a client's own SASL exchange, answered by the sidecar.
SASL_APIS: tuple[int, ...] = (ApiKey.SASL_HANDSHAKE, SASL_AUTHENTICATE)

#: Re-authenticate at 85-95% of the session lifetime, as the Java client's
#: SaslClientAuthenticator does (network latency and clock drift, jitter against storms).
_REAUTH_AT = 0.85
_REAUTH_JITTER = 0.10
#: The broker refuses a re-authentication started less than a second after the previous one
#: (KafkaChannel.MIN_REAUTH_INTERVAL_ONE_SECOND_NANOS); a margin for transit times.
_MIN_REAUTH_INTERVAL_MS = 1_100
#: The proxy's own correlation ids for SASL requests (the produce handler counts down from -1).
_FIRST_ID = -(2**30)
_CLIENT_MESSAGE = (
    "the proxy authenticates to the brokers itself (--upstream-sasl-mechanism): connect to it "
    "without SASL"
)


class UpstreamSasl(BaseHandler):
    """The sidecar's SASL state of one upstream connection, and the answer to a client's SASL."""

    def __init__(
        self,
        session: Session,
        credentials: SaslCredentials,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._session = session
        self._credentials = credentials
        self._clock_ms = session.shared.produce.clock_ms
        self._jitter = jitter
        self._next_id = _FIRST_ID
        self._exchange: SaslClient | None = None
        self._started_ms = 0
        self._version: int | None = None  # SaslAuthenticate version, once learned
        #: Wall-clock ms at which to re-authenticate (None: not due, or in progress).
        self.reauth_at: int | None = None
        #: Times the connection authenticated (the first, then each re-authentication).
        self.authentications = 0
        session.upstream_sasl = self
        session.hold_upstream()

    @property
    def in_progress(self) -> bool:
        """Whether an exchange is under way (the upstream connection is held)."""
        return self._exchange is not None

    def connected(self, out: Output) -> None:
        """The upstream connection is up: authenticate before anything else goes up."""
        # Every request this connection forwards reaches the broker as the configured user.
        self._session.principal = self._credentials.username
        if self._exchange is None and self.authentications == 0:
            self._begin(out)

    # -- the proxy's own exchange --------------------------------------------------------

    def _begin(self, out: Output) -> None:
        self._session.hold_upstream()
        self._started_ms = self._clock_ms()
        self.reauth_at = None
        self._exchange = SaslClient(self._credentials, self._correlation_id, self._version)
        self._send(self._exchange.start(), out)

    def _correlation_id(self) -> int:
        self._next_id -= 1
        return self._next_id

    def _send(self, request: Request, out: Output) -> None:
        exchange = Exchange(peek_request_header(request.body), self._session.clock(), self)
        self._session.send_own(
            exchange, request.body, out, correlation_id=request.correlation_id, tag=self
        )

    def response(
        self, session: Session, exchange: Exchange, body: bytes, tag: object, out: Output
    ) -> None:
        sasl = self._exchange
        if sasl is None:  # pragma: no cover - only the proxy's own requests come back here
            raise AssertionError("a SASL response with no exchange in progress")
        try:
            following = sasl.receive(body)
        except SaslAuthenticationFailed:
            self._exchange = None
            raise
        if following is not None:
            self._send(following, out)
            return
        self._exchange = None
        self._version = sasl.authenticate_version
        self.authentications += 1
        lifetime = sasl.session_lifetime_ms
        if lifetime > 0:
            share = _REAUTH_AT + _REAUTH_JITTER * self._jitter()
            self.reauth_at = max(
                self._clock_ms() + int(lifetime * share),
                self._started_ms + _MIN_REAUTH_INTERVAL_MS,
            )
        session.release_upstream(out)

    def next_deadline(self) -> int | None:
        return self.reauth_at

    def on_timer(self, now_ms: int, out: Output) -> None:
        if self.reauth_at is not None and now_ms >= self.reauth_at and self._exchange is None:
            self._begin(out)

    # -- a client's own SASL -------------------------------------------------------------

    def request(self, session: Session, exchange: Exchange, body: bytes, out: Output) -> None:
        header = exchange.header
        response_class = (
            SaslHandshakeResponse
            if header.api_key == ApiKey.SASL_HANDSHAKE
            else SaslAuthenticateResponse
        )
        if not 0 <= header.api_version <= response_class.max_version:
            raise UnsupportedVersion(
                f"api key {header.api_key} v{header.api_version} is above the "
                f"v{response_class.max_version} the proxy answers"
            )
        if header.api_key == ApiKey.SASL_HANDSHAKE:
            answer = SaslHandshakeResponse[header.api_version](
                error_code=ILLEGAL_SASL_STATE, mechanisms=[]
            )
        else:
            answer = SaslAuthenticateResponse[header.api_version](
                error_code=ILLEGAL_SASL_STATE,
                error_message=_CLIENT_MESSAGE,
                auth_bytes=b"",
                session_lifetime_ms=0,
            )
        answer.with_header(correlation_id=header.correlation_id)
        exchange.response = frame(bytes(answer.encode(header=True)))


def refused_api_versions(header: RequestHeader) -> bytes | None:
    """The answer to a client's ApiVersions after the sidecar's SASL failed: the error
    SASL_AUTHENTICATION_FAILED, which clients log ("Received error SASL_AUTHENTICATION_FAILED
    ... when making an ApiVersionsRequest") before they disconnect; None for other requests.

    Not a broker's answer (a broker fails the client's own SaslAuthenticate instead): a
    client without SASL has no other place to be told why its connection closes.
    """
    if header.api_key != ApiKey.API_VERSIONS:
        return None
    # At v0 whatever the request's version, as a broker answers UNSUPPORTED_VERSION: clients
    # read an ApiVersions error body as v0 (kafka-python always, the Java client when the
    # request's version does not parse).
    answer = response_class(ApiKey.API_VERSIONS)[0](
        error_code=SASL_AUTHENTICATION_FAILED, api_keys=[]
    )
    answer.with_header(correlation_id=header.correlation_id)
    return frame(bytes(answer.encode(header=True)))
