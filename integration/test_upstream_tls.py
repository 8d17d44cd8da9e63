"""Issue 11, upstream TLS: the proxy speaks TLS to Apache Kafka's SSL listeners.

One broker with three SSL listeners beside PLAINTEXT, certificates made by the test
(integration/tlscerts.py): TLS (a valid certificate), MTLS (the same, and
ssl.client.auth=required) and EXPIRED (a certificate that expired yesterday). Clients speak
plaintext to the proxy; the proxy originates TLS.
"""

from __future__ import annotations

import json
import socket
import struct
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration import clients
from integration.faults import LostAckRelay
from integration.harness.kafka_broker import KafkaCluster
from integration.proxy_process import ProxyProcess
from integration.rigs import CLIENT_SIDE
from integration.tlscerts import CA, properties_value

pytestmark = [pytest.mark.broker, pytest.mark.slow]

HANDSHAKE_FAILED = "upstream TLS handshake failed, closing client connection"


@dataclass
class TLSRig:
    cluster: KafkaCluster
    files: dict[str, Path]

    def bootstrap(self, listener: str) -> str:
        return self.cluster.listener_bootstrap(listener)


def _keystore(listener: str, cert_pem: bytes, key_pem: bytes) -> dict[str, str]:
    prefix = f"listener.name.{listener.lower()}.ssl."
    return {
        prefix + "keystore.type": "PEM",
        prefix + "keystore.certificate.chain": properties_value(cert_pem),
        prefix + "keystore.key": properties_value(key_pem),
    }


@pytest.fixture(scope="module")
def rig() -> Iterator[TLSRig]:
    ca, stranger = CA("broker CA"), CA("a CA the proxy is not given")
    good, expired = ca.issue("broker"), ca.expired("broker")
    with tempfile.TemporaryDirectory(prefix="idemproxy-tls-") as tmp:
        work = Path(tmp)
        client_cert, client_key = ca.issue("idemproxy", client=True).write(work, "client")
        files = {
            "ca": ca.write(work, "ca"),
            "stranger": stranger.write(work, "stranger"),
            "cert": client_cert,
            "key": client_key,
        }
        config: dict[str, str | int | bool] = {
            **_keystore("TLS", good.cert_pem, good.key_pem),
            **_keystore("MTLS", good.cert_pem, good.key_pem),
            **_keystore("EXPIRED", expired.cert_pem, expired.key_pem),
            "listener.name.mtls.ssl.client.auth": "required",
            "listener.name.mtls.ssl.truststore.type": "PEM",
            "listener.name.mtls.ssl.truststore.certificates": properties_value(ca.cert_pem),
        }
        cluster = KafkaCluster(
            1, config=config, listeners={"TLS": "SSL", "MTLS": "SSL", "EXPIRED": "SSL"}
        )
        cluster.start()
        try:
            yield TLSRig(cluster, files)
        finally:
            cluster.close()


def _proxy(upstream: str, *args: str) -> ProxyProcess:
    extra = ["--upstream-tls", "--log-format", "json", "--connect-timeout", "5", *args]
    return ProxyProcess(upstream, extra=extra)  # started by `with`


def _readyz(proxy: ProxyProcess) -> tuple[int, str]:
    url = f"http://127.0.0.1:{proxy.metrics_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _events(proxy: ProxyProcess, msg: str, peer: str | None = None) -> list[dict[str, object]]:
    """The proxy's log events with message msg (about client peer, when given)."""
    events = []
    for line in proxy.log().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("msg") == msg and peer in (None, event.get("peer")):
                events.append(event)
    return events


def _client_sees_close(proxy: ProxyProcess) -> tuple[bytes, str]:
    """A plaintext Kafka client's ApiVersions through the proxy: what comes back before EOF,
    and the client's address (as the proxy logs it)."""
    client_id = b"tls-test"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=15) as sock:
        peer = "{}:{}".format(*sock.getsockname())
        sock.sendall(struct.pack(">i", len(body)) + body)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received, peer


def test_produce_consume_and_a_lost_ack_over_upstream_tls(rig: TLSRig, topic_name: str) -> None:
    proxy = ProxyProcess(
        rig.bootstrap("TLS"),
        extra=[
            "--upstream-tls", "--upstream-ca", str(rig.files["ca"]),
            "--advertised-host", CLIENT_SIDE,
        ],
    ).start()  # fmt: skip
    try:
        ports = [proxy.listen_port, proxy.broker_port(1)]
        relay = LostAckRelay(CLIENT_SIDE, "127.0.0.1", ports).start()
        try:
            bootstrap = f"{CLIENT_SIDE}:{proxy.listen_port}"
            values = clients.payloads(100, "tls")
            relay.drop_next_acks(1)
            acked = clients.kafka_python_produce(bootstrap, topic_name, values, batch_size=256)
            assert relay.stats.acks_dropped == 1
            got = Counter(clients.kafka_python_consume(bootstrap, topic_name, 100, timeout=60))
        finally:
            relay.stop()
        assert acked == 100
        assert sorted(got) == sorted(values), "every message read back through TLS"
        assert max(got.values()) == 1, "no message written twice"
        assert proxy.metric("idemproxy_produce_batches_total", result="duplicate") >= 1
        assert _readyz(proxy) == (200, "ready\n")
        assert proxy.metric("idemproxy_tls_handshake_failures_total") == 0
        assert _events(proxy, HANDSHAKE_FAILED) == []
    finally:
        proxy.stop()


def test_mtls_with_the_client_certificate(rig: TLSRig, topic_name: str) -> None:
    args = ["--upstream-ca", str(rig.files["ca"])]
    args += ["--upstream-cert", str(rig.files["cert"]), "--upstream-key", str(rig.files["key"])]
    with _proxy(rig.bootstrap("MTLS"), *args) as proxy:
        values = clients.payloads(20, "mtls")
        assert clients.kafka_python_produce(proxy.bootstrap, topic_name, values) == 20
        got = clients.kafka_python_consume(proxy.bootstrap, topic_name, 20, timeout=60)
        assert sorted(got) == sorted(values)
        assert _readyz(proxy) == (200, "ready\n")
        assert _events(proxy, HANDSHAKE_FAILED) == []


FAILURES = {
    # listener, proxy arguments but the CA, reasons accepted
    "mtls_without_client_certificate": ("MTLS", "ca", ("certificate_rejected", "handshake_failed")),
    "wrong_ca": ("TLS", "stranger", ("certificate_verify_failed",)),
    "expired_broker_certificate": ("EXPIRED", "ca", ("certificate_expired",)),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failed_handshake_closes_the_client_logs_once_and_fails_readyz(
    rig: TLSRig, case: str
) -> None:
    listener, ca, reasons = FAILURES[case]
    broker = "{}:{}".format(*rig.cluster.listener_address(listener, 1))
    with _proxy(rig.bootstrap(listener), "--upstream-ca", str(rig.files[ca])) as proxy:
        received, peer = _client_sees_close(proxy)
        assert received == b"", "the client's connection is closed unanswered"
        # One line for this client's connection (ProxyProcess.start's own check that the
        # proxy listens is a connection too, and gets its line).
        deadline = time.monotonic() + 10
        while not _events(proxy, HANDSHAKE_FAILED, peer) and time.monotonic() < deadline:
            time.sleep(0.05)
        (event,) = _events(proxy, HANDSHAKE_FAILED, peer)
        reason = str(event["reason"])
        assert reason.startswith(f"{broker}: "), reason
        named = reason.removeprefix(f"{broker}: ").split(" ", 1)[0]
        assert named in reasons, reason

        status, body = _readyz(proxy)
        assert status == 503
        assert f"{broker}: TLS handshake failed: " in body, body
        assert any(r in body for r in reasons), body
        assert proxy.proc is not None
        assert proxy.proc.poll() is None, "the proxy stays up"
        assert proxy.metric("idemproxy_tls_handshake_failures_total", side="upstream") >= 1
        assert proxy.metric("idemproxy_upstream_up") == 0
        assert proxy.metric("idemproxy_connection_errors_total", reason="upstream_tls") >= 1
