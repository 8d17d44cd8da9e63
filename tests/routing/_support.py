"""Shared builders for the routing tests: directories, sessions and Kafka messages."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka.protocol.producer import ProduceRequest, ProduceResponse
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from proxy.address import Address
from proxy.routing.directory import BrokerDirectory, BrokerDiscovered
from proxy.routing.session import Output, Session
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
    """The brokers a directory reported as discovered, in order."""

    calls: list[tuple[int, Address]] = field(default_factory=list)


class RecordingDirectory(BrokerDirectory):
    """A directory that also keeps every BrokerDiscovered event it produced."""

    def __init__(self, *, advertised_host: str, port_base: int) -> None:
        super().__init__(advertised_host=advertised_host, port_base=port_base)
        self.announced = Announced()

    def learn(
        self, node_id: int, host: str, port: int, discovered: list[BrokerDiscovered] | None = None
    ) -> Address:
        found: list[BrokerDiscovered] = [] if discovered is None else discovered
        before = len(found)
        advertised = super().learn(node_id, host, port, found)
        self.announced.calls.extend((d.node_id, d.upstream) for d in found[before:])
        return advertised


def make_directory(port_base: int = PORT_BASE) -> tuple[BrokerDirectory, Announced]:
    directory = RecordingDirectory(advertised_host=ADVERTISED_HOST, port_base=port_base)
    return directory, directory.announced


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


def client_frames(transmit: Output) -> list[bytes]:
    """The frame bodies the session sends to the client."""
    return _bodies(transmit.client)


def upstream_frames(transmit: Output) -> list[bytes]:
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


# -- Produce builders: any pid/epoch/sequence, several topics and partitions -------------

#: Record timestamp of the batches below (client clock, CreateTime).
BATCH_TIMESTAMP = 1_700_000_000_000


def topic_id(name: str) -> uuid.UUID:
    """A stable topic id per topic name, for Produce v13+."""
    return uuid.uuid5(TOPIC_ID, name)


def idempotent_batch(
    producer_id: int = 1000,
    producer_epoch: int = 0,
    base_sequence: int = 0,
    records: int = 1,
    *,
    transactional: bool = False,
    timestamp: int = BATCH_TIMESTAMP,
    values: Sequence[bytes] | None = None,
) -> bytes:
    """A v2 batch of `records` records (or of `values`), timestamps timestamp, timestamp+1...

    The one builder of hand-made batches: unit tests, the Prometheus test and the bench use it.
    A producer id of -1 (with epoch and sequence -1) is a batch of a non-idempotent producer.
    """
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=DefaultRecordBatch.CODEC_NONE,
        is_transactional=transactional,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        batch_size=1 << 16,
    )
    if values is None:
        values = [b"v%d" % i for i in range(records)]
    for i, value in enumerate(values):
        builder.append(i, timestamp=timestamp + i, key=b"k%d" % i, value=value, headers=[])
    return bytes(builder.build())


#: topic name -> [(partition index, records)], in request order.
TopicRecords = Sequence[tuple[str, Sequence[tuple[int, bytes | None]]]]


def produce_request_with(
    version: int,
    topics: TopicRecords,
    *,
    acks: int = -1,
    transactional_id: str | None = None,
    timeout_ms: int = 30000,
) -> Any:
    """A ProduceRequest with the given partitions; v13+ names topics by `topic_id(name)`."""
    return ProduceRequest[version](
        transactional_id=transactional_id,
        acks=acks,
        timeout_ms=timeout_ms,
        topic_data=[
            ProduceRequest.TopicProduceData(
                name=name,
                topic_id=topic_id(name),
                partition_data=[
                    ProduceRequest.TopicProduceData.PartitionProduceData(index=i, records=r)
                    for i, r in partitions
                ],
            )
            for name, partitions in topics
        ],
    )


def produce_frame(
    version: int,
    topic: str,
    partitions: Sequence[tuple[int, bytes]],
    correlation_id: int,
    *,
    client_id: str = "test",
    acks: int = -1,
) -> bytes:
    """A whole Produce request frame (size prefix included) for one topic."""
    request = produce_request_with(version, [(topic, partitions)], acks=acks)
    return frame(encode_request(request, correlation_id, client_id))


@dataclass(frozen=True)
class PartitionAnswer:
    """One partition of a ProduceResponse (the broker's fields, flattened)."""

    index: int
    error_code: int = 0
    base_offset: int = -1
    log_append_time_ms: int = -1
    log_start_offset: int = -1
    error_message: str | None = None
    current_leader: tuple[int, int] | None = None  # (leader id, leader epoch), v10+


def produce_response_with(
    version: int,
    topics: Sequence[tuple[str, Sequence[PartitionAnswer]]],
    *,
    throttle_time_ms: int = 0,
    node_endpoints: Sequence[tuple[int, str, int, str | None]] = (),
) -> Any:
    """A ProduceResponse as a broker sends it; v13+ names topics by `topic_id(name)`."""
    topic_cls = ProduceResponse.TopicProduceResponse
    part_cls = topic_cls.PartitionProduceResponse
    response = ProduceResponse[version](
        responses=[
            topic_cls(
                name=name,
                topic_id=topic_id(name),
                partition_responses=[
                    part_cls(
                        index=a.index,
                        error_code=a.error_code,
                        base_offset=a.base_offset,
                        log_append_time_ms=a.log_append_time_ms,
                        log_start_offset=a.log_start_offset,
                        record_errors=[],
                        error_message=a.error_message,
                        current_leader=(
                            None
                            if a.current_leader is None
                            else part_cls.LeaderIdAndEpoch(
                                leader_id=a.current_leader[0], leader_epoch=a.current_leader[1]
                            )
                        ),
                    )
                    for a in answers
                ],
            )
            for name, answers in topics
        ],
        throttle_time_ms=throttle_time_ms,
    )
    if version >= 10:
        response.node_endpoints = [
            ProduceResponse.NodeEndpoint(node_id=n, host=h, port=p, rack=r)
            for n, h, p, r in node_endpoints
        ]
    return response


def decode_produce_request(version: int, body: bytes) -> Any:
    return ProduceRequest.decode(body, version=version, header=True)


def decode_produce_response(version: int, body: bytes) -> Any:
    return ProduceResponse.decode(body, version=version, header=True)


def produce_answers(response: Any) -> list[tuple[Any, PartitionAnswer]]:
    """(topic name or id, partition answer) in response order; absent fields read as -1/None."""
    out: list[tuple[Any, PartitionAnswer]] = []
    for topic in response.responses:
        key = topic.topic_id if response.version >= 13 else topic.name
        for p in topic.partition_responses:
            leader = getattr(p, "current_leader", None)
            out.append(
                (
                    key,
                    PartitionAnswer(
                        index=p.index,
                        error_code=p.error_code,
                        base_offset=p.base_offset,
                        log_append_time_ms=getattr(p, "log_append_time_ms", -1),
                        log_start_offset=getattr(p, "log_start_offset", -1),
                        error_message=getattr(p, "error_message", None),
                        current_leader=(
                            None if leader is None else (leader.leader_id, leader.leader_epoch)
                        ),
                    ),
                )
            )
    return out


@dataclass
class ProduceCounts:
    """Records a ProduceCoordinator's observer calls."""

    batches: list[tuple[str, int]] = field(default_factory=list)
    non_idempotent_actions: list[str] = field(default_factory=list)

    def produce_batch(self, result: str, records: int) -> None:
        self.batches.append((result, records))

    def non_idempotent(self, action: str) -> None:
        self.non_idempotent_actions.append(action)


def topics_metadata_response(version: int, topics: dict[str, uuid.UUID]) -> Any:
    """A Metadata response naming `topics` (name -> topic id, v10+) with one partition each."""
    from kafka.protocol.metadata import MetadataResponse as M

    partition = M.MetadataResponseTopic.MetadataResponsePartition
    return M[version](
        throttle_time_ms=0,
        brokers=[M.MetadataResponseBroker(node_id=0, host="kafka-0", port=9092, rack=None)],
        cluster_id="c",
        controller_id=0,
        topics=[
            M.MetadataResponseTopic(
                error_code=0,
                name=name,
                topic_id=tid,
                is_internal=False,
                partitions=[
                    partition(
                        error_code=0,
                        partition_index=0,
                        leader_id=0,
                        leader_epoch=0,
                        replica_nodes=[0],
                        isr_nodes=[0],
                        offline_replicas=[],
                    )
                ],
                authorized_operations=set(),
            )
            for name, tid in topics.items()
        ],
    )


def metadata_exchange_for(session: Session, topics: dict[str, uuid.UUID], cid: int = 900) -> Output:
    """A client's Metadata v12 request and the broker's answer naming `topics`."""
    from kafka.protocol.metadata import MetadataRequest

    request = MetadataRequest[12](topics=None, allow_auto_topic_creation=False)
    session.receive_client(frame(encode_request(request, cid)))
    return session.receive_upstream(
        frame(encode_response(topics_metadata_response(12, topics), cid))
    )
