"""Proves the broker harness itself (no proxy involved): brokers start, serve, fail over."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from integration.harness import Cluster, _wire, java_tools

pytestmark = pytest.mark.broker


def _produce(bootstrap: str, topic: str, values: list[bytes], **config: object) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
        request_timeout_ms=10000, **config,
    )  # fmt: skip
    try:
        futures = [producer.send(topic, key=v[-1:], value=v) for v in values]
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close(timeout=10)


def _consume(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[bytes]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        request_timeout_ms=10000,
    )  # fmt: skip
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(values) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records)
        return values
    finally:
        consumer.close()


def test_single_node_produce_consume(kafka_cluster: Cluster, topic_name: str) -> None:
    assert kafka_cluster.node_ids() == sorted(kafka_cluster.metadata().brokers)
    kafka_cluster.create_topic(topic_name, partitions=2)
    values = [f"value-{i}".encode() for i in range(50)]
    _produce(kafka_cluster.bootstrap, topic_name, values)
    assert sorted(_consume(kafka_cluster.bootstrap, topic_name, len(values))) == sorted(values)


def test_single_node_interface(kafka_cluster: Cluster) -> None:
    (node,) = kafka_cluster.node_ids()
    host, port = kafka_cluster.address(node)
    assert kafka_cluster.bootstrap == f"{host}:{port}"
    assert kafka_cluster.supports("consumer_groups")
    assert kafka_cluster.supports("idempotence")
    with pytest.raises(ValueError, match="unknown feature"):
        kafka_cluster.supports("teleportation")
    assert _wire.api_versions(host, port)[_wire.INIT_PRODUCER_ID][1] >= 3


@pytest.mark.slow
def test_three_nodes_survive_stop_and_start(kafka_cluster3: Cluster, topic_name: str) -> None:
    cluster = kafka_cluster3
    assert sorted(cluster.metadata().brokers) == [1, 2, 3]
    cluster.create_topic(topic_name, partitions=3, replication=3)
    first = [f"before-{i}".encode() for i in range(30)]
    _produce(cluster.bootstrap, topic_name, first)

    victim = cluster.leader(topic_name, 0)
    cluster.stop_node(victim)
    assert victim not in cluster.running_node_ids()
    assert sorted(cluster.metadata().brokers) == sorted(set(cluster.node_ids()) - {victim})
    assert cluster.leader(topic_name, 0) not in (victim, -1)
    second = [f"during-{i}".encode() for i in range(30)]
    _produce(cluster.bootstrap, topic_name, second)  # the bootstrap list still names the dead node

    cluster.start_node(victim)
    for node in cluster.node_ids():
        assert sorted(cluster.metadata(node_id=node).brokers) == [1, 2, 3]
    got = _consume(cluster.bootstrap, topic_name, 60)
    assert sorted(got) == sorted(first + second)


@pytest.mark.slow
def test_three_nodes_hard_kill(kafka_cluster3: Cluster, topic_name: str) -> None:
    cluster = kafka_cluster3
    cluster.create_topic(topic_name, partitions=1, replication=3)
    victim = cluster.leader(topic_name, 0)
    cluster.stop_node(victim, hard=True)  # SIGKILL: the controller must notice by itself
    assert cluster.leader(topic_name, 0) not in (victim, -1)
    _produce(cluster.bootstrap, topic_name, [b"after-kill"])
    cluster.start_node(victim)
    assert sorted(cluster.metadata().brokers) == [1, 2, 3]


def test_tansu_api_versions_metadata_roundtrip(tansu_cluster: Cluster, topic_name: str) -> None:
    (node,) = tansu_cluster.node_ids()
    host, port = tansu_cluster.address(node)
    versions = _wire.api_versions(host, port)
    # Produce, Fetch, Metadata, ApiVersions, InitProducerId
    assert {0, 1, 3, 18, 22} <= set(versions)
    assert list(tansu_cluster.metadata().brokers) == [node]
    tansu_cluster.create_topic(topic_name, partitions=2)
    values = [f"tansu-{i}".encode() for i in range(20)]
    _produce(tansu_cluster.bootstrap, topic_name, values)  # idempotent: InitProducerId v3+
    assert sorted(_consume(tansu_cluster.bootstrap, topic_name, len(values))) == sorted(values)
    assert not tansu_cluster.supports("restart")
    assert not tansu_cluster.supports("transactions")


@pytest.mark.java
def test_java_producer_performance(kafka_cluster: Cluster, topic_name: str) -> None:
    kafka_cluster.create_topic(topic_name, partitions=2)
    result = java_tools.producer_performance(kafka_cluster.bootstrap, topic_name, 3000)
    assert result.records_sent == 3000
    # Count by consuming: end_offsets() is unreliable on Tansu (see tansu_broker quirks).
    assert len(_consume(kafka_cluster.bootstrap, topic_name, 3000)) == 3000


@pytest.mark.java
@pytest.mark.slow
def test_java_verifiable_producer_and_consumer(kafka_cluster: Cluster, topic_name: str) -> None:
    produced = java_tools.verifiable_producer(kafka_cluster.bootstrap, topic_name, 25)
    assert len(produced.acked) == 25
    assert not produced.failed
    assert produced.tool_data["acked"] == 25
    consumed = java_tools.verifiable_consumer(
        kafka_cluster.bootstrap, topic_name, f"{topic_name}-group", 25, session_timeout_ms=6000
    )
    assert sorted(int(r["value"]) for r in consumed.records) == list(range(25))
