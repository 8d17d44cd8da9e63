"""The Produce handler of one connection: the wire view in, the coordinator's decisions out.

Per request: the zero-copy view (proxy.wire.produce) yields each partition's batch header; the
shared coordinator decides forward / answer / wait; the request goes upstream as the same bytes
object when every partition is forwarded, rebuilt from byte ranges when some are not, and not at
all when the proxy answers every partition. Per response: the broker's partition answers settle
the connection's ledger of tickets, and the client's response is the broker's bytes unchanged,
or the broker's partition entries merged with the proxy's answers in request order.
"""

from __future__ import annotations

from collections.abc import Iterable

from proxy.idempotence.coordinator import (
    Answer,
    Decision,
    Ledger,
    Send,
    Wait,
    Waiter,
    outcome_of,
)
from proxy.idempotence.decisions import Unknown
from proxy.routing.handlers import BaseHandler, check_cap
from proxy.routing.rewrite import rewrite_addresses
from proxy.routing.session import Exchange, Output, Session
from proxy.wire import codec
from proxy.wire import error_codes as E
from proxy.wire.apis import ApiKey
from proxy.wire.batch import passes_broker_checks, single_batch_header
from proxy.wire.frames import frame
from proxy.wire.produce import (
    MIN_VERSION,
    PartitionResult,
    ProducePartition,
    ProduceRequestView,
    ProduceResponseView,
    ResponseTopicEntries,
    encode_partition_answer,
    encode_response,
)

_UNTRACKED = Send(None)
_OPAQUE = object()  # tag of a request forwarded without a plan


class _Part:
    """One partition of a client's Produce request and what became of it."""

    __slots__ = ("entry", "local", "p", "sent", "ticket", "waiter")

    def __init__(self, p: ProducePartition) -> None:
        self.p = p
        self.sent = False  # forwarded (in the client's request or, after a wait, one of ours)
        self.ticket: int | None = None
        self.local: Answer | None = None  # answered by the proxy
        self.waiter: Waiter | None = None  # waiting for an identical batch in flight
        self.entry: bytes | None = None  # the broker's encoded answer

    @property
    def done(self) -> bool:
        if self.sent:
            return self.entry is not None
        return self.local is not None or (
            self.waiter is not None and self.waiter.answer is not None
        )


class _Plan:
    __slots__ = ("outstanding", "parts", "passthrough", "responses", "view")

    def __init__(self, view: ProduceRequestView, parts: list[_Part]) -> None:
        self.view = view
        self.parts = parts
        self.outstanding = 0  # requests upstream not answered yet
        self.responses: list[ProduceResponseView] = []
        # The broker's response can go to the client unchanged (every partition forwarded in
        # the client's own request).
        self.passthrough = all(p.sent for p in parts)


class ProduceHandler(BaseHandler):
    """Produce for one connection; its ledger owns every ticket this connection forwarded."""

    def __init__(self, session: Session, cap: int) -> None:
        shared = session.shared
        self._session = session
        self._shared = shared
        self._coord = shared.produce
        self._ledger = Ledger(shared.produce)
        self._cap = cap
        self._held: dict[Waiter, Exchange] = {}
        self._own_correlation = 0

    @property
    def owed(self) -> int:
        """Tickets forwarded on this connection still owed an outcome."""
        return len(self._ledger)

    # -- requests -----------------------------------------------------------

    def request(self, session: Session, exchange: Exchange, body: bytes, out: Output) -> None:
        check_cap(exchange, self._cap)
        if exchange.header.api_version < MIN_VERSION:
            # Produce v0-2 carry magic 0/1 message sets, which have no producer ids (and
            # Kafka 4 brokers refuse them, KIP-896): the broker's to judge, opaque.
            session.forward(exchange, body, out, tag=_OPAQUE)
            return
        view = ProduceRequestView(body, exchange.header.api_version)
        now = self._coord.clock_ms()
        parts = [self._decide(view, _Part(p), now) for p in view.partitions()]
        sent = [part.p for part in parts if part.sent]
        upstream = body if len(sent) == len(parts) else view.rebuild(sent)
        if view.acks == 0:
            # The broker sends nothing back, and neither does the proxy.
            if sent:
                session.forward(exchange, upstream, out, expect_response=False)
            exchange.response = b""
            return
        plan = _Plan(view, parts)
        exchange.state = plan
        for part in parts:
            if part.waiter is not None:
                self._held[part.waiter] = exchange
        if sent:
            plan.outstanding += 1
            session.forward(exchange, upstream, out, tag=None)
        self._finish(exchange, plan)

    def _decide(self, view: ProduceRequestView, part: _Part, now: int) -> _Part:
        records = view.records(part.p)
        header = single_batch_header(records)
        decision: Decision
        if header is None or header.is_control:
            decision = _UNTRACKED  # empty, old-format or multi-batch: the broker's to judge
        elif not header.has_producer_id:
            decision = self._coord.not_idempotent(header.record_count)
        else:
            name = self._name(part.p.topic)
            if name is None:
                decision = self._coord.untracked(header.record_count)
            else:
                decision = self._coord.decide(
                    self._session.session_id,
                    (name, part.p.partition),
                    header,
                    header.record_count,
                    acks=view.acks,
                    valid=lambda: passes_broker_checks(records),
                    now_ms=now,
                )
        if isinstance(decision, Send):
            part.sent = True
            if decision.ticket is not None:
                part.ticket = decision.ticket
                self._ledger.owe(decision.ticket)
        elif isinstance(decision, Wait):
            part.waiter = decision.waiter
        else:
            part.local = decision
        return part

    def _name(self, key: str | bytes) -> str | None:
        """The topic's name: Produce v13 sends its id, known once Metadata named it."""
        return key if isinstance(key, str) else self._shared.topics.name(key)

    # -- responses ----------------------------------------------------------

    def response(
        self, session: Session, exchange: Exchange, body: bytes, tag: object, out: Output
    ) -> None:
        if tag is _OPAQUE:
            exchange.response = frame(body)
            return
        plan: _Plan = exchange.state
        version = exchange.header.api_version
        view = ProduceResponseView(body, version)
        if view.node_endpoints:
            # KIP-951 endpoints (sent with NOT_LEADER_OR_FOLLOWER): rare, so decoded in full.
            decoded = codec.decode_response(ApiKey.PRODUCE, version, body)
            rewrite_addresses(ApiKey.PRODUCE, decoded, self._shared.directory, out.discovered)
            view = ProduceResponseView(codec.encode(decoded), version)
        plan.outstanding -= 1
        plan.responses.append(view)
        results: dict[tuple[str | bytes, int], PartitionResult] = {}
        for result in view.partitions():
            results[(result.topic, result.partition)] = result
            if result.log_start_offset >= 0:
                name = self._name(result.topic)
                if name is not None:
                    self._coord.observe_log_start_offset(
                        (name, result.partition), result.log_start_offset
                    )
        acks_all = plan.view.acks == -1
        now = self._coord.clock_ms()
        answered: Iterable[_Part] = (
            (p for p in plan.parts if p.sent and p.entry is None) if tag is None else tag  # type: ignore[assignment]
        )
        for part in answered:
            r = results.get((part.p.topic, part.p.partition))
            part.entry = (
                view.entry(r)
                if r is not None
                else encode_partition_answer(version, part.p.partition, E.REQUEST_TIMED_OUT)
            )
            if part.ticket is not None:
                outcome = (
                    Unknown()
                    if r is None
                    else outcome_of(
                        r.error_code,
                        r.base_offset,
                        r.log_append_time_ms,
                        r.log_start_offset,
                        acks_all=acks_all,
                    )
                )
                self._wake(self._ledger.settle(part.ticket, outcome, now), out)
                part.ticket = None
        self._finish(exchange, plan)

    # -- waits, wake-ups, timers ----------------------------------------------

    def _wake(self, waiters: list[Waiter], out: Output) -> None:
        """Resolved waiters: this connection's are finished now, others' sessions are woken."""
        for waiter in waiters:
            exchange = self._held.pop(waiter, None)
            if exchange is not None:
                self._finish(exchange, exchange.state)
            elif waiter.owner not in out.woken:
                out.woken.append(waiter.owner)

    def resume(self, out: Output) -> None:
        """Waiters resolved from another connection: finish their exchanges."""
        for waiter in [w for w in self._held if w.answer is not None]:
            exchange = self._held.pop(waiter)
            self._finish(exchange, exchange.state)

    def next_deadline(self) -> int | None:
        return min((w.deadline_ms for w in self._held), default=None)

    def on_timer(self, now_ms: int, out: Output) -> None:
        self.resume(out)
        late = self._coord.overdue(list(self._held), now_ms)
        by_exchange: dict[Exchange, list[_Part]] = {}
        for waiter in late:
            exchange = self._held.pop(waiter)
            plan: _Plan = exchange.state
            part = next(p for p in plan.parts if p.waiter is waiter)
            by_exchange.setdefault(exchange, []).append(part)
        for exchange, parts in by_exchange.items():
            self._forward_late(exchange, parts, now_ms, out)

    def _forward_late(
        self, exchange: Exchange, parts: list[_Part], now_ms: int, out: Output
    ) -> None:
        """Retries whose original stayed in flight too long: to the broker, which deduplicates."""
        plan: _Plan = exchange.state
        session = self._session
        for part in parts:
            waiter = part.waiter
            assert waiter is not None
            part.waiter = None
            part.sent = True
            decision = self._coord.decide_forward(waiter.tp, waiter.batch, waiter.records, now_ms)
            if decision.ticket is not None:
                part.ticket = decision.ticket
                self._ledger.owe(decision.ticket)
        self._own_correlation -= 1
        body = plan.view.rebuild([p.p for p in parts], correlation_id=self._own_correlation)
        plan.outstanding += 1
        plan.passthrough = False
        session.forward(exchange, body, out, correlation_id=self._own_correlation, tag=parts)

    def close(self, out: Output) -> None:
        for waiter in self._held:
            self._coord.unwait(waiter)
        self._held.clear()
        self._wake(self._ledger.abandon_all(self._coord.clock_ms()), out)

    # -- the client's response ------------------------------------------------

    def _finish(self, exchange: Exchange, plan: _Plan) -> None:
        if plan.outstanding or exchange.response is not None:
            return
        if not all(part.done for part in plan.parts):
            return
        if plan.passthrough and len(plan.responses) == 1:
            exchange.response = frame(plan.responses[0].body)
            return
        exchange.response = frame(self._merge(exchange, plan))

    def _merge(self, exchange: Exchange, plan: _Plan) -> bytes:
        view = plan.view
        version = view.version
        broker_tags: dict[str | bytes, bytes] = {}
        for response in plan.responses:
            for answered in response.topics:
                broker_tags.setdefault(
                    answered.key, response.body[answered.tags_start : answered.tags_end]
                )
        topics: list[ResponseTopicEntries] = []
        parts = iter(plan.parts)
        for topic in view.topics:
            entries = [self._entry(version, next(parts)) for _ in topic.partitions]
            topics.append(
                ResponseTopicEntries(
                    view.body[topic.key_start : topic.key_end],
                    entries,
                    broker_tags.get(topic.key, b"\x00"),
                )
            )
        throttle = max((r.throttle_time_ms for r in plan.responses), default=0)
        tail = plan.responses[0].tail() if plan.responses else b""
        return encode_response(version, exchange.header.correlation_id, topics, throttle, tail)

    @staticmethod
    def _entry(version: int, part: _Part) -> bytes:
        if part.entry is not None:
            return part.entry
        answer = part.local
        if answer is None and part.waiter is not None:
            answer = part.waiter.answer
        if answer is None:  # pragma: no cover - _finish waits for every answer
            answer = Answer(E.REQUEST_TIMED_OUT)
        return encode_partition_answer(
            version,
            part.p.partition,
            answer.error_code,
            answer.base_offset,
            answer.log_append_time_ms,
            answer.log_start_offset,
            answer.error_message,
        )
