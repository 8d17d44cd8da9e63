"""Process and host counters from /proc, and the small statistics the benchmark reports."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after "(comm)": state is field 3, utime field 14, stime field 15.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and of all its descendants, live or exited.

    For a forking server such as ``socat ... fork``, whose connections are served by children:
    utime+stime+cutime+cstime of the process (cutime/cstime hold its reaped children), plus the
    same four of every live descendant (from a scan of /proc: this kernel may lack
    /proc/<pid>/task/<tid>/children). A child reaped between two reads can be missed or counted
    twice; that is a few ms against the seconds of a run.
    """
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            fields = _stat_fields(current)
        except OSError:
            continue  # exited meanwhile; its times went to its parent's cutime/cstime
        total += sum(int(f) for f in fields[11:15]) / CLK_TCK
        todo.extend(parents.get(current, []))
    return total


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (a scan of /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of ``pid`` in kB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def host_steal() -> float:
    """CPU seconds the hypervisor gave to other guests while this one wanted to run (steal)."""
    return int(Path("/proc/stat").read_text().split(maxsplit=9)[8]) / CLK_TCK


def host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole host since boot, summed over CPUs (/proc/stat)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    ticks = [int(x) for x in first[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest is inside user.
    total = sum(ticks[:8])
    idle = ticks[3] + ticks[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


@dataclass
class CpuWindow:
    """CPU used by a set of processes, and by the host, between :meth:`start` and :meth:`stop`."""

    pids: dict[str, int]
    #: names of ``pids`` measured with their children (:func:`tree_cpu_seconds`)
    trees: frozenset[str] = frozenset()
    before: dict[str, float] | None = None
    host_before: tuple[float, float] = (0.0, 0.0)
    used: dict[str, float] | None = None
    host_busy: float = 0.0
    host_total: float = 0.0
    steal_before: float = 0.0
    #: CPU seconds stolen by the hypervisor during the window (included in host_busy)
    host_steal: float = 0.0

    def _cpu(self, name: str, pid: int) -> float:
        return tree_cpu_seconds(pid) if name in self.trees else cpu_seconds(pid)

    def start(self) -> CpuWindow:
        self.before = {name: self._cpu(name, pid) for name, pid in self.pids.items()}
        self.host_before = host_cpu()
        self.steal_before = host_steal()
        return self

    def stop(self) -> CpuWindow:
        assert self.before is not None
        busy, total = host_cpu()
        self.used = {
            name: self._cpu(name, pid) - self.before[name] for name, pid in self.pids.items()
        }
        self.host_busy = busy - self.host_before[0]
        self.host_total = total - self.host_before[1]
        self.host_steal = host_steal() - self.steal_before
        return self


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, linear interpolation."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class Spread:
    """Median and range of one figure over the rounds of a run."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = [v for v in values if v == v]  # drop NaN
        if not values:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(statistics.median(values), min(values), max(values), len(values))

    def fmt(self, digits: int = 1, unit: str = "") -> str:
        if self.n == 0:
            return "n/a"
        mid = f"{self.median:.{digits}f}{unit}"
        if self.n == 1:
            return mid
        return f"{mid} [{self.low:.{digits}f}-{self.high:.{digits}f}]"
