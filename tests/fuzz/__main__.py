"""Run the fuzz targets: ``python -m tests.fuzz TARGET... --seconds N`` or ``--all``.

Each target runs under atheris in its own process for N seconds (libFuzzer's
``-max_total_time``), one after the other, on its seed corpus (``corpus/<target>/``,
read only) plus a working corpus in ``.fuzz/<target>/corpus`` that keeps what the run
discovers (reused by the next run, never committed). A finding stops that target:
libFuzzer writes the input to ``.fuzz/<target>/crash-*`` (or ``timeout-*``, ``oom-*``)
and the runner exits 1 after the remaining targets. Replay a file without atheris:
``python -m tests.fuzz TARGET --reproduce FILE...``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz import TARGETS
from tests.fuzz._atheris import KAFKA_ENV

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEEDS = HERE / "corpus"
WORK = ROOT / ".fuzz"

#: A single input taking longer than this is a finding (libFuzzer ``-timeout``).
INPUT_TIMEOUT_S = 10
#: libFuzzer's resident-memory ceiling for the whole process.
RSS_LIMIT_MB = 2048

_STAT = re.compile(r"^stat::(\w+):\s*(\d+)", re.M)


@dataclass
class Outcome:
    target: str
    seconds: float
    returncode: int
    executions: int
    exec_per_sec: int
    new_units: int
    peak_rss_mb: int
    findings: list[Path]

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.findings

    def line(self) -> str:
        verdict = "ok" if self.ok else f"FINDING (exit {self.returncode})"
        line = (
            f"{self.target}: {self.executions} executions in {self.seconds:.0f} s, "
            f"{self.exec_per_sec} exec/s, {self.new_units} new corpus units, "
            f"peak RSS {self.peak_rss_mb} MB: {verdict}"
        )
        return line + "".join(f"\n  {path}" for path in self.findings)


def seed_dir(target: str) -> Path:
    return SEEDS / target


def fuzz(
    target: str,
    seconds: int,
    *,
    work: Path = WORK,
    extra: list[str] | None = None,
    instrument_kafka: bool = False,
) -> Outcome:
    """Run one target under atheris for ``seconds``; its output goes to work/<target>/log."""
    out = work / target
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in out.glob("*-*") if p.is_file()}
    seeds = [str(seed_dir(target))] if seed_dir(target).is_dir() else []
    argv = [
        sys.executable, "-m", "tests.fuzz._atheris", target,
        f"-max_total_time={seconds}",
        f"-timeout={INPUT_TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={out}/",
        "-print_final_stats=1",
        *(extra or []),
        str(corpus), *seeds,
    ]  # fmt: skip
    started = time.monotonic()
    log = out / "log"
    with log.open("w") as sink:
        env = dict(os.environ)
        if instrument_kafka:
            env[KAFKA_ENV] = "1"
        proc = subprocess.run(
            argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=seconds + 600
        )
    elapsed = time.monotonic() - started
    text = log.read_text(errors="replace")
    stats = {k: int(v) for k, v in _STAT.findall(text)}
    findings = sorted(
        p for p in out.glob("*-*") if p.is_file() and p.name not in before and p.name != "log"
    )
    return Outcome(
        target,
        elapsed,
        proc.returncode,
        stats.get("number_of_executed_units", 0),
        stats.get("average_exec_per_sec", 0),
        stats.get("new_units_added", 0),
        stats.get("peak_rss_mb", 0),
        findings,
    )


def reproduce(target: str, files: list[Path]) -> int:
    """Replay inputs through a target without atheris; print what each raises."""
    module = importlib.import_module(f"tests.fuzz.{TARGETS[target]}")
    failed = 0
    for path in files:
        try:
            module.test_one_input(path.read_bytes())
        except Exception:
            failed += 1
            print(f"{path}: FINDING")
            traceback.print_exc()
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=", ".join(TARGETS))
    parser.add_argument("--all", action="store_true", help="every target, one after the other")
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--work", type=Path, default=WORK, help=f"default {WORK}")
    parser.add_argument(
        "--reproduce", type=Path, nargs="+", metavar="FILE", help="replay through one TARGET"
    )
    parser.add_argument(
        "--instrument-kafka",
        action="store_true",
        help="also instrument kafka-python (slower start, more guidance in its decoders)",
    )
    args = parser.parse_args(argv)
    targets = list(TARGETS) if args.all else list(args.targets)
    if not targets:
        parser.error("name a TARGET or use --all")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target {unknown[0]!r}: choose from {', '.join(TARGETS)}")
    if args.reproduce:
        if len(targets) != 1:
            parser.error("--reproduce takes exactly one TARGET")
        return reproduce(targets[0], args.reproduce)
    status = 0
    for target in targets:
        outcome = fuzz(target, args.seconds, work=args.work, instrument_kafka=args.instrument_kafka)
        print(outcome.line(), flush=True)
        if not outcome.ok:
            status = 1
            print(f"  log: {args.work / target / 'log'}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
