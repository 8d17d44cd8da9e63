"""Prometheus metrics of the proxy, on a registry of its own.

Labels stay bounded: API names come from a fixed table (unknown keys share one
label), never a producer id, client port or correlation id.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import get_args

from kafka.protocol.api_key import ApiKey as KafkaApiKey
from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from proxy import __version__
from proxy.errors import REFUSAL_REASONS
from proxy.idempotence.coordinator import Result
from proxy.idempotence.stamping import StampResult
from proxy.server.tls import HANDSHAKE_FAILURE_REASONS

_API_NAMES: dict[int, str] = {int(k): k.name for k in KafkaApiKey}

#: Sub-millisecond to tens of seconds: a sidecar hop is tens of microseconds, a slow broker seconds.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


#: Values of the `result` label of the produce counters.
PRODUCE_RESULTS: tuple[str, ...] = get_args(Result)
STAMP_RESULTS: tuple[str, ...] = get_args(StampResult)
#: The `reason` label of idemproxy_sasl_authentication_failures_total: the Kafka error of a
#: failed SaslHandshake/SaslAuthenticate (58, 33, 34), or `other` (another error code, or the
#: broker closing the connection during the exchange).
SASL_FAILURE_REASONS: tuple[str, ...] = (
    "sasl_authentication_failed",
    "unsupported_sasl_mechanism",
    "illegal_sasl_state",
    "other",
)


def api_name(api_key: int) -> str:
    """Bounded label value for an API key."""
    return _API_NAMES.get(api_key, "Unknown")


class Metrics:
    """All metric families of one proxy instance."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        Info("idemproxy_build", "Build information of the proxy.", registry=r).info(
            {"version": __version__}
        )
        self.client_connections = Gauge(
            "idemproxy_client_connections", "Open client connections.", registry=r
        )
        self.upstream_connections = Gauge(
            "idemproxy_upstream_connections", "Open connections to upstream brokers.", registry=r
        )
        self.connections_total = Counter(
            "idemproxy_client_connections_accepted_total",
            "Client connections accepted.",
            registry=r,
        )
        self.connection_errors = Counter(
            "idemproxy_connection_errors_total",
            "Connections closed because of an error, by reason.",
            ["reason"],
            registry=r,
        )
        self.non_idempotent_batches = Counter(
            "idemproxy_non_idempotent_batches_total",
            "Batches without a producer id, by what was done: stamp, pass (as they are) or reject.",
            ["action"],
            registry=r,
        )
        self.stamped_batches = Counter(
            "idemproxy_stamped_batches_total",
            "Batches the proxy stamped for non-idempotent clients, by the broker's verdict "
            "(written, duplicate: written before; unknown: no answer or a maybe-appended "
            "error, kept to resend; failed: a sequence error, resent; dropped: refused for good; "
            "unresolved: given up without knowing whether it was written).",
            ["result"],
            registry=r,
        )
        self.stamped_records = Counter(
            "idemproxy_stamped_records_total",
            "Records in the batches of idemproxy_stamped_batches_total, by the same result.",
            ["result"],
            registry=r,
        )
        self.retried_records_dropped = Counter(
            "idemproxy_retried_records_dropped_total",
            "Records of non-idempotent clients recognised as retries of records already "
            "written (or being resent) and not sent again.",
            registry=r,
        )
        self.producer_ids = Counter(
            "idemproxy_producer_ids_total",
            "InitProducerId requests of the proxy's own, by result (obtained or refused).",
            ["result"],
            registry=r,
        )
        self.frames_refused = Counter(
            "idemproxy_frames_refused_total",
            "Client frames refused as bad input (the connection is closed), by reason.",
            ["reason"],
            registry=r,
        )
        self.tls_handshake_failures = Counter(
            "idemproxy_tls_handshake_failures_total",
            "TLS handshakes that failed, by side (upstream: the proxy's connections to brokers, "
            "probes included; client: clients' connections to the proxy's listeners) and "
            "reason.",
            ["side", "reason"],
            registry=r,
        )
        self.tls_reloads = Counter(
            "idemproxy_tls_reloads_total",
            "Certificate files that changed and were re-read, by side (client: the listeners' "
            "certificate, key and client CA; upstream: --upstream-ca/-cert/-key) and result "
            "(ok, or failed: unusable files, the previous ones kept).",
            ["side", "result"],
            registry=r,
        )
        self.sasl_failures = Counter(
            "idemproxy_sasl_authentication_failures_total",
            "SASL authentications that failed, by side (client: a client's own SASL exchange "
            "passed through, as the broker answered it; upstream: the sidecar's own "
            "authentication of its upstream connections) and reason (the Kafka error, e.g. "
            "sasl_authentication_failed, unsupported_sasl_mechanism, illegal_sasl_state).",
            ["side", "reason"],
            registry=r,
        )
        self.upstream_up = Gauge(
            "idemproxy_upstream_up",
            "1 when the upstream cluster answered the last readiness probe, else 0.",
            registry=r,
        )
        # Every known label value starts at 0, so rate() and increase() see the first event.
        # The per-request families are plain integers read at scrape time (_HotCollector): a
        # prometheus_client child takes a lock on every update, 8 us a request in all.
        self._hot = _HotCollector()
        r.register(self._hot)
        for action in ("stamp", "pass", "reject"):
            self.non_idempotent_batches.labels(action)
        self._stamped = {
            result: (self.stamped_batches.labels(result), self.stamped_records.labels(result))
            for result in STAMP_RESULTS
        }
        for pid_result in ("obtained", "refused"):
            self.producer_ids.labels(pid_result)
        self.connection_errors.labels("upstream_sasl")
        self.connection_errors.labels("upstream_unreachable")
        self.connection_errors.labels("upstream_tls")
        self.connection_errors.labels("client_tls")
        for reason in REFUSAL_REASONS:
            self.frames_refused.labels(reason)
        for side in ("client", "upstream"):
            for reason in HANDSHAKE_FAILURE_REASONS:
                self.tls_handshake_failures.labels(side, reason)
            for result in ("ok", "failed"):
                self.tls_reloads.labels(side, result)
        for side in ("client", "upstream"):
            for reason in SASL_FAILURE_REASONS:
                self.sasl_failures.labels(side, reason)

    def watch_producer_state(
        self,
        entries: Callable[[], int],
        evictions: Callable[[], int],
        expiry_ms: Callable[[], int] = lambda: 0,
    ) -> None:
        """Export the idempotence engine's size, evictions and expiry, read at scrape time."""
        self.registry.register(
            _Readings(
                [
                    (
                        GaugeMetricFamily,
                        "idemproxy_producer_state_entries",
                        "Producer-partitions whose recent batches the proxy remembers.",
                        entries,
                    ),
                    (
                        GaugeMetricFamily,
                        "idemproxy_producer_state_expiry_seconds",
                        "Idle time after which a producer's state is forgotten: the lower of "
                        "the configured value and the brokers' producer.id.expiration.ms.",
                        lambda: expiry_ms() / 1000,
                    ),
                    (
                        CounterMetricFamily,
                        "idemproxy_producer_state_evictions",
                        "Producer-partition states dropped to stay under the cap or after idle "
                        "expiry.",
                        evictions,
                    ),
                ]
            )
        )

    # ProduceObserver protocol of proxy.idempotence.coordinator
    def produce_batch(self, result: str, records: int) -> None:
        hot = self._hot
        hot.batches[result] += 1
        hot.records[result] += records

    def non_idempotent(self, action: str) -> None:
        self.non_idempotent_batches.labels(action).inc()

    # StampObserver protocol of proxy.idempotence.stamping
    def stamped(self, result: str, records: int) -> None:
        batches, records_counter = self._stamped[result]
        batches.inc()
        records_counter.inc(records)

    def retries_dropped(self, records: int) -> None:
        self.retried_records_dropped.inc(records)

    def producer_id(self, result: str) -> None:
        self.producer_ids.labels(result).inc()

    def watch_stamping(
        self,
        state_bytes: Callable[[], int],
        copies: Callable[[], int],
        lines: Callable[[], int],
        evictions: Callable[[], int],
    ) -> None:
        """Export the stamper's kept state, read at scrape time."""
        self.registry.register(
            _Readings(
                [
                    (
                        GaugeMetricFamily,
                        "idemproxy_stamp_state_bytes",
                        "Bytes the stamper keeps (batches to resend, records in doubt), estimated.",
                        state_bytes,
                    ),
                    (
                        GaugeMetricFamily,
                        "idemproxy_stamp_records_in_doubt",
                        "Records of non-idempotent clients remembered as retry candidates.",
                        copies,
                    ),
                    (
                        GaugeMetricFamily,
                        "idemproxy_stamp_lines",
                        "Client id and partition pairs the proxy sequences for.",
                        lines,
                    ),
                    (
                        CounterMetricFamily,
                        "idemproxy_stamp_state_evictions",
                        "Partitions whose kept batches and records in doubt were shed (past "
                        "that, whose line was forgotten) to stay under --stamp-memory.",
                        evictions,
                    ),
                ]
            )
        )

    # Observer protocol of proxy.routing.session
    def request(self, api_key: int, size: int) -> None:
        hot = self._hot
        hot.api(api_key).requests += 1
        hot.request_bytes += size

    def response(self, api_key: int, size: int, started: float) -> None:
        hot = self._hot
        hot.api(api_key).duration.observe(time.monotonic() - started)
        hot.response_bytes += size

    def upstream(self, api_key: int, started: float) -> None:
        self._hot.api(api_key).upstream.observe(time.monotonic() - started)

    def sasl_failure(self, reason: str) -> None:
        self.sasl_failures.labels("client", reason).inc()


#: A family read from the proxy's state at scrape time: its type, name, help, and reader.
_Reading = tuple[type[GaugeMetricFamily] | type[CounterMetricFamily], str, str, Callable[[], float]]


class _Readings(Collector):
    """Gauges and counters whose values live in the engine or the stamper, read when scraped."""

    def __init__(self, readings: list[_Reading]) -> None:
        self._readings = readings

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for family, name, documentation, read in self._readings:
            yield family(name, documentation, value=read())


#: The `le` label of each bucket, as prometheus_client writes it.
_LE = (*(repr(b) for b in LATENCY_BUCKETS), "+Inf")


class _Histogram:
    """Bucket counts as plain integers; cumulative only when scraped."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are upper bounds (le): the first bound at or above the value.
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(_LE, self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class _ApiCounts:
    __slots__ = ("duration", "requests", "upstream")

    def __init__(self) -> None:
        self.requests = 0
        self.duration = _Histogram()
        self.upstream = _Histogram()


class _HotCollector(Collector):
    """The families updated on every request: requests, bytes, durations, produce results.

    Updated from the event loop only, and scraped from it too (the metrics endpoint runs on
    the proxy's loop), so plain integers need no lock. Same names, types and labels as the
    prometheus_client families they replace.
    """

    def __init__(self) -> None:
        self.request_bytes = 0
        self.response_bytes = 0
        self.batches = dict.fromkeys(PRODUCE_RESULTS, 0)
        self.records = dict.fromkeys(PRODUCE_RESULTS, 0)
        self._apis: dict[int, _ApiCounts] = {}
        self._by_name: dict[str, _ApiCounts] = {}  # unknown API keys share one label

    def api(self, api_key: int) -> _ApiCounts:
        counts = self._apis.get(api_key)
        if counts is None:
            counts = self._by_name.setdefault(api_name(api_key), _ApiCounts())
            self._apis[api_key] = counts
        return counts

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "idemproxy_requests", "Requests received from clients, by API.", labels=["api"]
        )
        duration = HistogramMetricFamily(
            "idemproxy_request_duration_seconds",
            "Time from a client request arriving to its response leaving the proxy, by API.",
            labels=["api"],
        )
        upstream = HistogramMetricFamily(
            "idemproxy_upstream_duration_seconds",
            "Time from forwarding a request to the broker's response arriving, by API.",
            labels=["api"],
        )
        for name, counts in sorted(self._by_name.items()):
            requests.add_metric([name], counts.requests)
            duration.add_metric([name], counts.duration.buckets(), counts.duration.sum)
            upstream.add_metric([name], counts.upstream.buckets(), counts.upstream.sum)
        yield requests
        yield duration
        yield upstream
        moved = CounterMetricFamily(
            "idemproxy_bytes",
            "Bytes of Kafka frames moved, by direction (request: client to broker).",
            labels=["direction"],
        )
        moved.add_metric(["request"], self.request_bytes)
        moved.add_metric(["response"], self.response_bytes)
        yield moved
        batches = CounterMetricFamily(
            "idemproxy_produce_batches",
            "Produce record batches by what the proxy did with them.",
            labels=["result"],
        )
        records = CounterMetricFamily(
            "idemproxy_produce_records",
            "Records in produce batches, by what the proxy did with their batch.",
            labels=["result"],
        )
        for result in PRODUCE_RESULTS:
            batches.add_metric([result], self.batches[result])
            records.add_metric([result], self.records[result])
        yield batches
        yield records
