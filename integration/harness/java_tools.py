"""Run the Java Kafka command-line tools (same jars as the broker) and parse their output.

* :func:`producer_performance` - ``org.apache.kafka.tools.ProducerPerformance``
  (idempotent, ``acks=all`` by default), returns the final summary line parsed.
* :func:`verifiable_producer` - ``org.apache.kafka.tools.VerifiableProducer``,
  returns its JSON events (one per send outcome).
* :func:`verifiable_consumer` - ``org.apache.kafka.tools.VerifiableConsumer``
  (consumer group, ``--verbose``), returns its JSON events and the records.
* :func:`console_consume` - ``org.apache.kafka.tools.consumer.ConsoleConsumer``,
  returns the record values (group-less when ``partition`` is given).

Each tool is a JVM with a small heap and start-up-friendly flags; tool logging is
WARN-level on stderr (``log4j2-tools.properties``) so stdout stays parseable.
Timeouts kill the JVM and raise :class:`JavaToolError` carrying partial output.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _proc
from .kafka_dist import java_classpath, java_executable

LOG4J_TOOLS = Path(__file__).resolve().parent / "log4j2-tools.properties"
TOOL_JVM_OPTS: tuple[str, ...] = (
    "-Xms32m",
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
    "-Duser.language=en",  # the tools format numbers with the default locale
    "-Duser.country=US",
    f"-Dlog4j2.configurationFile={LOG4J_TOOLS}",
)
PRODUCER_PERFORMANCE = "org.apache.kafka.tools.ProducerPerformance"
VERIFIABLE_PRODUCER = "org.apache.kafka.tools.VerifiableProducer"
VERIFIABLE_CONSUMER = "org.apache.kafka.tools.VerifiableConsumer"
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"

Props = Mapping[str, str | int | bool]


class JavaToolError(RuntimeError):
    """A tool exited non-zero or timed out; ``stdout``/``stderr`` hold what it printed."""

    def __init__(self, message: str, stdout: str = "", stderr: str = "") -> None:
        super().__init__(f"{message}\n--- stderr (tail)\n{_tail(stderr)}")
        self.stdout = stdout
        self.stderr = stderr


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _prop(value: str | int | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def run_tool(
    main_class: str, args: Sequence[str], *, timeout: float, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``main_class`` from the Kafka jars; raise :class:`JavaToolError` on failure."""
    argv = [java_executable(), *TOOL_JVM_OPTS, "-cp", java_classpath(), main_class, *args]
    try:
        result = _proc.run(argv, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise JavaToolError(
            f"{main_class} timed out after {timeout:.0f}s",
            _text(exc.stdout), _text(exc.stderr),
        ) from None  # fmt: skip
    if check and result.returncode != 0:
        raise JavaToolError(
            f"{main_class} exited with {result.returncode}", result.stdout, result.stderr
        )
    return result


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def _write_props(props: Props, directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text("".join(f"{k}={_prop(v)}\n" for k, v in props.items()))
    return path


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


# -- ProducerPerformance ------------------------------------------------------------------------

_SUMMARY = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), "
    r"([\d.]+) ms avg latency, ([\d.]+) ms max latency"
)


@dataclass(frozen=True)
class PerfResult:
    """The final ProducerPerformance summary. ``records_sent`` counts *acknowledged* sends."""

    records_sent: int
    records_per_sec: float
    mb_per_sec: float
    avg_latency_ms: float
    max_latency_ms: float
    stdout: str
    stderr: str


def producer_performance(
    bootstrap: str,
    topic: str,
    num_records: int,
    *,
    record_size: int = 100,
    throughput: int = -1,
    producer_props: Props | None = None,
    transactional_id: str | None = None,
    transaction_duration_ms: int | None = None,
    timeout: float = 120.0,
) -> PerfResult:
    """Run ProducerPerformance; defaults: ``enable.idempotence=true acks=all``."""
    props: dict[str, str | int | bool] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
    }
    props.update(producer_props or {})
    args = [
        "--topic", topic,
        "--num-records", str(num_records),
        "--throughput", str(throughput),
        "--record-size", str(record_size),
        "--producer-props", *(f"{k}={_prop(v)}" for k, v in props.items()),
    ]  # fmt: skip
    if transactional_id is not None:
        args += ["--transactional-id", transactional_id]
    if transaction_duration_ms is not None:
        args += ["--transaction-duration-ms", str(transaction_duration_ms)]
    result = run_tool(PRODUCER_PERFORMANCE, args, timeout=timeout)
    matches = _SUMMARY.findall(result.stdout)
    if not matches:
        raise JavaToolError(
            "no summary line in ProducerPerformance output", result.stdout, result.stderr
        )
    sent, rate, mb, avg, peak = matches[-1]
    return PerfResult(
        int(sent), float(rate), float(mb), float(avg), float(peak), result.stdout, result.stderr
    )


# -- VerifiableProducer -------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiableProducerResult:
    """All JSON events; ``acked``/``failed`` are the per-record send outcomes."""

    events: list[dict[str, Any]]
    acked: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tool_data(self) -> dict[str, Any]:
        """The closing ``tool_data`` event (``sent``, ``acked``, throughput), or {}."""
        return next((e for e in reversed(self.events) if e.get("name") == "tool_data"), {})


def verifiable_producer(
    bootstrap: str,
    topic: str,
    max_messages: int,
    *,
    throughput: int = -1,
    acks: int = -1,
    producer_config: Props | None = None,
    value_prefix: int | None = None,
    repeating_keys: int | None = None,
    timeout: float = 120.0,
) -> VerifiableProducerResult:
    """Run VerifiableProducer (values are increasing integers); idempotent by default.

    The tool defaults to ``retries=0``, which the idempotent producer rejects, so
    the default config also sets ``retries`` (override both via ``producer_config``).
    """
    config: dict[str, str | int | bool] = {"enable.idempotence": True, "retries": 2147483647}
    config.update(producer_config or {})
    with tempfile.TemporaryDirectory(prefix="idemproxy-tool-") as tmp:
        args = [
            "--bootstrap-server", bootstrap,
            "--topic", topic,
            "--max-messages", str(max_messages),
            "--throughput", str(throughput),
            "--acks", str(acks),
            "--producer.config", str(_write_props(config, Path(tmp), "producer.properties")),
        ]  # fmt: skip
        if value_prefix is not None:
            args += ["--value-prefix", str(value_prefix)]
        if repeating_keys is not None:
            args += ["--repeating-keys", str(repeating_keys)]
        result = run_tool(VERIFIABLE_PRODUCER, args, timeout=timeout)
    events = _json_lines(result.stdout)
    return VerifiableProducerResult(
        events,
        acked=[e for e in events if e.get("name") == "producer_send_success"],
        failed=[e for e in events if e.get("name") == "producer_send_error"],
    )


# -- consuming ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiableConsumerResult:
    """All JSON events; ``records``: the ``record_data`` events (key, value, partition, offset)."""

    events: list[dict[str, Any]]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def consumed(self) -> int:
        """Records reported by the ``records_consumed`` events."""
        return sum(
            int(e.get("count", 0)) for e in self.events if e.get("name") == "records_consumed"
        )


def verifiable_consumer(
    bootstrap: str,
    topic: str,
    group_id: str,
    max_messages: int,
    *,
    reset_policy: str = "earliest",
    group_protocol: str = "classic",
    session_timeout_ms: int | None = None,
    consumer_config: Props | None = None,
    timeout: float = 120.0,
) -> VerifiableConsumerResult:
    """Run VerifiableConsumer until ``max_messages`` were consumed (timeout: JavaToolError)."""
    with tempfile.TemporaryDirectory(prefix="idemproxy-tool-") as tmp:
        args = [
            "--bootstrap-server", bootstrap,
            "--topic", topic,
            "--group-id", group_id,
            "--max-messages", str(max_messages),
            "--reset-policy", reset_policy,
            "--group-protocol", group_protocol,
            "--verbose",
        ]  # fmt: skip
        if session_timeout_ms is not None:
            args += ["--session-timeout", str(session_timeout_ms)]
        if consumer_config:
            args += [
                "--consumer.config",
                str(_write_props(consumer_config, Path(tmp), "consumer.properties")),
            ]
        result = run_tool(VERIFIABLE_CONSUMER, args, timeout=timeout)
    events = _json_lines(result.stdout)
    return VerifiableConsumerResult(events, [e for e in events if e.get("name") == "record_data"])


def console_consume(
    bootstrap: str,
    topic: str,
    max_messages: int,
    *,
    partition: int | None = None,
    from_beginning: bool = True,
    isolation_level: str = "read_uncommitted",
    idle_timeout_ms: int = 10000,
    timeout: float = 120.0,
) -> list[str]:
    """Record values (one per line) read by ConsoleConsumer; stops after ``max_messages``
    or ``idle_timeout_ms`` without records. With ``partition`` no consumer group is used."""
    args = [
        "--bootstrap-server", bootstrap,
        "--topic", topic,
        "--max-messages", str(max_messages),
        "--timeout-ms", str(idle_timeout_ms),
        "--isolation-level", isolation_level,
    ]  # fmt: skip
    if partition is not None:
        args += [
            "--partition",
            str(partition),
            "--offset",
            "earliest" if from_beginning else "latest",
        ]
    elif from_beginning:
        args.append("--from-beginning")
    # Exits 0 after max-messages, and (with an ERROR log) also on the idle timeout.
    result = run_tool(CONSOLE_CONSUMER, args, timeout=timeout, check=False)
    if result.returncode != 0 and "TimeoutException" not in result.stderr:
        raise JavaToolError(
            f"ConsoleConsumer exited with {result.returncode}", result.stdout, result.stderr
        )
    return result.stdout.splitlines()
