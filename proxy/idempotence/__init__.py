"""Pure idempotence engine: answers duplicate produce retries exactly as the broker would."""

from proxy.idempotence.decisions import (
    INVALID_PRODUCER_EPOCH,
    NOT_APPENDED_ERRORS,
    OUT_OF_ORDER_SEQUENCE_NUMBER,
    AwaitInflight,
    BatchIdentity,
    Decision,
    Duplicate,
    Failure,
    Forward,
    NotIdempotent,
    Outcome,
    Reject,
    Success,
    TopicPartition,
    Unknown,
    in_sequence,
    last_sequence,
)
from proxy.idempotence.engine import IdempotenceEngine

__all__ = [
    "INVALID_PRODUCER_EPOCH",
    "NOT_APPENDED_ERRORS",
    "OUT_OF_ORDER_SEQUENCE_NUMBER",
    "AwaitInflight",
    "BatchIdentity",
    "Decision",
    "Duplicate",
    "Failure",
    "Forward",
    "IdempotenceEngine",
    "NotIdempotent",
    "Outcome",
    "Reject",
    "Success",
    "TopicPartition",
    "Unknown",
    "in_sequence",
    "last_sequence",
]
