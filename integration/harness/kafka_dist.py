"""Locate (or fetch once, via Maven) the Apache Kafka jars the harness runs.

The jar set is defined by ``integration/kafka/pom.xml``. The default cache is
``~/.cache/idemproxy/kafka-<version>/libs`` (``$XDG_CACHE_HOME`` is honoured);
``IDEMPROXY_KAFKA_LIBS`` points somewhere else. A stamp file holding the pom's
hash makes a pom change refetch automatically. Fetching is serialised with a
file lock, so parallel test workers do not race.

``python -m integration.harness.kafka_dist`` prefetches and prints the jar dir.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

from . import _proc

POM = Path(__file__).resolve().parent.parent / "kafka" / "pom.xml"
LIBS_ENV = "IDEMPROXY_KAFKA_LIBS"
_STAMP = ".idemproxy-pom-sha256"
_MVN_TIMEOUT = 900.0


class KafkaDistError(RuntimeError):
    """The Kafka jars are unavailable and could not be fetched."""


def kafka_version() -> str:
    """The Kafka version pinned in the pom (``<kafka.version>``)."""
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", POM.read_text())
    if not match:
        raise KafkaDistError(f"no <kafka.version> property in {POM}")
    return match.group(1)


def default_libs_dir() -> Path:
    """``~/.cache/idemproxy/kafka-<version>/libs``."""
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_root / "idemproxy" / f"kafka-{kafka_version()}" / "libs"


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def _has_jars(libs: Path) -> bool:
    return libs.is_dir() and any(libs.glob("kafka_2.13-*.jar"))


def _fetch(dest: Path) -> None:
    """Run Maven into a scratch dir next to ``dest`` and swap it in atomically."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaDistError(
            f"the Kafka jars are not in {dest} and Maven ('mvn') is not on PATH to fetch them; "
            f"install Maven (and a JDK 17+), or set {LIBS_ENV} to a directory holding the jars"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = dest.parent / f".{dest.name}.fetch-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    argv = [
        mvn, "-q", "-B", "dependency:copy-dependencies",
        f"-DoutputDirectory={scratch}", "-DincludeScope=runtime",
    ]  # fmt: skip
    try:
        proc = _proc.run(argv, cwd=POM.parent, timeout=_MVN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise KafkaDistError(f"'{' '.join(argv)}' timed out after {_MVN_TIMEOUT:.0f}s") from exc
    if proc.returncode != 0 or not _has_jars(scratch):
        shutil.rmtree(scratch, ignore_errors=True)
        output = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise KafkaDistError(
            f"fetching the Kafka jars failed (exit {proc.returncode}): "
            f"'{' '.join(argv)}' in {POM.parent}\n{output}"
        )
    (scratch / _STAMP).write_text(_pom_digest())
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    if dest.exists():
        dest.rename(old)
    scratch.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


@cache
def ensure_kafka_libs() -> Path:
    """The directory of Kafka jars, fetching it with Maven first if needed."""
    override = os.environ.get(LIBS_ENV)
    libs = Path(override).expanduser() if override else default_libs_dir()
    if override and _has_jars(libs):
        return libs  # user-provided: trusted as is
    if _up_to_date(libs):
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    with open(libs.parent / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _up_to_date(libs):  # another process may have fetched meanwhile
            _fetch(libs)
    return libs


def _up_to_date(libs: Path) -> bool:
    stamp = libs / _STAMP
    return _has_jars(libs) and stamp.is_file() and stamp.read_text() == _pom_digest()


def java_classpath(libs: Path | None = None) -> str:
    """A JVM classpath covering every jar in ``libs`` (default: :func:`ensure_kafka_libs`)."""
    return str((libs or ensure_kafka_libs()) / "*")


@cache
def java_executable() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaDistError("no 'java' on PATH (and JAVA_HOME unset): Kafka 4.x needs Java 17+")
    return java


def main() -> None:
    """Prefetch the jars (``make install``) and print where they are."""
    print(ensure_kafka_libs())


if __name__ == "__main__":
    main()
