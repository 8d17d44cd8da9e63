"""Pure idempotence: the engine answers idempotent producers' retries exactly as the broker
would (engine.py); the stamper makes producers without idempotence idempotent on the wire
(stamping.py)."""

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
from proxy.idempotence.stamping import Stamper
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
    "Stamper",
    "Success",
    "TopicPartition",
    "Unknown",
    "in_sequence",
    "last_sequence",
]
