"""The zero-copy Produce view, checked against kafka-python's own codec at every version."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.protocol.producer import ProduceRequest, ProduceResponse

from proxy.errors import DecodeError, ProxyError
from proxy.wire.produce import (
    ProduceRequestView,
    ProduceResponseView,
    ResponseTopicEntries,
    encode_partition_answer,
    encode_response,
    opaque_produce_acks,
)
from tests.routing._support import (
    PartitionAnswer,
    encode_request,
    idempotent_batch,
    produce_request_with,
    produce_response_with,
    topic_id,
)

VERSIONS = range(3, 14)
FIRST = idempotent_batch(7, 0, 0)
SECOND = idempotent_batch(7, 0, 5, records=3)


def _request(version: int, transactional_id: str | None = None, acks: int = -1) -> bytes:
    topics = [("orders", [(0, FIRST), (1, None)]), ("audit", [(2, SECOND)])]
    request = produce_request_with(version, topics, transactional_id=transactional_id, acks=acks)
    return encode_request(request, 77)


def _key(version: int, name: str) -> str | bytes:
    return topic_id(name).bytes if version >= 13 else name


@pytest.mark.parametrize("version", VERSIONS)
def test_request_view_finds_every_partition_and_its_records(version: int) -> None:
    view = ProduceRequestView(_request(version, "tx-1", acks=1), version)
    assert (view.correlation_id, view.acks, view.timeout_ms) == (77, 1, 30000)
    assert view.transactional_id == "tx-1"
    parts = list(view.partitions())
    assert [(p.topic, p.partition) for p in parts] == [
        (_key(version, "orders"), 0),
        (_key(version, "orders"), 1),
        (_key(version, "audit"), 2),
    ]
    assert bytes(view.records(parts[0])) == FIRST
    assert bytes(view.records(parts[1])) == b""  # null records
    assert bytes(view.records(parts[2])) == SECOND


@pytest.mark.parametrize("version", VERSIONS)
def test_rebuilt_request_is_what_kafka_python_would_encode_for_the_kept_partitions(
    version: int,
) -> None:
    body = _request(version)
    view = ProduceRequestView(body, version)
    first, _, third = view.partitions()
    assert view.rebuild(list(view.partitions())) == body  # all kept: the same bytes
    rebuilt = ProduceRequest.decode(
        view.rebuild([third], correlation_id=-3), version=version, header=True
    )
    assert rebuilt.header.correlation_id == -3
    ((topic, partitions),) = [
        (t.topic_id if version >= 13 else t.name, [(p.index, p.records) for p in t.partition_data])
        for t in rebuilt.topic_data
    ]
    assert topic == (topic_id("audit") if version >= 13 else "audit")
    assert partitions == [(2, SECOND)]
    both = ProduceRequest.decode(view.rebuild([first, third]), version=version, header=True)
    assert both.header.correlation_id == 77
    assert [len(t.partition_data) for t in both.topic_data] == [1, 1]


@pytest.mark.parametrize("version", VERSIONS)
def test_response_view_reads_each_partition_answer(version: int) -> None:
    answers = [
        PartitionAnswer(0, 0, 10, 1234, 5, None, (1, 2) if version >= 10 else None),
        PartitionAnswer(1, 6, -1, -1, -1, "not leader"),
    ]
    response = produce_response_with(
        version,
        [("orders", answers)],
        throttle_time_ms=9,
        node_endpoints=[(1, "kafka-1", 9092, None)] if version >= 10 else (),
    )
    response.with_header(correlation_id=77)
    view = ProduceResponseView(bytes(response.encode(header=True)), version)
    assert (view.correlation_id, view.throttle_time_ms) == (77, 9)
    assert view.node_endpoints == (version >= 10)
    got = [
        (r.partition, r.error_code, r.base_offset, r.log_append_time_ms, r.log_start_offset)
        for r in view.partitions()
    ]
    assert got == [(0, 0, 10, 1234, 5 if version >= 5 else -1), (1, 6, -1, -1, -1)]


@pytest.mark.parametrize("version", VERSIONS)
def test_merged_response_decodes_with_the_broker_entries_and_the_local_answers(
    version: int,
) -> None:
    request = ProduceRequestView(_request(version), version)
    broker = produce_response_with(
        version,
        [("orders", [PartitionAnswer(0, 0, 10, -1, 0, None, (3, 4) if version >= 10 else None)])],
        node_endpoints=[(3, "kafka-3", 9092, "r1")] if version >= 10 else (),
    )
    broker.with_header(correlation_id=77)
    answer = ProduceResponseView(bytes(broker.encode(header=True)), version)
    (entry,) = answer.partitions()
    orders, audit = request.topics
    merged = encode_response(
        version,
        77,
        [
            ResponseTopicEntries(
                request.body[orders.key_start : orders.key_end],
                [answer.entry(entry), encode_partition_answer(version, 1, 44, error_message="x")],
                answer.topic_tags(entry.topic) or b"\x00",
            ),
            ResponseTopicEntries(
                request.body[audit.key_start : audit.key_end],
                [encode_partition_answer(version, 2, 0, 33, 44, 55)],
                b"\x00",
            ),
        ],
        throttle_time_ms=3,
        tail=answer.tail(),
    )
    decoded = ProduceResponse.decode(merged, version=version, header=True)
    assert decoded.throttle_time_ms == 3
    parts = [p for t in decoded.responses for p in t.partition_responses]
    assert [(p.index, p.error_code, p.base_offset) for p in parts] == [
        (0, 0, 10),
        (1, 44, -1),
        (2, 0, 33),
    ]
    assert parts[2].log_append_time_ms == 44
    if version >= 5:
        assert parts[2].log_start_offset == 55
    if version >= 8:
        assert parts[1].error_message == "x"
    if version >= 10:
        assert [n.node_id for n in decoded.node_endpoints] == [3]
        assert parts[0].current_leader.leader_id == 3
    assert len(list(ProduceResponseView(merged, version).partitions())) == 3


@pytest.mark.parametrize("version", [0, 1, 2, 14, -1])
def test_versions_outside_v3_v13_are_refused(version: int) -> None:
    with pytest.raises(DecodeError):
        ProduceRequestView(_request(9), version)
    with pytest.raises(DecodeError):
        ProduceResponseView(b"\x00" * 16, version)


@pytest.mark.parametrize("cut", [3, 9, 20, 40, -1])
def test_a_truncated_request_is_a_decode_error(cut: int) -> None:
    with pytest.raises(DecodeError):
        ProduceRequestView(_request(9)[:cut], 9)


def test_bytes_after_the_request_are_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="after the end"):
        ProduceRequestView(_request(7) + b"\x00", 7)


def test_a_hostile_records_length_is_a_decode_error_without_allocation() -> None:
    body = bytearray(_request(7))
    view = ProduceRequestView(bytes(body), 7)
    first = next(view.partitions())
    struct.pack_into(">i", body, first.records_start - 4, 2**31 - 1)
    with pytest.raises(DecodeError, match="past the frame"):
        ProduceRequestView(bytes(body), 7)


def test_v0_to_v2_acks_are_read_after_the_header() -> None:
    assert opaque_produce_acks(struct.pack(">hhih", 0, 2, 1, 1) + b"c" + b"\x00\x01") == 1
    with pytest.raises(DecodeError):
        opaque_produce_acks(struct.pack(">hhih", 0, 2, 1, 1) + b"c")


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=300), version=st.integers(3, 13))
def test_random_bytes_only_raise_decode_errors(data: bytes, version: int) -> None:
    for view in (ProduceRequestView, ProduceResponseView):
        try:
            view(data, version)
        except ProxyError:
            pass
