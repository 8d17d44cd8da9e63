"""deploy/docker/Dockerfile, statically (no Docker engine here), plus its HEALTHCHECK
command run against a real proxy process."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator

import pytest
from dockerfile_parse import DockerfileParser

from integration.proxy_process import ProxyProcess, free_port_block
from tests.deploy.artifacts import DOCKERFILE, REPO

PARSER = DockerfileParser(str(DOCKERFILE))
INSTRUCTIONS = [(s["instruction"], s["value"]) for s in PARSER.structure]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _all(instruction: str) -> list[str]:
    return [value for name, value in INSTRUCTIONS if name == instruction]


def _one(instruction: str) -> str:
    (value,) = _all(instruction)
    return value


def _healthcheck_argv() -> list[str]:
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", _one("HEALTHCHECK"), re.S)
    assert match, "HEALTHCHECK CMD in exec (JSON) form"
    argv: list[str] = json.loads(match.group(1))
    return argv


def test_runs_on_python_slim_built_by_the_same_python() -> None:
    """A full-image build stage (with a C compiler) makes the wheel; the runtime stage is
    slim, of the same Python minor, so the compiled wheel fits it."""
    assert PARSER.baseimage == "python:3.11-slim"
    assert _all("FROM") == ["python:3.11 AS build", "python:3.11-slim"]


def test_builds_the_compiled_wheel_by_default() -> None:
    assert "IDEMPROXY_MYPYC=1" in _all("ARG")
    (build,) = [r for r in _all("RUN") if "pip wheel" in r]
    assert "IDEMPROXY_MYPYC=$IDEMPROXY_MYPYC pip wheel --no-build-isolation" in build
    assert "mypy" in build
    assert "setuptools>=77" in build  # reads pyproject's SPDX license string


def test_installs_the_wheel_with_the_fast_extra() -> None:
    (run,) = [r for r in _all("RUN") if "pip install" in r and "rm -rf /wheels" in r]
    assert re.search(r'pip install "\$\(ls /wheels/idemproxy-\*\.whl\)\[fast\]"', run), run
    assert "rm -rf /wheels" in run


def test_copies_what_pip_install_needs() -> None:
    """The files the build reads (pyproject's readme, setup.py and packages) are all copied."""
    copied = {
        src
        for value in _all("COPY")
        if not value.startswith("--from")
        for src in value.split()[:-1]
    }
    project = PYPROJECT["project"]
    assert "pyproject.toml" in copied
    assert "setup.py" in copied
    assert project["readme"] in copied
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= copied
    for src in copied:
        assert (REPO / src).exists(), src


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.split("/")[0], pattern):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_the_sources() -> None:
    ignore = DOCKERFILE.with_name("Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "setup.py", "proxy", "proxy/cli.py"):
        assert not _dockerignore_excludes(needed, patterns), needed
    for unneeded in (".git", "integration", "tests", ".hypothesis", "deploy"):
        assert _dockerignore_excludes(unneeded, patterns), unneeded


def test_runs_as_a_numeric_non_root_user() -> None:
    users = _all("USER")
    assert users, "USER instruction"
    names = [name for name, _ in INSTRUCTIONS]
    assert names.index("USER") < names.index("ENTRYPOINT")
    user = users[-1].split(":")[0]
    assert user.isdigit(), "numeric, so Kubernetes' runAsNonRoot can verify it"
    assert int(user) != 0
    (run,) = [r for r in _all("RUN") if "useradd" in r]
    assert f"--uid {user}" in run


def test_entrypoint_is_the_console_script() -> None:
    entrypoint = json.loads(_one("ENTRYPOINT"))
    assert entrypoint == ["idemproxy", "serve"]
    assert PYPROJECT["project"]["scripts"]["idemproxy"] == "proxy.cli:main"
    from proxy.cli import main

    assert "serve" in main.commands  # type: ignore[attr-defined]


def test_exposes_the_kafka_and_management_ports() -> None:
    exposed = {int(p.split("/")[0]) for value in _all("EXPOSE") for p in value.split()}
    metrics_port = int(PARSER.envs["IDEMPROXY_METRICS_LISTEN"].rsplit(":", 1)[1])
    assert exposed == {9092, metrics_port}


def test_healthcheck_probes_livez_with_the_standard_library() -> None:
    value = _one("HEALTHCHECK")
    assert "curl" not in value, "python:3.11-slim has no curl"
    assert "wget" not in value, "python:3.11-slim has no wget"
    argv = _healthcheck_argv()
    assert argv[:2] == ["python", "-c"]
    assert "urllib.request" in argv[2]
    assert "/livez" in argv[2]
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in value


@pytest.fixture(scope="module")
def proxy() -> Iterator[ProxyProcess]:
    """A real proxy; its upstream is a closed port (/livez does not need a broker)."""
    dead = free_port_block(1)
    with ProxyProcess(f"127.0.0.1:{dead}", extra=["--connect-timeout", "1"]) as running:
        yield running


def _run_healthcheck(metrics_listen: str) -> int:
    argv = _healthcheck_argv()
    env = {**os.environ, "IDEMPROXY_METRICS_LISTEN": metrics_listen}
    result = subprocess.run(
        [sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30, check=False
    )
    return result.returncode


def test_healthcheck_passes_against_a_running_proxy(proxy: ProxyProcess) -> None:
    assert _run_healthcheck(f"0.0.0.0:{proxy.metrics_port}") == 0


def test_healthcheck_fails_when_nothing_answers() -> None:
    assert _run_healthcheck(f"0.0.0.0:{free_port_block(1)}") != 0
