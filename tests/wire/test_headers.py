"""Request/response header peeking, without decoding bodies."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.protocol.metadata import MetadataRequest
from kafka.protocol.metadata.api_versions import ApiVersionsRequest

from proxy.errors import FrameError, ProxyError
from proxy.wire.headers import (
    RequestHeader,
    peek_correlation_id,
    peek_request_header,
    request_header_length,
)


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _header(
    client_id: bytes | None,
    tagged: list[tuple[int, bytes]] | None = None,
    api_key: int = 3,
    api_version: int = 12,
    correlation_id: int = 7,
) -> bytes:
    out = struct.pack(">hhi", api_key, api_version, correlation_id)
    if client_id is None:
        out += struct.pack(">h", -1)
    else:
        out += struct.pack(">h", len(client_id)) + client_id
    if tagged is not None:
        out += _uvarint(len(tagged))
        for tag, value in tagged:
            out += _uvarint(tag) + _uvarint(len(value)) + value
    return out


# -- peeking ---------------------------------------------------------------


def test_peek_request_header_reads_key_version_and_correlation_id() -> None:
    body = struct.pack(">hhi", 18, 3, 123456) + b"rest"
    assert peek_request_header(body) == RequestHeader(18, 3, 123456)


def test_peek_request_header_reads_signed_fields() -> None:
    body = struct.pack(">hhi", -1, -2, -(2**31))
    assert peek_request_header(body) == RequestHeader(-1, -2, -(2**31))


def test_peek_request_header_of_a_kafka_python_request() -> None:
    request = MetadataRequest[12](topics=None, allow_auto_topic_creation=False)
    request.with_header(correlation_id=99, client_id="client-1")
    body = bytes(request.encode(header=True))
    assert peek_request_header(body) == RequestHeader(3, 12, 99)


@pytest.mark.parametrize("size", range(8))
def test_peek_request_header_of_a_short_body_raises_frame_error(size: int) -> None:
    with pytest.raises(FrameError):
        peek_request_header(b"\x00" * size)


def test_peek_correlation_id_reads_the_first_four_bytes() -> None:
    assert peek_correlation_id(struct.pack(">i", -5) + b"body") == -5
    assert peek_correlation_id(struct.pack(">i", 2**31 - 1)) == 2**31 - 1


@pytest.mark.parametrize("size", range(4))
def test_peek_correlation_id_of_a_short_body_raises_frame_error(size: int) -> None:
    with pytest.raises(FrameError):
        peek_correlation_id(b"\x01" * size)


# -- request header length --------------------------------------------------


def test_non_flexible_header_length_is_fixed_part_plus_client_id() -> None:
    body = _header(b"my-client") + b"BODY"
    assert request_header_length(body, flexible=False) == 10 + len(b"my-client")


def test_null_client_id_takes_only_its_length() -> None:
    assert request_header_length(_header(None) + b"BODY", flexible=False) == 10
    assert request_header_length(_header(None, tagged=[]) + b"BODY", flexible=True) == 11


def test_empty_client_id() -> None:
    assert request_header_length(_header(b""), flexible=False) == 10


def test_flexible_header_without_tagged_fields() -> None:
    header = _header(b"abc", tagged=[])
    assert request_header_length(header + b"BODY", flexible=True) == len(header)


def test_flexible_header_skips_tagged_fields() -> None:
    header = _header(b"abc", tagged=[(0, b"x" * 5), (3, b""), (200, b"y" * 130)])
    assert request_header_length(header + b"\x00BODY", flexible=True) == len(header)


def test_flexible_header_with_tagged_field_ending_exactly_at_the_end() -> None:
    header = _header(None, tagged=[(1, b"zz")])
    assert request_header_length(header, flexible=True) == len(header)


@pytest.mark.parametrize("version", range(MetadataRequest.max_version + 1))
@pytest.mark.parametrize("client_id", ["kafka-python", "", None])
def test_header_length_matches_kafka_python_encoding(version: int, client_id: str | None) -> None:
    request = MetadataRequest[version](topics=[MetadataRequest.MetadataRequestTopic(name="t")])
    request.with_header(correlation_id=1, client_id=client_id)  # type: ignore[arg-type]
    with_header = bytes(request.encode(header=True))
    body_only = bytes(request.encode())
    flexible = MetadataRequest.flexible_version_q(version)
    assert request_header_length(with_header, flexible) == len(with_header) - len(body_only)


def test_header_length_of_api_versions_v3_request() -> None:
    request = ApiVersionsRequest[3](client_software_name="x", client_software_version="1")
    request.with_header(correlation_id=9, client_id="cli")
    encoded = bytes(request.encode(header=True))
    assert request_header_length(encoded, flexible=True) == 8 + 2 + 3 + 1


@pytest.mark.parametrize("size", range(10))
def test_body_too_short_for_client_id_length_raises(size: int) -> None:
    with pytest.raises(FrameError):
        request_header_length(_header(None)[:size], flexible=False)


def test_client_id_longer_than_the_request_raises() -> None:
    body = struct.pack(">hhih", 0, 0, 0, 20) + b"short"
    with pytest.raises(FrameError):
        request_header_length(body, flexible=False)


def test_hostile_client_id_length_raises() -> None:
    body = struct.pack(">hhih", 0, 0, 0, 32767)
    with pytest.raises(FrameError):
        request_header_length(body, flexible=True)


@pytest.mark.parametrize("length", [-2, -100, -32768])
def test_negative_client_id_length_other_than_null_raises(length: int) -> None:
    body = struct.pack(">hhih", 0, 0, 0, length) + b"x" * 64
    with pytest.raises(FrameError):
        request_header_length(body, flexible=False)


def test_flexible_header_missing_tag_count_raises() -> None:
    with pytest.raises(FrameError):
        request_header_length(_header(b"ab"), flexible=True)


def test_truncated_tag_count_varint_raises() -> None:
    with pytest.raises(FrameError):
        request_header_length(_header(b"ab") + b"\x80", flexible=True)


def test_varint_longer_than_five_bytes_raises() -> None:
    with pytest.raises(FrameError, match="varint"):
        request_header_length(_header(b"ab") + b"\xff" * 5 + b"\x01", flexible=True)


def test_five_byte_varint_is_accepted() -> None:
    # count = 0 spelled in five bytes
    header = _header(b"ab") + b"\x80\x80\x80\x80\x00"
    assert request_header_length(header, flexible=True) == len(header)


def test_tag_count_larger_than_the_tags_present_raises() -> None:
    with pytest.raises(FrameError):
        request_header_length(_header(b"ab") + _uvarint(3) + b"\x00\x00", flexible=True)


def test_tagged_field_size_past_the_end_raises() -> None:
    body = _header(b"ab") + _uvarint(1) + _uvarint(0) + _uvarint(10) + b"abc"
    with pytest.raises(FrameError, match="tagged field"):
        request_header_length(body, flexible=True)


def test_hostile_tagged_field_size_raises() -> None:
    body = _header(b"ab") + _uvarint(1) + _uvarint(0) + _uvarint(2**35 - 1) + b"abc"
    with pytest.raises(FrameError):
        request_header_length(body, flexible=True)


def test_hostile_tag_count_raises_without_looping_forever() -> None:
    body = _header(b"ab") + _uvarint(2**35 - 1) + b"\x00\x00" * 50
    with pytest.raises(FrameError):
        request_header_length(body, flexible=True)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=64), flexible=st.booleans())
def test_request_header_length_on_random_bytes_only_raises_proxy_errors(
    body: bytes, flexible: bool
) -> None:
    try:
        length = request_header_length(body, flexible)
    except ProxyError:
        return
    assert 10 <= length <= len(body)


@settings(max_examples=300, deadline=None)
@given(
    client_id=st.none() | st.binary(max_size=40),
    tagged=st.lists(
        st.tuples(st.integers(min_value=0, max_value=2**20), st.binary(max_size=200)), max_size=4
    ),
    suffix=st.binary(max_size=40),
    flexible=st.booleans(),
)
def test_request_header_length_finds_the_end_of_any_valid_header(
    client_id: bytes | None,
    tagged: list[tuple[int, bytes]],
    suffix: bytes,
    flexible: bool,
) -> None:
    header = _header(client_id, tagged if flexible else None)
    assert request_header_length(header + suffix, flexible) == len(header)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.binary(min_size=8, max_size=8),
    client_len=st.integers(min_value=-(2**15), max_value=2**15 - 1),
    rest=st.binary(max_size=40),
    flexible=st.booleans(),
)
def test_hostile_client_id_lengths_only_raise_proxy_errors(
    prefix: bytes, client_len: int, rest: bytes, flexible: bool
) -> None:
    body = prefix + struct.pack(">h", client_len) + rest
    try:
        length = request_header_length(body, flexible)
    except ProxyError:
        return
    assert length <= len(body)
