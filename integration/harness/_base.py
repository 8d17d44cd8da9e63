"""The broker-agnostic :class:`Cluster` interface every harness implements."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

from . import _wire
from ._wire import Metadata, TopicInfo

#: Feature names understood by :meth:`Cluster.supports`.
FEATURES = frozenset({"consumer_groups", "transactions", "idempotence", "multi_node", "restart"})


class BrokerStartError(RuntimeError):
    """A broker did not start or did not become ready in time."""


class UnsupportedFeature(RuntimeError):
    """The cluster kind cannot do what was asked (e.g. 3 nodes of Tansu)."""


class Cluster(ABC):
    """A running Kafka-protocol cluster started by the test harness.

    Features (see :data:`FEATURES`): ``consumer_groups``, ``transactions``,
    ``idempotence`` (InitProducerId + sequence checks), ``multi_node`` and
    ``restart`` (a node can be stopped and started again *with its data*).
    """

    kind: ClassVar[str]
    features: ClassVar[frozenset[str]]
    #: Seconds the last full start (launch to ready) took.
    startup_seconds: float = 0.0

    @property
    @abstractmethod
    def bootstrap(self) -> str:
        """``"127.0.0.1:port,..."`` for every configured node."""

    @abstractmethod
    def node_ids(self) -> list[int]:
        """Broker node ids (running or stopped), ascending."""

    @abstractmethod
    def address(self, node_id: int) -> tuple[str, int]:
        """(host, port) of a node's client listener."""

    @abstractmethod
    def stop_node(self, node_id: int, *, hard: bool = False) -> None:
        """Stop one node: SIGTERM then SIGKILL, or ``hard``: SIGKILL at once (a crash).

        Raises :class:`UnsupportedFeature` where impossible.
        """

    @abstractmethod
    def start_node(self, node_id: int) -> None:
        """Start a stopped node again and wait until it is serving."""

    @abstractmethod
    def close(self) -> None:
        """Stop everything and delete temp state; idempotent."""

    def running_node_ids(self) -> list[int]:
        """Node ids whose process is up."""
        return self.node_ids()

    @classmethod
    def supports(cls, feature: str) -> bool:
        """Whether this kind of cluster supports ``feature`` (one of :data:`FEATURES`)."""
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}; known: {sorted(FEATURES)}")
        return feature in cls.features

    # -- talking to the brokers ------------------------------------------------------------

    def running_bootstrap(self) -> str:
        """Like :attr:`bootstrap`, but only nodes that are currently up."""
        return ",".join("{}:{}".format(*self.address(n)) for n in self.running_node_ids())

    def metadata(
        self, topics: Sequence[str] | None = (), *, node_id: int | None = None, timeout: float = 5.0
    ) -> Metadata:
        """A raw Metadata answer from ``node_id`` (default: first running node that answers)."""
        candidates = [node_id] if node_id is not None else self.running_node_ids()
        error: Exception | None = None
        for candidate in candidates:
            try:
                return _wire.metadata(*self.address(candidate), topics=topics, timeout=timeout)
            except (OSError, _wire.WireError) as exc:
                error = exc
        raise ConnectionError(f"no node of {self.kind} cluster answered Metadata: {error}")

    def leader(self, topic: str, partition: int = 0) -> int:
        """Current leader node id of a partition (-1 when leaderless)."""
        info = self.metadata([topic]).topics.get(topic)
        part = info.partitions.get(partition) if info else None
        return part.leader if part else -1

    def admin(self, **config: Any) -> Any:
        """A kafka-python ``KafkaAdminClient`` on the running nodes (caller closes it)."""
        from kafka.admin import KafkaAdminClient

        settings: dict[str, Any] = {
            "bootstrap_servers": self.running_bootstrap(),
            "client_id": "idemproxy-harness",
            "request_timeout_ms": 15000,
            "bootstrap_timeout_ms": 15000,
        }
        settings.update(config)
        return KafkaAdminClient(**settings)

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication: int = 1,
        *,
        configs: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> TopicInfo:
        """Create a topic (kafka-python admin) and wait until every running node has leaders."""
        admin = self.admin()
        try:
            admin.create_topics(
                {
                    name: {
                        "num_partitions": partitions,
                        "replication_factor": replication,
                        "configs": dict(configs or {}),
                    }
                },
                timeout_ms=int(timeout * 1000),
            )
        finally:
            admin.close()
        return self.wait_for_topic(name, partitions=partitions, timeout=timeout)

    def wait_for_topic(
        self, name: str, *, partitions: int | None = None, timeout: float = 30.0
    ) -> TopicInfo:
        """Wait until every running node reports ``name`` with a leader for each partition."""
        deadline = time.monotonic() + timeout
        last: object = "no answer"
        while True:
            infos: list[TopicInfo] = []
            for node in self.running_node_ids():
                try:
                    info = self.metadata([name], node_id=node, timeout=2.0).topics.get(name)
                except ConnectionError as exc:
                    last = exc
                    break
                if (
                    info is None
                    or not info.ready
                    or (partitions is not None and len(info.partitions) != partitions)
                ):
                    last = info
                    break
                infos.append(info)
            else:
                if infos:
                    return infos[0]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"topic {name!r} not ready after {timeout:.0f}s: {last}")
            time.sleep(0.05)

    def wait_for_brokers(self, expected: Collection[int], *, timeout: float = 60.0) -> None:
        """Wait until every running node lists exactly ``expected`` as live brokers."""
        want = set(expected)
        deadline = time.monotonic() + timeout
        seen: dict[int, object] = {}
        while True:
            nodes = self.running_node_ids()
            for node in nodes:
                try:
                    seen[node] = set(self.metadata(node_id=node, timeout=2.0).brokers)
                except ConnectionError as exc:
                    seen[node] = exc
            if nodes and all(seen.get(n) == want for n in nodes):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.kind}: brokers {sorted(want)} not all live after {timeout:.0f}s; "
                    f"each node sees {seen}"
                )
            time.sleep(0.1)

    # -- context manager -----------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind} bootstrap={self.bootstrap}>"
