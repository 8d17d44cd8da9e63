"""Issue 2 on a 3-broker cluster: partitions led by different brokers, and leader failover."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from integration import clients
from integration.harness import Cluster
from integration.netwatch import DirectConnectionWatch, broker_pids
from integration.proxy_process import ProxyProcess


@pytest.fixture(scope="module")
def proxy3(kafka_cluster3: Cluster) -> Iterator[ProxyProcess]:
    with ProxyProcess(kafka_cluster3.bootstrap) as p:
        yield p


def test_every_broker_gets_its_own_proxy_listener(
    kafka_cluster3: Cluster, proxy3: ProxyProcess
) -> None:
    brokers = clients.kafka_python_known_brokers(proxy3.bootstrap)
    assert brokers == [(n, "127.0.0.1", proxy3.broker_port(n)) for n in (1, 2, 3)]


def test_partitions_led_by_different_brokers_all_receive_writes(
    kafka_cluster3: Cluster, proxy3: ProxyProcess, topic_name: str
) -> None:
    kafka_cluster3.create_topic(topic_name, partitions=6, replication=3)
    leaders = {kafka_cluster3.leader(topic_name, p) for p in range(6)}
    assert len(leaders) > 1, "the test needs partitions led by several brokers"
    values = clients.payloads(600)
    ports = {kafka_cluster3.address(n)[1] for n in kafka_cluster3.node_ids()}
    with DirectConnectionWatch(ports, {proxy3.pid} | broker_pids()) as watch:
        acked, errors = clients.confluent_produce(proxy3.bootstrap, topic_name, values)
        got = clients.confluent_consume(proxy3.bootstrap, topic_name, 600)
    assert (acked, errors) == (600, [])
    assert sorted(got) == sorted(values)
    assert not watch.violations


def test_stopping_a_partition_leader_mid_stream_moves_the_producer_to_the_new_leader(
    kafka_cluster3: Cluster, proxy3: ProxyProcess, topic_name: str
) -> None:
    kafka_cluster3.create_topic(
        topic_name, partitions=1, replication=3, configs={"min.insync.replicas": "2"}
    )
    old_leader = kafka_cluster3.leader(topic_name, 0)
    values = clients.payloads(3000)
    result: dict[str, object] = {}

    def produce() -> None:
        from confluent_kafka import Producer

        acked: list[bytes] = []
        errors: list[str] = []
        producer = Producer(
            {
                "bootstrap.servers": proxy3.bootstrap,
                "enable.idempotence": True,
                "linger.ms": 2,
                "message.timeout.ms": 120000,
            }
        )

        def report(err: object, msg: object) -> None:
            if err is None:
                acked.append(msg.value())  # type: ignore[attr-defined]
            else:
                errors.append(str(err))

        for v in values:
            producer.produce(topic_name, v, on_delivery=report)
            producer.poll(0)
            time.sleep(0.001)  # a steady stream, so the failover lands mid-stream
        producer.flush(120)
        result.update(acked=acked, errors=errors)

    thread = threading.Thread(target=produce)
    thread.start()
    time.sleep(1.0)
    kafka_cluster3.stop_node(old_leader)
    thread.join(timeout=180)
    assert not thread.is_alive()
    new_leader = kafka_cluster3.leader(topic_name, 0)
    assert new_leader != old_leader
    assert result["errors"] == []
    assert len(result["acked"]) == 3000  # type: ignore[arg-type]
    got = clients.confluent_consume(proxy3.bootstrap, topic_name, 3000)
    assert sorted(got) == sorted(values), "every acknowledged record is read back exactly once"
