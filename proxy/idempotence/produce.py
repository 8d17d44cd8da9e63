"""Produce requests through the idempotence engine: what to forward, what to answer here.

Pure: a decoded ProduceRequest goes in, a plan comes out (the partitions to
forward, the answers the proxy gives itself); the broker's response goes in,
the client's response comes out with the local answers merged in request order.
A request whose partitions all go to the broker is forwarded byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from kafka.record.util import calc_crc32c  # the C crc32c package when installed

from proxy.errors import DecodeError
from proxy.idempotence.engine import (
    AwaitInflight,
    BatchIdentity,
    Duplicate,
    Failure,
    Forward,
    IdempotenceEngine,
    NotIdempotent,
    Outcome,
    Reject,
    Success,
    Unknown,
)
from proxy.wire import codec
from proxy.wire.apis import ApiKey
from proxy.wire.batch import HEADER_SIZE, read_batch_header

# org.apache.kafka.common.protocol.Errors
NONE = 0
REQUEST_TIMED_OUT = 7
POLICY_VIOLATION = 44
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47

NON_IDEMPOTENT_MESSAGE = (
    "idemproxy refuses produce requests without a producer id: "
    "enable idempotence in the producer (enable.idempotence=true, acks=all)"
)

Result = Literal[
    "forwarded", "duplicate", "inflight_duplicate", "out_of_order", "fenced", "rejected"
]
Policy = Literal["pass", "reject"]


class ProduceObserver(Protocol):
    """Counts produce decisions (metrics)."""

    def produce_batch(self, result: Result, records: int) -> None: ...

    def non_idempotent(self, action: Policy) -> None: ...


@dataclass(slots=True)
class _Answer:
    error_code: int = NONE
    base_offset: int = -1
    log_append_time_ms: int = -1
    log_start_offset: int = -1
    error_message: str | None = None


@dataclass(slots=True)
class _Partition:
    topic: Any  # name (v3-12) or topic id (v13)
    index: int
    ticket: int | None = None  # set when forwarded through the engine
    forwarded: bool = False
    answer: _Answer | None = None  # set when answered here (or resolved from an in-flight original)
    waiting_on: int | None = None


@dataclass(slots=True)
class ProducePlan:
    """How one ProduceRequest is handled."""

    request: Any
    partitions: list[_Partition]
    upstream_body: bytes | None  # what to send the broker; None when answered wholly here
    expects_response: bool
    waits: int = 0  # partitions still waiting for an in-flight original's outcome
    upstream_response: Any = None
    upstream_done: bool = False
    on_ready: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def ready(self) -> bool:
        return self.waits == 0 and (self.upstream_body is None or self.upstream_done)


def _waiter_answer(duplicate: Duplicate | None, outcome: Outcome) -> _Answer:
    """The answer for retries that waited on an in-flight original.

    A success answers them as the broker answers a duplicate (the engine's Duplicate). Otherwise
    they get the original's error, or a retriable REQUEST_TIMED_OUT when its fate is unknown: the
    client sends again, and that retry is admitted afresh (and reaches the broker if need be).
    """
    if duplicate is not None:
        return _Answer(
            NONE, duplicate.base_offset, duplicate.log_append_time_ms, duplicate.log_start_offset
        )
    if isinstance(outcome, Failure):
        return _Answer(outcome.error_code)
    return _Answer(REQUEST_TIMED_OUT)


def _valid_as_broker_checks(records: bytes) -> bool:
    """The v2 batch checks LogValidator makes before producer state: base offset 0, CRC-32C."""
    (base_offset,) = struct.unpack_from(">q", records, 0)
    (crc,) = struct.unpack_from(">I", records, 17)
    return bool(base_offset == 0 and calc_crc32c(memoryview(records)[21:]) == crc)


class ProduceCoordinator:
    """Shared by every connection: the engine, and the retries waiting on in-flight originals."""

    def __init__(
        self,
        engine: IdempotenceEngine,
        *,
        policy: Policy = "pass",
        observer: ProduceObserver | None = None,
        clock_ms: Callable[[], int],
    ) -> None:
        self.engine = engine
        self.policy = policy
        self._observer = observer
        self._clock_ms = clock_ms
        self._waiters: dict[int, list[Callable[[_Answer], None]]] = {}

    def _count(self, result: Result, records: int) -> None:
        if self._observer is not None:
            self._observer.produce_batch(result, records)

    def plan(self, version: int, body: bytes) -> ProducePlan:
        """Decide, partition by partition, what the broker must see of this request."""
        request = codec.decode_request(ApiKey.PRODUCE, version, body)
        expects_response = request.acks != 0
        partitions: list[_Partition] = []
        now = self._clock_ms()
        any_local = False
        kept_topics = []
        for topic in request.topic_data:
            topic_key = topic.topic_id if version >= 13 else topic.name
            kept = []
            for data in topic.partition_data:
                part = _Partition(topic_key, data.index)
                partitions.append(part)
                self._decide(part, str(topic_key), data.records, now, expects_response)
                if part.forwarded:
                    kept.append(data)
                else:
                    any_local = True
            if kept:
                topic.partition_data = kept
                kept_topics.append(topic)
        if not any_local:
            upstream_body: bytes | None = body
        elif kept_topics:
            request.topic_data = kept_topics
            upstream_body = codec.encode(request)
        else:
            upstream_body = None
        plan = ProducePlan(request, partitions, upstream_body, expects_response)
        for part in partitions:
            if part.waiting_on is not None:
                plan.waits += 1
                self._waiters.setdefault(part.waiting_on, []).append(_resolver(plan, part))
        return plan

    def _decide(
        self, part: _Partition, topic: str, records: bytes | None, now: int, acks: bool
    ) -> None:
        try:
            header = read_batch_header(records) if records else None
        except DecodeError:
            header = None  # not a v2 batch (magic 0/1 message sets): the broker's to judge
        if header is None or header.is_control or header.batch_length + 12 != len(records or b""):
            # Empty, control, old-format or multi-batch record sets are the broker's to judge.
            part.forwarded = True
            return
        if not header.has_producer_id:
            if self.policy == "reject":
                part.answer = _Answer(POLICY_VIOLATION, error_message=NON_IDEMPOTENT_MESSAGE)
                self._count("rejected", header.record_count)
            else:
                part.forwarded = True
                self._count("forwarded", header.record_count)
            if self._observer is not None:
                self._observer.non_idempotent(self.policy)
            return
        identity = BatchIdentity(
            producer_id=header.producer_id,
            producer_epoch=header.producer_epoch,
            base_sequence=header.base_sequence,
            last_sequence=header.last_sequence,
            record_count=header.record_count,
            max_timestamp=header.max_timestamp,
            transactional=header.is_transactional,
        )
        decision = self.engine.admit((topic, part.index), identity, now)
        records_n = header.record_count
        if not acks:
            # acks=0: no answer goes back and none comes to teach the proxy the outcome, so the
            # batch goes to the broker and, if admitted, counts as an unknown outcome.
            if isinstance(decision, Forward):
                self.engine.complete(decision.ticket, Unknown(), now)
            part.forwarded = True
            self._count("forwarded", records_n)
            return
        if not isinstance(decision, Forward) and not _valid_as_broker_checks(records or b""):
            # The broker validates a batch (LogValidator: CRC-32C, base offset 0) before it looks
            # for a duplicate or a sequence gap, so a corrupt retry is its to answer.
            part.forwarded = True
            self._count("forwarded", records_n)
            return
        if isinstance(decision, Forward):
            part.forwarded = True
            part.ticket = decision.ticket
            self._count("forwarded", records_n)
        elif isinstance(decision, Duplicate):
            part.answer = _Answer(
                NONE, decision.base_offset, decision.log_append_time_ms, decision.log_start_offset
            )
            self._count("duplicate", records_n)
        elif isinstance(decision, AwaitInflight):
            part.waiting_on = decision.ticket
            self._count("inflight_duplicate", records_n)
        elif isinstance(decision, Reject):
            part.answer = _Answer(decision.error_code)
            fenced = decision.error_code == INVALID_PRODUCER_EPOCH
            self._count("fenced" if fenced else "out_of_order", records_n)
        elif isinstance(decision, NotIdempotent):  # pragma: no cover - handled above
            part.forwarded = True

    def complete(self, plan: ProducePlan, response: Any | None) -> None:
        """Learn the broker's outcome for every partition this plan forwarded.

        response None means the outcome is unknown (the upstream connection was lost).
        """
        outcomes: dict[tuple[Any, int], Any] = {}
        if response is not None:
            version = plan.request.version
            for topic in response.responses:
                key = topic.topic_id if version >= 13 else topic.name
                for part in topic.partition_responses:
                    outcomes[(key, part.index)] = part
                    if part.log_start_offset >= 0:
                        self.engine.observe_log_start_offset(
                            (str(key), part.index), part.log_start_offset
                        )
        now = self._clock_ms()
        # With acks=1 a write only the leader holds can be truncated after a leader change,
        # so only acks=all successes are remembered as written.
        certain = plan.request.acks == -1
        for part in plan.partitions:
            if part.ticket is None:
                continue
            ticket, part.ticket = part.ticket, None
            got = outcomes.get((part.topic, part.index))
            outcome: Outcome
            if got is None:
                outcome = Unknown()
            elif got.error_code == NONE:
                outcome = (
                    Success(got.base_offset, got.log_append_time_ms, got.log_start_offset)
                    if certain
                    else Unknown()
                )
            else:
                outcome = Failure(got.error_code)
            duplicate = self.engine.complete(ticket, outcome, now)
            answer = _waiter_answer(duplicate, outcome)
            for resolve in self._waiters.pop(ticket, ()):
                resolve(answer)
        plan.upstream_response = response
        plan.upstream_done = True

    def abandon(self, plan: ProducePlan) -> None:
        """The broker's answer will never come: every forwarded partition's outcome is unknown."""
        self.complete(plan, None)


def _resolver(plan: ProducePlan, part: _Partition) -> Callable[[_Answer], None]:
    def resolve(answer: _Answer) -> None:
        part.answer = answer
        part.waiting_on = None
        plan.waits -= 1
        if plan.ready and plan.on_ready is not None:
            plan.on_ready()

    return resolve


def build_response(plan: ProducePlan, correlation_id: int) -> bytes | None:
    """The client's response body: the broker's answers merged with the proxy's, in request order.

    Returns None when the broker's response body can be passed on unchanged.
    """
    upstream = plan.upstream_response
    if upstream is not None and all(p.forwarded for p in plan.partitions):
        return None
    version = plan.request.version
    cls = codec.response_class(ApiKey.PRODUCE)
    topic_cls = cls.TopicProduceResponse
    part_cls = topic_cls.PartitionProduceResponse
    from_broker: dict[tuple[Any, int], Any] = {}
    if upstream is not None:
        for topic in upstream.responses:
            key = topic.topic_id if version >= 13 else topic.name
            for part in topic.partition_responses:
                from_broker[(key, part.index)] = part
    topics: list[Any] = []
    by_key: dict[Any, Any] = {}
    for part in plan.partitions:
        entry = by_key.get(part.topic)
        if entry is None:
            if version >= 13:
                entry = topic_cls(topic_id=part.topic, partition_responses=[])
            else:
                entry = topic_cls(name=part.topic, partition_responses=[])
            by_key[part.topic] = entry
            topics.append(entry)
        broker_part = from_broker.get((part.topic, part.index)) if part.forwarded else None
        if broker_part is not None:
            entry.partition_responses.append(broker_part)
            continue
        answer = part.answer or _Answer(REQUEST_TIMED_OUT)
        entry.partition_responses.append(
            part_cls(
                index=part.index,
                error_code=answer.error_code,
                base_offset=answer.base_offset,
                log_append_time_ms=answer.log_append_time_ms,
                log_start_offset=answer.log_start_offset,
                record_errors=[],
                error_message=answer.error_message,
            )
        )
    response = cls[version](
        responses=topics,
        throttle_time_ms=upstream.throttle_time_ms if upstream is not None else 0,
    )
    if version >= 10:
        response.node_endpoints = list(upstream.node_endpoints) if upstream is not None else []
    response.with_header(correlation_id=correlation_id)
    return codec.encode(response)


__all__ = [
    "HEADER_SIZE",
    "ProduceCoordinator",
    "ProducePlan",
    "build_response",
]
