"""Shared builders for the routing tests: directories, sessions and Kafka messages."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

from kafka.protocol.producer import ProduceRequest
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from proxy.routing.directory import Address, BrokerDirectory
from proxy.routing.session import Session, Transmit
from proxy.wire.frames import FrameDecoder, frame

ADVERTISED_HOST = "proxy.sidecar.local"
PORT_BASE = 19000
TOPIC_ID = uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")

#: Upstream brokers the fake cluster hands out: node id -> where it really listens.
UPSTREAM = {
    0: Address("kafka-0.kafka.svc", 9092),
    1: Address("kafka-1.kafka.svc", 9093),
    7: Address("10.0.0.7", 29092),
}


@dataclass
class Announced:
    """Records the directory's on_new_broker callback."""

    calls: list[tuple[int, Address]] = field(default_factory=list)

    def __call__(self, node_id: int, upstream: Address) -> None:
        self.calls.append((node_id, upstream))


def make_directory(port_base: int = PORT_BASE) -> tuple[BrokerDirectory, Announced]:
    announced = Announced()
    directory = BrokerDirectory(
        advertised_host=ADVERTISED_HOST, port_base=port_base, on_new_broker=announced
    )
    return directory, announced


def make_session(port_base: int = PORT_BASE, **kwargs: Any) -> tuple[Session, Announced]:
    directory, announced = make_directory(port_base)
    return Session(directory, **kwargs), announced


def proxied(node_id: int) -> Address:
    """The address a client must see for a broker."""
    return Address(ADVERTISED_HOST, PORT_BASE + node_id)


def encode_request(message: Any, correlation_id: int, client_id: str | None = "test") -> bytes:
    """A request body with its header, no size prefix."""
    message.with_header(correlation_id=correlation_id, client_id=client_id)
    return bytes(message.encode(header=True))


def encode_response(message: Any, correlation_id: int) -> bytes:
    """A response body with its header, no size prefix."""
    message.with_header(correlation_id=correlation_id)
    return bytes(message.encode(header=True))


def raw_request(api_key: int, api_version: int, correlation_id: int, payload: bytes = b"") -> bytes:
    """A request body for an API the tests do not build with kafka-python (header v1)."""
    return struct.pack(">hhih", api_key, api_version, correlation_id, 4) + b"test" + payload


def record_batch(producer_id: int = 1000, base_sequence: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=DefaultRecordBatch.CODEC_NONE,
        is_transactional=False,
        producer_id=producer_id,
        producer_epoch=0,
        base_sequence=base_sequence,
        batch_size=1 << 16,
    )
    builder.append(0, timestamp=1_700_000_000_000, key=b"k", value=b"v", headers=[])
    return bytes(builder.build())


def produce_request(version: int, acks: int = -1) -> Any:
    return ProduceRequest[version](
        transactional_id=None,
        acks=acks,
        timeout_ms=30000,
        topic_data=[
            ProduceRequest.TopicProduceData(
                name="orders",
                topic_id=TOPIC_ID,
                partition_data=[
                    ProduceRequest.TopicProduceData.PartitionProduceData(
                        index=0, records=record_batch()
                    )
                ],
            )
        ],
    )


def client_frames(transmit: Transmit) -> list[bytes]:
    """The frame bodies the session sends to the client."""
    return _bodies(transmit.client)


def upstream_frames(transmit: Transmit) -> list[bytes]:
    """The frame bodies the session sends upstream."""
    return _bodies(transmit.upstream)


def _bodies(frames: list[bytes]) -> list[bytes]:
    decoder = FrameDecoder()
    bodies = [body for data in frames for body in decoder.feed(data)]
    assert len(bodies) == len(frames), "every transmitted item must be exactly one frame"
    decoder.eof()
    return bodies


def exchange(session: Session, request: bytes, response: bytes) -> bytes:
    """Client sends request -> upstream receives it unchanged; upstream replies -> client body."""
    sent = session.receive_client(frame(request))
    assert sent.upstream == [frame(request)]
    assert sent.client == []
    replied = session.receive_upstream(frame(response))
    assert replied.upstream == []
    (body,) = client_frames(replied)
    return body
