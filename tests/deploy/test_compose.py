"""deploy/compose/compose.yaml, statically (no Docker engine here): the compose-spec
schema, every file it mounts or builds from, and that its services agree with each
other (ports, service names, paths inside the containers)."""

from __future__ import annotations

import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from proxy.config import load_config
from tests.deploy.artifacts import (
    COMPOSE,
    DASHBOARD,
    DOCKERFILE,
    PROMETHEUS_CONFIG,
    load_yaml,
)

SPEC = load_yaml(COMPOSE)
SERVICES: dict[str, Any] = SPEC["services"]


def _compose_schema() -> dict[str, Any]:
    """The compose-spec JSON schema vendored in check-jsonschema (no download)."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return schema


def _env(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _bind_mounts(service: str) -> list[tuple[Path, str]]:
    """(host path, container path) of the service's bind mounts (named volumes skipped)."""
    mounts = []
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((COMPOSE.parent / source).resolve(), target))
    return mounts


def _host_path(service: str, container_path: str) -> Path:
    """Where a path inside the container comes from on the host, through bind mounts."""
    for host, target in _bind_mounts(service):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return host / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not mounted into {service}")


def test_matches_the_compose_specification() -> None:
    errors = sorted(jsonschema.Draft202012Validator(_compose_schema()).iter_errors(SPEC), key=str)
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_schema_check_is_not_vacuous() -> None:
    bad = {"services": {"proxy": {"image": "x", "environmnet": {}}}}
    assert not jsonschema.Draft202012Validator(_compose_schema()).is_valid(bad)


def test_has_the_demo_services() -> None:
    assert set(SERVICES) == {"kafka", "idemproxy", "producer", "prometheus", "grafana"}


def test_kafka_is_kraft_on_apache_kafka_3_8_or_later() -> None:
    image = SERVICES["kafka"]["image"]
    name, tag = image.split(":")
    assert name == "apache/kafka"
    assert tuple(int(x) for x in tag.split(".")[:2]) >= (3, 8)
    env = _env("kafka")
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in env
    assert not any("ZOOKEEPER" in key for key in env)
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_mounted_files_exist(service: str) -> None:
    for host, _ in _bind_mounts(service):
        assert host.exists(), f"{service} mounts missing {host}"


def test_proxy_is_built_from_the_dockerfile() -> None:
    build = SERVICES["idemproxy"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert (context / "pyproject.toml").is_file()
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_proxy_configuration_is_valid() -> None:
    """The service's environment is accepted by the proxy's own configuration loader."""
    config = load_config({}, _env("idemproxy"), None)
    assert [str(u) for u in config.upstream] == ["kafka:9092"]
    assert "kafka" in SERVICES["idemproxy"]["depends_on"]
    assert str(config.listen) == "127.0.0.1:9092"
    assert config.metrics_listen is not None
    assert config.metrics_listen.host == "0.0.0.0"


def test_producer_is_a_sidecar_neighbour_bootstrapping_from_localhost() -> None:
    producer = SERVICES["producer"]
    assert producer["network_mode"] == "service:idemproxy"
    command = " ".join(producer["command"])
    assert "bootstrap.servers=localhost:9092" in command
    assert "enable.idempotence=true" in command
    listen = load_config({}, _env("idemproxy"), None).listen
    assert listen.port == 9092


def test_prometheus_scrapes_the_proxy_service_with_the_mounted_config() -> None:
    prometheus = SERVICES["prometheus"]
    (flag,) = [a for a in prometheus["command"] if a.startswith("--config.file=")]
    mounted = _host_path("prometheus", flag.split("=", 1)[1])
    assert mounted.resolve() == PROMETHEUS_CONFIG
    config = load_yaml(mounted)
    for rule_file in config["rule_files"]:  # resolved next to the config inside the container
        assert (mounted.parent / rule_file).is_file()
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "idemproxy"]
    (target,) = [t for sc in job["static_configs"] for t in sc["targets"]]
    host, port = target.rsplit(":", 1)
    assert host == "idemproxy"
    metrics = load_config({}, _env("idemproxy"), None).metrics_listen
    assert metrics is not None
    assert int(port) == metrics.port


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard() -> None:
    provisioning = _host_path("grafana", "/etc/grafana/provisioning")
    datasources = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    (url,) = [d["url"] for d in datasources if d["type"] == "prometheus"]
    match = re.fullmatch(r"http://([\w-]+):(\d+)", url)
    assert match
    assert match.group(1) in SERVICES
    assert match.group(2) == "9090"
    for provider in load_yaml(provisioning / "dashboards" / "idemproxy.yaml")["providers"]:
        folder = _host_path("grafana", provider["options"]["path"])
        assert (folder / DASHBOARD.name).resolve() == DASHBOARD
    home = _env("grafana").get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert _host_path("grafana", home).resolve() == DASHBOARD


def test_published_ports_stay_on_loopback() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"
