"""The v2 record batch header view, checked against batches built by kafka-python."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from proxy.errors import DecodeError, ProxyError
from proxy.wire.batch import (
    HEADER_SIZE,
    INT32_MAX,
    NO_PRODUCER_ID,
    NO_SEQUENCE,
    last_sequence,
    read_batch_header,
    single_batch_header,
)

BASE_TIMESTAMP = 1_700_000_000_000


def build_batch(
    *,
    records: int = 3,
    compression: int = DefaultRecordBatch.CODEC_NONE,
    transactional: bool = False,
    producer_id: int = 4242,
    producer_epoch: int = 3,
    base_sequence: int = 17,
    value: bytes = b"value",
) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=transactional,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        batch_size=1 << 20,
    )
    for i in range(records):
        builder.append(
            i, timestamp=BASE_TIMESTAMP + 10 * i, key=b"k%d" % i, value=value, headers=[]
        )
    return bytes(builder.build())


@pytest.mark.parametrize(
    "compression",
    [DefaultRecordBatch.CODEC_NONE, DefaultRecordBatch.CODEC_GZIP],
    ids=["none", "gzip"],
)
@pytest.mark.parametrize("transactional", [False, True])
def test_every_header_field_matches_the_builder(compression: int, transactional: bool) -> None:
    raw = build_batch(
        records=5,
        compression=compression,
        transactional=transactional,
        producer_id=123_456_789_012,
        producer_epoch=7,
        base_sequence=1000,
        value=b"v" * 200,
    )
    header = read_batch_header(raw)
    assert header is not None
    reference = DefaultRecordBatch(raw)
    assert header.base_offset == 0 == reference.base_offset
    assert header.batch_length == len(raw) - 12
    assert header.magic == 2
    assert header.attributes == reference.attributes
    assert header.attributes & 0x07 == compression
    assert header.last_offset_delta == 4 == reference.last_offset_delta
    assert header.max_timestamp == BASE_TIMESTAMP + 40 == reference.max_timestamp
    assert header.producer_id == 123_456_789_012
    assert header.producer_epoch == 7
    assert header.base_sequence == 1000
    assert header.record_count == 5 == reference.records_count
    assert header.last_sequence == 1004 == reference.last_sequence
    assert header.is_transactional is transactional
    assert header.is_control is False
    assert header.has_producer_id


def test_gzip_batch_is_read_without_decompressing() -> None:
    raw = build_batch(records=50, compression=DefaultRecordBatch.CODEC_GZIP, value=b"a" * 1000)
    assert len(raw) < 50 * 1000  # compressed: the records are not what the header counts
    header = read_batch_header(raw)
    assert header is not None
    assert header.record_count == 50
    assert header.last_offset_delta == 49


def test_non_idempotent_batch_has_no_producer_id() -> None:
    raw = build_batch(producer_id=NO_PRODUCER_ID, producer_epoch=-1, base_sequence=NO_SEQUENCE)
    header = read_batch_header(raw)
    assert header is not None
    assert header.producer_id == NO_PRODUCER_ID
    assert not header.has_producer_id
    assert header.producer_epoch == -1
    assert header.base_sequence == NO_SEQUENCE
    assert header.last_sequence == NO_SEQUENCE


def test_header_read_from_a_memoryview_with_trailing_batches() -> None:
    raw = build_batch(base_sequence=5) + build_batch(base_sequence=8)
    header = read_batch_header(memoryview(raw))
    assert header is not None
    assert header.base_sequence == 5
    assert header.batch_length == len(raw) // 2 - 12


def test_nonzero_base_offset_and_leader_epoch() -> None:
    raw = bytearray(build_batch())
    struct.pack_into(">qiib", raw, 0, 2**40 + 3, len(raw) - 12, 99, 2)
    header = read_batch_header(bytes(raw))
    assert header is not None
    assert header.base_offset == 2**40 + 3


@pytest.mark.parametrize(
    ("base", "delta", "expected"),
    [
        (0, 0, 0),
        (10, 4, 14),
        (INT32_MAX, 0, INT32_MAX),
        (INT32_MAX - 4, 4, INT32_MAX),
        (INT32_MAX - 4, 5, 0),
        (INT32_MAX - 1, 4, 2),
        (INT32_MAX, 1, 0),
        (INT32_MAX, INT32_MAX, INT32_MAX - 1),
        (NO_SEQUENCE, 5, NO_SEQUENCE),
    ],
)
def test_last_sequence_wraps_after_int32_max(base: int, delta: int, expected: int) -> None:
    assert last_sequence(base, delta) == expected


def test_last_sequence_wraps_in_a_real_batch() -> None:
    raw = build_batch(records=5, base_sequence=INT32_MAX - 1)
    header = read_batch_header(raw)
    assert header is not None
    assert header.base_sequence == INT32_MAX - 1
    assert header.last_sequence == 2 == DefaultRecordBatch(raw).last_sequence


@settings(max_examples=300, deadline=None)
@given(
    base=st.integers(min_value=0, max_value=INT32_MAX),
    delta=st.integers(min_value=0, max_value=INT32_MAX),
)
def test_last_sequence_agrees_with_kafka_increment_sequence(base: int, delta: int) -> None:
    # DefaultRecordBatch.incrementSequence
    expected = delta - (INT32_MAX - base) - 1 if base > INT32_MAX - delta else base + delta
    assert last_sequence(base, delta) == expected
    assert 0 <= last_sequence(base, delta) <= INT32_MAX


def _with_attributes(raw: bytes, attributes: int) -> bytes:
    patched = bytearray(raw)
    struct.pack_into(">h", patched, 21, attributes)
    return bytes(patched)


def test_control_bit() -> None:
    header = read_batch_header(_with_attributes(build_batch(), 0x20 | 0x10))
    assert header is not None
    assert header.is_control
    assert header.is_transactional


def test_transactional_bit_alone() -> None:
    header = read_batch_header(_with_attributes(build_batch(), 0x10))
    assert header is not None
    assert header.is_transactional
    assert not header.is_control


def test_other_attribute_bits_are_neither_transactional_nor_control() -> None:
    header = read_batch_header(_with_attributes(build_batch(), 0x0F | 0x40))
    assert header is not None
    assert not header.is_transactional
    assert not header.is_control


def test_empty_record_set_has_no_single_batch() -> None:
    assert single_batch_header(b"") is None
    with pytest.raises(DecodeError):
        read_batch_header(b"")


@pytest.mark.parametrize("size", [1, 12, 60])
def test_record_set_shorter_than_a_header_raises_decode_error(size: int) -> None:
    with pytest.raises(DecodeError):
        read_batch_header(build_batch()[:size])


def test_exactly_a_header_is_enough_to_read() -> None:
    header = read_batch_header(build_batch()[:HEADER_SIZE])
    assert header is not None
    assert header.record_count == 3


@pytest.mark.parametrize("magic", [0, 1, 3, -1])
def test_wrong_magic_raises_decode_error(magic: int) -> None:
    raw = bytearray(build_batch())
    struct.pack_into(">b", raw, 16, magic)
    with pytest.raises(DecodeError, match="magic"):
        read_batch_header(bytes(raw))


def test_decode_error_carries_corrupt_message_code() -> None:
    with pytest.raises(DecodeError) as info:
        read_batch_header(b"\x00" * 10)
    assert info.value.error_code == 2


@pytest.mark.parametrize("n", [2, 5])
def test_several_batches_in_one_record_set_are_not_a_single_batch(n: int) -> None:
    raw = b"".join(build_batch(records=i + 1, base_sequence=10 * i) for i in range(n))
    assert single_batch_header(raw) is None
    assert read_batch_header(raw).record_count == 1  # the first header still reads


def test_a_truncated_or_padded_batch_is_not_a_single_batch() -> None:
    raw = build_batch()
    assert single_batch_header(raw) == read_batch_header(raw)
    assert single_batch_header(raw[:-1]) is None
    assert single_batch_header(raw + b"\x00" * 5) is None


@pytest.mark.parametrize("length", [-1, 0, HEADER_SIZE - 13])
def test_a_length_below_the_header_raises(length: int) -> None:
    raw = bytearray(build_batch())
    struct.pack_into(">i", raw, 8, length)
    with pytest.raises(DecodeError, match="too small"):
        read_batch_header(bytes(raw))
    assert single_batch_header(bytes(raw)) is None


def test_a_hostile_length_is_not_a_single_batch() -> None:
    raw = bytearray(build_batch())
    struct.pack_into(">i", raw, 8, INT32_MAX)
    assert single_batch_header(bytes(raw)) is None


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_record_sets_only_raise_proxy_errors(data: bytes) -> None:
    for reader in (read_batch_header, single_batch_header):
        try:
            reader(data)
        except ProxyError:
            pass
