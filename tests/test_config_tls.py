"""The --upstream-* TLS options: parsing, combinations, files checked at start (exit 2)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner

from integration.tlscerts import CA
from proxy.cli import main
from proxy.config import ConfigError, ProxyConfig, load_config

UPSTREAM = {"upstream": "kafka:9093"}


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


@pytest.fixture
def files(tmp_path: Path, ca: CA) -> dict[str, Path]:
    cert, key = ca.issue("proxy", client=True).write(tmp_path, "client")
    other_cert, other_key = ca.issue("other", client=True).write(tmp_path, "other")
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


def test_tls_is_off_by_default() -> None:
    config = load({})
    assert config.upstream_tls is False
    assert config.upstream_ca is None
    assert config.upstream_cert is None
    assert config.upstream_key is None
    assert config.upstream_server_name is None


def test_tls_with_the_system_trust_store_needs_no_file() -> None:
    assert load({"upstream_tls": "true"}).upstream_tls is True


def test_every_tls_setting_is_taken(files: dict[str, Path]) -> None:
    config = load(
        {
            "upstream_tls": "true",
            "upstream_ca": str(files["ca"]),
            "upstream_cert": str(files["cert"]),
            "upstream_key": str(files["key"]),
            "upstream_server_name": "kafka.internal",
        }
    )
    assert (config.upstream_ca, config.upstream_cert, config.upstream_key) == (
        files["ca"],
        files["cert"],
        files["key"],
    )
    assert config.upstream_server_name == "kafka.internal"


def test_tls_from_the_environment(files: dict[str, Path]) -> None:
    env = {"IDEMPROXY_UPSTREAM_TLS": "yes", "IDEMPROXY_UPSTREAM_CA": str(files["ca"])}
    config = load({}, env)
    assert config.upstream_tls is True
    assert config.upstream_ca == files["ca"]


@pytest.mark.parametrize("value", ["maybe", "2", ""])
def test_bad_boolean_names_the_option(value: str) -> None:
    e = error({}, {"IDEMPROXY_UPSTREAM_TLS": value})
    assert e.option == "upstream_tls"
    assert "environment variable IDEMPROXY_UPSTREAM_TLS" in str(e)


@pytest.mark.parametrize("name", ["upstream_ca", "upstream_cert", "upstream_key"])
def test_a_missing_file_names_the_option_and_the_file(name: str, files: dict[str, Path]) -> None:
    e = error({"upstream_tls": "true", name: str(files["missing"])})
    assert e.option == name
    assert str(e) == (
        f"--{name.replace('_', '-')}: cannot read {files['missing']}: No such file or directory"
    )


@pytest.mark.parametrize(
    ("given", "flag"),
    [("upstream_ca", "--upstream-ca"), ("upstream_server_name", "--upstream-server-name")],
)
def test_tls_details_without_upstream_tls_are_refused(
    given: str, flag: str, files: dict[str, Path]
) -> None:
    e = error({given: str(files["ca"]) if given == "upstream_ca" else "kafka.internal"})
    assert str(e) == f"{flag}: has no effect without --upstream-tls"


def test_a_certificate_without_its_key_is_refused(files: dict[str, Path]) -> None:
    e = error({"upstream_tls": "true", "upstream_cert": str(files["cert"])})
    assert e.option == "upstream_cert"
    assert "needs --upstream-key too" in str(e)
    e = error({"upstream_tls": "true", "upstream_key": str(files["key"])})
    assert e.option == "upstream_key"
    assert "needs --upstream-cert too" in str(e)


def test_a_ca_file_without_certificates_is_refused(files: dict[str, Path]) -> None:
    e = error({"upstream_tls": "true", "upstream_ca": str(files["junk"])})
    assert e.option == "upstream_ca"
    assert str(files["junk"]) in str(e)


def test_a_key_that_is_not_the_certificates_is_refused(files: dict[str, Path]) -> None:
    e = error(
        {
            "upstream_tls": "true",
            "upstream_cert": str(files["cert"]),
            "upstream_key": str(files["other_key"]),
        }
    )
    assert str(e) == (
        f"--upstream-key: {files['other_key']} is not the private key of {files['cert']}"
    )


def test_a_junk_certificate_is_refused(files: dict[str, Path]) -> None:
    e = error(
        {
            "upstream_tls": "true",
            "upstream_cert": str(files["junk"]),
            "upstream_key": str(files["key"]),
        }
    )
    assert e.option == "upstream_key"
    assert str(files["junk"]) in str(e)


@pytest.mark.parametrize("name", ["", "kafka internal", "a/b"])
def test_a_bad_server_name_is_refused(name: str) -> None:
    e = error({"upstream_tls": "true", "upstream_server_name": name})
    assert e.option == "upstream_server_name"


def test_config_file_key_is_named(tmp_path: Path, files: dict[str, Path]) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f'upstream = "k:1"\nupstream_tls = true\nupstream_ca = "{files["missing"]}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config({}, {}, path)
    assert f"config file {path}, key 'upstream_ca'" in str(caught.value)


# --- the command line ------------------------------------------------------------------


def test_cli_flag_and_files_reach_the_config(
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
            "serve", "--upstream", "k:9093", "--upstream-tls",
            "--upstream-ca", str(files["ca"]),
            "--upstream-cert", str(files["cert"]), "--upstream-key", str(files["key"]),
            "--upstream-server-name", "kafka.internal",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.upstream_tls is True
    assert config.upstream_key == files["key"]
    assert config.upstream_server_name == "kafka.internal"


def test_cli_bad_tls_setting_is_one_line_and_exit_2(files: dict[str, Path]) -> None:
    result = CliRunner().invoke(
        main,
        ["serve", "--upstream", "k:9093", "--upstream-tls", "--upstream-cert", str(files["cert"])],
        prog_name="idemproxy",
    )
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "idemproxy: error: --upstream-cert: needs --upstream-key too (a client certificate "
        "needs both a certificate and its key)"
    ]
