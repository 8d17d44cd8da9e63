"""Issue 9: producers WITHOUT idempotence, through the proxy in ``--non-idempotent stamp`` mode.

The proxy gives a non-idempotent client's batches a producer id, epoch and sequence
of its own, and recognises a retried record (partition, key, value, headers) so a
record whose acknowledgement the client lost is written once. Each test runs a
client with idempotence explicitly OFF through the rigs of integration/rigs.py:

  client -> relay A -> proxy (stamp) -> relay B -> broker

(a) relay A drops every k-th produce answer and resets the client's connection: the
    proxy wrote the batch, the client retries it;
(b) relay B does the same to the proxy: the outcome is unknown to the proxy, which
    must resend its stamped batch under the same producer id and sequence.

Read-back goes straight to the broker (relay B, no proxy), by topic: every value
sent, each exactly once, and per partition in the order sent. The control, the
same clients and faults without the proxy, is test_retry_behaviour.py.

Keys: every client here keeps a retried record on its partition except kafkajs,
which re-partitions a retried keyless send() (test_retry_behaviour.py). The proxy
identifies a retry by partition + key + value + headers, so a record that moved
partition is a new record to it, and written again: not something a proxy can
undo. kafkajs therefore sends keyed messages (``k<i mod 7>``), hashed to one
partition on every try, as an application needing per-key order does anyway. The
others are keyless (the proxy must also match null keys).

Order: values carry a sequence number; per partition the first occurrences must
come back increasing (with exactly once, that is every record). Every client runs
with one produce request in flight per connection or its own equivalent: kafka-python
and the Java producer with max in-flight 1, because without idempotence both reorder
retried batches themselves with more in flight (kafka-python re-enqueues each failed
batch at the head of the queue, so several fail back reversed; the Java producer
documents it); aiokafka sends one request per broker at a time; kafkajs and kafka-go
await each send. librdkafka keeps its default max.in.flight (1000000): a reset fails
every request in flight together and it puts the messages back in the queue in
their original order (test_retry_behaviour.py), so it does not reorder by itself
here, and the proxy must then sort out several batches in doubt at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from integration import clients, extclients
from integration.faults import LostAckRelay
from integration.rigs import ProxiedRig, Rig, kafka_rig, proxied_rig, tansu_rig

STAMP = ["--non-idempotent", "stamp"]
N = 100
PARTITIONS = 3
CLIENT_SIDE_DROP_EVERY = 4
BROKER_SIDE_DROP_EVERY = 5

RIGS: dict[str, Callable[[], Iterator[Rig]]] = {
    "kafka-1": lambda: kafka_rig(1),
    "kafka-3": lambda: kafka_rig(3),
    "tansu": tansu_rig,
}


@dataclasses.dataclass
class Outcome:
    values: list[bytes]  #: every value the client was asked to send, in sending order
    acked: int  #: messages the client reported as written
    errors: list[str]


# -- the clients, idempotence explicitly off ------------------------------------------------


def _values(tag: str, n: int) -> list[bytes]:
    return [f"{tag}-{i:06d}".encode() for i in range(n)]


def _kafka_python(codec: str | None) -> Callable[[str, str, str, int], Outcome]:
    def produce(bootstrap: str, topic: str, tag: str, n: int) -> Outcome:
        values = _values(tag, n)
        acked = clients.kafka_python_produce(
            bootstrap,
            topic,
            values,
            idempotent=False,
            batch_size=256,
            compression_type=codec,
            max_in_flight_requests_per_connection=1,
        )
        return Outcome(values, acked, [])

    return produce


async def _aiokafka_send(
    bootstrap: str, topic: str, values: list[bytes], codec: str | None
) -> tuple[int, list[str]]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,  # its default, stated on purpose
        acks="all",
        compression_type=codec,
        max_batch_size=256,
        linger_ms=5,
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, v) for v in values]
        results = await asyncio.gather(*futures, return_exceptions=True)
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        return len(results) - len(errors), errors
    finally:
        await producer.stop()


def _aiokafka(codec: str | None) -> Callable[[str, str, str, int], Outcome]:
    def produce(bootstrap: str, topic: str, tag: str, n: int) -> Outcome:
        values = _values(tag, n)
        acked, errors = asyncio.run(_aiokafka_send(bootstrap, topic, values, codec))
        return Outcome(values, acked, errors)

    return produce


def _librdkafka(codec: str) -> Callable[[str, str, str, int], Outcome]:
    def produce(bootstrap: str, topic: str, tag: str, n: int) -> Outcome:
        return _librdkafka_produce(bootstrap, topic, tag, n, codec)

    return produce


def _librdkafka_produce(bootstrap: str, topic: str, tag: str, n: int, codec: str) -> Outcome:
    """librdkafka with enable.idempotence=false (its default, stated on purpose), messages
    trickling in as in test_retry_behaviour.py, so a failed batch's messages are re-batched
    beside new ones (clients.confluent_trickle_produce)."""
    values = _values(tag, n)
    acked, errors = clients.confluent_trickle_produce(
        bootstrap,
        topic,
        values,
        **{"enable.idempotence": False, "compression.codec": codec, "message.timeout.ms": 60000},
    )
    return Outcome(values, acked, errors)


def _java(codec: str) -> Callable[[str, str, str, int], Outcome]:
    def produce(bootstrap: str, topic: str, tag: str, n: int) -> Outcome:
        return _java_produce(bootstrap, topic, tag, n, codec)

    return produce


def _java_produce(bootstrap: str, topic: str, _tag: str, n: int, codec: str) -> Outcome:
    """VerifiableProducer (values ``<prefix>.<i>``, keyless), enable.idempotence=false."""
    from integration.harness.java_tools import verifiable_producer

    prefix = random.randrange(10**6, 10**7)
    result = verifiable_producer(
        bootstrap,
        topic,
        n,
        throughput=250,
        value_prefix=prefix,
        producer_config={
            "enable.idempotence": False,
            "retries": 2147483647,
            "max.in.flight.requests.per.connection": 1,
            "compression.type": codec,
            "linger.ms": 5,
            "batch.size": 256,
            "request.timeout.ms": 10000,
            "delivery.timeout.ms": 60000,
        },
        timeout=90,
    )
    values = [f"{prefix}.{i}".encode() for i in range(n)]
    return Outcome(values, len(result.acked), [str(e) for e in result.failed])


def _external(
    run: Callable[..., extclients.ProduceResult], codec: str, **options: Any
) -> Callable[[str, str, str, int], Outcome]:
    def produce(bootstrap: str, topic: str, tag: str, n: int) -> Outcome:
        try:
            res = run(bootstrap, topic, n, codec, tag=tag, **options)
        except extclients.ToolchainMissing as exc:
            pytest.skip(str(exc))
        return Outcome(_values(tag, n), res.acked, res.errors)

    return produce


CLIENTS: dict[str, Callable[[str, str, str, int], Outcome]] = {
    "kafka-python-none": _kafka_python(None),
    "kafka-python-gzip": _kafka_python("gzip"),
    "aiokafka-none": _aiokafka(None),
    "aiokafka-lz4": _aiokafka("lz4"),
    "librdkafka-none": _librdkafka("none"),
    "librdkafka-snappy": _librdkafka("snappy"),
    "java-none": _java("none"),
    "java-zstd": _java("zstd"),
    "kafkajs-none": _external(extclients.kafkajs_produce, "none", keyed=True),
    "kafkajs-gzip": _external(extclients.kafkajs_produce, "gzip", keyed=True),
    "kafka-go-none": _external(extclients.kafka_go_produce, "none"),
    "kafka-go-zstd": _external(extclients.kafka_go_produce, "zstd"),
}
#: the clients also run on 3 nodes and on Tansu
CLUSTER_CLIENTS = ("kafka-python-gzip", "librdkafka-snappy")
ALL = [pytest.param(c, marks=[pytest.mark.java] if c.startswith("java") else []) for c in CLIENTS]


# -- rigs: one broker set and one stamping proxy per rig, shared by the module's tests ------


@pytest.fixture(scope="module")
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """Parametrised indirectly by each test; pytest keeps one rig up at a time."""
    yield from RIGS[request.param]()


@pytest.fixture(scope="module")
def proxied(rig: Rig) -> Iterator[ProxiedRig]:
    yield from proxied_rig(rig, max_node_id=120, extra=STAMP)


def _create(rig: Rig, topic: str, partitions: int = PARTITIONS) -> None:
    nodes = len(rig.cluster.node_ids())
    configs = {"min.insync.replicas": "2"} if nodes >= 3 else {}
    rig.cluster.create_topic(topic, partitions=partitions, replication=nodes, configs=configs)


def read_back(
    bootstrap: str, topic: str, partitions: int, timeout: float = 30
) -> list[tuple[int, bytes]]:
    """Every record of ``topic`` as (partition, value), in offset order per partition.

    Reads each partition from its start to the end offset the broker reports, so
    extra copies are seen too, without waiting for an idle timeout.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        got: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(got)} records of {topic}, end offsets {ends}")
            for tp, records in consumer.poll(timeout_ms=500).items():
                got.extend((tp.partition, r.value) for r in records if r.value is not None)
        return got
    finally:
        consumer.close()


_SEQ = re.compile(rb"(\d+)$")


def _seq(value: bytes) -> int:
    m = _SEQ.search(value)
    assert m is not None, value
    return int(m.group(1))


def order_violations(records: list[tuple[int, bytes]]) -> int:
    """Per partition, first occurrences whose sequence number is below the one before."""
    seen: set[bytes] = set()
    firsts: dict[int, list[int]] = defaultdict(list)
    for partition, value in records:
        if value not in seen:
            seen.add(value)
            firsts[partition].append(_seq(value))
    return sum(1 for s in firsts.values() for a, b in zip(s, s[1:], strict=False) if b < a)


def _batches_at_broker(relay: LostAckRelay, before: Counter[Any]) -> int:
    """Batches relay B passed to the broker since ``before`` (one test at a time, so all are
    the test's: not filtered by topic, which Produce v13+ names by topic id)."""
    return sum((relay.stats.batches - before).values())


def _report(request: pytest.FixtureRequest, **figures: object) -> None:
    """Figures for the closing note: printed with -s, and kept in the test report."""
    request.node.user_properties.extend(figures.items())
    print(request.node.name, figures)  # noqa: T201


def _exactly_once(
    proxied: ProxiedRig,
    client: str,
    topic: str,
    faulty: LostAckRelay,
    drop_every: int,
    request: pytest.FixtureRequest,
) -> None:
    rig = proxied.rig
    _create(rig, topic)
    tag = f"{client}-{uuid.uuid4().hex[:6]}"
    dropped = faulty.stats.acks_dropped
    before = Counter(rig.broker_relay.stats.batches)
    started = time.monotonic()
    faulty.drop_every(drop_every)
    try:
        outcome = CLIENTS[client](proxied.bootstrap, topic, tag, N)
    finally:
        faulty.drop_every(0)
    produce_seconds = time.monotonic() - started
    acks_lost = faulty.stats.acks_dropped - dropped
    records = read_back(rig.relayed_bootstrap, topic, PARTITIONS)
    counts = Counter(v for _, v in records)
    written_twice = sum(n - 1 for n in counts.values())
    violations = order_violations(records)
    _report(
        request,
        sent=N,
        acked=outcome.acked,
        acks_lost=acks_lost,
        read=len(records),
        written_twice=written_twice,
        batches_at_broker=_batches_at_broker(rig.broker_relay, before),
        order_violations=violations,
        produce_seconds=round(produce_seconds, 1),
    )
    assert acks_lost > 0, "acks were lost (the fault was injected)"
    assert outcome.errors == []
    assert outcome.acked == N, "the client reports success for every message"
    assert set(counts) == set(outcome.values), "read back every value sent, and nothing else"
    assert written_twice == 0, "no message written twice"
    assert violations == 0, "in order per partition"


@pytest.mark.parametrize("client", ALL)
@pytest.mark.parametrize("rig", ["kafka-1"], indirect=True, scope="module")
def test_client_side_lost_acks_each_record_written_once(
    proxied: ProxiedRig, client: str, topic_name: str, request: pytest.FixtureRequest
) -> None:
    """(a) The proxy wrote the batch; the client's answer is lost and its connection reset."""
    _exactly_once(
        proxied, client, topic_name, proxied.client_relay, CLIENT_SIDE_DROP_EVERY, request
    )


@pytest.mark.parametrize("client", ALL)
@pytest.mark.parametrize("rig", ["kafka-1"], indirect=True, scope="module")
def test_broker_side_lost_acks_each_record_written_once(
    proxied: ProxiedRig, client: str, topic_name: str, request: pytest.FixtureRequest
) -> None:
    """(b) The broker's answer to the proxy is lost: the outcome is unknown to the proxy."""
    _exactly_once(
        proxied, client, topic_name, proxied.rig.broker_relay, BROKER_SIDE_DROP_EVERY, request
    )


@pytest.mark.parametrize("client", CLUSTER_CLIENTS)
@pytest.mark.parametrize("rig", ["kafka-3", "tansu"], indirect=True, scope="module")
def test_client_side_lost_acks_on_three_nodes_and_tansu_each_record_written_once(
    proxied: ProxiedRig, client: str, topic_name: str, request: pytest.FixtureRequest
) -> None:
    """(a) on a 3-node Kafka (replication 3, min.insync.replicas 2) and on Tansu."""
    _exactly_once(
        proxied, client, topic_name, proxied.client_relay, CLIENT_SIDE_DROP_EVERY, request
    )


@pytest.mark.parametrize("client", CLUSTER_CLIENTS)
@pytest.mark.parametrize("rig", ["kafka-3", "tansu"], indirect=True, scope="module")
def test_broker_side_lost_acks_on_three_nodes_and_tansu_each_record_written_once(
    proxied: ProxiedRig, client: str, topic_name: str, request: pytest.FixtureRequest
) -> None:
    """(b) on a 3-node Kafka (replication 3, min.insync.replicas 2) and on Tansu."""
    _exactly_once(
        proxied, client, topic_name, proxied.rig.broker_relay, BROKER_SIDE_DROP_EVERY, request
    )


# -- a partition leader stopped mid-stream ---------------------------------------------------


@pytest.mark.parametrize("rig", ["kafka-3"], indirect=True, scope="module")
def test_stopping_a_partition_leader_mid_stream_still_writes_each_record_once(
    proxied: ProxiedRig, topic_name: str, request: pytest.FixtureRequest
) -> None:
    """librdkafka without idempotence; the leader of partition 0 is killed (SIGKILL) while
    requests are in flight, so the proxy has batches whose outcome it does not know, and
    its producer state moves to the new leader. Acks are lost on both sides all along (a
    leader change alone rarely writes a duplicate: without them the test could not fail)."""
    from confluent_kafka import Producer

    rig, n = proxied.rig, 600
    _create(rig, topic_name)
    old_leader = rig.cluster.leader(topic_name, 0)
    values = _values(f"leader-{uuid.uuid4().hex[:6]}", n)
    acked: list[bytes] = []
    errors: list[str] = []

    def report(err: object, msg: Any) -> None:
        if err is None:
            acked.append(msg.value())
        else:
            errors.append(str(err))

    def produce() -> None:
        producer = Producer(
            {
                "bootstrap.servers": proxied.bootstrap,
                "enable.idempotence": False,
                "max.in.flight": 1,  # one request in flight: order must hold strictly
                "linger.ms": 5,
                "acks": "all",
                "message.timeout.ms": 120000,
            }
        )
        for v in values:
            producer.produce(topic_name, v, on_delivery=report)
            producer.poll(0.003)
        if remaining := producer.flush(120):
            errors.append(f"{remaining} messages still queued after flush")

    before = Counter(rig.broker_relay.stats.batches)
    dropped = proxied.client_relay.stats.acks_dropped + rig.broker_relay.stats.acks_dropped
    proxied.client_relay.drop_every(CLIENT_SIDE_DROP_EVERY + 2)
    rig.broker_relay.drop_every(BROKER_SIDE_DROP_EVERY + 2)
    thread = threading.Thread(target=produce)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(acked) < n // 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        acked_before_stop = len(acked)
        assert thread.is_alive(), "the leader is stopped mid-stream"
        rig.cluster.stop_node(old_leader, hard=True)
        thread.join(timeout=150)
        assert not thread.is_alive()
        new_leader = rig.cluster.leader(topic_name, 0)
    finally:
        proxied.client_relay.drop_every(0)
        rig.broker_relay.drop_every(0)
        rig.cluster.start_node(old_leader)
    acks_lost = proxied.client_relay.stats.acks_dropped + rig.broker_relay.stats.acks_dropped
    acks_lost -= dropped
    records = read_back(rig.relayed_bootstrap, topic_name, PARTITIONS)
    counts = Counter(v for _, v in records)
    written_twice = sum(k - 1 for k in counts.values())
    violations = order_violations(records)
    _report(
        request,
        sent=n,
        acked=len(acked),
        acked_before_stop=acked_before_stop,
        old_leader=old_leader,
        new_leader=new_leader,
        acks_lost=acks_lost,
        read=len(records),
        written_twice=written_twice,
        batches_at_broker=_batches_at_broker(rig.broker_relay, before),
        order_violations=violations,
    )
    assert new_leader not in (old_leader, -1)
    assert acks_lost > 0, "acks were lost (the fault was injected)"
    assert errors == []
    assert len(acked) == n, "the client reports success for every message"
    assert set(counts) == set(values), "read back every value sent, and nothing else"
    assert written_twice == 0, "no message written twice"
    assert violations == 0, "in order per partition"


# -- the false-positive rule: a record deliberately sent twice is written twice --------------


def _plain_producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,
        acks="all",
        max_in_flight_requests_per_connection=1,
    )


RECORD = {"key": b"same-key", "headers": [("origin", b"test_stamping")]}


@pytest.mark.parametrize("rig", ["kafka-1"], indirect=True, scope="module")
def test_a_record_sent_again_after_its_success_is_written_twice(
    proxied: ProxiedRig, topic_name: str, request: pytest.FixtureRequest
) -> None:
    """The client got X's success on a live connection, then sends the identical X again:
    that is a new record, not a retry, and both copies are written."""
    _create(proxied.rig, topic_name, partitions=1)
    value = f"deliberate-{uuid.uuid4().hex}".encode()
    producer = _plain_producer(proxied.bootstrap)
    try:
        first = producer.send(topic_name, value=value, partition=0, **RECORD).get(timeout=30)
        connections = proxied.client_relay.stats.connections
        second = producer.send(topic_name, value=value, partition=0, **RECORD).get(timeout=30)
        same_connection = proxied.client_relay.stats.connections == connections
    finally:
        producer.close(timeout=10)
    records = read_back(proxied.rig.relayed_bootstrap, topic_name, 1)
    _report(request, offsets=(first.offset, second.offset), read=len(records))
    assert same_connection, "both sends went over the same connection"
    assert second.offset > first.offset
    assert records == [(0, value), (0, value)], "both copies written"


@pytest.mark.parametrize("rig", ["kafka-1"], indirect=True, scope="module")
def test_the_same_record_retried_after_a_lost_ack_is_written_once(
    proxied: ProxiedRig, topic_name: str, request: pytest.FixtureRequest
) -> None:
    """The contrast: X's answer is lost and the connection reset; the client's retry of X
    is recognised and X is written once."""
    _create(proxied.rig, topic_name, partitions=1)
    value = f"retried-{uuid.uuid4().hex}".encode()
    dropped = proxied.client_relay.stats.acks_dropped
    producer = _plain_producer(proxied.bootstrap)
    try:
        proxied.client_relay.drop_next_acks(1)
        sent = producer.send(topic_name, value=value, partition=0, **RECORD).get(timeout=30)
    finally:
        producer.close(timeout=10)
    acks_lost = proxied.client_relay.stats.acks_dropped - dropped
    records = read_back(proxied.rig.relayed_bootstrap, topic_name, 1)
    _report(request, acks_lost=acks_lost, offset=sent.offset, read=len(records))
    assert acks_lost == 1
    assert records == [(0, value)], "written once"
