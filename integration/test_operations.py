"""Running the proxy: health endpoints, graceful shutdown, structured logs."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request

from integration import clients
from integration.harness import Cluster
from integration.proxy_process import ProxyProcess, free_port_block


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_readyz_is_200_when_the_upstream_cluster_answers(kafka_cluster: Cluster) -> None:
    with ProxyProcess(kafka_cluster.bootstrap) as proxy:
        assert _get(proxy.metrics_port, "/livez") == (200, "ok\n")
        assert _get(proxy.metrics_port, "/readyz") == (200, "ready\n")
        assert proxy.metric("idemproxy_upstream_up") == 1


def test_readyz_is_503_with_a_reason_when_no_upstream_answers() -> None:
    dead = free_port_block(1)
    with ProxyProcess(f"127.0.0.1:{dead}", extra=["--connect-timeout", "1"]) as proxy:
        status, body = _get(proxy.metrics_port, "/readyz")
        assert status == 503
        assert f"127.0.0.1:{dead}" in body
        assert _get(proxy.metrics_port, "/livez")[0] == 200
        assert proxy.metric("idemproxy_upstream_up") == 0


def test_sigterm_lets_requests_in_flight_finish_then_exits_zero(
    kafka_cluster: Cluster, topic_name: str
) -> None:
    from kafka import KafkaConsumer

    proxy = ProxyProcess(kafka_cluster.bootstrap, extra=["--shutdown-timeout", "10"]).start()
    clients.kafka_python_produce(proxy.bootstrap, topic_name, clients.payloads(1))
    consumer = KafkaConsumer(
        topic_name,
        bootstrap_servers=proxy.bootstrap,
        auto_offset_reset="latest",
        fetch_max_wait_ms=3000,  # the broker holds each fetch on an empty partition for 3 s
    )
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            consumer.poll(timeout_ms=200)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        deadline = time.monotonic() + 30
        while "Fetch" not in proxy.metrics() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a long-poll fetch is now in flight
        assert proxy.proc is not None
        proc = proxy.proc
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        took = time.monotonic() - began
    finally:
        stop.set()
        poller.join()
        consumer.close()
        proxy.stop()
    log = proxy.log()
    assert code == 0
    assert "shutting down in_flight=1" in log, "a request was in flight at SIGTERM"
    assert "stopped" in log
    assert "still in flight" not in log
    assert took < 10, f"shutdown took {took:.1f}s"


def test_json_logs_carry_peer_and_reason(kafka_cluster: Cluster) -> None:
    import socket
    import struct

    with ProxyProcess(kafka_cluster.bootstrap, extra=["--log-format", "json"]) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=5) as bad:
            bad.sendall(struct.pack(">i", -5))
            bad.settimeout(5)
            assert bad.recv(1) == b""
        time.sleep(0.2)
        records = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    refused = [r for r in records if r.get("reason") == "FrameError"]
    assert refused, records[-5:]
    assert refused[0]["level"] == "WARNING"
    assert refused[0]["peer"].startswith("127.0.0.1:")


def test_producer_state_expiry_follows_a_broker_that_expires_sooner(
    kafka_cluster: Cluster, topic_name: str
) -> None:
    """Issue 8, defect 4: the proxy must not remember a producer the broker has forgotten.

    Configured for longer than the broker's producer.id.expiration.ms (1 day, the default
    here), the proxy lowers its expiry to the broker's once it knows the brokers (after the
    first Metadata through it) and its probe asked them with DescribeConfigs.
    """
    configured_ms = 3 * 86_400_000
    extra = ["--producer-state-expiry", str(configured_ms)]
    with ProxyProcess(kafka_cluster.bootstrap, extra=extra) as proxy:
        assert proxy.metric("idemproxy_producer_state_expiry_seconds") == configured_ms / 1000
        kafka_cluster.create_topic(topic_name)
        assert clients.kafka_python_produce(proxy.bootstrap, topic_name, [b"x"]) == 1
        deadline = time.monotonic() + 30  # the probe runs every 10 s
        while time.monotonic() < deadline:
            if proxy.metric("idemproxy_producer_state_expiry_seconds") == 86_400:
                break
            time.sleep(0.5)
        assert proxy.metric("idemproxy_producer_state_expiry_seconds") == 86_400
        assert "producer state expiry follows the brokers" in proxy.log()
