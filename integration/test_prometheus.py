"""The observability artifacts against a real Prometheus scraping a real proxy.

A Prometheus server (Debian's `prometheus` binary) scrapes a running idemproxy every
second and loads deploy/prometheus/alerts.yml. After traffic through the proxy
(produce, consume, a retried batch, sequence gaps, a non-idempotent batch and an
oversized frame; then a producer without idempotence through lost acknowledgements,
stamped by the proxy, and records in doubt beyond --stamp-memory), every query of the
Grafana dashboard and every alert rule is evaluated through Prometheus' HTTP API.

Clients reach the proxy through a LostAckRelay on 127.0.0.2 (the proxy advertises that
address); it relays untouched except while the stamp-mode traffic runs.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka.protocol.producer import ProduceResponse

from integration import clients
from integration.faults import LostAckRelay
from integration.harness import Cluster, _proc
from integration.harness._wire import init_producer_id
from integration.proxy_process import ProxyProcess, free_port_block
from integration.rigs import CLIENT_SIDE
from tests.deploy.artifacts import (
    ALERTS,
    K8S,
    Query,
    alert_rules,
    dashboard_queries,
    load_dashboard,
    load_yaml_all,
    substitute,
    template_variables,
)
from tests.routing._support import idempotent_batch, produce_frame

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus not installed (Debian package 'prometheus'; `make install` installs it)",
    ),
]

JOB = "idemproxy"  # the job name alerts.yml and the dashboard's $job expect
#: The smallest --stamp-memory the proxy accepts (1 MiB): records in doubt beyond it are evicted.
STAMP_MEMORY = 1 << 20
#: Records of one batch whose acknowledgement the client may have missed: 3000 x ~376 bytes
#: counted (proxy.idempotence.stamping.COPY_OVERHEAD + digest) is above STAMP_MEMORY.
EVICTING_RECORDS = 3000
QUERIES = dashboard_queries(load_dashboard())
RULES = alert_rules()


class PrometheusServer:
    """A Prometheus on a free loopback port, scraping `targets` every second."""

    def __init__(self, targets: list[str], rule_files: list[Path]) -> None:
        self.port = free_port_block(1)
        self.dir = _proc.make_work_dir("idemproxy-prometheus-")
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "evaluation_interval": "1s",
                    },
                    "rule_files": [str(f) for f in rule_files],
                    "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
                }
            )
        )
        self.log = self.dir / "prometheus.log"
        self.proc: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        assert PROMETHEUS is not None
        self.proc = _proc.spawn(
            [
                PROMETHEUS,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            log=self.log,
            cwd=self.dir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready within {timeout}s:\n{self.logs()}")

    def stop(self) -> None:
        if self.proc is not None:
            _proc.stop(self.proc, grace=10)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; the decoded JSON, also for 4xx answers (which carry errors)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = resp.read()
        except urllib.error.HTTPError as err:
            body = err.read()
        data: dict[str, Any] = json.loads(body)
        return data

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def value(self, expr: str) -> float | None:
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else None


# -- traffic ----------------------------------------------------------------------------


def _record_batch(producer_id: int, epoch: int, sequence: int, values: list[bytes]) -> bytes:
    return idempotent_batch(
        producer_id, epoch, sequence, timestamp=int(time.time() * 1000), values=values
    )


class RawProducer:
    """Sends hand-made produce requests on one connection, to retry a batch byte for byte."""

    VERSION = 8

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.topic = topic
        self.correlation_id = 0

    def produce(self, batch: bytes) -> int:
        """Send one batch to partition 0; the partition's error code."""
        self.correlation_id += 1
        request = produce_frame(
            self.VERSION,
            self.topic,
            [(0, batch)],
            self.correlation_id,
            client_id="test-prometheus",
        )
        self.sock.sendall(request)
        size = struct.unpack(">i", self._read(4))[0]
        response = ProduceResponse.decode(self._read(size), version=self.VERSION, header=True)
        (topic,) = response.responses
        (partition,) = topic.partition_responses
        return int(partition.error_code)

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("proxy closed the connection")
            buf += chunk
        return buf

    def close(self) -> None:
        self.sock.close()


def _producer_id(proxy: ProxyProcess) -> tuple[int, int]:
    deadline = time.monotonic() + 30
    while True:
        error, producer_id, epoch = init_producer_id("127.0.0.1", proxy.listen_port)
        if error == 0:
            return producer_id, epoch
        if time.monotonic() > deadline:
            raise RuntimeError(f"InitProducerId error {error}")
        time.sleep(0.5)


def _oversized_frame(proxy: ProxyProcess) -> None:
    """A length prefix above --max-frame-bytes: the proxy refuses it and closes."""
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=10) as sock:
        sock.sendall(struct.pack(">i", 0x7FFFFFF0) + b"\x00" * 16)
        sock.settimeout(10)
        assert sock.recv(1) == b""


@dataclass
class Traffic:
    proxy: ProxyProcess
    prometheus: PrometheusServer
    relay: LostAckRelay

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.proxy.metrics_port}"


OUT_OF_ORDER = 'idemproxy_produce_batches_total{result="out_of_order"}'


def _wait_for(prometheus: PrometheusServer, expr: str, want: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (got := prometheus.value(expr)) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"{expr} = {got}, expected {want}:\n{prometheus.logs()}")
        time.sleep(0.2)


def _send_traffic(
    cluster: Cluster, proxy: ProxyProcess, prometheus: PrometheusServer, topic: str
) -> None:
    cluster.create_topic(topic, partitions=1)
    values = clients.payloads(200)
    assert clients.kafka_python_produce(proxy.bootstrap, topic, values) == len(values)
    assert len(clients.kafka_python_consume(proxy.bootstrap, topic, len(values))) == len(values)

    (node_id,) = cluster.node_ids()
    producer_id, epoch = _producer_id(proxy)
    raw = RawProducer("127.0.0.1", proxy.broker_port(node_id), topic)
    try:
        # Five acknowledged batches: the proxy then knows every batch the broker caches,
        # so it answers retries and sequence gaps itself.
        batches = [_record_batch(producer_id, epoch, seq, clients.payloads(1)) for seq in range(5)]
        for batch in batches:
            assert raw.produce(batch) == 0  # forwarded, written
        assert raw.produce(batches[-1]) == 0  # a retry: answered by the proxy as a duplicate
        assert raw.produce(_record_batch(producer_id, epoch, 10, clients.payloads(1))) == 45
        # The proxy creates a labelled series at its first event (value 1), which rate()
        # cannot see: repeat the gap and the retry once Prometheus has the first ones.
        _wait_for(prometheus, OUT_OF_ORDER, 1)
        time.sleep(1.5)
        assert raw.produce(_record_batch(producer_id, epoch, 20, clients.payloads(1))) == 45
        assert raw.produce(batches[-1]) == 0  # the same retry again: a second duplicate
        # a new epoch starting at 0 is written; the old epoch is then fenced (47)
        assert raw.produce(_record_batch(producer_id, epoch + 1, 0, clients.payloads(1))) == 0
        assert raw.produce(_record_batch(producer_id, epoch, 5, clients.payloads(1))) == 47
        assert raw.produce(_record_batch(-1, -1, -1, clients.payloads(2))) == 0  # no producer id
    finally:
        raw.close()
    _oversized_frame(proxy)
    _wait_for(prometheus, OUT_OF_ORDER, 2)
    _wait_for(prometheus, 'sum(idemproxy_frames_refused_total{reason="FrameTooLarge"})', 1)


def _stamp_traffic(
    cluster: Cluster,
    proxy: ProxyProcess,
    relay: LostAckRelay,
    prometheus: PrometheusServer,
    topic: str,
) -> None:
    """A producer without idempotence through lost acks (the default --non-idempotent stamp),
    then one batch whose records come into doubt beyond --stamp-memory (evictions)."""
    cluster.create_topic(topic, partitions=1)
    values = [b"plain-%04d" % i for i in range(60)]
    relay.drop_every(3)  # every 3rd produce answer lost after the write, the client reset
    try:
        acked = clients.kafka_python_produce(
            f"{CLIENT_SIDE}:{proxy.listen_port}",
            topic,
            values,
            idempotent=False,
            batch_size=256,
            max_in_flight_requests_per_connection=1,
        )
    finally:
        relay.drop_every(0)
    assert acked == len(values)
    assert relay.stats.acks_dropped > 0
    # Each record once: the retries of records the proxy had written were not sent again.
    got = clients.kafka_python_consume(proxy.bootstrap, topic, len(values), timeout=30)
    assert Counter(got) == Counter(values)
    _wait_for(prometheus, "idemproxy_retried_records_dropped_total > bool 0", 1)

    # A success answer read, and the connection closed at once (within the proxy's ack
    # grace): the client may not have seen it, so every record is in doubt, more bytes than
    # --stamp-memory allows; the proxy forgets the least recently used lines.
    (node_id,) = cluster.node_ids()
    raw = RawProducer("127.0.0.1", proxy.broker_port(node_id), topic)
    try:
        values = [b"d%04d" % i for i in range(EVICTING_RECORDS)]
        assert raw.produce(_record_batch(-1, -1, -1, values)) == 0
    finally:
        raw.close()
    _wait_for(prometheus, "idemproxy_stamp_state_evictions_total > bool 0", 1)


@pytest.fixture(scope="module")
def traffic(kafka_cluster: Cluster) -> Iterator[Traffic]:
    extra = ["--advertised-host", CLIENT_SIDE, "--stamp-memory", str(STAMP_MEMORY)]
    with ProxyProcess(kafka_cluster.bootstrap, extra=extra) as proxy:
        ports = [proxy.listen_port] + [proxy.broker_port(n) for n in kafka_cluster.node_ids()]
        with LostAckRelay(CLIENT_SIDE, "127.0.0.1", ports) as relay:
            prometheus = PrometheusServer([f"127.0.0.1:{proxy.metrics_port}"], [ALERTS]).start()
            try:
                _wait_for(prometheus, f'up{{job="{JOB}"}}', 1)
                run = time.monotonic_ns()
                _send_traffic(kafka_cluster, proxy, prometheus, f"prometheus-{run}")
                _stamp_traffic(kafka_cluster, proxy, relay, prometheus, f"prometheus-plain-{run}")
                time.sleep(2.5)  # a few more scrapes and rule evaluations
                yield Traffic(proxy, prometheus, relay)
            finally:
                prometheus.stop()


def _template_values(traffic: Traffic) -> dict[str, str]:
    # A rate window that reaches back before the traffic (Grafana's $__rate_interval
    # is at least four scrape intervals; the traffic above takes longer than that).
    return {"job": JOB, "instance": traffic.instance, "__rate_interval": "2m"}


def _query_id(query: Query) -> str:
    return f"{query.panel}/{query.ref_id}"


@pytest.mark.parametrize("query", QUERIES, ids=_query_id)
def test_dashboard_query_returns_data(traffic: Traffic, query: Query) -> None:
    expr = substitute(query.expr, _template_values(traffic))
    answer = traffic.prometheus.query(expr)
    assert answer["status"] == "success", (expr, answer)
    assert answer["data"]["result"], f"no data for {query.panel!r}: {expr}"


def test_dashboard_core_panels_show_the_traffic(traffic: Traffic) -> None:
    values = _template_values(traffic)
    by_result = {
        r["metric"]["result"]: float(r["value"][1])
        for q in QUERIES
        if q.panel == "Produce batches by result"
        for r in traffic.prometheus.query(substitute(q.expr, values))["data"]["result"]
    }
    assert {"forwarded", "duplicate", "out_of_order", "fenced"} <= set(by_result)
    # results that occurred twice, with a scrape in between (see _send_traffic)
    assert by_result["forwarded"] > 0
    assert by_result["duplicate"] > 0
    assert by_result["out_of_order"] > 0
    (share,) = [q for q in QUERIES if q.panel == "Duplicate share of produce batches"]
    (row,) = traffic.prometheus.query(substitute(share.expr, values))["data"]["result"]
    assert 0 < float(row["value"][1]) < 1
    (version,) = [q for q in QUERIES if q.panel == "Version"]
    (row,) = traffic.prometheus.query(substitute(version.expr, values))["data"]["result"]
    from proxy import __version__

    assert row["metric"]["version"] == __version__


def test_stamp_panels_show_the_traffic(traffic: Traffic) -> None:
    """The stamp-mode row: retries recognised, batches stamped and written, a producer id
    obtained for each client id, state kept and evicted."""
    values = _template_values(traffic)

    def panel(title: str) -> dict[str, float]:
        """The panel's values by the one label it sums by."""
        (query,) = [q for q in QUERIES if q.panel == title]
        rows = traffic.prometheus.query(substitute(query.expr, values))["data"]["result"]
        return {"".join(r["metric"].values()): float(r["value"][1]) for r in rows}

    assert sum(panel("Retried records dropped per second").values()) > 0
    stamped = panel("Stamped batches by result")
    assert stamped["written"] > 0
    assert stamped["unresolved"] == 0
    assert panel("Non-idempotent batches by action")["stamp"] > 0
    ids = panel("Producer ids obtained / refused")
    assert ids["obtained"] > 0
    assert ids["refused"] == 0
    assert sum(panel("Stamp state evictions").values()) > 0
    assert sum(panel("Stamp lines").values()) > 0


def test_template_variables_resolve(traffic: Traffic) -> None:
    """What Grafana asks for label_values(SELECTOR, LABEL): /api/v1/label/LABEL/values."""
    found = {}
    for name in ("job", "instance"):
        variable = template_variables(load_dashboard())[name]
        query = variable["query"]["query"]
        selector, label = query[len("label_values(") : -1].rsplit(",", 1)
        selector = substitute(selector, {"job": JOB})
        answer = traffic.prometheus.api(f"label/{label.strip()}/values", **{"match[]": selector})
        assert answer["status"] == "success", answer
        found[name] = answer["data"]
    assert found == {"job": [JOB], "instance": [traffic.instance]}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["alert"])
def test_alert_expression_evaluates(traffic: Traffic, rule: dict[str, Any]) -> None:
    answer = traffic.prometheus.query(rule["expr"])
    assert answer["status"] == "success", (rule["expr"], answer)


def test_alert_rules_are_loaded_and_healthy(traffic: Traffic) -> None:
    groups = traffic.prometheus.api("rules", type="alert")["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {r["alert"] for r in RULES}
    for name, rule in loaded.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))


def _firing(traffic: Traffic, wanted: set[str], timeout: float = 15) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        alerts = traffic.prometheus.api("alerts")["data"]["alerts"]
        firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
        if wanted <= firing or time.monotonic() > deadline:
            return firing
        time.sleep(0.5)


def test_out_of_order_batches_fire_their_alert(traffic: Traffic) -> None:
    firing = _firing(traffic, {"IdemproxyOutOfOrderSequence"})
    assert "IdemproxyOutOfOrderSequence" in firing
    assert "IdemproxyDown" not in firing
    assert "IdemproxyUpstreamDown" not in firing


def test_stamp_state_evictions_fire_their_alert(traffic: Traffic) -> None:
    firing = _firing(traffic, {"IdemproxyStampStateEvictions"})
    assert "IdemproxyStampStateEvictions" in firing
    # every stamped batch resolved, and the broker granted every producer id
    assert "IdemproxyStampedBatchesUnresolved" not in firing
    assert "IdemproxyProducerIdRefused" not in firing


def test_k8s_probe_paths_answer_200_with_a_live_cluster(traffic: Traffic) -> None:
    (deployment,) = [d for d in load_yaml_all(K8S / "deployment.yaml") if d["kind"] == "Deployment"]
    (sidecar,) = deployment["spec"]["template"]["spec"]["initContainers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = sidecar[probe]["httpGet"]["path"]
        url = f"http://127.0.0.1:{traffic.proxy.metrics_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200, (probe, path)
