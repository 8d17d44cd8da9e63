"""One client connection and its upstream connection, as a pure state machine.

Bytes in, bytes out (the h11/h2 style): the server feeds what each socket
received and writes what the session returns. The session pairs every response
with its request (Kafka answers requests on a connection in order), decodes
only the APIs the proxy acts on, and keeps responses in request order even
when the proxy answers a request itself.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from proxy.errors import FrameError, UnsupportedVersion
from proxy.idempotence.engine import IdempotenceEngine
from proxy.idempotence.produce import ProduceCoordinator, ProducePlan, build_response
from proxy.routing.api_versions import (
    VERSION_CAPS,
    narrow_api_versions,
    unsupported_api_versions_response,
)
from proxy.routing.directory import BrokerDirectory
from proxy.routing.rewrite import rewrite_addresses
from proxy.wire import codec
from proxy.wire.apis import ADDRESS_BEARING, HIDDEN_APIS, ApiKey
from proxy.wire.frames import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, frame
from proxy.wire.headers import RequestHeader, peek_correlation_id, peek_request_header

log = logging.getLogger("idemproxy.session")

#: Responses the session decodes: the address-bearing ones and ApiVersions.
_DECODED_RESPONSES = ADDRESS_BEARING | {ApiKey.API_VERSIONS}


class Observer(Protocol):
    """Receives counts from the session (metrics); must not do I/O on the hot path."""

    def request(self, api_key: int, size: int) -> None: ...

    def response(self, api_key: int, size: int, started: float) -> None: ...

    def upstream(self, api_key: int, started: float) -> None: ...


class _NullObserver:
    def request(self, api_key: int, size: int) -> None:
        pass

    def response(self, api_key: int, size: int, started: float) -> None:
        pass

    def upstream(self, api_key: int, started: float) -> None:
        pass


@dataclass(slots=True)
class Transmit:
    """What the server must write after feeding the session some bytes."""

    upstream: list[bytes] = field(default_factory=list)
    client: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class _Slot:
    """A request still owed a response, in client order."""

    header: RequestHeader
    started: float
    from_upstream: bool
    response: bytes | None = None
    plan: ProducePlan | None = None


class Session:
    """The sans-I/O core of one proxied connection."""

    def __init__(
        self,
        directory: BrokerDirectory,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        observer: Observer | None = None,
        clock: Callable[[], float] = lambda: 0.0,
        produce: ProduceCoordinator | None = None,
        on_client_output: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        self._directory = directory
        # Without a shared coordinator (one connection alone, as in tests) the session gets
        # an engine of its own: there is one produce path either way.
        self._produce = produce or ProduceCoordinator(
            IdempotenceEngine(), clock_ms=lambda: int(time.time() * 1000)
        )
        #: Where responses completed outside receive_* (a retry answered when its
        #: original's outcome arrives on another connection) are written.
        self.on_client_output = on_client_output
        self._closed = False
        self._client_frames = FrameDecoder(max_frame_bytes)
        self._upstream_frames = FrameDecoder(max_frame_bytes)
        self._order: deque[_Slot] = deque()
        self._awaiting: deque[_Slot] = deque()
        self._observer: Observer = observer or _NullObserver()
        self._clock = clock

    @property
    def awaiting_upstream(self) -> int:
        """Requests forwarded whose responses have not arrived yet."""
        return len(self._awaiting)

    def receive_client(self, data: bytes | bytearray | memoryview) -> Transmit:
        """Feed bytes from the client; returns frames to forward and responses now due."""
        out = Transmit()
        for body in self._client_frames.feed(data):
            self._client_request(body, out)
        self._flush(out)
        return out

    def receive_upstream(self, data: bytes | bytearray | memoryview) -> Transmit:
        """Feed bytes from the upstream broker; returns responses due to the client."""
        out = Transmit()
        for body in self._upstream_frames.feed(data):
            self._upstream_response(body)
        self._flush(out)
        return out

    def abandon(self) -> None:
        """The upstream connection is gone: every forwarded produce's outcome is unknown."""
        self._closed = True
        while self._awaiting:
            slot = self._awaiting.popleft()
            if slot.plan is not None:
                self._produce.abandon(slot.plan)

    def client_eof(self) -> None:
        """The client closed; raises TruncatedFrame if it left half a frame."""
        self._client_frames.eof()

    def upstream_eof(self) -> None:
        """The broker closed; raises TruncatedFrame if it left half a frame."""
        self._upstream_frames.eof()

    # -- requests ---------------------------------------------------------

    def _client_request(self, body: bytes, out: Transmit) -> None:
        header = peek_request_header(body)
        self._observer.request(header.api_key, len(body) + 4)
        slot = _Slot(header, self._clock(), from_upstream=True)
        if (
            header.api_key == ApiKey.API_VERSIONS
            and header.api_version > VERSION_CAPS[ApiKey.API_VERSIONS]
        ):
            # Answered here as the broker would, so the client retries at a version both know.
            slot.from_upstream = False
            reply = unsupported_api_versions_response(header.correlation_id)
            slot.response = frame(codec.encode(reply))
            self._order.append(slot)
            return
        if header.api_key in HIDDEN_APIS:
            raise UnsupportedVersion(
                f"api key {header.api_key} is not offered by the proxy (its responses carry "
                "broker addresses the proxy does not rewrite)"
            )
        cap = VERSION_CAPS.get(header.api_key)
        if cap is not None and header.api_version > cap:
            raise UnsupportedVersion(
                f"api key {header.api_key} v{header.api_version} is above the v{cap} "
                f"offered in ApiVersions"
            )
        if header.api_key == ApiKey.PRODUCE:
            self._produce_request(slot, body, out)
            return
        out.upstream.append(frame(body))
        self._order.append(slot)
        self._awaiting.append(slot)

    def _produce_request(self, slot: _Slot, body: bytes, out: Transmit) -> None:
        plan = self._produce.plan(slot.header.api_version, body)
        if plan.upstream_body is not None:
            out.upstream.append(frame(plan.upstream_body))
        if not plan.expects_response:
            return  # acks=0: the broker sends nothing back, and neither does the proxy
        slot.plan = plan
        slot.from_upstream = plan.upstream_body is not None
        self._order.append(slot)
        if slot.from_upstream:
            self._awaiting.append(slot)
        elif plan.ready:
            self._finish_produce(slot, None)
        else:
            plan.on_ready = lambda: self._finish_later(slot)

    # -- responses --------------------------------------------------------

    def _upstream_response(self, body: bytes) -> None:
        correlation_id = peek_correlation_id(body)
        if not self._awaiting:
            raise FrameError(
                f"broker sent a response (correlation id {correlation_id}) "
                "to no outstanding request"
            )
        slot = self._awaiting.popleft()
        header = slot.header
        self._observer.upstream(header.api_key, slot.started)
        if correlation_id != header.correlation_id:
            raise FrameError(
                f"broker answered correlation id {correlation_id}, expected {header.correlation_id}"
            )
        if slot.plan is not None:
            self._produce_response(slot, body)
            return
        if header.api_key in _DECODED_RESPONSES:
            body = self._transform(header, body)
        slot.response = frame(body)

    def _produce_response(self, slot: _Slot, body: bytes) -> None:
        plan = slot.plan
        assert plan is not None
        header = slot.header
        response = codec.decode_response(header.api_key, header.api_version, body)
        self._produce.complete(plan, response)
        if response.node_endpoints:
            rewrite_addresses(header.api_key, response, self._directory)
            body = codec.encode(response)
        if plan.ready:
            self._finish_produce(slot, body)
        else:
            plan.on_ready = lambda: self._finish_later(slot, body)

    def _finish_produce(self, slot: _Slot, upstream_body: bytes | None) -> None:
        assert slot.plan is not None
        merged = build_response(slot.plan, slot.header.correlation_id)
        if merged is None:
            assert upstream_body is not None
            merged = upstream_body
        slot.response = frame(merged)

    def _finish_later(self, slot: _Slot, upstream_body: bytes | None = None) -> None:
        """A waiting retry was resolved from another connection: emit what is now due."""
        if self._closed:
            return
        self._finish_produce(slot, upstream_body)
        out = Transmit()
        self._flush(out)
        if out.client and self.on_client_output is not None:
            self.on_client_output(out.client)

    def _transform(self, header: RequestHeader, body: bytes) -> bytes:
        if header.api_key == ApiKey.API_VERSIONS and body[4:6] != b"\x00\x00":
            # An error answer (UNSUPPORTED_VERSION at v0, INVALID_REQUEST at the request's
            # version) lists nothing to narrow: pass the broker's bytes on.
            return body
        response = codec.decode_response(header.api_key, header.api_version, body)
        if header.api_key == ApiKey.API_VERSIONS:
            narrow_api_versions(response)
        else:
            rewrite_addresses(header.api_key, response, self._directory)
        return codec.encode(response)

    def _flush(self, out: Transmit) -> None:
        order = self._order
        while order and order[0].response is not None:
            slot = order.popleft()
            response = slot.response
            assert response is not None
            self._observer.response(slot.header.api_key, len(response), slot.started)
            out.client.append(response)
