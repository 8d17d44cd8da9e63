"""The produce path through the sans-I/O session and a shared ProduceCoordinator.

Playbook style (as mitmproxy's layer tests): the client sends X -> the upstream receives Y;
the upstream replies Z -> the client receives W. Several sessions share one coordinator, as
the client connections of one proxy do; a response completed from another connection
is delivered as the server does: the output names the woken session, whose `resume()` output
goes to its own client.
"""

from __future__ import annotations

import struct
import uuid
from typing import Any

import pytest
from kafka.record.legacy_records import LegacyRecordBatchBuilder

from proxy.address import Address
from proxy.errors import DecodeError, FrameError
from proxy.idempotence.coordinator import Policy, ProduceCoordinator
from proxy.idempotence.engine import IdempotenceEngine
from proxy.routing.directory import BrokerDirectory
from proxy.routing.session import Output, Session, Shared
from proxy.wire.error_codes import (
    INVALID_PRODUCER_EPOCH,
    NONE,
    OUT_OF_ORDER_SEQUENCE_NUMBER,
    POLICY_VIOLATION,
    REQUEST_TIMED_OUT,
)
from proxy.wire.frames import frame

from ._support import (
    BATCH_TIMESTAMP,
    PartitionAnswer,
    ProduceCounts,
    TopicRecords,
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

PID = 4242
OTHER_PID = 777
NOW_MS = BATCH_TIMESTAMP + 60_000  # a minute after the records were stamped
V = 9  # default Produce version: topic names, error_message, no tagged fields
NOT_LEADER_OR_FOLLOWER = 6
CORRUPT_MESSAGE = 2
INVALID_RECORD = 87
NOT_ENOUGH_REPLICAS = 19


class Clock:
    """Wall-clock milliseconds the tests move by hand."""

    def __init__(self, ms: int = NOW_MS) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


class Proxy:
    """One coordinator (and engine) shared by every connection; delivers wake-ups as the
    server does (the woken session's `resume()` output goes to its own client)."""

    def __init__(
        self,
        *,
        policy: Policy = "pass",
        engine: IdempotenceEngine | None = None,
        inflight_wait_ms: int = 60_000,
    ):
        self.clock = Clock()
        self.engine = engine or IdempotenceEngine()
        self.counts = ProduceCounts()
        self.coordinator = ProduceCoordinator(
            self.engine,
            policy=policy,
            observer=self.counts,
            clock_ms=self.clock,
            inflight_wait_ms=inflight_wait_ms,
        )
        self.directory = BrokerDirectory(advertised_host="proxy", port_base=9100)
        self.shared = Shared(self.directory, self.coordinator)
        self.conns: dict[int, Conn] = {}
        # Clients learn topic ids from Metadata, which passes the proxy (Produce v13 uses them).
        self.learn_topics({name: topic_id(name) for name in ("orders", "audit")})

    def learn_topics(self, topics: dict[str, uuid.UUID]) -> None:
        conn = self.connect()
        metadata_exchange_for(conn.session, topics)
        conn.close()

    def connect(self) -> Conn:
        conn = Conn(self, len(self.conns) + 1)
        self.conns[conn.session.session_id] = conn
        return conn

    def deliver(self, out: Output) -> Output:
        for session_id in out.woken:
            woken = self.conns[session_id]
            woken.later.extend(woken.session.resume().client)
        return out


class Conn:
    """One client connection: its session and what it received outside receive_*."""

    def __init__(self, proxy: Proxy, session_id: int) -> None:
        self.proxy = proxy
        self.later: list[bytes] = []
        self.session = Session(proxy.shared, session_id=session_id)

    def send(self, request: Any, correlation_id: int) -> tuple[bytes, Output]:
        """Client -> proxy; returns the request body and what the session transmits."""
        body = encode_request(request, correlation_id)
        return body, self.proxy.deliver(self.session.receive_client(frame(body)))

    def reply(self, response: Any, correlation_id: int) -> tuple[bytes, Output]:
        """Broker -> proxy; returns the response body and what the session transmits."""
        body = encode_response(response, correlation_id)
        return body, self.proxy.deliver(self.session.receive_upstream(frame(body)))

    def close(self) -> Output:
        return self.proxy.deliver(self.session.close())

    def later_bodies(self) -> list[bytes]:
        return client_frames(Output(client=self.later))


def one(topic: str, partition: int, records: bytes | None) -> TopicRecords:
    return [(topic, [(partition, records)])]


def ok(index: int, base_offset: int, *, lat: int = -1, lso: int = 0) -> PartitionAnswer:
    return PartitionAnswer(index, NONE, base_offset, lat, lso)


def failed(index: int, error_code: int) -> PartitionAnswer:
    return PartitionAnswer(index, error_code)


def acknowledge(
    conn: Conn,
    batch: bytes,
    base_offset: int,
    *,
    correlation_id: int = 1,
    topic: str = "orders",
    partition: int = 0,
    version: int = V,
    lat: int = -1,
    lso: int = 0,
) -> None:
    """A first send the broker acknowledges: forwarded as is, the answer passed on as is."""
    body, sent = conn.send(
        produce_request_with(version, one(topic, partition, batch)), correlation_id
    )
    assert sent.upstream == [frame(body)]
    assert sent.client == []
    answer = [(topic, [ok(partition, base_offset, lat=lat, lso=lso)])]
    reply, got = conn.reply(produce_response_with(version, answer), correlation_id)
    assert got.client == [frame(reply)]
    assert got.upstream == []


def local_answer(sent: Output, version: int, correlation_id: int) -> list[Any]:
    """The single response the proxy answered itself, nothing forwarded; its partitions."""
    assert sent.upstream == []
    (body,) = client_frames(sent)
    response = decode_produce_response(version, body)
    assert response.header.correlation_id == correlation_id
    return produce_answers(response)


def only_answer(body: bytes, version: int, correlation_id: int) -> PartitionAnswer:
    response = decode_produce_response(version, body)
    assert response.header.correlation_id == correlation_id
    ((_, answer),) = produce_answers(response)
    return answer


def request_partitions(request: Any) -> list[tuple[Any, int, bytes]]:
    key = "topic_id" if request.version >= 13 else "name"
    return [
        (getattr(t, key), p.index, bytes(p.records))
        for t in request.topic_data
        for p in t.partition_data
    ]


# -- 1. first send --------------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 9, 13])
def test_first_send_is_forwarded_byte_for_byte_and_the_broker_answer_passes_unchanged(
    version: int,
) -> None:
    proxy = Proxy()
    conn = proxy.connect()
    batch = idempotent_batch(PID, 0, 0, records=2)
    request = produce_request_with(version, one("orders", 0, batch))
    body, sent = conn.send(request, 5)
    assert sent.upstream == [frame(body)]
    assert sent.client == []
    assert conn.session.awaiting_upstream == 1
    response = produce_response_with(version, [("orders", [ok(0, 40)])], throttle_time_ms=12)
    reply, got = conn.reply(response, 5)
    assert got.client == [frame(reply)]
    assert conn.later == []
    assert proxy.counts.batches == [("forwarded", 2)]


# -- 2. retry of an acknowledged batch ------------------------------------------------


@pytest.mark.parametrize(
    ("broker_log_append_time", "duplicate_log_append_time"),
    [
        # CreateTime topic: the broker answers -1 first, then the batch's cached max timestamp.
        (-1, BATCH_TIMESTAMP + 2),
        # LogAppendTime topic: the broker's append time both times.
        (NOW_MS - 5, NOW_MS - 5),
    ],
)
def test_retry_of_an_acknowledged_batch_on_a_new_connection_is_answered_locally(
    broker_log_append_time: int, duplicate_log_append_time: int
) -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0, records=3)
    acknowledge(proxy.connect(), batch, 100, lat=broker_log_append_time, lso=7)
    retry = proxy.connect()
    _, sent = retry.send(produce_request_with(V, one("orders", 0, batch)), 99)
    assert local_answer(sent, V, 99) == [
        ("orders", PartitionAnswer(0, NONE, 100, duplicate_log_append_time, 7))
    ]
    assert retry.session.awaiting_upstream == 0
    assert retry.later == []
    assert proxy.counts.batches == [("forwarded", 3), ("duplicate", 3)]


def test_duplicate_answer_carries_the_newest_log_start_offset_seen_for_the_partition() -> None:
    proxy = Proxy()
    conn = proxy.connect()
    batch = idempotent_batch(PID, 0, 0)
    acknowledge(conn, batch, 100, lso=7)
    # Another producer's write reveals that the log start moved (retention, DeleteRecords).
    acknowledge(conn, idempotent_batch(OTHER_PID, 0, 0), 150, correlation_id=2, lso=120)
    _, sent = proxy.connect().send(produce_request_with(V, one("orders", 0, batch)), 3)
    assert local_answer(sent, V, 3) == [
        ("orders", PartitionAnswer(0, NONE, 100, BATCH_TIMESTAMP, 120))
    ]


def test_retry_on_another_partition_or_producer_is_not_a_duplicate() -> None:
    proxy = Proxy()
    conn = proxy.connect()
    batch = idempotent_batch(PID, 0, 0)
    acknowledge(conn, batch, 100)
    for n, topics in enumerate(
        [
            one("orders", 1, batch),  # same batch, other partition
            one("audit", 0, batch),  # same batch, other topic
            one("orders", 0, idempotent_batch(OTHER_PID, 0, 0)),  # other producer
        ],
        start=10,
    ):
        body, sent = conn.send(produce_request_with(V, topics), n)
        assert sent.upstream == [frame(body)]


# -- 3. mixed request: part forwarded, part answered here -----------------------------


def test_mixed_request_forwards_only_new_partitions_and_merges_answers_in_request_order() -> None:
    proxy = Proxy()
    dup = idempotent_batch(PID, 0, 0, records=2)
    acknowledge(proxy.connect(), dup, 100, lso=3)
    new_a = idempotent_batch(PID, 0, 0)
    new_c = idempotent_batch(OTHER_PID, 0, 0)
    conn = proxy.connect()
    request = produce_request_with(
        V,
        [("orders", [(0, dup), (1, new_a)]), ("audit", [(0, new_c)])],
        transactional_id=None,
        timeout_ms=4321,
    )
    body, sent = conn.send(request, 77)
    assert sent.client == []
    (forwarded,) = upstream_frames(sent)
    assert forwarded != body
    upstream_request = decode_produce_request(V, forwarded)
    assert request_partitions(upstream_request) == [("orders", 1, new_a), ("audit", 0, new_c)]
    assert upstream_request.header.correlation_id == 77
    assert upstream_request.header.client_id == "test"
    assert (upstream_request.acks, upstream_request.timeout_ms) == (-1, 4321)
    assert upstream_request.transactional_id is None

    # The broker lists its topics in another order than the request: the merge restores it.
    broker = produce_response_with(
        V,
        [("audit", [ok(0, 9, lso=0)]), ("orders", [ok(1, 500, lso=3)])],
        throttle_time_ms=250,
    )
    _, got = conn.reply(broker, 77)
    (merged,) = client_frames(got)
    response = decode_produce_response(V, merged)
    assert response.header.correlation_id == 77
    assert response.throttle_time_ms == 250
    assert produce_answers(response) == [
        ("orders", PartitionAnswer(0, NONE, 100, BATCH_TIMESTAMP + 1, 3)),
        ("orders", ok(1, 500, lso=3)),
        ("audit", ok(0, 9, lso=0)),
    ]
    assert proxy.counts.batches[1:] == [("duplicate", 2), ("forwarded", 1), ("forwarded", 1)]


def test_wholly_duplicate_multi_partition_request_is_answered_in_request_order() -> None:
    proxy = Proxy()
    conn = proxy.connect()
    b0 = idempotent_batch(PID, 0, 0)
    b1 = idempotent_batch(PID, 0, 0, records=4)
    acknowledge(conn, b1, 70, partition=1, correlation_id=1)
    acknowledge(conn, b0, 10, partition=0, correlation_id=2)
    _, sent = proxy.connect().send(produce_request_with(V, [("orders", [(1, b1), (0, b0)])]), 3)
    assert local_answer(sent, V, 3) == [
        ("orders", PartitionAnswer(1, NONE, 70, BATCH_TIMESTAMP + 3, 0)),
        ("orders", PartitionAnswer(0, NONE, 10, BATCH_TIMESTAMP, 0)),
    ]


# -- 4. retry of a batch still in flight ----------------------------------------------


def _inflight_pair(proxy: Proxy, batch: bytes) -> tuple[Conn, bytes, Conn]:
    """Original forwarded on one connection, the identical retry parked on another."""
    first = proxy.connect()
    body, sent = first.send(produce_request_with(V, one("orders", 0, batch)), 1)
    assert sent.upstream == [frame(body)]
    second = proxy.connect()
    _, parked = second.send(produce_request_with(V, one("orders", 0, batch)), 2)
    assert parked.upstream == []
    assert parked.client == []
    assert second.session.awaiting_upstream == 0
    return first, body, second


def test_inflight_retry_is_not_forwarded_and_gets_the_original_offset_when_it_lands() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0, records=2)
    first, _, second = _inflight_pair(proxy, batch)
    reply, got = first.reply(produce_response_with(V, [("orders", [ok(0, 42, lso=1)])]), 1)
    assert got.client == [frame(reply)]
    (late,) = second.later_bodies()
    answer = only_answer(late, V, 2)
    assert (answer.error_code, answer.base_offset, answer.log_start_offset) == (NONE, 42, 1)
    assert first.later == []
    assert proxy.counts.batches == [("forwarded", 2), ("inflight_duplicate", 2)]


def test_inflight_retry_answer_follows_the_broker_duplicate_rule_for_log_append_time() -> None:
    """The broker answers a duplicate with the batch's cached timestamp (its max timestamp on a
    CreateTime topic), not the -1 of the first answer: IdempotenceEngine.complete returns that
    Duplicate for the requests told AwaitInflight."""
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0, records=2)
    first, _, second = _inflight_pair(proxy, batch)
    first.reply(produce_response_with(V, [("orders", [ok(0, 42, lat=-1, lso=1)])]), 1)
    (late,) = second.later_bodies()
    assert only_answer(late, V, 2) == PartitionAnswer(0, NONE, 42, BATCH_TIMESTAMP + 1, 1)


def test_inflight_retry_gets_the_broker_error_when_the_original_fails() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    first, _, second = _inflight_pair(proxy, batch)
    reply, got = first.reply(
        produce_response_with(V, [("orders", [failed(0, NOT_LEADER_OR_FOLLOWER)])]), 1
    )
    assert got.client == [frame(reply)]
    (late,) = second.later_bodies()
    assert only_answer(late, V, 2).error_code == NOT_LEADER_OR_FOLLOWER
    # The original may or may not be written: the next retry goes to the broker.
    body, sent = proxy.connect().send(produce_request_with(V, one("orders", 0, batch)), 3)
    assert sent.upstream == [frame(body)]


def test_inflight_retry_times_out_when_the_original_connection_is_lost() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    first, _, second = _inflight_pair(proxy, batch)
    first.close()
    (late,) = second.later_bodies()
    answer = only_answer(late, V, 2)
    assert (answer.error_code, answer.base_offset) == (REQUEST_TIMED_OUT, -1)
    assert first.later == []
    # State unknown: the client's next retry reaches the broker, which decides.
    body, sent = proxy.connect().send(produce_request_with(V, one("orders", 0, batch)), 3)
    assert sent.upstream == [frame(body)]
    assert proxy.counts.batches == [("forwarded", 1), ("inflight_duplicate", 1), ("forwarded", 1)]


def test_abandoned_session_emits_nothing_when_its_parked_retry_resolves() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    first, _, second = _inflight_pair(proxy, batch)
    second.close()  # the retry's own connection is gone
    first.reply(produce_response_with(V, [("orders", [ok(0, 42)])]), 1)
    assert second.later == []


@pytest.mark.parametrize("original_first", [True, False])
def test_mixed_request_waiting_on_an_inflight_original_is_answered_once_both_are_known(
    original_first: bool,
) -> None:
    proxy = Proxy()
    parked_batch = idempotent_batch(PID, 0, 0)
    first, _, _ = _inflight_pair(proxy, parked_batch)  # a first retry parked as well
    conn = proxy.connect()
    new = idempotent_batch(OTHER_PID, 0, 0)
    _, sent = conn.send(produce_request_with(V, [("orders", [(0, parked_batch), (1, new)])]), 30)
    (forwarded,) = upstream_frames(sent)
    assert request_partitions(decode_produce_request(V, forwarded)) == [("orders", 1, new)]
    original = produce_response_with(V, [("orders", [ok(0, 42)])])
    own = produce_response_with(V, [("orders", [ok(1, 43)])], throttle_time_ms=8)
    if original_first:
        first.reply(original, 1)
        assert conn.later == []
        _, got = conn.reply(own, 30)
        (body,) = client_frames(got)
    else:
        _, got = conn.reply(own, 30)
        assert got.client == []
        first.reply(original, 1)
        (body,) = conn.later_bodies()
    response = decode_produce_response(V, body)
    assert response.header.correlation_id == 30
    assert response.throttle_time_ms == 8
    assert [(a.index, a.error_code, a.base_offset) for _, a in produce_answers(response)] == [
        (0, NONE, 42),
        (1, NONE, 43),
    ]


# -- 5. response order on one connection ----------------------------------------------


def test_local_duplicate_behind_a_forwarded_request_is_delivered_after_it_in_order() -> None:
    proxy = Proxy()
    dup = idempotent_batch(PID, 0, 0)
    acknowledge(proxy.connect(), dup, 100)
    conn = proxy.connect()
    forwarded = encode_request(
        produce_request_with(V, one("orders", 1, idempotent_batch(OTHER_PID, 0, 0))), 1
    )
    local = encode_request(produce_request_with(V, one("orders", 0, dup)), 2)
    sent = conn.session.receive_client(frame(forwarded) + frame(local))
    assert sent.upstream == [frame(forwarded)]
    assert sent.client == []  # the local answer waits for the earlier response
    reply, got = conn.reply(produce_response_with(V, [("orders", [ok(1, 7)])]), 1)
    first, second = client_frames(got)
    assert first == reply
    assert only_answer(second, V, 2).base_offset == 100
    assert conn.later == []


def test_local_duplicate_between_forwarded_requests_waits_only_for_the_earlier_one() -> None:
    proxy = Proxy()
    dup = idempotent_batch(PID, 0, 0)
    acknowledge(proxy.connect(), dup, 100)
    conn = proxy.connect()
    r1 = encode_request(produce_request_with(V, one("a", 0, idempotent_batch(OTHER_PID))), 1)
    r2 = encode_request(produce_request_with(V, one("orders", 0, dup)), 2)
    r3 = encode_request(produce_request_with(V, one("b", 0, idempotent_batch(OTHER_PID))), 3)
    sent = conn.session.receive_client(frame(r1) + frame(r2) + frame(r3))
    assert sent.upstream == [frame(r1), frame(r3)]
    reply1, got = conn.reply(produce_response_with(V, [("a", [ok(0, 1)])]), 1)
    body1, body2 = client_frames(got)
    assert body1 == reply1
    assert decode_produce_response(V, body2).header.correlation_id == 2
    reply3, got = conn.reply(produce_response_with(V, [("b", [ok(0, 1)])]), 3)
    assert got.client == [frame(reply3)]


def test_retry_pipelined_on_the_same_connection_is_answered_right_after_its_original() -> None:
    proxy = Proxy()
    conn = proxy.connect()
    batch = idempotent_batch(PID, 0, 0)
    original = encode_request(produce_request_with(V, one("orders", 0, batch)), 1)
    retry = encode_request(produce_request_with(V, one("orders", 0, batch)), 2)
    sent = conn.session.receive_client(frame(original) + frame(retry))
    assert sent.upstream == [frame(original)]
    reply, got = conn.reply(produce_response_with(V, [("orders", [ok(0, 55)])]), 1)
    first, second = client_frames(got)
    assert first == reply
    assert only_answer(second, V, 2).base_offset == 55
    assert conn.later == []


# -- 6. sequence gaps, fencing, pipelining --------------------------------------------


def _five_acknowledged(proxy: Proxy, epoch: int = 0) -> Conn:
    """Sequences 0-4 acknowledged as five one-record batches: the broker's whole cache."""
    conn = proxy.connect()
    for seq in range(5):
        acknowledge(conn, idempotent_batch(PID, epoch, seq), 10 + seq, correlation_id=seq + 1)
    return conn


def test_sequence_gap_after_known_state_is_answered_out_of_order_locally() -> None:
    proxy = Proxy()
    _five_acknowledged(proxy)
    gap = idempotent_batch(PID, 0, 10, records=2)
    _, sent = proxy.connect().send(produce_request_with(V, one("orders", 0, gap)), 9)
    ((_, answer),) = local_answer(sent, V, 9)
    assert (answer.error_code, answer.base_offset) == (OUT_OF_ORDER_SEQUENCE_NUMBER, -1)
    assert proxy.counts.batches[-1] == ("out_of_order", 2)


def test_older_epoch_is_fenced_locally() -> None:
    proxy = Proxy()
    acknowledge(proxy.connect(), idempotent_batch(PID, 1, 0), 10)
    stale = idempotent_batch(PID, 0, 1)
    _, sent = proxy.connect().send(produce_request_with(V, one("orders", 0, stale)), 9)
    ((_, answer),) = local_answer(sent, V, 9)
    assert answer.error_code == INVALID_PRODUCER_EPOCH
    assert proxy.counts.batches[-1] == ("fenced", 1)


def test_five_pipelined_batches_are_all_forwarded_without_a_false_gap() -> None:
    proxy = Proxy()
    conn = proxy.connect()
    acknowledge(conn, idempotent_batch(PID, 0, 0), 0)
    bodies = [
        encode_request(produce_request_with(V, one("orders", 0, idempotent_batch(PID, 0, s))), s)
        for s in range(1, 6)
    ]
    sent = conn.session.receive_client(b"".join(frame(b) for b in bodies))
    assert sent.upstream == [frame(b) for b in bodies]
    assert sent.client == []
    for seq in range(1, 6):
        reply, got = conn.reply(produce_response_with(V, [("orders", [ok(0, seq)])]), seq)
        assert got.client == [frame(reply)]
    assert proxy.counts.batches == [("forwarded", 1)] * 6
    # Now the newest five are known: an old retry among them is a duplicate.
    _, sent = proxy.connect().send(
        produce_request_with(V, one("orders", 0, idempotent_batch(PID, 0, 3))), 50
    )
    ((_, answer),) = local_answer(sent, V, 50)
    assert (answer.error_code, answer.base_offset) == (NONE, 3)


def test_next_batch_in_sequence_is_forwarded() -> None:
    proxy = Proxy()
    _five_acknowledged(proxy)
    body, sent = proxy.connect().send(
        produce_request_with(V, one("orders", 0, idempotent_batch(PID, 0, 5))), 9
    )
    assert sent.upstream == [frame(body)]


def test_new_epoch_starting_at_zero_is_forwarded_and_one_not_at_zero_is_rejected() -> None:
    proxy = Proxy()
    _five_acknowledged(proxy)
    conn = proxy.connect()
    body, sent = conn.send(
        produce_request_with(V, one("orders", 0, idempotent_batch(PID, 1, 0))), 9
    )
    assert sent.upstream == [frame(body)]
    _, sent = proxy.connect().send(
        produce_request_with(V, one("orders", 0, idempotent_batch(PID, 2, 3))), 10
    )
    ((_, answer),) = local_answer(sent, V, 10)
    assert answer.error_code == OUT_OF_ORDER_SEQUENCE_NUMBER


# -- 7. broker rejections are not remembered ------------------------------------------


@pytest.mark.parametrize(
    "error_code",
    [NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS, OUT_OF_ORDER_SEQUENCE_NUMBER],
)
def test_broker_rejection_is_passed_on_and_the_retry_is_forwarded_again(error_code: int) -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    conn = proxy.connect()
    body, sent = conn.send(produce_request_with(V, one("orders", 0, batch)), 1)
    assert sent.upstream == [frame(body)]
    reply, got = conn.reply(produce_response_with(V, [("orders", [failed(0, error_code)])]), 1)
    assert got.client == [frame(reply)]
    for conn_ in (conn, proxy.connect()):
        body, sent = conn_.send(produce_request_with(V, one("orders", 0, batch)), 2)
        assert sent.upstream == [frame(body)]
        conn_.reply(produce_response_with(V, [("orders", [failed(0, error_code)])]), 2)
    assert [r for r, _ in proxy.counts.batches] == ["forwarded"] * 3


def test_partition_missing_from_the_broker_response_is_not_remembered() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    conn = proxy.connect()
    conn.send(produce_request_with(V, one("orders", 0, batch)), 1)
    conn.reply(produce_response_with(V, []), 1)
    body, sent = proxy.connect().send(produce_request_with(V, one("orders", 0, batch)), 2)
    assert sent.upstream == [frame(body)]


# -- 8. acks=0 ------------------------------------------------------------------------


def test_acks_0_produce_is_forwarded_without_a_response_slot_and_the_next_one_pairs() -> None:
    proxy = Proxy()
    conn = proxy.connect()
    silent = encode_request(
        produce_request_with(V, one("orders", 0, idempotent_batch(PID, 0, 0)), acks=0), 10
    )
    acked = encode_request(
        produce_request_with(V, one("orders", 1, idempotent_batch(PID, 0, 0))), 11
    )
    sent = conn.session.receive_client(frame(silent) + frame(acked))
    assert sent.upstream == [frame(silent), frame(acked)]
    assert sent.client == []
    assert conn.session.awaiting_upstream == 1
    reply, got = conn.reply(produce_response_with(V, [("orders", [ok(1, 3)])]), 11)
    assert got.client == [frame(reply)]
    assert proxy.counts.batches == [("forwarded", 1), ("forwarded", 1)]


def test_acks_0_retry_of_an_acknowledged_batch_is_forwarded_and_answered_by_nobody() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    acknowledge(proxy.connect(), batch, 100)
    conn = proxy.connect()
    body, sent = conn.send(produce_request_with(V, one("orders", 0, batch), acks=0), 2)
    assert sent.upstream == [frame(body)]
    assert sent.client == []
    assert conn.session.awaiting_upstream == 0


def test_acks_0_write_is_not_taken_for_a_gap_when_the_next_batch_follows_it() -> None:
    """An acks=0 batch may have been appended: the engine contract says to report it as an
    Unknown outcome. Here the broker holds seq 5 (acks=0) and accepts seq 6."""
    proxy = Proxy()
    conn = _five_acknowledged(proxy)
    silent = produce_request_with(V, one("orders", 0, idempotent_batch(PID, 0, 5)), acks=0)
    conn.send(silent, 20)
    body, sent = conn.send(
        produce_request_with(V, one("orders", 0, idempotent_batch(PID, 0, 6))), 21
    )
    assert sent.upstream == [frame(body)], "answered locally instead of reaching the broker"


def test_acks_1_success_is_not_remembered_as_a_duplicate() -> None:
    """A leader-only write (acks=1) can be truncated away after a leader change; the engine
    contract says to report it as Unknown, so a retry must reach the broker."""
    proxy = Proxy()
    conn = proxy.connect()
    batch = idempotent_batch(PID, 0, 0)
    conn.send(produce_request_with(V, one("orders", 0, batch), acks=1), 1)
    conn.reply(produce_response_with(V, [("orders", [ok(0, 100)])]), 1)
    body, sent = proxy.connect().send(produce_request_with(V, one("orders", 0, batch), acks=1), 2)
    assert sent.upstream == [frame(body)], "acks=1 outcome treated as certain"


# -- 9. batches without a producer id -------------------------------------------------


def _plain_batch() -> bytes:
    return idempotent_batch(-1, -1, -1, records=3)


def test_non_idempotent_batch_passes_under_the_pass_policy() -> None:
    proxy = Proxy(policy="pass")
    conn = proxy.connect()
    body, sent = conn.send(produce_request_with(V, one("orders", 0, _plain_batch())), 1)
    assert sent.upstream == [frame(body)]
    reply, got = conn.reply(produce_response_with(V, [("orders", [ok(0, 5)])]), 1)
    assert got.client == [frame(reply)]
    assert proxy.counts.non_idempotent_actions == ["pass"]
    assert proxy.counts.batches == [("forwarded", 3)]
    # Nothing is learnt: the same bytes again go to the broker again.
    body, sent = conn.send(produce_request_with(V, one("orders", 0, _plain_batch())), 2)
    assert sent.upstream == [frame(body)]


@pytest.mark.parametrize("version", [7, 8, 9, 13])
def test_non_idempotent_batch_is_refused_locally_under_the_reject_policy(version: int) -> None:
    proxy = Proxy(policy="reject")
    conn = proxy.connect()
    _, sent = conn.send(produce_request_with(version, one("orders", 0, _plain_batch())), 4)
    ((_, answer),) = local_answer(sent, version, 4)
    assert (answer.error_code, answer.base_offset) == (POLICY_VIOLATION, -1)
    if version >= 8:
        assert answer.error_message is not None
        assert "enable.idempotence" in answer.error_message
    else:
        assert answer.error_message is None  # Produce v7 has no error_message field
    assert proxy.counts.batches == [("rejected", 3)]
    assert proxy.counts.non_idempotent_actions == ["reject"]


def test_reject_policy_forwards_the_idempotent_partitions_of_a_mixed_request() -> None:
    proxy = Proxy(policy="reject")
    conn = proxy.connect()
    good = idempotent_batch(PID, 0, 0)
    _, sent = conn.send(produce_request_with(V, [("orders", [(0, _plain_batch()), (1, good)])]), 4)
    (forwarded,) = upstream_frames(sent)
    assert request_partitions(decode_produce_request(V, forwarded)) == [("orders", 1, good)]
    _, got = conn.reply(produce_response_with(V, [("orders", [ok(1, 8)])]), 4)
    (body,) = client_frames(got)
    answers = [a for _, a in produce_answers(decode_produce_response(V, body))]
    assert [(a.index, a.error_code) for a in answers] == [(0, POLICY_VIOLATION), (1, NONE)]


def test_reject_policy_with_acks_0_sends_nothing_anywhere() -> None:
    proxy = Proxy(policy="reject")
    conn = proxy.connect()
    _, sent = conn.send(produce_request_with(V, one("orders", 0, _plain_batch()), acks=0), 4)
    assert sent == Output()
    assert conn.session.awaiting_upstream == 0


# -- 10. Produce v13: topics by id ----------------------------------------------------


def test_v13_duplicate_is_detected_and_answered_by_topic_id() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0, records=2)
    acknowledge(proxy.connect(), batch, 100, version=13, lso=4)
    _, sent = proxy.connect().send(produce_request_with(13, one("orders", 0, batch)), 6)
    assert local_answer(sent, 13, 6) == [
        (topic_id("orders"), PartitionAnswer(0, NONE, 100, BATCH_TIMESTAMP + 1, 4))
    ]


def test_v13_mixed_request_is_split_and_merged_by_topic_id() -> None:
    proxy = Proxy()
    dup = idempotent_batch(PID, 0, 0)
    acknowledge(proxy.connect(), dup, 100, version=13, topic="orders")
    new = idempotent_batch(PID, 0, 0)  # same producer, same partition index, other topic
    conn = proxy.connect()
    _, sent = conn.send(
        produce_request_with(13, [("orders", [(0, dup)]), ("audit", [(0, new)])]), 6
    )
    (forwarded,) = upstream_frames(sent)
    assert request_partitions(decode_produce_request(13, forwarded)) == [
        (topic_id("audit"), 0, new)
    ]
    _, got = conn.reply(produce_response_with(13, [("audit", [ok(0, 9)])]), 6)
    (body,) = client_frames(got)
    response = decode_produce_response(13, body)
    assert [(k, a.base_offset) for k, a in produce_answers(response)] == [
        (topic_id("orders"), 100),
        (topic_id("audit"), 9),
    ]


def test_v13_batch_of_a_topic_whose_id_no_metadata_named_is_forwarded_untracked() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    acknowledge(proxy.connect(), batch, 100, version=13, topic="unnamed")
    body, sent = proxy.connect().send(produce_request_with(13, one("unnamed", 0, batch)), 6)
    assert sent.upstream == [frame(body)]  # the proxy cannot tell its partition: the broker can
    assert proxy.engine.entries == 0


@pytest.mark.parametrize(("first", "retry"), [(12, 13), (13, 12), (9, 13)])
def test_one_partition_is_one_state_whichever_version_names_its_topic(
    first: int, retry: int
) -> None:
    """A rolling upgrade mixes v12 (names) and v13 (ids) for the same partition: the retry of a
    batch acknowledged under one form is answered under the other, from the same state."""
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0, records=2)
    acknowledge(proxy.connect(), batch, 100, version=first, lso=4)
    _, sent = proxy.connect().send(produce_request_with(retry, one("orders", 0, batch)), 6)
    ((_, answer),) = local_answer(sent, retry, 6)
    assert (answer.error_code, answer.base_offset) == (NONE, 100)
    assert proxy.engine.entries == 1


def test_a_gap_after_a_version_switch_is_judged_against_the_one_state() -> None:
    """Before the fix a v13 entry apart from the v12 one answered 45 to a batch the broker
    appends (it continues the v12 sequence)."""
    proxy = Proxy()
    conn = proxy.connect()
    seq = 0
    for i in range(5):
        acknowledge(
            conn,
            idempotent_batch(PID, 0, seq, records=2),
            100 + 2 * i,
            version=13,
            correlation_id=i + 1,
        )
        seq += 2
    acknowledge(conn, idempotent_batch(PID, 0, seq, records=2), 110, version=12, correlation_id=9)
    following = idempotent_batch(PID, 0, seq + 2, records=2)
    body, sent = conn.send(produce_request_with(13, one("orders", 0, following)), 10)
    assert sent.upstream == [frame(body)]


def test_a_recreated_topic_forgets_the_producer_state_of_its_old_incarnation() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    acknowledge(proxy.connect(), batch, 100)
    assert proxy.engine.entries == 1
    proxy.learn_topics({"orders": uuid.uuid4()})  # deleted and created again: a new topic id
    assert proxy.engine.entries == 0
    body, sent = proxy.connect().send(produce_request_with(V, one("orders", 0, batch)), 2)
    assert sent.upstream == [frame(body)]  # the new log never saw it: the broker's to append


# -- 11. NodeEndpoints (KIP-951) ------------------------------------------------------


@pytest.mark.parametrize("version", [10, 12, 13])
def test_merged_response_keeps_node_endpoints_rewritten_to_the_proxy(version: int) -> None:
    proxy = Proxy()
    dup = idempotent_batch(PID, 0, 0)
    acknowledge(proxy.connect(), dup, 100, version=version, partition=1)
    conn = proxy.connect()
    moved = idempotent_batch(OTHER_PID, 0, 0)
    _, sent = conn.send(produce_request_with(version, [("orders", [(0, moved), (1, dup)])]), 3)
    assert len(sent.upstream) == 1
    broker = produce_response_with(
        version,
        [
            (
                "orders",
                [PartitionAnswer(0, NOT_LEADER_OR_FOLLOWER, -1, -1, -1, current_leader=(1, 5))],
            )
        ],
        node_endpoints=[(1, "kafka-1.kafka.svc", 9093, "rack-a")],
    )
    _, got = conn.reply(broker, 3)
    (body,) = client_frames(got)
    response = decode_produce_response(version, body)
    assert [(e.node_id, e.host, e.port, e.rack) for e in response.node_endpoints] == [
        (1, "proxy", 9101, "rack-a")
    ]
    answers = [a for _, a in produce_answers(response)]
    assert [(a.index, a.error_code, a.current_leader) for a in answers] == [
        (0, NOT_LEADER_OR_FOLLOWER, (1, 5)),
        (1, NONE, None),
    ]
    assert answers[1].base_offset == 100
    assert proxy.directory.upstream(1) == Address("kafka-1.kafka.svc", 9093)


def test_forwarded_only_response_with_node_endpoints_is_rewritten() -> None:
    proxy = Proxy()
    conn = proxy.connect()
    conn.send(produce_request_with(10, one("orders", 0, idempotent_batch(PID, 0, 0))), 3)
    broker = produce_response_with(
        10,
        [("orders", [PartitionAnswer(0, NOT_LEADER_OR_FOLLOWER, current_leader=(7, 2))])],
        node_endpoints=[(7, "10.0.0.7", 29092, None)],
    )
    _, got = conn.reply(broker, 3)
    (body,) = client_frames(got)
    response = decode_produce_response(10, body)
    assert [(e.node_id, e.host, e.port) for e in response.node_endpoints] == [(7, "proxy", 9107)]


# -- 12. transactional batches --------------------------------------------------------


def test_transactional_retry_of_an_acknowledged_batch_is_answered_locally_when_enabled() -> None:
    proxy = Proxy(engine=IdempotenceEngine(answer_transactional=True))
    batch = idempotent_batch(PID, 0, 0, records=2, transactional=True)
    acknowledge(proxy.connect(), batch, 100, lso=2)
    _, sent = proxy.connect().send(produce_request_with(V, one("orders", 0, batch)), 8)
    assert local_answer(sent, V, 8) == [
        ("orders", PartitionAnswer(0, NONE, 100, BATCH_TIMESTAMP + 1, 2))
    ]
    assert proxy.counts.batches[-1] == ("duplicate", 2)


def test_transactional_retry_is_forwarded_by_default_for_the_broker_to_judge() -> None:
    """IdempotenceEngine.admit: markers the proxy never sees can clear the broker's cache."""
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0, transactional=True)
    acknowledge(proxy.connect(), batch, 100)
    body, sent = proxy.connect().send(
        produce_request_with(V, one("orders", 0, batch), transactional_id="tx-1"), 8
    )
    assert sent.upstream == [frame(body)]


def test_transactional_inflight_retry_waits_for_its_original() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0, transactional=True)
    first, _, second = _inflight_pair(proxy, batch)
    first.reply(produce_response_with(V, [("orders", [ok(0, 42)])]), 1)
    (late,) = second.later_bodies()
    assert only_answer(late, V, 2).base_offset == 42


# -- 13. every Produce version --------------------------------------------------------

ALL_VERSIONS = list(range(3, 14))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_local_duplicate_decodes_at_the_client_version(version: int) -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0, records=2)
    acknowledge(proxy.connect(), batch, 100, version=version, lso=4)
    _, sent = proxy.connect().send(produce_request_with(version, one("orders", 0, batch)), 6)
    ((key, answer),) = local_answer(sent, version, 6)
    assert key == (topic_id("orders") if version >= 13 else "orders")
    assert (answer.index, answer.error_code, answer.base_offset) == (0, NONE, 100)
    assert answer.log_append_time_ms == BATCH_TIMESTAMP + 1  # v2+ field
    assert answer.log_start_offset == (4 if version >= 5 else -1)  # v5+ field


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_merged_response_decodes_at_the_client_version(version: int) -> None:
    proxy = Proxy()
    dup = idempotent_batch(PID, 0, 0)
    acknowledge(proxy.connect(), dup, 100, version=version)
    conn = proxy.connect()
    new = idempotent_batch(OTHER_PID, 0, 0)
    _, sent = conn.send(produce_request_with(version, [("orders", [(0, dup), (1, new)])]), 6)
    assert len(sent.upstream) == 1
    _, got = conn.reply(
        produce_response_with(version, [("orders", [ok(1, 200)])], throttle_time_ms=3), 6
    )
    (body,) = client_frames(got)
    response = decode_produce_response(version, body)
    assert response.header.correlation_id == 6
    assert response.throttle_time_ms == 3
    assert [(a.index, a.base_offset) for _, a in produce_answers(response)] == [(0, 100), (1, 200)]


# -- batch checks the broker makes before its duplicate check -------------------------


def _with_base_offset(batch: bytes, base_offset: int) -> bytes:
    return struct.pack(">q", base_offset) + batch[8:]  # outside the CRC: still a valid CRC


def _with_corrupt_payload(batch: bytes) -> bytes:
    return batch[:-1] + bytes([batch[-1] ^ 0xFF])  # inside the CRC-32C


@pytest.mark.parametrize(
    ("damage", "broker_error"),
    [(_with_corrupt_payload, CORRUPT_MESSAGE), (lambda b: _with_base_offset(b, 5), INVALID_RECORD)],
    ids=["bad-crc", "base-offset-not-0"],
)
def test_invalid_retry_of_an_acknowledged_batch_is_left_to_the_broker(
    damage: Any, broker_error: int
) -> None:
    """UnifiedLog.analyzeAndValidateRecords (CRC, base offset 0) runs before the duplicate
    check, so the broker answers CORRUPT_MESSAGE / INVALID_RECORD, not a duplicate NONE. The
    engine's caller contract requires these checks before admit()."""
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    acknowledge(proxy.connect(), batch, 100)
    body, sent = proxy.connect().send(produce_request_with(V, one("orders", 0, damage(batch))), 2)
    assert sent.upstream == [frame(body)], f"answered locally; the broker says {broker_error}"


# -- record sets the proxy does not judge ---------------------------------------------


def _legacy_message_set() -> bytes:
    builder = LegacyRecordBatchBuilder(magic=1, compression_type=0, batch_size=1 << 16)
    builder.append(0, timestamp=BATCH_TIMESTAMP, key=b"k", value=b"v")
    return bytes(builder.build())


def test_empty_and_multi_batch_record_sets_are_forwarded_unjudged() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    acknowledge(proxy.connect(), batch, 100)
    conn = proxy.connect()
    for n, records in enumerate([b"", None, batch + idempotent_batch(PID, 0, 1)]):
        body, sent = conn.send(produce_request_with(V, one("orders", 0, records)), n)
        assert sent.upstream == [frame(body)]


@pytest.mark.parametrize("version", [2, 3])
def test_magic_1_message_set_is_forwarded_for_the_broker_to_judge(version: int) -> None:
    """Produce v0-2 carry magic 0/1 message sets (a 3.x broker offers them, and ApiVersions
    narrowing keeps the broker's minimum); on v3+ the broker answers INVALID_RECORD for the
    partition. Either way the connection must not be dropped."""
    proxy = Proxy()
    conn = proxy.connect()
    body, sent = conn.send(
        produce_request_with(version, one("orders", 0, _legacy_message_set())), 1
    )
    assert sent.upstream == [frame(body)]


# -- every forwarded batch is settled on every exit path (issue 8, defect 1) -------------


def _garbage_produce_response(correlation_id: int) -> bytes:
    return struct.pack(">i", correlation_id) + b"\xff\xff\xff\xff not a produce response"


@pytest.mark.parametrize("exit_path", ["undecodable-response", "mismatched-correlation-id"])
def test_a_broken_response_settles_its_tickets_when_the_connection_closes(exit_path: str) -> None:
    """Before the fix the broken response's slot left the session before close() could see it:
    its ticket was never completed and every later retry of the batch waited forever."""
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    first, _, second = _inflight_pair(proxy, batch)
    if exit_path == "undecodable-response":
        with pytest.raises(DecodeError):
            first.session.receive_upstream(frame(_garbage_produce_response(1)))
    else:
        with pytest.raises(FrameError):
            first.reply(produce_response_with(V, [("orders", [ok(0, 42)])]), 99)
    assert proxy.engine.pending == 1  # still owed, by the first connection's ledger
    first.close()  # what the server does after bad bytes from the broker
    assert proxy.engine.pending == 0
    assert proxy.coordinator.waiting == 0
    (late,) = second.later_bodies()
    assert only_answer(late, V, 2).error_code == REQUEST_TIMED_OUT
    # Nothing is stuck: the client's next retry reaches the broker, which decides.
    body, sent = proxy.connect().send(produce_request_with(V, one("orders", 0, batch)), 3)
    assert sent.upstream == [frame(body)]


def test_a_partial_broker_frame_at_close_settles_the_ticket_as_unknown() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    conn = proxy.connect()
    conn.send(produce_request_with(V, one("orders", 0, batch)), 1)
    reply = encode_response(produce_response_with(V, [("orders", [ok(0, 42)])]), 1)
    conn.session.receive_upstream(frame(reply)[:9])  # the broker went away mid-frame
    conn.close()
    assert proxy.engine.pending == 0
    # Unknown outcome: not remembered as written, so the retry goes to the broker.
    body, sent = proxy.connect().send(produce_request_with(V, one("orders", 0, batch)), 2)
    assert sent.upstream == [frame(body)]


def test_closing_a_connection_twice_settles_once() -> None:
    proxy = Proxy()
    conn = proxy.connect()
    conn.send(produce_request_with(V, one("orders", 0, idempotent_batch(PID, 0, 0))), 1)
    assert conn.close() == Output()
    assert conn.close() == Output()
    assert proxy.engine.pending == 0


# -- a retry waits for its in-flight original only so long (issue 8, defect 2) -----------


def test_retry_of_an_original_out_longer_than_the_wait_is_forwarded_at_once() -> None:
    """Before the fix the retry waited for the original however long the broker took."""
    proxy = Proxy(inflight_wait_ms=1000)
    batch = idempotent_batch(PID, 0, 0)
    first = proxy.connect()
    first.send(produce_request_with(V, one("orders", 0, batch)), 1)
    proxy.clock.ms += 5000  # the client timed out after 5 s and retries on a new connection
    second = proxy.connect()
    body, sent = second.send(produce_request_with(V, one("orders", 0, batch)), 2)
    assert sent.upstream == [frame(body)]  # the broker deduplicates it
    reply, got = second.reply(produce_response_with(V, [("orders", [ok(0, 42)])]), 2)
    assert got.client == [frame(reply)]
    assert proxy.engine.pending == 1  # the original, still owed by the first connection
    first.reply(produce_response_with(V, [("orders", [ok(0, 42)])]), 1)
    assert proxy.engine.pending == 0
    assert proxy.counts.batches == [("forwarded", 1), ("forwarded", 1)]


def test_a_waiting_retry_is_forwarded_when_its_wait_runs_out() -> None:
    proxy = Proxy(inflight_wait_ms=1000)
    batch = idempotent_batch(PID, 0, 0)
    first = proxy.connect()
    first.send(produce_request_with(V, one("orders", 0, batch)), 1)
    proxy.clock.ms += 200
    second = proxy.connect()
    _, sent = second.send(produce_request_with(V, one("orders", 0, batch)), 7)
    assert sent == Output()  # waits for the original
    assert second.session.next_deadline() == NOW_MS + 1000
    assert second.session.on_timer(NOW_MS + 999) == Output()
    proxy.clock.ms = NOW_MS + 1000
    late = second.session.on_timer(NOW_MS + 1000)
    (ours,) = upstream_frames(late)
    assert late.client == []
    request = decode_produce_request(V, ours)
    assert request.header.correlation_id < 0  # the proxy's own request, not the client's
    assert request_partitions(request) == [("orders", 0, batch)]
    assert second.session.next_deadline() is None
    reply = encode_response(
        produce_response_with(V, [("orders", [ok(0, 42)])]), request.header.correlation_id
    )
    got = proxy.deliver(second.session.receive_upstream(frame(reply)))
    (body,) = client_frames(got)
    assert only_answer(body, V, 7) == ok(0, 42)
    # The original's own answer still settles its ticket; nothing is owed afterwards.
    first.reply(produce_response_with(V, [("orders", [ok(0, 42)])]), 1)
    assert proxy.engine.pending == 0
    assert proxy.coordinator.waiting == 0


def test_a_retry_resolved_before_its_wait_runs_out_is_not_forwarded() -> None:
    proxy = Proxy(inflight_wait_ms=1000)
    batch = idempotent_batch(PID, 0, 0)
    first, _, second = _inflight_pair(proxy, batch)
    first.reply(produce_response_with(V, [("orders", [ok(0, 42)])]), 1)
    assert len(second.later_bodies()) == 1
    assert second.session.next_deadline() is None
    assert second.session.on_timer(NOW_MS + 10_000) == Output()
