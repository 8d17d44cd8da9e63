"""The Grafana dashboard: valid JSON, only metrics the proxy exports, the data source
variable everywhere, and a panel for each thing an operator needs to see."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.artifacts import (
    DASHBOARD,
    EXPORTED,
    GRAFANA_PROVISIONING,
    HISTOGRAMS,
    Query,
    all_panels,
    dashboard_queries,
    family,
    load_dashboard,
    load_yaml,
    metric_names,
    range_windows,
    selectors,
    template_variables,
    unknown_metrics,
    variables,
)

DASH = load_dashboard()
QUERIES = dashboard_queries(DASH)
DATASOURCE_UIDS = {"${datasource}", "$datasource"}


def _query_id(query: Query) -> str:
    return f"{query.panel}/{query.ref_id}"


def test_is_a_dashboard_grafana_can_provision() -> None:
    assert DASH["uid"] == "idemproxy"
    assert DASH["title"]
    assert 36 <= DASH["schemaVersion"] <= 41
    assert DASH.get("id") is None, "provisioned dashboards carry no database id"
    assert len(QUERIES) >= 20


def test_template_variables() -> None:
    variables_ = template_variables(DASH)
    datasource = variables_["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    for name in ("job", "instance"):
        var = variables_[name]
        assert var["type"] == "query"
        assert var["datasource"]["uid"] in DATASOURCE_UIDS
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\((.+), *(\w+)\)", query)
        assert match, query
        assert match.group(2) == name
        assert not unknown_metrics(match.group(1))
    assert "$job" in variables_["instance"]["definition"], "instances are those of the job"


def test_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in all_panels(DASH)]
    assert len(ids) == len(set(ids))


def test_panels_do_not_overlap_and_fit_the_grid() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in all_panels(DASH):
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def _panels_with_queries() -> list[dict[str, Any]]:
    return [p for p in all_panels(DASH) if p.get("targets")]


@pytest.mark.parametrize("panel", _panels_with_queries(), ids=lambda p: p["title"])
def test_every_panel_and_query_uses_the_datasource_variable(panel: dict[str, Any]) -> None:
    assert panel["datasource"] == {"type": "prometheus", "uid": panel["datasource"]["uid"]}
    assert panel["datasource"]["uid"] in DATASOURCE_UIDS
    for target in panel["targets"]:
        assert target["datasource"]["type"] == "prometheus"
        assert target["datasource"]["uid"] in DATASOURCE_UIDS


def test_rows_have_no_queries() -> None:
    for panel in all_panels(DASH):
        if panel["type"] == "row":
            assert not panel.get("targets")


@pytest.mark.parametrize("query", QUERIES, ids=_query_id)
def test_queries_name_only_exported_metrics(query: Query) -> None:
    names = metric_names(query.expr)
    assert names, f"no metric found in {query.expr!r}"
    assert not unknown_metrics(query.expr), query.expr
    assert "__name__" not in query.expr, "a __name__ matcher would escape this check"


@pytest.mark.parametrize("query", QUERIES, ids=_query_id)
def test_queries_honour_job_and_instance(query: Query) -> None:
    found = selectors(query.expr)
    assert found
    for name, matchers in found:
        assert 'job=~"$job"' in matchers, f"{name}{matchers}"
        assert 'instance=~"$instance"' in matchers, f"{name}{matchers}"


@pytest.mark.parametrize("query", QUERIES, ids=_query_id)
def test_rates_use_the_rate_interval(query: Query) -> None:
    for window in range_windows(query.expr):
        assert window == "$__rate_interval", query.expr
    assert variables(query.expr) <= {"job", "instance", "__rate_interval"}
    for name in metric_names(query.expr):
        if name.endswith(("_total", "_bucket")):
            assert re.search(rf"(rate|increase)\(\s*{name}\b", query.expr), (
                f"counter {name} must be rated: {query.expr}"
            )


def test_histograms_are_read_by_their_buckets_only() -> None:
    for query in QUERIES:
        for name in metric_names(query.expr):
            if family(name) in HISTOGRAMS:
                assert name.endswith("_bucket"), query.expr
                assert "histogram_quantile(" in query.expr


def test_every_exported_metric_is_on_the_dashboard() -> None:
    shown = {family(n) for q in QUERIES for n in metric_names(q.expr)}
    assert EXPORTED - shown == set()


def _exprs_of(title: str) -> list[str]:
    exprs = [q.expr for q in QUERIES if q.panel == title]
    assert exprs, f"no panel titled {title!r}"
    return exprs


def test_duplicates_dropped_per_second_and_as_a_share() -> None:
    (rate,) = _exprs_of("Duplicates dropped per second")
    assert 'result=~"duplicate|inflight_duplicate"' in rate
    (share,) = _exprs_of("Duplicate share of produce batches")
    numerator, denominator = share.split(" / ")
    assert 'result=~"duplicate|inflight_duplicate"' in numerator
    assert "result" not in denominator, "the share is of all produce batches"
    panel = next(p for p in all_panels(DASH) if p["title"] == "Duplicate share of produce batches")
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"


def test_produce_batches_by_result() -> None:
    (expr,) = _exprs_of("Produce batches by result")
    assert expr.startswith("sum by (result) (rate(idemproxy_produce_batches_total")


def test_request_latency_quantiles_by_api() -> None:
    exprs = _exprs_of("Request latency by API (p50, p99, p99.9)")
    quantiles = set()
    for expr in exprs:
        match = re.match(r"histogram_quantile\(([\d.]+), sum by \(le, api\) \(rate\(", expr)
        assert match, expr
        assert "idemproxy_request_duration_seconds_bucket" in expr
        quantiles.add(match.group(1))
    assert quantiles == {"0.5", "0.99", "0.999"}


@pytest.mark.parametrize(
    ("title", "metric", "by"),
    [
        ("Bytes per second by direction", "idemproxy_bytes_total", "direction"),
        ("Requests per second by API", "idemproxy_requests_total", "api"),
        ("Connection errors by reason", "idemproxy_connection_errors_total", "reason"),
        ("Producer state evictions per second", "idemproxy_producer_state_evictions_total", ""),
        (
            "TLS handshake failures by side and reason",
            "idemproxy_tls_handshake_failures_total",
            "side, reason",
        ),
        (
            "SASL authentication failures by side and reason",
            "idemproxy_sasl_authentication_failures_total",
            "side, reason",
        ),
    ],
)
def test_breakdowns(title: str, metric: str, by: str) -> None:
    (expr,) = _exprs_of(title)
    assert metric in expr
    if by:
        assert expr.startswith(f"sum by ({by})")


def test_connections_state_and_build_info_are_shown() -> None:
    assert {metric_names(e).pop() for e in _exprs_of("Open connections")} == {
        "idemproxy_client_connections",
        "idemproxy_upstream_connections",
    }
    assert "idemproxy_producer_state_entries" in _exprs_of("Producer state entries")[0]
    assert "idemproxy_build_info" in _exprs_of("Build info")[0]


def test_stamp_mode_row() -> None:
    """Producers without idempotence have a row of their own, every stamp family in it."""
    panels = list(all_panels(DASH))
    (row,) = [p for p in panels if p["title"] == "Producers without idempotence (stamp mode)"]
    assert row["type"] == "row"
    nxt = min(
        (
            p["gridPos"]["y"]
            for p in panels
            if p["type"] == "row" and p["gridPos"]["y"] > row["gridPos"]["y"]
        ),
        default=10**6,
    )
    inside = [p for p in panels if row["gridPos"]["y"] < p["gridPos"]["y"] < nxt]
    shown = {n for p in inside for t in p.get("targets", []) for n in metric_names(t["expr"])}
    assert shown >= {
        "idemproxy_retried_records_dropped_total",
        "idemproxy_stamped_batches_total",
        "idemproxy_stamped_records_total",
        "idemproxy_producer_ids_total",
        "idemproxy_stamp_state_bytes",
        "idemproxy_stamp_records_in_doubt",
        "idemproxy_stamp_lines",
        "idemproxy_stamp_state_evictions_total",
        "idemproxy_non_idempotent_batches_total",
    }
    (expr,) = _exprs_of("Stamped batches by result")
    assert expr.startswith("sum by (result) (rate(idemproxy_stamped_batches_total")
    (expr,) = _exprs_of("Producer ids obtained / refused")
    assert expr.startswith("sum by (result) (increase(idemproxy_producer_ids_total")
    (expr,) = _exprs_of("Non-idempotent batches by action")
    assert expr.startswith("sum by (action) (rate(idemproxy_non_idempotent_batches_total")


def test_provisioning_points_grafana_at_the_dashboard() -> None:
    providers = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "idemproxy.yaml")
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    datasources = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yaml")
    (prometheus,) = datasources["datasources"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["isDefault"] is True
    assert DASHBOARD.parent.name == "dashboards"
