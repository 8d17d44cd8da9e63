"""Issue 2 against Tansu, a second, independent Kafka-protocol broker.

Tansu's known gaps (see integration/harness/tansu_broker.py) are pinned as strict
xfails, so a Tansu release that fixes one turns the test red and gets noticed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integration import clients
from integration.harness import Cluster
from integration.harness.java_tools import console_consume, producer_performance
from integration.netwatch import DirectConnectionWatch, broker_pids
from integration.proxy_process import ProxyProcess

N = 200


@pytest.fixture(scope="module")
def tansu_proxy(tansu_cluster: Cluster) -> Iterator[ProxyProcess]:
    with ProxyProcess(tansu_cluster.bootstrap, max_node_id=120) as p:
        yield p


def _watch(cluster: Cluster, proxy: ProxyProcess) -> DirectConnectionWatch:
    ports = {cluster.address(n)[1] for n in cluster.node_ids()}
    return DirectConnectionWatch(ports, {proxy.pid} | broker_pids())


def test_tansu_metadata_points_at_the_proxy(
    tansu_cluster: Cluster, tansu_proxy: ProxyProcess
) -> None:
    (node,) = tansu_cluster.node_ids()
    assert clients.kafka_python_known_brokers(tansu_proxy.bootstrap) == [
        (node, "127.0.0.1", tansu_proxy.broker_port(node))
    ]


def test_kafka_python_round_trip_through_proxy_on_tansu(
    tansu_cluster: Cluster, tansu_proxy: ProxyProcess, topic_name: str
) -> None:
    tansu_cluster.create_topic(topic_name, partitions=2)
    values = clients.payloads(N)
    with _watch(tansu_cluster, tansu_proxy) as watch:
        assert clients.kafka_python_produce(tansu_proxy.bootstrap, topic_name, values) == N
        got = clients.kafka_python_consume(tansu_proxy.bootstrap, topic_name, N)
    assert sorted(got) == sorted(values)
    assert not watch.violations


def test_librdkafka_round_trip_through_proxy_on_tansu(
    tansu_cluster: Cluster, tansu_proxy: ProxyProcess, topic_name: str
) -> None:
    tansu_cluster.create_topic(topic_name, partitions=2)
    values = clients.payloads(N)
    with _watch(tansu_cluster, tansu_proxy) as watch:
        acked, errors = clients.confluent_produce(tansu_proxy.bootstrap, topic_name, values)
        got = clients.kafka_python_consume(tansu_proxy.bootstrap, topic_name, N)
    assert (acked, errors) == (N, [])
    assert sorted(got) == sorted(values)
    assert not watch.violations


@pytest.mark.java
def test_java_producer_through_proxy_on_tansu(
    tansu_cluster: Cluster, tansu_proxy: ProxyProcess, topic_name: str
) -> None:
    tansu_cluster.create_topic(topic_name, partitions=1)
    perf = producer_performance(tansu_proxy.bootstrap, topic_name, 2000, record_size=100)
    assert perf.records_sent == 2000
    assert len(console_consume(tansu_proxy.bootstrap, topic_name, 2000, partition=0)) == 2000


@pytest.mark.xfail(
    strict=True,
    reason="Tansu answers InitProducerId below v3 with UNKNOWN_SERVER_ERROR; "
    "aiokafka's idempotent producer uses v0-v2",
)
def test_aiokafka_idempotent_producer_on_tansu(
    tansu_cluster: Cluster, tansu_proxy: ProxyProcess, topic_name: str
) -> None:
    import asyncio

    tansu_cluster.create_topic(topic_name, partitions=1)

    async def attempt() -> int:
        async with asyncio.timeout(20):
            return await clients._aiokafka_produce(
                tansu_proxy.bootstrap, topic_name, clients.payloads(10)
            )

    assert asyncio.run(attempt()) == 10
