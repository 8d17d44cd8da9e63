"""One client connection and its upstream connection, as a pure state machine.

Bytes in, events out (the h11/h2 style): the server feeds what each socket received and
writes what the session returns in an `Output`. The session only frames, pairs and orders:
it pairs every upstream response with its request (Kafka answers a connection's requests in
order), keeps the client's responses in request order even when the proxy answers a request
itself, and hands each frame to the handler of its API (proxy.routing.handlers), which
forwards it, answers it, or holds it.

Nothing one session receives writes another session's bytes: when a response here resolves a
retry held by another connection, the output names that session in `woken`, and the server
calls its `resume()`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from proxy.errors import FrameError
from proxy.idempotence.coordinator import ProduceCoordinator
from proxy.idempotence.engine import IdempotenceEngine
from proxy.idempotence.stamping import Stamper
from proxy.idempotence.topics import TopicNames
from proxy.routing.directory import BrokerDirectory, BrokerDiscovered
from proxy.wire.frames import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, frame
from proxy.wire.headers import RequestHeader, peek_correlation_id, peek_request_header

if TYPE_CHECKING:
    from proxy.routing.upstream_sasl import UpstreamSasl
    from proxy.wire.sasl_client import SaslCredentials


class Observer(Protocol):
    """Receives counts from the session (metrics); must not do I/O on the hot path."""

    def request(self, api_key: int, size: int) -> None: ...

    def response(self, api_key: int, size: int, started: float) -> None: ...

    def upstream(self, api_key: int, started: float) -> None: ...

    def sasl_failure(self, reason: str) -> None:
        """The broker refused a client's SASL exchange (reason: metrics.SASL_FAILURE_REASONS)."""


class _NullObserver:
    def request(self, api_key: int, size: int) -> None:
        pass

    def response(self, api_key: int, size: int, started: float) -> None:
        pass

    def upstream(self, api_key: int, started: float) -> None:
        pass

    def sasl_failure(self, reason: str) -> None:
        pass


@dataclass(slots=True)
class Output:
    """What the server must do after feeding the session: write, open listeners, wake sessions.

    Order matters: listeners for `discovered` brokers open before `client` bytes (which may
    name them) are written.
    """

    upstream: list[bytes] = field(default_factory=list)
    client: list[bytes] = field(default_factory=list)
    discovered: list[BrokerDiscovered] = field(default_factory=list)
    woken: list[int] = field(default_factory=list)  # other sessions with responses now due


class Exchange:
    """A client request owed a response, in client order."""

    __slots__ = ("handler", "header", "response", "started", "state")

    def __init__(self, header: RequestHeader, started: float, handler: Handler) -> None:
        self.header = header
        self.started = started
        self.handler = handler
        self.response: bytes | None = None  # the framed response, once due
        self.state: Any = None  # the handler's own record of the exchange


class Handler(Protocol):
    """The per-API step of the chain (Kroxylicious' filters): forward, answer or hold."""

    def request(self, session: Session, exchange: Exchange, body: bytes, out: Output) -> None:
        """Act on a client request: `session.forward`, set `exchange.response`, or hold.

        An exchange neither forwarded nor answered is held: its response is set later (in
        `response`, `resume` or `on_timer`).
        """

    def response(
        self, session: Session, exchange: Exchange, body: bytes, tag: object, out: Output
    ) -> None:
        """The broker's response to what `session.forward` sent with `tag`."""

    def close(self, out: Output) -> None:
        """The connection is over: settle whatever the handler still owes (once)."""

    def client_gone(self, out: Output) -> None:
        """The client's side closed; the upstream may still be draining answers it will
        never read."""

    def next_deadline(self) -> int | None:
        """Wall-clock ms when `on_timer` has work, or None."""

    def on_timer(self, now_ms: int, out: Output) -> None:
        """Act on deadlines that have passed."""

    def resume(self, out: Output) -> None:
        """Held exchanges resolved from another connection: set their responses."""


class Shared:
    """What every connection of one proxy shares: the broker directory, the produce
    coordinator (engine), the topic-id map, the stamper (None: nothing is stamped) and the
    sidecar's SASL credentials (None: upstream connections do not authenticate)."""

    def __init__(
        self,
        directory: BrokerDirectory,
        produce: ProduceCoordinator | None = None,
        topics: TopicNames | None = None,
        stamper: Stamper | None = None,
        upstream_sasl: SaslCredentials | None = None,
    ) -> None:
        self.directory = directory
        self.produce = produce or ProduceCoordinator(
            IdempotenceEngine(), clock_ms=_no_clock, policy="pass"
        )
        self.topics = topics or TopicNames()
        self.stamper = stamper
        #: The sidecar's own SASL credentials for every upstream connection (None: none).
        self.upstream_sasl = upstream_sasl


def _no_clock() -> int:
    return 0


class Session:
    """The sans-I/O core of one proxied connection."""

    def __init__(
        self,
        shared: Shared | BrokerDirectory,
        *,
        session_id: int = 0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        observer: Observer | None = None,
        clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        from proxy.routing.handlers import handlers_for  # the handlers import this module

        self.shared = shared if isinstance(shared, Shared) else Shared(shared)
        self.session_id = session_id
        self._client_frames = FrameDecoder(max_frame_bytes)
        self._upstream_frames = FrameDecoder(max_frame_bytes)
        self._order: deque[Exchange] = deque()
        # (exchange, correlation id the broker must answer with, the handler's tag)
        self._awaiting: deque[tuple[Exchange, int, object]] = deque()
        self.observer: Observer = observer or _NullObserver()
        #: The client's address, for log lines (set by the server once connected).
        self.peer = "?"
        self._clock = clock
        #: Forwards waiting while the proxy's own SASL exchange holds the upstream connection
        #: (None: not held): (exchange, body, correlation id, tag, expect_response).
        self._held: list[tuple[Exchange, bytes, int | None, object, bool]] | None = None
        #: The sidecar's SASL on the upstream connection (--upstream-sasl-mechanism), or None.
        self.upstream_sasl: UpstreamSasl | None = None
        self._handlers, self._default = handlers_for(self)
        if self.shared.upstream_sasl is not None:
            # The sidecar authenticates upstream itself; a client's own SASL is answered here.
            from proxy.routing.upstream_sasl import SASL_APIS, UpstreamSasl

            sidecar = UpstreamSasl(self, self.shared.upstream_sasl)
            self._handlers.update(dict.fromkeys(SASL_APIS, sidecar))
        # Each handler once, for close and timers (one instance may serve several API keys).
        self._chain: list[Handler] = list({id(h): h for h in self._handlers.values()}.values())
        self._closed = False
        #: The broker's ApiVersions ranges (api key -> min, max), once the client asked.
        self.broker_versions: dict[int, tuple[int, int]] = {}
        #: Who the broker knows this connection as: the SASL user (PLAIN, SCRAM), the token's
        #: subject (OAUTHBEARER), the client certificate's subject (mTLS), or the sidecar's
        #: own user. None: no authentication on this connection; UNKNOWN_PRINCIPAL
        #: (proxy.idempotence.decisions): someone the proxy cannot name, matching no one. A
        #: retry is answered locally only for the principal whose batch the broker
        #: acknowledged (issue 11).
        self.principal: str | None = None

    def upstream_connected(self) -> Output:
        """The upstream connection is up: what the proxy itself sends first (its SASL)."""
        out = Output()
        if self.upstream_sasl is not None and not self._closed:
            self.upstream_sasl.connected(out)
        return out

    @property
    def upstream_ready(self) -> bool:
        """Whether client requests may go upstream (not held by the proxy's own SASL)."""
        return self._held is None

    @property
    def unanswered(self) -> list[RequestHeader]:
        """The client's requests not answered yet, oldest first."""
        return [exchange.header for exchange in self._order]

    @property
    def awaiting_upstream(self) -> int:
        """Requests forwarded whose responses have not arrived yet."""
        return len(self._awaiting)

    @property
    def closed(self) -> bool:
        return self._closed

    def receive_client(self, data: bytes | bytearray | memoryview) -> Output:
        """Feed bytes from the client; returns frames to forward and responses now due."""
        out = Output()
        for body in self._client_frames.feed(data):
            self._client_request(body, out)
        self._flush(out)
        return out

    def receive_upstream(self, data: bytes | bytearray | memoryview) -> Output:
        """Feed bytes from the upstream broker; returns responses due to the client."""
        out = Output()
        for body in self._upstream_frames.feed(data):
            self._upstream_response(body, out)
        self._flush(out)
        return out

    def resume(self) -> Output:
        """Responses completed from another connection's input: what is now due."""
        out = Output()
        if not self._closed:
            for handler in self._chain:
                handler.resume(out)
            self._flush(out)
        return out

    def next_deadline(self) -> int | None:
        """Wall-clock ms at which `on_timer` has work (a held retry's wait runs out), or None."""
        deadlines = [d for h in self._chain if (d := h.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    def on_timer(self, now_ms: int) -> Output:
        """Let handlers act on deadlines that have passed."""
        out = Output()
        if self._closed:
            return out
        for handler in self._chain:
            handler.on_timer(now_ms, out)
        self._flush(out)
        return out

    def client_eof(self) -> None:
        """The client closed; raises TruncatedFrame if it left half a frame."""
        self._client_frames.eof()

    def client_gone(self) -> Output:
        """The client's connection closed (the upstream may drain a while longer): answers
        still to come will not reach it, and the last ones written may not have."""
        out = Output()
        if not self._closed:
            for handler in self._chain:
                handler.client_gone(out)
        return out

    def close(self) -> Output:
        """The connection is over (any side, any reason): every handler settles what it owes.

        Idempotent. Forwarded produce batches without an answer become unknown outcomes, and
        retries held on other connections are woken (named in the output).
        """
        out = Output()
        if self._closed:
            return out
        self._closed = True
        self._awaiting.clear()
        self._held = None
        for handler in self._chain:
            handler.close(out)
        return out

    # -- used by handlers ---------------------------------------------------

    def forward(
        self,
        exchange: Exchange,
        body: bytes,
        out: Output,
        *,
        correlation_id: int | None = None,
        tag: object = None,
        expect_response: bool = True,
    ) -> None:
        """Send a request upstream; its response goes to the exchange's handler with `tag`.

        While the upstream connection is held (the proxy's own SASL exchange in progress),
        the request waits and goes up, in order, when it is released.
        """
        if self._held is not None:
            self._held.append((exchange, body, correlation_id, tag, expect_response))
            return
        self.send_own(
            exchange,
            body,
            out,
            correlation_id=correlation_id,
            tag=tag,
            expect_response=expect_response,
        )

    def send_own(
        self,
        exchange: Exchange,
        body: bytes,
        out: Output,
        *,
        correlation_id: int | None = None,
        tag: object = None,
        expect_response: bool = True,
    ) -> None:
        """Send a request upstream now, even while the connection is held (the SASL
        exchange's own requests)."""
        out.upstream.append(frame(body))
        if expect_response:
            cid = exchange.header.correlation_id if correlation_id is None else correlation_id
            self._awaiting.append((exchange, cid, tag))

    def hold_upstream(self) -> None:
        """Keep every forward back until `release_upstream`: the broker reads the requests
        after a SaslHandshake as the SASL exchange's (SaslServerAuthenticator)."""
        if self._held is None:
            self._held = []

    def release_upstream(self, out: Output) -> None:
        """Send the forwards held meanwhile, in the order they were made."""
        held, self._held = self._held, None
        for exchange, body, cid, tag, expect in held or ():
            self.send_own(exchange, body, out, correlation_id=cid, tag=tag, expect_response=expect)

    def clock(self) -> float:
        return self._clock()

    # -- internals ----------------------------------------------------------

    def _client_request(self, body: bytes, out: Output) -> None:
        header = peek_request_header(body)
        self.observer.request(header.api_key, len(body) + 4)
        handler = self._handlers.get(header.api_key, self._default)
        exchange = Exchange(header, self._clock(), handler)
        self._order.append(exchange)
        handler.request(self, exchange, body, out)

    def _upstream_response(self, body: bytes, out: Output) -> None:
        correlation_id = peek_correlation_id(body)
        if not self._awaiting:
            raise FrameError(
                f"broker sent a response (correlation id {correlation_id}) "
                "to no outstanding request"
            )
        exchange, expected, tag = self._awaiting.popleft()
        self.observer.upstream(exchange.header.api_key, exchange.started)
        if correlation_id != expected:
            raise FrameError(
                f"broker answered correlation id {correlation_id}, expected {expected}"
            )
        exchange.handler.response(self, exchange, body, tag, out)

    def _flush(self, out: Output) -> None:
        order = self._order
        while order and order[0].response is not None:
            exchange = order.popleft()
            response = exchange.response
            assert response is not None
            if response:  # b"": a request that gets no response (Produce acks=0)
                self.observer.response(exchange.header.api_key, len(response), exchange.started)
                out.client.append(response)
