"""Prometheus metrics of the proxy, on a registry of its own.

Labels stay bounded: API names come from a fixed table (unknown keys share one
label), never a producer id, client port or correlation id.
"""

from __future__ import annotations

import time

from kafka.protocol.api_key import ApiKey as KafkaApiKey
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from proxy import __version__

_API_NAMES: dict[int, str] = {int(k): k.name for k in KafkaApiKey}

#: Sub-millisecond to tens of seconds: a sidecar hop is tens of microseconds, a slow broker seconds.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


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
            "idemproxy_client_connections_accepted_total", "Client connections accepted.", registry=r
        )
        self.connection_errors = Counter(
            "idemproxy_connection_errors_total",
            "Connections closed because of an error, by reason.",
            ["reason"],
            registry=r,
        )
        self.requests = Counter(
            "idemproxy_requests_total", "Requests received from clients, by API.", ["api"],
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
        self._request_bytes = self.bytes.labels("request")
        self._response_bytes = self.bytes.labels("response")
        self._by_api: dict[int, tuple[Counter, Histogram]] = {}

    def _api(self, api_key: int) -> tuple[Counter, Histogram]:
        children = self._by_api.get(api_key)
        if children is None:
            name = api_name(api_key)
            children = (self.requests.labels(name), self.request_duration.labels(name))
            self._by_api[api_key] = children
        return children

    # Observer protocol of proxy.routing.session
    def request(self, api_key: int, size: int) -> None:
        self._api(api_key)[0].inc()
        self._request_bytes.inc(size)

    def response(self, api_key: int, size: int, started: float) -> None:
        self._api(api_key)[1].observe(time.monotonic() - started)
        self._response_bytes.inc(size)
