"""Property test (issue 8): the whole produce path in front of the reference broker.

The engine's own state machine (tests/idempotence/test_properties.py) checks decisions; this one
checks what clients receive. Several connections (sessions sharing one coordinator, as the
client connections of one proxy do) carry real Produce frames: producers send new batches,
retry recent ones on the same or another connection (also while the original is in flight),
bump epochs and send stale or out-of-sequence batches. The upstream broker is `ModelBroker`:
it decodes each forwarded frame with kafka-python, in FIFO order per connection and at a time
the machine chooses, and answers with a real ProduceResponse. Faults: a response lost (the
connection closes first; the broker may process the requests it had, now or later), an
undecodable response or one with a wrong correlation id (the session raises, the server
closes), a broker error before or after the append, and time passing so that retries waiting on
an in-flight original are forwarded after all (`on_timer`).

Checked, playbook style (the client sends X -> the broker receives Y; the broker answers Z ->
the client receives W):

- every client request gets one response, in request order per connection, with its own
  correlation id; a partition the broker saw for that request gets the broker's answer
  unchanged;
- a partition the proxy answered itself gets what `ModelBroker.judge` answered when the proxy
  decided (duplicate: same base offset and cached timestamp; 45/47 only when the broker refuses
  so); the log start offset is the newest the proxy saw, never above the broker's;
- a retry held for an identical batch in flight waits only while that copy is unanswered and
  younger than the wait, and then gets what the broker answers an identical batch right after
  it (the original's error, or REQUEST_TIMED_OUT when its fate is unknown), or is forwarded
  once its wait ran out;
- a batch reaches the broker at most once per client request (an answered retry is never also
  forwarded), and every success a client sees is at the offset the broker wrote the batch at;
- the engine's pending tickets and the coordinator's waiters are exactly those the model
  expects at every step, and none is left once every connection is closed.

`RecordingCoordinator` only tells the test which engine ticket belongs to which forwarded batch
and which retry waits on which: every expected answer comes from the model broker.

Found by this machine and fixed: a held retry forwarded by its timer while its request's own
frame was still upstream was settled as unknown by that frame's answer (see the last test).
"""

from __future__ import annotations

import copy
import struct
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from kafka.record.default_records import DefaultRecordBatch

from proxy.errors import DecodeError, FrameError
from proxy.idempotence import BatchFields, BatchIdentity, IdempotenceEngine, TopicPartition
from proxy.idempotence.coordinator import Answer, Decision, ProduceCoordinator, Send, Wait
from proxy.routing.directory import BrokerDirectory
from proxy.routing.session import Output, Session, Shared
from proxy.wire import error_codes as E
from proxy.wire.frames import frame
from tests.idempotence.model import Appended, Deduplicated, ModelBroker, Refused

from ._support import (
    BATCH_TIMESTAMP,
    PartitionAnswer,
    client_frames,
    decode_produce_request,
    decode_produce_response,
    encode_request,
    encode_response,
    idempotent_batch,
    metadata_exchange_for,
    produce_answers,
    produce_request_with,
    produce_response_with,
    topic_id,
    upstream_frames,
)

NOW = BATCH_TIMESTAMP + 60_000
WAIT_MS = 1_000  # inflight_wait_ms: how long a retry waits for an identical batch in flight
TPS: list[TopicPartition] = [("orders", 0), ("orders", 1), ("audit", 0)]
NAMES = {topic_id(name): name for name in ("orders", "audit")}
PIDS = [11, 12]
VERSIONS = [3, 7, 9, 13]  # no log start offset before v5; flexible from v9; topic ids at v13
MAX_CONNECTIONS = 4
GARBAGE = b"\xff\xff\xff\xff not a produce response"

Identity = tuple[int, int, int, int]  # producer id, epoch, first and last sequence


def identity_of(batch: BatchFields) -> Identity:
    return (batch.producer_id, batch.producer_epoch, batch.base_sequence, batch.last_sequence)


def read_batch(records: bytes) -> BatchIdentity:
    """The broker's reading of a forwarded batch (kafka-python, not the proxy's wire code)."""
    b = DefaultRecordBatch(records)
    return BatchIdentity(
        b.producer_id,
        b.producer_epoch,
        b.base_sequence,
        b.last_sequence,
        b.last_offset_delta + 1,
        b.max_timestamp,
        b.is_transactional,
    )


def fields(a: PartitionAnswer, version: int) -> tuple[int, int, int, int, int]:
    """What a client at `version` reads of a partition answer (log start offset from v5)."""
    lso = a.log_start_offset if version >= 5 else -1
    return (a.index, a.error_code, a.base_offset, a.log_append_time_ms, lso)


class RecordingCoordinator(ProduceCoordinator):
    """The real coordinator; also notes each decision, in order, for the test's bookkeeping."""

    def __init__(self, clock_ms: Callable[[], int]) -> None:
        super().__init__(IdempotenceEngine(), clock_ms=clock_ms, inflight_wait_ms=WAIT_MS)
        self.decisions: list[tuple[TopicPartition, BatchFields, Decision]] = []
        self._deciding = False

    def decide(  # type: ignore[override]
        self, owner: int, tp: TopicPartition, batch: BatchFields, records: int, **kw: Any
    ) -> Decision:
        self._deciding = True
        try:
            decision = super().decide(owner, tp, batch, records, **kw)
        finally:
            self._deciding = False
        self.decisions.append((tp, batch, decision))
        return decision

    def decide_forward(
        self, tp: TopicPartition, batch: BatchFields, records: int, now_ms: int, **kw: Any
    ) -> Send:
        decision = super().decide_forward(tp, batch, records, now_ms, **kw)
        if not self._deciding:
            self.decisions.append((tp, batch, decision))
        return decision

    def take(self) -> list[tuple[TopicPartition, BatchFields, Decision]]:
        taken, self.decisions = self.decisions, []
        return taken


@dataclass(eq=False)
class Flight:
    """One copy of a batch forwarded upstream, and what became of it."""

    tp: TopicPartition
    records: bytes
    batch: BatchIdentity
    ticket: int | None  # the engine ticket its connection's ledger owes, if any
    sent_ms: int
    answer: PartitionAnswer | None = None  # the broker's, once it processed the frame
    settled: bool = False  # the proxy learnt the answer, or gave it up as unknown
    waiters: list[Part] = field(default_factory=list)


@dataclass(eq=False)
class Part:
    """One partition of a client request and what its client must receive."""

    tp: TopicPartition
    records: bytes
    batch: BatchIdentity
    how: str = ""  # "sent" (the broker answers), "local" (the proxy) or "waiting"
    flight: Flight | None = None  # sent: the copy whose answer the client gets
    waiter: Any = None  # waiting: the coordinator's Waiter
    original: Flight | None = None  # waiting: the copy in flight it waits on
    expected: PartitionAnswer | None = None  # local, or waiting once the original settled


@dataclass(eq=False)
class Request:
    correlation_id: int
    parts: list[Part]


@dataclass(eq=False)
class UpstreamFrame:
    correlation_id: int
    body: bytes
    flights: list[Flight]
    response: bytes | None = None  # once the broker processed it


class Conn:
    """A client connection: its session, the requests owed a response, the broker's queues."""

    def __init__(self, session: Session, version: int) -> None:
        self.session = session
        self.version = version
        self.requests: deque[Request] = deque()
        self.to_broker: deque[UpstreamFrame] = deque()  # forwarded, not yet processed
        self.from_broker: deque[UpstreamFrame] = deque()  # processed, response not delivered
        self.unsettled: list[Flight] = []
        self.next_cid = 1
        self.open = True


@dataclass
class Producer:
    epoch: int = 0
    next_seq: dict[TopicPartition, int] = field(default_factory=lambda: dict.fromkeys(TPS, 0))
    sent: dict[TopicPartition, list[bytes]] = field(default_factory=lambda: {tp: [] for tp in TPS})


CONN = st.integers(0, MAX_CONNECTIONS - 1)
#: Per partition of a request: nothing, a new batch (0), or the k-th latest batch again (the
#: oldest if there are fewer).
PLAN = st.one_of(st.none(), st.just(0), st.integers(1, 6))


class ProducePathAgainstBroker(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        self.coordinator = RecordingCoordinator(lambda: self.now)
        self.engine = self.coordinator.engine
        self.shared = Shared(BrokerDirectory(advertised_host="proxy", port_base=9100))
        self.shared.produce = self.coordinator
        self.broker = ModelBroker(expiry_ms=10**12)
        self.conns: dict[int, Conn] = {}
        self.producers = {pid: Producer() for pid in PIDS}
        self.tickets: dict[int, Flight] = {}
        self.waiting: list[Part] = []  # held retries not yet resolved nor forwarded
        self.limbo: list[deque[UpstreamFrame]] = []  # closed connections' requests, in order
        self.reported_lso: dict[TopicPartition, int] = {}  # newest the proxy saw, per partition
        self.written: dict[tuple[TopicPartition, Identity], int] = {}  # -> base offset

    # -- setup -------------------------------------------------------------------

    @initialize(
        log_append_time=st.lists(st.booleans(), min_size=len(TPS), max_size=len(TPS)),
        versions=st.lists(st.sampled_from(VERSIONS), min_size=2, max_size=2),
    )
    def setup(self, log_append_time: list[bool], versions: list[int]) -> None:
        for tp, append_time in zip(TPS, log_append_time, strict=True):
            self.broker.add_partition(tp, log_append_time=append_time)
        # Produce v13 names topics by id: clients learn the ids from Metadata, via the proxy.
        metadata = Session(self.shared, session_id=0)
        metadata_exchange_for(metadata, {name: tid for tid, name in NAMES.items()})
        metadata.close()
        for version in versions:  # two clients from the start: retries move between them
            self.connect(version)

    # -- clients -----------------------------------------------------------------

    @precondition(lambda self: len(self.open_conns()) < MAX_CONNECTIONS)
    @rule(version=st.sampled_from(VERSIONS))
    def connect(self, version: int) -> None:
        session_id = len(self.conns) + 1
        self.conns[session_id] = Conn(Session(self.shared, session_id=session_id), version)

    @precondition(lambda self: self.open_conns())
    @rule(
        conn=CONN,
        pid=st.sampled_from(PIDS),
        plan=st.tuples(PLAN, PLAN, PLAN),
        records=st.integers(1, 3),
    )
    def send(self, conn: int, pid: int, plan: tuple[int | None, ...], records: int) -> None:
        """One producer's request: new batches and retries of its recent ones."""
        producer = self.producers[pid]
        batches: list[tuple[TopicPartition, bytes]] = []
        for tp, what in zip(TPS, plan, strict=True):
            if what == 0:
                batches.append((tp, self.new_batch(pid, tp, records)))
            elif what is not None and producer.sent[tp]:
                batches.append((tp, producer.sent[tp][-min(what, len(producer.sent[tp]))]))
        if batches:
            self.client_sends(self.pick(conn), batches)

    @precondition(lambda self: self.open_conns())
    @rule(
        conn=CONN,
        pid=st.sampled_from(PIDS),
        tp=st.sampled_from(TPS),
        epoch_shift=st.sampled_from([-1, 0, 1]),
        seq_shift=st.integers(-3, 3),
    )
    def send_out_of_sequence(
        self, conn: int, pid: int, tp: TopicPartition, epoch_shift: int, seq_shift: int
    ) -> None:
        """A stale epoch, a sequence gap or a replay: the broker refuses most with 45 or 47."""
        producer = self.producers[pid]
        epoch = max(0, producer.epoch + epoch_shift)
        seq = max(0, producer.next_seq[tp] + seq_shift)
        batch = idempotent_batch(pid, epoch, seq, timestamp=self.now)
        self.client_sends(self.pick(conn), [(tp, batch)])

    @rule(pid=st.sampled_from(PIDS))
    def bump_epoch(self, pid: int) -> None:
        producer = self.producers[pid]
        producer.epoch += 1
        producer.next_seq = dict.fromkeys(TPS, 0)

    # -- the broker --------------------------------------------------------------

    @precondition(lambda self: self.open_conns(lambda c: c.to_broker))
    @rule(
        conn=CONN,
        how=st.sampled_from(["ok"] * 6 + ["not_enough_replicas", "timed_out"]),
    )
    def broker_processes(self, conn: int, how: str, c: Conn | None = None) -> None:
        """The broker handles the oldest request it has on a connection; the answer is queued."""
        c = c or self.pick(conn, lambda c: c.to_broker)
        upstream = c.to_broker.popleft()
        self.broker_handles(c.version, upstream, how)
        c.from_broker.append(upstream)

    @precondition(lambda self: self.open_conns(lambda c: c.from_broker))
    @rule(conn=CONN, fault=st.sampled_from(["none"] * 6 + ["garbage", "wrong_cid"]))
    def broker_answers(self, conn: int, fault: str, c: Conn | None = None) -> None:
        """The oldest queued answer reaches the proxy: intact, undecodable, or mislabelled."""
        c = c or self.pick(conn, lambda c: c.from_broker)
        upstream = c.from_broker.popleft()
        assert upstream.response is not None
        if fault == "none":
            out = c.session.receive_upstream(frame(upstream.response))
            self.proxy_learns(c, upstream)
            assert out.upstream == []
            self.server_delivers(c, out)
            return
        if fault == "garbage":
            body, error = struct.pack(">i", upstream.correlation_id) + GARBAGE, DecodeError
        else:
            body = struct.pack(">i", upstream.correlation_id + 7777) + upstream.response[4:]
            error = FrameError
        with pytest.raises(error):
            c.session.receive_upstream(frame(body))
        self.close(c, reach=0, later=False)  # what the server does after bad broker bytes

    @precondition(lambda self: self.open_conns(lambda c: c.to_broker or c.from_broker))
    @rule(conn=CONN)
    def broker_catches_up(self, conn: int) -> None:
        """Everything a connection has upstream is processed and answered, in order."""
        self.drain(self.pick(conn, lambda c: c.to_broker or c.from_broker))

    @precondition(lambda self: self.open_conns())
    @rule(conn=CONN, reach=st.integers(0, 3), later=st.booleans())
    def connection_drops(self, conn: int, reach: int, later: bool) -> None:
        """Either side closes: queued answers are lost; the broker may still process up to
        `reach` of the requests it had (before the proxy notices, or `later`)."""
        self.close(self.pick(conn), reach=reach, later=later)

    @precondition(lambda self: self.limbo)
    @rule(pick=st.integers(0, 10))
    def lost_request_reaches_broker(self, pick: int) -> None:
        queue = self.limbo[pick % len(self.limbo)]
        self.broker_handles(-1, queue.popleft(), "ok")
        if not queue:
            self.limbo.remove(queue)

    @rule(tp=st.sampled_from(TPS), by=st.integers(1, 5))
    def log_start_moves(self, tp: TopicPartition, by: int) -> None:
        self.broker.advance_log_start(tp, by)

    # -- time --------------------------------------------------------------------

    @rule(ms=st.sampled_from([1, 250, WAIT_MS - 1, WAIT_MS, 2 * WAIT_MS]))
    def time_passes(self, ms: int) -> None:
        self.now += ms

    @rule()
    def timers_fire(self) -> None:
        """The server calls on_timer of every session whose deadline has passed."""
        for c in self.open_conns():
            deadline = c.session.next_deadline()
            if deadline is not None and deadline <= self.now:
                self.timer(c)

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def tickets_and_waiters_are_the_models(self) -> None:
        owed = [f for c in self.conns.values() for f in c.unsettled if f.ticket is not None]
        assert self.engine.pending == len(owed)
        assert self.coordinator.waiting == len(self.waiting)
        for c in self.open_conns():
            mine = [p.waiter.deadline_ms for p in self.waiting if self.owner(p) is c]
            assert c.session.next_deadline() == (min(mine) if mine else None)

    def teardown(self) -> None:
        """Let everything in flight finish: every request is answered. Then close all."""
        if sys.exc_info()[0] is not None:
            return  # a step failed already: report that, not its aftermath
        for _ in range(50):
            busy = False
            for c in self.open_conns(lambda c: c.to_broker or c.from_broker):
                busy = True
                self.drain(c)
            if self.waiting:
                busy = True
                self.now += WAIT_MS
                self.timers_fire()
            if not busy:
                break
        for c in self.open_conns():
            assert not c.requests, (
                f"requests never answered: {[r.correlation_id for r in c.requests]}"
            )
        for c in self.open_conns():
            self.close(c, reach=0, later=False)
        assert self.engine.pending == 0
        assert self.coordinator.waiting == 0

    def drain(self, c: Conn) -> None:
        while c.open and (c.to_broker or c.from_broker):
            if c.from_broker:
                self.broker_answers(0, "none", c)
            else:
                self.broker_processes(0, "ok", c)

    # -- the client side -----------------------------------------------------------

    def new_batch(self, pid: int, tp: TopicPartition, records: int) -> bytes:
        producer = self.producers[pid]
        batch = idempotent_batch(
            pid, producer.epoch, producer.next_seq[tp], records, timestamp=self.now
        )
        producer.next_seq[tp] += records
        producer.sent[tp].append(batch)
        return batch

    def client_sends(self, c: Conn, batches: list[tuple[TopicPartition, bytes]]) -> None:
        """Client -> proxy: one Produce request; the decisions against the model, at once."""
        cid = c.next_cid
        c.next_cid += 1
        parts = [Part(tp, records, read_batch(records)) for tp, records in batches]
        verdicts = [self.broker_would_answer(c, p) for p in parts]
        topics: dict[str, list[tuple[int, bytes]]] = {}
        for p in parts:
            topics.setdefault(p.tp[0], []).append((p.tp[1], p.records))
        body = encode_request(produce_request_with(c.version, list(topics.items())), cid)
        c.requests.append(Request(cid, parts))
        out = c.session.receive_client(frame(body))

        decisions = self.coordinator.take()
        assert [(tp, identity_of(b)) for tp, b, _ in decisions] == [
            (p.tp, identity_of(p.batch)) for p in parts
        ]
        for p, verdict, (_, _, decision) in zip(parts, verdicts, decisions, strict=True):
            if isinstance(decision, Send):
                p.how = "sent"
                p.flight = self.flight(c, p, decision.ticket)
            elif isinstance(decision, Wait):
                self.held(p, decision.waiter)
            else:
                self.answered_here(p, verdict, decision)
            event(f"partition {p.how}")
        sent = [p.flight for p in parts if p.how == "sent"]
        forwarded = upstream_frames(out)
        if sent:
            (request,) = forwarded
            self.to_broker(c, cid, request, sent)  # type: ignore[arg-type]
        else:
            assert forwarded == []
        self.server_delivers(c, out)

    def broker_would_answer(self, c: Conn, p: Part) -> Any:
        """What the broker answers the batch now, or None if it would write it or the answer
        depends on what is still in flight: the proxy may answer only what is certain. The
        futures tried: nothing more lands; what is ahead on this connection lands first; all
        that may still land (every connection's queue, closed connections' lost requests)."""
        ahead = [f for u in c.to_broker for f in u.flights]
        everything = ahead + [
            f
            for queue in [o.to_broker for o in self.open_conns() if o is not c] + self.limbo
            for u in queue
            for f in u.flights
        ]
        verdicts = {repr(self.broker.judge(p.tp, p.batch))}
        for landing in (ahead, everything):
            future = copy.deepcopy(self.broker)
            for f in landing:
                future.produce(f.tp, f.batch, self.now)
            verdicts.add(repr(future.judge(p.tp, p.batch)))
        return self.broker.judge(p.tp, p.batch) if len(verdicts) == 1 else None

    def answered_here(self, p: Part, verdict: Any, decision: Answer) -> None:
        """The proxy answered in the broker's place: the broker must answer so whatever of
        what is in flight lands first."""
        index = p.tp[1]
        assert verdict is not None, f"answered {decision}; the broker may write the batch"
        if isinstance(verdict, Deduplicated):
            lso = self.reported_lso.get(p.tp, -1)
            assert lso <= verdict.log_start_offset
            p.expected = PartitionAnswer(
                index, E.NONE, verdict.base_offset, verdict.log_append_time_ms, lso
            )
        else:
            assert isinstance(verdict, Refused)
            assert verdict.error_code in (
                E.OUT_OF_ORDER_SEQUENCE_NUMBER,
                E.INVALID_PRODUCER_EPOCH,
            )
            p.expected = PartitionAnswer(index, verdict.error_code)
        event(f"answered here: {type(verdict).__name__} {p.expected.error_code}")
        assert (decision.error_code, decision.base_offset) == (
            p.expected.error_code,
            p.expected.base_offset,
        )
        p.how = "local"

    def held(self, p: Part, waiter: Any) -> None:
        """A retry held for an identical batch: that copy is unanswered and recent enough."""
        original = self.tickets[waiter.ticket]
        assert (original.tp, identity_of(original.batch)) == (p.tp, identity_of(p.batch))
        assert not original.settled, "waits on a batch whose answer is known"
        assert self.now < original.sent_ms + WAIT_MS
        assert waiter.deadline_ms == original.sent_ms + WAIT_MS
        p.how, p.waiter, p.original = "waiting", waiter, original
        original.waiters.append(p)
        self.waiting.append(p)

    def client_receives(self, c: Conn, body: bytes) -> None:
        """A response reaches the client: the next one owed, and what the broker would say."""
        response = decode_produce_response(c.version, body)
        assert c.requests, "a response nobody asked for"
        request = c.requests.popleft()
        assert response.header.correlation_id == request.correlation_id
        answers = produce_answers(response)
        keys = [topic_id(p.tp[0]) if c.version >= 13 else p.tp[0] for p in request.parts]
        assert [(k, a.index) for k, a in answers] == [
            (k, p.tp[1]) for k, p in zip(keys, request.parts, strict=True)
        ]
        for p, (_, got) in zip(request.parts, answers, strict=True):
            if p.how == "sent":
                assert p.flight is not None
                assert p.flight.answer is not None
                expected = p.flight.answer
            else:
                assert p.expected is not None, f"a {p.how} retry answered before its original"
                expected = p.expected
            assert fields(got, c.version) == fields(expected, c.version), p.how
            if got.error_code == E.NONE:
                # One offset per batch, whoever answers: the one the broker wrote it at.
                assert self.written[(p.tp, identity_of(p.batch))] == got.base_offset

    # -- the proxy and the server ---------------------------------------------------

    def flight(self, c: Conn, p: Part, ticket: int | None) -> Flight:
        f = Flight(p.tp, p.records, p.batch, ticket, self.now)
        if ticket is not None:
            assert ticket not in self.tickets
            self.tickets[ticket] = f
        c.unsettled.append(f)
        return f

    def to_broker(self, c: Conn, cid: int, body: bytes, flights: list[Flight]) -> None:
        """A frame went upstream: it carries exactly these batches, byte for byte."""
        request = decode_produce_request(c.version, body)
        assert request.header.correlation_id == cid
        carried = [
            (NAMES[t.topic_id] if c.version >= 13 else t.name, p.index, bytes(p.records))
            for t in request.topic_data
            for p in t.partition_data
        ]
        assert carried == [(f.tp[0], f.tp[1], f.records) for f in flights]
        c.to_broker.append(UpstreamFrame(cid, body, flights))

    def timer(self, c: Conn) -> None:
        """on_timer: the held retries whose wait ran out are forwarded, one frame per request."""
        out = c.session.on_timer(self.now)
        decisions = iter(self.coordinator.take())
        for body in upstream_frames(out):
            request = decode_produce_request(c.version, body)
            cid = request.header.correlation_id
            assert cid < 0, "the proxy's own request"
            flights = []
            for _ in range(sum(len(t.partition_data) for t in request.topic_data)):
                tp, batch, decision = next(decisions)
                assert isinstance(decision, Send)
                (p,) = [w for w in self.waiting if w.waiter.batch is batch]
                assert self.owner(p) is c
                assert p.tp == tp
                assert p.waiter.deadline_ms <= self.now
                self.waiting.remove(p)
                assert p.original is not None
                p.original.waiters.remove(p)
                p.how, p.flight = "sent", self.flight(c, p, decision.ticket)
                flights.append(p.flight)
                event("held retry forwarded after its wait")
            self.to_broker(c, cid, body, flights)
        assert next(decisions, None) is None
        overdue = [p for p in self.waiting if self.owner(p) is c]
        assert all(p.waiter.deadline_ms > self.now for p in overdue)
        self.server_delivers(c, out)

    def proxy_learns(self, c: Conn, upstream: UpstreamFrame) -> None:
        """The proxy decoded the broker's answer: its flights settle, their waiters resolve."""
        for f in upstream.flights:
            assert f.answer is not None
            if c.version >= 5 and f.answer.log_start_offset >= 0:
                lso = max(self.reported_lso.get(f.tp, -1), f.answer.log_start_offset)
                self.reported_lso[f.tp] = lso
        for f in upstream.flights:
            assert f.answer is not None
            answer = f.answer
            if answer.error_code == E.NONE:
                # The broker answers an identical batch with the cached timestamp: the log
                # append time, or on CreateTime topics the batch's max timestamp.
                ts = answer.log_append_time_ms
                if ts == -1:
                    ts = f.batch.max_timestamp
                lso = self.reported_lso.get(f.tp, -1)
                self.settle(c, f, PartitionAnswer(f.tp[1], E.NONE, answer.base_offset, ts, lso))
            else:
                self.settle(c, f, PartitionAnswer(f.tp[1], answer.error_code))

    def settle(self, c: Conn, f: Flight, waiters_get: PartitionAnswer) -> None:
        c.unsettled.remove(f)
        f.settled = True
        for p in f.waiters:
            event(f"held retry resolved: error {waiters_get.error_code}")
            p.expected = waiters_get
            self.waiting.remove(p)
        f.waiters = []

    def close(self, c: Conn, *, reach: int, later: bool) -> None:
        """The connection is over: what the broker had may land; every outcome is unknown."""
        reached: deque[UpstreamFrame] = deque()
        for _ in range(min(reach, len(c.to_broker))):
            reached.append(c.to_broker.popleft())
        if later and reached:
            self.limbo.append(reached)
        else:
            for upstream in reached:
                self.broker_handles(c.version, upstream, "ok")
        c.to_broker.clear()
        c.from_broker.clear()
        c.requests.clear()
        c.open = False
        for p in [p for p in self.waiting if self.owner(p) is c]:
            assert p.original is not None
            where = "the same" if p.original in c.unsettled else "another"
            event(f"held retry's connection closed, original on {where} connection")
            self.waiting.remove(p)
            assert p.original is not None
            p.original.waiters.remove(p)
        for f in list(c.unsettled):
            self.settle(c, f, PartitionAnswer(f.tp[1], E.REQUEST_TIMED_OUT))
        out = c.session.close()
        assert (out.client, out.upstream) == ([], [])
        self.server_delivers(c, out)

    def server_delivers(self, c: Conn, out: Output) -> None:
        """As the server: the client's bytes to the client, then the woken sessions resumed."""
        assert out.discovered == []
        for body in client_frames(out):
            self.client_receives(c, body)
        for session_id in out.woken:
            woken = self.conns[session_id]
            resumed = woken.session.resume()
            assert (resumed.upstream, resumed.woken) == ([], [])
            if woken.open:
                for body in client_frames(resumed):
                    self.client_receives(woken, body)
            else:
                assert resumed.client == []

    # -- the model broker ---------------------------------------------------------

    def broker_handles(self, version: int, upstream: UpstreamFrame, how: str) -> None:
        """Decode the forwarded frame, run each batch through the model, encode the answer."""
        if version < 0:  # a closed connection's request: nobody reads the answer
            version = _version_of(upstream.body)
        request = decode_produce_request(version, upstream.body)
        topics: dict[str, list[PartitionAnswer]] = {}
        flights = iter(upstream.flights)
        for t in request.topic_data:
            name = NAMES[t.topic_id] if version >= 13 else t.name
            for p in t.partition_data:
                f = next(flights)
                batch = read_batch(bytes(p.records))
                assert ((name, p.index), batch) == (f.tp, f.batch)
                f.answer = self.broker_writes(f.tp, batch, how)
                topics.setdefault(name, []).append(f.answer)
        response = produce_response_with(version, list(topics.items()))
        upstream.response = encode_response(response, upstream.correlation_id)

    def broker_writes(self, tp: TopicPartition, batch: BatchIdentity, how: str) -> PartitionAnswer:
        if how == "not_enough_replicas":  # refused before the append
            return PartitionAnswer(tp[1], E.NOT_ENOUGH_REPLICAS)
        answer = self.broker.produce(tp, batch, self.now)
        if isinstance(answer, Appended):
            key = (tp, identity_of(batch))
            assert key not in self.written, f"written twice: {key}"
            self.written[key] = answer.base_offset
        if how == "timed_out":  # acks=all not met in time: after the append
            return PartitionAnswer(tp[1], E.REQUEST_TIMED_OUT)
        if isinstance(answer, Refused):
            return PartitionAnswer(tp[1], answer.error_code)
        return PartitionAnswer(
            tp[1], E.NONE, answer.base_offset, answer.log_append_time_ms, answer.log_start_offset
        )

    # -- helpers -------------------------------------------------------------------

    def open_conns(self, where: Callable[[Conn], Any] = lambda c: True) -> list[Conn]:
        return [c for c in self.conns.values() if c.open and where(c)]

    def pick(self, index: int, where: Callable[[Conn], Any] = lambda c: True) -> Conn:
        conns = self.open_conns(where)
        return conns[index % len(conns)]

    def owner(self, p: Part) -> Conn:
        return self.conns[p.waiter.owner]


def _version_of(body: bytes) -> int:
    (_, version) = struct.unpack_from(">hh", body)
    return version


TestProducePathAgainstBroker = ProducePathAgainstBroker.TestCase
TestProducePathAgainstBroker.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- found by the machine (failed before the fix in ProduceHandler.response) -------------


def test_a_late_forwarded_part_is_not_settled_by_its_requests_first_response() -> None:
    now = [NOW]
    coordinator = ProduceCoordinator(
        IdempotenceEngine(), clock_ms=lambda: now[0], inflight_wait_ms=WAIT_MS
    )
    shared = Shared(BrokerDirectory(advertised_host="proxy", port_base=9100), coordinator)
    first, second, third = (Session(shared, session_id=i) for i in (1, 2, 3))
    v = 9
    retried = idempotent_batch(11, 0, 0, timestamp=NOW)
    new = idempotent_batch(12, 0, 0, timestamp=NOW)

    def send(session: Session, cid: int, topics: Any) -> Output:
        return session.receive_client(frame(encode_request(produce_request_with(v, topics), cid)))

    send(first, 1, [("orders", [(0, retried)])])  # the original, never answered
    # The retry waits for the original; the new batch of the same request is forwarded.
    (own,) = upstream_frames(send(second, 7, [("orders", [(0, retried), (1, new)])]))
    now[0] += WAIT_MS
    (late,) = upstream_frames(second.on_timer(now[0]))  # the retry, forwarded after all
    late_cid = decode_produce_request(v, late).header.correlation_id
    assert send(third, 1, [("orders", [(0, retried)])]) == Output()  # waits on the late copy
    assert coordinator.engine.pending == 3

    def reply(cid: int, answer: PartitionAnswer) -> bytes:
        response = produce_response_with(v, [("orders", [answer])])
        return frame(encode_response(response, cid))

    # The broker answers the client's own frame (the new batch) first, as it must.
    out = second.receive_upstream(reply(7, PartitionAnswer(1, E.NONE, 50, -1, 0)))
    assert out.client == []  # the late part is still in flight
    assert coordinator.engine.pending == 2  # only the new batch is settled
    assert out.woken == []  # the third connection keeps waiting on the late copy
    # Its answer then completes both the second client's request and the third's wait.
    out = second.receive_upstream(reply(late_cid, PartitionAnswer(0, E.NONE, 40, -1, 0)))
    (body,) = client_frames(out)
    answers = produce_answers(decode_produce_response(v, body))
    assert [(a.index, a.error_code, a.base_offset) for _, a in answers] == [
        (0, E.NONE, 40),
        (1, E.NONE, 50),
    ]
    assert out.woken == [3]
    (retry,) = client_frames(third.resume())
    ((_, answer),) = produce_answers(decode_produce_response(v, retry))
    assert (answer.error_code, answer.base_offset) == (E.NONE, 40)
