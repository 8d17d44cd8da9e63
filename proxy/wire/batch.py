"""A read-only view of a v2 record batch header at fixed offsets, and sequence arithmetic.

Layout (org.apache.kafka.common.record.DefaultRecordBatch), big-endian:
  baseOffset int64 @0 | batchLength int32 @8 | partitionLeaderEpoch int32 @12 | magic int8 @16 |
  crc uint32 @17 | attributes int16 @21 | lastOffsetDelta int32 @23 | baseTimestamp int64 @27 |
  maxTimestamp int64 @35 | producerId int64 @43 | producerEpoch int16 @51 | baseSequence int32 @53 |
  recordCount int32 @57 | records @61
The CRC-32C covers attributes to the end; records are never decompressed or walked here.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from crc32c import crc32c

from proxy.errors import DecodeError

HEADER_SIZE = 61
#: Bytes before the batchLength field's count starts (baseOffset + batchLength).
LOG_OVERHEAD = 12
MAGIC_V2 = 2
CRC_OFFSET = 17
ATTRIBUTES_OFFSET = 21
NO_PRODUCER_ID = -1  # RecordBatch.NO_PRODUCER_ID
NO_SEQUENCE = -1  # RecordBatch.NO_SEQUENCE
INT32_MAX = 2**31 - 1

_TRANSACTIONAL = 0x10
_CONTROL = 0x20

# baseOffset, batchLength, leaderEpoch, magic, crc, attributes, lastOffsetDelta,
# baseTimestamp, maxTimestamp, producerId, producerEpoch, baseSequence, recordCount
_HEADER = struct.Struct(">qiibIhiqqqhii")


def last_sequence(base_sequence: int, last_offset_delta: int) -> int:
    """Sequence of a batch's last record, wrapping past Int32 max to 0.

    DefaultRecordBatch.lastSequence / incrementSequence.
    """
    if base_sequence == NO_SEQUENCE:
        return NO_SEQUENCE
    if base_sequence > INT32_MAX - last_offset_delta:
        return last_offset_delta - (INT32_MAX - base_sequence) - 1
    return base_sequence + last_offset_delta


def in_sequence(last_seq: int, next_seq: int) -> bool:
    """Whether a batch starting at `next_seq` directly follows one ending at `last_seq`.

    ProducerAppendInfo.inSequence: sequences wrap from Int32 max to 0.
    """
    return next_seq == last_seq + 1 or (next_seq == 0 and last_seq == INT32_MAX)


class BatchHeader(NamedTuple):
    """The fixed header of a v2 record batch, field for field (a tuple: built in one C call)."""

    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
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
        # AbstractRecordBatch.hasProducerId: any id above NO_PRODUCER_ID.
        return self.producer_id > NO_PRODUCER_ID

    @property
    def size(self) -> int:
        """Bytes the whole batch takes, header included."""
        return LOG_OVERHEAD + self.batch_length


def read_batch_header(records: bytes | bytearray | memoryview, offset: int = 0) -> BatchHeader:
    """Read the batch header at `offset` of a record set.

    Raises DecodeError when the bytes cannot hold a v2 batch header (too short, another magic,
    a length shorter than the header): Produce v3+ only carries v2 batches (ProduceRequest
    validation in the broker).
    """
    if len(records) - offset < HEADER_SIZE:
        raise DecodeError(
            f"record set of {len(records) - offset} bytes is shorter than a batch header"
        )
    header = BatchHeader._make(_HEADER.unpack_from(records, offset))
    if header.magic != MAGIC_V2:
        raise DecodeError(f"record batch magic {header.magic}, expected {MAGIC_V2}")
    if header.batch_length < HEADER_SIZE - LOG_OVERHEAD:
        raise DecodeError(f"record batch length {header.batch_length} is too small")
    return header


def single_batch_header(records: bytes | bytearray | memoryview) -> BatchHeader | None:
    """The header of a record set holding exactly one v2 batch, else None.

    Empty, old-format (magic 0/1), multi-batch or truncated record sets are the broker's to judge
    (it rejects most of them: Produce v3+ carries exactly one v2 batch per partition).
    """
    if len(records) < HEADER_SIZE:
        return None
    try:
        header = read_batch_header(records)
    except DecodeError:
        return None
    return header if header.size == len(records) else None


def passes_broker_checks(records: bytes | bytearray | memoryview) -> bool:
    """The checks LogValidator makes on a v2 batch before producer state: base offset 0, CRC-32C.

    The broker answers a corrupt retry with its own error, never as a duplicate, so the proxy
    answers a retry itself only when the batch would pass these (UnifiedLog
    .analyzeAndValidateRecords runs before the duplicate check).
    """
    view = memoryview(records)
    (base_offset,) = struct.unpack_from(">q", view, 0)
    (crc,) = struct.unpack_from(">I", view, CRC_OFFSET)
    return bool(base_offset == 0 and crc32c(view[ATTRIBUTES_OFFSET:]) == crc)
