"""Inputs and results of the idempotence engine, and the sequence arithmetic they rely on.

Everything here is plain data: the caller reads a `BatchIdentity` from the v2 batch header,
asks the engine for a `Decision`, and later reports the broker's answer as an `Outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass

TopicPartition = tuple[str, int]
"""Topic name (or `str(topic_id)` for Produce v13+) and partition index."""

INT32_MAX = 2**31 - 1
NO_PRODUCER_ID = -1  # RecordBatch.NO_PRODUCER_ID
NO_SEQUENCE = -1  # RecordBatch.NO_SEQUENCE
# RecordBatch.NO_TIMESTAMP; also the Produce response's logAppendTime on CreateTime topics.
NO_TIMESTAMP = -1

# ProducerStateEntry.NUM_BATCHES_TO_RETAIN: the broker remembers this many batches per producer.
BROKER_BATCHES_RETAINED = 5

OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47

# Produce errors the broker raises before anything reaches the log, so the batch is certainly not
# written. Every other error may come after the local append and is treated like an unknown
# outcome: DelayedProduce answers REQUEST_TIMED_OUT (7) and Partition.checkEnoughReplicasReachOffset
# NOT_ENOUGH_REPLICAS_AFTER_APPEND (20) or NOT_LEADER_OR_FOLLOWER (6) for appended batches, and
# UNKNOWN_TOPIC_OR_PARTITION (3), KAFKA_STORAGE_ERROR (56) and UNKNOWN_SERVER_ERROR (-1) can too.
NOT_APPENDED_ERRORS: frozenset[int] = frozenset(
    {
        2,  # CORRUPT_MESSAGE: UnifiedLog.analyzeAndValidateRecords (CRC)
        10,  # MESSAGE_TOO_LARGE: analyzeAndValidateRecords / re-compression size check
        17,  # INVALID_TOPIC_EXCEPTION: ReplicaManager.appendToLocalLog (internal topic)
        18,  # RECORD_LIST_TOO_LARGE: UnifiedLog.append (segment size)
        19,  # NOT_ENOUGH_REPLICAS: Partition.appendRecordsToLeader, before the append
        21,  # INVALID_REQUIRED_ACKS: ReplicaManager.appendRecords
        29,  # TOPIC_AUTHORIZATION_FAILED: KafkaApis, before the append
        32,  # INVALID_TIMESTAMP: LogValidator
        45,  # OUT_OF_ORDER_SEQUENCE_NUMBER: ProducerAppendInfo.checkSequence
        47,  # INVALID_PRODUCER_EPOCH: ProducerAppendInfo.checkProducerEpoch
        48,  # INVALID_TXN_STATE: UnifiedLog.analyzeAndValidateProducerState (verification)
        53,  # TRANSACTIONAL_ID_AUTHORIZATION_FAILED: KafkaApis
        87,  # INVALID_RECORD: LogValidator
    }
)


def last_sequence(base_sequence: int, last_offset_delta: int) -> int:
    """Sequence of a batch's last record, wrapping past Int32 max to 0.

    Same arithmetic as DefaultRecordBatch.lastSequence / incrementSequence.
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


@dataclass(frozen=True, slots=True)
class BatchIdentity:
    """The idempotence fields of one v2 record batch, read from its header."""

    producer_id: int
    producer_epoch: int
    base_sequence: int
    last_sequence: int
    record_count: int
    max_timestamp: int
    transactional: bool


# Decisions returned by IdempotenceEngine.admit.


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the batch to the broker; report its answer with `complete(ticket, ...)`."""

    ticket: int


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Answer error NONE with these values, without forwarding: the broker wrote the batch."""

    base_offset: int
    log_append_time_ms: int
    log_start_offset: int


@dataclass(frozen=True, slots=True)
class AwaitInflight:
    """An identical batch is forwarded and unanswered: answer this one when that one completes."""

    ticket: int


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer with this error without forwarding: the broker would certainly refuse the batch."""

    error_code: int


@dataclass(frozen=True, slots=True)
class NotIdempotent:
    """The batch carries no producer id; the caller's pass/reject policy applies."""


Decision = Forward | Duplicate | AwaitInflight | Reject | NotIdempotent


# Outcomes reported to IdempotenceEngine.complete.


@dataclass(frozen=True, slots=True)
class Success:
    """The broker answered error NONE for the forwarded batch (acks=all)."""

    base_offset: int
    log_append_time_ms: int
    log_start_offset: int


@dataclass(frozen=True, slots=True)
class Failure:
    """The broker answered with an error for the forwarded batch."""

    error_code: int


@dataclass(frozen=True, slots=True)
class Unknown:
    """No answer arrived (connection lost, acks=0): the batch may or may not be written."""


Outcome = Success | Failure | Unknown
