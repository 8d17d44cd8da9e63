"""Issue 8, "proven under faults": brokers restarted in turn and the proxy itself killed,
under continuous idempotent produce: zero lost, zero written twice, the client reconnects.

The verifier is a librdkafka idempotent producer with unique values (``SteadyProducer``);
everything it was told was acknowledged is read back straight from the brokers (not
through the proxy), and the partitions' end offsets count what the log holds, so a
duplicate shows up even where a reader would stop early. Checks are counts only; waits
are bounded polls.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable

import pytest

from integration import clients
from integration.harness import Cluster
from integration.proxy_process import ProxyProcess

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def log_end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Each partition's high watermark: records in the log (no transactions, no markers)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "idemproxy-offsets"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def check_exactly_once(
    producer: clients.SteadyProducer, bootstrap: str, topic: str, partitions: int
) -> dict[str, int]:
    """Read everything back from the brokers; assert zero lost and zero duplicated."""
    acked = producer.acked_values
    got = clients.confluent_consume(bootstrap, topic, len(acked), timeout=120)
    counts = Counter(got)
    ends = log_end_offsets(bootstrap, topic, partitions)
    figures = {"sent": producer.sent, "acked": len(acked), "read": len(got)}
    figures["in_log"] = sum(ends.values())
    assert producer.errors == [], producer.errors[:5]
    assert len(acked) == producer.sent, "every record sent was acknowledged"
    # First: the records looked through are this test's (its topic, its producer's values).
    assert len(acked) > 0
    assert all(v.startswith(producer.name.encode() + b"-") for v in counts), "foreign records"
    assert set(counts) == set(acked), "zero lost: every acknowledged record was read back"
    # Then: none of them twice, neither as read nor in the log.
    assert max(counts.values()) == 1, [v for v, n in counts.items() if n > 1][:5]
    assert figures["in_log"] == len(acked), "the log holds each record once, nothing more"
    return figures


# -- the brokers restarted in turn ----------------------------------------------------------

#: Issue 8 asks for 10. Each restart is a JVM start: ~14 s on the idle 2-core machine
#: (about 3 minutes in all), ~90 s when other engineers' brokers load it (load average 11).
RESTARTS = int(os.environ.get("IDEMPROXY_ROLLING_RESTARTS", "10"))
PARTITIONS = 3


def _partitions(cluster: Cluster, topic: str) -> dict[int, tuple[int, int, tuple[int, ...]]]:
    """partition -> (leader, preferred leader, isr), as the brokers see it now."""
    info = cluster.metadata([topic]).topics[topic]
    return {p: (i.leader, i.replicas[0], i.isr) for p, i in info.partitions.items()}


def _balanced(cluster: Cluster, topic: str) -> bool:
    """Every partition led by its preferred leader with all 3 replicas in sync."""
    try:
        parts = _partitions(cluster, topic)
    except (ConnectionError, KeyError):
        return False
    return len(parts) == PARTITIONS and all(
        leader == preferred and len(isr) == 3 for leader, preferred, isr in parts.values()
    )


def _rebalance(cluster: Cluster, topic: str) -> bool:
    """Wait for a full ISR, then give each partition back to its preferred leader (what
    auto.leader.rebalance does after a rolling restart, minus its 5-minute period)."""
    if _balanced(cluster, topic):
        return True

    def in_sync() -> bool:
        try:
            return all(len(isr) == 3 for _, _, isr in _partitions(cluster, topic).values())
        except (ConnectionError, KeyError):
            return False

    if not wait_until(in_sync, 60):
        return False
    admin = cluster.admin()
    try:
        admin.elect_leaders(0, {topic: list(range(PARTITIONS))}, raise_errors=False)
    finally:
        admin.close()
    return wait_until(lambda: _balanced(cluster, topic), 30)


@pytest.mark.timeout(300 + 100 * RESTARTS)  # generous: the bound is for a wedged run
def test_ten_rolling_broker_restarts_under_idempotent_produce_lose_and_double_nothing(
    kafka_cluster3: Cluster, topic_name: str, request: pytest.FixtureRequest
) -> None:
    cluster = kafka_cluster3
    cluster.create_topic(
        topic_name, PARTITIONS, replication=3, configs={"min.insync.replicas": "2"}
    )
    assert _rebalance(cluster, topic_name), _partitions(cluster, topic_name)
    began = time.monotonic()
    with ProxyProcess(cluster.bootstrap) as proxy:
        producer = clients.SteadyProducer(
            proxy.bootstrap, topic_name, 100, topic_name, keep_values=True,
            **{"message.timeout.ms": 300000, "request.timeout.ms": 10000},
        )  # fmt: skip
        producer.start()
        try:
            assert producer.wait_acked(100, 60), producer.errors[:5]
            reconnected: list[int] = []
            accepted: list[int] = []
            phases: Counter[str] = Counter()  # seconds spent, reported only
            for i in range(RESTARTS):
                node = cluster.node_ids()[i % 3]
                assert _rebalance(cluster, topic_name), (i, _partitions(cluster, topic_name))
                led = [p for p, (leader, _, _) in _partitions(cluster, topic_name).items()
                       if leader == node]  # fmt: skip
                assert led, f"restart {i}: node {node} leads a partition the producer writes"
                before = proxy.metric("idemproxy_client_connections_accepted_total")
                t0 = time.monotonic()
                cluster.stop_node(node)
                t1 = time.monotonic()
                cluster.start_node(node)
                t2 = time.monotonic()
                # Back as the leader of its partitions: the producer must reach it again.
                assert _rebalance(cluster, topic_name), (i, _partitions(cluster, topic_name))
                phases["stop"] += t1 - t0
                phases["start"] += t2 - t1
                phases["rebalance"] += time.monotonic() - t2
                marks = {p: producer.acked_by_partition[p] for p in led}
                if wait_until(
                    lambda: all(producer.acked_by_partition[p] >= marks[p] + 20 for p in led),  # noqa: B023
                    60,
                ):
                    reconnected.append(node)
                accepted.append(
                    int(proxy.metric("idemproxy_client_connections_accepted_total") - before)
                )
        finally:
            producer.finish(timeout=120)
        log = proxy.log_path.read_text(errors="replace")
    figures = check_exactly_once(producer, cluster.bootstrap, topic_name, PARTITIONS)
    figures.update(
        restarts=RESTARTS,
        reconnected=len(reconnected),
        accepted_per_restart=accepted,  # type: ignore[dict-item]
        seconds=round(time.monotonic() - began),
    )
    figures.update({f"{k}_seconds": round(v) for k, v in phases.items()})
    request.node.user_properties.extend(figures.items())
    print(request.node.name, figures)  # noqa: T201
    assert len(reconnected) == RESTARTS, f"writes resumed on the restarted leader: {reconnected}"
    assert all(n > 0 for n in accepted), "the producer opened new connections every restart"
    assert "Traceback" not in log


# -- the proxy killed ---------------------------------------------------------------------------

KILLS = 3


def test_proxy_killed_and_restarted_under_idempotent_produce_loses_and_doubles_nothing(
    kafka_cluster: Cluster, topic_name: str, request: pytest.FixtureRequest
) -> None:
    kafka_cluster.create_topic(topic_name, PARTITIONS)
    began = time.monotonic()
    proxy = ProxyProcess(kafka_cluster.bootstrap).start()
    producer = clients.SteadyProducer(
        proxy.bootstrap, topic_name, 200, topic_name, keep_values=True,
        **{"message.timeout.ms": 120000, "reconnect.backoff.max.ms": 1000},
    )  # fmt: skip
    producer.start()
    exits, reconnects, resumed = [], [], []
    try:
        assert producer.wait_acked(200, 60), producer.errors[:5]
        for _ in range(KILLS):
            exits.append(proxy.kill())  # mid-stream: requests in flight lose their answers
            time.sleep(1)  # the producer meets refused connections meanwhile
            mark = producer.acked
            proxy.start()  # a fresh process on the same ports, with no producer state
            if producer.wait_acked(mark + 200, 60):
                resumed.append(producer.acked - mark)
            reconnects.append(int(proxy.metric("idemproxy_client_connections_accepted_total")))
    finally:
        producer.finish(timeout=60)
        proxy.stop()
    figures = check_exactly_once(producer, kafka_cluster.bootstrap, topic_name, PARTITIONS)
    figures.update(kills=KILLS, seconds=round(time.monotonic() - began))
    figures["accepted_after_each_restart"] = reconnects  # type: ignore[assignment]
    request.node.user_properties.extend(figures.items())
    print(request.node.name, figures)  # noqa: T201
    assert exits == [-9] * KILLS
    assert len(resumed) == KILLS, "acknowledgements resumed after every restart"
    assert all(n >= 1 for n in reconnects), "the producer connected to every new process"
