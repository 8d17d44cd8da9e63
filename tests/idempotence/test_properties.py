"""Property tests: the engine in front of a reference broker, over random interleavings.

Producers send, retry (acknowledged, pending and long-gone batches), bump epochs and wrap
sequences; the broker processes forwarded batches in any order; answers arrive as successes,
errors before or after the append, or never (connection lost, the batch maybe processed later);
time jumps past expiry and the broker expires producers; small `max_entries` forces evictions.

Checked: every local answer (duplicate, rejection) is what the broker answers at that moment;
waiters on an in-flight batch get what the broker answers an identical batch; identical
batches in flight are always coalesced; bounds hold. In the clean configuration (no lost
answers, evictions or expiry) the engine must also answer every retry it can be sure of.

Assumption, as documented in the engine: a batch whose answer was lost is processed by the
broker, if at all, before the engine forgets its producer-partition.
"""

from __future__ import annotations

import random
import unittest
from dataclasses import dataclass, field
from typing import ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from proxy.idempotence import (
    AwaitInflight,
    BatchIdentity,
    Duplicate,
    Failure,
    Forward,
    IdempotenceEngine,
    Outcome,
    Reject,
    Success,
    Unknown,
    last_sequence,
)
from proxy.idempotence.state import ProducerPartitionState

from .model import INT32_MAX, Answer, Appended, Deduplicated, ModelBroker, Refused

NOW = 1_700_000_000_000
TPS = [("t", 0), ("t", 1)]
PIDS = [11, 12, 13]
NOISE_TP = ("noise", 0)


@dataclass(frozen=True)
class Config:
    max_entries: int = 3
    expiry_ms: int = 10_000
    answer_transactional: bool = True
    lossy: bool = True  # lost answers, errors after append, expiry, evictions by other traffic
    old_timestamps: bool = True


@dataclass
class Client:
    epoch: int = 0
    next_seq: dict[tuple[str, int], int] = field(default_factory=dict)
    transactional: bool = False


@dataclass
class InFlight:
    tp: tuple[str, int]
    batch: BatchIdentity
    answer: Answer | None = None  # set once the broker processed it


def identity(batch: BatchIdentity) -> tuple[int, int, int, int]:
    return (batch.producer_id, batch.producer_epoch, batch.base_sequence, batch.last_sequence)


def cached_timestamp(batch: BatchIdentity, answer: Appended | Deduplicated) -> int:
    if isinstance(answer, Appended) and answer.log_append_time_ms == -1:
        return batch.max_timestamp
    return answer.log_append_time_ms


class EngineAgainstBroker(RuleBasedStateMachine):
    config: ClassVar[Config] = Config()

    def __init__(self) -> None:
        super().__init__()
        cfg = self.config
        self.now = NOW
        self.engine = IdempotenceEngine(
            max_entries=cfg.max_entries,
            expiry_ms=cfg.expiry_ms,
            answer_transactional=cfg.answer_transactional,
        )
        self.broker = ModelBroker(cfg.expiry_ms)
        self.clients: dict[int, Client] = {}
        self.sent: list[tuple[tuple[str, int], BatchIdentity]] = []
        self.inflight: dict[int, InFlight] = {}
        self.limbo: list[tuple[tuple[str, int], BatchIdentity, ProducerPartitionState | None]] = []
        self.waiters: dict[int, list[tuple[tuple[str, int], BatchIdentity]]] = {}
        self.reported_log_start: dict[tuple[str, int], int] = {}
        # (tp, identity) -> broker state generation it was written in; see no_duplicate_writes.
        self.generation: dict[tuple[tuple[str, int], int], int] = {}
        self.written: set[tuple[tuple[str, int], tuple[int, int, int, int], int]] = set()

    # Setup

    @initialize(
        log_append_time=st.lists(st.booleans(), min_size=len(TPS), max_size=len(TPS)),
        start_near_wrap=st.lists(st.booleans(), min_size=len(PIDS), max_size=len(PIDS)),
        transactional=st.lists(st.booleans(), min_size=len(PIDS), max_size=len(PIDS)),
    )
    def setup(
        self, log_append_time: list[bool], start_near_wrap: list[bool], transactional: list[bool]
    ) -> None:
        for tp, append_time in zip(TPS, log_append_time, strict=True):
            self.broker.add_partition(tp, log_append_time=append_time)
        self.broker.add_partition(NOISE_TP, log_append_time=False)
        self.noise_pids = iter(range(1_000, 10**9))
        for pid, near_wrap, txn in zip(PIDS, start_near_wrap, transactional, strict=True):
            first = INT32_MAX - 6 if near_wrap else 0
            self.clients[pid] = Client(next_seq=dict.fromkeys(TPS, first), transactional=txn)

    # Producers

    @rule(
        pid=st.sampled_from(PIDS),
        tp=st.sampled_from(TPS),
        count=st.integers(1, 4),
        age=st.sampled_from([0, 0, 0, 3_000, 25_000]),
    )
    def send_next(self, pid: int, tp: tuple[str, int], count: int, age: int) -> None:
        client = self.clients[pid]
        first = client.next_seq[tp]
        if not self.config.old_timestamps:
            age = 0
        batch = self.make_batch(pid, client.epoch, first, count, self.now - age)
        client.next_seq[tp] = (batch.last_sequence + 1) % (INT32_MAX + 1)
        self.sent.append((tp, batch))
        self.admit(tp, batch)

    @precondition(lambda self: self.sent)
    @rule(pick=st.integers(0, 10_000), recent=st.booleans())
    def resend(self, pick: int, recent: bool) -> None:
        pool = self.sent[-6:] if recent else self.sent
        tp, batch = pool[pick % len(pool)]
        self.admit(tp, batch)

    @rule(pid=st.sampled_from(PIDS), tp=st.sampled_from(TPS), batches=st.integers(2, 7))
    def pipeline_burst(self, pid: int, tp: tuple[str, int], batches: int) -> None:
        for _ in range(batches):
            self.send_next(pid, tp, 1, 0)

    @precondition(lambda self: self.sent)
    @rule(pid=st.sampled_from(PIDS), tp=st.sampled_from(TPS), back=st.integers(1, 7))
    def retry_recent_of_one_partition(self, pid: int, tp: tuple[str, int], back: int) -> None:
        mine = [b for t, b in self.sent if t == tp and b.producer_id == pid]
        if len(mine) >= back:
            self.admit(tp, mine[-back])

    @rule(
        pid=st.sampled_from(PIDS),
        tp=st.sampled_from(TPS),
        epoch_shift=st.sampled_from([-1, 0, 0, 1]),
        first=st.one_of(st.integers(0, 40), st.integers(INT32_MAX - 8, INT32_MAX)),
        count=st.integers(1, 4),
    )
    def send_arbitrary(
        self, pid: int, tp: tuple[str, int], epoch_shift: int, first: int, count: int
    ) -> None:
        epoch = max(0, self.clients[pid].epoch + epoch_shift)
        self.admit(tp, self.make_batch(pid, epoch, first, count, self.now))

    @precondition(lambda self: self.config.lossy)
    @rule(producers=st.integers(1, 4))
    def other_producers_write(self, producers: int) -> None:
        """Traffic of unrelated producers, pushing tracked ones out of a small engine."""
        for _ in range(producers):
            batch = BatchIdentity(next(self.noise_pids), 0, 0, 0, 1, self.now, False)
            decision = self.engine.admit(NOISE_TP, batch, self.now)
            assert isinstance(decision, Forward)
            answer = self.broker.produce(NOISE_TP, batch, self.now)
            assert isinstance(answer, Appended)
            outcome = Success(answer.base_offset, -1, answer.log_start_offset)
            self.engine.complete(decision.ticket, outcome, self.now)

    @rule(pid=st.sampled_from(PIDS))
    def bump_epoch(self, pid: int) -> None:
        client = self.clients[pid]
        client.epoch += 1
        client.next_seq = dict.fromkeys(TPS, 0)

    # Broker

    @precondition(lambda self: any(f.answer is None for f in self.inflight.values()))
    @rule(pick=st.integers(0, 10_000))
    def broker_processes(self, pick: int) -> None:
        waiting = [f for f in self.inflight.values() if f.answer is None]
        self.process(waiting[pick % len(waiting)])

    @precondition(lambda self: any(f.answer is None for f in self.inflight.values()))
    @rule()
    def broker_processes_everything(self) -> None:
        for flight in list(self.inflight.values()):
            self.process(flight)

    @precondition(lambda self: self.inflight)
    @rule(
        pick=st.integers(0, 10_000),
        how=st.sampled_from(["answer", "answer", "answer", "refused", "lost", "late", "timeout"]),
    )
    def broker_answers(self, pick: int, how: str) -> None:
        tickets = sorted(self.inflight)
        self.answer(tickets[pick % len(tickets)], how)

    @precondition(lambda self: self.inflight)
    @rule(order=st.randoms(use_true_random=False), lossy=st.booleans())
    def broker_answers_everything(self, order: random.Random, lossy: bool) -> None:
        tickets = sorted(self.inflight)
        order.shuffle(tickets)
        for ticket in tickets:
            if ticket in self.inflight:
                self.answer(
                    ticket, order.choice(["answer", "lost", "timeout"]) if lossy else "answer"
                )

    @rule(
        pid=st.sampled_from(PIDS),
        tp=st.sampled_from(TPS),
        count=st.integers(1, 4),
        batches=st.integers(1, 6),
    )
    def send_and_get_answers(self, pid: int, tp: tuple[str, int], count: int, batches: int) -> None:
        for _ in range(batches):
            self.send_next(pid, tp, count, 0)
        for ticket in sorted(self.inflight):
            if ticket in self.inflight:
                self.answer(ticket, "answer")

    def answer(self, ticket: int, how: str) -> None:
        flight = self.inflight[ticket]
        if not self.config.lossy and how in ("lost", "late", "timeout"):
            how = "answer"
        outcome: Outcome
        if how == "refused" and flight.answer is None:
            outcome = Failure(19)  # NOT_ENOUGH_REPLICAS, before any append
        elif how == "late" and flight.answer is None:
            outcome = Unknown()
        else:
            answer = self.process(flight)
            if how in ("lost", "late"):
                outcome = Unknown()
            elif isinstance(answer, Refused):
                outcome = Failure(answer.error_code)
            elif how == "timeout":
                outcome = Failure(7)  # REQUEST_TIMED_OUT, after the append
            else:
                outcome = Success(
                    answer.base_offset, answer.log_append_time_ms, answer.log_start_offset
                )
        self.complete(ticket, outcome)
        if how == "late" and flight.answer is None:
            key = (flight.batch.producer_id, *flight.tp)
            self.limbo.append((flight.tp, flight.batch, self.engine._entries.get(key)))

    @precondition(lambda self: self.limbo)
    @rule(pick=st.integers(0, 10_000), lands=st.booleans())
    def lost_batch_reaches_broker(self, pick: int, lands: bool) -> None:
        tp, batch, entry = self.limbo.pop(pick % len(self.limbo))
        key = (batch.producer_id, *tp)
        if lands and self.engine._entries.get(key) is entry:
            self.broker_produce(tp, batch)

    @precondition(lambda self: self.config.lossy)
    @rule()
    def broker_expires_producers(self) -> None:
        self.broker.expire(self.now)

    @rule(tp=st.sampled_from(TPS), by=st.integers(1, 20), tell=st.booleans())
    def log_start_moves(self, tp: tuple[str, int], by: int, tell: bool) -> None:
        self.broker.advance_log_start(tp, by)
        if tell:
            lso = self.broker.partitions[tp].log_start_offset
            self.engine.observe_log_start_offset(tp, lso)
            self.note_log_start(tp, lso)

    # Time

    @rule(ms=st.integers(1, 500))
    def time_passes(self, ms: int) -> None:
        self.now += ms

    @precondition(lambda self: self.config.lossy)
    @rule(ms=st.integers(0, 12_000))
    def time_jumps(self, ms: int) -> None:
        self.now += self.config.expiry_ms // 2 + ms

    # Invariants

    @invariant()
    def bounded(self) -> None:
        assert self.engine.entries <= self.config.max_entries
        assert self.engine.pending == len(self.inflight)

    # Helpers

    def make_batch(self, pid: int, epoch: int, first: int, count: int, ts: int) -> BatchIdentity:
        return BatchIdentity(
            producer_id=pid,
            producer_epoch=epoch,
            base_sequence=first,
            last_sequence=last_sequence(first, count - 1),
            record_count=count,
            max_timestamp=ts,
            is_transactional=self.clients[pid].transactional,
        )

    def broker_produce(self, tp: tuple[str, int], batch: BatchIdentity) -> Answer:
        pid = batch.producer_id
        fresh = not self.broker.has_state(tp, pid)
        answer = self.broker.produce(tp, batch, self.now)
        if isinstance(answer, Appended):
            gen_key = (tp, pid)
            if fresh:
                self.generation[gen_key] = self.generation.get(gen_key, 0) + 1
            # No duplicate writes: a batch is written twice only after the broker lost the
            # producer's state, never because of an answer the proxy gave.
            mark = (tp, identity(batch), self.generation[gen_key])
            assert mark not in self.written, mark
            self.written.add(mark)
        return answer

    def process(self, flight: InFlight) -> Answer:
        if flight.answer is None:
            flight.answer = self.broker_produce(flight.tp, flight.batch)
        return flight.answer

    def note_log_start(self, tp: tuple[str, int], lso: int) -> None:
        self.reported_log_start[tp] = max(self.reported_log_start.get(tp, -1), lso)

    def complete(self, ticket: int, outcome: Outcome) -> None:
        flight = self.inflight.pop(ticket)
        if isinstance(outcome, Success):
            self.note_log_start(flight.tp, outcome.log_start_offset)
        result = self.engine.complete(ticket, outcome, self.now)
        waiters = self.waiters.pop(ticket, [])
        if isinstance(outcome, Success):
            answer = flight.answer
            assert isinstance(answer, Appended | Deduplicated)
            assert result == Duplicate(
                answer.base_offset,
                cached_timestamp(flight.batch, answer),
                self.reported_log_start[flight.tp],
            )
        else:
            assert result is None
            for tp, batch in waiters:
                self.admit(tp, batch)

    def admit(self, tp: tuple[str, int], batch: BatchIdentity) -> None:
        same_in_flight = [
            t
            for t, f in self.inflight.items()
            if f.tp == tp and identity(f.batch) == identity(batch)
        ]
        verdict = self.broker.judge(tp, batch)
        decision = self.engine.admit(tp, batch, self.now)
        if same_in_flight:
            assert decision == AwaitInflight(same_in_flight[0]), decision
            self.waiters.setdefault(same_in_flight[0], []).append((tp, batch))
            return
        if isinstance(decision, Duplicate):
            assert isinstance(verdict, Deduplicated), (decision, verdict)
            assert (decision.base_offset, decision.log_append_time_ms) == (
                verdict.base_offset,
                verdict.log_append_time_ms,
            )
            assert decision.log_start_offset == self.reported_log_start[tp]
            assert decision.log_start_offset <= verdict.log_start_offset
        elif isinstance(decision, Reject):
            assert verdict == Refused(decision.error_code), (decision, verdict)
        else:
            assert isinstance(decision, Forward), decision
            self.inflight[decision.ticket] = InFlight(tp, batch)
            if not self.config.lossy:
                self.check_sure_answers_are_local(tp, batch, verdict, decision.ticket)

    def check_sure_answers_are_local(
        self, tp: tuple[str, int], batch: BatchIdentity, verdict: Answer | None, ticket: int
    ) -> None:
        """Without lost answers, evictions or expiry, forwarding is only for real doubt."""
        if batch.is_transactional and not self.config.answer_transactional:
            return
        pid = batch.producer_id
        others_in_flight = any(
            f.tp == tp and f.batch.producer_id == pid
            for t, f in self.inflight.items()
            if t != ticket
        )
        if others_in_flight:
            return
        assert not isinstance(verdict, Deduplicated), verdict
        assert verdict != Refused(47), verdict
        if verdict == Refused(45):
            history = self.broker.partitions[tp].history[pid]
            epoch = history[-1].epoch
            assert batch.producer_epoch == epoch, "a new epoch not at 0 is rejected locally"
            assert sum(1 for w in history if w.epoch == epoch) < 5, verdict


class CleanEngineAgainstBroker(EngineAgainstBroker):
    config = Config(
        max_entries=len(PIDS) * len(TPS),
        expiry_ms=10**9,
        answer_transactional=True,
        lossy=False,
        old_timestamps=False,
    )


class ConservativeEngineAgainstBroker(EngineAgainstBroker):
    config = Config(answer_transactional=False)


def as_test(machine: type[RuleBasedStateMachine], examples: int) -> type[unittest.TestCase]:
    case = machine.TestCase
    case.settings = settings(
        max_examples=examples,
        stateful_step_count=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    return case


TestLossyEngineAgainstBroker = as_test(EngineAgainstBroker, 300)
TestCleanEngineAgainstBroker = as_test(CleanEngineAgainstBroker, 200)
TestConservativeEngineAgainstBroker = as_test(ConservativeEngineAgainstBroker, 100)
