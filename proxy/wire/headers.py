"""Peeking at request and response headers without decoding bodies.

Request header v1/v2 (org.apache.kafka.common.message.RequestHeaderData):
  api_key int16 | api_version int16 | correlation_id int32 | client_id nullable string(int16 length)
  v2 (flexible APIs) adds tagged fields after client_id.
Response header v0: correlation_id int32; v1 (flexible APIs, except ApiVersions) adds tagged fields.
The first 8 bytes of every request are fixed, which is all an opaque frame needs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from proxy.errors import FrameError

_REQ_FIXED = struct.Struct(">hhi")
_CORRELATION = struct.Struct(">i")
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """The fixed part of a request header: enough to route and to pair the response."""

    api_key: int
    api_version: int
    correlation_id: int


def peek_request_header(body: bytes) -> RequestHeader:
    """Read api key, version and correlation id from the first 8 bytes of a request body."""
    if len(body) < 8:
        raise FrameError(f"request of {len(body)} bytes is shorter than a request header")
    api_key, api_version, correlation_id = _REQ_FIXED.unpack_from(body, 0)
    return RequestHeader(api_key, api_version, correlation_id)


def peek_client_id(body: bytes) -> str:
    """The request header's client id ("" when null or not UTF-8): who the proxy stamps for."""
    if len(body) < 10:
        return ""
    (n,) = struct.unpack_from(">h", body, 8)
    raw = body[10 : 10 + n] if n > 0 else b""
    try:
        return raw.decode("utf-8") if isinstance(raw, bytes) else bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return ""


def peek_correlation_id(body: bytes) -> int:
    """Read the correlation id that starts every response body."""
    if len(body) < 4:
        raise FrameError(f"response of {len(body)} bytes is shorter than a response header")
    (correlation_id,) = _CORRELATION.unpack_from(body, 0)
    return int(correlation_id)


def _read_uvarint(body: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(body):
            raise FrameError("truncated varint in a request header")
        b = body[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise FrameError("varint longer than 5 bytes in a request header")


def request_header_length(body: bytes, flexible: bool) -> int:
    """Bytes taken by the request header (v1, or v2 with tagged fields when flexible)."""
    if len(body) < 10:
        raise FrameError("request too short for its client id")
    client_len = int(struct.unpack_from(">h", body, 8)[0])
    pos = 10 + max(client_len, 0)
    if client_len < -1 or pos > len(body):
        raise FrameError(f"client id length {client_len} runs past the request")
    if flexible:
        count, pos = _read_uvarint(body, pos)
        for _ in range(count):
            _tag, pos = _read_uvarint(body, pos)
            size, pos = _read_uvarint(body, pos)
            pos += size
            if pos > len(body) or size > _INT32_MAX:
                raise FrameError("tagged field runs past the request header")
    return pos
