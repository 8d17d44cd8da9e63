"""A reference broker for property tests: partition logs and idempotent-producer checks.

Written from the broker's rules, independently of the engine and favouring obviousness over
economy: a producer's state is recomputed from the full list of batches it wrote since the
broker last expired it (ProducerStateManager), checked in the order of UnifiedLog.append:
duplicate first (ProducerStateEntry.findDuplicateBatch over the last 5 of the current epoch),
then epoch (ProducerAppendInfo.checkProducerEpoch), then sequence (checkSequence).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.idempotence import BatchIdentity

INT32_MAX = 2**31 - 1
RETAINED = 5


@dataclass(frozen=True)
class Written:
    producer_id: int
    epoch: int
    first_seq: int
    last_seq: int
    base_offset: int
    timestamp: int  # the validated batch's max timestamp, as cached by the broker


@dataclass(frozen=True)
class Appended:
    base_offset: int
    log_append_time_ms: int
    log_start_offset: int


@dataclass(frozen=True)
class Deduplicated:
    base_offset: int
    log_append_time_ms: int
    log_start_offset: int


@dataclass(frozen=True)
class Refused:
    error_code: int


Answer = Appended | Deduplicated | Refused


@dataclass
class Partition:
    log_append_time: bool  # message.timestamp.type=LogAppendTime
    log: list[Written] = field(default_factory=list)
    next_offset: int = 0
    log_start_offset: int = 0
    # Per producer, the batches written since its state was last created.
    history: dict[int, list[Written]] = field(default_factory=dict)


def follows(last_seq: int, next_seq: int) -> bool:
    if last_seq == INT32_MAX:
        return next_seq == 0
    return next_seq == last_seq + 1


class ModelBroker:
    def __init__(self, expiry_ms: int) -> None:
        self.expiry_ms = expiry_ms
        self.partitions: dict[tuple[str, int], Partition] = {}

    def add_partition(self, tp: tuple[str, int], *, log_append_time: bool) -> None:
        self.partitions[tp] = Partition(log_append_time)

    def judge(self, tp: tuple[str, int], batch: BatchIdentity) -> Answer | None:
        """What the broker answers without writing, or None if it would write the batch."""
        part = self.partitions[tp]
        history = part.history.get(batch.producer_id, [])
        if not history:
            return None  # no state: any sequence is accepted (KIP-360)
        current_epoch = history[-1].epoch
        cached = [w for w in history if w.epoch == current_epoch][-RETAINED:]
        if batch.producer_epoch == current_epoch:
            for w in cached:
                if (w.first_seq, w.last_seq) == (batch.base_sequence, batch.last_sequence):
                    return Deduplicated(w.base_offset, w.timestamp, part.log_start_offset)
        if batch.producer_epoch < current_epoch:
            return Refused(47)
        if batch.producer_epoch > current_epoch:
            return None if batch.base_sequence == 0 else Refused(45)
        if follows(history[-1].last_seq, batch.base_sequence):
            return None
        return Refused(45)

    def produce(self, tp: tuple[str, int], batch: BatchIdentity, now_ms: int) -> Answer:
        verdict = self.judge(tp, batch)
        if verdict is not None:
            return verdict
        part = self.partitions[tp]
        timestamp = now_ms if part.log_append_time else batch.max_timestamp
        written = Written(
            batch.producer_id,
            batch.producer_epoch,
            batch.base_sequence,
            batch.last_sequence,
            part.next_offset,
            timestamp,
        )
        part.log.append(written)
        part.history.setdefault(batch.producer_id, []).append(written)
        part.next_offset += batch.record_count
        return Appended(
            written.base_offset,
            now_ms if part.log_append_time else -1,
            part.log_start_offset,
        )

    def expire(self, now_ms: int) -> None:
        """ProducerStateManager.removeExpiredProducers: idle from the last batch's timestamp."""
        for part in self.partitions.values():
            for producer_id in list(part.history):
                if now_ms - part.history[producer_id][-1].timestamp >= self.expiry_ms:
                    del part.history[producer_id]

    def advance_log_start(self, tp: tuple[str, int], by: int) -> None:
        part = self.partitions[tp]
        part.log_start_offset = min(part.next_offset, part.log_start_offset + by)

    def has_state(self, tp: tuple[str, int], producer_id: int) -> bool:
        return bool(self.partitions[tp].history.get(producer_id))
