"""Prometheus metrics of the proxy, on a registry of its own.

Labels stay bounded: API names come from a fixed table (unknown keys share one
label), never a producer id, client port or correlation id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import get_args

from kafka.protocol.api_key import ApiKey as KafkaApiKey
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy import __version__
from proxy.errors import REFUSAL_REASONS
from proxy.idempotence.coordinator import Result
from proxy.idempotence.stamping import StampResult

_API_NAMES: dict[int, str] = {int(k): k.name for k in KafkaApiKey}

#: Sub-millisecond to tens of seconds: a sidecar hop is tens of microseconds, a slow broker seconds.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


#: Values of the `result` label of the produce counters.
PRODUCE_RESULTS: tuple[str, ...] = get_args(Result)
STAMP_RESULTS: tuple[str, ...] = get_args(StampResult)


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
        self.requests = Counter(
            "idemproxy_requests_total",
            "Requests received from clients, by API.",
            ["api"],
            registry=r,
        )
        self.bytes = Counter(
            "idemproxy_bytes_total",
            "Bytes of Kafka frames moved, by direction (request: client to broker).",
            ["direction"],
            registry=r,
        )
        self.request_duration = Histogram(
            "idemproxy_request_duration_seconds",
            "Time from a client request arriving to its response leaving the proxy, by API.",
            ["api"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.produce_batches = Counter(
            "idemproxy_produce_batches_total",
            "Produce record batches by what the proxy did with them.",
            ["result"],
            registry=r,
        )
        self.produce_records = Counter(
            "idemproxy_produce_records_total",
            "Records in produce batches, by what the proxy did with their batch.",
            ["result"],
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
        self.upstream_duration = Histogram(
            "idemproxy_upstream_duration_seconds",
            "Time from forwarding a request to the broker's response arriving, by API.",
            ["api"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frames_refused = Counter(
            "idemproxy_frames_refused_total",
            "Client frames refused as bad input (the connection is closed), by reason.",
            ["reason"],
            registry=r,
        )
        self.upstream_up = Gauge(
            "idemproxy_upstream_up",
            "1 when the upstream cluster answered the last readiness probe, else 0.",
            registry=r,
        )
        # Every known label value starts at 0, so rate() and increase() see the first event.
        # Labelled children looked up once: .labels() takes a lock on every call (hot path).
        self._by_result = {
            result: (self.produce_batches.labels(result), self.produce_records.labels(result))
            for result in PRODUCE_RESULTS
        }
        for action in ("stamp", "pass", "reject"):
            self.non_idempotent_batches.labels(action)
        self._stamped = {
            result: (self.stamped_batches.labels(result), self.stamped_records.labels(result))
            for result in STAMP_RESULTS
        }
        for pid_result in ("obtained", "refused"):
            self.producer_ids.labels(pid_result)
        self.connection_errors.labels("upstream_unreachable")
        for reason in REFUSAL_REASONS:
            self.frames_refused.labels(reason)
        self._request_bytes = self.bytes.labels("request")
        self._response_bytes = self.bytes.labels("response")
        self._by_api: dict[int, tuple[Counter, Histogram, Histogram]] = {}

    def _api(self, api_key: int) -> tuple[Counter, Histogram, Histogram]:
        children = self._by_api.get(api_key)
        if children is None:
            name = api_name(api_key)
            children = (
                self.requests.labels(name),
                self.request_duration.labels(name),
                self.upstream_duration.labels(name),
            )
            self._by_api[api_key] = children
        return children

    def watch_producer_state(
        self,
        entries: Callable[[], int],
        evictions: Callable[[], int],
        expiry_ms: Callable[[], int] = lambda: 0,
    ) -> None:
        """Export the idempotence engine's size, evictions and expiry, read at scrape time."""
        self.registry.register(_StateCollector(entries, evictions, expiry_ms))

    # ProduceObserver protocol of proxy.idempotence.coordinator
    def produce_batch(self, result: str, records: int) -> None:
        batches, records_counter = self._by_result[result]
        batches.inc()
        records_counter.inc(records)

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
        self.registry.register(_StampCollector(state_bytes, copies, lines, evictions))

    # Observer protocol of proxy.routing.session
    def request(self, api_key: int, size: int) -> None:
        self._api(api_key)[0].inc()
        self._request_bytes.inc(size)

    def response(self, api_key: int, size: int, started: float) -> None:
        self._api(api_key)[1].observe(time.monotonic() - started)
        self._response_bytes.inc(size)

    def upstream(self, api_key: int, started: float) -> None:
        self._api(api_key)[2].observe(time.monotonic() - started)


class _StateCollector(Collector):
    def __init__(
        self,
        entries: Callable[[], int],
        evictions: Callable[[], int],
        expiry_ms: Callable[[], int],
    ) -> None:
        self._entries = entries
        self._evictions = evictions
        self._expiry_ms = expiry_ms

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "idemproxy_producer_state_entries",
            "Producer-partitions whose recent batches the proxy remembers.",
            value=self._entries(),
        )
        yield GaugeMetricFamily(
            "idemproxy_producer_state_expiry_seconds",
            "Idle time after which a producer's state is forgotten: the lower of the configured "
            "value and the brokers' producer.id.expiration.ms.",
            value=self._expiry_ms() / 1000,
        )
        yield CounterMetricFamily(
            "idemproxy_producer_state_evictions",
            "Producer-partition states dropped to stay under the cap or after idle expiry.",
            value=self._evictions(),
        )


class _StampCollector(Collector):
    def __init__(
        self,
        state_bytes: Callable[[], int],
        copies: Callable[[], int],
        lines: Callable[[], int],
        evictions: Callable[[], int],
    ) -> None:
        self._bytes = state_bytes
        self._copies = copies
        self._lines = lines
        self._evictions = evictions

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "idemproxy_stamp_state_bytes",
            "Bytes the stamper keeps (batches to resend, records in doubt), estimated.",
            value=self._bytes(),
        )
        yield GaugeMetricFamily(
            "idemproxy_stamp_records_in_doubt",
            "Records of non-idempotent clients remembered as retry candidates.",
            value=self._copies(),
        )
        yield GaugeMetricFamily(
            "idemproxy_stamp_lines",
            "Client id and partition pairs the proxy sequences for.",
            value=self._lines(),
        )
        yield CounterMetricFamily(
            "idemproxy_stamp_state_evictions",
            "Partitions' stamping state forgotten to stay under --stamp-memory.",
            value=self._evictions(),
        )
