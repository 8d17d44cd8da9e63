"""The Produce handler of one connection: the wire view in, the coordinator's decisions out.

Per request: the zero-copy view (proxy.wire.produce) yields each partition's batch header; the
shared coordinator decides forward / answer / wait; the request goes upstream as the same bytes
object when every partition is forwarded, rebuilt from byte ranges when some are not, and not at
all when the proxy answers every partition. Per response: the broker's partition answers settle
the connection's ledger of tickets, and the client's response is the broker's bytes unchanged,
or the broker's partition entries merged with the proxy's answers in request order.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Iterable

from proxy.errors import DecodeError
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
from proxy.idempotence.stamping import (
    SEQUENCE_ERRORS,
    ClientKey,
    Copy,
    PartPlan,
    Sent,
    Stamper,
    client_id_of,
    client_key,
)
from proxy.routing.handlers import BaseHandler, check_cap
from proxy.routing.rewrite import rewrite_addresses
from proxy.routing.session import Exchange, Output, Session
from proxy.wire import codec
from proxy.wire import error_codes as E
from proxy.wire.apis import ApiKey
from proxy.wire.batch import HEADER_SIZE, passes_broker_checks, single_batch_header
from proxy.wire.frames import frame
from proxy.wire.headers import peek_client_id
from proxy.wire.produce import (
    MIN_VERSION,
    PartitionResult,
    ProducePartition,
    ProduceRequestView,
    ProduceResponseView,
    ResponseTopicEntries,
    encode_partition_answer,
    encode_response,
    opaque_produce_acks,
)
from proxy.wire.producer_ids import (
    init_producer_id_answer,
    init_producer_id_request,
    pick_version,
)

log = logging.getLogger("idemproxy.produce")
_PRODUCER_ID = struct.Struct(">q")

_UNTRACKED = Send(None)
_OPAQUE = object()  # tag of a request forwarded without a plan


class _AskPid:
    """Tag of the proxy's own InitProducerId request."""

    __slots__ = ("client", "version")

    def __init__(self, client: ClientKey, version: int) -> None:
        self.client = client
        self.version = version


class _Resends:
    """Tag of one of the proxy's own requests resending kept stamped batches."""

    __slots__ = ("round",)

    def __init__(self, round_: list[tuple[_Part, Sent]]) -> None:
        self.round = round_


class _Part:
    """One partition of a client's Produce request and what became of it."""

    __slots__ = ("entry", "late", "local", "p", "records", "sent", "stamp", "ticket", "waiter")

    def __init__(self, p: ProducePartition) -> None:
        self.p = p
        self.stamp: PartPlan | None = None  # a non-idempotent client's batch, stamped
        self.records: bytes | None = None  # what goes upstream instead of the client's records
        self.sent = False  # forwarded (in the client's request or, after a wait, one of ours)
        self.late = False  # forwarded after a wait, in a request of the proxy's own
        self.ticket: int | None = None
        self.local: Answer | None = None  # answered by the proxy
        self.waiter: Waiter | None = None  # waiting for an identical batch in flight
        self.entry: bytes | None = None  # the broker's encoded answer

    @property
    def done(self) -> bool:
        if self.stamp is not None:
            return self.stamp.settled
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
        self.passthrough = all(p.sent and (p.stamp is None or p.stamp.simple) for p in parts)


class ProduceHandler(BaseHandler):
    """Produce for one connection; its ledger owns every ticket this connection forwarded."""

    def __init__(self, session: Session, cap: int) -> None:
        shared = session.shared
        self._session = session
        self._shared = shared
        self._coord = shared.produce
        self._stamper: Stamper | None = shared.stamper
        self._ledger = Ledger(shared.produce)
        self._cap = cap
        self._held: dict[Waiter, Exchange] = {}
        self._own_correlation = 0
        # Stamping (non-idempotent clients): requests held until the client id has a
        # producer id, stamped batches in flight here, and recent successes (ack grace).
        self._pid_wait: deque[tuple[Exchange, ProduceRequestView, ClientKey]] = deque()
        self._stamped: dict[Sent, None] = {}
        self._unanswered: dict[PartPlan, None] = {}  # stamped plans the client awaits
        # Exchanges with stamped parts not answered yet: a part may wait for batches another
        # exchange of this connection resends, so every stamped answer re-checks them.
        self._stamp_open: dict[Exchange, None] = {}
        self._recent: deque[tuple[int, list[Sent | Copy]]] = deque()

    @property
    def owed(self) -> int:
        """Tickets forwarded on this connection still owed an outcome."""
        return len(self._ledger)

    # -- requests -----------------------------------------------------------

    def request(self, session: Session, exchange: Exchange, body: bytes, out: Output) -> None:
        check_cap(exchange, self._cap)
        if exchange.header.api_version < MIN_VERSION:
            # Produce v0-2 carry magic 0/1 message sets, which have no producer ids (and
            # Kafka 4 brokers refuse them, KIP-896): the broker's to judge, opaque but for
            # acks (int16 right after the v1 header), which says whether an answer comes.
            acks = opaque_produce_acks(body)
            session.forward(exchange, body, out, tag=_OPAQUE, expect_response=acks != 0)
            if acks == 0:
                exchange.response = b""
            return
        view = ProduceRequestView(body, exchange.header.api_version)
        client: ClientKey = ""
        if self._stamper is not None:
            client = client_key(session.principal, session.session_id, peek_client_id(body))
        self._admit(exchange, view, client, out)

    def _admit(
        self, exchange: Exchange, view: ProduceRequestView, client: ClientKey, out: Output
    ) -> None:
        """Process the request now, or hold it (in order) until the client id has a producer
        id to stamp with."""
        if self._pid_wait or (
            self._needs_pid(view, client) and self._ask_pid(exchange, client, out)
        ):
            self._pid_wait.append((exchange, view, client))
            return
        self._process(exchange, view, client, out)

    def _needs_pid(self, view: ProduceRequestView, client: ClientKey) -> bool:
        stamper = self._stamper
        if stamper is None or view.acks == 0 or stamper.producer_id(client) is not None:
            return False
        if not stamper.stamps(client, self._coord.clock_ms()):
            return False
        body = view.body
        for p in view.partitions():
            # producerId int64 @43 of the batch: -1 without idempotence (batch.py's layout);
            # read alone, as idempotent clients pass here on every request.
            if p.records_end - p.records_start >= HEADER_SIZE:
                (producer_id,) = _PRODUCER_ID.unpack_from(body, p.records_start + 43)
                if producer_id < 0:
                    return True
        return False

    def _ask_pid(self, exchange: Exchange, client: ClientKey, out: Output) -> bool:
        """Send the proxy's InitProducerId; False when the broker has no version for it."""
        version = pick_version(self._session.broker_versions.get(ApiKey.INIT_PRODUCER_ID))
        if version is None:
            assert self._stamper is not None
            self._stamper.refused(client, self._coord.clock_ms())
            return False
        self._own_correlation -= 1
        body = init_producer_id_request(version, self._own_correlation, client_id_of(client))
        self._session.forward(
            exchange,
            body,
            out,
            correlation_id=self._own_correlation,
            tag=_AskPid(client, version),
        )
        return True

    def _pid_answer(self, tag: _AskPid, body: bytes, out: Output) -> None:
        stamper = self._stamper
        assert stamper is not None
        now = self._coord.clock_ms()
        try:
            answer = init_producer_id_answer(tag.version, body)
        except DecodeError as exc:
            log.warning("undecodable InitProducerId answer", extra={"reason": str(exc)})
            stamper.refused(tag.client, now)
        else:
            if answer.error_code == E.NONE:
                stamper.granted(tag.client, answer.producer_id)
            else:
                log.warning(
                    "the broker refused a producer id: the client's batches pass unstamped",
                    extra={"client_id": client_id_of(tag.client), "error_code": answer.error_code},
                )
                stamper.refused(tag.client, now)
        waiting = self._pid_wait
        self._pid_wait = deque()
        for exchange, view, client in waiting:
            self._admit(exchange, view, client, out)

    def _process(
        self, exchange: Exchange, view: ProduceRequestView, client: ClientKey, out: Output
    ) -> None:
        session = self._session
        body = view.body
        now = self._coord.clock_ms()
        parts = [self._decide(view, _Part(p), client, now) for p in view.partitions()]
        sent = [part.p for part in parts if part.sent]
        replaced = {part.p: part.records for part in parts if part.records is not None}
        if len(sent) == len(parts):
            upstream = view.with_records(replaced) if replaced else body
        else:
            upstream = view.rebuild(sent, records=replaced)
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
        if any(part.stamp is not None for part in parts):
            self._stamp_open[exchange] = None
        self._send_resends(exchange, plan, out)
        if sent:
            plan.outstanding += 1
            session.forward(exchange, upstream, out, tag=None)
        self._finish(exchange, plan)

    def _send_resends(self, exchange: Exchange, plan: _Plan, out: Output) -> None:
        """Kept stamped batches go first, one request per round (one batch per partition),
        on this connection, so the broker has them before the client's new records."""
        rounds: list[list[tuple[_Part, Sent]]] = []
        for part in plan.parts:
            if part.stamp is None:
                continue
            for i, sent in enumerate(part.stamp.resend):
                if i == len(rounds):
                    rounds.append([])
                rounds[i].append((part, sent))
        for round_ in rounds:
            self._own_correlation -= 1
            body = plan.view.rebuild(
                [part.p for part, _ in round_],
                correlation_id=self._own_correlation,
                records={part.p: sent.batch for part, sent in round_},
            )
            plan.outstanding += 1
            self._session.forward(
                exchange, body, out, correlation_id=self._own_correlation, tag=_Resends(round_)
            )

    def _decide(self, view: ProduceRequestView, part: _Part, client: ClientKey, now: int) -> _Part:
        records = view.records(part.p)
        header = single_batch_header(records)
        decision: Decision | None
        if header is None or header.is_control:
            decision = _UNTRACKED  # empty, old-format or multi-batch: the broker's to judge
        elif not header.has_producer_id:
            decision = self._not_idempotent(view, part, client, records, header.record_count, now)
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
                    principal=self._session.principal,
                )
        if isinstance(decision, Send):
            part.sent = True
            if decision.ticket is not None:
                part.ticket = decision.ticket
                self._ledger.owe(decision.ticket)
        elif isinstance(decision, Wait):
            part.waiter = decision.waiter
        elif decision is not None:
            part.local = decision
        return part

    def _not_idempotent(
        self,
        view: ProduceRequestView,
        part: _Part,
        client: ClientKey,
        records: memoryview,
        count: int,
        now: int,
    ) -> Decision | None:
        """A batch without a producer id: stamped when the proxy can, else pass or reject.

        Not stamped: acks=0 (no answer would tell the proxy the outcome, and the broker closes
        the connection on a sequence error), a client id without a producer id (refused), a
        v13 topic id no Metadata named, and a batch the broker will refuse anyway (CRC or base
        offset wrong: stamping would recompute its CRC and hide the corruption).
        """
        stamper = self._stamper
        name = self._name(part.p.topic)
        if (
            stamper is None
            or view.acks == 0
            or name is None
            or stamper.producer_id(client) is None
            or not passes_broker_checks(records)
        ):
            return self._coord.not_idempotent(count, stamping=False)
        self._coord.not_idempotent(count, stamping=True)
        plan = stamper.plan(
            client, (name, part.p.partition), records, count, now, inflight_here=self._stamped
        )
        part.stamp = plan
        self._unanswered[plan] = None
        for sent in plan.resend:
            self._stamped[sent] = None
        if plan.send is not None:
            self._stamped[plan.send] = None
        if plan.send is not None:
            part.sent = True
            part.records = plan.send.batch
        return None

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
        if isinstance(tag, _AskPid):
            self._pid_answer(tag, body, out)
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
        if isinstance(tag, _Resends):
            for part, sent in tag.round:
                r = results.get((part.p.topic, part.p.partition))
                self._settle_stamped(sent, r, now)
            self._finish(exchange, plan)
            self._recheck()
            return
        # The client's own request carried the parts sent at once; a late part has its own
        # request and is settled only by that request's answer.
        answered: Iterable[_Part] = (
            (p for p in plan.parts if p.sent and not p.late) if tag is None else tag  # type: ignore[assignment]
        )
        for part in answered:
            r = results.get((part.p.topic, part.p.partition))
            if part.stamp is not None:
                assert part.stamp.send is not None
                self._settle_stamped(part.stamp.send, r, now)
                if r is not None and part.stamp.simple and r.error_code not in SEQUENCE_ERRORS:
                    part.entry = view.entry(r)  # the broker's answer is the client's
                else:
                    plan.passthrough = False
                continue
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
        if self._stamp_open:
            self._recheck()

    def _recheck(self) -> None:
        for exchange in list(self._stamp_open):
            self._finish(exchange, exchange.state)

    def _settle_stamped(self, sent: Sent, r: PartitionResult | None, now: int) -> None:
        assert self._stamper is not None
        self._stamped.pop(sent, None)
        if r is None:
            self._stamper.lost(sent, now)
        else:
            self._stamper.settle(sent, r.error_code, r.base_offset, now)

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
            part.late = True
            decision = self._coord.decide_forward(
                waiter.tp, waiter.batch, waiter.records, now_ms, principal=waiter.principal
            )
            if decision.ticket is not None:
                part.ticket = decision.ticket
                self._ledger.owe(decision.ticket)
        self._own_correlation -= 1
        body = plan.view.rebuild([p.p for p in parts], correlation_id=self._own_correlation)
        plan.outstanding += 1
        plan.passthrough = False
        session.forward(exchange, body, out, correlation_id=self._own_correlation, tag=parts)

    def close(self, out: Output) -> None:
        now = self._coord.clock_ms()
        for waiter in self._held:
            self._coord.unwait(waiter)
        self._held.clear()
        self._wake(self._ledger.abandon_all(now), out)
        self._pid_wait.clear()
        self.client_gone(out)

    def client_gone(self, out: Output) -> None:
        """Whatever the client was not answered, or may not have read, comes into doubt now:
        it may retry on a new connection before this one's upstream has drained."""
        stamper = self._stamper
        if stamper is not None:
            now = self._coord.clock_ms()
            for sent in self._stamped:
                stamper.lost(sent, now)
            self._stamped.clear()
            # Retries recognised but never answered: still in doubt.
            for plan in self._unanswered:
                stamper.in_doubt(plan.matched, now)
            self._unanswered.clear()
            self._stamp_open.clear()
            # Successes written shortly before the connection ended may not have been read.
            grace = now - stamper.ack_grace_ms
            for at, items in self._recent:
                if at >= grace:
                    stamper.in_doubt(items, now)
            self._recent.clear()

    # -- the client's response ------------------------------------------------

    def _finish(self, exchange: Exchange, plan: _Plan) -> None:
        if plan.outstanding or exchange.response is not None:
            return
        if not all(part.done for part in plan.parts):
            return
        if plan.passthrough and len(plan.responses) == 1:
            exchange.response = frame(plan.responses[0].body)
        else:
            exchange.response = frame(self._merge(exchange, plan))
        if self._stamper is not None:
            self._stamp_open.pop(exchange, None)
            self._answered(plan)

    def _answered(self, plan: _Plan) -> None:
        """The client has its answer: records it was told failed for come into doubt, and
        successes are remembered for the ack grace (a close right after puts them in doubt)."""
        stamper = self._stamper
        assert stamper is not None
        now = self._coord.clock_ms()
        ok: list[Sent | Copy] = []
        for part in plan.parts:
            if part.stamp is not None:
                ok.extend(
                    stamper.answered(part.stamp, stamper.answer(part.stamp).error_code == 0, now)
                )
        if ok:
            recent = self._recent
            recent.append((now, ok))
            horizon = now - stamper.ack_grace_ms
            while recent[0][0] < horizon:
                recent.popleft()

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

    def _entry(self, version: int, part: _Part) -> bytes:
        if part.entry is not None:
            return part.entry
        if part.stamp is not None:
            assert self._stamper is not None
            told = self._stamper.answer(part.stamp)
            return encode_partition_answer(
                version,
                part.p.partition,
                told.error_code,
                told.base_offset,
                error_message=told.error_message,
            )
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
