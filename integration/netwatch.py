"""Who is connected to the brokers: read from /proc, so tests can assert clients stay on the proxy.

Linux only. Maps socket inodes in /proc/<pid>/fd to the TCP connections in
/proc/net/tcp{,6}, and reports every process holding a connection to a broker port.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

_ESTABLISHED = "01"


@dataclass(frozen=True)
class Connection:
    pid: int
    local_port: int
    remote_port: int


def _tcp_rows() -> dict[int, tuple[int, int]]:
    """socket inode -> (local port, remote port) for established TCP connections."""
    rows: dict[int, tuple[int, int]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != _ESTABLISHED:
                continue
            local_port = int(parts[1].rsplit(":", 1)[1], 16)
            remote_port = int(parts[2].rsplit(":", 1)[1], 16)
            rows[int(parts[9])] = (local_port, remote_port)
    return rows


def _socket_inodes(pid: int) -> list[int]:
    inodes = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.append(int(target[8:-1]))
    return inodes


def connections_to(ports: set[int], exclude_pids: set[int]) -> list[Connection]:
    """Connections from any process (except exclude_pids) to one of ports."""
    rows = _tcp_rows()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in exclude_pids:
            continue
        for inode in _socket_inodes(pid):
            row = rows.get(inode)
            if row is not None and row[1] in ports:
                found.append(Connection(pid, row[0], row[1]))
    return found


def broker_pids() -> set[int]:
    """Processes that are brokers (Kafka JVMs, Tansu): they may talk to each other's ports."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" in cmdline or any(arg.endswith(b"/tansu") for arg in cmdline):
            pids.add(int(entry))
    return pids


class DirectConnectionWatch:
    """Samples, in a thread, for connections to broker ports from processes other than allowed ones.

    Use as a context manager around the client phase of a test; `violations` lists
    every connection seen. Sampling (every 20 ms) can miss a very short connection;
    tests also check what the clients were told (proxy addresses only).
    """

    def __init__(self, broker_ports: set[int], allowed_pids: set[int], interval: float = 0.02):
        self.broker_ports = broker_ports
        self.allowed_pids = allowed_pids
        self.interval = interval
        self.violations: set[Connection] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netwatch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.violations.update(connections_to(self.broker_ports, self.allowed_pids))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> DirectConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
