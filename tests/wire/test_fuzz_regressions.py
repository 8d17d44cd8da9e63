"""Inputs found by the fuzz targets (tests/fuzz), replayed as plain unit tests.

Each test names the target that found the input and what escaped before the fix.
"""

from __future__ import annotations

import struct

import pytest

from proxy.errors import DecodeError
from proxy.wire import codec
from proxy.wire.apis import ApiKey
from proxy.wire.produce import ProduceRequestView

_NULL_ARRAY = struct.pack(">i", -1)


def _produce_v3(topics: bytes) -> bytes:
    # header: api key, version, correlation id, client id (null);
    # body: transactional id (null), acks, timeout, then the topic array as given.
    return struct.pack(">hhih", 0, 3, 7, -1) + struct.pack(">hhi", -1, -1, 30000) + topics


def test_produce_request_with_null_topic_array_is_a_decode_error() -> None:
    """frames target: kafka-python decoded topic_data as None and the produce planner's
    `for topic in request.topic_data` raised TypeError (before main's zero-copy view
    replaced it); the broker rejects a null non-nullable array ("non-nullable field
    topicData was serialized as null")."""
    with pytest.raises(DecodeError, match="null"):
        ProduceRequestView(_produce_v3(_NULL_ARRAY), 3)


def test_produce_request_with_null_partition_array_is_a_decode_error() -> None:
    topic = struct.pack(">i", 1) + struct.pack(">h", 1) + b"t" + _NULL_ARRAY
    with pytest.raises(DecodeError, match="null"):
        ProduceRequestView(_produce_v3(topic), 3)


def test_produce_request_with_null_topic_name_is_a_decode_error() -> None:
    topic = struct.pack(">i", 1) + struct.pack(">h", -1) + struct.pack(">i", 0)
    with pytest.raises(DecodeError, match="null topic name"):
        ProduceRequestView(_produce_v3(topic), 3)


def test_null_records_stay_allowed() -> None:
    partition = struct.pack(">i", 0) + _NULL_ARRAY  # records are nullable in every version
    topic = struct.pack(">i", 1) + struct.pack(">h", 1) + b"t" + struct.pack(">i", 1) + partition
    view = ProduceRequestView(_produce_v3(topic), 3)
    assert len(view.records(next(view.partitions()))) == 0


def test_api_versions_response_with_null_api_keys_is_a_decode_error() -> None:
    """responses target: narrow_api_versions' `for entry in response.api_keys` raised TypeError."""
    body = struct.pack(">ihi", 5, 0, -1)  # correlation id, error code 0, api_keys null
    with pytest.raises(DecodeError, match="api_keys"):
        codec.decode_response(ApiKey.API_VERSIONS, 0, body)


def test_find_coordinator_v4_with_null_coordinators_is_a_decode_error() -> None:
    # correlation id, header tagged fields (0), throttle time, coordinators null (compact 0),
    # body tagged fields (0)
    body = struct.pack(">i", 5) + b"\x00" + struct.pack(">i", 0) + b"\x00" + b"\x00"
    with pytest.raises(DecodeError, match="coordinators"):
        codec.decode_response(ApiKey.FIND_COORDINATOR, 4, body)


def test_nullable_fields_may_still_be_null() -> None:
    # Metadata v1 response: correlation id, brokers [], controller id, topics [];
    # Metadata v2 adds the cluster id, a nullable string
    response = codec.decode_response(ApiKey.METADATA, 1, struct.pack(">iiii", 5, 0, 1, 0))
    assert response.topics == []
    body = struct.pack(">ii", 5, 0) + struct.pack(">h", -1) + struct.pack(">ii", 1, 0)
    assert codec.decode_response(ApiKey.METADATA, 2, body).cluster_id is None


def test_values_kafka_python_decodes_as_none_are_not_nulls() -> None:
    """Captured from a real Kafka 4.1 broker: a Metadata v13 response whose topic has
    authorized operations "not requested" (-2^31, a bit field kafka-python maps to None)
    must still decode; so must the all-zero topic id (also None in kafka-python)."""
    from kafka.protocol.metadata import MetadataResponse

    topic = MetadataResponse.MetadataResponseTopic(
        error_code=3, name="t", topic_id=None, is_internal=False, partitions=[]
    )
    response = MetadataResponse[13](
        throttle_time_ms=0, brokers=[], cluster_id="c", controller_id=1, topics=[topic]
    )
    response.with_header(correlation_id=5)
    body = bytes(response.encode(header=True))
    decoded = codec.decode_response(ApiKey.METADATA, 13, body)
    assert decoded.topics[0].topic_id is None
    assert decoded.topics[0].authorized_operations is None


def test_produce_response_node_endpoint_with_null_host_is_a_decode_error() -> None:
    """responses target, run against the mypyc-compiled core: a Produce v13 response whose
    NodeEndpoints (a tagged field) held a null host reached the address rewriting, which
    passed None on as a host (the compiled build raised TypeError; the interpreted one kept
    a broker at host None). The broker's parser rejects a null non-nullable string."""
    body = bytes.fromhex("00000000000100000000020000010000020000000000000000110000000006")
    with pytest.raises(DecodeError, match="host is null"):
        codec.decode_response(ApiKey.PRODUCE, 13, body)
