"""Orchestration and command line of ``python -m integration.bench`` (see the package doc)."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from integration.bench import loads, measure, peers, profiling, report
from integration.harness import Cluster, KafkaCluster, _proc
from integration.harness.kafka_dist import kafka_version
from integration.proxy_process import REPO, ProxyProcess

RECORD_SIZE = 1024
#: The request profiles of issue 10, measured with 1 KB records: large requests (256 KB
#: batches, 5 ms linger) and small ones (the Java client's default 16 KB batches, no linger).
#: They replace the 1 KB / 100 B record sizes of issue 5: both sizes times both profiles
#: times four targets does not fit the quick mode's 3 minutes.
PROFILES: dict[str, dict[str, str | int]] = {
    "large": {"batch.size": 262144, "linger.ms": 5},
    "small": {"batch.size": 16384, "linger.ms": 0},
}
TOPICS = {
    "throughput": "bench-throughput",
    "latency": "bench-latency",
    "state": "bench-state",
    "state-wide": "bench-state-wide",
}
#: Broker JVM for throughput: the harness's flags favour start-up (C1 only, serial GC); later
#: flags win, so these restore the C2 JIT and use G1 as kafka-server-start.sh does.
BROKER_JVM_OPTS = (
    "-Xms1g",
    "-XX:TieredStopAtLevel=4",
    "-XX:-UseSerialGC",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
)
#: Old segments are deleted quickly so a long run does not fill the disk.
TOPIC_CONFIGS = {
    "retention.bytes": str(256 * 1024 * 1024),
    "segment.bytes": str(64 * 1024 * 1024),
    "file.delete.delay.ms": "1000",
}
#: Kafka 4.x producer defaults, written out so the report states them.
PRODUCER_PROPS: dict[str, str | int] = {
    "linger.ms": 5,
    "batch.size": 16384,
    "compression.type": "none",
}
#: py-spy profiles idemproxy under this request profile: the one where it costs most.
PROFILE_PROFILED = "small"
#: The optional compiled build (setup.py, `make compiled`) as a target of its own.
COMPILED_TARGET = "idemproxy-mypyc"
COMPILED_DIR = REPO / "build" / "compiled"
SMALL_PIDS = [9_000_000]
LARGE_PIDS = list(range(10_000_000, 10_001_000))
STATE_PARTITIONS = 10
#: Issue 10: "a request spanning 100 partitions" (one producer id, one batch per partition).
WIDE_PIDS = [9_500_000]
WIDE_PARTITIONS = 100


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: float  # target length of each throughput run
    latency_seconds: float  # raw client
    rdkafka_seconds: float  # confluent-kafka
    latency_warmup: float
    latency_rate: int
    latency_size: int
    state_requests: int
    profile_seconds: float
    #: records of the warm-up run of each profile; the measured runs are sized from its rate
    warmup_records: dict[str, int]
    #: warm every target up in every profile; False (quick): all targets in the first profile,
    #: then only direct, whose warm-up rate sizes the runs
    warm_all_profiles: bool = True
    #: ask Maven Central again whether kroxylicious-app is there (False: reuse the last answer)
    recheck_central: bool = True


DEFAULT = Plan(
    3, 10.0, 10.0, 6.0, 1.5, 1000, 1024, 5000, 15.0, {"large": 300_000, "small": 200_000}
)
QUICK = Plan(
    1, 4.0, 4.0, 2.0, 1.0, 1000, 1024, 1000, 4.0, {"large": 100_000, "small": 60_000}, False, False
)


def say(text: str = "") -> None:
    click.echo(text)
    sys.stdout.flush()


def _rotate(items: list[Any], k: int) -> list[Any]:
    k %= len(items)
    return items[k:] + items[:k]


def _broker_pid(cluster: Cluster) -> int | None:
    nodes = getattr(cluster, "_nodes", {})
    for node in nodes.values():
        proc = getattr(node, "proc", None)
        if proc is not None and proc.poll() is None:
            return int(proc.pid)
    return None


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "proxy"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + ("+dirty proxy/" if dirty else "")
    except OSError:
        return "unknown"


def _version_string(value: Any) -> str:
    return str(value[0] if isinstance(value, tuple) else value)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Bench:
    """One benchmark run: the broker, the proxies, the measurements, the results dict."""

    def __init__(
        self,
        plan: Plan,
        out: Path,
        *,
        kroxylicious: bool,
        socat: bool,
        profile: bool,
        producer_overrides: dict[str, str | int],
        command: str,
        compiled: Path | None = None,
    ) -> None:
        import confluent_kafka

        from proxy import __version__

        self.plan = plan
        self.out = out
        self.want_kroxylicious = kroxylicious
        self.want_socat = socat
        self.want_profile = profile
        #: The compiled build's checkout copy (--compiled), measured as COMPILED_TARGET.
        self.compiled = compiled
        #: --producer-prop values, applied over every profile and over the defaults
        self.producer_overrides = dict(producer_overrides)
        self.producer_props = {**PRODUCER_PROPS, **producer_overrides}
        self.stack = ExitStack()
        self.cluster: Cluster | None = None
        self.bootstraps: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self.proxy: ProxyProcess | None = None
        self.payload: Path | None = None
        self.results: dict[str, Any] = {
            "meta": {
                "started": datetime.now().isoformat(timespec="seconds"),
                "command": command,
                "cpus": os.cpu_count(),
                "cpu_model": _cpu_model(),
                "kernel": platform.release(),
                "python": platform.python_version(),
                "idemproxy": __version__,
                "commit": _git_commit(),
                "kafka_version": kafka_version(),
                "rounds": plan.rounds,
                "plan": asdict(plan),
                "record_size": RECORD_SIZE,
                "profiles": list(PROFILES),
                "producer_props": {
                    "enable.idempotence": "true",
                    "acks": "all",
                    **self.producer_props,
                },
                "profile_props": {name: self.profile_props(name) for name in PROFILES},
                "producer_jvm_opts": list(loads.PERF_JVM_OPTS),
                "broker_jvm_opts": list(BROKER_JVM_OPTS),
                "num_records": {},
                "targets": ["direct"],
                "latency": {
                    "client": _version_string(confluent_kafka.version()),
                    "librdkafka": confluent_kafka.libversion()[0],
                    "rate": plan.latency_rate,
                    "seconds": plan.latency_seconds,
                    "rdkafka_seconds": plan.rdkafka_seconds,
                    "record_size": plan.latency_size,
                },
            },
            "throughput": [],
            "latency": [],
            "state": {},
            "stamping": [],
            "profile": {},
            "kroxylicious": {},
            "socat": {},
        }

    def profile_props(self, profile: str) -> dict[str, str | int]:
        """The producer properties of a request profile; --producer-prop values win."""
        return {**PRODUCER_PROPS, **PROFILES[profile], **self.producer_overrides}

    # -- set-up -------------------------------------------------------------------------------

    def start(self) -> None:
        idle = measure.CpuWindow({})
        idle.start()
        time.sleep(2.0)
        idle.stop()
        busy = idle.host_busy / idle.host_total * (os.cpu_count() or 1) if idle.host_total else 0
        self.results["meta"]["host_busy_before"] = round(busy, 3)
        if busy > 0.15:
            say(f"WARNING: {busy:.2f} CPUs were already busy before the benchmark started")
        payload_dir = Path(tempfile.mkdtemp(prefix="idemproxy-bench-payloads-"))
        self.stack.callback(shutil.rmtree, payload_dir, ignore_errors=True)
        self.payload = loads.write_payload_file(payload_dir / f"{RECORD_SIZE}.txt", RECORD_SIZE)
        cluster = KafkaCluster(
            1,
            heap="1g",
            jvm_opts=BROKER_JVM_OPTS,
            config={"log.retention.check.interval.ms": 5000},
        )
        socat = self._socat_before_broker(cluster) if self.want_socat else None
        if not self.want_socat:
            self.results["socat"] = {"status": "skipped", "note": "--no-socat"}
        say("Starting Apache Kafka (1 KRaft node)...")
        cluster.start()
        self.stack.callback(cluster.close)
        self.cluster = cluster
        for name, topic in TOPICS.items():
            partitions = {
                "throughput": 3,
                "latency": 1,
                "state": STATE_PARTITIONS,
                "state-wide": WIDE_PARTITIONS,
            }[name]
            cluster.create_topic(topic, partitions=partitions, configs=TOPIC_CONFIGS)
        self.bootstraps["direct"] = cluster.bootstrap
        broker = _broker_pid(cluster)
        if broker is not None:
            self.pids["broker"] = broker
        say(f"  broker at {cluster.bootstrap}")
        if socat is not None:
            self.bootstraps["socat"] = socat.bootstrap
            self.pids["socat"] = socat.pid
            self.results["meta"]["targets"].append("socat")
            say(
                f"  socat at {socat.bootstrap} -> broker listener RELAY at "
                f"127.0.0.1:{socat.upstream_port} (pid {socat.pid})"
            )

        proxy = self._proxy(cluster.bootstrap, "throughput")
        self.proxy = proxy
        self.bootstraps["idemproxy"] = proxy.bootstrap
        self.pids["idemproxy"] = proxy.pid
        self.results["meta"]["targets"].append("idemproxy")
        say(f"  idemproxy at {proxy.bootstrap} (pid {proxy.pid})")
        if self.compiled is not None:
            compiled = self._proxy(cluster.bootstrap, "throughput-mypyc", cwd=self.compiled)
            self.bootstraps[COMPILED_TARGET] = compiled.bootstrap
            self.pids[COMPILED_TARGET] = compiled.pid
            self.results["meta"]["targets"].append(COMPILED_TARGET)
            say(f"  idemproxy, mypyc build, at {compiled.bootstrap} (pid {compiled.pid})")

        if self.want_kroxylicious:
            self._start_kroxylicious(cluster.bootstrap)
        else:
            self.results["kroxylicious"] = {"status": "skipped", "note": "--no-kroxylicious"}

    def _socat_before_broker(self, cluster: KafkaCluster) -> peers.Socat | None:
        """Starts socat and gives the (not yet started) broker a second listener for it.

        socat relays bytes and cannot rewrite the broker address in Metadata responses, so the
        broker has two client listeners: PLAINTEXT (advertised as itself), used by direct,
        idemproxy and Kroxylicious, and RELAY on its own port, advertised as socat's address.
        A client bootstrapping through socat reaches RELAY and is told the broker is at socat,
        so all its connections pass socat; the others never see socat. One broker for all.
        """
        try:
            executable = peers.ensure_socat()
        except peers.PeerUnavailable as exc:
            self.results["socat"] = {"status": "unavailable", "note": f"Not measured: {exc}"}
            say(f"  socat unavailable: {str(exc).splitlines()[0]}")
            return None
        host, port = cluster.address(1)
        controller_port = cluster._nodes[1].controller_port  # noqa: SLF001 - the harness's port
        relay_port, socat_port = _proc.free_ports(2)
        socat = peers.Socat(executable, socat_port, relay_port)
        try:
            socat.start()  # before the broker, so that its port stays ours
        except peers.PeerUnavailable as exc:
            self.results["socat"] = {"status": "unavailable", "note": f"Not measured: {exc}"}
            say(f"  socat unavailable: {str(exc).splitlines()[0]}")
            return None

        def stop() -> None:
            (self.out / "socat.log").write_text(socat.log())
            socat.stop()

        self.stack.callback(stop)
        listeners = {
            "listeners": f"PLAINTEXT://{host}:{port},RELAY://{host}:{relay_port},"
            f"CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port},RELAY://{host}:{socat_port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,RELAY:PLAINTEXT,"
            "CONTROLLER:PLAINTEXT",
        }
        cluster.extra_config.update(listeners)
        version = peers.socat_version(executable)
        self.results["socat"] = {
            "status": "measured",
            "version": version,
            "argv": " ".join(socat.argv),
            "broker_listeners": listeners,
            "note": (
                f"socat {version}, `{' '.join(['socat', *socat.argv[1:]])}`: one forked "
                "process per connection, CPU of the parent and its children. The broker has a "
                f"second listener RELAY on port {relay_port}, advertised as socat's address "
                f"127.0.0.1:{socat_port}; clients bootstrapping through socat reach RELAY and "
                "are sent back to socat, while direct, idemproxy and Kroxylicious use the "
                "PLAINTEXT listener of the same broker."
            ),
        }
        return socat

    def _proxy(self, upstream: str, name: str, cwd: Path | None = None) -> ProxyProcess:
        proxy = ProxyProcess(upstream, extra=["--log-level", "info"], cwd=cwd).start()

        def stop() -> None:
            shutil.copy(proxy.log_path, self.out / f"idemproxy-{name}.log")
            proxy.stop()

        self.stack.callback(stop)
        return proxy

    def _start_kroxylicious(self, upstream: str) -> None:
        version = peers.version()
        say(f"  Kroxylicious {version}: checking Maven Central...")
        central = peers.app_on_central(cached=not self.plan.recheck_central)
        peer = peers.Kroxylicious(upstream)
        try:
            peer.start()
        except peers.PeerUnavailable as exc:
            self.results["kroxylicious"] = {
                "status": "unavailable",
                "note": f"Not measured: {exc}. ({central})",
            }
            say(f"  Kroxylicious unavailable: {str(exc).splitlines()[0]}")
            peer.stop()
            return

        def stop() -> None:
            (self.out / "kroxylicious.log").write_text(peer.log())
            peer.stop()

        self.stack.callback(stop)
        self.bootstraps["kroxylicious"] = peer.bootstrap
        self.pids["kroxylicious"] = peer.pid
        self.results["meta"]["targets"].append("kroxylicious")
        self.results["kroxylicious"] = {
            "status": "measured",
            "version": version,
            "config": peer.config(),
            "note": (
                f"Kroxylicious {version} measured as a passthrough proxy (one virtual cluster, "
                "portIdentifiesNode gateway, no filters, JVM "
                f"`{' '.join(peers.JVM_OPTS[:2])}`). {central}; so its proxy engine "
                f"(io.kroxylicious:kroxylicious-runtime:{version} and dependencies, fetched by "
                "integration/bench/kroxylicious/pom.xml) runs under "
                "integration/bench/kroxylicious/KroxyliciousLauncher.java, which does what the "
                "application's main() does (parse the config, KafkaProxy.startup(), block)."
            ),
        }
        say(f"  Kroxylicious at {peer.bootstrap} (pid {peer.pid})")

    @property
    def targets(self) -> list[str]:
        return list(self.results["meta"]["targets"])

    # -- throughput ---------------------------------------------------------------------------

    def _window(self, watch: dict[str, int]) -> measure.CpuWindow:
        return measure.CpuWindow(watch, trees=frozenset({"socat"}) & set(watch))

    def _settle(self, target: str) -> None:
        """Waits (up to 2 s) for socat's children of the closed connections to exit, so that
        their CPU is in their parent's cutime/cstime when the window closes."""
        if target != "socat":
            return
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and measure.children(self.pids["socat"]):
            time.sleep(0.05)

    def _perf(self, target: str, profile: str, records: int, round_: int | None) -> dict[str, Any]:
        size = RECORD_SIZE
        proxy_metric = target == "idemproxy" and self.proxy is not None
        watch = {k: v for k, v in self.pids.items() if k in ("broker", target)}
        before_bytes = (
            self.proxy.metric("idemproxy_bytes_total", direction="request")
            if proxy_metric and self.proxy
            else 0.0
        )
        window = self._window(watch).start()
        result = loads.producer_performance(
            self.bootstraps[target],
            TOPICS["throughput"],
            records,
            record_size=size,
            payload_file=self.payload,
            producer_props=self.profile_props(profile),
        )
        self._settle(target)
        window.stop()
        row: dict[str, Any] = {
            "target": target,
            "profile": profile,
            "record_size": size,
            "round": round_,
            **asdict(result),
            "send_seconds": result.send_seconds,
            "payload_bytes": records * size,
            "cpu": window.used,
            "host_busy": window.host_busy,
            "host_total": window.host_total,
            "host_steal": window.host_steal,
        }
        if proxy_metric and self.proxy:
            row["bytes_forwarded"] = (
                self.proxy.metric("idemproxy_bytes_total", direction="request") - before_bytes
            )
        return row

    def throughput(self) -> None:
        plan = self.plan
        say(
            f"\nThroughput at saturation, 1 KB records ({plan.rounds} round(s), "
            f"~{plan.seconds:.0f} s a run)"
        )
        for i, profile in enumerate(PROFILES):
            say(f"  warm-up, {report.profile_label(profile, self.results)}:")
            warmed = self.targets if i == 0 or plan.warm_all_profiles else ["direct"]
            for target in warmed:
                row = self._perf(target, profile, plan.warmup_records[profile], None)
                say(
                    f"    {target:13s} {row['mb_per_sec']:8.1f} MiB/s "
                    f"{row['records_per_sec']:10.0f} rec/s"
                )
                if target == "direct":
                    records = int(row["records_per_sec"] * plan.seconds)
                    self.results["meta"]["num_records"][profile] = max(records, 10_000)
        for r in range(plan.rounds):
            for profile in PROFILES:
                records = self.results["meta"]["num_records"][profile]
                for target in _rotate(self.targets, r):
                    row = self._perf(target, profile, records, r)
                    self.results["throughput"].append(row)
                    extra = ""
                    cpu = (row["cpu"] or {}).get(target)
                    if cpu is not None:
                        extra = f", {cpu / (row['payload_bytes'] / 1e9):.2f} CPU s/GB"
                    say(
                        f"  round {r + 1} {profile:5s} {target:13s} "
                        f"{row['mb_per_sec']:8.1f} MiB/s {row['records_per_sec']:10.0f} rec/s "
                        f"p99 {row['p99_ms']:.0f} ms{extra}"
                    )
        if self.proxy is not None:
            mem = measure.memory_kb(self.proxy.pid)
            requests = self.proxy.metric("idemproxy_requests_total", api="Produce")
            batches = self.proxy.metric("idemproxy_produce_batches_total")
            self.results["throughput_proxy_memory"] = {
                "rss_kb": mem["VmRSS"],
                "hwm_kb": mem["VmHWM"],
                "entries": self.proxy.metric("idemproxy_producer_state_entries"),
                "produce_requests": requests,
                "batches": batches,
                "request_bytes": self.proxy.metric("idemproxy_bytes_total", direction="request"),
            }

    # -- stamp mode beside pass mode ------------------------------------------------------------

    def stamping(self) -> None:
        """A producer WITHOUT idempotence (ProducerPerformance, enable.idempotence=false, acks=all,
        1 KB records) to the broker directly, through idemproxy in stamp mode (its default), and
        through a second idemproxy in pass mode; the same records each, rotated per round."""
        plan = self.plan
        assert self.cluster is not None
        passing = ProxyProcess(
            self.cluster.bootstrap, extra=["--log-level", "info", "--non-idempotent", "pass"]
        ).start()
        self.stack.callback(passing.stop)
        targets = {"direct": None, "stamp": self.proxy, "pass": passing}
        bootstraps = {
            "direct": self.bootstraps["direct"],
            "stamp": self.bootstraps["idemproxy"],
            "pass": passing.bootstrap,
        }
        pids = {"stamp": self.pids["idemproxy"], "pass": passing.pid}
        size = RECORD_SIZE
        records = self.results["meta"]["num_records"].get("small") or int(30_000 * plan.seconds)
        props = {**self.producer_props, "enable.idempotence": "false", "acks": "all"}
        say(f"\nStamp mode beside pass mode (non-idempotent producer, {records:,} x 1 KB)")
        for r in range(plan.rounds):
            for mode in _rotate(list(targets), r):
                proxy = targets[mode]
                watch = {"broker": self.pids["broker"]} if "broker" in self.pids else {}
                if mode in pids:
                    watch[mode] = pids[mode]
                before = proxy.metric("idemproxy_bytes_total", direction="request") if proxy else 0
                window = measure.CpuWindow(watch).start()
                result = loads.producer_performance(
                    bootstraps[mode],
                    TOPICS["throughput"],
                    records,
                    record_size=size,
                    payload_file=self.payload,
                    producer_props=props,
                )
                window.stop()
                row: dict[str, Any] = {
                    "mode": mode,
                    "round": r,
                    **asdict(result),
                    "payload_bytes": records * size,
                    "cpu": window.used,
                }
                if proxy is not None and window.used is not None:
                    forwarded = proxy.metric("idemproxy_bytes_total", direction="request") - before
                    row["bytes_forwarded"] = forwarded
                    row["cpu_s_per_gb"] = window.used[mode] / (forwarded / 1e9)
                self.results["stamping"].append(row)
                extra = f", {row['cpu_s_per_gb']:.2f} CPU s/GB" if "cpu_s_per_gb" in row else ""
                say(
                    f"  round {r + 1} {mode:7s} {row['mb_per_sec']:8.1f} MiB/s "
                    f"p99 {row['p99_ms']:.0f} ms{extra}"
                )
        if self.proxy is not None:
            stamped = self.proxy.metric("idemproxy_stamped_batches_total", result="written")
            self.results["stamping_batches_written"] = stamped

    # -- latency ------------------------------------------------------------------------------

    def latency(self) -> None:
        plan = self.plan
        say(
            f"\nSingle-send latency ({plan.latency_rate} records/s of {plan.latency_size} B; "
            f"raw client {plan.latency_seconds:.0f} s, librdkafka {plan.rdkafka_seconds:.0f} s "
            f"a run; {plan.rounds} round(s))"
        )
        for r in range(plan.rounds):
            for target in _rotate(self.targets, r):
                bootstrap = self.bootstraps[target]
                for client in ("raw", "librdkafka"):
                    measure_with = (
                        loads.raw_latency if client == "raw" else loads.single_send_latency
                    )
                    result = measure_with(
                        bootstrap,
                        TOPICS["latency"],
                        rate=plan.latency_rate,
                        seconds=plan.latency_seconds if client == "raw" else plan.rdkafka_seconds,
                        record_size=plan.latency_size,
                        warmup_seconds=plan.latency_warmup,
                    )
                    self.results["latency"].append(
                        {"target": target, "client": client, "round": r, **asdict(result)}
                    )
                    say(
                        f"  round {r + 1} {target:13s} {client:10s} p50 {result.p50_ms:7.3f} ms"
                        f"  p99 {result.p99_ms:7.3f} ms  p99.9 {result.p999_ms:7.3f} ms "
                        f"({result.samples} samples)"
                    )

    # -- tracked producer-partitions ----------------------------------------------------------

    def state(self) -> None:
        assert self.cluster is not None
        plan = self.plan
        small_n = len(SMALL_PIDS) * STATE_PARTITIONS
        large_n = len(LARGE_PIDS) * STATE_PARTITIONS
        wide_n = len(WIDE_PIDS) * WIDE_PARTITIONS
        say(
            f"\nPer-batch cost with {small_n:,} and {large_n:,} tracked producer-partitions, "
            f"and with requests spanning {WIDE_PARTITIONS} partitions"
        )
        # The wide setup sends a tenth of the requests: each carries ten times the batches.
        wide_requests = max(1, plan.state_requests * STATE_PARTITIONS // WIDE_PARTITIONS)
        setups = []
        memory: dict[str, Any] = {}
        for pids, tracked, name, topic, partitions, requests in (
            (SMALL_PIDS, small_n, "small", TOPICS["state"], STATE_PARTITIONS, plan.state_requests),
            (LARGE_PIDS, large_n, "large", TOPICS["state"], STATE_PARTITIONS, plan.state_requests),
            (WIDE_PIDS, wide_n, "wide", TOPICS["state-wide"], WIDE_PARTITIONS, wide_requests),
        ):
            proxy = self._proxy(self.cluster.bootstrap, f"state-{name}")
            idle = measure.memory_kb(proxy.pid)
            # One request in flight: every producer-partition has at most one pending batch in
            # every setup, so the engine does the same work per batch in each.
            loader = loads.RawProducer(proxy.bootstrap, topic, partitions, window=1)
            self.stack.callback(loader.close)
            began = time.monotonic()
            loader.send(pids, len(pids))  # sequence 0 for every producer-partition
            entries = proxy.metric("idemproxy_producer_state_entries")
            filled = measure.memory_kb(proxy.pid)
            say(
                f"  {name}: {entries:,.0f} producer-partitions tracked after "
                f"{time.monotonic() - began:.1f} s; RSS {idle['VmRSS'] / 1024:.1f} -> "
                f"{filled['VmRSS'] / 1024:.1f} MB"
            )
            if entries != tracked:
                raise RuntimeError(f"expected {tracked} tracked producer-partitions, got {entries}")
            loader.send(pids, max(len(pids), requests // 5))  # warm-up
            memory[name] = {
                "tracked": tracked,
                "partitions": partitions,
                "entries": entries,
                "rss_idle_kb": idle["VmRSS"],
                "rss_after_fill_kb": filled["VmRSS"],
                "hwm_after_fill_kb": filled["VmHWM"],
            }
            setups.append((name, tracked, partitions, requests, proxy, loader, pids))
        runs = []
        for r in range(plan.rounds):
            for name, tracked, partitions, requests, proxy, loader, pids in _rotate(setups, r):
                forwarded = proxy.metric("idemproxy_produce_batches_total", result="forwarded")
                window = measure.CpuWindow({"proxy": proxy.pid}).start()
                began = time.monotonic()
                loader.send(pids, requests)
                elapsed = time.monotonic() - began
                window.stop()
                assert window.used is not None
                batches = (
                    proxy.metric("idemproxy_produce_batches_total", result="forwarded") - forwarded
                )
                cpu = window.used["proxy"]
                runs.append(
                    {
                        "setup": name,
                        "tracked": tracked,
                        "partitions": partitions,
                        "round": r,
                        "requests": requests,
                        "batches": batches,
                        "cpu_seconds": cpu,
                        "elapsed": elapsed,
                        "us_per_batch": cpu / batches * 1e6,
                        "us_per_request": cpu / requests * 1e6,
                        "batches_per_sec": batches / elapsed,
                        "entries": proxy.metric("idemproxy_producer_state_entries"),
                    }
                )
                say(
                    f"  round {r + 1} {tracked:>6,} tracked, {partitions:>3} partitions a "
                    f"request: {cpu / batches * 1e6:6.1f} CPU us per batch, "
                    f"{cpu / requests * 1e6:7.1f} per request, {batches / elapsed:8.0f} batches/s"
                )
        for name, _, _, _, proxy, _, _ in setups:
            mem = measure.memory_kb(proxy.pid)
            memory[name]["rss_end_kb"] = mem["VmRSS"]
            memory[name]["hwm_end_kb"] = mem["VmHWM"]
        self.results["state"] = {
            "meta": {
                "version": loads.RawProducer.VERSION,
                "partitions": STATE_PARTITIONS,
                "wide_partitions": WIDE_PARTITIONS,
                "value_size": 100,
                "window": 1,
                "requests": plan.state_requests,
                "wide_requests": wide_requests,
                "small": small_n,
                "large": large_n,
                "wide": wide_n,
                "small_pids": len(SMALL_PIDS),
                "large_pids": len(LARGE_PIDS),
            },
            "memory": memory,
            "runs": runs,
        }

    # -- profile ------------------------------------------------------------------------------

    def profile(self) -> None:
        if self.proxy is None:
            return
        plan = self.plan
        seconds = plan.profile_seconds
        rate = 250
        say(
            f"\nProfiling idemproxy with py-spy ({seconds:.0f} s collapsed + {seconds:.0f} s "
            f"flame graph) under a 1 KB ProducerPerformance load, {PROFILE_PROFILED} requests"
        )
        try:
            profiling.py_spy()
        except profiling.ProfilerUnavailable as exc:
            self.results["profile"] = {"error": str(exc)}
            return
        proxied = [
            r
            for r in self.results["throughput"]
            if r["target"] == "idemproxy" and r["profile"] == PROFILE_PROFILED
        ]
        rate_rps = (
            measure.Spread.of([r["records_per_sec"] for r in proxied]).median if proxied else 50_000
        )
        records = int(rate_rps * (2 * seconds + 7))
        failure: list[BaseException] = []

        def load() -> None:
            try:
                loads.producer_performance(
                    self.bootstraps["idemproxy"],
                    TOPICS["throughput"],
                    records,
                    record_size=RECORD_SIZE,
                    payload_file=self.payload,
                    producer_props=self.profile_props(PROFILE_PROFILED),
                    timeout=600,
                )
            except BaseException as exc:  # reported below
                failure.append(exc)

        thread = threading.Thread(target=load, name="profile load")
        thread.start()
        try:
            time.sleep(4)
            collapsed = self.out / "profile-collapsed.txt"
            profiling.record(self.proxy.pid, collapsed, seconds, raw=True, rate=rate)
            profiling.record(
                self.proxy.pid, self.out / "profile.svg", seconds, raw=False, rate=rate
            )
        except profiling.ProfilerUnavailable as exc:
            self.results["profile"] = {"error": str(exc)}
            return
        finally:
            thread.join()
        if failure:
            say(f"  (the profiling load failed: {failure[0]})")
        summary = profiling.summarize(collapsed)
        self.results["profile"] = {
            "seconds": seconds,
            "rate": rate,
            "request_profile": PROFILE_PROFILED,
            "samples": summary.samples,
            "by_self": [asdict(h) for h in summary.by_self],
            "by_total": [asdict(h) for h in summary.by_total],
            "by_component": summary.by_component,
        }
        for spot in summary.by_self[:8]:
            say(f"  {100 * spot.self_share:5.1f}% self  {spot.function}")

    # -- output -------------------------------------------------------------------------------

    def write(self) -> None:
        write_outputs(self.results, self.out)

    def close(self) -> None:
        self.stack.close()


def write_outputs(results: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(report.markdown(results))
    try:
        report.plot(results, out / "bench.png")
    except ImportError as exc:
        say(f"(no plot: {exc}; pip install '.[bench]')")


@contextmanager
def _timer(label: str) -> Iterator[None]:
    began = time.monotonic()
    yield
    say(f"  ({label}: {time.monotonic() - began:.0f} s)")


def _parse_props(values: tuple[str, ...]) -> dict[str, str | int]:
    props: dict[str, str | int] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep:
            raise click.BadParameter(f"expected key=value, got {value!r}")
        props[key.strip()] = val.strip()
    return props


def _compiled_build() -> Path:
    """The compiled build's copy of the checkout, made with `make compiled` when missing."""
    if not list((COMPILED_DIR / "proxy" / "idempotence").glob("engine*.so")):
        say("Building the compiled core (make compiled, about a minute)...")
        subprocess.run(["make", "-s", "compiled"], cwd=REPO, check=True)
    return COMPILED_DIR


@click.command()
@click.option("--quick", is_flag=True, help="One round, short runs (under 3 minutes).")
@click.option("--rounds", type=int, help="Rounds of every measurement (default 3, quick 1).")
@click.option("--seconds", type=float, help="Target length of each throughput run.")
@click.option("--latency-seconds", type=float, help="Length of each latency run.")
@click.option(
    "--kroxylicious/--no-kroxylicious",
    default=True,
    show_default=True,
    help="Measure Kroxylicious as a peer proxy.",
)
@click.option(
    "--socat/--no-socat",
    default=True,
    show_default=True,
    help="Measure socat, a C byte relay (installed with apt-get when missing), as the reference.",
)
@click.option(
    "--profile/--no-profile", default=True, show_default=True, help="Profile idemproxy with py-spy."
)
@click.option(
    "--compiled",
    is_flag=True,
    help="Also measure the mypyc-compiled build (`make compiled`, built first when missing) "
    "in throughput and latency.",
)
@click.option(
    "--only",
    type=click.Choice(["throughput", "latency", "state", "stamping"]),
    multiple=True,
    help="Run only these measurements (repeatable).",
)
@click.option(
    "--producer-prop",
    "producer_prop",
    multiple=True,
    metavar="KEY=VALUE",
    help="ProducerPerformance producer property, over both request profiles (repeatable).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Results folder (default results/bench-<timestamp>).",
)
@click.option(
    "--report",
    "report_from",
    type=click.Path(exists=True, path_type=Path),
    help="Only rebuild results.md and bench.png from this results folder.",
)
def main(
    quick: bool,
    rounds: int | None,
    seconds: float | None,
    latency_seconds: float | None,
    kroxylicious: bool,
    socat: bool,
    profile: bool,
    compiled: bool,
    only: tuple[str, ...],
    producer_prop: tuple[str, ...],
    out: Path | None,
    report_from: Path | None,
) -> None:
    """Benchmark idemproxy against a real Apache Kafka broker: direct, through socat (a C byte
    relay, the reference), through idemproxy and through Kroxylicious.

    Throughput at saturation with 1 KB records in two request profiles (large: batch.size
    262144, linger.ms 5; small: batch.size 16384, linger.ms 0), CPU per GB of each relay or
    proxy, single-send latency percentiles at a fixed rate, peak RSS and per-batch cost with 10
    and 10,000 tracked producer-partitions, stamp mode beside pass mode, and a py-spy profile;
    prints the targets of issue 10 as met or MISSED; writes results.md, results.json and
    bench.png.
    """
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    if report_from is not None:
        results = report.normalise(json.loads((report_from / "results.json").read_text()))
        write_outputs(results, report_from)
        for line in report.ratio_lines(results):
            say(line)
        return
    base = QUICK if quick else DEFAULT
    plan = Plan(
        rounds=rounds or base.rounds,
        seconds=seconds or base.seconds,
        latency_seconds=latency_seconds or base.latency_seconds,
        rdkafka_seconds=base.rdkafka_seconds,
        latency_warmup=base.latency_warmup,
        latency_rate=base.latency_rate,
        latency_size=base.latency_size,
        state_requests=base.state_requests,
        profile_seconds=base.profile_seconds,
        warmup_records=base.warmup_records,
        warm_all_profiles=base.warm_all_profiles,
        recheck_central=base.recheck_central,
    )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = out or REPO / "results" / f"bench-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m integration.bench " + " ".join(sys.argv[1:])
    phases: list[tuple[str, Callable[[], None]]] = []
    bench = Bench(
        plan,
        out,
        kroxylicious=kroxylicious,
        profile=profile,
        socat=socat,
        producer_overrides=_parse_props(producer_prop),
        command=command.strip(),
        compiled=_compiled_build() if compiled else None,
    )
    bench.results["meta"]["quick"] = quick
    wanted = set(only) or {"throughput", "latency", "state", "stamping"}
    if "throughput" in wanted:
        phases.append(("throughput", bench.throughput))
    if "latency" in wanted:
        phases.append(("latency", bench.latency))
    if "state" in wanted:
        phases.append(("state", bench.state))
    if "stamping" in wanted:
        phases.append(("stamping", bench.stamping))
    if profile:
        phases.append(("profile", bench.profile))
    began = time.monotonic()
    say(f"Results go to {out}")
    try:
        with _timer("set-up"):
            bench.start()
        for name, phase in phases:
            with _timer(name):
                phase()
    finally:
        bench.results["meta"]["seconds"] = round(time.monotonic() - began, 1)
        bench.write()
        bench.close()
    say(f"\n{report.markdown(bench.results)}")
    say("Ratios:")
    for line in report.ratio_lines(bench.results):
        say(f"  {line}")
    say(
        f"\nWrote {out}/results.md, results.json, bench.png"
        + (", profile.svg" if (out / "profile.svg").exists() else "")
        + f" in {time.monotonic() - began:.0f} s"
    )
