"""Shared builders for the idempotence engine tests."""

from __future__ import annotations

from proxy.idempotence import BatchIdentity, Forward, IdempotenceEngine, Success, last_sequence

TP = ("orders", 0)
OTHER_TP = ("orders", 1)
PID = 4000
NOW = 1_700_000_000_000


def batch(
    base: int,
    count: int = 1,
    *,
    epoch: int = 0,
    pid: int = PID,
    max_timestamp: int = NOW,
    transactional: bool = False,
) -> BatchIdentity:
    return BatchIdentity(
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=base,
        last_sequence=last_sequence(base, count - 1),
        record_count=count,
        max_timestamp=max_timestamp,
        is_transactional=transactional,
    )


def write(
    engine: IdempotenceEngine,
    b: BatchIdentity,
    base_offset: int,
    *,
    tp: tuple[str, int] = TP,
    now: int = NOW,
    log_append_time: int = -1,
    log_start: int = 0,
) -> int:
    """Admit a batch the engine must forward, acknowledge it at `base_offset`; return the ticket."""
    decision = engine.admit(tp, b, now)
    assert isinstance(decision, Forward), decision
    engine.complete(decision.ticket, Success(base_offset, log_append_time, log_start), now)
    return decision.ticket


def write_chain(
    engine: IdempotenceEngine,
    count: int,
    *,
    first_seq: int = 0,
    first_offset: int = 100,
    epoch: int = 0,
    per_batch: int = 2,
    tp: tuple[str, int] = TP,
    now: int = NOW,
) -> list[tuple[BatchIdentity, int]]:
    """Write `count` consecutive batches; return (batch, base offset) pairs."""
    out = []
    seq, offset = first_seq, first_offset
    for _ in range(count):
        b = batch(seq, per_batch, epoch=epoch)
        write(engine, b, offset, tp=tp, now=now)
        out.append((b, offset))
        seq = last_sequence(seq, per_batch - 1) + 1
        if seq > 2**31 - 1:
            seq = 0
        offset += per_batch
    return out
