"""Readers for the files under deploy/, shared by tests/deploy and integration/test_prometheus.py.

Only the standard library and PyYAML: the PromQL helpers work on text, so the
static tests and the real-Prometheus test check the same expressions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "idemproxy.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
K8S = DEPLOY / "k8s"

#: Metric families the proxy exports (README "Metrics"; proxy/server/metrics.py), by type.
COUNTERS = frozenset(
    {
        "idemproxy_produce_batches_total",
        "idemproxy_produce_records_total",
        "idemproxy_non_idempotent_batches_total",
        "idemproxy_producer_state_evictions_total",
        "idemproxy_requests_total",
        "idemproxy_bytes_total",
        "idemproxy_client_connections_accepted_total",
        "idemproxy_connection_errors_total",
        "idemproxy_frames_refused_total",
        "idemproxy_tls_handshake_failures_total",
        "idemproxy_tls_reloads_total",
        "idemproxy_sasl_authentication_failures_total",
        # stamp mode (--non-idempotent stamp): producers without idempotence
        "idemproxy_stamped_batches_total",
        "idemproxy_stamped_records_total",
        "idemproxy_retried_records_dropped_total",
        "idemproxy_producer_ids_total",
        "idemproxy_stamp_state_evictions_total",
    }
)
GAUGES = frozenset(
    {
        "idemproxy_producer_state_entries",
        "idemproxy_client_connections",
        "idemproxy_upstream_connections",
        "idemproxy_upstream_up",
        "idemproxy_build_info",
        # stamp mode
        "idemproxy_stamp_state_bytes",
        "idemproxy_stamp_records_in_doubt",
        "idemproxy_stamp_lines",
    }
)
HISTOGRAMS = frozenset(
    {
        "idemproxy_request_duration_seconds",
        "idemproxy_upstream_duration_seconds",
    }
)
EXPORTED = COUNTERS | GAUGES | HISTOGRAMS
#: Series Prometheus writes itself for every scrape target.
SCRAPE_SERIES = frozenset({"up"})

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# PromQL words that look like metric names but are not.
_KEYWORDS = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right",
        "and", "or", "unless", "offset", "bool", "atan2",
        "inf", "nan",
    }
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.$:])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:]|\s*\()")
_SELECTOR = re.compile(r"(?<![\w.$:])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^{}]*\})?")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, labels and literals removed)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}


def family(name: str) -> str:
    """The exported family of a series name: histogram suffixes are stripped."""
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


def unknown_metrics(expr: str, allowed: frozenset[str] = EXPORTED | SCRAPE_SERIES) -> set[str]:
    """Metric names in expr that the proxy (or Prometheus, for `up`) does not produce."""
    return {name for name in metric_names(expr) if family(name) not in allowed}


def _mask_strings(expr: str) -> str:
    """expr with the inside of every string literal blanked (same length, so spans align)."""
    return _STRING.sub(lambda m: m.group(0)[0] + "_" * (len(m.group(0)) - 2) + m.group(0)[-1], expr)


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matcher text or "") for every selector of a known metric in expr."""
    masked = _mask_strings(expr)
    out = []
    for match in _SELECTOR.finditer(masked):
        name = match.group(1)
        if family(name) in EXPORTED | SCRAPE_SERIES:
            matchers = expr[match.start(2) : match.end(2)] if match.group(2) else ""
            out.append((name, matchers))
    return out


def range_windows(expr: str) -> list[str]:
    """The contents of every [...] range or subquery window in expr."""
    return [m.group(0)[1:-1] for m in _RANGE.finditer(_STRING.sub('""', expr))]


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def variables(expr: str) -> set[str]:
    """Grafana template variables used in expr (all three syntaxes)."""
    return {a or b or c for a, b, c in _VARIABLE.findall(expr)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """expr with Grafana template variables replaced; KeyError for an unknown one."""

    def replace(m: re.Match[str]) -> str:
        return values[m.group(1) or m.group(2) or m.group(3)]

    return _VARIABLE.sub(replace, expr)


# -- the Grafana dashboard ------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    panel: str
    ref_id: str
    expr: str
    instant: bool


def load_dashboard() -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[Query]:
    return [
        Query(panel["title"], t["refId"], t["expr"], bool(t.get("instant")))
        for panel in all_panels(dashboard)
        for t in panel.get("targets", [])
        if not t.get("hide")
    ]


def template_variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


# -- Prometheus rules -------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule
    ]
