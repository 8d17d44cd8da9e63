"""Issue 11, TLS towards clients: real clients speak TLS (and mTLS) to the proxy's listeners.

One broker (module-scoped) with its PLAINTEXT listener and an SSL listener TLS, certificates
made by the test (integration/tlscerts.py). kafka-python, confluent-kafka and the Java client
produce over TLS to proxies in front of the plaintext listener, and once with TLS on both
sides; records are read back from the broker directly. Then the refusals (no client
certificate, plaintext to TLS, TLS to plaintext, an expired proxy certificate) and the
rotation of the listener's certificate files under a running producer.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from integration import clients
from integration.harness.java_tools import console_consume, producer_performance
from integration.harness.kafka_broker import KafkaCluster
from integration.proxy_process import ProxyProcess
from integration.tlscerts import CA, properties_value

pytestmark = [pytest.mark.broker, pytest.mark.slow]

HANDSHAKE_FAILED = "client TLS handshake failed"
PLAINTEXT_TO_TLS = "client speaks plaintext to a TLS listener"
TLS_TO_PLAINTEXT = "client speaks TLS to a plaintext listener"


@dataclass
class Rig:
    cluster: KafkaCluster
    ca: CA
    files: dict[str, Path]
    work: Path


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    proxy_ca, client_ca, broker_ca = CA("proxy CA"), CA("client CA"), CA("broker CA")
    broker = broker_ca.issue("broker")
    with tempfile.TemporaryDirectory(prefix="idemproxy-client-tls-") as tmp:
        work = Path(tmp)
        cert, key = proxy_ca.issue("proxy").write(work, "proxy")
        expired_cert, expired_key = proxy_ca.expired("proxy").write(work, "expired")
        client_cert, client_key = client_ca.issue("orders-app", client=True).write(work, "client")
        # The Java client's PEM key store: the private key and its certificate in one file.
        java_keystore = work / "client-keystore.pem"
        java_keystore.write_bytes(
            (work / "client.key").read_bytes() + (work / "client.pem").read_bytes()
        )
        files = {
            "ca": proxy_ca.write(work, "proxy-ca"),
            "cert": cert,
            "key": key,
            "expired_cert": expired_cert,
            "expired_key": expired_key,
            "client_ca": client_ca.write(work, "client-ca"),
            "client_cert": client_cert,
            "client_key": client_key,
            "java_keystore": java_keystore,
            "broker_ca": broker_ca.write(work, "broker-ca"),
        }
        prefix = "listener.name.tls.ssl."
        config: dict[str, str | int | bool] = {
            prefix + "keystore.type": "PEM",
            prefix + "keystore.certificate.chain": properties_value(broker.cert_pem),
            prefix + "keystore.key": properties_value(broker.key_pem),
        }
        cluster = KafkaCluster(1, config=config, listeners={"TLS": "SSL"})
        cluster.start()
        try:
            yield Rig(cluster, proxy_ca, files, work)
        finally:
            cluster.close()


def tls_proxy(rig: Rig, *args: str, upstream: str | None = None) -> ProxyProcess:
    extra = [
        "--listen-tls-cert", str(rig.files["cert"]), "--listen-tls-key", str(rig.files["key"]),
        "--log-format", "json", *args,
    ]  # fmt: skip
    return ProxyProcess(upstream or rig.cluster.bootstrap, extra=extra)


def kafka_python_tls(rig: Rig, *, cert: bool = False) -> dict[str, object]:
    config: dict[str, object] = {"security_protocol": "SSL", "ssl_cafile": str(rig.files["ca"])}
    if cert:
        config |= {
            "ssl_certfile": str(rig.files["client_cert"]),
            "ssl_keyfile": str(rig.files["client_key"]),
        }
    return config


def confluent_tls(rig: Rig) -> dict[str, object]:
    return {"security.protocol": "ssl", "ssl.ca.location": str(rig.files["ca"])}


def read_back(rig: Rig, topic: str, expected: int) -> Counter[bytes]:
    """Every value in topic, read from the broker itself (not through any proxy)."""
    return Counter(clients.kafka_python_consume(rig.cluster.bootstrap, topic, expected))


def events(proxy: ProxyProcess, msg: str, peer: str | None = None) -> list[dict[str, object]]:
    found = []
    for line in proxy.log().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("msg") == msg and peer in (None, event.get("peer")):
                found.append(event)
    return found


def wait_for_events(
    proxy: ProxyProcess, msg: str, peer: str, timeout: float = 10
) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while not (found := events(proxy, msg, peer)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def api_versions_frame() -> bytes:
    client_id = b"tls-test"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    return struct.pack(">i", len(body)) + body


def read_until_closed(sock: socket.socket | ssl.SSLSocket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def refused_after_handshake(context: ssl.SSLContext, raw: socket.socket) -> bytes:
    """What an ApiVersions over TLS gets back before the connection ends."""
    try:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(api_versions_frame())
            return read_until_closed(tls)
    except (ssl.SSLError, OSError):
        return b""


def served_serial(port: int, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def assert_alive(proxy: ProxyProcess) -> None:
    """The proxy runs on, and said what happened in its own lines: no traceback, no error
    (asyncio and uvloop may report through the loop's exception handler)."""
    assert proxy.proc is not None
    assert proxy.proc.poll() is None, "the proxy stays up"
    log = proxy.log()
    assert '"msg": "listening"' in log, "the log is the proxy's JSON log"
    assert "Traceback" not in log
    assert '"level": "ERROR"' not in log


# --- clients over TLS ----------------------------------------------------------------------


def test_kafka_python_and_confluent_produce_over_tls(rig: Rig, topic_name: str) -> None:
    with tls_proxy(rig) as proxy:
        mine = clients.payloads(300, "kp-tls")
        acked = clients.kafka_python_produce(
            proxy.bootstrap, topic_name, mine, **kafka_python_tls(rig)
        )
        theirs = clients.payloads(300, "rd-tls")
        rd_acked, errors = clients.confluent_produce(
            proxy.bootstrap, topic_name, theirs, **confluent_tls(rig)
        )
        got = read_back(rig, topic_name, 600)
        assert (acked, rd_acked, errors) == (300, 300, [])
        assert got == Counter(mine + theirs), "every record read back once"
        assert proxy.metric("idemproxy_tls_handshake_failures_total", side="client") == 0
        assert proxy.metric("idemproxy_client_connections_accepted_total") >= 2


@pytest.mark.java
def test_java_producer_over_tls(rig: Rig, topic_name: str) -> None:
    with tls_proxy(rig) as proxy:
        props = {
            "security.protocol": "SSL",
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(rig.files["ca"]),
        }
        perf = producer_performance(
            proxy.bootstrap, topic_name, 2000, record_size=100, producer_props=props
        )
        assert perf.records_sent == 2000
        assert len(console_consume(rig.cluster.bootstrap, topic_name, 2000)) == 2000
        assert proxy.metric("idemproxy_tls_handshake_failures_total", side="client") == 0


def test_tls_on_both_sides(rig: Rig, topic_name: str) -> None:
    upstream = ["--upstream-tls", "--upstream-ca", str(rig.files["broker_ca"])]
    with tls_proxy(rig, *upstream, upstream=rig.cluster.listener_bootstrap("TLS")) as proxy:
        values = clients.payloads(200, "both")
        acked = clients.kafka_python_produce(
            proxy.bootstrap, topic_name, values, **kafka_python_tls(rig)
        )
        assert acked == 200
        assert read_back(rig, topic_name, 200) == Counter(values)
        assert proxy.metric("idemproxy_tls_handshake_failures_total") == 0


# --- mTLS ------------------------------------------------------------------------------------


@pytest.mark.java
def test_mtls_refuses_a_client_without_a_certificate_and_serves_those_with_one(
    rig: Rig, topic_name: str
) -> None:
    with tls_proxy(rig, "--listen-tls-client-ca", str(rig.files["client_ca"])) as proxy:
        # No certificate: with TLS 1.3 the client's side of the handshake completes; the
        # proxy's refusal is the connection closed (asyncio sends no alert) on its first read.
        context = ssl.create_default_context(cafile=str(rig.files["ca"]))
        with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=15) as raw:
            peer = "{}:{}".format(*raw.getsockname())
            assert refused_after_handshake(context, raw) == b"", "closed unanswered"
        (event,) = wait_for_events(proxy, HANDSHAKE_FAILED, peer)
        assert event["listener"] == "bootstrap"
        assert str(event["reason"]).startswith("certificate_required")
        assert_alive(proxy)
        assert (
            proxy.metric(
                "idemproxy_tls_handshake_failures_total",
                side="client",
                reason="certificate_required",
            )
            == 1
        )

        values = clients.payloads(100, "mtls")
        acked = clients.kafka_python_produce(
            proxy.bootstrap, topic_name, values, **kafka_python_tls(rig, cert=True)
        )
        rd_values = clients.payloads(100, "mtls-rd")
        rd_acked, errors = clients.confluent_produce(
            proxy.bootstrap,
            topic_name,
            rd_values,
            **confluent_tls(rig),
            **{
                "ssl.certificate.location": str(rig.files["client_cert"]),
                "ssl.key.location": str(rig.files["client_key"]),
            },
        )
        perf = producer_performance(
            proxy.bootstrap,
            topic_name,
            100,
            producer_props={
                "security.protocol": "SSL",
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(rig.files["ca"]),
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(rig.files["java_keystore"]),
            },
        )
        assert (acked, rd_acked, errors, perf.records_sent) == (100, 100, [], 100)
        got = read_back(rig, topic_name, 300)
        assert sum(got.values()) == 300
        assert all(got[v] == 1 for v in values + rd_values)
        assert proxy.metric("idemproxy_tls_handshake_failures_total", side="client") == 1


# --- mismatches and a bad certificate --------------------------------------------------------


def test_plaintext_client_to_the_tls_listener_is_one_line_and_closed(rig: Rig) -> None:
    with tls_proxy(rig) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=15) as sock:
            peer = "{}:{}".format(*sock.getsockname())
            sock.sendall(api_versions_frame())
            assert read_until_closed(sock) == b"", "closed unanswered"
        (event,) = wait_for_events(proxy, PLAINTEXT_TO_TLS, peer)
        assert event["listener"] == "bootstrap"
        assert str(event["reason"]).startswith("not_tls")
        assert_alive(proxy)
        assert served_serial(proxy.listen_port, rig.files["ca"]) > 0, "TLS clients still served"


def test_tls_client_to_a_plaintext_listener_is_one_line_and_closed(rig: Rig) -> None:
    with ProxyProcess(rig.cluster.bootstrap, extra=["--log-format", "json"]) as proxy:
        context = ssl.create_default_context(cafile=str(rig.files["ca"]))
        with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=15) as raw:
            peer = "{}:{}".format(*raw.getsockname())
            with pytest.raises((ssl.SSLError, OSError)):
                context.wrap_socket(raw, server_hostname="127.0.0.1")
        (event,) = wait_for_events(proxy, TLS_TO_PLAINTEXT, peer)
        assert event["listener"] == "bootstrap"
        assert str(event["reason"]).startswith("plaintext_listener")
        assert_alive(proxy)
        assert (
            proxy.metric(
                "idemproxy_tls_handshake_failures_total",
                side="client",
                reason="plaintext_listener",
            )
            == 1
        )


def test_an_expired_proxy_certificate_is_a_handshake_error_for_the_client(rig: Rig) -> None:
    args = ["--listen-tls-cert", str(rig.files["expired_cert"])]
    args += ["--listen-tls-key", str(rig.files["expired_key"]), "--log-format", "json"]
    with ProxyProcess(rig.cluster.bootstrap, extra=args) as proxy:
        context = ssl.create_default_context(cafile=str(rig.files["ca"]))
        with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=15) as raw:
            peer = "{}:{}".format(*raw.getsockname())
            with pytest.raises(ssl.SSLCertVerificationError) as failed:
                context.wrap_socket(raw, server_hostname="127.0.0.1")
        assert failed.value.verify_message == "certificate has expired"
        (event,) = wait_for_events(proxy, HANDSHAKE_FAILED, peer)
        assert str(event["reason"]).startswith("certificate_rejected")
        assert_alive(proxy)
        # A real client: librdkafka reports the failed handshake and writes nothing.
        acked, errors = clients.confluent_produce(
            proxy.bootstrap,
            "never-written",
            [b"x"],
            **confluent_tls(rig),
            **{"message.timeout.ms": 5000},
        )
        assert acked == 0
        assert errors, "the record fails"
        assert (
            proxy.metric(
                "idemproxy_tls_handshake_failures_total",
                side="client",
                reason="certificate_rejected",
            )
            >= 2
        )


# --- rotation ----------------------------------------------------------------------------------


class SecretVolume:
    """Files laid out as the kubelet lays out a Secret volume (its AtomicWriter): each name a
    symlink into ``..data``, itself a symlink to a timestamped folder; an update writes a new
    folder and renames a new ``..data`` link over the old one, so every file changes at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self._versions = 0

    def write(self, files: dict[str, bytes]) -> None:
        self._versions += 1
        version = self.root / f"..2026_12_02_{self._versions:04d}"
        version.mkdir()
        for name, content in files.items():
            (version / name).write_bytes(content)
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(Path("..data") / name)
        staged = self.root / "..data_tmp"
        staged.symlink_to(version.name)
        os.replace(staged, self.root / "..data")

    def path(self, name: str) -> Path:
        return self.root / name


def test_rotated_certificate_reaches_new_connections_while_a_producer_keeps_writing(
    rig: Rig, topic_name: str
) -> None:
    volume = SecretVolume(rig.work / "listen-tls")
    volume.write(
        {"tls.crt": rig.files["cert"].read_bytes(), "tls.key": rig.files["key"].read_bytes()}
    )
    args = ["--listen-tls-cert", str(volume.path("tls.crt"))]
    args += ["--listen-tls-key", str(volume.path("tls.key"))]
    args += ["--tls-reload-interval", "0.5", "--log-format", "json"]
    with ProxyProcess(rig.cluster.bootstrap, extra=args) as proxy:
        before = served_serial(proxy.listen_port, rig.files["ca"])
        producer = clients.SteadyProducer(
            proxy.bootstrap, topic_name, 200, "rotating", keep_values=True, **confluent_tls(rig)
        )
        producer.start()
        try:
            assert producer.wait_acked(200, timeout=60)
            fresh = rig.ca.issue("proxy")
            volume.write({"tls.crt": fresh.cert_pem, "tls.key": fresh.key_pem})
            expected = x509.load_pem_x509_certificate(fresh.cert_pem).serial_number
            assert expected != before
            deadline = time.monotonic() + 30
            while (now := served_serial(proxy.listen_port, rig.files["ca"])) != expected:
                assert time.monotonic() < deadline, "the new certificate is never served"
                time.sleep(0.2)
            assert now == expected
            assert producer.wait_acked(producer.acked + 400, timeout=60)

            # A rotation to a key that is not the certificate's: ignored, counted, and the
            # certificate served stays the last good one.
            volume.write({"tls.crt": rig.ca.issue("proxy").cert_pem, "tls.key": fresh.key_pem})
            deadline = time.monotonic() + 30
            while not proxy.metric("idemproxy_tls_reloads_total", side="client", result="failed"):
                assert time.monotonic() < deadline, "the unusable files are never noticed"
                time.sleep(0.2)
            assert served_serial(proxy.listen_port, rig.files["ca"]) == expected
            assert producer.wait_acked(producer.acked + 400, timeout=60)
        finally:
            producer.finish()
        assert producer.errors == []
        assert producer.acked == producer.sent
        got = read_back(rig, topic_name, producer.acked)
        assert got == Counter(producer.acked_values), "every record read back once"
        assert proxy.metric("idemproxy_tls_reloads_total", side="client", result="ok") == 1
        assert proxy.metric("idemproxy_tls_reloads_total", side="client", result="failed") == 1
        (warning,) = events(
            proxy, "certificate files changed but cannot be used, keeping the previous ones"
        )
        assert "is not the private key of" in str(warning["reason"])
        assert proxy.metric("idemproxy_tls_handshake_failures_total", side="client") == 0
        assert_alive(proxy)
