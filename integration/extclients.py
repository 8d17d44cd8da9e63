"""Producers in other languages for the integration tests: kafkajs (Node.js) and kafka-go (Go).

Both give every try of a batch a new CreateTime, unlike the Python and Java
clients; see integration/node/produce.js and integration/go/main.go. Each is
prepared here on first use, without make:

* kafkajs: ``npm ci`` from ``integration/node/package-lock.json`` into
  ``integration/node/node_modules`` (gitignored), again only when the lockfile changes.
* kafka-go: ``go build`` of ``integration/go`` (go.mod + go.sum pin the module) into
  ``~/.cache/idemproxy/go/kafkago-produce-<hash of the sources>``.

A missing ``node``/``npm`` or ``go`` toolchain raises ``ToolchainMissing`` (tests skip
on it); a failing install or build is an error, never a skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"
GO_DIR = HERE / "go"
_lock = threading.Lock()


class ToolchainMissing(RuntimeError):
    """The language toolchain a client needs is not installed."""


@dataclass
class ProduceResult:
    client: str
    sent: int
    acked: int
    errors: list[str] = field(default_factory=list)
    stderr: str = ""


def _cache_root() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "idemproxy"


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def kafkajs_ready() -> Path:
    """``npm ci`` once per lockfile; returns the script to run with node."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise ToolchainMissing("node and npm are needed for the kafkajs producer")
    lock = NODE_DIR / "package-lock.json"
    stamp = NODE_DIR / "node_modules" / ".idemproxy-lock-digest"
    want = _digest(NODE_DIR / "package.json", lock)
    with _lock:
        if not (stamp.exists() and stamp.read_text() == want):
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR,
                check=True,
                timeout=300,
            )
            stamp.write_text(want)
    return NODE_DIR / "produce.js"


def kafka_go_ready() -> Path:
    """``go build`` once per source digest; returns the binary."""
    go = shutil.which("go")
    if go is None:
        raise ToolchainMissing("go is needed for the segmentio/kafka-go producer")
    want = _digest(GO_DIR / "go.mod", GO_DIR / "go.sum", GO_DIR / "main.go")
    binary = _cache_root() / "go" / f"kafkago-produce-{want}"
    with _lock:
        if not binary.exists():
            binary.parent.mkdir(parents=True, exist_ok=True)
            tmp = binary.with_suffix(".tmp")
            subprocess.run(
                [go, "build", "-mod=readonly", "-o", str(tmp), "."],
                cwd=GO_DIR,
                check=True,
                timeout=600,
            )
            tmp.replace(binary)
    return binary


def _run(cmd: list[str], tag: str, timeout: float) -> ProduceResult:
    env = {**os.environ, "IDEMPROXY_TAG": tag}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{cmd[0]} exited {proc.returncode}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
        )
    out = json.loads(lines[-1])
    return ProduceResult(out["client"], out["sent"], out["acked"], out["errors"], proc.stderr)


def kafkajs_produce(
    bootstrap: str,
    topic: str,
    n: int,
    codec: str = "none",
    *,
    tag: str,
    keyed: bool = False,
    timeout: float = 120,
) -> ProduceResult:
    """kafkajs, ``idempotent: false``, retries on; values ``<tag>-<i:06d>``.

    Keyless by default (round-robin: a retried send() may move to another partition);
    ``keyed`` gives message i the key ``k<i mod 7>``, hashed to one partition on every try.
    """
    script = kafkajs_ready()
    node = shutil.which("node")
    assert node is not None
    cmd = [node, str(script), bootstrap, topic, str(n), codec]
    return _run([*cmd, "--keyed"] if keyed else cmd, tag, timeout)


def kafka_go_produce(
    bootstrap: str, topic: str, n: int, codec: str = "none", *, tag: str, timeout: float = 120
) -> ProduceResult:
    """segmentio/kafka-go Writer (no idempotence exists), retries on; values ``<tag>-<i:06d>``."""
    binary = kafka_go_ready()
    return _run([str(binary), bootstrap, topic, str(n), codec], tag, timeout)
