"""The --upstream-sasl-* options: combinations, the password from a file or the environment
(never on the command line, never shown), bad settings one line and exit 2."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.cli import main
from proxy.config import ConfigError, ProxyConfig, load_config

UPSTREAM = {"upstream": "kafka:9093"}
SECRET = "correct horse battery staple"
PASSWORD_ENV = "IDEMPROXY_UPSTREAM_SASL_PASSWORD"


def load(
    cli: Mapping[str, object],
    env: Mapping[str, str] | None = None,
    file: Path | None = None,
) -> ProxyConfig:
    return load_config({**UPSTREAM, **cli}, dict(env or {}), file)


def error(cli: Mapping[str, object], env: Mapping[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(cli, env)
    assert SECRET not in str(caught.value)
    return caught.value


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(SECRET + "\n")
    return path


def scram(**more: object) -> dict[str, object]:
    return {"upstream_sasl_mechanism": "SCRAM-SHA-512", "upstream_sasl_username": "svc", **more}


def test_sasl_is_off_by_default() -> None:
    config = load({})
    assert config.upstream_sasl_mechanism is None
    assert config.upstream_sasl_username is None
    assert config.upstream_sasl_password is None


def test_the_password_file_is_read_at_start_without_its_trailing_newline(
    password_file: Path,
) -> None:
    config = load(scram(upstream_sasl_password_file=str(password_file)))
    assert config.upstream_sasl_mechanism == "SCRAM-SHA-512"
    assert config.upstream_sasl_username == "svc"
    assert config.upstream_sasl_password == SECRET


def test_a_windows_line_ending_is_removed_too(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_bytes(SECRET.encode() + b"\r\n")
    assert load(scram(upstream_sasl_password_file=str(path))).upstream_sasl_password == SECRET


def test_inner_and_leading_spaces_are_part_of_the_password(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_bytes(b"  two words \n")
    assert load(scram(upstream_sasl_password_file=str(path))).upstream_sasl_password == (
        "  two words "
    )


def test_the_password_from_the_environment() -> None:
    config = load(scram(), {PASSWORD_ENV: SECRET})
    assert config.upstream_sasl_password == SECRET


def test_mechanisms_are_case_insensitive() -> None:
    config = load({**scram(), "upstream_sasl_mechanism": "plain"}, {PASSWORD_ENV: SECRET})
    assert config.upstream_sasl_mechanism == "PLAIN"


def test_an_unknown_mechanism_is_refused() -> None:
    failure = error({**scram(), "upstream_sasl_mechanism": "GSSAPI"}, {PASSWORD_ENV: SECRET})
    assert failure.option == "upstream_sasl_mechanism"
    assert "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512" in failure.reason


def test_the_password_is_never_in_the_configs_repr(password_file: Path) -> None:
    config = load(scram(upstream_sasl_password_file=str(password_file)))
    assert config.upstream_sasl_password == SECRET
    assert SECRET not in repr(config)
    assert SECRET not in str(config)


def test_a_mechanism_needs_a_user() -> None:
    failure = error({"upstream_sasl_mechanism": "PLAIN"}, {PASSWORD_ENV: SECRET})
    assert failure.option == "upstream_sasl_username"
    assert "required with --upstream-sasl-mechanism" in failure.message


def test_a_mechanism_needs_a_password_and_says_where_it_may_come_from() -> None:
    failure = error(scram())
    assert failure.option == "upstream_sasl_password_file"
    assert PASSWORD_ENV in failure.message


def test_the_password_is_given_once(password_file: Path) -> None:
    failure = error(scram(upstream_sasl_password_file=str(password_file)), {PASSWORD_ENV: SECRET})
    assert "give it once" in failure.message
    assert PASSWORD_ENV in failure.message


@pytest.mark.parametrize(
    "detail",
    [
        {"upstream_sasl_username": "svc"},
        {"upstream_sasl_password_file": "/etc/passwd"},
    ],
)
def test_details_without_a_mechanism_are_refused(detail: dict[str, object]) -> None:
    failure = error(detail)
    assert "has no effect without --upstream-sasl-mechanism" in failure.reason


def test_a_password_in_the_environment_without_a_mechanism_is_refused() -> None:
    failure = error({}, {PASSWORD_ENV: SECRET})
    assert failure.source == f"environment variable {PASSWORD_ENV}"


def test_an_unreadable_password_file_is_refused(tmp_path: Path) -> None:
    failure = error(scram(upstream_sasl_password_file=str(tmp_path / "missing")))
    assert failure.option == "upstream_sasl_password_file"
    assert "cannot read" in failure.reason


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text("\n")
    failure = error(scram(upstream_sasl_password_file=str(path)))
    assert "holds no password" in failure.reason


def test_a_password_file_that_is_not_text_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in error(scram(upstream_sasl_password_file=str(path))).reason


def test_a_non_string_password_in_the_config_file_is_refused_without_echoing_it(
    tmp_path: Path,
) -> None:
    toml = tmp_path / "idemproxy.toml"
    toml.write_text(
        'upstream_sasl_mechanism = "PLAIN"\nupstream_sasl_username = "svc"\n'
        "upstream_sasl_password = 8675309\n"
    )
    with pytest.raises(ConfigError) as caught:
        load({}, {}, toml)
    assert caught.value.option == "upstream_sasl_password"
    assert "8675309" not in str(caught.value)


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("IDEMPROXY_"):
            monkeypatch.delenv(name)


def test_cli_flags_and_the_environment_reach_the_config(
    password_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ProxyConfig] = []
    monkeypatch.setattr("proxy.server.app.run", seen.append)
    _clean_env(monkeypatch)
    result = CliRunner().invoke(
        main,
        [
            "serve", "--upstream", "k:9093",
            "--upstream-sasl-mechanism", "SCRAM-SHA-256", "--upstream-sasl-username", "svc",
            "--upstream-sasl-password-file", str(password_file),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert (config.upstream_sasl_mechanism, config.upstream_sasl_password) == (
        "SCRAM-SHA-256",
        SECRET,
    )


def test_there_is_no_password_flag_on_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    result = CliRunner().invoke(
        main,
        ["serve", "--upstream", "k:9093", "--upstream-sasl-password", SECRET],
        prog_name="idemproxy",
    )
    assert result.exit_code == 2
    assert "No such option '--upstream-sasl-password'" in result.stderr
    assert SECRET not in result.stderr


def test_cli_missing_password_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    result = CliRunner().invoke(
        main,
        ["serve", "--upstream", "k:9093", "--upstream-sasl-mechanism", "PLAIN",
         "--upstream-sasl-username", "svc"],
        prog_name="idemproxy",
    )  # fmt: skip
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("idemproxy: error: --upstream-sasl-password-file (default): required")


def test_help_names_the_sasl_options_and_the_password_variable() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    flat = " ".join(result.stdout.split())
    for text in [
        "--upstream-sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512",
        "--upstream-sasl-username USER",
        "--upstream-sasl-password-file FILE",
        PASSWORD_ENV,
    ]:
        assert text in flat
