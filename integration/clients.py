"""Produce and consume with each real client library, the same way for every test.

Every helper takes a bootstrap address (the proxy's in these tests) and returns
what it read or how many records the broker acknowledged, so tests compare counts
and values instead of trusting a client's own success flag.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic


def payloads(n: int, tag: str = "") -> list[bytes]:
    """n distinct values, so duplicates and losses are countable on read-back."""
    tag = tag or uuid.uuid4().hex[:8]
    return [f"{tag}-{i:06d}".encode() for i in range(n)]


def kafka_python_produce(
    bootstrap: str, topic: str, values: list[bytes], *, idempotent: bool = True, **config: Any
) -> int:
    """Records acknowledged by the broker (idempotent producer unless told otherwise)."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=idempotent,
        acks="all",
        linger_ms=5,
        **config,
    )
    try:
        futures = [producer.send(topic, v) for v in values]
        producer.flush(timeout=60)
        return sum(1 for f in futures if f.succeeded())
    finally:
        producer.close(timeout=10)


def kafka_python_consume(
    bootstrap: str, topic: str, expected: int, *, group_id: str | None = None, timeout: float = 60
) -> list[bytes]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=group_id is not None,
        consumer_timeout_ms=3000,
    )
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expected and time.monotonic() < deadline:
            got.extend(m.value for m in consumer)
        if group_id is not None:
            consumer.commit()
        return got
    finally:
        consumer.close()


def kafka_python_known_brokers(bootstrap: str) -> list[tuple[int, str, int]]:
    """The broker addresses a client learns from Metadata (through the proxy: the proxy's)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        consumer.topics()
        return sorted((b.node_id, b.host, b.port) for b in consumer._client.cluster.brokers())
    finally:
        consumer.close()


def kafka_python_create_topic(
    bootstrap: str, topic: str, partitions: int, replication: int
) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, replication)])
    finally:
        admin.close()


async def _aiokafka_produce(bootstrap: str, topic: str, values: list[bytes], **config: Any) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", **config
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, v) for v in values]
        results = await asyncio.gather(*futures, return_exceptions=True)
        return sum(1 for r in results if not isinstance(r, BaseException))
    finally:
        await producer.stop()


async def _aiokafka_consume(
    bootstrap: str, topic: str, expected: int, group_id: str | None, wait: float
) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group_id, auto_offset_reset="earliest"
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + wait
        while len(got) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                got.extend(r.value for r in records if r.value is not None)
        return got
    finally:
        await consumer.stop()


def aiokafka_produce(bootstrap: str, topic: str, values: list[bytes], **config: Any) -> int:
    return asyncio.run(_aiokafka_produce(bootstrap, topic, values, **config))


def aiokafka_consume(
    bootstrap: str, topic: str, expected: int, *, group_id: str | None = None, timeout: float = 60
) -> list[bytes]:
    return asyncio.run(_aiokafka_consume(bootstrap, topic, expected, group_id, timeout))


class _Delivery:
    """librdkafka delivery reports, counted: acknowledged messages and error strings."""

    def __init__(self) -> None:
        self.acked = 0
        self.errors: list[str] = []

    def report(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.acked += 1
        else:
            self.errors.append(str(err))


def confluent_produce(
    bootstrap: str, topic: str, values: list[bytes], **config: Any
) -> tuple[int, list[str]]:
    """librdkafka's idempotent producer; returns (acknowledged, errors)."""
    from confluent_kafka import Producer

    delivery = _Delivery()

    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, **config}
    )
    for v in values:
        while True:
            try:
                producer.produce(topic, v, on_delivery=delivery.report)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining:
        delivery.errors.append(f"{remaining} messages still queued after flush")
    return delivery.acked, delivery.errors


def confluent_trickle_produce(
    bootstrap: str, topic: str, values: list[bytes], **config: Any
) -> tuple[int, list[str]]:
    """librdkafka WITHOUT idempotence (its default), a message every ~3 ms; returns
    (acknowledged, errors).

    linger.ms=5 and at most 7 messages a batch make small batches; by the time a failed
    batch is retried (retry.backoff.ms) more messages are queued behind it, so its
    messages are re-batched beside new ones. `config` adds producer settings.
    """
    from confluent_kafka import Producer

    delivery = _Delivery()

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "batch.num.messages": 7,
            "acks": "all",
            **config,
        }
    )
    for v in values:
        producer.produce(topic, v, on_delivery=delivery.report)
        producer.poll(0.003)
    if remaining := producer.flush(60):
        delivery.errors.append(f"{remaining} messages still queued after flush")
    return delivery.acked, delivery.errors


def confluent_consume(
    bootstrap: str, topic: str, expected: int, *, group_id: str | None = None, timeout: float = 60
) -> list[bytes]:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_id or f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": group_id is not None,
        }
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            value = msg.value()
            if value is not None:
                got.append(value)
        return got
    finally:
        consumer.close()


def confluent_create_topic(bootstrap: str, topic: str, partitions: int, replication: int) -> None:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin import NewTopic as CNewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([CNewTopic(topic, partitions, replication)])
    for future in futures.values():
        future.result(30)


class SteadyProducer(threading.Thread):
    """A librdkafka idempotent producer sending `rate` unique records a second until
    `finish()`; counts (and with `keep_values`, keeps) what the broker acknowledged.

    Values are ``<name>-<sequence>``, so a test can tell its records from any others
    and count losses and duplicates on read-back.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        rate: int,
        name: str,
        *,
        keep_values: bool = False,
        **config: Any,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.keep_values = keep_values
        self.config = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 120000,
            **config,
        }
        self.sent = 0
        self.acked = 0
        self.acked_values: list[bytes] = []
        self.acked_by_partition: Counter[int] = Counter()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.flush_timeout = 60.0

    def _report(self, err: Any, msg: Any) -> None:
        if err is None:
            self.acked += 1
            self.acked_by_partition[msg.partition()] += 1
            if self.keep_values:
                self.acked_values.append(msg.value())
        else:
            self.errors.append(str(err))

    def run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer(self.config)
        began = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - began) * self.rate)
            while self.sent < due:
                value = f"{self.name}-{self.sent:09d}".encode()
                try:
                    producer.produce(self.topic, value, on_delivery=self._report)
                except BufferError:
                    break
                self.sent += 1
            producer.poll(0.05)
        remaining = producer.flush(self.flush_timeout)
        if remaining:
            self.errors.append(f"{remaining} records still queued after flush")

    def finish(self, timeout: float = 60.0) -> None:
        """Stop sending, wait for every record's outcome (at most `timeout` seconds)."""
        self.flush_timeout = timeout
        self.stop.set()
        self.join(timeout + 30)

    def wait_acked(self, count: int, timeout: float) -> bool:
        """Wait until at least `count` records are acknowledged; False if not in time."""
        deadline = time.monotonic() + timeout
        while self.acked < count:
            if time.monotonic() >= deadline or not self.is_alive():
                return False
            time.sleep(0.1)
        return True
