"""A deliberately tiny, dependency-free Kafka wire client for readiness probes.

Only ApiVersions v0, Metadata v4 and InitProducerId v0 (all non-flexible,
supported by Kafka 4.x and older brokers; Tansu rejects InitProducerId below
v3). The harness uses it instead of a full client so that "is the broker
ready?" polls are cheap and bounded, and so probing does not depend on
client-library internals.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

API_VERSIONS = 18
METADATA = 3
INIT_PRODUCER_ID = 22
_CLIENT_ID = b"idemproxy-harness"


class WireError(Exception):
    """The broker answered with something this probe cannot use."""


@dataclass(frozen=True)
class PartitionInfo:
    """One partition as seen in a Metadata response."""

    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    error_code: int = 0


@dataclass(frozen=True)
class TopicInfo:
    """One topic as seen in a Metadata response."""

    name: str
    error_code: int
    is_internal: bool
    partitions: dict[int, PartitionInfo] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """No errors, at least one partition, and every partition has a leader."""
        return (
            self.error_code == 0
            and bool(self.partitions)
            and all(p.error_code == 0 and p.leader >= 0 for p in self.partitions.values())
        )


@dataclass(frozen=True)
class Metadata:
    """Brokers (node id -> host, port), controller, cluster id and requested topics."""

    brokers: dict[int, tuple[str, int]]
    controller_id: int
    cluster_id: str | None
    topics: dict[str, TopicInfo]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def i8(self) -> int:
        return self._take(">b")

    def i16(self) -> int:
        return self._take(">h")

    def i32(self) -> int:
        return self._take(">i")

    def string(self) -> str | None:
        n = self.i16()
        if n < 0:
            return None
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8")

    def i32_array(self) -> tuple[int, ...]:
        return tuple(self.i32() for _ in range(max(0, self.i32())))


def _request(
    host: str, port: int, api_key: int, version: int, body: bytes, timeout: float
) -> _Reader:
    correlation_id = 1
    header = struct.pack(">hhih", api_key, version, correlation_id, len(_CLIENT_ID)) + _CLIENT_ID
    payload = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        if not 4 <= size <= 64 * 1024 * 1024:
            raise WireError(f"implausible response size {size}")
        reader = _Reader(_recv_exact(sock, size))
    if reader.i32() != correlation_id:
        raise WireError("correlation id mismatch")
    return reader


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def api_versions(host: str, port: int, timeout: float = 5.0) -> dict[int, tuple[int, int]]:
    """ApiVersions v0: ``{api_key: (min_version, max_version)}``."""
    r = _request(host, port, API_VERSIONS, 0, b"", timeout)
    error = r.i16()
    if error != 0:
        raise WireError(f"ApiVersions error code {error}")
    out: dict[int, tuple[int, int]] = {}
    for _ in range(r.i32()):
        key, lo, hi = r.i16(), r.i16(), r.i16()
        out[key] = (lo, hi)
    return out


def metadata(
    host: str, port: int, topics: Sequence[str] | None = (), timeout: float = 5.0
) -> Metadata:
    """Metadata v4 for ``topics`` (``()``: brokers only, ``None``: all topics).

    Sends ``allow_auto_topic_creation=false``, so probing never creates topics.
    Only live (unfenced) brokers are listed.
    """
    if topics is None:
        body = struct.pack(">i", -1)
    else:
        body = struct.pack(">i", len(topics))
        for name in topics:
            raw = name.encode("utf-8")
            body += struct.pack(">h", len(raw)) + raw
    body += b"\x00"  # allow_auto_topic_creation = false
    r = _request(host, port, METADATA, 4, body, timeout)
    r.i32()  # throttle_time_ms
    brokers: dict[int, tuple[str, int]] = {}
    for _ in range(r.i32()):
        node_id, bhost, bport = r.i32(), r.string(), r.i32()
        r.string()  # rack
        brokers[node_id] = (bhost or "", bport)
    cluster_id = r.string()
    controller_id = r.i32()
    out_topics: dict[str, TopicInfo] = {}
    for _ in range(r.i32()):
        t_err, t_name, internal = r.i16(), r.string() or "", r.i8() != 0
        parts: dict[int, PartitionInfo] = {}
        for _ in range(r.i32()):
            p_err, idx, leader = r.i16(), r.i32(), r.i32()
            replicas, isr = r.i32_array(), r.i32_array()
            parts[idx] = PartitionInfo(idx, leader, replicas, isr, p_err)
        out_topics[t_name] = TopicInfo(t_name, t_err, internal, parts)
    return Metadata(brokers, controller_id, cluster_id, out_topics)


def init_producer_id(host: str, port: int, timeout: float = 5.0) -> tuple[int, int, int]:
    """InitProducerId v0 for an idempotent (non-transactional) producer.

    Returns ``(error_code, producer_id, producer_epoch)``; a fresh Kafka broker
    answers COORDINATOR_LOAD_IN_PROGRESS (14) until it holds a producer-id block.
    """
    body = struct.pack(">hi", -1, 60000)  # transactional_id = null, transaction_timeout_ms
    r = _request(host, port, INIT_PRODUCER_ID, 0, body, timeout)
    r.i32()  # throttle_time_ms
    error = r.i16()
    producer_id = struct.unpack_from(">q", r.data, r.pos)[0]
    r.pos += 8
    return error, int(producer_id), r.i16()
