"""A single-node Kafka in Docker via testcontainers-python (used only where Docker answers).

testcontainers 4.x ships the Kafka module as ``testcontainers.community.kafka``
(``testcontainers.kafka`` is a deprecated alias, the only path before ~4.10).
Its ``KafkaContainer`` drives the Confluent image's own start scripts
(``/etc/confluent/docker/configure``), so it needs a ``confluentinc/cp-kafka``
image, and ``with_kraft()`` needs tag >= 7.0.0. The pinned default is
:data:`IMAGE` (Apache Kafka 3.6 inside); override with
``IDEMPROXY_TESTCONTAINERS_IMAGE``. Ryuk (testcontainers' reaper) removes the
container even if the test process dies.
"""

from __future__ import annotations

import atexit
import os
import time
from functools import cache
from typing import Any

from ._base import BrokerStartError, Cluster, UnsupportedFeature

IMAGE = "confluentinc/cp-kafka:7.6.1"
IMAGE_ENV = "IDEMPROXY_TESTCONTAINERS_IMAGE"
NODE_ID = 1


@cache
def docker_available(timeout: float = 3.0) -> bool:
    """Whether testcontainers is importable and a Docker engine answers a ping."""
    try:
        from testcontainers.core.docker_client import DockerClient
    except ImportError:
        return False
    try:
        client = DockerClient(timeout=timeout).client
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, permission denied, daemon down, bad DOCKER_HOST...
        return False


def _kafka_container_class() -> Any:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers < 4.10
        from testcontainers.kafka import KafkaContainer
    return KafkaContainer


class ContainerKafkaCluster(Cluster):
    """One KRaft Kafka broker in a Docker container (no restart, no multi-node)."""

    kind = "testcontainers"
    features = frozenset({"consumer_groups", "transactions", "idempotence"})

    def __init__(self, *, image: str | None = None, start_timeout: float = 180.0) -> None:
        if not docker_available():
            raise UnsupportedFeature("no Docker engine answers (testcontainers needs one)")
        self.image = image or os.environ.get(IMAGE_ENV, IMAGE)
        self.start_timeout = start_timeout
        container = _kafka_container_class()(self.image).with_kraft()
        for key, value in {
            "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "5",
            "KAFKA_NUM_PARTITIONS": "1",
            "KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m",
        }.items():
            container.with_env(key, value)
        self._container: Any = container
        self._host = ""
        self._port = 0
        self._closed = False
        atexit.register(self.close)

    @property
    def bootstrap(self) -> str:
        return f"{self._host}:{self._port}"

    def node_ids(self) -> list[int]:
        return [NODE_ID]

    def address(self, node_id: int) -> tuple[str, int]:
        if node_id != NODE_ID:
            raise KeyError(f"no node {node_id}; the container is node {NODE_ID}")
        return self._host, self._port

    def start(self) -> ContainerKafkaCluster:
        """Pull/start the container and wait for a Metadata answer listing the broker."""
        began = time.monotonic()
        try:
            self._container.start(timeout=int(self.start_timeout))
            host, port = self._container.get_bootstrap_server().rsplit(":", 1)
            self._host, self._port = host, int(port)
            # The broker advertises its own id; learn it rather than assume.
            self.wait_for_brokers(self._advertised_ids(), timeout=60.0)
        except Exception as exc:
            logs = self._logs()
            self.close()
            raise BrokerStartError(
                f"Kafka container {self.image} did not start: {exc}\n{logs}"
            ) from exc
        self.startup_seconds = time.monotonic() - began
        return self

    def stop_node(self, node_id: int, *, hard: bool = False) -> None:
        raise UnsupportedFeature(
            "testcontainers Kafka cannot stop/restart a node (ports would change)"
        )

    def start_node(self, node_id: int) -> None:
        raise UnsupportedFeature(
            "testcontainers Kafka cannot stop/restart a node (ports would change)"
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._container.stop()
        except Exception:  # already gone / never started: Ryuk cleans up regardless
            pass
        atexit.unregister(self.close)

    def _advertised_ids(self) -> list[int]:
        deadline = time.monotonic() + 60.0
        while True:
            try:
                ids = sorted(self.metadata(node_id=NODE_ID, timeout=2.0).brokers)
                if ids:
                    return ids
            except ConnectionError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError("the Kafka container never answered Metadata")
            time.sleep(0.2)

    def _logs(self) -> str:
        try:
            out, err = self._container.get_logs()
            text = (out + err).decode("utf-8", "replace")
            return "\n".join(text.splitlines()[-40:])
        except Exception:
            return "(no container logs)"
