"""Decides, per produced batch, whether the proxy can answer it exactly as the broker would.

Pure and synchronous: no I/O, no clock of its own (callers pass `now_ms`, wall-clock epoch
milliseconds, because expiry is compared with record timestamps as the broker does).

The engine answers locally only when every outcome of the requests still in flight leads the
broker to the same answer; otherwise it forwards and the broker decides (and deduplicates).

Caller contract:
- every `Forward(ticket)` is eventually passed to `complete()` exactly once; a connection lost
  before the response, or acks=0, is `Unknown()`; with acks=1 report `Unknown()` too, since a
  leader-only write can be truncated away;
- `complete()` returns the answer for requests told `AwaitInflight(ticket)`; when it returns None
  those requests must be passed to `admit()` again;
- only batches with a producer id are admitted, each checked first as the broker does before its
  duplicate check (CRC-32C, base offset 0, UnifiedLog.analyzeAndValidateRecords);
- all produce traffic of a producer id goes through this engine, and its `expiry_ms` is not
  above the brokers' `producer.id.expiration.ms`.
"""

from __future__ import annotations

import itertools
import sys
from collections import OrderedDict
from dataclasses import dataclass, field

from proxy.idempotence.decisions import (
    BROKER_BATCHES_RETAINED,
    NO_TIMESTAMP,
    NOT_APPENDED_ERRORS,
    AwaitInflight,
    BatchFields,
    Decision,
    Duplicate,
    Failure,
    Forward,
    Outcome,
    Principal,
    Reject,
    Success,
    TopicPartition,
    same_principal,
)
from proxy.idempotence.state import ProducerPartitionState, SuccessEffect
from proxy.wire.batch import in_sequence
from proxy.wire.error_codes import INVALID_PRODUCER_EPOCH, OUT_OF_ORDER_SEQUENCE_NUMBER

_Key = tuple[int, str, int]  # producer id, topic, partition
_Identity = tuple[int, str, int, int, int, int]  # key + epoch, first and last sequence


@dataclass(slots=True, eq=False)
class _Pending:
    """A forwarded batch awaiting the broker's answer."""

    ticket: int
    key: _Key
    identity: _Identity
    epoch: int
    first_seq: int
    last_seq: int
    max_timestamp: int
    admitted_ms: int
    principal: Principal = None
    # Pending when its producer-partition was forgotten: its answer may predate writes the
    # engine no longer knows of, so it must not rebuild state.
    orphan: bool = field(default=False)


class IdempotenceEngine:
    """Per (producer id, partition) copy of the broker's producer state, plus in-flight batches."""

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        expiry_ms: int = 86_400_000,
        batches_to_retain: int = BROKER_BATCHES_RETAINED,
        max_pending: int = 500_000,
        answer_transactional: bool = False,
    ) -> None:
        """Bounds: `max_entries` producer-partitions, idle `expiry_ms`, `max_pending` tickets.

        `batches_to_retain` may be lowered (less memory, fewer local answers) but not raised above
        the broker's 5. `answer_transactional` lets transactional batches be answered locally,
        which is not always what the broker does (see `admit`).
        """
        if max_entries < 1 or max_pending < 1 or expiry_ms < 1:
            raise ValueError("max_entries, max_pending and expiry_ms must be positive")
        if not 1 <= batches_to_retain <= BROKER_BATCHES_RETAINED:
            raise ValueError(f"batches_to_retain must be within 1..{BROKER_BATCHES_RETAINED}")
        self._max_entries = max_entries
        self._expiry_ms = expiry_ms
        self._retain = batches_to_retain
        self._max_pending = max_pending
        self._answer_transactional = answer_transactional
        # Ordered by last update, oldest first: the front is both LRU victim and next to expire.
        self._entries: OrderedDict[_Key, ProducerPartitionState] = OrderedDict()
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._pending_by_key: dict[_Key, list[_Pending]] = {}
        self._inflight: dict[_Identity, int] = {}
        self._log_start: OrderedDict[TopicPartition, int] = OrderedDict()
        self._tickets = itertools.count(1)
        self._evictions = 0
        # At most the updated_ms of every entry (entries are created at now_ms and their
        # updated_ms only grows): while now_ms - _oldest_ms < expiry_ms nothing has expired.
        self._oldest_ms = sys.maxsize

    @property
    def entries(self) -> int:
        """Producer-partitions tracked (expired ones may linger until touched or pushed out)."""
        return len(self._entries)

    @property
    def evictions(self) -> int:
        """Producer-partitions forgotten because of `max_entries` or `expiry_ms`."""
        return self._evictions

    @property
    def pending(self) -> int:
        """Forwarded batches not yet completed."""
        return len(self._pending)

    @property
    def expiry_ms(self) -> int:
        return self._expiry_ms

    @expiry_ms.setter
    def expiry_ms(self, value: int) -> None:
        """Lowered when a broker expires producers sooner (its producer.id.expiration.ms)."""
        if value < 1:
            raise ValueError("expiry_ms must be positive")
        self._expiry_ms = value

    def admit(
        self,
        tp: TopicPartition,
        batch: BatchFields,
        now_ms: int,
        *,
        coalesce: bool = True,
        principal: Principal = None,
    ) -> Decision:
        """Decide what to do with one produced batch (it must carry a producer id), sent on a
        connection authenticated as `principal`.

        Only a batch of the principal whose batches made the producer state is answered from
        it, and only one of the principal of an identical batch in flight waits for it: the
        broker authorises every request by its own connection's principal (KafkaApis
        handleProduceRequest, before the append), so anyone else's batch goes to the broker.

        With `coalesce` False a batch identical to one in flight is forwarded too, rather than
        told to wait (the broker deduplicates it): the caller bounds how long a retry waits.

        Transactional batches are forwarded (unless `answer_transactional`): transaction markers
        written by the coordinator, which the proxy never sees, can bump the epoch and clear the
        broker's cache (ProducerAppendInfo.appendEndTxnMarker), and a batch outside an ongoing
        transaction is first verified with the coordinator (ReplicaManager transaction
        verification, UnifiedLog.analyzeAndValidateProducerState), so the broker's answer depends
        on state the proxy cannot know.
        """
        self._expire(now_ms)
        key = (batch.producer_id, tp[0], tp[1])
        last_seq = batch.last_sequence
        identity = (*key, batch.producer_epoch, batch.base_sequence, last_seq)
        ticket = self._inflight.get(identity)
        if (
            ticket is not None
            and coalesce
            and same_principal(principal, self._pending[ticket].principal)
        ):
            return AwaitInflight(ticket)
        decision = self._decide(key, tp, batch, last_seq, now_ms, principal)
        if decision is not None:
            return decision
        return self._forward(key, identity, batch, last_seq, now_ms, principal)

    def complete(self, ticket: int, outcome: Outcome, now_ms: int) -> Duplicate | None:
        """Record the broker's answer to a forwarded batch.

        Returns what the broker answers an identical batch arriving after this one (a duplicate:
        same base offset, the cached timestamp), for the requests told `AwaitInflight(ticket)`;
        None when they must be admitted again. Unknown tickets (already completed, or dropped
        past `max_pending`) return None.
        """
        p = self._pending.get(ticket)
        if p is None:
            return None
        self._expire(now_ms)
        # Forgetting the producer-partition here, this batch's timestamp included, orphans it.
        self._live_entry(p.key, now_ms)
        del self._pending[ticket]
        self._unregister(p)
        tp = (p.key[1], p.key[2])
        if isinstance(outcome, Success):
            self.observe_log_start_offset(tp, outcome.log_start_offset)
            # ProducerAppendInfo.append caches the validated batch's max timestamp, which
            # LogValidator sets to the log append time on LogAppendTime topics; UnifiedLog.append
            # answers a duplicate with that cached value as its log append time, even on
            # CreateTime topics (where the first answer carries -1).
            timestamp = outcome.log_append_time_ms
            if timestamp == NO_TIMESTAMP:
                timestamp = p.max_timestamp
            if not p.orphan:
                self._record_success(p, outcome, timestamp, now_ms)
            log_start = max(outcome.log_start_offset, self._log_start.get(tp, -1))
            return Duplicate(outcome.base_offset, timestamp, log_start)
        if isinstance(outcome, Failure) and outcome.error_code in NOT_APPENDED_ERRORS:
            return None
        self._record_unknown(p, now_ms)
        return None

    def admitted_ms(self, ticket: int) -> int | None:
        """When a pending ticket's batch was admitted (`now_ms` then), None if not pending."""
        p = self._pending.get(ticket)
        return None if p is None else p.admitted_ms

    def forget_topic(self, topic: str) -> int:
        """Drop every producer-partition of `topic` (deleted and recreated under a new topic id:
        the broker's producer state went with the old log). Returns how many were dropped."""
        keys = [key for key in self._entries if key[1] == topic]
        for key in keys:
            self._forget(key)
        for p in self._pending.values():
            if p.key[1] == topic:
                p.orphan = True
        for tp in [tp for tp in self._log_start if tp[0] == topic]:
            del self._log_start[tp]
        return len(keys)

    def observe_log_start_offset(self, tp: TopicPartition, log_start_offset: int) -> None:
        """Note a partition's log start offset (from any response), for duplicate answers."""
        known = self._log_start.get(tp)
        if known is None:
            self._log_start[tp] = log_start_offset
            if len(self._log_start) > self._max_entries:
                self._log_start.popitem(last=False)
        else:
            self._log_start[tp] = max(known, log_start_offset)
            self._log_start.move_to_end(tp)

    def _decide(
        self,
        key: _Key,
        tp: TopicPartition,
        batch: BatchFields,
        last_seq: int,
        now_ms: int,
        principal: Principal,
    ) -> Duplicate | Reject | None:
        """The broker's certain answer, or None when the batch must be forwarded."""
        if batch.is_transactional and not self._answer_transactional:
            return None
        entry = self._live_entry(key, now_ms)
        base_seq = batch.base_sequence
        # No state (KIP-360: the broker accepts any sequence from an unknown producer) or a write
        # whose outcome is unknown: only the broker knows.
        if entry is None or not entry.certain or entry.epoch is None or base_seq < 0:
            return None
        if not same_principal(principal, entry.principal):
            return None
        epoch = batch.producer_epoch
        # ProducerAppendInfo.checkProducerEpoch. Epochs only grow: pending batches cannot undo it.
        if epoch < entry.epoch:
            return Reject(INVALID_PRODUCER_EPOCH)
        # Sequence checks accept the batch if it continues the acknowledged state or any pending
        # batch of its epoch: clients pipeline up to 5 requests per partition.
        continues_pending = False
        same_epoch_pending = 0
        pending = self._pending_by_key.get(key)
        if pending:
            for p in pending:
                if p.epoch > epoch:
                    # A pending batch of a newer epoch may be written first, and then the
                    # broker answers 47.
                    return None
                if p.epoch == epoch:
                    same_epoch_pending += 1
                    if in_sequence(p.last_seq, base_seq):
                        continues_pending = True
        if epoch > entry.epoch:
            # ProducerAppendInfo.checkSequence: a new epoch must start at sequence 0 once an
            # epoch is known.
            if base_seq == 0 or continues_pending:
                return None
            return Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
        i = entry.find(base_seq, last_seq)
        if i >= 0:
            # ProducerStateEntry.findDuplicateBatch. The broker still caches this batch only if,
            # counting every pending batch as appended after it, it stays among the newest 5.
            newer = entry.size - i + same_epoch_pending
            if newer <= BROKER_BATCHES_RETAINED and entry.contiguous_from(i):
                log_start = max(entry.log_start_offset, self._log_start.get(tp, -1))
                return Duplicate(entry.base_offset(i), entry.timestamp(i), log_start)
            return None
        if continues_pending or in_sequence(entry.newest_last_sequence(), base_seq):
            return None
        # Not cached and out of sequence: the broker rejects it, provided the engine knows all
        # of the broker's cached batches (else this may be an older one it still caches).
        if entry.complete:
            return Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
        return None

    def _forward(
        self,
        key: _Key,
        identity: _Identity,
        batch: BatchFields,
        last_seq: int,
        now_ms: int,
        principal: Principal = None,
    ) -> Forward:
        if len(self._pending) >= self._max_pending:
            # The caller broke the contract; forgetting the ticket as an unknown outcome is safe.
            _, oldest = self._pending.popitem(last=False)
            self._unregister(oldest)
            self._record_unknown(oldest, now_ms)
        ticket = next(self._tickets)
        p = _Pending(
            ticket,
            key,
            identity,
            batch.producer_epoch,
            batch.base_sequence,
            last_seq,
            batch.max_timestamp,
            now_ms,
            principal,
        )
        self._pending[ticket] = p
        self._inflight[identity] = ticket
        same_key = self._pending_by_key.get(key)
        if same_key is None:
            self._pending_by_key[key] = [p]
        else:
            same_key.append(p)
        return Forward(ticket)

    def _unregister(self, p: _Pending) -> None:
        # An identity maps to its newest pending ticket (a retry forwarded past its original).
        if self._inflight.get(p.identity) == p.ticket:
            del self._inflight[p.identity]
        same_key = self._pending_by_key[p.key]
        same_key.remove(p)
        if not same_key:
            del self._pending_by_key[p.key]

    def _record_success(self, p: _Pending, outcome: Success, timestamp: int, now_ms: int) -> None:
        entry = self._entries.get(p.key) or self._create(p.key, now_ms, p.principal)
        entry.written_by(p.principal)
        effect = entry.add_success(
            p.epoch, p.first_seq, p.last_seq, outcome.base_offset, timestamp, self._retain
        )
        if effect is SuccessEffect.CONFLICT:
            # The same batch at two offsets: the log was truncated or recreated; start over.
            self._forget(p.key)
        elif effect is SuccessEffect.RECORDED:
            entry.log_start_offset = max(entry.log_start_offset, outcome.log_start_offset)
            self._touch(p.key, entry, now_ms)

    def _record_unknown(self, p: _Pending, now_ms: int) -> None:
        """Remember that `p` may have been written, at an offset the engine will not learn."""
        entry = self._entries.get(p.key) or self._create(p.key, now_ms, p.principal)
        entry.written_by(p.principal)
        if entry.add_ghost(p.epoch, p.first_seq, p.last_seq):
            self._touch(p.key, entry, now_ms)

    def _live_entry(self, key: _Key, now_ms: int) -> ProducerPartitionState | None:
        """The entry for `key`, dropped if the broker may have expired the producer by now."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        # ProducerStateManager.isProducerExpired: the broker measures idleness from the timestamp
        # of the producer's last appended batch (its max timestamp, client clock on CreateTime
        # topics), which may be older than the engine's own last update. Any pending batch may be
        # that last one.
        since = entry.newest_timestamp(entry.updated_ms)
        pending = self._pending_by_key.get(key)
        if pending:
            for p in pending:
                if p.max_timestamp < since:
                    since = p.max_timestamp
        if now_ms - since >= self._expiry_ms:
            self._forget(key, evicted=True)
            return None
        return entry

    def _create(self, key: _Key, now_ms: int, principal: Principal) -> ProducerPartitionState:
        if len(self._entries) >= self._max_entries:
            victim = next(iter(self._entries))
            self._forget(victim, evicted=True)
        entry = ProducerPartitionState(now_ms, principal)
        if now_ms < self._oldest_ms:  # the wall clock went back
            self._oldest_ms = now_ms
        # One copy of each topic name, however many producers and requests carry it.
        self._entries[(key[0], sys.intern(key[1]), key[2])] = entry
        return entry

    def _touch(self, key: _Key, entry: ProducerPartitionState, now_ms: int) -> None:
        entry.updated_ms = max(entry.updated_ms, now_ms)
        self._entries.move_to_end(key)

    def _expire(self, now_ms: int) -> None:
        """Drop entries idle past `expiry_ms`, oldest first, stopping at the first live one."""
        # Runs twice per batch: a lower bound of every entry's updated_ms skips the scan.
        if now_ms - self._oldest_ms < self._expiry_ms:
            return
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if now_ms - entry.updated_ms < self._expiry_ms:
                self._oldest_ms = entry.updated_ms
                return
            self._forget(key, evicted=True)
        self._oldest_ms = now_ms

    def _forget(self, key: _Key, *, evicted: bool = False) -> None:
        del self._entries[key]
        if evicted:
            self._evictions += 1
        for p in self._pending_by_key.get(key, ()):
            p.orphan = True
