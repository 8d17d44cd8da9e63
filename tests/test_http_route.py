"""The management endpoints' pure router: /metrics, /livez, and everything else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from proxy.server.http import route
from proxy.server.metrics import Metrics


@dataclass
class StandInProxy:
    """Just what route() reads from the proxy."""

    metrics: Metrics = field(default_factory=Metrics)


def parse(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    return status_line, headers, body


def get(proxy: Any, path: str, method: str = "GET") -> tuple[str, dict[str, str], bytes]:
    return parse(route(proxy, method, path))


def test_metrics_is_prometheus_text_with_request_counts() -> None:
    proxy = StandInProxy()
    proxy.metrics.request(0, 123)  # Produce
    proxy.metrics.request(0, 77)
    proxy.metrics.request(18, 10)  # ApiVersions
    proxy.metrics.response(18, 20, started=0.0)
    status, headers, body = get(proxy, "/metrics")
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith("text/plain; version=")
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    text = body.decode()
    assert "# TYPE idemproxy_requests_total counter" in text
    assert 'idemproxy_requests_total{api="Produce"} 2.0' in text
    assert 'idemproxy_requests_total{api="ApiVersions"} 1.0' in text
    assert 'idemproxy_bytes_total{direction="request"} 210.0' in text
    assert 'idemproxy_request_duration_seconds_count{api="ApiVersions"} 1.0' in text


def test_metrics_for_an_unknown_api_share_one_label() -> None:
    proxy = StandInProxy()
    proxy.metrics.request(250, 1)
    proxy.metrics.request(251, 1)
    _, _, body = get(proxy, "/metrics")
    assert 'idemproxy_requests_total{api="Unknown"} 2.0' in body.decode()


def test_metrics_ignores_a_query_string() -> None:
    status, _, body = get(StandInProxy(), "/metrics?name[]=idemproxy_requests_total")
    assert status == "HTTP/1.1 200 OK"
    assert b"idemproxy_build_info" in body


def test_separate_proxies_have_separate_registries() -> None:
    first, second = StandInProxy(), StandInProxy()
    first.metrics.request(0, 1)
    _, _, body = get(second, "/metrics")
    assert b'idemproxy_requests_total{api="Produce"}' not in body


def test_livez_is_ok() -> None:
    status, headers, body = get(StandInProxy(), "/livez")
    assert status == "HTTP/1.1 200 OK"
    assert body == b"ok\n"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["content-length"] == "3"


@pytest.mark.parametrize("path", ["/", "/metricsx", "/livez/", "/healthz", "/../metrics", ""])
def test_unknown_path_is_404(path: str) -> None:
    status, headers, body = get(StandInProxy(), path)
    assert status == "HTTP/1.1 404 Not Found"
    assert int(headers["content-length"]) == len(body)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get"])
@pytest.mark.parametrize("path", ["/metrics", "/livez", "/nowhere"])
def test_other_methods_are_405(method: str, path: str) -> None:
    status, _, body = get(StandInProxy(), path, method)
    assert status == "HTTP/1.1 405 Method Not Allowed"
    assert body == b"method not allowed\n"


def test_head_has_the_get_headers_and_no_body() -> None:
    """RFC 9110 9.3.2: the server must not send content in a response to HEAD."""
    proxy = StandInProxy()
    get_status, get_headers, _ = get(proxy, "/livez")
    status, headers, body = get(proxy, "/livez", "HEAD")
    assert status == get_status
    assert headers["content-type"] == get_headers["content-type"]
    assert body == b""


def test_405_lists_the_allowed_methods() -> None:
    """RFC 9110 15.5.6: a 405 response must carry an Allow header."""
    _, headers, _ = get(StandInProxy(), "/metrics", "POST")
    assert headers.get("allow") == "GET, HEAD"
