"""Issue 3: a producer's retry after a lost acknowledgement never writes a batch twice.

Topology (three loopback addresses, so no process needs rewriting help):
  client -> [relay A on 127.0.0.2] -> proxy on 127.0.0.1 -> [relay B on 127.0.0.3] -> broker
The proxy advertises 127.0.0.2 and the broker advertises 127.0.0.3, so every
connection passes the relays. Relay A loses acks on the client side of the proxy,
relay B on the broker side; relay B also counts every batch that reaches the broker.
The control runs the same fault with no proxy: client -> relay B -> broker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from integration import clients
from integration.faults import LostAckRelay
from integration.harness import KafkaCluster, TansuCluster
from integration.harness._base import Cluster
from integration.proxy_process import ProxyProcess

CLIENT_SIDE = "127.0.0.2"
BROKER_SIDE = "127.0.0.3"
N = 400


@dataclass
class Rig:
    cluster: Cluster
    broker_relay: LostAckRelay
    broker_ports: list[int]

    @property
    def relayed_bootstrap(self) -> str:
        return ",".join(f"{BROKER_SIDE}:{p}" for p in self.broker_ports)


def _rig(cluster: Cluster, ports: list[int]) -> Iterator[Rig]:
    relay = LostAckRelay(BROKER_SIDE, "127.0.0.1", ports).start()
    try:
        cluster.start()  # type: ignore[attr-defined]
        try:
            yield Rig(cluster, relay, ports)
        finally:
            cluster.close()
    finally:
        relay.stop()


@pytest.fixture(scope="module")
def kafka_rig() -> Iterator[Rig]:
    cluster = KafkaCluster(1, advertised_host=BROKER_SIDE)
    yield from _rig(cluster, [cluster.address(n)[1] for n in cluster.node_ids()])


@pytest.fixture(scope="module")
def tansu_rig() -> Iterator[Rig]:
    cluster = TansuCluster(advertised_host=BROKER_SIDE)
    yield from _rig(cluster, [cluster.port])


@dataclass
class ProxiedRig:
    rig: Rig
    proxy: ProxyProcess
    client_relay: LostAckRelay

    @property
    def bootstrap(self) -> str:
        return f"{CLIENT_SIDE}:{self.proxy.listen_port}"


def _proxied(rig: Rig, max_node_id: int = 8) -> Iterator[ProxiedRig]:
    proxy = ProxyProcess(
        rig.relayed_bootstrap, max_node_id=max_node_id, extra=["--advertised-host", CLIENT_SIDE]
    ).start()
    try:
        ports = [proxy.listen_port] + [proxy.broker_port(n) for n in rig.cluster.node_ids()]
        relay = LostAckRelay(CLIENT_SIDE, "127.0.0.1", ports).start()
        try:
            yield ProxiedRig(rig, proxy, relay)
        finally:
            relay.stop()
    finally:
        proxy.stop()


@pytest.fixture
def proxied(kafka_rig: Rig) -> Iterator[ProxiedRig]:
    yield from _proxied(kafka_rig)


Producer = Callable[[str, str, list[bytes]], int]


def _kafka_python(bootstrap: str, topic: str, values: list[bytes]) -> int:
    return clients.kafka_python_produce(bootstrap, topic, values, batch_size=256)


def _aiokafka(bootstrap: str, topic: str, values: list[bytes]) -> int:
    return clients.aiokafka_produce(bootstrap, topic, values, max_batch_size=256)


def _librdkafka(bootstrap: str, topic: str, values: list[bytes]) -> int:
    acked, errors = clients.confluent_produce(
        bootstrap, topic, values, **{"batch.num.messages": 10}
    )
    assert errors == []
    return acked


PRODUCERS: dict[str, Producer] = {
    "kafka-python": _kafka_python,
    "aiokafka": _aiokafka,
    "librdkafka": _librdkafka,
}


def _read_back(bootstrap: str, topic: str, expected: int) -> Counter[bytes]:
    return Counter(clients.kafka_python_consume(bootstrap, topic, expected, timeout=60))


def _send_in_rounds(
    produce: Producer, bootstrap: str, topic: str, values: list[bytes], rounds: int
) -> int:
    """Several producer sessions, so acks are lost at several points of a stream."""
    step = len(values) // rounds
    return sum(produce(bootstrap, topic, values[i : i + step]) for i in range(0, len(values), step))


@pytest.mark.parametrize("client", sorted(PRODUCERS))
def test_lost_ack_on_client_side_retry_is_answered_by_proxy(
    proxied: ProxiedRig, client: str, topic_name: str
) -> None:
    rig, proxy = proxied.rig, proxied.proxy
    rig.cluster.create_topic(topic_name, partitions=2)
    values = clients.payloads(N)
    before = Counter(rig.broker_relay.stats.batches)
    proxied.client_relay.drop_every(7)
    acked = _send_in_rounds(PRODUCERS[client], proxied.bootstrap, topic_name, values, rounds=4)
    proxied.client_relay.drop_every(0)
    reached = rig.broker_relay.stats.batches - before
    dropped = proxied.client_relay.stats.acks_dropped
    duplicates = proxy.metric("idemproxy_produce_batches_total", result="duplicate")
    got = _read_back(proxied.bootstrap, topic_name, N)
    assert dropped > 0, "the fault was injected"
    assert acked == N
    assert sorted(got) == sorted(values), "every message read back"
    assert max(got.values()) == 1, "no message written twice"
    assert all(n == 1 for n in reached.values()), "no retried batch reached the broker"
    assert duplicates >= 1, "the proxy answered retries itself"


@pytest.mark.parametrize("client", sorted(PRODUCERS))
def test_control_without_proxy_the_retry_reaches_the_broker(
    kafka_rig: Rig, client: str, topic_name: str
) -> None:
    kafka_rig.cluster.create_topic(topic_name, partitions=2)
    relay = kafka_rig.broker_relay
    values = clients.payloads(N)
    before = Counter(relay.stats.batches)
    relay.drop_every(7)
    try:
        acked = _send_in_rounds(
            PRODUCERS[client], kafka_rig.relayed_bootstrap, topic_name, values, 4
        )
    finally:
        relay.drop_every(0)
    reached = relay.stats.batches - before
    got = _read_back(kafka_rig.relayed_bootstrap, topic_name, N)
    assert acked == N
    assert sorted(got) == sorted(values)  # the broker deduplicated the retries itself
    assert sum(n - 1 for n in reached.values()) >= 1, "retried batches reached the broker"


@pytest.mark.parametrize("client", sorted(PRODUCERS))
def test_lost_ack_on_broker_side_is_retried_and_deduplicated_by_the_broker(
    proxied: ProxiedRig, client: str, topic_name: str
) -> None:
    rig = proxied.rig
    rig.cluster.create_topic(topic_name, partitions=2)
    values = clients.payloads(N)
    rig.broker_relay.drop_every(9)
    try:
        acked = _send_in_rounds(PRODUCERS[client], proxied.bootstrap, topic_name, values, 4)
    finally:
        rig.broker_relay.drop_every(0)
    got = _read_back(proxied.bootstrap, topic_name, N)
    assert acked == N
    assert sorted(got) == sorted(values)
    assert max(got.values()) == 1
