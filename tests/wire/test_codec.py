"""The kafka-python codec wrapper: only ProxyError subclasses escape it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.protocol.metadata import MetadataResponse

from proxy.errors import DecodeError, ProxyError, UnsupportedVersion
from proxy.wire import codec
from proxy.wire.apis import ADDRESS_BEARING, HIDDEN_APIS, ApiKey

DECODED = [
    ApiKey.PRODUCE,
    ApiKey.METADATA,
    ApiKey.FIND_COORDINATOR,
    ApiKey.API_VERSIONS,
    ApiKey.DESCRIBE_CLUSTER,
]


def test_codec_max_versions() -> None:
    assert {k: codec.codec_max_version(k) for k in DECODED} == {
        ApiKey.PRODUCE: 13,
        ApiKey.METADATA: 13,
        ApiKey.FIND_COORDINATOR: 6,
        ApiKey.API_VERSIONS: 4,
        ApiKey.DESCRIBE_CLUSTER: 2,
    }


def test_message_classes() -> None:
    assert codec.response_class(ApiKey.METADATA) is MetadataResponse


def test_api_tables_are_consistent() -> None:
    assert set(ADDRESS_BEARING) <= set(DECODED)
    assert not HIDDEN_APIS & set(DECODED)


def test_api_not_decoded_by_the_proxy_is_unsupported() -> None:
    with pytest.raises(UnsupportedVersion):
        codec.decode_response(ApiKey.FETCH, 4, b"\x00" * 20)


@pytest.mark.parametrize("version", [-1, 14, 32767])
def test_version_outside_the_codec_is_unsupported(version: int) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        codec.decode_response(ApiKey.METADATA, version, b"\x00" * 20)
    assert info.value.error_code == 35


def test_garbage_becomes_decode_error_with_the_cause_attached() -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode_response(ApiKey.METADATA, 12, b"\x00\x00\x00\x01\x00\x05")
    assert info.value.__cause__ is not None
    assert "MetadataResponse v12" in info.value.reason


def test_decode_encode_round_trip_is_byte_identical() -> None:
    response = MetadataResponse[12](
        throttle_time_ms=1,
        brokers=[MetadataResponse.MetadataResponseBroker(node_id=1, host="h", port=1, rack=None)],
        cluster_id=None,
        controller_id=1,
        topics=[],
    )
    response.with_header(correlation_id=17)
    body = bytes(response.encode(header=True))
    assert codec.encode(codec.decode_response(ApiKey.METADATA, 12, body)) == body


@settings(max_examples=300, deadline=None)
@given(
    api_key=st.sampled_from(DECODED),
    version=st.integers(min_value=0, max_value=13),
    body=st.binary(max_size=80),
)
def test_random_bodies_only_raise_proxy_errors(api_key: int, version: int, body: bytes) -> None:
    try:
        codec.decode_response(api_key, version, body)
    except ProxyError:
        pass
