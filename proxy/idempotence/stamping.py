"""Idempotence for producers that have none: the proxy's producer ids, sequences and retry memory.

Pure: record bytes and broker answers in, stamped batches and client answers out; no sockets.
The produce handler (proxy.routing.produce) asks for a `PartPlan` per partition of a
non-idempotent client's request, sends what it says, and reports the broker's answers back.

The rules, as the README's "Producers without idempotence" states them:

- A *line* per (client id, topic-partition): the producer id the proxy obtained for that client
  id (InitProducerId without a transactional id), the line's own epoch and its next sequence.
  A client id is one per principal (`ClientKey`): two principals never share a producer id,
  a line or its retry memory (issue 11).
  The broker keeps producer state per partition (ProducerStateManager), so one producer id may
  run different epochs on different partitions, and an epoch bump here touches one partition.
- Every stamped batch is kept until the broker has it, as the Java producer's Sender keeps a
  ProducerBatch: a batch whose outcome is unknown, or that failed and may be retried, is resent
  with its original stamp, in sequence order, ahead of anything new on its line. The broker
  answers a resend of a written batch as a duplicate (ProducerStateEntry.findDuplicateBatch),
  and writes one that it never got. So an unknown outcome is resolved by the broker itself.
- A record is *in doubt* while the client may not know it was written: its batch's outcome is
  unknown or it failed, the client was answered with an error for it, or the client connection
  closed before its success answer was written or within `ack_grace_ms` after. A record of the
  client that matches a record in doubt on the same line (key, value and headers; the same
  timestamp preferred, else a later one within the retry window, for clients that re-encode
  retries) is a retry: it is not sent again, it is answered from what the proxy knows. Copies
  count one for one. A record whose success was written on a connection that stayed open past
  the grace is never in doubt, so a deliberate resend after a success is written again.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Container, Iterable
from itertools import islice
from typing import Literal, NamedTuple, Protocol

from proxy.errors import DecodeError
from proxy.idempotence.decisions import UNKNOWN_PRINCIPAL, Principal, TopicPartition
from proxy.wire import error_codes as E
from proxy.wire.records import RecordKey, rebuild, record_keys, stamp

StampResult = Literal["written", "duplicate", "unknown", "failed", "dropped", "unresolved"]
PidResult = Literal["obtained", "refused"]

INT16_MAX = 2**15 - 1
INT32_MAX = 2**31 - 1

# Sent states.
INFLIGHT, UNKNOWN, FAILED, WRITTEN, DROPPED = range(5)

#: Errors about the proxy's own sequencing: a non-idempotent client never sees them
#: (it never sent sequences), it gets REQUEST_TIMED_OUT and retries.
SEQUENCE_ERRORS: frozenset[int] = frozenset(
    {
        E.OUT_OF_ORDER_SEQUENCE_NUMBER,
        E.DUPLICATE_SEQUENCE_NUMBER,
        E.INVALID_PRODUCER_EPOCH,
        E.UNKNOWN_PRODUCER_ID,
    }
)

# Errors the broker raises before anything is appended, that do not go away on a resend of the
# same bytes: the batch is given up and the client gets the error (NOT_APPENDED_ERRORS in
# proxy.idempotence.decisions, minus the sequence errors and the retriable NOT_ENOUGH_REPLICAS).
_PERMANENT: frozenset[int] = frozenset(
    {
        E.CORRUPT_MESSAGE,
        E.MESSAGE_TOO_LARGE,
        E.INVALID_TOPIC_EXCEPTION,
        E.RECORD_LIST_TOO_LARGE,
        E.INVALID_REQUIRED_ACKS,
        E.TOPIC_AUTHORIZATION_FAILED,
        E.INVALID_TIMESTAMP,
        E.INVALID_RECORD,
        E.POLICY_VIOLATION,
        E.CLUSTER_AUTHORIZATION_FAILED,
        E.UNSUPPORTED_FOR_MESSAGE_FORMAT,
    }
)

#: Bytes counted per record in doubt beyond its digest: its object, index list and expiry
#: queue entries (373 bytes held per record measured, tests/idempotence/test_stamp_memory.py).
COPY_OVERHEAD = 360
#: Bytes counted per line (client id and partition): its object, key and containers.
LINE_OVERHEAD = 600
#: Oldest lines looked at for batches and records to shed before whole lines are forgotten.
_SHED_SCAN = 64
#: Bytes counted per kept batch beyond its bytes.
SENT_OVERHEAD = 200


ClientKey = str | tuple[str, str] | tuple[str, int, str]
"""Whose stamping state: the client id alone on connections without authentication, (principal,
client id) on authenticated ones, (UNKNOWN_PRINCIPAL, session id, client id) for a principal the
proxy cannot name (it shares nothing, not even with another such connection)."""


def client_key(principal: Principal, session_id: int, client_id: str) -> ClientKey:
    """The stamping key of a client id on a connection authenticated as `principal`."""
    if principal is None:
        return client_id
    if principal == UNKNOWN_PRINCIPAL:
        return (principal, session_id, client_id)
    return (principal, client_id)


def client_id_of(key: ClientKey) -> str:
    """The client id of a stamping key."""
    return key if isinstance(key, str) else key[-1]


class StampObserver(Protocol):
    """Counts stamping (metrics)."""

    def stamped(self, result: StampResult, records: int) -> None: ...

    def retries_dropped(self, records: int) -> None: ...

    def producer_id(self, result: PidResult) -> None: ...


class Sent:
    """A batch the proxy stamped, kept until the broker has it (or it is given up)."""

    __slots__ = (
        "base_offset",
        "base_seq",
        "batch",
        "count",
        "epoch",
        "error",
        "indexed",
        "line",
        "order",
        "since_ms",
        "state",
    )

    def __init__(
        self, line: Line, batch: bytes, base_seq: int, count: int, order: int, now_ms: int
    ) -> None:
        self.line = line
        self.batch = batch
        self.epoch = line.epoch
        self.base_seq = base_seq
        self.count = count
        self.order = order  # send order on the line (sequences wrap, this does not)
        self.state = INFLIGHT
        self.error = E.NONE  # the broker's last error for it
        self.base_offset = -1
        self.since_ms = now_ms
        self.indexed = False  # its records are in the line's index of records in doubt

    def __repr__(self) -> str:
        return f"Sent(seq={self.base_seq}+{self.count} epoch={self.epoch} state={self.state})"


class Copy:
    """One record of a kept batch that is in doubt (a retry candidate)."""

    __slots__ = ("digest", "in_index", "index", "sent", "since_ms", "timestamp")

    def __init__(self, sent: Sent, index: int, key: RecordKey, now_ms: int) -> None:
        self.in_index = False
        self.sent = sent
        self.index = index
        self.digest = key.digest
        self.timestamp = key.timestamp
        self.since_ms = now_ms

    @property
    def offset(self) -> int:
        base = self.sent.base_offset
        return -1 if base < 0 else base + self.index


class Line:
    """One client id's writes to one partition, as the proxy sequences them."""

    __slots__ = (
        "client",
        "counter",
        "doubt",
        "epoch",
        "index",
        "next_seq",
        "pid",
        "queue",
        "tp",
    )

    def __init__(self, client: ClientKey, tp: TopicPartition, pid: int) -> None:
        self.client = client
        self.tp = tp
        self.pid = pid
        self.epoch = 0
        self.next_seq = 0
        self.counter = 0
        #: Batches not known written, in send order: in flight, unknown, failed.
        self.queue: list[Sent] = []
        #: Records in doubt by digest, and the same copies in the order they came into doubt.
        self.index: dict[bytes, list[Copy]] = {}
        self.doubt: deque[tuple[int, Copy]] = deque()

    def take_sequence(self, count: int) -> int:
        seq = self.next_seq
        self.next_seq = (seq + count) % (INT32_MAX + 1)  # sequences wrap to 0
        return seq


class PartPlan:
    """What to do with one partition of a non-idempotent client's request."""

    __slots__ = ("depends", "first", "line", "matched", "resend", "send")

    def __init__(self, line: Line) -> None:
        self.line = line
        #: Kept batches to resend first, in order, each in a request of its own.
        self.resend: list[Sent] = []
        #: Batches already being resent on this connection that hold some of its records.
        self.depends: list[Sent] = []
        #: The client's records that are not retries, stamped (None: nothing new).
        self.send: Sent | None = None
        #: The client's records recognised as retries, not sent again.
        self.matched: list[Copy] = []
        #: Where the client's first record is: the answer's base offset comes from it.
        self.first: Copy | Sent | None = None

    @property
    def pieces(self) -> list[Sent]:
        """The batches whose outcome is the client's answer (those it sends, and those it
        waits for), in sequence order."""
        pieces = [*self.depends, *self.resend]
        return pieces if self.send is None else [*pieces, self.send]

    @property
    def settled(self) -> bool:
        return all(s.state != INFLIGHT for s in self.pieces)

    @property
    def simple(self) -> bool:
        """The client's batch went up as it was, only stamped: the broker's answer is its."""
        return not self.resend and not self.matched and self.send is not None


class ClientAnswer(NamedTuple):
    error_code: int
    base_offset: int = -1
    error_message: str | None = None


class Stamper:
    """Producer ids per client id, lines per (client id, partition), records in doubt."""

    def __init__(
        self,
        *,
        retry_window_ms: int = 120_000,
        max_bytes: int = 64 << 20,
        ack_grace_ms: int = 1000,
        observer: StampObserver | None = None,
    ) -> None:
        self.retry_window_ms = retry_window_ms
        self.max_bytes = max_bytes
        self.ack_grace_ms = ack_grace_ms
        self._observer = observer
        self._pids: dict[ClientKey, int] = {}
        self._refused: dict[ClientKey, int] = {}  # client id -> ms until which it is not stamped
        self._lines: OrderedDict[tuple[ClientKey, TopicPartition], Line] = OrderedDict()
        self.bytes = 0  # kept batches and record copies, estimated
        self.copies = 0
        self.evictions = 0
        self.producer_ids = 0

    # -- producer ids ----------------------------------------------------------

    def producer_id(self, client: ClientKey) -> int | None:
        return self._pids.get(client)

    def stamps(self, client: ClientKey, now_ms: int) -> bool:
        """Whether this client's batches are stamped now (not while InitProducerId is refused)."""
        until = self._refused.get(client)
        if until is None:
            return True
        if now_ms >= until:
            del self._refused[client]
            return True
        return False

    def granted(self, client: ClientKey, producer_id: int) -> None:
        """An InitProducerId answer: the first one for a client id is kept, later ones unused."""
        self.producer_ids += 1
        self._count_pid("obtained")
        self._pids.setdefault(client, producer_id)

    def refused(self, client: ClientKey, now_ms: int) -> None:
        """InitProducerId refused (not authorised, not supported): the client passes unstamped
        for a retry window, then the proxy asks again."""
        self._count_pid("refused")
        self._refused[client] = now_ms + self.retry_window_ms

    # -- planning ----------------------------------------------------------------

    def plan(
        self,
        client: ClientKey,
        tp: TopicPartition,
        records: bytes | memoryview,
        record_count: int,
        now_ms: int,
        inflight_here: Container[Sent] = (),
    ) -> PartPlan:
        """Stamp one partition's batch; the client's producer id must be known.

        `inflight_here`: stamped batches in flight on the same connection; a retry of their
        records (a client pipelining its retries) waits for their answer instead of going up
        again, which on one connection comes first.
        """
        line = self._line(client, tp)
        self._expire(line, now_ms)
        plan = PartPlan(line)
        resend = [s for s in line.queue if s.state in (UNKNOWN, FAILED)]
        for s in resend:
            if s.epoch != line.epoch:
                # Failed under an epoch since bumped: certainly not written, so restamped.
                self._restamp(line, s)
            s.state = INFLIGHT
        resend.sort(key=lambda s: s.order)
        plan.resend = resend
        keep: list[int] | None = None
        if line.index:
            keep = self._match(line, plan, records, inflight_here)
        if keep is None:
            batch = stamp(records, line.pid, line.epoch, line.next_seq)
            plan.send = self._new_sent(line, batch, record_count, now_ms)
            plan.first = plan.send
        elif keep:
            try:
                batch = rebuild(records, keep, line.pid, line.epoch, line.next_seq)
            except DecodeError:  # pragma: no cover - record_keys decoded the same bytes
                batch = stamp(records, line.pid, line.epoch, line.next_seq)
                for copy in plan.matched:
                    self._index(line, copy)
                plan.matched = []
                keep = list(range(record_count))
            plan.send = self._new_sent(line, batch, len(keep), now_ms)
            if plan.first is None:
                plan.first = plan.send
        if plan.matched and self._observer is not None:
            self._observer.retries_dropped(len(plan.matched))
        self._trim()
        return plan

    def _line(self, client: ClientKey, tp: TopicPartition) -> Line:
        key = (client, tp)
        line = self._lines.get(key)
        pid = self._pids[client]
        if line is None:
            line = self._lines[key] = Line(client, tp, pid)
            self.bytes += LINE_OVERHEAD
        else:
            self._lines.move_to_end(key)
            if line.pid < 0:  # its epoch ran out: the client's newer producer id
                line.pid = pid
                line.epoch = 0
                line.next_seq = 0
        return line

    def _new_sent(self, line: Line, batch: bytes, count: int, now_ms: int) -> Sent:
        sent = Sent(line, batch, line.take_sequence(count), count, line.counter, now_ms)
        line.counter += 1
        line.queue.append(sent)
        self.bytes += len(batch) + SENT_OVERHEAD
        return sent

    def _restamp(self, line: Line, s: Sent) -> None:
        s.epoch = line.epoch
        s.base_seq = line.take_sequence(s.count)
        s.batch = stamp(s.batch, line.pid, line.epoch, s.base_seq)
        s.order = line.counter
        line.counter += 1

    def _match(
        self,
        line: Line,
        plan: PartPlan,
        records: bytes | memoryview,
        inflight_here: Container[Sent],
    ) -> list[int] | None:
        """Indexes of the client's records that are not retries (None: all of them)."""
        try:
            keys = record_keys(records)
        except DecodeError:
            return None  # the broker's to judge; nothing to recognise
        resending = set(plan.resend)
        keep: list[int] = []
        for i, key in enumerate(keys):
            copy = self._take(line, key, resending, inflight_here)
            if copy is None:
                keep.append(i)
                continue
            plan.matched.append(copy)
            if i == 0:
                plan.first = copy
            sent = copy.sent
            if sent.state == INFLIGHT and sent not in resending and sent not in plan.depends:
                plan.depends.append(sent)
        return None if len(keep) == len(keys) else keep

    def _take(
        self,
        line: Line,
        key: RecordKey,
        resending: set[Sent],
        inflight_here: Container[Sent],
    ) -> Copy | None:
        """The copy in doubt this record is a retry of, removed from the index; or None."""
        copies = line.index.get(key.digest)
        if not copies:
            return None
        best: Copy | None = None
        for copy in copies:
            sent = copy.sent
            if not (
                sent.state == WRITTEN
                or sent in resending
                or (sent.state == INFLIGHT and sent in inflight_here)
            ):
                continue  # given up, or in flight on another connection
            if copy.timestamp == key.timestamp:
                best = copy
                break
            # A client that re-encodes its retries gives them a later CreateTime.
            if best is None and 0 <= key.timestamp - copy.timestamp <= self.retry_window_ms:
                best = copy
        if best is not None:
            copies.remove(best)
            if not copies:
                del line.index[key.digest]
            self._uncount_copy(best)
        return best

    # -- outcomes ------------------------------------------------------------------

    def settle(self, sent: Sent, error_code: int, base_offset: int, now_ms: int) -> None:
        """The broker's answer for a stamped batch."""
        if sent.state != INFLIGHT:
            return
        line = sent.line
        sent.error = error_code
        if error_code in (E.NONE, E.DUPLICATE_SEQUENCE_NUMBER):
            # DUPLICATE_SEQUENCE_NUMBER: written before, offset unknown (as the Java Sender).
            self._written(sent, base_offset if error_code == E.NONE else -1)
            self._count("duplicate" if error_code else "written", sent.count)
            return
        if error_code in SEQUENCE_ERRORS:
            # Not written now (ProducerAppendInfo refuses before the append). Either an earlier
            # batch of the line is not written yet (the gap closes when it is resent), or the
            # batch was written long ago and fell out of the 5 the broker remembers (a later
            # batch's success shows it), or the broker's state and the line disagree: then a
            # new epoch (see _check_epoch).
            sent.state = FAILED
            self._count("failed", sent.count)
            self._index_sent(sent, now_ms)
            self._check_epoch(line)
            return
        if error_code in _PERMANENT:
            sent.state = DROPPED
            self._count("dropped", sent.count)
            self._dequeue(sent)
            if sent.epoch == line.epoch and line.next_seq == _after(sent):
                line.next_seq = sent.base_seq  # the last one: its sequences are free again
            return
        # Maybe appended (REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        # NOT_LEADER_OR_FOLLOWER, ...) or retriable before the append (NOT_ENOUGH_REPLICAS):
        # kept, and resent with its stamp before anything new.
        self.lost(sent, now_ms, count=False)
        sent.error = error_code
        self._count("unknown", sent.count)

    def _written(self, sent: Sent, base_offset: int) -> None:
        """The broker has this batch, so every earlier batch of its epoch too: it admits a
        batch only right after the last one (ProducerAppendInfo.checkSequence)."""
        sent.state = WRITTEN
        sent.base_offset = base_offset
        line = sent.line
        for s in list(line.queue):
            if s.order < sent.order and s.epoch == sent.epoch and s.state != WRITTEN:
                s.state = WRITTEN
                s.error = E.NONE
                self._dequeue(s)
        self._dequeue(sent)

    def _check_epoch(self, line: Line) -> None:
        """Bump the line's epoch when its earliest unwritten batch was refused for its sequence
        and nothing still out or unknown could explain it (the broker lost or truncated the
        producer state, or fenced the epoch): sequences restart at 0 (KIP-360)."""
        current = [s for s in line.queue if s.epoch == line.epoch]
        if not current or any(s.state in (INFLIGHT, UNKNOWN) for s in current):
            return
        first = min(current, key=lambda s: s.order)
        if first.state == FAILED and first.error in SEQUENCE_ERRORS:
            self._bump(line)

    def lost(self, sent: Sent, now_ms: int, *, count: bool = True) -> None:
        """No answer will come for a stamped batch (the upstream connection ended)."""
        if sent.state != INFLIGHT:
            return
        sent.state = UNKNOWN
        sent.error = E.REQUEST_TIMED_OUT
        if count:
            self._count("unknown", sent.count)
        if sent.epoch != sent.line.epoch:
            self._give_up(sent)
            return
        self._index_sent(sent, now_ms)
        self._check_epoch(sent.line)

    def answer(self, plan: PartPlan) -> ClientAnswer:
        """The client's answer for a settled plan: success only when every piece is written."""
        for sent in plan.pieces:
            if sent.state != WRITTEN:
                code = sent.error
                if code in SEQUENCE_ERRORS or code == E.NONE:
                    return ClientAnswer(
                        E.REQUEST_TIMED_OUT,
                        error_message="idemproxy: the write could not be confirmed, retry",
                    )
                return ClientAnswer(code)
        first = plan.first
        if first is None:  # pragma: no cover - a plan always has a first record
            return ClientAnswer(E.NONE)
        return ClientAnswer(E.NONE, first.offset if isinstance(first, Copy) else first.base_offset)

    def answered(self, plan: PartPlan, ok: bool, now_ms: int) -> list[Sent | Copy]:
        """The client was answered for `plan`: with an error its records come into doubt now;
        with success the caller keeps what it returns for `ack_grace_ms` (see `in_doubt`)."""
        items: list[Sent | Copy] = list(plan.matched)
        if plan.send is not None:
            items.append(plan.send)
        if ok:
            return items
        self.in_doubt(items, now_ms)
        return []

    def in_doubt(self, items: Iterable[Sent | Copy], now_ms: int) -> None:
        """These records' success may not have reached the client (its connection closed
        right after, or it was told an error): retry candidates for the retry window."""
        for item in items:
            if isinstance(item, Copy):
                if item.sent.state != DROPPED:
                    item.since_ms = now_ms
                    self._index(item.sent.line, item)
            else:
                self._index_sent(item, now_ms)

    # -- internals -----------------------------------------------------------------

    def _bump(self, line: Line) -> None:
        """A new epoch for the line (the Java TransactionManager's bumpIdempotentEpoch)."""
        if line.epoch >= INT16_MAX:
            # Out of epochs: the client id gets a new producer id, this line takes it up.
            self._pids.pop(line.client, None)
            line.pid = -1
        line.epoch += 1
        line.next_seq = 0
        for s in list(line.queue):
            if s.state == UNKNOWN:
                # Resending it under the old epoch would be fenced: whether it was written
                # cannot be known any more.
                self._give_up(s)

    def _give_up(self, sent: Sent) -> None:
        sent.state = DROPPED
        self._dequeue(sent)
        self._count("unresolved", sent.count)

    def _dequeue(self, sent: Sent) -> None:
        """Out of the line's queue: its bytes are no longer needed for a resend."""
        queue = sent.line.queue
        if sent in queue:
            queue.remove(sent)
            self.bytes -= len(sent.batch) + SENT_OVERHEAD
            if sent.indexed:
                sent.batch = b""

    def _index_sent(self, sent: Sent, now_ms: int) -> None:
        if sent.indexed:
            return
        try:
            keys = record_keys(sent.batch)
        except DecodeError:  # pragma: no cover - the proxy stamped these bytes itself
            return
        sent.indexed = True
        if sent not in sent.line.queue:
            # Written: its records are what is kept now (copies), not its bytes. A batch
            # stays referenced only while queued or for the ack grace of its connection.
            sent.batch = b""
        for i, key in enumerate(keys):
            self._index(sent.line, Copy(sent, i, key, now_ms))
        self._trim()

    def _index(self, line: Line, copy: Copy) -> None:
        if copy.in_index:
            return
        copy.in_index = True
        line.index.setdefault(copy.digest, []).append(copy)
        line.doubt.append((copy.since_ms, copy))
        self.copies += 1
        self.bytes += len(copy.digest) + COPY_OVERHEAD

    def _uncount_copy(self, copy: Copy) -> None:
        copy.in_index = False
        self.copies -= 1
        self.bytes -= len(copy.digest) + COPY_OVERHEAD

    def _expire(self, line: Line, now_ms: int) -> None:
        """Forget doubt older than the retry window; give up batches unresolved that long."""
        horizon = now_ms - self.retry_window_ms
        doubt = line.doubt
        while doubt and doubt[0][0] < horizon:
            since, copy = doubt.popleft()
            if not copy.in_index or copy.since_ms != since:
                continue  # taken since, or back in doubt later (a later entry stands for it)
            copies = line.index.get(copy.digest)
            if copies is not None and copy in copies:
                copies.remove(copy)
                if not copies:
                    del line.index[copy.digest]
                self._uncount_copy(copy)
        for s in list(line.queue):
            if s.state in (UNKNOWN, FAILED) and s.since_ms < horizon:
                self._give_up(s)

    def _trim(self) -> None:
        """Over the byte budget: shed the least recently used lines' batches and records in
        doubt, keeping their producer id, epoch and next sequence (so their next batch still
        follows the broker's state); only when that is not enough, forget lines whole."""
        if self.bytes <= self.max_bytes:
            return
        # A bounded look at the oldest lines, so a budget taken by lines alone costs no scan.
        for line in list(islice(self._lines.values(), _SHED_SCAN)):
            if line.queue or line.index:
                self.evictions += 1
                self._forget(line)
                if self.bytes <= self.max_bytes:
                    return
        while self.bytes > self.max_bytes and len(self._lines) > 1:
            _, line = self._lines.popitem(last=False)
            self.evictions += 1
            self._forget(line)
            self.bytes -= LINE_OVERHEAD

    def _forget(self, line: Line) -> None:
        for copies in line.index.values():
            for copy in copies:
                self._uncount_copy(copy)
        line.index.clear()
        line.doubt.clear()
        for s in line.queue:
            if s.state != INFLIGHT:
                s.state = DROPPED
            self.bytes -= len(s.batch) + SENT_OVERHEAD
        line.queue.clear()

    def _count(self, result: StampResult, records: int) -> None:
        if self._observer is not None and records:
            self._observer.stamped(result, records)

    def _count_pid(self, result: PidResult) -> None:
        if self._observer is not None:
            self._observer.producer_id(result)

    # -- introspection (metrics, tests) ----------------------------------------------

    @property
    def lines(self) -> int:
        return len(self._lines)

    def line(self, client: ClientKey, tp: TopicPartition) -> Line | None:
        return self._lines.get((client, tp))


def _after(sent: Sent) -> int:
    return (sent.base_seq + sent.count) % (INT32_MAX + 1)
