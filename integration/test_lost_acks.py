"""Issue 3: a producer's retry after a lost acknowledgement never writes a batch twice.

Runs on Apache Kafka (1 and 3 nodes) and Tansu, with each client library; see
integration/rigs.py for the relays. The control runs the same fault with no proxy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from integration import clients
from integration.rigs import (
    PRODUCERS,
    Producer,
    ProxiedRig,
    Rig,
    kafka_rig,
    proxied_rig,
    tansu_rig,
)

N = 400
RIGS = {
    "kafka-1": lambda: kafka_rig(1),
    "kafka-3": lambda: kafka_rig(3),
    "tansu": tansu_rig,
}


@pytest.fixture(scope="module", params=sorted(RIGS))
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    yield from RIGS[request.param]()


@pytest.fixture
def proxied(rig: Rig) -> Iterator[ProxiedRig]:
    yield from proxied_rig(rig, max_node_id=120)


def _skip_unsupported(rig: Rig, client: str) -> None:
    if rig.cluster.kind == "tansu" and client == "aiokafka":
        pytest.skip("Tansu cannot initialise aiokafka's idempotent producer (test_tansu.py)")


def _create(rig: Rig, topic: str) -> None:
    replication = len(rig.cluster.node_ids())
    rig.cluster.create_topic(topic, partitions=3, replication=replication)


def _read_back(bootstrap: str, topic: str, expected: int) -> Counter[bytes]:
    return Counter(clients.kafka_python_consume(bootstrap, topic, expected, timeout=60))


def _send_in_rounds(
    produce: Producer, bootstrap: str, topic: str, values: list[bytes], rounds: int
) -> int:
    """Several producer sessions, so acks are lost at several points of a stream."""
    step = len(values) // rounds
    return sum(produce(bootstrap, topic, values[i : i + step]) for i in range(0, len(values), step))


@pytest.mark.parametrize("client", sorted(PRODUCERS))
def test_a_single_lost_ack_is_answered_by_proxy(
    proxied: ProxiedRig, client: str, topic_name: str, request: pytest.FixtureRequest
) -> None:
    rig, proxy = proxied.rig, proxied.proxy
    if rig.cluster.kind != "kafka" or len(rig.cluster.node_ids()) != 1:
        pytest.skip("the many-losses tests cover the other brokers")
    _create(rig, topic_name)
    values = clients.payloads(100)
    before = Counter(rig.broker_relay.stats.batches)
    proxied.client_relay.drop_next_acks(1)
    acked = PRODUCERS[client](proxied.bootstrap, topic_name, values)
    reached = rig.broker_relay.stats.batches - before
    got = _read_back(proxied.bootstrap, topic_name, 100)
    assert proxied.client_relay.stats.acks_dropped == 1
    assert acked == 100
    assert sorted(got) == sorted(values)
    assert max(got.values()) == 1
    assert all(n == 1 for n in reached.values()), "the retry did not reach the broker"
    assert proxy.metric("idemproxy_produce_batches_total", result="duplicate") >= 1


def _report(request: pytest.FixtureRequest, **figures: object) -> None:
    """Figures for the closing note: printed with -s, and kept in the test report."""
    request.node.user_properties.extend(figures.items())
    print(request.node.name, figures)  # noqa: T201


@pytest.mark.parametrize("client", sorted(PRODUCERS))
def test_lost_ack_on_client_side_retry_is_answered_by_proxy(
    proxied: ProxiedRig, client: str, topic_name: str, request: pytest.FixtureRequest
) -> None:
    rig, proxy = proxied.rig, proxied.proxy
    _skip_unsupported(rig, client)
    _create(rig, topic_name)
    values = clients.payloads(N)
    before = Counter(rig.broker_relay.stats.batches)
    proxied.client_relay.drop_every(7)
    acked = _send_in_rounds(PRODUCERS[client], proxied.bootstrap, topic_name, values, rounds=4)
    proxied.client_relay.drop_every(0)
    reached = rig.broker_relay.stats.batches - before
    dropped = proxied.client_relay.stats.acks_dropped
    duplicates = proxy.metric("idemproxy_produce_batches_total", result="duplicate")
    got = _read_back(proxied.bootstrap, topic_name, N)
    retries_at_broker = sum(n - 1 for n in reached.values())
    _report(
        request,
        sent=N,
        acks_lost=dropped,
        answered_by_proxy=duplicates,
        batches_at_broker=sum(reached.values()),
        retries_at_broker=retries_at_broker,
    )
    assert dropped > 0, "the fault was injected"
    assert acked == N
    assert sorted(got) == sorted(values), "every message read back"
    assert max(got.values()) == 1, "no message written twice"
    assert retries_at_broker == 0, "no retried batch reached the broker"
    assert duplicates >= 1, "the proxy answered retries itself"


@pytest.mark.parametrize("client", sorted(PRODUCERS))
def test_control_without_proxy_the_retry_reaches_the_broker(
    rig: Rig, client: str, topic_name: str, request: pytest.FixtureRequest
) -> None:
    if rig.cluster.kind == "tansu":
        pytest.skip("Tansu answers a retried batch with DUPLICATE_SEQUENCE_NUMBER, an error")
    _create(rig, topic_name)
    relay = rig.broker_relay
    values = clients.payloads(N)
    before = Counter(relay.stats.batches)
    dropped_before = relay.stats.acks_dropped
    relay.drop_every(7)
    try:
        acked = _send_in_rounds(PRODUCERS[client], rig.relayed_bootstrap, topic_name, values, 4)
    finally:
        relay.drop_every(0)
    reached = relay.stats.batches - before
    got = _read_back(rig.relayed_bootstrap, topic_name, N)
    retries_at_broker = sum(n - 1 for n in reached.values())
    _report(
        request,
        sent=N,
        acks_lost=relay.stats.acks_dropped - dropped_before,
        batches_at_broker=sum(reached.values()),
        retries_at_broker=retries_at_broker,
    )
    assert acked == N
    assert sorted(got) == sorted(values)  # the broker deduplicated the retries itself
    assert retries_at_broker >= 1, "retried batches reached the broker"


@pytest.mark.parametrize("client", sorted(PRODUCERS))
def test_lost_ack_on_broker_side_is_retried_and_deduplicated_by_the_broker(
    proxied: ProxiedRig, client: str, topic_name: str, request: pytest.FixtureRequest
) -> None:
    rig = proxied.rig
    _skip_unsupported(rig, client)
    if rig.cluster.kind == "tansu":
        pytest.skip("Tansu answers a retried batch with DUPLICATE_SEQUENCE_NUMBER, an error")
    _create(rig, topic_name)
    values = clients.payloads(N)
    dropped_before = rig.broker_relay.stats.acks_dropped
    rig.broker_relay.drop_every(9)
    try:
        acked = _send_in_rounds(PRODUCERS[client], proxied.bootstrap, topic_name, values, 4)
    finally:
        rig.broker_relay.drop_every(0)
    got = _read_back(proxied.bootstrap, topic_name, N)
    _report(request, sent=N, acks_lost=rig.broker_relay.stats.acks_dropped - dropped_before)
    assert acked == N
    assert sorted(got) == sorted(values)
    assert max(got.values()) == 1
