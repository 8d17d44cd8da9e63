"""One client connection and its upstream connection, as a pure state machine.

Bytes in, bytes out (the h11/h2 style): the server feeds what each socket
received and writes what the session returns. The session pairs every response
with its request (Kafka answers requests on a connection in order), decodes
only the APIs the proxy acts on, and keeps responses in request order even
when the proxy answers a request itself.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.errors import FrameError, UnsupportedVersion
from proxy.routing.api_versions import (
    VERSION_CAPS,
    narrow_api_versions,
    unsupported_api_versions_response,
)
from proxy.routing.directory import BrokerDirectory
from proxy.routing.rewrite import rewrite_addresses
from proxy.wire import codec
from proxy.wire.apis import ADDRESS_BEARING, ApiKey
from proxy.wire.frames import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, frame
from proxy.wire.headers import RequestHeader, peek_correlation_id, peek_request_header

log = logging.getLogger("idemproxy.session")

#: Responses the session decodes: the address-bearing ones and ApiVersions.
_DECODED_RESPONSES = ADDRESS_BEARING | {ApiKey.API_VERSIONS}


class Observer(Protocol):
    """Receives counts from the session (metrics); must not do I/O on the hot path."""

    def request(self, api_key: int, size: int) -> None: ...

    def response(self, api_key: int, size: int, started: float) -> None: ...


class _NullObserver:
    def request(self, api_key: int, size: int) -> None:
        pass

    def response(self, api_key: int, size: int, started: float) -> None:
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


class Session:
    """The sans-I/O core of one proxied connection."""

    def __init__(
        self,
        directory: BrokerDirectory,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        observer: Observer | None = None,
        clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._directory = directory
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
        if header.api_key == ApiKey.API_VERSIONS and header.api_version > VERSION_CAPS[
            ApiKey.API_VERSIONS
        ]:
            # Answered here as the broker would, so the client retries at a version both know.
            slot.from_upstream = False
            reply = unsupported_api_versions_response(header.correlation_id)
            slot.response = frame(codec.encode(reply))
            self._order.append(slot)
            return
        cap = VERSION_CAPS.get(header.api_key)
        if cap is not None and header.api_version > cap:
            raise UnsupportedVersion(
                f"api key {header.api_key} v{header.api_version} is above the v{cap} "
                f"offered in ApiVersions"
            )
        expects_response = True
        if header.api_key == ApiKey.PRODUCE:
            request = codec.decode_request(header.api_key, header.api_version, body)
            expects_response = request.acks != 0
        out.upstream.append(frame(body))
        if expects_response:
            self._order.append(slot)
            self._awaiting.append(slot)

    # -- responses --------------------------------------------------------

    def _upstream_response(self, body: bytes) -> None:
        correlation_id = peek_correlation_id(body)
        if not self._awaiting:
            raise FrameError(f"broker sent a response (correlation id {correlation_id}) "
                             "to no outstanding request")
        slot = self._awaiting.popleft()
        header = slot.header
        if correlation_id != header.correlation_id:
            raise FrameError(
                f"broker answered correlation id {correlation_id}, "
                f"expected {header.correlation_id}"
            )
        if header.api_key in _DECODED_RESPONSES:
            body = self._transform(header, body)
        slot.response = frame(body)

    def _transform(self, header: RequestHeader, body: bytes) -> bytes:
        response = codec.decode_response(header.api_key, header.api_version, body)
        if header.api_key == ApiKey.API_VERSIONS:
            narrow_api_versions(response)
        else:
            if header.api_key == ApiKey.PRODUCE and not response.node_endpoints:
                return body
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
