"""The fuzz targets in the test suite.

* Every seed of every target replays cleanly (no atheris, a fraction of a second): a
  change that breaks on a real client's frame fails here first.
* Every target runs under atheris for ``IDEMPROXY_FUZZ_SECONDS`` (default 60) on its
  seeds; any finding fails the test with the input that caused it. Marked ``fuzz`` and
  ``slow``: ``pytest -m "not fuzz"`` leaves them out. Longer runs:
  ``python -m tests.fuzz --all --seconds 3600``.
"""

from __future__ import annotations

import importlib
import os
import struct
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fuzz import TARGETS
from tests.fuzz.__main__ import Outcome, fuzz, seed_dir

FUZZ_SECONDS = int(os.environ.get("IDEMPROXY_FUZZ_SECONDS", "60"))
Runs = dict[str, "Future[Outcome]"]


def _seeds(target: str) -> list[Path]:
    return sorted(p for p in seed_dir(target).iterdir() if p.is_file())


@pytest.mark.parametrize("target", list(TARGETS))
def test_every_target_has_seeds_from_real_clients(target: str) -> None:
    assert len(_seeds(target)) >= 5


@pytest.mark.parametrize("target", list(TARGETS))
def test_seeds_replay_without_a_finding(target: str) -> None:
    module = importlib.import_module(f"tests.fuzz.{TARGETS[target]}")
    for path in _seeds(target):
        try:
            module.test_one_input(path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"seed {path.name} of target {target}: {exc!r}") from exc


def test_real_client_frames_decode() -> None:
    """The seeds are real traffic: the proxy must accept all of it. A target swallows
    every ProxyError, so a decoder that wrongly rejects valid frames would pass it."""
    from proxy.wire import codec
    from proxy.wire.produce import ProduceRequestView
    from tests.fuzz._common import api_and_version

    checked = 0
    for path in _seeds("responses"):
        data = path.read_bytes()
        api, version = api_and_version(data[:2])
        codec.decode_response(api, version, data[2:])
        checked += 1
    for path in _seeds("produce"):
        data = path.read_bytes()
        ProduceRequestView(data[1:], data[0])
        checked += 1
    for path in _seeds("frames"):
        body = path.read_bytes()[4:]
        if "-stream-" in path.name or "-produce-v" not in path.name:
            continue
        ProduceRequestView(body, struct.unpack_from(">h", body, 2)[0])
        checked += 1
    assert checked > 100


@pytest.fixture(scope="module")
def fuzz_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Runs]]:
    """Every target's run, two at a time (one per core): each still fuzzes FUZZ_SECONDS on a
    core of its own, and the unit job waits half as long."""
    pytest.importorskip("atheris", reason="atheris has wheels for Linux only")
    work = tmp_path_factory.mktemp("fuzz")
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fuzz")
    runs = {target: pool.submit(fuzz, target, FUZZ_SECONDS, work=work) for target in TARGETS}
    try:
        yield work, runs
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.fuzz
@pytest.mark.slow
@pytest.mark.timeout(len(TARGETS) * FUZZ_SECONDS + 600)
@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzz_target_finds_nothing(target: str, fuzz_runs: tuple[Path, Runs]) -> None:
    work, runs = fuzz_runs
    outcome = runs[target].result()
    if not outcome.ok:
        log = (work / target / "log").read_text(errors="replace")
        inputs = "\n".join(f"{p.name}: {p.read_bytes()[:4096].hex()}" for p in outcome.findings)
        pytest.fail(f"{outcome.line()}\n--- log tail ---\n{log[-6000:]}\n--- inputs ---\n{inputs}")
    assert outcome.executions > 0, outcome.line()
