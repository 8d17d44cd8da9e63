"""The idemproxy command line (proxy.cli), with the server replaced by a fake runner."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from proxy import __version__
from proxy.address import Address
from proxy.cli import main
from proxy.config import ProxyConfig

REPO = Path(__file__).resolve().parent.parent


class FakeRunner:
    def __init__(self) -> None:
        self.configs: list[ProxyConfig] = []
        self.raise_on_run: BaseException | None = None

    def __call__(self, config: ProxyConfig) -> None:
        self.configs.append(config)
        if self.raise_on_run is not None:
            raise self.raise_on_run

    @property
    def config(self) -> ProxyConfig:
        (config,) = self.configs
        return config


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("IDEMPROXY_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    loggers = [logging.getLogger(name) for name in ("idemproxy", "proxy")]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    yield
    root.setLevel(saved_root[0])
    root.handlers[:] = saved_root[1]
    for logger, (level, propagate) in zip(loggers, saved, strict=True):
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> FakeRunner:
    fake = FakeRunner()
    module = types.ModuleType("proxy.server.app")
    module.run = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "proxy.server.app", module)
    return fake


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, prog_name="idemproxy")


def error_line(result: Result) -> str:
    """The one stderr line of a failed invocation."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]


def test_version_prints_name_and_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"idemproxy {__version__}\n"


def test_serve_passes_the_config_to_the_server(runner: FakeRunner) -> None:
    result = invoke(
        "serve",
        "--upstream",
        "k1:9092,[::1]:9093",
        "--listen",
        "0.0.0.0:19092",
        "--advertised-host",
        "proxy.local",
        "--metrics-listen",
        "127.0.0.1:9100",
        "--max-frame-bytes",
        "1048576",
        "--non-idempotent",
        "reject",
    )
    assert result.exit_code == 0, result.output
    config = runner.config
    assert config.upstream == (Address("k1", 9092), Address("::1", 9093))
    assert config.listen == Address("0.0.0.0", 19092)
    assert config.advertised_host == "proxy.local"
    assert config.broker_port_base == 19093
    assert config.metrics_listen == Address("127.0.0.1", 9100)
    assert config.max_frame_bytes == 1048576
    assert config.non_idempotent == "reject"


def test_upstream_option_is_repeatable(runner: FakeRunner) -> None:
    result = invoke("serve", "--upstream", "a:1", "--upstream", "b:2,c:3")
    assert result.exit_code == 0, result.output
    assert [str(a) for a in runner.config.upstream] == ["a:1", "b:2", "c:3"]


def test_env_overrides_config_file(runner: FakeRunner, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('upstream = ["file:1"]\nlisten = "file:2"\ndrain_timeout = 5\n')
    result = invoke("serve", "--config", str(path), env={"IDEMPROXY_LISTEN": "env:2"})
    assert result.exit_code == 0, result.output
    assert runner.config.upstream == (Address("file", 1),)
    assert runner.config.listen == Address("env", 2)
    assert runner.config.drain_timeout == 5.0


def test_cli_overrides_env_and_config_file(runner: FakeRunner, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('upstream = ["file:1"]\nlog_format = "text"\n')
    env = {"IDEMPROXY_UPSTREAM": "env:1", "IDEMPROXY_LOG_FORMAT": "json"}
    result = invoke("serve", "--config", str(path), "--upstream", "cli:1", env=env)
    assert result.exit_code == 0, result.output
    assert runner.config.upstream == (Address("cli", 1),)
    assert runner.config.log_format == "json"


def test_config_file_can_be_named_by_env_var(runner: FakeRunner, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('upstream = "file:1"\nmax_producer_states = 7\n')
    result = invoke("serve", env={"IDEMPROXY_CONFIG": str(path)})
    assert result.exit_code == 0, result.output
    assert runner.config.max_producer_states == 7


def test_config_option_overrides_config_env_var(runner: FakeRunner, tmp_path: Path) -> None:
    chosen = tmp_path / "chosen.toml"
    chosen.write_text('upstream = "chosen:1"\n')
    result = invoke("serve", "--config", str(chosen), env={"IDEMPROXY_CONFIG": "/nonexistent"})
    assert result.exit_code == 0, result.output
    assert runner.config.upstream == (Address("chosen", 1),)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--listen", "foo"], "idemproxy: error: --listen: expected HOST:PORT, got 'foo'"),
        (["--upstream", "kafka"], "idemproxy: error: --upstream: expected HOST:PORT, got 'kafka'"),
        (["--advertised-host", "h:1"], "idemproxy: error: --advertised-host: expected a host"),
        (["--broker-port-base", "0"], "idemproxy: error: --broker-port-base: must be between"),
        (["--metrics-listen", "x"], "idemproxy: error: --metrics-listen: expected HOST:PORT"),
        (["--max-frame-bytes", "-5"], "idemproxy: error: --max-frame-bytes: must be between"),
        (["--max-frame-bytes", "1e6"], "idemproxy: error: --max-frame-bytes: expected an integer"),
        (["--connect-timeout", "soon"], "idemproxy: error: --connect-timeout: expected a number"),
        (["--drain-timeout", "-1"], "idemproxy: error: --drain-timeout: must be a finite"),
        (["--non-idempotent", "drop"], "idemproxy: error: --non-idempotent: expected one of"),
        (["--max-producer-states", "x"], "idemproxy: error: --max-producer-states: expected"),
        (["--producer-state-expiry", "0"], "idemproxy: error: --producer-state-expiry: must be"),
        (["--log-level", "trace"], "idemproxy: error: --log-level: expected one of"),
        (["--log-format", "xml"], "idemproxy: error: --log-format: expected one of"),
        (["--shutdown-timeout", "x"], "idemproxy: error: --shutdown-timeout: expected a number"),
        (["--listen", "0.0.0.0:9092"], "idemproxy: error: --advertised-host (default): required"),
    ],
)
def test_bad_cli_value_exits_2_with_one_line_naming_the_option(
    runner: FakeRunner, args: list[str], expected: str
) -> None:
    if "--upstream" not in args:
        args = ["--upstream", "kafka:9092", *args]
    result = invoke("serve", *args)
    assert result.exit_code == 2
    assert error_line(result).startswith(expected)
    assert runner.configs == []


def test_bad_env_value_exits_2_naming_the_variable(runner: FakeRunner) -> None:
    env = {"IDEMPROXY_UPSTREAM": "kafka:9092", "IDEMPROXY_MAX_FRAME_BYTES": "lots"}
    result = invoke("serve", env=env)
    assert result.exit_code == 2
    assert error_line(result) == (
        "idemproxy: error: --max-frame-bytes (environment variable IDEMPROXY_MAX_FRAME_BYTES): "
        "expected an integer, got 'lots'"
    )
    assert runner.configs == []


def test_bad_config_file_value_exits_2_naming_file_and_key(
    runner: FakeRunner, tmp_path: Path
) -> None:
    path = tmp_path / "p.toml"
    path.write_text('upstream = "kafka:9092"\nconnect_timeout = "later"\n')
    result = invoke("serve", "--config", str(path))
    assert result.exit_code == 2
    assert error_line(result) == (
        f"idemproxy: error: --connect-timeout (config file {path}, key 'connect_timeout'): "
        "expected a number of seconds, got 'later'"
    )


def test_unknown_config_key_exits_2(runner: FakeRunner, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('upstream = "kafka:9092"\nlisten_adress = "x:1"\n')
    result = invoke("serve", "--config", str(path))
    assert result.exit_code == 2
    line = error_line(result)
    assert str(path) in line
    assert "unknown key 'listen_adress'" in line
    assert runner.configs == []


def test_invalid_toml_exits_2(runner: FakeRunner, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("upstream = \n")
    result = invoke("serve", "--config", str(path))
    assert result.exit_code == 2
    assert "invalid TOML" in error_line(result)


def test_missing_config_file_exits_2(runner: FakeRunner, tmp_path: Path) -> None:
    result = invoke("serve", env={"IDEMPROXY_CONFIG": str(tmp_path / "nope.toml")})
    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith("idemproxy: error: --config (environment variable IDEMPROXY_CONFIG):")
    assert "nope.toml" in line


def test_empty_config_path_exits_2(runner: FakeRunner) -> None:
    result = invoke("serve", "--upstream", "k:1", "--config", "")
    assert result.exit_code == 2
    assert error_line(result) == "idemproxy: error: --config: expected a file path, got ''"


def test_missing_upstream_exits_2(runner: FakeRunner) -> None:
    result = invoke("serve")
    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith("idemproxy: error: --upstream (default): required")
    assert "IDEMPROXY_UPSTREAM" in line
    assert runner.configs == []


def test_click_usage_errors_exit_2(runner: FakeRunner) -> None:
    assert invoke("serve", "--upstream").exit_code == 2
    assert invoke("serve", "--no-such-option").exit_code == 2
    assert invoke("no-such-command").exit_code == 2
    assert runner.configs == []


def test_interrupt_exits_130_without_traceback(runner: FakeRunner) -> None:
    runner.raise_on_run = KeyboardInterrupt()
    result = invoke("serve", "--upstream", "k:1")
    assert result.exit_code == 130
    assert "Traceback" not in result.output


def test_logging_is_configured_before_the_server_runs(runner: FakeRunner) -> None:
    def run_and_log(config: ProxyConfig) -> None:
        logging.getLogger("idemproxy.server").debug("started", extra={"port": 1})

    sys.modules["proxy.server.app"].run = run_and_log  # type: ignore[attr-defined]
    result = invoke("serve", "--upstream", "k:1", "--log-level", "debug", "--log-format", "json")
    assert result.exit_code == 0, result.output
    (line,) = result.stderr.splitlines()
    record = json.loads(line)
    assert record["msg"] == "started"
    assert record["port"] == 1


def test_misspelled_env_var_is_logged_as_a_warning(runner: FakeRunner) -> None:
    env = {"IDEMPROXY_UPSTREAM": "k:1", "IDEMPROXY_LOG_LEVL": "debug"}
    result = invoke("serve", "--log-format", "json", env=env)
    assert result.exit_code == 0, result.output
    (line,) = result.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "WARNING"
    assert record["variable"] == "IDEMPROXY_LOG_LEVL"
    assert record["did_you_mean"] == "IDEMPROXY_LOG_LEVEL"


def test_help_lists_every_option_with_its_env_var() -> None:
    result = invoke("serve", "--help")
    assert result.exit_code == 0
    flat = " ".join(result.stdout.split())
    for flag in ["--upstream", "--listen", "--max-frame-bytes", "--config"]:
        assert flag in flat
    assert "IDEMPROXY_MAX_FRAME_BYTES" in flat
    assert "IDEMPROXY_CONFIG" in flat


def test_python_dash_m_proxy_runs_the_cli() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == f"idemproxy {__version__}\n"


def test_config_error_from_a_real_process_is_one_line_and_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEMPROXY_")}
    completed = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--upstream", "k:1", "--listen", "foo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 2
    assert completed.stderr == "idemproxy: error: --listen: expected HOST:PORT, got 'foo'\n"


@pytest.mark.parametrize("option", ["--listen", "--metrics-listen"])
def test_a_port_in_use_exits_2_with_one_line_naming_the_option(option: str) -> None:
    """Before the fix a busy port printed a traceback and exited 1."""
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    busy = f"127.0.0.1:{blocker.getsockname()[1]}"
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    listen = f"127.0.0.1:{free.getsockname()[1]}"
    free.close()
    try:
        args = ["--upstream", "127.0.0.1:1", "--listen", listen, option, busy]
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        blocker.close()
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"idemproxy: error: {option}: cannot listen on {busy}: ")
