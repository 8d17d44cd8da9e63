"""Per-batch decisions shared by every connection, and the ledger that owns each engine ticket.

Pure: batch identities and outcomes in, decisions and woken waiters out; no bytes, no sockets.
The produce handler of each connection (proxy.routing.produce) reads the batches off the wire
and asks the coordinator, one partition at a time:

- `Send(ticket)`: forward the batch; the connection's `Ledger` now owes the ticket an outcome
  and settles it exactly once: with the broker's answer, or as unknown on every other exit
  (undecodable or mismatched response, upstream never connected, EOF, drain timeout, shutdown).
- `Answer(...)`: the proxy answers in the broker's place.
- `Wait(waiter)`: an identical batch is in flight; the waiter is resolved when the original's
  ticket settles, or handed back by `overdue()` once it has waited `inflight_wait_ms` (the
  caller then forwards it and the broker deduplicates it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, Protocol

from mypy_extensions import mypyc_attr

from proxy.idempotence.decisions import (
    AwaitInflight,
    BatchFields,
    Duplicate,
    Failure,
    Forward,
    Outcome,
    Principal,
    Reject,
    Success,
    TopicPartition,
    Unknown,
)
from proxy.idempotence.engine import IdempotenceEngine
from proxy.wire import error_codes as E

Result = Literal[
    "forwarded", "duplicate", "inflight_duplicate", "out_of_order", "fenced", "rejected"
]
Policy = Literal["stamp", "pass", "reject"]

NON_IDEMPOTENT_MESSAGE = (
    "idemproxy refuses produce requests without a producer id: "
    "enable idempotence in the producer (enable.idempotence=true, acks=all)"
)


class ProduceObserver(Protocol):
    """Counts produce decisions (metrics)."""

    def produce_batch(self, result: Result, records: int) -> None: ...

    def non_idempotent(self, action: Policy) -> None: ...


class Answer(NamedTuple):
    """A partition's answer given by the proxy (a Produce response's partition fields)."""

    error_code: int
    base_offset: int = -1
    log_append_time_ms: int = -1
    log_start_offset: int = -1
    error_message: str | None = None


class Send(NamedTuple):
    """Forward the batch; `ticket` (None when untracked) is owed an outcome by the ledger."""

    ticket: int | None


class Waiter:
    """A batch waiting for the outcome of an identical one in flight."""

    __slots__ = ("answer", "batch", "deadline_ms", "owner", "principal", "records", "ticket", "tp")

    def __init__(
        self,
        owner: int,
        ticket: int,
        tp: TopicPartition,
        batch: BatchFields,
        records: int,
        deadline_ms: int,
        principal: Principal = None,
    ) -> None:
        self.owner = owner  # the connection (session id) to wake
        self.ticket = ticket
        self.tp = tp
        self.batch = batch
        self.records = records
        self.deadline_ms = deadline_ms
        self.principal = principal  # the waiting connection's, the original's too
        self.answer: Answer | None = None


class Wait(NamedTuple):
    waiter: Waiter


Decision = Send | Answer | Wait

_FORWARDED: Send = Send(None)


def _waiter_answer(duplicate: Duplicate | None, outcome: Outcome) -> Answer:
    """The answer for retries that waited on an in-flight original.

    A success answers them as the broker answers a duplicate (the engine's Duplicate). Otherwise
    they get the original's error, or a retriable REQUEST_TIMED_OUT when its fate is unknown: the
    client sends again, and that retry is admitted afresh (and reaches the broker if need be).
    """
    if duplicate is not None:
        return Answer(
            E.NONE, duplicate.base_offset, duplicate.log_append_time_ms, duplicate.log_start_offset
        )
    if isinstance(outcome, Failure):
        return Answer(outcome.error_code)
    return Answer(E.REQUEST_TIMED_OUT)


@mypyc_attr(allow_interpreted_subclasses=True)  # tests record what it decides
class ProduceCoordinator:
    """Shared by every connection: the engine, the non-idempotent policy, and waiting retries."""

    def __init__(
        self,
        engine: IdempotenceEngine,
        *,
        policy: Policy = "stamp",
        observer: ProduceObserver | None = None,
        clock_ms: Callable[[], int],
        inflight_wait_ms: int = 1000,
    ) -> None:
        if inflight_wait_ms < 0:
            raise ValueError("inflight_wait_ms must not be negative")
        self.engine = engine
        self.policy = policy
        self.inflight_wait_ms = inflight_wait_ms
        self.clock_ms = clock_ms
        self._observer = observer
        self._waiters: dict[int, list[Waiter]] = {}

    @property
    def waiting(self) -> int:
        """Batches waiting for an identical one in flight, over all connections."""
        return sum(len(w) for w in self._waiters.values())

    def count(self, result: Result, records: int) -> None:
        if self._observer is not None:
            self._observer.produce_batch(result, records)

    def not_idempotent(self, records: int, *, stamping: bool = False) -> Decision:
        """A batch without a producer id: stamped (the caller does it), passed or rejected.

        Under the stamp policy a batch the proxy cannot stamp passes as it is.
        """
        action: Policy = "stamp" if stamping else "reject" if self.policy == "reject" else "pass"
        if self._observer is not None:
            self._observer.non_idempotent(action)
        if action == "reject":
            self.count("rejected", records)
            return Answer(E.POLICY_VIOLATION, error_message=NON_IDEMPOTENT_MESSAGE)
        self.count("forwarded", records)
        return _FORWARDED

    def untracked(self, records: int) -> Send:
        """A batch the engine cannot judge (no single v2 batch, unknown topic id): forward it."""
        self.count("forwarded", records)
        return _FORWARDED

    def decide(
        self,
        owner: int,
        tp: TopicPartition,
        batch: BatchFields,
        records: int,
        *,
        acks: int,
        valid: Callable[[], bool],
        now_ms: int,
        principal: Principal = None,
    ) -> Decision:
        """What to do with one idempotent batch sent on a connection authenticated as
        `principal`. `valid` runs the broker's own batch checks (CRC-32C, base offset 0), asked
        only before the proxy answers in the broker's place.

        The proxy answers (from memory, or from an identical batch's outcome) only the
        principal whose batches the broker acknowledged (IdempotenceEngine.admit)."""
        decision = self.engine.admit(tp, batch, now_ms, principal=principal)
        deadline = now_ms
        if isinstance(decision, AwaitInflight):
            since = self.engine.admitted_ms(decision.ticket)
            deadline = (now_ms if since is None else since) + self.inflight_wait_ms
            if now_ms >= deadline:
                # The original has been out too long: the broker answers this one itself.
                decision = self.engine.admit(tp, batch, now_ms, coalesce=False, principal=principal)
        if acks == 0:
            # acks=0: no answer goes back and none comes to teach the proxy the outcome, so the
            # batch goes to the broker and, if admitted, counts as an unknown outcome.
            if isinstance(decision, Forward):
                self.engine.complete(decision.ticket, Unknown(), now_ms)
            self.count("forwarded", records)
            return _FORWARDED
        if isinstance(decision, Forward):
            self.count("forwarded", records)
            return Send(decision.ticket)
        if not valid():
            # The broker validates a batch (LogValidator) before it looks for a duplicate or a
            # sequence gap, so a corrupt retry is its to answer.
            if isinstance(decision, AwaitInflight):
                return self.decide_forward(tp, batch, records, now_ms, principal=principal)
            self.count("forwarded", records)
            return _FORWARDED
        if isinstance(decision, Duplicate):
            self.count("duplicate", records)
            return Answer(
                E.NONE, decision.base_offset, decision.log_append_time_ms, decision.log_start_offset
            )
        if isinstance(decision, Reject):
            fenced = decision.error_code == E.INVALID_PRODUCER_EPOCH
            self.count("fenced" if fenced else "out_of_order", records)
            return Answer(decision.error_code)
        waiter = Waiter(owner, decision.ticket, tp, batch, records, deadline, principal)
        self._waiters.setdefault(decision.ticket, []).append(waiter)
        return Wait(waiter)

    def decide_forward(
        self,
        tp: TopicPartition,
        batch: BatchFields,
        records: int,
        now_ms: int,
        *,
        principal: Principal = None,
    ) -> Send:
        """Forward a batch even if an identical one is in flight (the broker deduplicates)."""
        decision = self.engine.admit(tp, batch, now_ms, coalesce=False, principal=principal)
        self.count("forwarded", records)
        return Send(decision.ticket) if isinstance(decision, Forward) else _FORWARDED

    def settle(self, ticket: int, outcome: Outcome, now_ms: int) -> list[Waiter]:
        """Report a forwarded batch's outcome; returns the waiters it resolved (answer set)."""
        duplicate = self.engine.complete(ticket, outcome, now_ms)
        waiters = self._waiters.pop(ticket, None)
        if not waiters:
            return []
        answer = _waiter_answer(duplicate, outcome)
        for waiter in waiters:
            waiter.answer = answer
            self.count("inflight_duplicate", waiter.records)
        return waiters

    def overdue(self, waiters: list[Waiter], now_ms: int) -> list[Waiter]:
        """Of a connection's waiters, detach those past their deadline (the caller forwards)."""
        late = [w for w in waiters if w.answer is None and w.deadline_ms <= now_ms]
        for waiter in late:
            self.unwait(waiter)
        return late

    def unwait(self, waiter: Waiter) -> None:
        """Stop waiting (the connection closed, or the batch is forwarded after all)."""
        same = self._waiters.get(waiter.ticket)
        if same is not None and waiter in same:
            same.remove(waiter)
            if not same:
                del self._waiters[waiter.ticket]

    def observe_log_start_offset(self, tp: TopicPartition, log_start_offset: int) -> None:
        self.engine.observe_log_start_offset(tp, log_start_offset)


class Ledger:
    """The engine tickets one upstream connection owes an outcome: each settled exactly once."""

    __slots__ = ("_coordinator", "_open")

    def __init__(self, coordinator: ProduceCoordinator) -> None:
        self._coordinator = coordinator
        self._open: dict[int, None] = {}

    def __len__(self) -> int:
        return len(self._open)

    def owe(self, ticket: int) -> None:
        self._open[ticket] = None

    def settle(self, ticket: int, outcome: Outcome, now_ms: int) -> list[Waiter]:
        """The broker's answer arrived; a ticket not owed (already settled) is ignored."""
        if ticket not in self._open:
            return []
        del self._open[ticket]
        return self._coordinator.settle(ticket, outcome, now_ms)

    def abandon_all(self, now_ms: int) -> list[Waiter]:
        """No answer will come for anything still owed: every outcome is unknown."""
        woken: list[Waiter] = []
        while self._open:
            ticket = next(iter(self._open))
            del self._open[ticket]
            woken.extend(self._coordinator.settle(ticket, Unknown(), now_ms))
        return woken


def outcome_of(
    error_code: int,
    base_offset: int,
    log_append_time_ms: int,
    log_start_offset: int,
    *,
    acks_all: bool,
) -> Outcome:
    """The engine's outcome for a partition's answer from the broker.

    With acks=1 a write only the leader holds can be truncated after a leader change, so only
    acks=all successes are remembered as written.
    """
    if error_code != E.NONE:
        return Failure(error_code)
    if not acks_all:
        return Unknown()
    return Success(base_offset, log_append_time_ms, log_start_offset)
