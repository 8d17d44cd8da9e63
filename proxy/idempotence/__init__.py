"""Pure idempotence engine: answers duplicate produce retries exactly as the broker would."""

from proxy.idempotence.decisions import (
    NOT_APPENDED_ERRORS,
    AwaitInflight,
    BatchFields,
    BatchIdentity,
    Decision,
    Duplicate,
    Failure,
    Forward,
    Outcome,
    Reject,
    Success,
    TopicPartition,
    Unknown,
)
from proxy.idempotence.engine import IdempotenceEngine
from proxy.wire.batch import in_sequence, last_sequence

__all__ = [
    "NOT_APPENDED_ERRORS",
    "AwaitInflight",
    "BatchFields",
    "BatchIdentity",
    "Decision",
    "Duplicate",
    "Failure",
    "Forward",
    "IdempotenceEngine",
    "Outcome",
    "Reject",
    "Success",
    "TopicPartition",
    "Unknown",
    "in_sequence",
    "last_sequence",
]
