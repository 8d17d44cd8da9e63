"""SASL passthrough: SaslHandshake and SaslAuthenticate go to the broker byte for byte, and the
session learns from them who the connection is (`Session.principal`).

The connection's principal is only ever a name the broker accepted: it is set when the broker
answers the exchange's last SaslAuthenticate with error 0 (proxy.wire.sasl.completes), to the
name the client's first token claimed. From the first SaslHandshake until then, and for good
after a failure or a mechanism the proxy cannot read, it is UNKNOWN_PRINCIPAL, which matches no
one, so nothing is answered locally for a connection whose identity is not settled.

Re-authentication (KIP-368, SaslAuthenticate v1+) repeats the exchange on an open connection;
the broker refuses a different principal (SaslServerAuthenticator.ReauthInfo, "Cannot change
principals during re-authentication") and the principal stays what it was until the broker
answers; should a re-authentication ever settle on another name, the connection becomes
UNKNOWN.

SaslHandshake v0 (pre-KIP-152 clients) is refused: after it the client sends raw SASL tokens
without Kafka request headers (SaslServerAuthenticator, enableKafkaSaslAuthenticateHeaders
false), which the proxy could neither pair with their answers nor tell from the requests that
follow. The proxy advertises SaslHandshake from v1 in ApiVersions, and every client since
Kafka 1.0 uses v1.
"""

from __future__ import annotations

import logging

from proxy.errors import DecodeError, UnsupportedVersion
from proxy.idempotence.decisions import UNKNOWN_PRINCIPAL
from proxy.routing.handlers import BaseHandler, check_cap
from proxy.routing.session import Exchange, Output, Session
from proxy.wire import error_codes as E
from proxy.wire import sasl
from proxy.wire.apis import ApiKey
from proxy.wire.frames import frame

log = logging.getLogger("idemproxy.sasl")

#: idemproxy_sasl_authentication_failures_total's reason for each SASL error code.
FAILURE_REASONS: dict[int, str] = {
    E.SASL_AUTHENTICATION_FAILED: "sasl_authentication_failed",
    E.UNSUPPORTED_SASL_MECHANISM: "unsupported_sasl_mechanism",
    E.ILLEGAL_SASL_STATE: "illegal_sasl_state",
}


def failure_reason(error_code: int) -> str:
    """The metric's reason label for a failed SaslHandshake/SaslAuthenticate."""
    return FAILURE_REASONS.get(error_code, "other")


class _Handshake:
    __slots__ = ()


_HANDSHAKE = _Handshake()


class SaslHandler(BaseHandler):
    """SaslHandshake (17) and SaslAuthenticate (36) of one connection."""

    def __init__(self) -> None:
        self.mechanism: str | None = None
        #: The client's tokens sent in the current exchange.
        self._step = 0
        #: The name the client's first token claims (None: unreadable or not a known mechanism).
        self._claimed: str | None = None
        #: The principal the broker accepted last (None: not authenticated yet).
        self._accepted: str | None = None

    def request(self, session: Session, exchange: Exchange, body: bytes, out: Output) -> None:
        header = exchange.header
        if header.api_key == ApiKey.SASL_HANDSHAKE:
            if header.api_version == 0:
                raise UnsupportedVersion(
                    "SaslHandshake v0 (raw SASL tokens follow it, without Kafka headers) is not "
                    "supported through the proxy; clients of Kafka 1.0 and later use v1"
                )
            check_cap(exchange, sasl.HANDSHAKE_MAX_VERSION)
            try:
                self.mechanism = sasl.handshake_mechanism(header.api_version, body)
            except sasl.SaslError as exc:
                raise DecodeError(str(exc)) from exc
            self._step = 0
            self._claimed = None
            if self._accepted is None:
                session.principal = UNKNOWN_PRINCIPAL  # authenticating: nobody yet
            session.forward(exchange, body, out, tag=_HANDSHAKE)
            return
        check_cap(exchange, sasl.AUTHENTICATE_MAX_VERSION)
        try:
            token = sasl.authenticate_bytes(header.api_version, body)
        except sasl.SaslError as exc:
            raise DecodeError(str(exc)) from exc
        self._step += 1
        if self._step == 1:
            self._claimed = self._claim(token)
        if self._accepted is None:
            session.principal = UNKNOWN_PRINCIPAL  # SaslAuthenticate without a handshake
        session.forward(exchange, body, out, tag=self._step)

    def _claim(self, token: bytes) -> str | None:
        if self.mechanism is None:
            return None
        try:
            return sasl.principal_of(self.mechanism, token)
        except sasl.SaslError as exc:
            # The broker judges the token; the proxy just cannot name who it is.
            log.info(
                "SASL token the proxy cannot read: principal unknown",
                extra={"mechanism": self.mechanism, "reason": str(exc)},
            )
            return None

    def response(
        self, session: Session, exchange: Exchange, body: bytes, tag: object, out: Output
    ) -> None:
        exchange.response = frame(body)
        version = exchange.header.api_version
        try:
            if tag is _HANDSHAKE:
                error_code, message = sasl.handshake_error(version, body), None
            else:
                answer = sasl.authenticate_answer(version, body)
                error_code, message = answer.error_code, answer.error_message
        except sasl.SaslError as exc:
            raise DecodeError(f"broker's SASL answer: {exc}") from exc
        if error_code != E.NONE:
            self._failed(session, error_code, message)
            return
        if tag is _HANDSHAKE or self.mechanism is None:
            return
        assert isinstance(tag, int)
        if not sasl.completes(self.mechanism, tag, answer):
            return
        name = self._claimed
        if name is None or (self._accepted is not None and name != self._accepted):
            session.principal = UNKNOWN_PRINCIPAL
        else:
            session.principal = name
        self._accepted = session.principal
        if answer.session_lifetime_ms:
            log.debug(
                "SASL session lifetime",
                extra={"session": session.session_id, "ms": answer.session_lifetime_ms},
            )

    def _failed(self, session: Session, error_code: int, message: str | None) -> None:
        """The broker refused the exchange: counted, one line, and nobody is known."""
        reason = failure_reason(error_code)
        session.observer.sasl_failure(reason)
        log.warning(
            "client SASL authentication failed",
            extra={
                "peer": session.peer,
                "mechanism": self.mechanism,
                "principal": self._claimed,
                "kafka_error": error_code,
                "reason": reason,
                "broker_message": message,
            },
        )
        session.principal = UNKNOWN_PRINCIPAL
        self._accepted = UNKNOWN_PRINCIPAL
