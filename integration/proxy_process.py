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


class ProxyProcess:
    """An idemproxy process in front of `upstream`, on a block of free loopback ports.

    Port layout: base = bootstrap listener, base+1 = metrics, base+2+N = broker node N.
    """

    def __init__(self, upstream: str, *, max_node_id: int = 8, extra: list[str] | None = None):
        self.upstream = upstream
        self.base = free_port_block(max_node_id + 3)
        self.listen_port = self.base
        self.metrics_port = self.base + 1
        self.broker_port_base = self.base + 2
        self.extra = extra or []
        self.log_path = Path(tempfile.mkstemp(prefix="idemproxy-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

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
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"idemproxy exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.listen_port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"idemproxy did not listen within {timeout}s:\n{self.log()}")

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
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

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

    def __exit__(self, *exc: object) -> None:
        self.stop()
