"""Issue 2: every client produces and consumes through the proxy, never reaching a broker itself."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from integration import clients
from integration.harness import Cluster
from integration.harness.java_tools import console_consume, producer_performance
from integration.netwatch import DirectConnectionWatch, broker_pids
from integration.proxy_process import ProxyProcess

N = 300


@pytest.fixture(scope="module")
def proxy(kafka_cluster: Cluster) -> Iterator[ProxyProcess]:
    with ProxyProcess(kafka_cluster.bootstrap) as p:
        yield p


def _broker_ports(cluster: Cluster) -> set[int]:
    return {cluster.address(n)[1] for n in cluster.node_ids()}


def _watch(cluster: Cluster, proxy: ProxyProcess) -> DirectConnectionWatch:
    return DirectConnectionWatch(_broker_ports(cluster), {proxy.pid} | broker_pids())


def _assert_exactly(got: list[bytes], sent: list[bytes]) -> None:
    assert len(got) == len(sent), f"read {len(got)} records, sent {len(sent)}"
    assert sorted(got) == sorted(sent)


def test_clients_learn_only_proxy_addresses(kafka_cluster: Cluster, proxy: ProxyProcess) -> None:
    brokers = clients.kafka_python_known_brokers(proxy.bootstrap)
    assert brokers == [
        (n, "127.0.0.1", proxy.broker_port(n)) for n in sorted(kafka_cluster.node_ids())
    ]


def test_admin_describe_cluster_and_coordinators_point_at_the_proxy(
    kafka_cluster: Cluster, proxy: ProxyProcess, topic_name: str
) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": proxy.bootstrap})
    cluster = admin.describe_cluster(request_timeout=30).result(30)  # DescribeCluster
    assert {(n.host, n.port) for n in cluster.nodes} == {
        ("127.0.0.1", proxy.broker_port(n)) for n in kafka_cluster.node_ids()
    }
    group = f"g-{topic_name}"
    clients.kafka_python_produce(proxy.bootstrap, topic_name, clients.payloads(5))
    clients.confluent_consume(proxy.bootstrap, topic_name, 5, group_id=group)
    described = admin.describe_consumer_groups([group])[group].result(30)  # FindCoordinator
    assert (described.coordinator.host, described.coordinator.port) in {
        ("127.0.0.1", proxy.broker_port(n)) for n in kafka_cluster.node_ids()
    }


def test_kafka_python_round_trip_through_proxy(
    kafka_cluster: Cluster, proxy: ProxyProcess, topic_name: str
) -> None:
    values = clients.payloads(N)
    with _watch(kafka_cluster, proxy) as watch:
        clients.kafka_python_create_topic(proxy.bootstrap, topic_name, 3, 1)
        assert clients.kafka_python_produce(proxy.bootstrap, topic_name, values) == N
        got = clients.kafka_python_consume(proxy.bootstrap, topic_name, N, group_id="kp-group")
    _assert_exactly(got, values)
    assert not watch.violations, f"direct broker connections: {watch.violations}"
    assert watch.samples > 0


def test_aiokafka_round_trip_through_proxy(
    kafka_cluster: Cluster, proxy: ProxyProcess, topic_name: str
) -> None:
    values = clients.payloads(N)
    with _watch(kafka_cluster, proxy) as watch:
        assert clients.aiokafka_produce(proxy.bootstrap, topic_name, values) == N
        got = clients.aiokafka_consume(proxy.bootstrap, topic_name, N, group_id="aio-group")
    _assert_exactly(got, values)
    assert not watch.violations, f"direct broker connections: {watch.violations}"


def test_librdkafka_round_trip_through_proxy(
    kafka_cluster: Cluster, proxy: ProxyProcess, topic_name: str
) -> None:
    values = clients.payloads(N)
    with _watch(kafka_cluster, proxy) as watch:
        clients.confluent_create_topic(proxy.bootstrap, topic_name, 2, 1)
        acked, errors = clients.confluent_produce(proxy.bootstrap, topic_name, values)
        got = clients.confluent_consume(proxy.bootstrap, topic_name, N, group_id="rd-group")
    assert (acked, errors) == (N, [])
    _assert_exactly(got, values)
    assert not watch.violations, f"direct broker connections: {watch.violations}"


@pytest.mark.java
def test_java_producer_and_consumer_through_proxy(
    kafka_cluster: Cluster, proxy: ProxyProcess, topic_name: str
) -> None:
    with _watch(kafka_cluster, proxy) as watch:
        perf = producer_performance(proxy.bootstrap, topic_name, 5000, record_size=200)
        consumed = console_consume(proxy.bootstrap, topic_name, 5000)
    assert perf.records_sent == 5000
    assert len(consumed) == 5000
    assert not watch.violations, f"direct broker connections: {watch.violations}"


def test_consumer_group_resumes_from_committed_offsets(
    proxy: ProxyProcess, topic_name: str
) -> None:
    first, second = clients.payloads(100), clients.payloads(50)
    clients.kafka_python_produce(proxy.bootstrap, topic_name, first)
    got = clients.kafka_python_consume(proxy.bootstrap, topic_name, 100, group_id="resume")
    _assert_exactly(got, first)
    clients.kafka_python_produce(proxy.bootstrap, topic_name, second)
    got = clients.kafka_python_consume(proxy.bootstrap, topic_name, 50, group_id="resume")
    _assert_exactly(got, second)


def test_proxy_counts_requests_by_api(proxy: ProxyProcess, topic_name: str) -> None:
    before = proxy.metric("idemproxy_requests_total", api="Produce")
    clients.kafka_python_produce(proxy.bootstrap, topic_name, clients.payloads(10))
    assert proxy.metric("idemproxy_requests_total", api="Produce") > before
    assert proxy.metric("idemproxy_requests_total", api="ApiVersions") > 0
    assert proxy.metric("idemproxy_bytes_total", direction="request") > 0


def test_unreachable_upstream_closes_client_promptly(topic_name: str) -> None:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from integration.proxy_process import free_port_block

    dead = free_port_block(1)
    with ProxyProcess(f"127.0.0.1:{dead}", extra=["--connect-timeout", "2"]) as p:
        with pytest.raises(KafkaError):
            KafkaProducer(bootstrap_servers=p.bootstrap, request_timeout_ms=5000, max_block_ms=5000)
        assert f"127.0.0.1:{dead}" in p.log()
        assert p.metric("idemproxy_connection_errors_total", reason="upstream_unreachable") > 0


def test_bad_frame_closes_only_that_connection(proxy: ProxyProcess, topic_name: str) -> None:
    import socket
    import struct

    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=5) as bad:
        bad.sendall(struct.pack(">i", 2**31 - 1) + b"\0" * 16)  # claims 2 GiB
        bad.settimeout(5)
        assert bad.recv(1) == b""  # closed by the proxy, nothing allocated for 2 GiB
    values = clients.payloads(20)
    assert clients.kafka_python_produce(proxy.bootstrap, topic_name, values) == 20
    assert "FrameTooLarge" in proxy.log()


pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")
