"""Runs idemproxy as users do: `python -m proxy serve ...` in its own process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Set to 1 to keep every proxy's log file in the temp folder (kept anyway when a test failed).
KEEP_LOGS_ENV = "IDEMPROXY_KEEP_LOGS"
#: Tests failed so far in this process (counted by integration/conftest.py).
_failures = 0


def note_failure() -> None:
    """A test failed: proxies running now keep their log files when they stop."""
    global _failures
    _failures += 1


def free_port_block(size: int, start: int = 20000, stop: int = 60000) -> int:
    """The first port of `size` consecutive ports free on 127.0.0.1 (checked by binding)."""
    base = start + (os.getpid() * 97) % (stop - start - size)
    for _ in range(200):
        socks = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return base
        except OSError:
            base = start + (base - start + size * 7 + 13) % (stop - start - size)
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports found")


class _PortsTaken(Exception):
    """The proxy exited because a port of its block was taken after the block was chosen."""


class ProxyProcess:
    """An idemproxy process in front of `upstream`, on a block of free loopback ports.

    Port layout: base = bootstrap listener, base+1 = metrics, base+2+N = broker node N.

    Its log goes to a temp file, deleted by :meth:`stop` (:meth:`log` still answers after)
    unless the proxy failed to start, a test failed while it ran, or ``IDEMPROXY_KEEP_LOGS=1``.
    """

    def __init__(
        self,
        upstream: str,
        *,
        max_node_id: int = 8,
        extra: list[str] | None = None,
        cwd: Path | None = None,
    ):
        """cwd: the checkout whose `proxy` package runs (`python -m proxy` imports from its
        working directory first); the bench passes the compiled build's copy."""
        self.upstream = upstream
        self.cwd = cwd or REPO
        self.base = free_port_block(max_node_id + 3)
        self.listen_port = self.base
        self.metrics_port = self.base + 1
        self.broker_port_base = self.base + 2
        self.extra = extra or []
        fd, name = tempfile.mkstemp(prefix="idemproxy-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self._failures_at_start = _failures
        self._failed = False
        self._log_reported = False
        self._saved_log: str | None = None  # the log's text once its file is deleted
        self.proc: subprocess.Popen[bytes] | None = None
        self._max_node_id = max_node_id
        self._started_once = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def broker_port(self, node_id: int) -> int:
        return self.broker_port_base + node_id

    def start(self, timeout: float = 60.0) -> ProxyProcess:
        """Run the proxy and wait until it listens. A first start whose ports another process
        took since they were found free moves to a fresh block (a restart keeps its ports)."""
        for _ in range(3):
            try:
                return self._start(timeout)
            except _PortsTaken:
                if self._started_once:
                    raise RuntimeError(f"idemproxy's ports are taken:\n{self.log()}") from None
                self._failed = False
                self._move_ports()
        raise RuntimeError(f"idemproxy found no free ports in 3 tries:\n{self.log()}")

    def _move_ports(self) -> None:
        self.base = free_port_block(self._max_node_id + 3)
        self.listen_port = self.base
        self.metrics_port = self.base + 1
        self.broker_port_base = self.base + 2

    def _start(self, timeout: float) -> ProxyProcess:
        # 60 s, not less: on the shared 2-core machine under load (load average 11 seen)
        # a fresh interpreter took 21 s from exec to listening.
        cmd = [
            sys.executable, "-m", "proxy", "serve",
            "--upstream", self.upstream,
            "--listen", self.bootstrap,
            "--broker-port-base", str(self.broker_port_base),
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            "--log-level", "debug",
            *self.extra,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        # Its own "listening" line (text or JSON), not only a connection: another process may
        # hold the port.
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._failed = True
                if "address already in use" in self.log():
                    raise _PortsTaken
                raise RuntimeError(
                    f"idemproxy exited with {self.proc.returncode} (log kept in {self.log_path}):"
                    f"\n{self.log()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.listen_port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            if any(
                "listening" in line and self.bootstrap in line for line in self.log().splitlines()
            ):
                self._started_once = True
                return self
            time.sleep(0.05)
        self._failed = True
        raise RuntimeError(
            f"idemproxy did not listen within {timeout}s (log kept in {self.log_path}):"
            f"\n{self.log()}"
        )

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, value = line.rsplit(" ", 1)
            metric_name = series.split("{", 1)[0]
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    def open_fds(self) -> int:
        """File descriptors the proxy process holds (/proc/PID/fd)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        """Resident memory of the proxy process in KiB (VmRSS of /proc/PID/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS in /proc/{self.pid}/status")

    def log(self) -> str:
        if self._saved_log is not None:
            return self._saved_log[-20000:]
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        self._remove_log()

    def _remove_log(self) -> None:
        """Delete the log file, its text kept for :meth:`log`, unless it is wanted later."""
        if self._saved_log is not None:
            return
        if (
            self._failed
            or _failures > self._failures_at_start
            or os.environ.get(KEEP_LOGS_ENV) == "1"
        ):
            if not self._log_reported and self.log_path.exists():
                print(f"idemproxy log kept: {self.log_path}", file=sys.stderr)
                self._log_reported = True
            return
        try:
            self._saved_log = self.log_path.read_text(errors="replace")
        except OSError:
            self._saved_log = ""
        self.log_path.unlink(missing_ok=True)

    def kill(self) -> int:
        """SIGKILL the proxy (a crash: no shutdown, no flush) and reap it; returns its exit
        status. `start()` afterwards runs a fresh process on the same ports."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(timeout=15)
        self.proc = None
        return code

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self._failed = True
        self.stop()
