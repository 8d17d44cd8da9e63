"""A read-only view of a v2 record batch header at fixed offsets.

Layout (org.apache.kafka.common.record.DefaultRecordBatch), big-endian:
  baseOffset int64 @0 | batchLength int32 @8 | partitionLeaderEpoch int32 @12 | magic int8 @16 |
  crc uint32 @17 | attributes int16 @21 | lastOffsetDelta int32 @23 | baseTimestamp int64 @27 |
  maxTimestamp int64 @35 | producerId int64 @43 | producerEpoch int16 @51 | baseSequence int32 @53 |
  recordCount int32 @57 | records @61
The CRC-32C covers attributes to the end; records are never decompressed or walked here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from proxy.errors import DecodeError

HEADER_SIZE = 61
MAGIC_V2 = 2
NO_PRODUCER_ID = -1
NO_SEQUENCE = -1
INT32_MAX = 2**31 - 1

_TRANSACTIONAL = 0x10
_CONTROL = 0x20

# baseOffset, batchLength, leaderEpoch, magic, crc, attributes, lastOffsetDelta,
# baseTimestamp, maxTimestamp, producerId, producerEpoch, baseSequence, recordCount
_HEADER = struct.Struct(">qiibIhiqqqhii")


def last_sequence(base_sequence: int, last_offset_delta: int) -> int:
    """Sequence of the batch's last record; wraps from Int32 max to 0 (DefaultRecordBatch)."""
    if base_sequence == NO_SEQUENCE:
        return NO_SEQUENCE
    if base_sequence > INT32_MAX - last_offset_delta:
        return base_sequence - INT32_MAX - 1 + last_offset_delta
    return base_sequence + last_offset_delta


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The idempotence-relevant fields of the first record batch in a partition's records."""

    base_offset: int
    batch_length: int
    magic: int
    attributes: int
    last_offset_delta: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def last_sequence(self) -> int:
        return last_sequence(self.base_sequence, self.last_offset_delta)

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & _TRANSACTIONAL)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & _CONTROL)

    @property
    def has_producer_id(self) -> bool:
        return self.producer_id != NO_PRODUCER_ID


def read_batch_header(records: bytes | memoryview) -> BatchHeader | None:
    """Read the first batch header of a partition's records; None for an empty record set.

    Raises DecodeError when the bytes cannot be a v2 batch (too short or another magic):
    Produce v3+ only carries v2 batches (ProduceRequest validation in the broker).
    """
    if len(records) == 0:
        return None
    if len(records) < HEADER_SIZE:
        raise DecodeError(f"record set of {len(records)} bytes is shorter than a batch header")
    (
        base_offset,
        batch_length,
        _leader_epoch,
        magic,
        _crc,
        attributes,
        last_offset_delta,
        _base_ts,
        max_ts,
        producer_id,
        producer_epoch,
        base_sequence,
        record_count,
    ) = _HEADER.unpack_from(records, 0)
    if magic != MAGIC_V2:
        raise DecodeError(f"record batch magic {magic}, expected {MAGIC_V2}")
    return BatchHeader(
        base_offset=base_offset,
        batch_length=batch_length,
        magic=magic,
        attributes=attributes,
        last_offset_delta=last_offset_delta,
        max_timestamp=max_ts,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        record_count=record_count,
    )


def count_batches(records: bytes | memoryview) -> int:
    """Number of batches in a record set, walking batch lengths only (never records)."""
    pos = 0
    n = 0
    end = len(records)
    while end - pos >= 12:
        (length,) = struct.unpack_from(">i", records, pos + 8)
        if length < HEADER_SIZE - 12:
            raise DecodeError(f"record batch length {length} is too small")
        pos += 12 + length
        n += 1
    if pos != end:
        raise DecodeError("record set ends inside a batch")
    return n
