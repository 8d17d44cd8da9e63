"""Zero-copy views of Produce requests and responses, and the few rebuilds the proxy needs.

A flyweight in the manner of Kafka's DefaultRecordBatch: the frame is walked once with
`struct.unpack_from`, yielding topics, partitions and byte ranges into the original body, so
a request the proxy does not change is forwarded as the same bytes object it arrived in.
Rebuilding (a request without some partitions, a response with the proxy's answers merged in)
joins byte ranges of the originals; nothing is re-encoded field by field but the proxy's own
partition answers.

Produce v3-v13 (ProduceRequest.json / ProduceResponse.json), flexible (KIP-482) from v9:
  request   header v1|v2, transactionalId nullable string, acks int16, timeoutMs int32,
            topicData [name string (v3-12) | topicId uuid (v13+),
                       partitionData [index int32, records nullable bytes, tags(v9+)], tags(v9+)],
            tags(v9+)
  response  header v0|v1, responses [name | topicId,
                partitionResponses [index int32, errorCode int16, baseOffset int64,
                    logAppendTimeMs int64, logStartOffset int64 (v5+),
                    recordErrors [batchIndex int32, message nullable string, tags] (v8+),
                    errorMessage nullable string (v8+), tags (v9+; currentLeader = tag 0, v10+)],
                tags(v9+)],
            throttleTimeMs int32, tags (v9+; nodeEndpoints = tag 0, v10+)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

from proxy.errors import DecodeError, FrameError
from proxy.wire.headers import request_header_length

MIN_VERSION = 3
MAX_VERSION = 13
FIRST_FLEXIBLE = 9
FIRST_TOPIC_ID = 13

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_HEAD = struct.Struct(">hi")  # acks, timeoutMs
_PART_RESULT = struct.Struct(">ihq")  # index, errorCode, baseOffset
_I64 = struct.Struct(">q")
_MAX_UVARINT_SHIFT = 28

#: A topic as a Produce request names it: its name (v3-12) or its 16-byte id (v13+).
TopicKey = str | bytes


class ProducePartition(NamedTuple):
    """One partition entry of a Produce request: where its bytes and its records are."""

    topic: TopicKey
    partition: int
    start: int  # first byte of the entry (its index field)
    end: int  # one past the entry's last byte (tagged fields included)
    records_start: int  # -1 when records are null
    records_end: int


class ProduceTopic(NamedTuple):
    key: TopicKey
    key_start: int  # the encoded name or id, as it must be repeated in the response
    key_end: int
    partitions: list[ProducePartition]
    tags_start: int  # the topic's tagged fields (an empty range before v9)
    tags_end: int


class PartitionResult(NamedTuple):
    """One partition entry of a Produce response."""

    topic: TopicKey
    partition: int
    error_code: int
    base_offset: int
    log_append_time_ms: int
    log_start_offset: int
    start: int
    end: int


class ResponseTopic(NamedTuple):
    key: TopicKey
    partitions: list[PartitionResult]
    tags_start: int
    tags_end: int


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    first = buf[pos]  # IndexError past the end: turned into DecodeError by the callers
    if first < 0x80:
        return first, pos + 1  # one byte: every count and length below 128
    value = 0
    shift = 0
    while True:
        b = buf[pos]  # IndexError past the end: turned into DecodeError by the callers
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > _MAX_UVARINT_SHIFT:
            raise DecodeError("varint longer than 5 bytes")


def _skip_tags(buf: bytes, pos: int) -> tuple[int, bool]:
    """Skip a tagged-field section; also say whether tag 0 was present."""
    if buf[pos] == 0:
        return pos + 1, False  # no tagged fields: nearly always
    count, pos = _uvarint(buf, pos)
    tag0 = False
    for _ in range(count):
        tag, pos = _uvarint(buf, pos)
        size, pos = _uvarint(buf, pos)
        pos += size
        if pos > len(buf):
            raise DecodeError("tagged field runs past the frame")
        tag0 = tag0 or tag == 0
    return pos, tag0


def _array_count(buf: bytes, pos: int, flexible: bool) -> tuple[int, int]:
    if flexible:
        n, pos = _uvarint(buf, pos)
        n -= 1  # compact arrays store length + 1; 0 is null
    else:
        (n,) = _I32.unpack_from(buf, pos)
        pos += 4
    if n < 0:
        raise DecodeError("null or negative array length in a Produce frame")
    return n, pos


def _nullable_string_end(buf: bytes, pos: int, flexible: bool) -> tuple[int, int, int]:
    """(start, end, next pos) of a nullable string's bytes; start -1 when null."""
    if flexible:
        n, pos = _uvarint(buf, pos)
        n -= 1
    else:
        (n,) = _I16.unpack_from(buf, pos)
        pos += 2
    if n < 0:
        if n < -1:
            raise DecodeError(f"string length {n} in a Produce frame")
        return -1, -1, pos
    end = pos + n
    if end > len(buf):
        raise DecodeError("string runs past the frame")
    return pos, end, end


def _topic_key(buf: bytes, pos: int, version: int, flexible: bool) -> tuple[TopicKey, int]:
    if version >= FIRST_TOPIC_ID:
        end = pos + 16
        if end > len(buf):
            raise DecodeError("topic id runs past the frame")
        return buf[pos:end], end
    start, end, pos = _nullable_string_end(buf, pos, flexible)
    if start < 0:
        raise DecodeError("null topic name in a Produce frame")
    try:
        return buf[start:end].decode("utf-8"), pos
    except UnicodeDecodeError:
        raise DecodeError("topic name is not UTF-8") from None


def opaque_produce_acks(body: bytes) -> int:
    """The acks of a Produce v0-v2 request (acks int16 follows the v1 request header)."""
    try:
        pos = request_header_length(body, False)
        (acks,) = _I16.unpack_from(body, pos)
    except (FrameError, struct.error):
        raise DecodeError("Produce v0-v2 request too short for its acks") from None
    return int(acks)


class _View:
    """A Produce frame body walked once at construction; bad bytes raise DecodeError only."""

    __slots__ = ("body", "version")
    _KIND = ""

    def __init__(self, body: bytes, version: int) -> None:
        if not MIN_VERSION <= version <= MAX_VERSION:
            raise DecodeError(f"Produce v{version} is outside v{MIN_VERSION}-v{MAX_VERSION}")
        self.body = body
        self.version = version
        try:
            self._parse(body, version)
        except (struct.error, IndexError) as exc:
            raise DecodeError(f"Produce v{version} {self._KIND} is truncated: {exc}") from None

    def _parse(self, body: bytes, version: int) -> None:
        raise NotImplementedError


class ProduceRequestView(_View):
    """A parsed Produce request over its original bytes (body = frame without the size)."""

    __slots__ = (
        "acks",
        "correlation_id",
        "tail_start",
        "timeout_ms",
        "topics",
        "topics_start",
        "transactional_id",
    )
    _KIND = "request"

    def _parse(self, body: bytes, version: int) -> None:
        flexible = version >= FIRST_FLEXIBLE
        (self.correlation_id,) = _I32.unpack_from(body, 4)
        try:
            pos = request_header_length(body, flexible)
        except FrameError as exc:
            raise DecodeError(f"Produce v{version} request header: {exc.reason}") from None
        start, end, pos = _nullable_string_end(body, pos, flexible)
        try:
            self.transactional_id = None if start < 0 else body[start:end].decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("transactional id is not UTF-8") from None
        self.acks, self.timeout_ms = _HEAD.unpack_from(body, pos)
        pos += 6
        self.topics_start = pos
        n_topics, pos = _array_count(body, pos, flexible)
        topics: list[ProduceTopic] = []
        size = len(body)
        for _ in range(n_topics):
            key_start = pos
            key, pos = _topic_key(body, pos, version, flexible)
            key_end = pos
            n_parts, pos = _array_count(body, pos, flexible)
            parts: list[ProducePartition] = []
            for _ in range(n_parts):
                entry = pos
                (index,) = _I32.unpack_from(body, pos)
                pos += 4
                if flexible:
                    n, pos = _uvarint(body, pos)
                    n -= 1
                else:
                    (n,) = _I32.unpack_from(body, pos)
                    pos += 4
                if n < 0:
                    if n < -1:
                        raise DecodeError(f"records length {n}")
                    rs = re = -1
                else:
                    rs, re = pos, pos + n
                    if re > size:
                        raise DecodeError("records run past the frame")
                    pos = re
                if flexible:
                    pos, _ = _skip_tags(body, pos)
                parts.append(ProducePartition(key, index, entry, pos, rs, re))
            tags_start = pos
            if flexible:
                pos, _ = _skip_tags(body, pos)
            topics.append(ProduceTopic(key, key_start, key_end, parts, tags_start, pos))
        self.tail_start = pos
        if flexible:
            pos, _ = _skip_tags(body, pos)
        if pos != size:
            raise DecodeError(f"{size - pos} bytes after the end of a Produce request")
        self.topics = topics

    def partitions(self) -> Iterator[ProducePartition]:
        for topic in self.topics:
            yield from topic.partitions

    def records(self, part: ProducePartition) -> memoryview:
        """The partition's record bytes, without a copy (empty when null)."""
        if part.records_start < 0:
            return memoryview(b"")
        return memoryview(self.body)[part.records_start : part.records_end]

    def rebuild(
        self,
        keep: Iterable[ProducePartition],
        *,
        correlation_id: int | None = None,
        records: Mapping[ProducePartition, bytes] | None = None,
    ) -> bytes:
        """This request with only the partitions in `keep` (in request order), from byte ranges.

        `correlation_id` replaces the client's, for requests the proxy sends on its own behalf.
        A kept partition in `records` carries those record bytes instead of its own (stamped or
        rebuilt batches): its entry is re-encoded (index, records length, records) with its own
        tagged fields copied; every other entry is its original bytes.
        """
        body = self.body
        flexible = self.version >= FIRST_FLEXIBLE
        kept = set(keep)
        swap = records or {}
        view = memoryview(body)  # entries joined from slices of the body: one copy
        chunks: list[bytes | memoryview] = []
        n_topics = 0
        for topic in self.topics:
            parts = [p for p in topic.partitions if p in kept]
            if not parts:
                continue
            n_topics += 1
            chunks.append(body[topic.key_start : topic.key_end])
            chunks.append(_encode_count(len(parts), flexible))
            for p in parts:
                new = swap.get(p)
                if new is None:
                    chunks.append(view[p.start : p.end])
                else:
                    chunks.extend(_partition_entry(body, p, new, flexible))
            chunks.append(body[topic.tags_start : topic.tags_end])
        head = body[: self.topics_start]
        if correlation_id is not None:
            head = head[:4] + _I32.pack(correlation_id) + head[8:]
        return b"".join([head, _encode_count(n_topics, flexible), *chunks, body[self.tail_start :]])

    def with_records(self, records: Mapping[ProducePartition, bytes]) -> bytes:
        """This whole request with the record bytes of the partitions in `records` replaced.

        Partitions not in this request are ignored, as by `rebuild`. When every replacement is
        as long as the records it replaces (a stamped batch), no length field changes: the body
        is joined once from memoryview slices around the new records. Measured (timeit, v8/v9):
        1 x 16 KB partition 0.95 us against 2.4-3.1 us for the general rebuild, 16 x 16 KB
        12 us against 18-23 us; patching a bytearray copy of the body in place was slower
        (2.2 us, 29 us: the body is copied twice).
        """
        view = memoryview(self.body)
        chunks: list[bytes | memoryview] = []
        pos = 0
        for topic in self.topics:  # request order: ascending records_start
            for p in topic.partitions:
                new = records.get(p)
                if new is None:
                    continue
                if p.records_start < 0 or len(new) != p.records_end - p.records_start:
                    return self.rebuild(self.partitions(), records=records)
                chunks.append(view[pos : p.records_start])
                chunks.append(new)
                pos = p.records_end
        chunks.append(view[pos:])
        return b"".join(chunks)


def _partition_entry(
    body: bytes, part: ProducePartition, records: bytes, flexible: bool
) -> tuple[bytes, ...]:
    """A request partition entry carrying `records`, with the original's tagged fields."""
    if part.records_start >= 0:
        tags_start = part.records_end
    else:  # null records: index int32, then -1 as int32 or compact 0
        tags_start = part.start + 4 + (1 if flexible else 4)
    size = _encode_uvarint(len(records) + 1) if flexible else _I32.pack(len(records))
    return (body[part.start : part.start + 4], size, records, body[tags_start : part.end])


def _encode_uvarint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_count(n: int, flexible: bool) -> bytes:
    return _encode_uvarint(n + 1) if flexible else _I32.pack(n)


class ProduceResponseView(_View):
    """A parsed Produce response over its original bytes."""

    __slots__ = ("correlation_id", "node_endpoints", "tail_start", "throttle_time_ms", "topics")
    _KIND = "response"

    def _parse(self, body: bytes, version: int) -> None:
        flexible = version >= FIRST_FLEXIBLE
        (self.correlation_id,) = _I32.unpack_from(body, 0)
        pos = 4
        if flexible:
            pos, _ = _skip_tags(body, pos)
        n_topics, pos = _array_count(body, pos, flexible)
        topics: list[ResponseTopic] = []
        for _ in range(n_topics):
            key, pos = _topic_key(body, pos, version, flexible)
            n_parts, pos = _array_count(body, pos, flexible)
            parts: list[PartitionResult] = []
            for _ in range(n_parts):
                entry = pos
                index, error_code, base_offset = _PART_RESULT.unpack_from(body, pos)
                (log_append_time,) = _I64.unpack_from(body, pos + 14)
                pos += 22
                log_start = -1
                if version >= 5:
                    (log_start,) = _I64.unpack_from(body, pos)
                    pos += 8
                if version >= 8:
                    n_errors, pos = _array_count(body, pos, flexible)
                    for _ in range(n_errors):
                        pos += 4  # batchIndex
                        _, _, pos = _nullable_string_end(body, pos, flexible)
                        if flexible:
                            pos, _ = _skip_tags(body, pos)
                    _, _, pos = _nullable_string_end(body, pos, flexible)
                if flexible:
                    pos, _ = _skip_tags(body, pos)
                parts.append(
                    PartitionResult(
                        key, index, error_code, base_offset, log_append_time, log_start, entry, pos
                    )
                )
            tags_start = pos
            if flexible:
                pos, _ = _skip_tags(body, pos)
            topics.append(ResponseTopic(key, parts, tags_start, pos))
        (self.throttle_time_ms,) = _I32.unpack_from(body, pos)
        pos += 4
        self.tail_start = pos
        self.node_endpoints = False
        if flexible:
            pos, tag0 = _skip_tags(body, pos)
            self.node_endpoints = tag0 and version >= 10
        if pos != len(body):
            raise DecodeError(f"{len(body) - pos} bytes after the end of a Produce response")
        self.topics = topics

    def partitions(self) -> Iterator[PartitionResult]:
        for topic in self.topics:
            yield from topic.partitions

    def entry(self, part: PartitionResult) -> bytes:
        """The partition's encoded entry, to be passed on unchanged."""
        return self.body[part.start : part.end]

    def topic_tags(self, key: TopicKey) -> bytes | None:
        for topic in self.topics:
            if topic.key == key:
                return self.body[topic.tags_start : topic.tags_end]
        return None

    def tail(self) -> bytes:
        """The response's own tagged fields (NodeEndpoints, v10+), empty before v9."""
        return self.body[self.tail_start :]


def encode_partition_answer(
    version: int,
    index: int,
    error_code: int,
    base_offset: int = -1,
    log_append_time_ms: int = -1,
    log_start_offset: int = -1,
    error_message: str | None = None,
) -> bytes:
    """A partition entry of a Produce response of `version`, as a broker encodes it."""
    flexible = version >= FIRST_FLEXIBLE
    out = [_PART_RESULT.pack(index, error_code, base_offset), _I64.pack(log_append_time_ms)]
    if version >= 5:
        out.append(_I64.pack(log_start_offset))
    if version >= 8:
        out.append(_encode_count(0, flexible))  # recordErrors
        if error_message is None:
            out.append(b"\x00" if flexible else _I16.pack(-1))
        else:
            raw = error_message.encode("utf-8")
            out.append(_encode_uvarint(len(raw) + 1) if flexible else _I16.pack(len(raw)))
            out.append(raw)
    if flexible:
        out.append(b"\x00")  # no tagged fields
    return b"".join(out)


class ResponseTopicEntries(NamedTuple):
    """One topic of a response being assembled: its encoded key and partition entries."""

    key_raw: bytes
    entries: list[bytes]
    tags_raw: bytes


def encode_response(
    version: int,
    correlation_id: int,
    topics: list[ResponseTopicEntries],
    throttle_time_ms: int,
    tail: bytes = b"",
) -> bytes:
    """A Produce response body (header included) from already encoded pieces.

    `tail` is the response's tagged-field section (v9+), taken from the broker's response when
    there is one, so NodeEndpoints pass through; an empty section otherwise.
    """
    flexible = version >= FIRST_FLEXIBLE
    out = [_I32.pack(correlation_id)]
    if flexible:
        out.append(b"\x00")  # response header v1: no tagged fields
    out.append(_encode_count(len(topics), flexible))
    for topic in topics:
        out.append(topic.key_raw)
        out.append(_encode_count(len(topic.entries), flexible))
        out.extend(topic.entries)
        out.append(topic.tags_raw if flexible else b"")
    out.append(_I32.pack(throttle_time_ms))
    if flexible:
        out.append(tail or b"\x00")
    return b"".join(out)
