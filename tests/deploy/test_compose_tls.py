"""deploy/compose/compose.tls.yaml, the TLS overlay of the demo: the compose-spec schema,
its secrets (made by make-secrets.sh) mounted where the proxy's and the producer's settings
name them, and the proxy's own loader accepting them."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography import x509

from proxy.config import OPTIONS, env_var_name, load_config
from tests.deploy.artifacts import COMPOSE, load_yaml
from tests.deploy.test_compose import _compose_schema

OVERLAY_PATH = COMPOSE.parent / "compose.tls.yaml"
MAKE_SECRETS = COMPOSE.parent / "make-secrets.sh"
BASE = load_yaml(COMPOSE)
OVERLAY = load_yaml(OVERLAY_PATH)


def _merged() -> dict[str, Any]:
    """compose.yaml with the overlay applied as `docker compose -f a -f b` does for the keys
    used here: environment mappings merged, secrets lists appended, command replaced."""
    merged: dict[str, Any] = {**BASE, "secrets": {**OVERLAY["secrets"]}}
    services = {name: dict(spec) for name, spec in BASE["services"].items()}
    for name, spec in OVERLAY["services"].items():
        target = services[name]
        for key, value in spec.items():
            if key == "environment":
                target[key] = {**target.get(key, {}), **value}
            elif key == "secrets":
                target[key] = [*target.get(key, []), *value]
            else:
                target[key] = value
    merged["services"] = services
    return merged


MERGED = _merged()


def _targets(service: str) -> dict[str, str]:
    """Path inside the container -> the secret's source file, relative to deploy/compose."""
    return {
        s["target"]: OVERLAY["secrets"][s["source"]]["file"]
        for s in MERGED["services"][service]["secrets"]
    }


def _proxy_env() -> dict[str, str]:
    return {k: str(v) for k, v in MERGED["services"]["idemproxy"]["environment"].items()}


@pytest.mark.parametrize("spec", [OVERLAY, MERGED], ids=["overlay", "merged"])
def test_matches_the_compose_specification(spec: dict[str, Any]) -> None:
    errors = sorted(jsonschema.Draft202012Validator(_compose_schema()).iter_errors(spec), key=str)
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_every_secret_is_a_file_under_the_ignored_secrets_folder() -> None:
    for name, secret in OVERLAY["secrets"].items():
        assert secret["file"].startswith("./secrets/"), name
    ignored = (COMPOSE.parents[2] / ".gitignore").read_text().splitlines()
    assert "deploy/compose/secrets/" in ignored, "private keys stay out of git"


def test_the_proxy_reads_its_tls_files_from_the_mounted_secrets() -> None:
    env = _proxy_env()
    files = {k: v for k, v in env.items() if k.startswith("IDEMPROXY_LISTEN_TLS_")}
    assert set(files) == {env_var_name(n) for n in OPTIONS if n.startswith("listen_tls_")}
    targets = _targets("idemproxy")
    for variable, path in files.items():
        assert path in targets, variable


def test_the_commented_upstream_settings_name_mounted_secrets() -> None:
    text = OVERLAY_PATH.read_text()
    commented = dict(re.findall(r"^\s*#\s+(IDEMPROXY_[A-Z_]+): (/\S+)$", text, re.MULTILINE))
    assert commented == {
        "IDEMPROXY_UPSTREAM_CA": "/etc/idemproxy/tls/upstream/ca.crt",
        "IDEMPROXY_UPSTREAM_SASL_PASSWORD_FILE": "/etc/idemproxy/sasl/password",
    }
    targets = _targets("idemproxy")
    for path in commented.values():
        assert path in targets


def test_the_producer_trusts_the_proxy_and_presents_its_certificate() -> None:
    command = MERGED["services"]["producer"]["command"]
    props = dict(a.split("=", 1) for a in command if "=" in a)
    assert props["security.protocol"] == "SSL"
    assert props["bootstrap.servers"] == "localhost:9092"
    targets = _targets("producer")
    for key in ("ssl.truststore.location", "ssl.keystore.location"):
        assert props[key] in targets, key
    # The producer's trust store is the CA the proxy checks client certificates against.
    proxy_ca = _targets("idemproxy")[_proxy_env()["IDEMPROXY_LISTEN_TLS_CLIENT_CA"]]
    assert targets[props["ssl.truststore.location"]] == proxy_ca


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder = tmp_path_factory.mktemp("secrets")
    subprocess.run(["sh", str(MAKE_SECRETS), str(folder)], check=True, capture_output=True)
    return folder


def _made(secrets: Path, source: str) -> Path:
    return secrets / source.removeprefix("./secrets/")


def test_make_secrets_makes_every_file_the_overlay_mounts(secrets: Path) -> None:
    for name, secret in OVERLAY["secrets"].items():
        assert _made(secrets, secret["file"]).is_file(), name


def test_the_proxy_accepts_the_made_files(secrets: Path) -> None:
    targets = _targets("idemproxy")
    env = {
        k: str(_made(secrets, targets[v])) if v in targets else v for k, v in _proxy_env().items()
    }
    config = load_config({}, env, None)
    assert config.listen_tls_cert is not None
    assert config.listen_tls_client_ca is not None
    assert config.tls_reload_interval == 10.0


def test_the_producers_key_store_holds_a_certificate_the_proxy_accepts(secrets: Path) -> None:
    targets = _targets("producer")
    keystore = _made(secrets, targets["/etc/producer/tls/keystore.pem"])
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(keystore)  # key matches cert
    ca = x509.load_pem_x509_certificate((secrets / "ca.crt").read_bytes())
    producer = x509.load_pem_x509_certificates(keystore.read_bytes())[0]
    producer.verify_directly_issued_by(ca)
    proxy = x509.load_pem_x509_certificate((secrets / "proxy.crt").read_bytes())
    names = proxy.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName), "what the producer dials"
