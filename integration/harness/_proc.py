"""Child-process plumbing shared by the broker harnesses.

Every process started here is registered so an ``atexit`` hook can SIGKILL it,
and (when started from the main thread) gets ``PR_SET_PDEATHSIG=SIGKILL`` so the
kernel kills it even if the test runner itself is SIGKILLed. Nothing started by
the harness can outlive the test run.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
_OWNER_FILE = ".owner-pid"
_live: set[subprocess.Popen[Any]] = set()
_lock = threading.Lock()


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


_PRCTL = _load_prctl()  # resolved before any fork: the child only makes one foreign call


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork() and exec()
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # parent already gone: do not start orphaned
            os._exit(1)

    return preexec


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running child with stdout+stderr appended to ``log``; tracked for cleanup."""
    # PDEATHSIG fires when the *thread* that forked exits, so only use it from the main thread.
    preexec = (
        _die_with_parent(os.getpid())
        if threading.current_thread() is threading.main_thread()
        else None
    )
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,  # a Ctrl-C in the terminal is handled by our teardown
            preexec_fn=preexec,  # noqa: PLW1509 - one preloaded prctl() call, see above
        )
    with _lock:
        _live.add(proc)
    return proc


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a child to completion (text mode, output captured); SIGKILLed on timeout.

    Raises :class:`subprocess.TimeoutExpired` (with the partial output) on timeout.
    """
    preexec = (
        _die_with_parent(os.getpid())
        if threading.current_thread() is threading.main_thread()
        else None
    )
    with subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=None if env is None else dict(env),
        start_new_session=True,
        preexec_fn=preexec,  # noqa: PLW1509
    ) as proc:
        with _lock:
            _live.add(proc)
        try:
            out, err = proc.communicate(stdin_text, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
        finally:
            with _lock:
                _live.discard(proc)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stop(proc: subprocess.Popen[bytes], *, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (``grace <= 0``: SIGKILL at once)."""
    try:
        if proc.poll() is None:
            if grace > 0:
                proc.terminate()
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
            else:
                proc.kill()
            proc.wait(30)
    finally:
        with _lock:
            _live.discard(proc)


def kill_all() -> None:
    """SIGKILL every child still tracked (registered with ``atexit``)."""
    with _lock:
        procs = list(_live)
        _live.clear()
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


atexit.register(kill_all)


def make_work_dir(prefix: str) -> Path:
    """A new temp dir ``<tmp>/<prefix>XXXX`` tagged with our pid (see :func:`sweep_stale_dirs`)."""
    sweep_stale_dirs()
    path = Path(tempfile.mkdtemp(prefix=prefix))
    (path / _OWNER_FILE).write_text(str(os.getpid()))
    return path


@functools.cache
def sweep_stale_dirs() -> None:
    """Once per process: delete harness temp dirs whose owning process is gone
    (left behind when a test run was SIGKILLed and could not clean up)."""
    if os.environ.get("IDEMPROXY_KEEP_BROKER_DIRS") == "1":
        return
    for path in Path(tempfile.gettempdir()).glob("idemproxy-*"):
        try:
            owner = int((path / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    try:  # a zombie still "exists" until its parent (maybe a lazy init) reaps it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_tree(path: Path) -> None:
    """Delete a temp dir unless ``IDEMPROXY_KEEP_BROKER_DIRS=1`` (for post-mortems)."""
    if os.environ.get("IDEMPROXY_KEEP_BROKER_DIRS") == "1":
        return
    shutil.rmtree(path, ignore_errors=True)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports that were free a moment ago (all bound at once, so they are distinct)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def error_lines(path: Path, limit: int = 5, context: int = 3) -> str:
    """The first ``limit`` ERROR/FATAL lines of a log4j log, each with ``context`` lines after
    (the root cause of a failed start is usually there, not in the shutdown noise at the end)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    picked: list[str] = []
    found = 0
    for i, line in enumerate(lines):
        if "] ERROR " in line or "] FATAL " in line:
            picked.extend(lines[i : i + 1 + context])
            found += 1
            if found >= limit:
                break
    return "\n".join(picked)


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` until it returns non-None; ``TimeoutError`` (with details) otherwise.

    Exceptions raised by ``check`` propagate (use them for "give up now" conditions).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            detail = on_timeout() if on_timeout else ""
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what}\n{detail}".rstrip()
            )
        time.sleep(interval)
