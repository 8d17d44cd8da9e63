"""The --listen-tls-* options (TLS towards clients) and --tls-reload-interval: parsing,
combinations, files checked at start (one line, exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner

from integration.tlscerts import CA
from proxy.cli import main
from proxy.config import ConfigError, ProxyConfig, load_config

UPSTREAM = {"upstream": "kafka:9093"}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


@pytest.fixture
def files(tmp_path: Path, ca: CA) -> dict[str, Path]:
    cert, key = ca.issue("proxy").write(tmp_path, "proxy")
    _, other_key = ca.issue("other").write(tmp_path, "other")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    return {
        "ca": ca.write(tmp_path),
        "cert": cert,
        "key": key,
        "other_key": other_key,
        "junk": junk,
        "missing": tmp_path / "missing.pem",
    }


def load(cli: Mapping[str, object], env: Mapping[str, str] | None = None) -> ProxyConfig:
    return load_config({**UPSTREAM, **cli}, dict(env or {}), None)


def error(cli: Mapping[str, object], env: Mapping[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(cli, env)
    return caught.value


def test_listeners_are_plaintext_by_default() -> None:
    config = load({})
    assert config.listen_tls_cert is None
    assert config.listen_tls_key is None
    assert config.listen_tls_client_ca is None
    assert config.tls_reload_interval == 10.0


def test_every_listen_tls_setting_is_taken(files: dict[str, Path]) -> None:
    config = load(
        {
            "listen_tls_cert": str(files["cert"]),
            "listen_tls_key": str(files["key"]),
            "listen_tls_client_ca": str(files["ca"]),
            "tls_reload_interval": "0.5",
        }
    )
    assert (config.listen_tls_cert, config.listen_tls_key, config.listen_tls_client_ca) == (
        files["cert"],
        files["key"],
        files["ca"],
    )
    assert config.tls_reload_interval == 0.5


def test_listen_tls_from_the_environment(files: dict[str, Path]) -> None:
    env = {
        "IDEMPROXY_LISTEN_TLS_CERT": str(files["cert"]),
        "IDEMPROXY_LISTEN_TLS_KEY": str(files["key"]),
        "IDEMPROXY_LISTEN_TLS_CLIENT_CA": str(files["ca"]),
        "IDEMPROXY_TLS_RELOAD_INTERVAL": "3",
    }
    config = load({}, env)
    assert config.listen_tls_cert == files["cert"]
    assert config.listen_tls_client_ca == files["ca"]
    assert config.tls_reload_interval == 3.0


def test_a_certificate_without_its_key_is_refused(files: dict[str, Path]) -> None:
    e = error({"listen_tls_cert": str(files["cert"])})
    assert str(e) == (
        "--listen-tls-cert: needs --listen-tls-key too (TLS towards clients needs both a "
        "certificate and its key)"
    )
    e = error({}, {"IDEMPROXY_LISTEN_TLS_KEY": str(files["key"])})
    assert e.option == "listen_tls_key"
    assert "(environment variable IDEMPROXY_LISTEN_TLS_KEY): needs --listen-tls-cert" in str(e)


def test_a_client_ca_without_a_certificate_is_refused(files: dict[str, Path]) -> None:
    e = error({"listen_tls_client_ca": str(files["ca"])})
    assert str(e) == (
        "--listen-tls-client-ca: has no effect without --listen-tls-cert and --listen-tls-key"
    )


@pytest.mark.parametrize("name", ["listen_tls_cert", "listen_tls_key", "listen_tls_client_ca"])
def test_a_missing_file_names_the_option_and_the_file(name: str, files: dict[str, Path]) -> None:
    given = {
        "listen_tls_cert": str(files["cert"]),
        "listen_tls_key": str(files["key"]),
        name: str(files["missing"]),
    }
    e = error(given)
    assert e.option == name
    assert str(e) == (
        f"--{name.replace('_', '-')}: cannot read {files['missing']}: No such file or directory"
    )


def test_an_unreadable_file_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    # A directory cannot be read as a file, even by root (for whom chmod 0 changes nothing).
    e = error({"listen_tls_cert": str(files["cert"]), "listen_tls_key": str(tmp_path)})
    assert str(e) == f"--listen-tls-key: cannot read {tmp_path}: Is a directory"


def test_a_key_that_is_not_the_certificates_is_refused(files: dict[str, Path]) -> None:
    e = error({"listen_tls_cert": str(files["cert"]), "listen_tls_key": str(files["other_key"])})
    assert str(e) == (
        f"--listen-tls-key: {files['other_key']} is not the private key of {files['cert']}"
    )


def test_a_junk_certificate_is_refused(files: dict[str, Path]) -> None:
    e = error({"listen_tls_cert": str(files["junk"]), "listen_tls_key": str(files["key"])})
    assert e.option == "listen_tls_key"
    assert f"cannot load {files['junk']} with {files['key']}" in str(e)


def test_a_client_ca_bundle_without_a_certificate_is_refused(files: dict[str, Path]) -> None:
    e = error(
        {
            "listen_tls_cert": str(files["cert"]),
            "listen_tls_key": str(files["key"]),
            "listen_tls_client_ca": str(files["junk"]),
        }
    )
    assert e.option == "listen_tls_client_ca"
    assert str(files["junk"]) in str(e)


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_bad_reload_interval_is_refused(value: str) -> None:
    e = error({"tls_reload_interval": value})
    assert e.option == "tls_reload_interval"


def test_config_file_keys(tmp_path: Path, files: dict[str, Path]) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        f'upstream = "k:1"\nlisten_tls_cert = "{files["cert"]}"\n'
        f'listen_tls_key = "{files["missing"]}"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config({}, {}, path)
    assert f"config file {path}, key 'listen_tls_key'" in str(caught.value)


# --- the command line ------------------------------------------------------------------


def test_cli_flags_reach_the_config(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ProxyConfig] = []
    monkeypatch.setattr("proxy.server.app.run", seen.append)
    for name in list(os.environ):
        if name.startswith("IDEMPROXY_"):
            monkeypatch.delenv(name)
    result = CliRunner().invoke(
        main,
        [
            "serve", "--upstream", "k:9093",
            "--listen-tls-cert", str(files["cert"]), "--listen-tls-key", str(files["key"]),
            "--listen-tls-client-ca", str(files["ca"]), "--tls-reload-interval", "2",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.listen_tls_key == files["key"]
    assert config.listen_tls_client_ca == files["ca"]
    assert config.tls_reload_interval == 2.0


def test_help_names_the_options() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    for flag in ("--listen-tls-cert", "--listen-tls-key", "--listen-tls-client-ca"):
        assert flag in result.output
    assert "IDEMPROXY_TLS_RELOAD_INTERVAL" in result.output


def test_a_bad_setting_is_one_line_and_exit_2_in_a_real_process(files: dict[str, Path]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEMPROXY_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [
            sys.executable, "-m", "proxy", "serve", "--upstream", "k:9093",
            "--listen-tls-cert", str(files["cert"]), "--listen-tls-key", str(files["other_key"]),
        ],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"idemproxy: error: --listen-tls-key: {files['other_key']} is not the private key of "
        f"{files['cert']}"
    ]
