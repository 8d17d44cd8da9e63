"""Prometheus scrape config and alert rules: promtool checks and unit tests, and the
rules' PromQL against the metrics the proxy exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.artifacts import (
    ALERTS,
    ALERTS_TEST,
    PROMETHEUS_CONFIG,
    alert_rules,
    dashboard_queries,
    load_dashboard,
    load_yaml,
    metric_names,
    substitute,
    unknown_metrics,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package 'prometheus'; `make install` installs it)",
)

RULES = alert_rules()
#: Values for the dashboard's template variables when checking its PromQL.
TEMPLATE_VALUES = {"job": "idemproxy", "instance": ".*", "__rate_interval": "1m"}


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"


@needs_promtool
def test_promtool_check_config() -> None:
    _ok(_promtool("check", "config", PROMETHEUS_CONFIG))


@needs_promtool
def test_promtool_check_rules() -> None:
    _ok(_promtool("check", "rules", ALERTS))


@needs_promtool
def test_promtool_test_rules() -> None:
    result = _promtool("test", "rules", ALERTS_TEST)
    _ok(result)
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_rule_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests are not vacuous: a threshold changed in alerts.yml makes them fail."""
    broken = ALERTS.read_text().replace(") > 0.05", ") > 0.5")
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    result = _promtool("test", "rules", tmp_path / "alerts_test.yml")
    assert result.returncode != 0
    assert "IdemproxyHighDuplicateShare" in result.stdout + result.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (as recording rules, variables substituted)."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute(q.expr, TEMPLATE_VALUES)}
        for i, q in enumerate(dashboard_queries(load_dashboard()))
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _ok(_promtool("check", "rules", path))


def test_scrape_config_reads_the_rules_and_scrapes_the_proxy() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_CONFIG.parent / rule_file).is_file(), rule_file
    assert ALERTS.name in config["rule_files"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "idemproxy"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets


def test_rule_test_file_loads_the_rules() -> None:
    tests = load_yaml(ALERTS_TEST)
    assert [(ALERTS_TEST.parent / f).resolve() for f in tests["rule_files"]] == [ALERTS.resolve()]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["alert"])
def test_rules_name_only_exported_metrics(rule: dict[str, Any]) -> None:
    assert metric_names(rule["expr"])
    assert not unknown_metrics(rule["expr"]), rule["expr"]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["alert"])
def test_rules_have_severity_and_text(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert rule["annotations"]["summary"]
    assert rule["annotations"]["description"]
    assert "{{ $labels.instance }}" in rule["annotations"]["summary"]


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    firing = {
        case["alertname"]
        for test in load_yaml(ALERTS_TEST)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {r["alert"] for r in RULES} - firing == set()


def _rule(name: str) -> dict[str, Any]:
    (rule,) = [r for r in RULES if r["alert"] == name]
    return rule


def test_required_alerts() -> None:
    assert _rule("IdemproxyDown")["expr"].strip() == 'up{job="idemproxy"} == 0'
    share = _rule("IdemproxyHighDuplicateShare")
    assert 'result=~"duplicate|inflight_duplicate"' in share["expr"]
    assert share["for"] not in ("0", "0m", "0s")
    assert 'result="out_of_order"' in _rule("IdemproxyOutOfOrderSequence")["expr"]
    assert 'result="fenced"' in _rule("IdemproxyFencedProducer")["expr"]
    assert 'reason="upstream_unreachable"' in _rule("IdemproxyUpstreamUnreachable")["expr"]
    assert _rule("IdemproxyUpstreamDown")["expr"].strip() == "idemproxy_upstream_up == 0"
    evictions = _rule("IdemproxyProducerStateEvictions")["expr"]
    assert "idemproxy_producer_state_evictions_total" in evictions
    sasl = _rule("IdemproxySaslAuthenticationFailing")["expr"]
    assert "idemproxy_sasl_authentication_failures_total" in sasl
    assert "side, reason" in sasl, "one alert per side and reason"


def test_stamp_mode_alerts() -> None:
    """Producers without idempotence: each event can mean a record written twice."""
    refused = _rule("IdemproxyProducerIdRefused")
    assert 'idemproxy_producer_ids_total{result="refused"}' in refused["expr"]
    assert "IDEMPOTENT_WRITE" in refused["annotations"]["description"]
    unresolved = _rule("IdemproxyStampedBatchesUnresolved")
    assert 'idemproxy_stamped_batches_total{result="unresolved"}' in unresolved["expr"]
    evictions = _rule("IdemproxyStampStateEvictions")
    assert "idemproxy_stamp_state_evictions_total" in evictions["expr"]
    assert "--stamp-memory" in evictions["annotations"]["description"]
    for rule in (refused, unresolved, evictions):
        assert rule["labels"]["severity"] == "warning"


def test_alerts_use_the_scrape_job_name() -> None:
    jobs = {j["job_name"] for j in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    for rule in RULES:
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, rule["alert"]
