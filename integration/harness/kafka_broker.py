"""Real Apache Kafka 4.x (KRaft) clusters as local JVM processes.

Each node is a combined ``broker,controller`` running ``kafka.Kafka`` from the
jars of :mod:`.kafka_dist`, with a static controller quorum
(``controller.quorum.voters``), so storage is formatted with
``kafka.tools.StorageTool format -t <cluster id> -c server.properties`` (no
``--standalone`` / ``--initial-controllers``: those are for dynamic quorums).
A formatted static-quorum log dir holds just ``meta.properties`` (cluster id,
node id, a random directory id) and ``bootstrap.checkpoint`` (the feature
levels, identical for every cluster of one Kafka version but for timestamps),
so StorageTool runs once per test process and later nodes reuse its
``bootstrap.checkpoint``: that saves a ~1s JVM per node. Everything listens on
127.0.0.1 on ports picked by the harness; a restarted node keeps its ports and
data dir. Broker logs go to ``<tmp>/node-<id>/broker.log`` (JVM stdout/stderr
to ``jvm.log`` next to it), never to the test output.

Environment knobs: ``IDEMPROXY_KAFKA_JVM_OPTS`` (extra JVM flags, appended, so
``-Xmx1g`` overrides the default heap), ``IDEMPROXY_BROKER_START_TIMEOUT``
(seconds, default 120), ``IDEMPROXY_KEEP_BROKER_DIRS=1`` (keep temp dirs).
"""

from __future__ import annotations

import atexit
import base64
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import _proc, _wire
from ._base import BrokerStartError, Cluster
from .kafka_dist import ensure_kafka_libs, java_classpath, java_executable
from .sasl import Sasl

HOST = "127.0.0.1"
LOG4J_BROKER = Path(__file__).resolve().parent / "log4j2-broker.properties"
#: JVM flags tuned for start-up time and a small footprint, not throughput.
BROKER_JVM_OPTS: tuple[str, ...] = (
    "-Xms64m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
)
ConfigValue = str | int | bool
#: ``bootstrap.checkpoint`` written by the first StorageTool run of this process.
_bootstrap_checkpoint: bytes | None = None


def new_cluster_id() -> str:
    """A random KRaft cluster id (base64url UUID, like ``kafka-storage random-uuid``)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids ids that look like CLI flags
            return cid


def _start_timeout() -> float:
    return float(os.environ.get("IDEMPROXY_BROKER_START_TIMEOUT", "120"))


@dataclass
class _Node:
    node_id: int
    port: int
    controller_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    #: Port of each extra listener (``listeners=`` of KafkaCluster), by listener name.
    extra_ports: dict[str, int] = field(default_factory=dict)

    @property
    def props(self) -> Path:
        return self.dir / "server.properties"

    @property
    def log(self) -> Path:
        return self.dir / "broker.log"

    @property
    def jvm_log(self) -> Path:
        return self.dir / "jvm.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class KafkaCluster(Cluster):
    """``nodes`` combined broker+controller JVMs; call :meth:`start` (or use ``start_cluster``)."""

    kind = "kafka"
    features = frozenset(
        {"consumer_groups", "transactions", "idempotence", "multi_node", "restart"}
    )

    def __init__(
        self,
        nodes: int = 1,
        *,
        heap: str = "384m",
        config: Mapping[str, ConfigValue] | None = None,
        jvm_opts: Sequence[str] = (),
        start_timeout: float | None = None,
        advertised_host: str = HOST,
        listeners: Mapping[str, str] | None = None,
        sasl: Sasl | None = None,
    ) -> None:
        """advertised_host: the address brokers hand out (another loopback address puts a
        relay of the test's, such as integration.faults, in front of every broker port).

        listeners: extra client listeners, name -> security protocol (``{"TLS": "SSL"}``),
        each on a port of its own on every node and advertised beside PLAINTEXT (which stays
        the inter-broker listener and the one the harness checks readiness on); settings
        for one go in ``config`` under ``listener.name.<lower-case name>.``.

        sasl: users and mechanisms of the SASL_SSL/SASL_PLAINTEXT extra listeners, and the
        StandardAuthorizer (see integration.harness.sasl); ``config`` overrides its settings.
        """
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        self.extra_listeners = dict(listeners or {})
        for name in self.extra_listeners:
            if name.upper() != name or name in ("PLAINTEXT", "CONTROLLER"):
                raise ValueError(f"extra listener names are upper case and new, got {name!r}")
        self.size = nodes
        self.heap = heap
        self.sasl = sasl
        sasl_listeners = [n for n, p in self.extra_listeners.items() if p.startswith("SASL_")]
        if sasl_listeners and sasl is None:
            raise ValueError(f"SASL listeners {sasl_listeners} need sasl=Sasl(...)")
        self.extra_config: dict[str, ConfigValue] = {
            **(sasl.broker_config(sasl_listeners) if sasl is not None else {}),
            **(config or {}),
        }
        self.advertised_host = advertised_host
        self.jvm_opts = [*jvm_opts, *shlex.split(os.environ.get("IDEMPROXY_KAFKA_JVM_OPTS", ""))]
        self.start_timeout = start_timeout if start_timeout is not None else _start_timeout()
        self.cluster_id = new_cluster_id()
        self.work_dir = _proc.make_work_dir(f"idemproxy-kafka{nodes}-")
        extra = len(self.extra_listeners)
        ports = _proc.free_ports((2 + extra) * nodes)
        self._nodes = {
            i: _Node(i, ports[2 * (i - 1)], ports[2 * (i - 1) + 1], self.work_dir / f"node-{i}")
            for i in range(1, nodes + 1)
        }
        spare = iter(ports[2 * nodes :])
        for node in self._nodes.values():
            node.extra_ports = {name: next(spare) for name in self.extra_listeners}
        self._closed = False
        atexit.register(self.close)

    # -- Cluster interface -------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{n.port}" for n in self._nodes.values())

    def node_ids(self) -> list[int]:
        return sorted(self._nodes)

    def running_node_ids(self) -> list[int]:
        return [i for i, n in sorted(self._nodes.items()) if n.running]

    def address(self, node_id: int) -> tuple[str, int]:
        return HOST, self._node(node_id).port

    def listener_bootstrap(self, name: str) -> str:
        """Bootstrap addresses of an extra listener (``listeners=``)."""
        return ",".join(f"{HOST}:{n.extra_ports[name]}" for n in self._nodes.values())

    def listener_address(self, name: str, node_id: int) -> tuple[str, int]:
        return HOST, self._node(node_id).extra_ports[name]

    def log_path(self, node_id: int) -> Path:
        """The node's log4j broker log."""
        return self._node(node_id).log

    def start(self) -> KafkaCluster:
        """Format storage, launch every node and wait until all are live brokers."""
        began = time.monotonic()
        try:
            ensure_kafka_libs()
            for node in self._nodes.values():
                node.dir.mkdir(parents=True, exist_ok=True)
                node.props.write_text(self._properties(node))
            for node in self._nodes.values():
                self._format(node)
            for node in self._nodes.values():
                self._launch(node)
            self._await(self.node_ids(), self.start_timeout, producer_ids=self.node_ids())
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop_node(
        self, node_id: int, *, hard: bool = False, wait: bool = True, timeout: float = 60.0
    ) -> None:
        """Stop a node: SIGTERM (controlled shutdown), SIGKILL after 20s; ``hard``: SIGKILL now.

        With ``wait`` and a surviving controller majority, returns once the remaining
        nodes no longer list it as a live broker (it is fenced; leaders have moved).
        """
        node = self._node(node_id)
        if node.proc is not None:
            _proc.stop(node.proc, grace=0 if hard else 20.0)
            node.proc = None
        running = self.running_node_ids()
        if wait and len(running) > self.size // 2:
            self._await(running, timeout)

    def start_node(self, node_id: int, *, wait: bool = True, timeout: float | None = None) -> None:
        """Restart a stopped node with its old data dir and ports; wait until it is live."""
        node = self._node(node_id)
        if node.running:
            return
        self._launch(node)
        if wait:
            self._await(
                self.running_node_ids(), timeout or self.start_timeout, producer_ids=[node_id]
            )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for node in self._nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()  # no graceful shutdown needed: the data is deleted next
        for node in self._nodes.values():
            if node.proc is not None:
                _proc.stop(node.proc, grace=0)
                node.proc = None
        _proc.remove_tree(self.work_dir)
        atexit.unregister(self.close)

    # -- internals ---------------------------------------------------------------------------

    def _node(self, node_id: int) -> _Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id}; nodes are {self.node_ids()}") from None

    def _properties(self, node: _Node) -> str:
        n = self.size
        voters = ",".join(f"{m.node_id}@{HOST}:{m.controller_port}" for m in self._nodes.values())
        extra = [(name, node.extra_ports[name], p) for name, p in self.extra_listeners.items()]
        config: dict[str, ConfigValue] = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": ",".join(
                [f"PLAINTEXT://{HOST}:{node.port}", f"CONTROLLER://{HOST}:{node.controller_port}"]
                + [f"{name}://{HOST}:{port}" for name, port, _ in extra]
            ),
            "advertised.listeners": ",".join(
                [f"PLAINTEXT://{self.advertised_host}:{node.port}"]
                + [f"{name}://{self.advertised_host}:{port}" for name, port, _ in extra]
            ),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(
                ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
                + [f"{name}:{protocol}" for name, _, protocol in extra]
            ),
            "log.dirs": str(node.dir / "data"),
            "auto.create.topics.enable": True,
            "num.partitions": 1,
            "default.replication.factor": n,
            "offsets.topic.replication.factor": n,
            "offsets.topic.num.partitions": 5,
            "transaction.state.log.replication.factor": n,
            "transaction.state.log.min.isr": min(2, n),
            "transaction.state.log.num.partitions": 5,
            "share.coordinator.state.topic.replication.factor": n,
            "share.coordinator.state.topic.min.isr": min(2, n),
            "share.coordinator.state.topic.num.partitions": 3,
            "group.initial.rebalance.delay.ms": 0,
            # Fail over quickly: a killed broker is fenced after 4s instead of 9s.
            "broker.heartbeat.interval.ms": 500,
            "broker.session.timeout.ms": 4000,
            # Few threads: several JVMs share two cores in CI.
            "num.network.threads": 2,
            "num.io.threads": 4,
            "background.threads": 4,
            "num.recovery.threads.per.data.dir": 1,
            "num.replica.fetchers": 1,
            "log.cleaner.threads": 1,
            "log.cleaner.dedupe.buffer.size": 2 * 1024 * 1024,
        }
        config.update(self.extra_config)
        lines = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in config.items()]
        return "\n".join(lines) + "\n"

    def _jvm(self, main_class: str, *args: str, node: _Node) -> list[str]:
        return [
            java_executable(),
            *BROKER_JVM_OPTS,
            f"-Xmx{self.heap}",
            f"-Dlog4j2.configurationFile={LOG4J_BROKER}",
            f"-Dkafka.logs.dir={node.dir}",
            *self.jvm_opts,
            "-cp",
            java_classpath(),
            main_class,
            *args,
        ]

    def _format(self, node: _Node) -> None:
        """Format the node's log dir (StorageTool once per process, then by template).

        SCRAM users live in the bootstrap records, so a cluster with some formats its first
        node with StorageTool and copies that checkpoint to its other nodes only.
        """
        global _bootstrap_checkpoint
        data = node.dir / "data"
        scram = self.sasl.format_arguments() if self.sasl is not None else []
        template = _bootstrap_checkpoint
        if scram:
            first = self._nodes[min(self._nodes)]
            template = (
                None
                if node is first
                else (first.dir / "data" / "bootstrap.checkpoint").read_bytes()
            )
        if template is not None:
            data.mkdir(parents=True, exist_ok=True)
            (data / "bootstrap.checkpoint").write_bytes(template)
            (data / "meta.properties").write_text(
                f"version=1\ncluster.id={self.cluster_id}\nnode.id={node.node_id}\n"
                f"directory.id={new_cluster_id()}\n"
            )
            return
        self._storage_tool_format(node, scram)
        if not scram:
            _bootstrap_checkpoint = (data / "bootstrap.checkpoint").read_bytes()

    def _storage_tool_format(self, node: _Node, extra: Sequence[str] = ()) -> None:
        argv = self._jvm(
            "kafka.tools.StorageTool", "format", "-t", self.cluster_id, "-c", str(node.props),
            *extra, node=node,
        )  # fmt: skip
        try:
            result = _proc.run(argv, timeout=120)
        except subprocess.TimeoutExpired as exc:
            raise BrokerStartError(
                f"formatting node {node.node_id} timed out: {exc.stderr!s}"
            ) from exc
        if result.returncode != 0:
            raise BrokerStartError(
                f"formatting node {node.node_id} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}{_proc.tail(node.log)}"
            )

    def _launch(self, node: _Node) -> None:
        argv = self._jvm("kafka.Kafka", str(node.props), node=node)
        node.proc = _proc.spawn(argv, log=node.jvm_log, cwd=node.dir)

    def _await(self, live: list[int], timeout: float, *, producer_ids: Sequence[int] = ()) -> None:
        """Wait until each node in ``live`` lists exactly ``live`` as its live brokers and
        each of ``producer_ids`` grants producer ids (a fresh broker first answers
        COORDINATOR_LOAD_IN_PROGRESS), so a client's first InitProducerId succeeds.

        Fails fast, with the logs, if one of those JVMs exits.
        """
        deadline = time.monotonic() + timeout
        want = set(live)
        pending_pids = list(producer_ids)
        state: dict[int, object] = {}
        while True:
            for node_id in live:
                proc = self._nodes[node_id].proc
                if proc is None or proc.poll() is not None:
                    code = "never started" if proc is None else f"exit code {proc.returncode}"
                    raise BrokerStartError(
                        f"kafka node {node_id} is not running ({code})\n"
                        f"{self._diagnostics([node_id])}"
                    )
            for node_id in live:
                try:
                    state[node_id] = set(self.metadata(node_id=node_id, timeout=2.0).brokers)
                except ConnectionError as exc:
                    state[node_id] = exc
            if all(state.get(n) == want for n in live):
                while pending_pids and self._grants_producer_ids(pending_pids[0]):
                    pending_pids.pop(0)
                if not pending_pids:
                    return
            if time.monotonic() >= deadline:
                waiting = (
                    f"node {pending_pids[0]} to grant producer ids"
                    if all(state.get(n) == want for n in live)
                    else f"live brokers {sorted(want)} on every node (each sees {state})"
                )
                raise BrokerStartError(
                    f"kafka not ready after {timeout:.0f}s: waiting for {waiting}\n"
                    f"{self._diagnostics(live)}"
                )
            time.sleep(0.05)

    def _grants_producer_ids(self, node_id: int) -> bool:
        try:
            return _wire.init_producer_id(*self.address(node_id), timeout=2.0)[0] == 0
        except (OSError, _wire.WireError):
            return False

    def _diagnostics(self, node_ids: list[int]) -> str:
        parts = []
        for node_id in node_ids:
            node = self._nodes[node_id]
            errors = _proc.error_lines(node.log)
            if errors:
                parts.append(f"--- node {node_id}: first errors in {node.log}\n{errors}")
            parts.append(f"--- node {node_id}: tail of {node.log}\n{_proc.tail(node.log, 25)}")
            jvm = _proc.tail(node.jvm_log, 15)
            if jvm:
                parts.append(f"--- node {node_id}: tail of {node.jvm_log}\n{jvm}")
        return "\n".join(parts)
