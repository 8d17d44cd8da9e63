"""Issue 8, defect 2: a retry waits for its in-flight original only --inflight-wait seconds.

The broker writes a batch but its answer is held on the way back (relay B, between the proxy
and the broker) for HOLD seconds; the client times out after CLIENT_TIMEOUT seconds and
retries on a new connection. Without the proxy the broker answers that retry at once (a
duplicate); through the proxy the retry must not wait for the held original either: it is
forwarded, and the broker deduplicates it. Checked by order of events, not by timing: the
client's acknowledgement arrives before the relay releases the original's answer.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
from kafka import KafkaProducer

from integration import clients
from integration.rigs import ProxiedRig, Rig, kafka_rig, proxied_rig

CLIENT_TIMEOUT_MS = 5_000
HOLD_SECONDS = 14.0


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    yield from kafka_rig(1)


@pytest.fixture
def proxied(rig: Rig) -> Iterator[ProxiedRig]:
    yield from proxied_rig(rig)


def test_a_retry_is_not_held_behind_a_slow_original(proxied: ProxiedRig, topic_name: str) -> None:
    rig, proxy = proxied.rig, proxied.proxy
    rig.cluster.create_topic(topic_name, partitions=1)
    producer = KafkaProducer(
        bootstrap_servers=proxied.bootstrap,
        enable_idempotence=True,
        acks="all",
        request_timeout_ms=CLIENT_TIMEOUT_MS,
        retry_backoff_ms=100,
        max_in_flight_requests_per_connection=1,
    )
    try:
        producer.send(topic_name, b"warm-up").get(timeout=60)  # metadata, producer id
        forwarded_before = proxy.metric("idemproxy_produce_batches_total", result="forwarded")
        rig.broker_relay.hold_next_acks(1, HOLD_SECONDS)
        sent_at = time.monotonic()
        metadata = producer.send(topic_name, b"held").get(timeout=60)
        acked_at = time.monotonic()
    finally:
        producer.close(timeout=10)
    deadline = time.monotonic() + HOLD_SECONDS + 10
    while not rig.broker_relay.stats.held_released and time.monotonic() < deadline:
        time.sleep(0.2)
    (released_at,) = rig.broker_relay.stats.held_released
    print(
        f"retry acknowledged {acked_at - sent_at:.2f}s after the send; the original's answer "
        f"was released {released_at - sent_at:.2f}s after it"
    )
    assert acked_at < released_at, "the retry waited for the held original"
    # The retry went to the broker (not answered locally, not waiting): counted as forwarded.
    forwarded = proxy.metric("idemproxy_produce_batches_total", result="forwarded")
    assert forwarded - forwarded_before >= 2
    got = Counter(clients.kafka_python_consume(proxied.bootstrap, topic_name, 2, timeout=30))
    assert got == Counter({b"warm-up": 1, b"held": 1})
    assert metadata.offset == 1
