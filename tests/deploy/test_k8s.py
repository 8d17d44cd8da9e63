"""deploy/k8s: the manifests against the Kubernetes JSON schemas (offline, bundled in
kubernetes-validate), and the properties of the idemproxy native sidecar."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.cli import serve
from proxy.config import OPTIONS, ProxyConfig, load_config
from tests.deploy.artifacts import DOCKERFILE, K8S, load_yaml, load_yaml_all

KUSTOMIZATION = load_yaml(K8S / "kustomization.yaml")
RESOURCES: list[tuple[str, dict[str, Any]]] = [
    (name, doc) for name in KUSTOMIZATION["resources"] for doc in load_yaml_all(K8S / name)
]
#: Native sidecars (init containers with restartPolicy: Always) are on by default from 1.29.
K8S_VERSIONS = ["1.29", kubernetes_validate.latest_version()]


def _kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for _, d in RESOURCES if d["kind"] == kind]
    return doc


DEPLOYMENT = _kind("Deployment")
CONFIGMAP = _kind("ConfigMap")
POD = DEPLOYMENT["spec"]["template"]["spec"]
(SIDECAR,) = [c for c in POD["initContainers"] if c["name"] == "idemproxy"]
(PRODUCER,) = POD["containers"]


def _validate(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "resource", RESOURCES, ids=lambda r: f"{r[0]}:{r[1]['kind']}/{r[1]['metadata']['name']}"
)
def test_manifests_match_the_kubernetes_schemas(
    resource: tuple[str, dict[str, Any]], version: str
) -> None:
    _validate(resource[1], version)


def test_schema_validation_is_strict() -> None:
    """Not vacuous: unknown fields and wrong types are rejected, and the native sidecar's
    restartPolicy is unknown to the 1.27 schema (the feature arrived in 1.28)."""
    typo = yaml.safe_load(yaml.safe_dump(DEPLOYMENT))
    typo["spec"]["template"]["spec"]["initContainers"][0]["securityContext"][
        "readOnlyRootFileSystem"
    ] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(typo, K8S_VERSIONS[-1])
    wrong_type = yaml.safe_load(yaml.safe_dump(DEPLOYMENT))
    wrong_type["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(wrong_type, K8S_VERSIONS[-1])
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        _validate(DEPLOYMENT, "1.27")


def test_kustomization_lists_every_manifest() -> None:
    assert KUSTOMIZATION["kind"] == "Kustomization"
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(KUSTOMIZATION["resources"]) == manifests
    assert {d["kind"] for _, d in RESOURCES} == {"ConfigMap", "Deployment"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_renders_valid_manifests() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted(d["kind"] for d in rendered) == ["ConfigMap", "Deployment"]
    for doc in rendered:
        _validate(doc, K8S_VERSIONS[-1])


# -- the sidecar --------------------------------------------------------------------------


def _args(container: dict[str, Any]) -> dict[str, str]:
    """`--name=value` and `--name value` arguments as a mapping."""
    args = list(container.get("args", []))
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            out[name] = value
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[arg] = args[i + 1]
            i += 1
        i += 1
    return out


def test_proxy_is_a_native_sidecar() -> None:
    assert SIDECAR["restartPolicy"] == "Always"
    assert SIDECAR["image"].split(":")[0] == "idemproxy"
    assert "command" not in SIDECAR, "the image's ENTRYPOINT (idemproxy serve) runs"


def test_kafka_ports_on_localhost_and_management_port_for_the_kubelet() -> None:
    args = _args(SIDECAR)
    assert args["--listen"] == "127.0.0.1:9092"
    assert args["--metrics-listen"] == "0.0.0.0:9464"
    ports = {p["name"]: p["containerPort"] for p in SIDECAR["ports"]}
    assert ports == {"metrics": 9464}, "no Kafka port is published from the pod"


def _probe_port(probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in SIDECAR["ports"] if p["name"] == port]
    return int(number)


@pytest.mark.parametrize(
    ("probe", "path"),
    [("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")],
)
def test_probes(probe: str, path: str) -> None:
    spec = SIDECAR[probe]
    assert spec["httpGet"]["path"] == path
    metrics_port = int(_args(SIDECAR)["--metrics-listen"].rsplit(":", 1)[1])
    assert _probe_port(spec) == metrics_port


def _restrictive(container: dict[str, Any]) -> None:
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc.get("privileged", False) is False
    assert isinstance(sc.get("runAsUser"), int)
    assert sc["runAsUser"] != 0


@pytest.mark.parametrize("container", [SIDECAR, PRODUCER], ids=lambda c: c["name"])
def test_containers_have_a_restrictive_security_context(container: dict[str, Any]) -> None:
    _restrictive(container)


def test_pod_security_context() -> None:
    assert POD["securityContext"]["runAsNonRoot"] is True
    assert POD["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert POD.get("hostNetwork", False) is False


def test_sidecar_user_is_the_image_user() -> None:
    (user,) = [
        line.split()[1] for line in DOCKERFILE.read_text().splitlines() if line.startswith("USER ")
    ]
    uid, gid = (int(x) for x in user.split(":"))
    assert SIDECAR["securityContext"]["runAsUser"] == uid
    assert SIDECAR["securityContext"]["runAsGroup"] == gid


def test_producer_bootstraps_from_localhost() -> None:
    text = " ".join([*PRODUCER.get("command", []), *PRODUCER.get("args", [])])
    assert "bootstrap.servers=localhost:9092" in text
    assert "enable.idempotence=true" in text


def _config_path() -> str:
    (env,) = [e for e in SIDECAR["env"] if e["name"] == "IDEMPROXY_CONFIG"]
    path: str = env["value"]
    return path


def test_config_file_comes_from_the_configmap() -> None:
    path = _config_path()
    (mount,) = [m for m in SIDECAR["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True
    (volume,) = [v for v in POD["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == CONFIGMAP["metadata"]["name"]
    key = path[len(mount["mountPath"]) + 1 :]
    assert key in CONFIGMAP["data"]
    tomllib.loads(CONFIGMAP["data"][key])


def _sidecar_config(tmp_path: Path) -> ProxyConfig:
    """The configuration the sidecar runs with, resolved by the proxy's own CLI and loader:
    its args, its environment and the ConfigMap's TOML file."""
    mount = next(m for m in SIDECAR["volumeMounts"] if _config_path().startswith(m["mountPath"]))
    volume = next(v for v in POD["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == CONFIGMAP["metadata"]["name"]
    toml_file = tmp_path / "idemproxy.toml"
    toml_file.write_text(CONFIGMAP["data"][_config_path()[len(mount["mountPath"]) + 1 :]])
    ctx = serve.make_context("serve", list(SIDECAR["args"]))
    assert ctx.params.pop("config_file") is None
    environ = {e["name"]: e["value"] for e in SIDECAR.get("env", []) if "value" in e}
    environ.pop("IDEMPROXY_CONFIG")
    return load_config(ctx.params, environ, toml_file)


def test_sidecar_configuration_is_valid(tmp_path: Path) -> None:
    config = _sidecar_config(tmp_path)
    assert str(config.listen) == "127.0.0.1:9092"
    assert str(config.metrics_listen) == "0.0.0.0:9464"
    assert config.advertised_host == "127.0.0.1"
    assert config.upstream
    assert config.shutdown_timeout < POD["terminationGracePeriodSeconds"]


def test_prometheus_scrape_annotations_match_the_management_port() -> None:
    annotations = DEPLOYMENT["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == 9464
    assert annotations["prometheus.io/path"] == "/metrics"


def test_configmap_keys_are_proxy_options() -> None:
    """Unknown keys are errors in the proxy; load the file alone to be sure."""
    for text in CONFIGMAP["data"].values():
        assert set(tomllib.loads(text)) <= set(OPTIONS)


# -- certificates and credentials from Secrets ------------------------------------------------

#: Where each Secret is mounted: listener TLS, upstream TLS, the sidecar's SASL password.
SECRET_DIRS = {
    "/etc/idemproxy/tls/listen": "idemproxy-listen-tls",
    "/etc/idemproxy/tls/upstream": "idemproxy-upstream-tls",
    "/etc/idemproxy/sasl": "idemproxy-sasl",
}


def _secured_settings() -> dict[str, Any]:
    """The ConfigMap's commented secured-cluster settings, uncommented."""
    (text,) = CONFIGMAP["data"].values()
    lines = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("# ")]
    return tomllib.loads("\n".join(line for line in lines if " = " in line))


def _secret_mount(directory: str) -> tuple[dict[str, Any], dict[str, Any]]:
    (mount,) = [m for m in SIDECAR["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in POD["volumes"] if v["name"] == mount["name"]]
    return mount, volume


def test_the_secured_settings_name_files_of_the_mounted_secrets() -> None:
    settings = _secured_settings()
    files = {k: v for k, v in settings.items() if isinstance(v, str) and v.startswith("/")}
    assert set(files) == {
        "upstream_ca", "upstream_cert", "upstream_key", "upstream_sasl_password_file",
        "listen_tls_cert", "listen_tls_key", "listen_tls_client_ca",
    }  # fmt: skip
    assert files["upstream_sasl_password_file"] == "/etc/idemproxy/sasl/password"
    for name, path in files.items():
        directory = path.rsplit("/", 1)[0]
        assert directory in SECRET_DIRS, name
        mount, volume = _secret_mount(directory)
        assert volume["secret"]["secretName"] == SECRET_DIRS[directory]
        assert mount["readOnly"] is True
        assert "subPath" not in mount, "a subPath mount never sees the Secret's updates"
    assert set(settings) <= set(OPTIONS)


def test_secrets_are_optional_and_readable_only_by_the_sidecars_group() -> None:
    for directory in SECRET_DIRS:
        _, volume = _secret_mount(directory)
        assert volume["secret"]["optional"] is True, "the pod starts before TLS is set up"
        assert volume["secret"]["defaultMode"] == 0o440
    assert POD["securityContext"]["fsGroup"] == SIDECAR["securityContext"]["runAsGroup"]
    # Secret mounts beside the ConfigMap's, not inside it.
    assert not any(_config_path().startswith(d + "/") for d in SECRET_DIRS)
    assert not any(d.startswith(_config_path().rsplit("/", 1)[0]) for d in SECRET_DIRS)


def test_the_secured_settings_load_with_the_mounted_files(tmp_path: Path) -> None:
    from integration.tlscerts import CA

    ca = CA("cluster CA")
    root = tmp_path / "etc-idemproxy"
    for directory, issued in {
        root / "tls/listen": ca.issue("proxy"),
        root / "tls/upstream": ca.issue("proxy", client=True),
    }.items():  # the file names of the Secrets' keys
        directory.mkdir(parents=True)
        (directory / "tls.crt").write_bytes(issued.cert_pem)
        (directory / "tls.key").write_bytes(issued.key_pem)
        (directory / "ca.crt").write_bytes(ca.cert_pem)
    (root / "sasl").mkdir()
    (root / "sasl" / "password").write_text("s3cret\n")
    settings = {
        name: value.replace("/etc/idemproxy", str(root)) if isinstance(value, str) else value
        for name, value in _secured_settings().items()
        if name in OPTIONS
    }
    toml_file = tmp_path / "idemproxy.toml"
    toml_file.write_text(
        CONFIGMAP["data"]["idemproxy.toml"]
        + "".join(f"{k} = {_toml(v)}\n" for k, v in settings.items())
    )
    config = load_config({}, {}, toml_file)
    assert config.upstream_tls is True
    assert config.listen_tls_client_ca == root / "tls/listen/ca.crt"
    assert config.upstream_key == root / "tls/upstream/tls.key"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
