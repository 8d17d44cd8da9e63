"""Stamping, fingerprinting and rebuilding v2 batches, checked against kafka-python's reader."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import codec
from kafka.protocol.producer import ProduceRequest
from kafka.record import MemoryRecords
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.util import calc_crc32c, encode_varint

from proxy.errors import DecodeError
from proxy.wire.batch import passes_broker_checks, single_batch_header
from proxy.wire.produce import ProducePartition, ProduceRequestView
from proxy.wire.records import RecordKey, rebuild, record_keys, stamp
from tests.routing._support import encode_request, produce_request_with, topic_id

NONE, GZIP, SNAPPY, LZ4, ZSTD = range(5)
CODECS = [NONE, GZIP, SNAPPY, LZ4, ZSTD]
CODEC_IDS = ["none", "gzip", "snappy", "lz4", "zstd"]
_ENCODE = {
    GZIP: codec.gzip_encode,
    SNAPPY: codec.snappy_encode,
    LZ4: codec.lz4_encode,
    ZSTD: codec.zstd_encode,
}
T0 = 1_700_000_000_000

Headers = list[tuple[str, bytes | None]]
#: key, value, headers, absolute timestamp
Record = tuple[bytes | None, bytes | None, Headers, int]


def test_codec_libraries_are_installed() -> None:
    assert codec.has_snappy()
    assert codec.has_lz4()
    assert codec.has_zstd()


def build(
    records: Sequence[Record],
    compression: int = NONE,
    *,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """A batch of `records` by kafka-python, really compressed with `compression`.

    The builder sends records uncompressed when compressing does not shrink them; then the
    payload is compressed here with the same kafka.codec function and the header patched.
    """
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=False,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        batch_size=1 << 24,
    )
    for i, (key, value, headers, timestamp) in enumerate(records):
        builder.append(i, timestamp=timestamp, key=key, value=value, headers=headers)
    raw = bytearray(builder.build())
    if DefaultRecordBatch(bytes(raw)).compression_type != compression:
        raw[61:] = _ENCODE[compression](bytes(raw[61:]))
        struct.pack_into(">i", raw, 8, len(raw) - 12)
        struct.pack_into(">h", raw, 21, compression)
        struct.pack_into(">I", raw, 17, calc_crc32c(bytes(raw[21:])))
    return bytes(raw)


def read(raw: bytes) -> tuple[DefaultRecordBatch, list[Record]]:
    """The batch as kafka-python reads it (CRC checked first), and its records."""
    memory = MemoryRecords(raw)
    batch = memory.next_batch()
    assert batch is not None
    assert memory.next_batch() is None
    assert batch.validate_crc()
    records = [(r.key, r.value, list(r.headers), r.timestamp) for r in batch]
    return batch, records


def sample(n: int = 5, value: bytes = b"value" * 40) -> list[Record]:
    return [
        (
            None if i == 0 else b"k%d" % i,
            None if i == 1 else value + b"%d" % i,
            [("trace", b"t%d" % i), ("empty", None)] if i % 2 else [],
            T0 + 10 * i,
        )
        for i in range(n)
    ]


# -- stamp ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
def test_stamped_batch_reads_back_with_the_proxy_ids_a_valid_crc_and_the_same_records(
    compression: int,
) -> None:
    original = build(sample(), compression)
    stamped = stamp(original, 123_456_789_012, 7, 2**31 - 3)
    assert len(stamped) == len(original)
    assert isinstance(stamped, bytes)
    batch, records = read(stamped)
    assert batch.compression_type == compression
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (
        123_456_789_012,
        7,
        2**31 - 3,
    )
    assert batch.last_sequence == 1  # 5 records wrap past Int32 max
    assert records == read(original)[1] == sample()
    assert passes_broker_checks(stamped)
    assert stamped[:17] == original[:17]  # base offset, length, leader epoch, magic untouched
    assert stamped[21:43] == original[21:43]
    assert stamped[57:] == original[57:]


def test_stamp_takes_a_bytearray_or_a_memoryview_and_leaves_it_alone() -> None:
    original = build(sample(2))
    for buffer in (bytearray(original), memoryview(original), memoryview(b"xx" + original)[2:]):
        assert stamp(buffer, 5, 0, 0) == stamp(original, 5, 0, 0)
    assert bytes(buffer) == original
    header = single_batch_header(stamp(original, 5, 1, 9))
    assert header is not None
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (5, 1, 9)


header_keys = st.text(max_size=6)
nullable_bytes = st.none() | st.binary(max_size=40)
records_strategy = st.lists(
    st.tuples(
        nullable_bytes,
        nullable_bytes,
        st.lists(st.tuples(header_keys, nullable_bytes), max_size=3),
        st.integers(0, 2**42),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    records=records_strategy,
    compression=st.sampled_from(CODECS),
    producer_id=st.integers(0, 2**63 - 1),
    epoch=st.integers(0, 2**15 - 1),
    sequence=st.integers(0, 2**31 - 1),
)
def test_stamping_random_records_under_any_codec_keeps_them_readable(
    records: list[Record], compression: int, producer_id: int, epoch: int, sequence: int
) -> None:
    stamped = stamp(build(records, compression), producer_id, epoch, sequence)
    batch, got = read(stamped)
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (
        producer_id,
        epoch,
        sequence,
    )
    assert got == records
    assert passes_broker_checks(stamped)
    assert record_keys(stamped) == record_keys(build(records, compression))


# -- record_keys ---------------------------------------------------------------------------


def expected_digest(key: bytes | None, value: bytes | None, headers: Headers) -> bytes:
    """The documented definition, encoded independently: keyLength to the end of the record."""
    out = bytearray()

    def nullable(data: bytes | None) -> None:
        if data is None:
            encode_varint(-1, out.append)
        else:
            encode_varint(len(data), out.append)
            out.extend(data)

    nullable(key)
    nullable(value)
    encode_varint(len(headers), out.append)
    for name, header_value in headers:
        nullable(name.encode("utf-8"))
        nullable(header_value)
    return hashlib.blake2b(bytes(out), digest_size=16).digest()


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
def test_record_keys_are_the_documented_digest_and_the_absolute_timestamp(
    compression: int,
) -> None:
    records = sample()
    keys = record_keys(build(records, compression))
    assert keys == [
        RecordKey(expected_digest(k, v, h), timestamp) for k, v, h, timestamp in records
    ]
    assert all(len(key.digest) == 16 for key in keys)


def test_compressed_and_uncompressed_batches_of_the_same_records_have_the_same_keys() -> None:
    records = sample(20)
    keys = {compression: record_keys(build(records, compression)) for compression in CODECS}
    assert all(value == keys[NONE] for value in keys.values())
    assert len({key.digest for key in keys[NONE]}) == 20


def test_record_keys_read_a_memoryview_inside_a_larger_buffer() -> None:
    raw = build(sample(3), GZIP)
    assert record_keys(memoryview(b"abc" + raw + b"def")[3:-3]) == record_keys(raw)
    assert record_keys(bytearray(raw)) == record_keys(raw)


def test_stamping_does_not_change_record_keys() -> None:
    raw = build(sample(4), LZ4)
    assert record_keys(stamp(raw, 9, 9, 9)) == record_keys(raw)


@settings(max_examples=150, deadline=None)
@given(
    records=records_strategy,
    codecs=st.tuples(st.sampled_from(CODECS), st.sampled_from(CODECS)),
    shift=st.integers(-(2**30), 2**30),
    data=st.data(),
)
def test_digests_depend_on_key_value_headers_not_on_timestamp_codec_or_position(
    records: list[Record], codecs: tuple[int, int], shift: int, data: st.DataObject
) -> None:
    moved = data.draw(st.permutations(records))
    retimed = [(k, v, h, t + shift if t + shift >= 0 else t) for k, v, h, t in moved]
    first = record_keys(build(records, codecs[0]))
    second = record_keys(build(retimed, codecs[1]))
    assert [key.timestamp for key in first] == [t for *_, t in records]
    assert [key.timestamp for key in second] == [t for *_, t in retimed]
    by_content = {
        (k, v, tuple(h)): key.digest for (k, v, h, _), key in zip(records, first, strict=True)
    }
    for (k, v, h, _), key in zip(retimed, second, strict=True):
        assert key.digest == by_content[(k, v, tuple(h))]


@settings(max_examples=300, deadline=None)
@given(
    a=st.tuples(nullable_bytes, nullable_bytes, st.lists(st.tuples(header_keys, nullable_bytes))),
    b=st.tuples(nullable_bytes, nullable_bytes, st.lists(st.tuples(header_keys, nullable_bytes))),
)
def test_digests_differ_when_key_value_or_headers_differ(
    a: tuple[bytes | None, bytes | None, Headers], b: tuple[bytes | None, bytes | None, Headers]
) -> None:
    keys = record_keys(build([(*a, T0), (*b, T0)]))
    assert (keys[0].digest == keys[1].digest) == (a == b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((None, b"v", []), (b"", b"v", [])),  # null key is not an empty key
        ((b"k", None, []), (b"k", b"", [])),  # nor a null value an empty one
        ((b"k", b"v", [("h", None)]), (b"k", b"v", [("h", b"")])),
        ((b"k", b"v", [("a", b"1"), ("b", b"2")]), (b"k", b"v", [("b", b"2"), ("a", b"1")])),
        ((b"k", b"v", []), (b"k", b"v", [("", None)])),
        ((b"kv", b"", []), (b"k", b"v", [])),  # a byte moved across the key/value boundary
        ((b"k", b"v", [("ab", b"")]), (b"k", b"v", [("a", b"b")])),
        ((b"k", b"v", [("h", b"\x00")]), (b"k", b"v\x00", [("h", b"")])),
    ],
)
def test_near_identical_records_have_different_digests(
    a: tuple[bytes | None, bytes | None, Headers], b: tuple[bytes | None, bytes | None, Headers]
) -> None:
    first, second = record_keys(build([(*a, T0), (*b, T0)]))
    assert first.digest != second.digest
    assert first.timestamp == second.timestamp == T0


def test_an_empty_batch_has_no_record_keys() -> None:
    raw = bytearray(build(sample(1)))
    del raw[61:]
    struct.pack_into(">iibIhiqqqhii", raw, 8, 49, 0, 2, 0, 0, -1, T0, T0, -1, -1, -1, 0)
    assert record_keys(bytes(raw)) == []


# -- corrupt input: DecodeError only -------------------------------------------------------


def _patched(raw: bytes, offset: int, fmt: str, *values: Any, crc: bool = True) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, *values)
    if crc:
        struct.pack_into(">I", out, 17, calc_crc32c(bytes(out[21:])))
    return bytes(out)


def _record_body(payload: bytes, length: int | None = None) -> bytes:
    """A batch of one record whose bytes after the length varint are `payload`."""
    raw = bytearray(build([(b"k", b"v", [], T0)]))
    del raw[61:]
    encode_varint(len(payload) if length is None else length, raw.append)
    raw.extend(payload)
    struct.pack_into(">i", raw, 8, len(raw) - 12)
    return bytes(raw)


PLAIN = build(sample(3))
CORRUPT = {
    "empty": b"",
    "header only": PLAIN[:61],
    "truncated": PLAIN[:-1],
    "truncated with its length fixed": _patched(PLAIN[:-1], 8, ">i", len(PLAIN) - 13),
    "trailing byte": PLAIN + b"\x00",
    "two batches": PLAIN + PLAIN,
    "magic 1": _patched(PLAIN, 16, ">b", 1),
    "control batch": _patched(PLAIN, 21, ">h", 0x20),
    "codec 5": _patched(PLAIN, 21, ">h", 5),
    "codec 7": _patched(PLAIN, 21, ">h", 7),
    "one record more than counted": _patched(PLAIN, 57, ">i", 2),
    "one record less than counted": _patched(PLAIN, 57, ">i", 4),
    "negative record count": _patched(PLAIN, 57, ">i", -1),
    "huge record count": _patched(PLAIN, 57, ">i", 2**31 - 1),
    "negative record length": _record_body(b"")[:61] + b"\x01",
    "record longer than the batch": _record_body(bytes(7), 1000),
    "ten-byte varint": _record_body(b"\x00" + b"\xff" * 11 + b"\x01"),
    "six-byte key length": _record_body(b"\x00\x00\x00" + b"\xff" * 6 + b"\x01"),
    "negative header count": _record_body(b"\x00\x00\x00\x01\x01\x01"),
    "negative header key length": _record_body(b"\x00\x00\x00\x01\x01\x02\x01\x01"),
    "key past the record": _record_body(b"\x00\x00\x00\x10\x01\x00"),
    "record shorter than its fields": _record_body(b"\x00\x00\x00\x04ab\x04cd\x00", 7),
    "record longer than its fields": _record_body(b"\x00\x00\x00\x04ab\x04cd\x00\x00\x00", 11),
    "gzip garbage": _patched(PLAIN, 21, ">h", GZIP),
    "snappy garbage": _patched(PLAIN, 21, ">h", SNAPPY),
    "lz4 garbage": _patched(PLAIN, 21, ">h", LZ4),
    "zstd garbage": _patched(PLAIN, 21, ">h", ZSTD),
}
for _c in (GZIP, SNAPPY, LZ4, ZSTD):
    _compressed = build(sample(3), _c)
    CORRUPT[f"{CODEC_IDS[_c]} truncated"] = _patched(
        _compressed[:-3], 8, ">i", len(_compressed) - 15
    )


@pytest.mark.parametrize("raw", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_batches_are_decode_errors(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        record_keys(raw)
    with pytest.raises(DecodeError):
        rebuild(raw, [0], 1, 0, 0)


def test_a_header_key_that_is_not_utf8_cannot_be_rebuilt() -> None:
    raw = _record_body(b"\x00\x00\x00\x02k\x02v\x02\x02\xff\x00")
    (key,) = record_keys(raw)  # the digest is over bytes: no decoding needed
    assert key.timestamp == T0
    with pytest.raises(DecodeError, match="UTF-8"):
        rebuild(raw, [0], 1, 0, 0)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_only_raise_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        record_keys(data)


@settings(max_examples=500, deadline=None)
@given(
    compression=st.sampled_from(CODECS),
    tail=st.binary(max_size=120),
    count=st.integers(-2, 10),
)
def test_random_records_after_a_valid_header_only_raise_decode_errors(
    compression: int, tail: bytes, count: int
) -> None:
    raw = bytearray(PLAIN[:61]) + tail
    struct.pack_into(">i", raw, 8, len(raw) - 12)
    struct.pack_into(">h", raw, 21, compression)
    struct.pack_into(">i", raw, 57, count)
    try:
        keys = record_keys(bytes(raw))
    except DecodeError:
        return  # anything else fails the test
    assert len(keys) == count


@settings(max_examples=500, deadline=None)
@given(
    compression=st.sampled_from(CODECS),
    flips=st.lists(st.tuples(st.integers(61, 10_000), st.integers(1, 255)), min_size=1),
)
def test_flipped_bytes_in_records_only_raise_decode_errors(
    compression: int, flips: list[tuple[int, int]]
) -> None:
    raw = bytearray(build(sample(4), compression))
    for at, mask in flips:
        raw[61 + at % (len(raw) - 61)] ^= mask
    try:
        keys = record_keys(bytes(raw))
    except DecodeError:
        return
    assert len(keys) == 4


# -- rebuild -------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
def test_rebuilt_batch_holds_the_kept_records_with_their_codec_timestamps_and_headers(
    compression: int,
) -> None:
    records = sample(6)
    original = build(records, compression)
    rebuilt = rebuild(original, [1, 3, 4], 77, 2, 500)
    batch, got = read(rebuilt)
    assert got == [records[1], records[3], records[4]]
    assert [r.offset for r in DefaultRecordBatch(rebuilt)] == [0, 1, 2]
    assert batch.compression_type == compression
    assert batch.timestamp_type == 0
    assert not batch.is_transactional
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (77, 2, 500)
    assert batch.last_offset_delta == 2
    assert batch.max_timestamp == records[4][3]
    assert passes_broker_checks(rebuilt)
    keys = record_keys(original)
    assert record_keys(rebuilt) == [keys[1], keys[3], keys[4]]


@pytest.mark.parametrize("compression", [GZIP, SNAPPY, LZ4, ZSTD], ids=CODEC_IDS[1:])
def test_rebuilt_batch_keeps_its_codec_even_when_compression_does_not_pay(
    compression: int,
) -> None:
    records: list[Record] = [(None, bytes(range(7)), [], T0)]
    rebuilt = rebuild(build(records, compression), [0], 1, 0, 0)
    batch, got = read(rebuilt)
    assert batch.compression_type == compression
    assert got == records


def test_rebuilt_batch_keeps_the_log_append_time_flag() -> None:
    raw = _patched(build(sample(3), GZIP), 21, ">h", GZIP | 0x08)
    batch, _ = read(rebuild(raw, [2], 1, 0, 0))
    assert batch.timestamp_type == 1
    assert batch.compression_type == GZIP


def test_rebuild_keeps_every_record_in_the_given_order() -> None:
    records = sample(4)
    _, got = read(rebuild(build(records), [0, 1, 2, 3], 1, 0, 0))
    assert got == records


def test_rebuild_of_no_record_or_a_missing_one_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        rebuild(PLAIN, [], 1, 0, 0)
    with pytest.raises(ValueError, match="outside"):
        rebuild(PLAIN, [0, 3], 1, 0, 0)
    with pytest.raises(ValueError, match="outside"):
        rebuild(PLAIN, [-1], 1, 0, 0)


@settings(max_examples=100, deadline=None)
@given(records=records_strategy, compression=st.sampled_from(CODECS), data=st.data())
def test_rebuilding_any_subset_keeps_exactly_those_records_and_keys(
    records: list[Record], compression: int, data: st.DataObject
) -> None:
    keep = sorted(
        data.draw(st.sets(st.integers(0, len(records) - 1), min_size=1, max_size=len(records)))
    )
    original = build(records, compression)
    rebuilt = rebuild(original, keep, 3, 1, 40)
    batch, got = read(rebuilt)
    assert got == [records[i] for i in keep]
    assert batch.compression_type == compression
    assert batch.base_sequence == 40
    keys = record_keys(original)
    assert record_keys(rebuilt) == [keys[i] for i in keep]


# -- Produce requests with replaced records ------------------------------------------------

PRODUCE_VERSIONS = [3, 8, 9, 12, 13]
ORDERS_0 = build(sample(3))
ORDERS_2 = build(sample(2), GZIP)
AUDIT_1 = build(sample(1))


def _produce(version: int) -> ProduceRequestView:
    topics = [("orders", [(0, ORDERS_0), (1, None), (2, ORDERS_2)]), ("audit", [(1, AUDIT_1)])]
    body = encode_request(produce_request_with(version, topics, transactional_id=None), 41)
    return ProduceRequestView(body, version)


def _decoded(version: int, body: bytes) -> list[tuple[Any, int, bytes | None]]:
    request = ProduceRequest.decode(body, version=version, header=True)
    assert request.header.correlation_id == 41
    assert (request.acks, request.timeout_ms, request.transactional_id) == (-1, 30000, None)
    return [
        (t.topic_id if version >= 13 else t.name, p.index, p.records)
        for t in request.topic_data
        for p in t.partition_data
    ]


def _name(version: int, name: str) -> Any:
    return topic_id(name) if version >= 13 else name


def _entries(view: ProduceRequestView) -> dict[tuple[Any, int], bytes]:
    return {(p.topic, p.partition): view.body[p.start : p.end] for p in view.partitions()}


@pytest.mark.parametrize("version", PRODUCE_VERSIONS)
def test_request_with_stamped_records_carries_them_and_nothing_else_changes(
    version: int,
) -> None:
    view = _produce(version)
    orders_0, orders_1, orders_2, audit_1 = view.partitions()
    stamped = {orders_0: stamp(ORDERS_0, 9, 1, 0), audit_1: stamp(AUDIT_1, 9, 1, 3)}
    body = view.with_records(stamped)
    assert len(body) == len(view.body)
    assert _decoded(version, body) == [
        (_name(version, "orders"), 0, stamped[orders_0]),
        (_name(version, "orders"), 1, None),
        (_name(version, "orders"), 2, ORDERS_2),
        (_name(version, "audit"), 1, stamped[audit_1]),
    ]
    assert body == view.rebuild(view.partitions(), records=stamped)
    assert view.with_records({}) == view.body
    after = _entries(ProduceRequestView(body, version))
    before = _entries(view)
    for p in (orders_1, orders_2):
        assert after[(p.topic, p.partition)] == before[(p.topic, p.partition)]


@pytest.mark.parametrize("version", PRODUCE_VERSIONS)
def test_request_with_records_of_another_length_re_encodes_only_their_entries(
    version: int,
) -> None:
    view = _produce(version)
    orders_0, orders_1, orders_2, audit_1 = view.partitions()
    shorter = rebuild(ORDERS_0, [2], 9, 1, 0)
    longer = build(sample(200), ZSTD, producer_id=9, producer_epoch=1, base_sequence=0)
    assert len(longer) > 127 + len(ORDERS_2)  # a longer compact length varint from v9
    filled = build(sample(1))
    replaced = {orders_0: shorter, orders_2: longer, orders_1: filled}
    expected = [
        (_name(version, "orders"), 0, shorter),
        (_name(version, "orders"), 1, filled),
        (_name(version, "orders"), 2, longer),
        (_name(version, "audit"), 1, AUDIT_1),
    ]
    body = view.with_records(replaced)
    assert _decoded(version, body) == expected
    assert body == view.rebuild(view.partitions(), records=replaced)
    after = ProduceRequestView(body, version)
    assert _entries(after)[(audit_1.topic, 1)] == _entries(view)[(audit_1.topic, 1)]
    assert [bytes(after.records(p)) for p in after.partitions()] == [r for *_, r in expected]


@pytest.mark.parametrize("version", PRODUCE_VERSIONS)
def test_rebuild_with_records_keeps_only_the_kept_partitions(version: int) -> None:
    view = _produce(version)
    orders_0, _, orders_2, audit_1 = view.partitions()
    shorter = rebuild(ORDERS_0, [0], 9, 1, 0)
    body = view.rebuild(
        [orders_2, audit_1],
        correlation_id=41,
        records={orders_0: shorter, audit_1: stamp(AUDIT_1, 9, 1, 0)},
    )
    assert _decoded(version, body) == [
        (_name(version, "orders"), 2, ORDERS_2),
        (_name(version, "audit"), 1, stamp(AUDIT_1, 9, 1, 0)),
    ]


def test_a_partition_of_another_request_is_ignored() -> None:
    view = _produce(9)
    other = ProducePartition("elsewhere", 0, 0, 10, 2, 8)
    assert view.with_records({other: b"xyz"}) == view.body
    assert view.rebuild(view.partitions(), records={other: b"xyz"}) == view.body


@pytest.mark.parametrize("same_length", [True, False])
def test_replaced_records_keep_the_partition_entry_tagged_fields(same_length: bool) -> None:
    view = _produce(9)
    first = next(view.partitions())
    tags = b"\x01\x05\x02ab"  # one unknown tagged field: tag 5, two bytes
    body = view.body[: first.end - 1] + tags + view.body[first.end :]
    tagged = ProduceRequestView(body, 9)
    first = next(tagged.partitions())
    new = stamp(ORDERS_0, 9, 1, 0) if same_length else rebuild(ORDERS_0, [1], 9, 1, 0)
    out = tagged.with_records({first: new})
    parsed = ProduceRequestView(out, 9)
    entry = next(parsed.partitions())
    assert bytes(parsed.records(entry)) == new
    assert out[entry.records_end : entry.end] == tags
    assert _entries(parsed) | {("orders", 0): b""} == _entries(tagged) | {("orders", 0): b""}
