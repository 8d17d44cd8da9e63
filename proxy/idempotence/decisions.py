"""Inputs and results of the idempotence engine, and the sequence arithmetic they rely on.

Everything here is plain data: the caller reads a `BatchIdentity` from the v2 batch header,
asks the engine for a `Decision`, and later reports the broker's answer as an `Outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from proxy.wire import error_codes as E

TopicPartition = tuple[str, int]
"""Topic name and partition index (Produce v13 topic ids are mapped to names first)."""

Principal = str | None
"""Who a connection is authenticated as (proxy.routing.session.Session.principal); None: nobody
(no authentication)."""

#: A principal the proxy cannot name (an unreadable SASL mechanism, an exchange not finished or
#: failed, producer state written under several principals): it matches no principal, itself
#: included.
UNKNOWN_PRINCIPAL = "\x00unknown"


def same_principal(retrying: Principal, acknowledged: Principal) -> bool:
    """Whether the proxy may answer `retrying`'s request from what the broker told
    `acknowledged` (issue 11): the broker authorises each request by its connection's
    principal, so an answer given to anyone else might be one the broker would refuse."""
    return retrying == acknowledged and retrying != UNKNOWN_PRINCIPAL


# RecordBatch.NO_TIMESTAMP; also the Produce response's logAppendTime on CreateTime topics.
NO_TIMESTAMP = -1

# ProducerStateEntry.NUM_BATCHES_TO_RETAIN: the broker remembers this many batches per producer.
BROKER_BATCHES_RETAINED = 5

# Produce errors the broker raises before anything reaches the log, so the batch is certainly not
# written. Every other error may come after the local append and is treated like an unknown
# outcome: DelayedProduce answers REQUEST_TIMED_OUT (7) and Partition.checkEnoughReplicasReachOffset
# NOT_ENOUGH_REPLICAS_AFTER_APPEND (20) or NOT_LEADER_OR_FOLLOWER (6) for appended batches, and
# UNKNOWN_TOPIC_OR_PARTITION (3), KAFKA_STORAGE_ERROR (56) and UNKNOWN_SERVER_ERROR (-1) can too.
NOT_APPENDED_ERRORS: frozenset[int] = frozenset(
    {
        E.CORRUPT_MESSAGE,  # UnifiedLog.analyzeAndValidateRecords (CRC)
        E.MESSAGE_TOO_LARGE,  # analyzeAndValidateRecords / re-compression size check
        E.INVALID_TOPIC_EXCEPTION,  # ReplicaManager.appendToLocalLog (internal topic)
        E.RECORD_LIST_TOO_LARGE,  # UnifiedLog.append (segment size)
        E.NOT_ENOUGH_REPLICAS,  # Partition.appendRecordsToLeader, before the append
        E.INVALID_REQUIRED_ACKS,  # ReplicaManager.appendRecords
        E.TOPIC_AUTHORIZATION_FAILED,  # KafkaApis, before the append
        E.INVALID_TIMESTAMP,  # LogValidator
        E.OUT_OF_ORDER_SEQUENCE_NUMBER,  # ProducerAppendInfo.checkSequence
        E.INVALID_PRODUCER_EPOCH,  # ProducerAppendInfo.checkProducerEpoch
        E.INVALID_TXN_STATE,  # UnifiedLog.analyzeAndValidateProducerState (verification)
        E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,  # KafkaApis
        E.INVALID_RECORD,  # LogValidator
    }
)


class BatchFields(Protocol):
    """What the engine reads of a batch: satisfied by `BatchIdentity` and the wire's
    `BatchHeader`, so the produce path hands the header over without a copy."""

    @property
    def producer_id(self) -> int: ...
    @property
    def producer_epoch(self) -> int: ...
    @property
    def base_sequence(self) -> int: ...
    @property
    def last_sequence(self) -> int: ...
    @property
    def max_timestamp(self) -> int: ...
    @property
    def is_transactional(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class BatchIdentity:
    """The idempotence fields of one v2 record batch, read from its header."""

    producer_id: int
    producer_epoch: int
    base_sequence: int
    last_sequence: int
    record_count: int
    max_timestamp: int
    is_transactional: bool


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


Decision = Forward | Duplicate | AwaitInflight | Reject


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
