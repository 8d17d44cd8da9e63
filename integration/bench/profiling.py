"""Sampling profiles of the proxy process with py-spy, and a hot-spot summary of them."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")


class ProfilerUnavailable(RuntimeError):
    pass


def py_spy() -> str:
    exe = shutil.which("py-spy")
    if exe is None:
        raise ProfilerUnavailable("py-spy is not installed (pip install '.[bench]')")
    return exe


def record(pid: int, output: Path, seconds: float, *, raw: bool, rate: int = 250) -> None:
    """``py-spy record`` of ``pid`` for ``seconds``: a flame graph SVG, or collapsed stacks."""
    argv = [
        py_spy(),
        "record",
        "-p",
        str(pid),
        "-o",
        str(output),
        "--duration",
        str(int(seconds)),
        "--rate",
        str(rate),
        "--nonblocking",
    ]
    if raw:
        argv += ["--format", "raw", "--nolineno"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0 or not output.exists():
        raise ProfilerUnavailable(f"py-spy failed ({result.returncode}): {result.stderr[-2000:]}")


def _short(frame: str) -> str:
    """``func (path/to/module.py)`` -> ``module.py:func`` with the path from ``proxy/`` kept."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    # py-spy prints paths relative to the sys.path entry they were found in (proxy/server/app.py,
    # kafka/protocol/api_message.py); absolute ones are shortened to the file name.
    if path.startswith("/"):
        path = path.rsplit("/", 1)[-1]
    return f"{path}:{match['func']}"


@dataclass(frozen=True)
class HotSpot:
    function: str
    self_share: float  # of all samples, on-CPU in this function itself
    total_share: float  # of all samples, this function anywhere on the stack


@dataclass(frozen=True)
class Profile:
    samples: int
    by_self: list[HotSpot]
    by_total: list[HotSpot]
    by_component: list[tuple[str, float]]


_PROXY_COMPONENTS = (
    ("proxy/server/app.py", "socket writes and reads (uvloop transport calls, charged to app.py)"),
    ("proxy/server/metrics.py", "Prometheus metrics"),
    ("proxy/idempotence/produce.py", "produce plan/complete bookkeeping (produce.py)"),
    ("proxy/idempotence/", "idempotence engine and state (engine.py, state.py)"),
    ("proxy/routing/", "session: pairing requests and responses (session.py)"),
    ("proxy/wire/frames.py", "framing: buffer copies (frames.py)"),
    ("proxy/wire/codec.py", "kafka-python decode/encode of Produce (codec.py)"),
    ("proxy/wire/", "header and batch-header peeking (headers.py, batch.py)"),
)


def component(frames: list[str]) -> str:
    """Which part of the proxy a sample's CPU belongs to, from its leaf frame."""
    leaf = frames[-1]
    if leaf.startswith("proxy/"):
        for prefix, name in _PROXY_COMPONENTS:
            if leaf.startswith(prefix):
                return name
        return "other proxy code"
    if leaf.startswith(("kafka/", "<codegen")):
        return "kafka-python decode/encode of Produce (codec.py)"
    if leaf.startswith("prometheus_client/"):
        return "Prometheus metrics"
    if leaf.startswith("uuid.py"):
        return "uuid.UUID str/hash (Produce v13 topic ids)"
    if leaf.startswith("<string>"):
        return "dataclass __init__ (generated)"
    if leaf.startswith(("asyncio/runners.py", "uvloop/")):
        return "event loop itself (uvloop C: epoll, recv, dispatch)"
    return "other"


def summarize(collapsed: Path, top: int = 15) -> Profile:
    """Self and inclusive shares per function from py-spy's collapsed (raw) output."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    components: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        self_counts[frames[-1]] += count
        components[component(frames)] += count
        for name in set(frames):
            total_counts[name] += count
    if not samples:
        return Profile(0, [], [], [])

    def spot(name: str) -> HotSpot:
        return HotSpot(name, self_counts[name] / samples, total_counts[name] / samples)

    by_self = [spot(n) for n, _ in self_counts.most_common(top)]
    # idemproxy's own functions by inclusive time, leaving out the entry frames on every stack.
    proxy_total = [
        (n, c)
        for n, c in total_counts.items()
        if n.startswith("proxy/") and (c < 0.9 * samples or self_counts[n])
    ]
    proxy_total.sort(key=lambda item: -item[1])
    by_total = [spot(n) for n, _ in proxy_total[:top]]
    by_component = [(name, c / samples) for name, c in components.most_common()]
    return Profile(samples, by_self, by_total, by_component)
