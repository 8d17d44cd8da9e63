"""The connection policy of one client connection and its upstream connection.

A link connects upstream when a client arrives, buffers what the client sends meanwhile, carries
out each `Output` of its session (listeners first, then writes, then wake-ups), keeps the
upstream connection open for `drain_timeout` after the client leaves so responses in flight
still teach the engine their outcome, and ends exactly once: `finish()` closes the session,
which settles every ticket the connection still owes, on every path (client EOF, upstream EOF,
bad bytes from either side, upstream never reached, drain timeout, shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from proxy.address import Address
from proxy.errors import ProxyError
from proxy.routing.session import Output, Session
from proxy.routing.upstream_sasl import refused_api_versions
from proxy.server.pump import Pump
from proxy.server.tls import (
    client_principal,
    describe_failure,
    failure_reason,
    is_handshake_failure,
    looks_like_tls,
)
from proxy.wire.frames import FrameDecoder
from proxy.wire.headers import RequestHeader, peek_request_header
from proxy.wire.sasl_client import SaslAuthenticationFailed

if TYPE_CHECKING:
    from proxy.server.app import Proxy

log = logging.getLogger("idemproxy.server")

#: Opens a connection to an address with a protocol (loop.create_connection in production);
#: with upstream TLS, also given ssl= and server_hostname= keywords.
Connector = Callable[..., Awaitable[object]]


#: How long a client whose upstream SASL failed has to send its first request (its answer
#: says why the connection closes) before the connection is closed anyway.
_REFUSAL_GRACE_SECONDS = 2.0


def peer_name(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(Address(str(peer[0]), int(peer[1])))
    return str(peer)


def wall_ms() -> int:
    return int(time.time() * 1000)


class Link:
    """A client connection, its upstream connection and the session between them."""

    def __init__(
        self, proxy: Proxy, targets: list[Address], listener: str, session_id: int
    ) -> None:
        self.proxy = proxy
        self.targets = targets
        self.listener = listener
        self.session = Session(
            proxy.shared,
            session_id=session_id,
            max_frame_bytes=proxy.config.max_frame_bytes,
            observer=proxy.metrics,
            clock=time.monotonic,
        )
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.peer = "?"
        self.client_open = False
        self.upstream_open = False
        self.finished = False
        self._drain_timer: asyncio.TimerHandle | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline: int | None = None
        #: Frames for the broker produced before the upstream connection was up (reading is
        #: paused meanwhile, but a transport may deliver what it had already read).
        self._early: list[bytes] = []
        #: The broker this link connects (or is connected) to.
        self.upstream_target: Address | None = None
        #: Whether the broker has sent anything (after that, a TLS error is not a handshake's).
        self._upstream_spoke = False
        #: Whether the client's first bytes are still to be checked for a TLS handshake sent
        #: to a plaintext listener.
        self._sniff = proxy.listen_tls is None
        self.client_side = _ClientSide(self)
        self.upstream_side = _UpstreamSide(self)
        #: Client reading stays paused until the sidecar's own SASL has authenticated upstream.
        self._resume_after_auth = False
        self._authentications = 0  # of the sidecar's SASL on this upstream connection, logged
        #: After the sidecar's SASL failed: the client's frames, read to answer its ApiVersions.
        self._refusal: FrameDecoder | None = None
        self._refusal_timer: asyncio.TimerHandle | None = None
        self._refusal_answered = False

    # -- client ---------------------------------------------------------------

    def client_made(self, transport: asyncio.Transport) -> None:
        self.client = transport
        self.client_open = True
        self.peer = self.session.peer = peer_name(transport)
        if transport.get_extra_info("ssl_object") is not None:
            # Verified by the listener's client CA (mTLS); empty without one.
            self.session.principal = client_principal(transport.get_extra_info("peercert"))
        metrics = self.proxy.metrics
        metrics.client_connections.inc()
        metrics.connections_total.inc()
        self.proxy.adopt(self)
        log.debug("client connected", extra={"peer": self.peer, "listener": self.listener})
        transport.pause_reading()  # until the upstream connection is up
        self.proxy.tasks.spawn(self._connect(), name=f"connect {self.peer}")

    def client_data(self, data: bytes) -> None:
        if self._sniff:
            self._sniff = False
            if looks_like_tls(data[:2]):
                self.proxy.client_tls_refused(self.peer, self.listener, "plaintext_listener", None)
                if self.client is not None:
                    self.client.abort()
                self.finish()
                return
        if self._refusal is not None:
            self._refuse(data)
            return
        try:
            out = self.session.receive_client(data)
        except ProxyError as exc:
            self._bad_input("client", exc)
            return
        self.apply(out)

    def client_eof(self) -> None:
        try:
            self.session.client_eof()
        except ProxyError as exc:
            self._note_error("client", exc)

    def client_lost(self) -> None:
        if not self.client_open:
            return
        self.client_open = False
        self.proxy.metrics.client_connections.dec()
        log.debug("client disconnected", extra={"peer": self.peer})
        if self._refusal is not None:
            self.finish()
            return
        for session_id in self.session.client_gone().woken:
            self.proxy.wake(session_id)
        if not self.upstream_open:
            if self.upstream is None:
                self.finish()  # never connected (or still connecting): nothing will answer
            return
        if self.session.awaiting_upstream == 0:
            self._close_upstream()
            return
        # Read the responses still in flight (bounded), so the engine learns their outcomes.
        self._drain_timer = asyncio.get_running_loop().call_later(
            self.proxy.config.drain_timeout, self._close_upstream
        )

    # -- upstream ---------------------------------------------------------------

    async def _connect(self) -> None:
        connect = self.proxy.connector or asyncio.get_running_loop().create_connection
        timeout = self.proxy.config.connect_timeout
        tls = self.proxy.upstream_tls
        failures: list[str] = []
        tls_failures: list[str] = []
        for target in self.targets:
            if not self.client_open:
                self.finish()
                return
            self.upstream_target = target
            try:
                async with asyncio.timeout(timeout):
                    if tls is None:
                        await connect(lambda: Pump(self.upstream_side), target.host, target.port)
                    else:
                        await connect(
                            lambda: Pump(self.upstream_side),
                            target.host,
                            target.port,
                            ssl=tls.context,
                            server_hostname=tls.hostname(target),
                        )
            except (OSError, TimeoutError) as exc:
                if tls is not None and is_handshake_failure(exc):
                    tls_failures.append(self._tls_failed(target, exc))
                else:
                    failures.append(f"{target}: {exc or type(exc).__name__}")
                continue
            return
        if tls_failures:
            self.proxy.metrics.connection_errors.labels("upstream_tls").inc()
            log.warning(
                "upstream TLS handshake failed, closing client connection",
                extra={"peer": self.peer, "reason": "; ".join(tls_failures + failures)},
            )
        else:
            self.proxy.metrics.connection_errors.labels("upstream_unreachable").inc()
            log.warning(
                "upstream unreachable, closing client connection",
                extra={"peer": self.peer, "reason": "; ".join(failures) or "no upstream address"},
            )
        self.finish()

    def _sasl_failed(self, kind: str, reason: str) -> None:
        """The sidecar's SASL failed on the upstream connection: counted, one line, closed.

        On a connection that never authenticated, the client's first request (normally its
        ApiVersions, not read yet) is answered SASL_AUTHENTICATION_FAILED before the close,
        so the client can log why.
        """
        self.proxy.metrics.sasl_failures.labels("upstream", kind).inc()
        self.proxy.metrics.connection_errors.labels("upstream_sasl").inc()
        log.warning(
            "upstream SASL authentication failed, closing client connection",
            extra={"peer": self.peer, "reason": f"{self.upstream_target}: {kind} ({reason})"},
        )
        if self.upstream is not None:
            self.upstream.abort()
        sasl = self.session.upstream_sasl
        if (
            sasl is not None
            and sasl.authentications == 0
            and self.client is not None
            and self.client_open
            and not self.finished
        ):
            unanswered = self.session.unanswered
            for session_id in self.session.close().woken:
                self.proxy.wake(session_id)
            self._refusal = FrameDecoder(self.proxy.config.max_frame_bytes)
            self._refusal_timer = asyncio.get_running_loop().call_later(
                _REFUSAL_GRACE_SECONDS, self.finish
            )
            self.client.resume_reading()
            if unanswered:  # the client's first request was read before reading paused
                self._answer_refused(unanswered[0])
            return
        if self.client is not None:
            self.client.abort()
        self.finish()

    def _refuse(self, data: bytes) -> None:
        """After a failed SASL: the client's first request, answered if it is ApiVersions."""
        assert self._refusal is not None
        if self._refusal_answered:
            self.finish()  # the client goes on regardless: nothing more to tell it
            return
        try:
            bodies = self._refusal.feed(data)
            header = peek_request_header(bodies[0]) if bodies else None
        except ProxyError:
            self.finish()
            return
        if header is not None:
            self._answer_refused(header)

    def _answer_refused(self, header: RequestHeader) -> None:
        """Tell the client why (its ApiVersions answered SASL_AUTHENTICATION_FAILED) and let
        it close the connection, as clients do on that error (the grace timer bounds the
        wait); any other request: closed unanswered."""
        answer = refused_api_versions(header)
        if answer is None or self.client is None or not self.client_open:
            self.finish()
            return
        self._refusal_answered = True
        self.client.write(answer)

    def _tls_failed(self, target: Address, exc: BaseException) -> str:
        """Count a failed handshake with target; the text naming the broker and the reason."""
        reason = failure_reason(exc)
        self.proxy.metrics.tls_handshake_failures.labels("upstream", reason).inc()
        return f"{target}: {reason} ({describe_failure(exc)})"

    def upstream_made(self, transport: asyncio.Transport) -> None:
        self.upstream = transport
        self.upstream_open = True
        self.proxy.metrics.upstream_connections.inc()
        if not self.client_open or self.finished:
            transport.close()
            return
        own = self.session.upstream_connected()  # the sidecar's SASL goes first
        if own.upstream:
            transport.writelines(own.upstream)
        if self._early:
            transport.writelines(self._early)
            self._early.clear()
        if not self.session.upstream_ready:
            self._resume_after_auth = True
        elif self.client is not None:
            self.client.resume_reading()

    def upstream_data(self, data: bytes) -> None:
        self._upstream_spoke = True
        try:
            out = self.session.receive_upstream(data)
        except SaslAuthenticationFailed as exc:
            self._sasl_failed(exc.kind, exc.reason)
            return
        except ProxyError as exc:
            self._bad_input("upstream", exc)
            return
        self.apply(out)
        sasl = self.session.upstream_sasl
        if sasl is not None and sasl.authentications != self._authentications:
            self._authentications = sasl.authentications
            log.debug(
                "upstream SASL authenticated"
                if sasl.authentications == 1
                else "upstream SASL re-authenticated",
                extra={"peer": self.peer, "upstream": str(self.upstream_target)},
            )
        if self._resume_after_auth and self.session.upstream_ready:
            self._resume_after_auth = False
            if self.client is not None and self.client_open:
                self.client.resume_reading()
        if not self.client_open and self.session.awaiting_upstream == 0:
            self._close_upstream()
        if self.proxy.stopping:
            self.proxy.note_answered()

    def upstream_lost(self, exc: Exception | None = None) -> None:
        if not self.upstream_open:
            return
        self.upstream_open = False
        self.proxy.metrics.upstream_connections.dec()
        if self._refusal is not None:
            return  # closed by the proxy after a failed SASL; the client is being answered
        unanswered = self.session.awaiting_upstream
        if (
            self.proxy.upstream_tls is not None
            and exc is not None
            and is_handshake_failure(exc)
            and not self._upstream_spoke
            and self.upstream_target is not None
        ):
            # With TLS 1.3 the broker checks the client certificate after the client's side of
            # the handshake is done: its refusal arrives as an alert on the first read (or as
            # a reset, when the broker closes with our first request unread).
            self.proxy.metrics.connection_errors.labels("upstream_tls").inc()
            log.warning(
                "upstream TLS handshake failed, closing client connection",
                extra={"peer": self.peer, "reason": self._tls_failed(self.upstream_target, exc)},
            )
        elif (
            self.session.upstream_sasl is not None
            and self.session.upstream_sasl.in_progress
            and not self.finished
        ):
            self._sasl_failed(
                "other", "the broker closed the connection during SASL authentication"
            )
            if self._refusal is not None:
                return  # the client's first request is answered with the reason
        elif unanswered and self.client_open:
            log.warning(
                "upstream closed with requests in flight",
                extra={"peer": self.peer, "reason": f"{unanswered} requests unanswered"},
            )
        self.finish()
        if self.proxy.stopping:
            self.proxy.note_answered()

    # -- outputs, timers, the end -------------------------------------------------

    def apply(self, out: Output) -> None:
        """Carry out a session output: listeners first, then bytes, then other sessions."""
        for discovered in out.discovered:
            self.proxy.open_broker_listener(discovered.node_id, discovered.upstream)
        if out.upstream:
            if self.upstream is not None and self.upstream_open:
                self.upstream.writelines(out.upstream)
            elif not self.finished:
                self._early.extend(out.upstream)
        if out.client and self.client_open and self.client is not None:
            self.client.writelines(out.client)
        for session_id in out.woken:
            self.proxy.wake(session_id)
        self._schedule()

    def _schedule(self) -> None:
        """Arm the timer for the session's next deadline (a held retry's wait)."""
        deadline = self.session.next_deadline()
        if deadline == self._deadline:
            return
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadline = deadline
        if deadline is not None and not self.finished:
            delay = max(0.0, (deadline - wall_ms()) / 1000)
            self._deadline_timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._deadline_timer = None
        self._deadline = None
        self.apply(self.session.on_timer(wall_ms()))

    def finish(self) -> None:
        """End the link (once): the session settles what it owes, both sockets close."""
        if self.finished:
            return
        self.finished = True
        for timer in (self._drain_timer, self._deadline_timer, self._refusal_timer):
            if timer is not None:
                timer.cancel()
        self._early.clear()
        out = self.session.close()
        for session_id in out.woken:
            self.proxy.wake(session_id)
        if self.client is not None and self.client_open:
            self.client.close()
        self._close_upstream()
        self.proxy.release(self)

    def abort(self) -> None:
        """Shutdown: drop both connections now."""
        if self.client is not None:
            self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()
        self.finish()

    def _close_upstream(self) -> None:
        if self.upstream is not None and self.upstream_open:
            self.upstream.close()

    def _bad_input(self, side: str, exc: ProxyError) -> None:
        """Bad bytes: one log line, this link closed, nothing else touched."""
        self._note_error(side, exc)
        if side == "client":
            self.proxy.metrics.frames_refused.labels(type(exc).__name__).inc()
        if self.client is not None:
            self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()
        self.finish()

    def _note_error(self, side: str, exc: ProxyError) -> None:
        reason = type(exc).__name__
        self.proxy.metrics.connection_errors.labels(reason).inc()
        log.warning(
            "closing connection: %s sent bad data: %s",
            side,
            exc.reason,
            extra={"peer": self.peer, "reason": reason, "kafka_error": exc.error_code},
        )


class _ClientSide:
    __slots__ = ("_link",)

    def __init__(self, link: Link) -> None:
        self._link = link

    def made(self, transport: asyncio.Transport) -> None:
        self._link.client_made(transport)

    def data(self, data: bytes) -> None:
        self._link.client_data(data)

    def eof(self) -> None:
        self._link.client_eof()

    def lost(self, exc: Exception | None) -> None:
        self._link.client_lost()

    def other(self) -> asyncio.Transport | None:
        return self._link.upstream


class _UpstreamSide:
    __slots__ = ("_link",)

    def __init__(self, link: Link) -> None:
        self._link = link

    def made(self, transport: asyncio.Transport) -> None:
        self._link.upstream_made(transport)

    def data(self, data: bytes) -> None:
        self._link.upstream_data(data)

    def eof(self) -> None:
        pass

    def lost(self, exc: Exception | None) -> None:
        self._link.upstream_lost(exc)

    def other(self) -> asyncio.Transport | None:
        return self._link.client
