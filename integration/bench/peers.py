"""Kroxylicious, a peer Kafka proxy, as the benchmark's third column (passthrough, no filters).

``io.kroxylicious:kroxylicious-app`` (the runnable application) is not on the Maven Central
mirror this project fetches from, while its proxy engine ``kroxylicious-runtime`` is; so the
runtime jars are fetched with Maven (``kroxylicious/pom.xml``, cached like the Kafka jars in
``~/.cache/idemproxy/kroxylicious-<version>/libs``) and started by ``KroxyliciousLauncher.java``,
which does what the application's ``main()`` does: parse the YAML config, build ``KafkaProxy``
with the default features, start it and block.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from integration.harness import _proc
from integration.harness.java_tools import LOG4J_TOOLS
from integration.harness.kafka_dist import java_executable
from integration.proxy_process import free_port_block

HERE = Path(__file__).resolve().parent / "kroxylicious"
POM = HERE / "pom.xml"
LAUNCHER = HERE / "KroxyliciousLauncher.java"
_STAMP = ".idemproxy-pom-sha256"
JVM_OPTS: tuple[str, ...] = (
    "-Xms256m",
    "-Xmx1g",
    "-XX:-UsePerfData",
    "-Djava.net.preferIPv4Stack=true",
    f"-Dlog4j2.configurationFile={LOG4J_TOOLS}",
)


class PeerUnavailable(RuntimeError):
    """The peer proxy cannot be fetched or started here; the message says why."""


def version() -> str:
    match = re.search(r"<kroxylicious\.version>([^<]+)<", POM.read_text())
    assert match is not None
    return match.group(1)


def libs_dir() -> Path:
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_root / "idemproxy" / f"kroxylicious-{version()}" / "libs"


def ensure_libs(timeout: float = 600.0) -> Path:
    """The Kroxylicious runtime jars, fetched once with Maven."""
    libs = libs_dir()
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    stamp = libs / _STAMP
    if stamp.is_file() and stamp.read_text() == digest:
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PeerUnavailable("Maven ('mvn') is not on PATH to fetch Kroxylicious")
    scratch = libs.parent / f".libs.fetch-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    argv = [
        mvn,
        "-q",
        "-B",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={scratch}",
        "-DincludeScope=runtime",
    ]
    try:
        result = _proc.run(argv, cwd=HERE, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise PeerUnavailable(f"fetching Kroxylicious timed out after {timeout:.0f}s") from exc
    if result.returncode != 0 or not any(scratch.glob("kroxylicious-runtime-*.jar")):
        shutil.rmtree(scratch, ignore_errors=True)
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise PeerUnavailable(f"fetching Kroxylicious failed (exit {result.returncode}):\n{tail}")
    (scratch / _STAMP).write_text(digest)
    shutil.rmtree(libs, ignore_errors=True)
    libs.parent.mkdir(parents=True, exist_ok=True)
    scratch.rename(libs)
    return libs


def app_on_central(timeout: float = 120.0, *, cached: bool = False) -> str:
    """What ``mvn dependency:get`` says of io.kroxylicious:kroxylicious-app (for the report).

    The answer is kept beside the runtime jars; ``cached`` (the quick mode) reuses it instead
    of starting Maven again, which costs a few CPU seconds.
    """
    memo = libs_dir().parent / "app-on-central.txt"
    if cached and memo.is_file():
        return memo.read_text().strip() + " (checked earlier)"
    answer = _app_on_central(timeout)
    if "timed out" not in answer and "not on PATH" not in answer:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(answer + "\n")
    return answer


def _app_on_central(timeout: float) -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        return "mvn not on PATH"
    artifact = f"io.kroxylicious:kroxylicious-app:{version()}"
    try:
        result = _proc.run(
            [mvn, "-q", "-B", "dependency:get", f"-Dartifact={artifact}", "-Dtransitive=false"],
            cwd=HERE,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"mvn dependency:get {artifact}: timed out"
    if result.returncode == 0:
        return f"mvn dependency:get {artifact}: found"
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    match = re.search(r"(Could not find artifact \S+|\S+ was not found in \S+)", output)
    reason = match.group(1) if match else f"exit {result.returncode}"
    return f"`mvn dependency:get -Dartifact={artifact}` fails: {reason}"


class _PeerProcess:
    """A peer's process, its scratch folder and its log (the tail kept for reports)."""

    #: Seconds the process gets to exit on SIGTERM before SIGKILL.
    STOP_GRACE = 5.0

    def __init__(self, name: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"idemproxy-bench-{name}-"))
        self.log_path = self.dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            _proc.stop(self.proc, grace=self.STOP_GRACE)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class Kroxylicious(_PeerProcess):
    """A Kroxylicious passthrough proxy in front of ``upstream`` (one virtual cluster)."""

    STOP_GRACE = 10.0

    def __init__(self, upstream: str) -> None:
        super().__init__("kroxylicious")
        self.upstream = upstream.split(",")[0]
        # Bootstrap at base; broker node N at base + 1 + N (portIdentifiesNode, ids 0-2).
        self.base = free_port_block(5, start=40000, stop=60000)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.base}"

    def config(self) -> str:
        return (
            "virtualClusters:\n"
            "  - name: bench\n"
            "    targetCluster:\n"
            f"      bootstrapServers: {self.upstream}\n"
            "    gateways:\n"
            "      - name: default\n"
            "        portIdentifiesNode:\n"
            f"          bootstrapAddress: 127.0.0.1:{self.base}\n"
            "    logNetwork: false\n"
            "    logFrames: false\n"
        )

    def start(self, timeout: float = 90.0) -> Kroxylicious:
        libs = ensure_libs()
        config = self.dir / "proxy-config.yaml"
        config.write_text(self.config())
        argv = [
            java_executable(),
            *JVM_OPTS,
            "-cp",
            f"{libs}/*",
            str(LAUNCHER),
            str(config),
        ]
        self.proc = _proc.spawn(argv, log=self.log_path, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PeerUnavailable(
                    f"Kroxylicious exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.base), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise PeerUnavailable(f"Kroxylicious did not listen within {timeout:.0f}s:\n{self.log()}")


# -- socat: a plain C byte relay as the reference ------------------------------------------------

#: socat reads up to this many bytes a read, as asyncio's selector transports do (256 KiB), and
#: sets TCP_NODELAY on both sockets, as asyncio and the Kafka clients do: the same socket
#: settings as idemproxy's, so the difference is what a Python proxy costs over a byte relay.
SOCAT_BUFFER = 262144


def ensure_socat(timeout: float = 300.0) -> str:
    """The socat executable; installs Debian's socat with apt-get when it is missing (as root,
    or with sudo), like the Makefile's ``install-test`` does for prometheus."""
    found = shutil.which("socat")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise PeerUnavailable("socat is not installed and there is no apt-get to install it")
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None:
            raise PeerUnavailable("socat is not installed; apt-get needs root or sudo")
        prefix = [sudo, "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [
        [*prefix, apt, "update", "-qq"],
        [*prefix, apt, "install", "-y", "-qq", "--no-install-recommends", "socat"],
    ]
    for argv in steps:
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise PeerUnavailable(f"{' '.join(argv)} timed out after {timeout:.0f}s") from exc
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-10:])
            raise PeerUnavailable(f"{' '.join(argv)} failed (exit {result.returncode}):\n{tail}")
    found = shutil.which("socat")
    if found is None:
        raise PeerUnavailable("apt-get installed socat but it is not on PATH")
    return found


def socat_version(executable: str) -> str:
    result = subprocess.run([executable, "-V"], capture_output=True, text=True, check=False)
    match = re.search(r"socat version (\S+)", result.stdout)
    return match.group(1) if match else "unknown"


class Socat(_PeerProcess):
    """``socat`` relaying ``127.0.0.1:listen_port`` to ``127.0.0.1:upstream_port`` byte for
    byte, one forked child per connection (``fork``): what a C relay per broker port costs.

    It cannot rewrite the broker addresses in Metadata responses, so the broker itself must
    advertise ``listen_port`` on the listener behind ``upstream_port`` (see the bench's
    RELAY listener). Its CPU is the parent's plus its children's (:func:`measure.tree_cpu_seconds`).
    """

    def __init__(self, executable: str, listen_port: int, upstream_port: int) -> None:
        super().__init__("socat")
        self.executable = executable
        self.listen_port = listen_port
        self.upstream_port = upstream_port

    @property
    def argv(self) -> list[str]:
        return [
            self.executable,
            "-b",
            str(SOCAT_BUFFER),
            f"TCP4-LISTEN:{self.listen_port},bind=127.0.0.1,reuseaddr,fork,backlog=128,nodelay",
            f"TCP4:127.0.0.1:{self.upstream_port},nodelay",
        ]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    def start(self, timeout: float = 10.0) -> Socat:
        self.proc = _proc.spawn(self.argv, log=self.log_path, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PeerUnavailable(f"socat exited with {self.proc.returncode}:\n{self.log()}")
            if _listening(self.listen_port):
                return self
            time.sleep(0.05)
        self.stop()
        raise PeerUnavailable(f"socat did not listen within {timeout:.0f}s:\n{self.log()}")


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (from /proc/net/tcp, without connecting,
    which would make socat fork a child that dials a broker not up yet)."""
    want = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1] == want and line.split()[3] == "0A" for line in lines)
