"""Session playbooks: client sends X -> upstream gets Y; upstream replies Z -> client gets W."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.protocol.metadata import MetadataRequest, MetadataResponse
from kafka.protocol.metadata.api_versions import ApiVersionsResponse
from kafka.protocol.producer import ProduceResponse

from proxy.errors import DecodeError, FrameError, FrameTooLarge, TruncatedFrame
from proxy.routing.session import Output, Session
from proxy.wire.apis import ApiKey
from proxy.wire.frames import frame

from ._support import (
    ADVERTISED_HOST,
    PORT_BASE,
    UPSTREAM,
    client_frames,
    encode_request,
    encode_response,
    exchange,
    make_directory,
    make_session,
    produce_request,
    raw_request,
    upstream_frames,
)

MADE_UP_API = 250


def opaque_response(correlation_id: int, payload: bytes = b"opaque-response") -> bytes:
    return struct.pack(">i", correlation_id) + payload


def metadata_exchange(correlation_id: int) -> tuple[bytes, bytes]:
    request = encode_request(
        MetadataRequest[12](topics=None, allow_auto_topic_creation=False), correlation_id
    )
    response = MetadataResponse[12](
        throttle_time_ms=0,
        brokers=[
            MetadataResponse.MetadataResponseBroker(
                node_id=0, host=UPSTREAM[0].host, port=UPSTREAM[0].port, rack=None
            )
        ],
        cluster_id="c",
        controller_id=0,
        topics=[],
    )
    return request, encode_response(response, correlation_id)


class RecordingObserver:
    def __init__(self) -> None:
        self.requests: list[tuple[int, int]] = []
        self.responses: list[tuple[int, int, float]] = []
        self.upstream_answers: list[tuple[int, float]] = []

    def request(self, api_key: int, size: int) -> None:
        self.requests.append((api_key, size))

    def response(self, api_key: int, size: int, started: float) -> None:
        self.responses.append((api_key, size, started))

    def upstream(self, api_key: int, started: float) -> None:
        self.upstream_answers.append((api_key, started))


# -- opaque forwarding ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_key", "version"),
    [(MADE_UP_API, 0), (MADE_UP_API, 32767), (ApiKey.FETCH, 15), (ApiKey.FETCH, 4), (2, 9)],
)
def test_opaque_api_is_forwarded_byte_identical_both_ways(api_key: int, version: int) -> None:
    session, announced = make_session()
    request = raw_request(api_key, version, 41, b"\x00\x01arbitrary\xff payload")
    # Not a valid response of any kind: the session must not look past the correlation id.
    response = opaque_response(41, b"\xde\xad\xbe\xef" * 10)
    assert exchange(session, request, response) == response
    assert announced.calls == []
    assert session.awaiting_upstream == 0


def test_fetch_v15_response_with_broker_addresses_is_not_touched() -> None:
    session, _ = make_session()
    response = opaque_response(3, b"kafka-0.kafka.svc\x00\x00\x23\x84")
    assert exchange(session, raw_request(ApiKey.FETCH, 15, 3), response) == response


def test_request_with_a_null_client_id_is_forwarded() -> None:
    session, _ = make_session()
    request = struct.pack(">hhih", MADE_UP_API, 1, 5, -1) + b"body"
    assert exchange(session, request, opaque_response(5)) == opaque_response(5)


# -- pipelining and ordering --------------------------------------------------------------


def _five_requests() -> tuple[list[bytes], list[bytes]]:
    metadata_request, metadata_response = metadata_exchange(2)
    requests = [
        raw_request(MADE_UP_API, 0, 1, b"first"),
        metadata_request,
        raw_request(ApiKey.FETCH, 15, 3, b"fetch"),
        raw_request(MADE_UP_API, 7, 4, b"fourth"),
        raw_request(2, 9, 5, b"list-offsets"),
    ]
    responses = [
        opaque_response(1, b"r1"),
        metadata_response,
        opaque_response(3, b"r3"),
        opaque_response(4, b"r4"),
        opaque_response(5, b"r5"),
    ]
    return requests, responses


def test_pipelined_requests_in_one_read_are_forwarded_in_order() -> None:
    session, _ = make_session()
    requests, _ = _five_requests()
    out = session.receive_client(b"".join(frame(r) for r in requests))
    assert out.upstream == [frame(r) for r in requests]
    assert out.client == []
    assert session.awaiting_upstream == 5


def test_pipelined_responses_in_one_read_are_answered_in_order() -> None:
    session, _ = make_session()
    requests, responses = _five_requests()
    session.receive_client(b"".join(frame(r) for r in requests))
    out = session.receive_upstream(b"".join(frame(r) for r in responses))
    received = client_frames(out)
    assert [struct.unpack_from(">i", r)[0] for r in received] == [1, 2, 3, 4, 5]
    assert received[0] == responses[0]
    assert received[2:] == responses[2:]
    metadata = MetadataResponse.decode(received[1], version=12, header=True)
    assert (metadata.brokers[0].host, metadata.brokers[0].port) == (ADVERTISED_HOST, PORT_BASE)
    assert session.awaiting_upstream == 0


def test_pipelined_responses_one_at_a_time_are_released_as_they_arrive() -> None:
    session, _ = make_session()
    requests, responses = _five_requests()
    session.receive_client(b"".join(frame(r) for r in requests))
    for i, response in enumerate(responses):
        out = session.receive_upstream(frame(response))
        (body,) = client_frames(out)
        assert struct.unpack_from(">i", body)[0] == i + 1
        assert session.awaiting_upstream == 4 - i


def test_response_split_across_reads_is_reassembled() -> None:
    session, _ = make_session()
    request, response = metadata_exchange(9)
    session.receive_client(frame(request))
    wire = frame(response)
    for byte in wire[:-1]:
        out = session.receive_upstream(bytes([byte]))
        assert out.client == []
        assert out.upstream == []
    (body,) = client_frames(session.receive_upstream(wire[-1:]))
    assert MetadataResponse.decode(body, version=12, header=True).brokers[0].port == PORT_BASE


def test_request_split_across_reads_is_forwarded_once_complete() -> None:
    session, _ = make_session()
    request = raw_request(MADE_UP_API, 0, 1, b"payload")
    wire = frame(request)
    assert session.receive_client(wire[:3]).upstream == []
    assert session.receive_client(wire[3:10]).upstream == []
    assert session.receive_client(wire[10:]).upstream == [wire]


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(
        st.tuples(
            st.sampled_from([MADE_UP_API, ApiKey.FETCH, 2]),
            st.binary(max_size=40),
            st.binary(max_size=40),
        ),
        min_size=1,
        max_size=8,
    ),
    client_cuts=st.lists(st.integers(min_value=0, max_value=800), max_size=10),
    upstream_cuts=st.lists(st.integers(min_value=0, max_value=800), max_size=10),
)
def test_random_opaque_pipelines_split_anywhere_round_trip_in_order(
    payloads: list[tuple[int, bytes, bytes]],
    client_cuts: list[int],
    upstream_cuts: list[int],
) -> None:
    session, _ = make_session()
    requests = [raw_request(key, 1, 100 + i, p) for i, (key, p, _) in enumerate(payloads)]
    responses = [opaque_response(100 + i, r) for i, (_, _, r) in enumerate(payloads)]

    def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
        points = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
        return [data[a:b] for a, b in zip(points, points[1:], strict=False)]

    forwarded: list[bytes] = []
    for chunk in chunks(b"".join(frame(r) for r in requests), client_cuts):
        out = session.receive_client(chunk)
        assert out.client == []
        forwarded += upstream_frames(out)
    assert forwarded == requests
    answered: list[bytes] = []
    for chunk in chunks(b"".join(frame(r) for r in responses), upstream_cuts):
        answered += client_frames(session.receive_upstream(chunk))
    assert answered == responses
    session.client_eof()
    assert session.awaiting_upstream == 0


# -- protocol violations by the broker --------------------------------------------------


def test_response_with_a_mismatched_correlation_id_raises_frame_error() -> None:
    session, _ = make_session()
    session.receive_client(frame(raw_request(MADE_UP_API, 0, 1)))
    session.receive_client(frame(raw_request(MADE_UP_API, 0, 2)))
    with pytest.raises(FrameError, match="expected 1"):
        session.receive_upstream(frame(opaque_response(2)))


def test_response_with_nothing_outstanding_raises_frame_error() -> None:
    session, _ = make_session()
    with pytest.raises(FrameError, match="no outstanding request"):
        session.receive_upstream(frame(opaque_response(0)))


def test_extra_response_after_the_last_one_raises_frame_error() -> None:
    session, _ = make_session()
    session.receive_client(frame(raw_request(MADE_UP_API, 0, 1)))
    with pytest.raises(FrameError):
        session.receive_upstream(frame(opaque_response(1)) + frame(opaque_response(1)))


@pytest.mark.parametrize("size", range(4))
def test_response_shorter_than_a_correlation_id_raises_frame_error(size: int) -> None:
    session, _ = make_session()
    session.receive_client(frame(raw_request(MADE_UP_API, 0, 0)))
    with pytest.raises(FrameError):
        session.receive_upstream(frame(b"\x00" * size))


@pytest.mark.parametrize("size", range(8))
def test_request_shorter_than_a_header_raises_frame_error(size: int) -> None:
    session, _ = make_session()
    with pytest.raises(FrameError):
        session.receive_client(frame(b"\x00" * size))


def test_address_bearing_response_that_does_not_decode_raises_decode_error() -> None:
    session, _ = make_session()
    request, _ = metadata_exchange(6)
    session.receive_client(frame(request))
    with pytest.raises(DecodeError):
        session.receive_upstream(frame(opaque_response(6, b"\x00\x01")))


def test_api_versions_response_that_does_not_decode_raises_decode_error() -> None:
    session, _ = make_session()
    session.receive_client(frame(raw_request(ApiKey.API_VERSIONS, 0, 6)))
    with pytest.raises(DecodeError):
        session.receive_upstream(frame(opaque_response(6, b"\x00\x00\x7f")))


def test_produce_request_that_does_not_decode_raises_decode_error() -> None:
    session, _ = make_session()
    with pytest.raises(DecodeError):
        session.receive_client(frame(raw_request(ApiKey.PRODUCE, 9, 1, b"\x05garbage")))


def test_oversized_frames_are_rejected_on_both_sides() -> None:
    session, _ = make_session(max_frame_bytes=64)
    with pytest.raises(FrameTooLarge):
        session.receive_client(struct.pack(">i", 65))
    session, _ = make_session(max_frame_bytes=64)
    session.receive_client(frame(raw_request(MADE_UP_API, 0, 1)))
    with pytest.raises(FrameTooLarge):
        session.receive_upstream(struct.pack(">i", 2**31 - 1))


def test_client_eof_mid_frame_raises_truncated_frame() -> None:
    session, _ = make_session()
    session.receive_client(frame(raw_request(MADE_UP_API, 0, 1))[:6])
    with pytest.raises(TruncatedFrame):
        session.client_eof()


def test_clean_eof_between_frames() -> None:
    session, _ = make_session()
    exchange(session, raw_request(MADE_UP_API, 0, 1), opaque_response(1))
    session.client_eof()


def test_close_is_idempotent_and_forgets_what_was_awaited() -> None:
    session, _ = make_session()
    session.receive_client(frame(raw_request(MADE_UP_API, 0, 1)))
    session.receive_upstream(frame(opaque_response(1))[:5])  # the broker left mid-frame
    assert session.awaiting_upstream == 1
    assert session.close() == Output()
    assert session.awaiting_upstream == 0
    assert session.closed
    assert session.close() == Output()
    assert session.resume() == Output()


# -- Produce acks=0 --------------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 9, 13])
def test_produce_acks_0_expects_no_response_and_the_next_response_pairs(version: int) -> None:
    session, _ = make_session()
    produce = encode_request(produce_request(version, acks=0), 10)
    following = raw_request(MADE_UP_API, 0, 11, b"next")
    out = session.receive_client(frame(produce) + frame(following))
    assert out.upstream == [frame(produce), frame(following)]
    assert out.client == []
    assert session.awaiting_upstream == 1
    (body,) = client_frames(session.receive_upstream(frame(opaque_response(11))))
    assert body == opaque_response(11)


def test_response_to_an_acks_0_produce_is_a_protocol_violation() -> None:
    session, _ = make_session()
    session.receive_client(frame(encode_request(produce_request(9, acks=0), 10)))
    with pytest.raises(FrameError):
        session.receive_upstream(frame(opaque_response(10)))


@pytest.mark.parametrize("acks", [1, -1])
def test_produce_with_acks_is_forwarded_and_answered(acks: int) -> None:
    session, _ = make_session()
    request = encode_request(produce_request(9, acks=acks), 12)
    response = encode_response(ProduceResponse[9](responses=[], throttle_time_ms=0), 12)
    assert exchange(session, request, response) == response


# -- locally answered requests keep their place --------------------------------------------


def _api_versions_v5(correlation_id: int) -> bytes:
    return raw_request(ApiKey.API_VERSIONS, 5, correlation_id, b"\x00\x03cli\x021\x00")


def _local_answer(body: bytes) -> Any:
    return ApiVersionsResponse.decode(body, version=0, header=True)


def test_local_answer_queued_behind_a_forwarded_request_keeps_response_order() -> None:
    session, _ = make_session()
    first = raw_request(MADE_UP_API, 0, 1, b"first")
    out = session.receive_client(frame(first) + frame(_api_versions_v5(2)))
    assert out.upstream == [frame(first)]
    assert out.client == []  # the local answer waits for the earlier response
    received = client_frames(session.receive_upstream(frame(opaque_response(1))))
    assert len(received) == 2
    assert received[0] == opaque_response(1)
    answer = _local_answer(received[1])
    assert answer.header.correlation_id == 2
    assert answer.error_code == 35


def test_local_answer_between_forwarded_requests() -> None:
    session, _ = make_session()
    first = raw_request(MADE_UP_API, 0, 1)
    third = raw_request(ApiKey.FETCH, 15, 3)
    out = session.receive_client(frame(first))
    out2 = session.receive_client(frame(_api_versions_v5(2)) + frame(third))
    assert out.upstream + out2.upstream == [frame(first), frame(third)]
    assert out.client == out2.client == []
    received = client_frames(session.receive_upstream(frame(opaque_response(1))))
    assert [struct.unpack_from(">i", r)[0] for r in received] == [1, 2]
    received = client_frames(session.receive_upstream(frame(opaque_response(3))))
    assert received == [opaque_response(3)]


def test_local_answer_with_nothing_outstanding_is_immediate() -> None:
    session, _ = make_session()
    out = session.receive_client(frame(_api_versions_v5(77)))
    assert out.upstream == []
    (body,) = client_frames(out)
    assert _local_answer(body).header.correlation_id == 77


# -- observer ---------------------------------------------------------------------------


def test_observer_sees_every_request_and_response_with_its_start_time() -> None:
    observer = RecordingObserver()
    ticks = iter([10.0, 20.0, 30.0])
    directory, _ = make_directory()
    session = Session(directory, observer=observer, clock=lambda: next(ticks))
    first = raw_request(MADE_UP_API, 0, 1, b"abc")
    local = _api_versions_v5(2)
    session.receive_client(frame(first) + frame(local))
    assert observer.requests == [
        (MADE_UP_API, len(first) + 4),
        (ApiKey.API_VERSIONS, len(local) + 4),
    ]
    assert observer.responses == []
    out = session.receive_upstream(frame(opaque_response(1, b"xy")))
    assert observer.responses == [
        (MADE_UP_API, 10, 10.0),
        (ApiKey.API_VERSIONS, len(out.client[1]), 20.0),
    ]


def test_session_without_observer_or_clock_works() -> None:
    directory, _ = make_directory()
    session = Session(directory)
    assert exchange(session, raw_request(MADE_UP_API, 0, 1), opaque_response(1)) == (
        opaque_response(1)
    )
