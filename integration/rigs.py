"""Fault-test rigs: brokers and the proxy behind lost-ack relays on their own loopback addresses.

Topology (three loopback addresses, so no process needs rewriting help):
  client -> [relay A on 127.0.0.2] -> proxy on 127.0.0.1 -> [relay B on 127.0.0.3] -> broker
The proxy advertises 127.0.0.2 and the broker advertises 127.0.0.3, so every
connection passes the relays. Relay A loses acks on the client side of the proxy,
relay B on the broker side; relay B also counts every batch that reaches the broker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from integration import clients
from integration.faults import LostAckRelay
from integration.harness import KafkaCluster, TansuCluster
from integration.harness._base import Cluster
from integration.proxy_process import ProxyProcess

CLIENT_SIDE = "127.0.0.2"
BROKER_SIDE = "127.0.0.3"


@dataclass
class Rig:
    cluster: Cluster
    broker_relay: LostAckRelay
    broker_ports: list[int]

    @property
    def relayed_bootstrap(self) -> str:
        return ",".join(f"{BROKER_SIDE}:{p}" for p in self.broker_ports)


def _rig(cluster: KafkaCluster | TansuCluster, ports: list[int]) -> Iterator[Rig]:
    relay = LostAckRelay(BROKER_SIDE, "127.0.0.1", ports).start()
    try:
        cluster.start()
        try:
            yield Rig(cluster, relay, ports)
        finally:
            cluster.close()
    finally:
        relay.stop()


def kafka_rig(nodes: int = 1) -> Iterator[Rig]:
    """Apache Kafka with relay B in front of every broker port."""
    cluster = KafkaCluster(nodes, advertised_host=BROKER_SIDE)
    yield from _rig(cluster, [cluster.address(n)[1] for n in cluster.node_ids()])


def tansu_rig() -> Iterator[Rig]:
    """Tansu with relay B in front of its port."""
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


def proxied_rig(rig: Rig, max_node_id: int = 8, extra: Sequence[str] = ()) -> Iterator[ProxiedRig]:
    """The proxy in front of ``rig`` behind relay A; ``extra`` is appended to its arguments."""
    proxy = ProxyProcess(
        rig.relayed_bootstrap,
        max_node_id=max_node_id,
        extra=["--advertised-host", CLIENT_SIDE, *extra],
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


Producer = Callable[[str, str, list[bytes]], int]


def produce_kafka_python(bootstrap: str, topic: str, values: list[bytes]) -> int:
    return clients.kafka_python_produce(bootstrap, topic, values, batch_size=256)


def produce_aiokafka(bootstrap: str, topic: str, values: list[bytes]) -> int:
    return clients.aiokafka_produce(bootstrap, topic, values, max_batch_size=256)


def produce_librdkafka(bootstrap: str, topic: str, values: list[bytes]) -> int:
    acked, errors = clients.confluent_produce(
        bootstrap, topic, values, **{"batch.num.messages": 10}
    )
    assert errors == []
    return acked


PRODUCERS: dict[str, Producer] = {
    "kafka-python": produce_kafka_python,
    "aiokafka": produce_aiokafka,
    "librdkafka": produce_librdkafka,
}
