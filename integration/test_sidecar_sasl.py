"""Issue 11, SASL by the sidecar: clients speak plaintext without credentials to the proxy, the
proxy authenticates every upstream connection to Apache Kafka's SASL listeners itself.

One broker (integration.harness.sasl: StandardAuthorizer, the user's SCRAM credentials made at
format time, ACLs granted through the Admin API) with three listeners beside PLAINTEXT:
SASL_SSL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), REAUTH (the same, with
connections.max.reauth.ms of 5 s, KIP-368) and SASL (SASL_PLAINTEXT).
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration import clients
from integration.harness import java_tools
from integration.harness.kafka_broker import KafkaCluster
from integration.harness.sasl import Sasl, grant_producer
from integration.proxy_process import ProxyProcess
from integration.tlscerts import CA, properties_value

pytestmark = [pytest.mark.broker, pytest.mark.slow]

USER = "sidecar"
PASSWORD = "sidecar-secret-7"
SASL_FAILED = "upstream SASL authentication failed, closing client connection"
REAUTH_MS = 5000


@dataclass
class SaslRig:
    cluster: KafkaCluster
    ca: Path
    password_file: Path

    def bootstrap(self, listener: str) -> str:
        return self.cluster.listener_bootstrap(listener)


def _keystore(listener: str, cert_pem: bytes, key_pem: bytes) -> dict[str, str | int | bool]:
    prefix = f"listener.name.{listener.lower()}.ssl."
    return {
        prefix + "keystore.type": "PEM",
        prefix + "keystore.certificate.chain": properties_value(cert_pem),
        prefix + "keystore.key": properties_value(key_pem),
    }


@pytest.fixture(scope="module")
def rig() -> Iterator[SaslRig]:
    ca = CA("broker CA")
    good = ca.issue("broker")
    with tempfile.TemporaryDirectory(prefix="idemproxy-sasl-") as tmp:
        work = Path(tmp)
        password_file = work / "password"
        password_file.write_text(PASSWORD + "\n")  # as `echo` (and many secret tools) write it
        config: dict[str, str | int | bool] = {
            **_keystore("SASL_SSL", good.cert_pem, good.key_pem),
            **_keystore("REAUTH", good.cert_pem, good.key_pem),
            "listener.name.reauth.connections.max.reauth.ms": REAUTH_MS,
        }
        cluster = KafkaCluster(
            1,
            config=config,
            listeners={"SASL_SSL": "SASL_SSL", "REAUTH": "SASL_SSL", "SASL": "SASL_PLAINTEXT"},
            sasl=Sasl(users={USER: PASSWORD}),
        )
        cluster.start()
        try:
            grant_producer(cluster, USER)
            yield SaslRig(cluster, ca.write(work, "ca"), password_file)
        finally:
            cluster.close()


def _proxy(
    rig: SaslRig, listener: str, mechanism: str, *, password_file: Path | None = None
) -> ProxyProcess:
    tls = ["--upstream-tls", "--upstream-ca", str(rig.ca)] if listener != "SASL" else []
    password = ["--upstream-sasl-password-file", str(password_file)] if password_file else []
    extra = [
        *tls, "--log-format", "json", "--connect-timeout", "5",
        "--upstream-sasl-mechanism", mechanism, "--upstream-sasl-username", USER, *password,
    ]  # fmt: skip
    return ProxyProcess(rig.bootstrap(listener), extra=extra)


def _readyz(proxy: ProxyProcess) -> tuple[int, str]:
    url = f"http://127.0.0.1:{proxy.metrics_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _events(proxy: ProxyProcess, msg: str, peer: str | None = None) -> list[dict[str, object]]:
    events = []
    for line in proxy.log().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("msg") == msg and peer in (None, event.get("peer")):
                events.append(event)
    return events


def _read_back(proxy: ProxyProcess, topic: str, values: list[bytes]) -> None:
    got = Counter(clients.kafka_python_consume(proxy.bootstrap, topic, len(values), timeout=60))
    assert sorted(got) == sorted(values), "every record read back through the sidecar"
    assert max(got.values()) == 1, "none written twice"


def _no_sasl_failure(proxy: ProxyProcess) -> None:
    assert proxy.metric("idemproxy_sasl_authentication_failures_total", side="upstream") == 0
    assert _events(proxy, SASL_FAILED) == []


def test_scram_sha_512_over_tls_for_kafka_python_confluent_and_java(
    rig: SaslRig, topic_name: str
) -> None:
    with _proxy(rig, "SASL_SSL", "SCRAM-SHA-512", password_file=rig.password_file) as proxy:
        assert _readyz(proxy) == (200, "ready\n")
        kafka_python = clients.payloads(50, "kp")
        assert clients.kafka_python_produce(proxy.bootstrap, topic_name, kafka_python) == 50
        confluent = clients.payloads(50, "rd")
        acked, errors = clients.confluent_produce(proxy.bootstrap, topic_name, confluent)
        assert (acked, errors) == (50, [])
        java = java_tools.verifiable_producer(proxy.bootstrap, topic_name, 50, value_prefix=7)
        assert (len(java.acked), java.failed) == (50, [])
        read = clients.confluent_consume(proxy.bootstrap, topic_name, 150, timeout=60)
        java_values = [str(e["value"]).encode() for e in java.acked]
        assert Counter(read) == Counter([*kafka_python, *confluent, *java_values])
        _no_sasl_failure(proxy)
        assert len(_events(proxy, "upstream SASL authenticated")) >= 3


def test_plain_over_tls_with_the_password_in_the_environment(
    rig: SaslRig, topic_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDEMPROXY_UPSTREAM_SASL_PASSWORD", PASSWORD)
    with _proxy(rig, "SASL_SSL", "PLAIN") as proxy:
        values = clients.payloads(40, "plain")
        assert clients.kafka_python_produce(proxy.bootstrap, topic_name, values) == 40
        _read_back(proxy, topic_name, values)
        assert _readyz(proxy) == (200, "ready\n")
        _no_sasl_failure(proxy)
        assert PASSWORD not in proxy.log()
        assert PASSWORD not in proxy.metrics()


def test_scram_sha_256_over_tls_with_confluent_kafka(rig: SaslRig, topic_name: str) -> None:
    with _proxy(rig, "SASL_SSL", "SCRAM-SHA-256", password_file=rig.password_file) as proxy:
        values = clients.payloads(40, "s256")
        assert clients.confluent_produce(proxy.bootstrap, topic_name, values) == (40, [])
        _read_back(proxy, topic_name, values)
        _no_sasl_failure(proxy)


def test_scram_over_sasl_plaintext(rig: SaslRig, topic_name: str) -> None:
    with _proxy(rig, "SASL", "SCRAM-SHA-512", password_file=rig.password_file) as proxy:
        values = clients.payloads(20, "clear")
        assert clients.kafka_python_produce(proxy.bootstrap, topic_name, values) == 20
        _read_back(proxy, topic_name, values)


#: What a client's ApiVersions (v0, correlation id 1) gets when the sidecar's SASL failed:
#: SASL_AUTHENTICATION_FAILED (58), then the connection closes.
REFUSED = struct.pack(">iihi", 10, 1, 58, 0)


def _client_sees_close(proxy: ProxyProcess) -> tuple[bytes, str]:
    """A plaintext client's ApiVersions through the proxy: what comes back before EOF, and
    the client's address as the proxy logs it."""
    client_id = b"sasl-test"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=15) as sock:
        peer = "{}:{}".format(*sock.getsockname())
        sock.sendall(struct.pack(">i", len(body)) + body)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received, peer


def test_a_wrong_password_closes_the_client_logs_once_counts_and_fails_readyz(
    rig: SaslRig, tmp_path: Path
) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password-42")
    broker = "{}:{}".format(*rig.cluster.listener_address("SASL_SSL", 1))
    with _proxy(rig, "SASL_SSL", "SCRAM-SHA-512", password_file=wrong) as proxy:
        received, peer = _client_sees_close(proxy)
        assert received == REFUSED, "the client is told why, then its connection closes"
        deadline = time.monotonic() + 10
        while not _events(proxy, SASL_FAILED, peer) and time.monotonic() < deadline:
            time.sleep(0.05)
        (event,) = _events(proxy, SASL_FAILED, peer)
        reason = str(event["reason"])
        assert reason.startswith(f"{broker}: sasl_authentication_failed ("), reason
        assert "not-the-password-42" not in proxy.log()

        status, body = _readyz(proxy)
        assert status == 503
        assert f"{broker}: SASL authentication failed: sasl_authentication_failed" in body, body
        assert proxy.proc is not None
        assert proxy.proc.poll() is None, "the proxy stays up"
        assert (
            proxy.metric(
                "idemproxy_sasl_authentication_failures_total",
                side="upstream",
                reason="sasl_authentication_failed",
            )
            >= 2  # the client's connection and the probe's
        )
        assert proxy.metric("idemproxy_connection_errors_total", reason="upstream_sasl") >= 1
        assert proxy.metric("idemproxy_upstream_up") == 0


def test_a_client_is_told_why_its_connection_closes(
    rig: SaslRig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """kafka-python names the proxy's answer to its ApiVersions (Java and librdkafka too, as
    the README shows): the error reaches the client, not only the proxy's log."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    wrong = tmp_path / "password"
    wrong.write_text("not-the-password-42")
    caplog.set_level(logging.WARNING, logger="kafka")
    with (
        _proxy(rig, "SASL_SSL", "SCRAM-SHA-512", password_file=wrong) as proxy,
        pytest.raises(KafkaTimeoutError),
    ):
        KafkaProducer(bootstrap_servers=proxy.bootstrap, max_block_ms=3000)
    seen = [r.getMessage() for r in caplog.records]
    assert any("SaslAuthenticationFailedError" in m for m in seen), seen


def test_a_client_doing_sasl_itself_is_answered_as_by_a_listener_without_sasl(
    rig: SaslRig,
) -> None:
    from confluent_kafka import Producer

    errors: list[str] = []
    with _proxy(rig, "SASL_SSL", "PLAIN", password_file=rig.password_file) as proxy:
        producer = Producer(
            {
                "bootstrap.servers": proxy.bootstrap,
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN",
                "sasl.username": USER,
                "sasl.password": PASSWORD,
                "error_cb": lambda err: errors.append(str(err)),
            }
        )
        deadline = time.monotonic() + 15
        while not errors and time.monotonic() < deadline:
            producer.poll(0.2)
        del producer
    assert any("Request not valid in current SASL state" in e for e in errors), errors


def test_a_listener_without_sasl_is_reported_as_illegal_sasl_state(rig: SaslRig) -> None:
    # A PLAINTEXT listener answers SaslHandshake with ILLEGAL_SASL_STATE (KafkaApis).
    with ProxyProcess(
        rig.cluster.bootstrap,
        extra=[
            "--log-format", "json", "--upstream-sasl-mechanism", "PLAIN",
            "--upstream-sasl-username", USER, "--upstream-sasl-password-file",
            str(rig.password_file),
        ],
    ) as proxy:  # fmt: skip
        received, _ = _client_sees_close(proxy)
        assert received == REFUSED
        status, body = _readyz(proxy)
        assert status == 503
        assert "SASL authentication failed: illegal_sasl_state" in body, body


def test_reauthentication_keeps_a_producer_going_past_the_session_lifetime(
    rig: SaslRig, topic_name: str
) -> None:
    """connections.max.reauth.ms = 5 s: the broker closes a connection that has not
    re-authenticated within it; a producer sends for three lifetimes and never notices."""
    with _proxy(rig, "REAUTH", "SCRAM-SHA-512", password_file=rig.password_file) as proxy:
        values = clients.payloads(300, "reauth")
        outcome: dict[str, object] = {}

        def produce() -> None:
            from kafka import KafkaProducer

            producer = KafkaProducer(
                bootstrap_servers=proxy.bootstrap, enable_idempotence=True, acks="all"
            )
            try:
                futures = []
                for v in values:  # 300 records over ~15 s
                    futures.append(producer.send(topic_name, v))
                    time.sleep(0.05)
                producer.flush(timeout=60)
                outcome["acked"] = sum(1 for f in futures if f.succeeded())
                outcome["errors"] = [str(f.exception) for f in futures if f.failed()]
            finally:
                producer.close(timeout=10)

        thread = threading.Thread(target=produce)
        thread.start()
        thread.join(timeout=120)
        assert not thread.is_alive()
        assert outcome == {"acked": 300, "errors": []}
        # Every client connection stayed up (the broker closes an expired one, and the
        # proxy then closes its client's): the start check's, the producer's two.
        accepted = proxy.metric("idemproxy_client_connections_accepted_total")
        assert accepted <= 4, f"{accepted} client connections: some were closed and reopened"
        _read_back(proxy, topic_name, values)
        reauthenticated = _events(proxy, "upstream SASL re-authenticated")
        assert len(reauthenticated) >= 2, "each connection re-authenticated within 5 s"
        assert _events(proxy, "upstream closed with requests in flight") == []
        _no_sasl_failure(proxy)
