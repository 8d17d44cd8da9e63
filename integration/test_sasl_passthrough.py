"""Issue 11, SASL passthrough: clients authenticate to a SASL_SSL Apache Kafka through the proxy.

One broker (module-scoped) with a SASL_SSL listener (PLAIN, SCRAM-SHA-256/512 users created at
format time, OAUTHBEARER with the broker's unsecured JWT validator) and StandardAuthorizer:
alice may produce and consume everything, bob may write only his own topic. The proxy speaks
TLS to the broker (--upstream-tls --upstream-ca) and passes every SaslHandshake and
SaslAuthenticate through. Two proxies in front of it: `tls` speaks TLS to clients too
(--listen-tls-cert: clients use SASL_SSL, TLS + SASL end to end); `plain` takes SASL_PLAINTEXT
behind a LostAckRelay, which must read the Kafka frames to lose acknowledgements, and for the
raw-protocol tests.
"""

from __future__ import annotations

import shutil
import socket
import struct
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.net.sasl.oauth import AbstractTokenProvider
from kafka.protocol.producer import InitProducerIdRequest, InitProducerIdResponse
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)

from integration import clients
from integration.faults import LostAckRelay
from integration.harness.java_tools import verifiable_producer
from integration.harness.kafka_broker import KafkaCluster
from integration.harness.sasl import Sasl, grant, grant_producer, unsecured_jwt
from integration.proxy_process import ProxyProcess
from integration.rigs import CLIENT_SIDE
from integration.tlscerts import CA, properties_value
from tests.routing._support import (
    decode_produce_response,
    idempotent_batch,
    produce_answers,
    produce_request_with,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

USERS = {"alice": "alice-secret", "bob": "bob-secret"}
MECHANISMS = ("PLAIN", "SCRAM-SHA-512", "OAUTHBEARER")
FAILED_LINE = "client SASL authentication failed"
SASL_AUTHENTICATION_FAILED = 58
TOPIC_AUTHORIZATION_FAILED = 29
PRODUCE_VERSION = 9  # topic names, no topic ids: no Metadata needed for the raw requests


@dataclass
class Front:
    """How clients reach one of the proxies: its bootstrap, protocol and CA file (SASL_SSL)."""

    bootstrap: str
    protocol: str
    ca: Path | None = None


@dataclass
class Rig:
    cluster: KafkaCluster
    #: The proxy behind the relay (SASL_PLAINTEXT from clients, TLS to the broker).
    proxy: ProxyProcess
    #: Between clients and that proxy (CLIENT_SIDE -> 127.0.0.1), to lose acks on demand.
    relay: LostAckRelay
    plain: Front
    #: The proxy with TLS listeners (SASL_SSL from clients, TLS to the broker).
    tls_proxy: ProxyProcess
    tls: Front
    bob_topic: str


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    ca, proxy_ca = CA("broker CA"), CA("proxy CA")
    broker = ca.issue("broker")
    prefix = "listener.name.sasl_ssl.ssl."
    config: dict[str, str | int | bool] = {
        prefix + "keystore.type": "PEM",
        prefix + "keystore.certificate.chain": properties_value(broker.cert_pem),
        prefix + "keystore.key": properties_value(broker.key_pem),
        # KIP-368: sessions end after 10 minutes unless re-authenticated, and clients may
        # re-authenticate (the broker refuses a SaslHandshake on an authenticated connection
        # when this is 0, the default).
        "connections.max.reauth.ms": 600_000,
    }
    with tempfile.TemporaryDirectory(prefix="idemproxy-sasl-") as tmp:
        ca_file = ca.write(Path(tmp), "ca")
        proxy_ca_file = proxy_ca.write(Path(tmp), "proxy-ca")
        listen_cert, listen_key = proxy_ca.issue("proxy").write(Path(tmp), "proxy")
        cluster = KafkaCluster(
            1, config=config, listeners={"SASL_SSL": "SASL_SSL"}, sasl=Sasl(users=USERS)
        )
        cluster.start()
        try:
            grant_producer(cluster, "alice")
            bob_topic = f"bobs-{uuid.uuid4().hex[:8]}"
            cluster.create_topic(bob_topic)
            grant(cluster, "bob", "topic", bob_topic, ["WRITE", "DESCRIBE"])
            grant(cluster, "bob", "cluster", "kafka-cluster", ["IDEMPOTENT_WRITE"])
            proxy = ProxyProcess(
                cluster.listener_bootstrap("SASL_SSL"),
                extra=[
                    "--upstream-tls", "--upstream-ca", str(ca_file),
                    "--advertised-host", CLIENT_SIDE, "--log-format", "json",
                ],
            ).start()  # fmt: skip
            ports = [proxy.listen_port, proxy.broker_port(1)]
            relay = LostAckRelay(CLIENT_SIDE, "127.0.0.1", ports).start()
            tls_proxy = ProxyProcess(
                cluster.listener_bootstrap("SASL_SSL"),
                extra=[
                    "--upstream-tls", "--upstream-ca", str(ca_file),
                    "--listen-tls-cert", str(listen_cert), "--listen-tls-key", str(listen_key),
                    "--log-format", "json",
                ],
            )  # fmt: skip
            try:
                tls_proxy.start()
                yield Rig(
                    cluster,
                    proxy,
                    relay,
                    Front(f"{CLIENT_SIDE}:{proxy.listen_port}", "SASL_PLAINTEXT"),
                    tls_proxy,
                    Front(tls_proxy.bootstrap, "SASL_SSL", proxy_ca_file),
                    bob_topic,
                )
            finally:
                tls_proxy.stop()
                relay.stop()
                proxy.stop()
        finally:
            cluster.close()


def bootstrap(rig: Rig) -> str:
    return rig.plain.bootstrap


# -- client settings, one builder per client ----------------------------------------------------


class Token(AbstractTokenProvider):  # type: ignore[misc]
    def __init__(self, subject: str) -> None:
        self.subject = subject

    def token(self) -> str:
        return unsecured_jwt(self.subject)


def kafka_python_config(front: Front, mechanism: str, user: str) -> dict[str, Any]:
    config: dict[str, Any] = {"security_protocol": front.protocol, "sasl_mechanism": mechanism}
    if front.ca is not None:
        config["ssl_cafile"] = str(front.ca)
    if mechanism == "OAUTHBEARER":
        config["sasl_oauth_token_provider"] = Token(user)
    else:
        config["sasl_plain_username"] = user
        config["sasl_plain_password"] = USERS[user]
    return config


def confluent_config(front: Front, mechanism: str, user: str) -> dict[str, Any]:
    config: dict[str, Any] = {"security.protocol": front.protocol, "sasl.mechanism": mechanism}
    if front.ca is not None:
        config["ssl.ca.location"] = str(front.ca)
    if mechanism == "OAUTHBEARER":
        # librdkafka's built-in unsecured JWT ({"alg":"none"}, sub=principal).
        config["enable.sasl.oauthbearer.unsecure.jwt"] = True
        config["sasl.oauthbearer.config"] = f"principal={user}"
    else:
        config["sasl.username"] = user
        config["sasl.password"] = USERS[user]
    return config


def java_config(front: Front, mechanism: str, user: str) -> dict[str, str | int | bool]:
    module = {
        "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
        "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
        "OAUTHBEARER": "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule",
    }[mechanism]
    if mechanism == "OAUTHBEARER":
        options = f'unsecuredLoginStringClaim_sub="{user}"'
    else:
        options = f'username="{user}" password="{USERS[user]}"'
    config: dict[str, str | int | bool] = {
        "security.protocol": front.protocol,
        "sasl.mechanism": mechanism,
        "sasl.jaas.config": f"{module} required {options};",
    }
    if front.ca is not None:
        config["ssl.truststore.type"] = "PEM"
        config["ssl.truststore.location"] = str(front.ca)
    return config


def kafka_python_consume(front: Front, topic: str, expected: int, mechanism: str) -> list[bytes]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=front.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
        **kafka_python_config(front, mechanism, "alice"),
    )
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < expected and time.monotonic() < deadline:
            got.extend(m.value for m in consumer)
        return got
    finally:
        consumer.close()


def produced_once(front: Front, topic: str, values: list[bytes], mechanism: str) -> None:
    """Every value read back through the proxy, each exactly once."""
    got = Counter(kafka_python_consume(front, topic, len(values), mechanism))
    assert sorted(got) == sorted(values), "every record read back"
    assert max(got.values()) == 1, "none written twice"


# -- raw Kafka over an authenticated connection -------------------------------------------------


class RawConnection:
    """A socket to the proxy that speaks SASL PLAIN and then sends whatever bytes it is given."""

    def __init__(self, rig: Rig) -> None:
        self.sock = socket.create_connection((CLIENT_SIDE, rig.proxy.listen_port), timeout=30)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def _recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed by the proxy")
            data += chunk
        return data

    def request(self, message: Any, response_class: Any) -> Any:
        self.correlation += 1
        message.with_header(correlation_id=self.correlation, client_id="raw")
        body = bytes(message.encode(header=True))
        return response_class.decode(self.send(body), version=message.version, header=True)

    def send(self, body: bytes) -> bytes:
        """One request frame out, its response body back."""
        self.sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", self._recv_exact(4))
        return self._recv_exact(size)

    def login(self, user: str, password: str) -> Any:
        """SaslHandshake and SaslAuthenticate (PLAIN); the first answer with an error, or the
        SaslAuthenticate answer."""
        handshake = self.request(
            SaslHandshakeRequest(mechanism="PLAIN", version=1), SaslHandshakeResponse
        )
        if handshake.error_code != 0:
            return handshake
        token = b"\x00" + user.encode() + b"\x00" + password.encode()
        return self.request(
            SaslAuthenticateRequest(auth_bytes=token, version=2), SaslAuthenticateResponse
        )


def raw_as(rig: Rig, user: str) -> RawConnection:
    conn = RawConnection(rig)
    answer = conn.login(user, USERS[user])
    assert answer.error_code == 0, answer
    return conn


def produce_body(topic: str, batch: bytes, correlation_id: int) -> bytes:
    request = produce_request_with(PRODUCE_VERSION, [(topic, [(0, batch)])])
    request.with_header(correlation_id=correlation_id, client_id="raw")
    return bytes(request.encode(header=True))


def partition_answer(body: bytes) -> Any:
    ((_, answer),) = produce_answers(decode_produce_response(PRODUCE_VERSION, body))
    return answer


def events(rig: Rig, msg: str) -> list[dict[str, Any]]:
    import json

    found = []
    for line in rig.proxy.log().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("msg") == msg:
                found.append(event)
    return found


# -- the tests ----------------------------------------------------------------------------------


def test_readyz_with_a_broker_that_requires_sasl_and_no_credentials(rig: Rig) -> None:
    # ApiVersions is answered before authentication: the probe needs no credentials.
    for proxy in (rig.proxy, rig.tls_proxy):
        url = f"http://127.0.0.1:{proxy.metrics_port}/readyz"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert (resp.status, resp.read().decode()) == (200, "ready\n")


# -- TLS + SASL end to end: clients -> SASL_SSL -> proxy -> SASL_SSL -> broker -------------------


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_kafka_python_produces_and_reads_back(rig: Rig, topic_name: str, mechanism: str) -> None:
    values = clients.payloads(50, "kp")
    acked = clients.kafka_python_produce(
        rig.tls.bootstrap, topic_name, values, **kafka_python_config(rig.tls, mechanism, "alice")
    )
    assert acked == 50
    produced_once(rig.tls, topic_name, values, mechanism)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_confluent_kafka_produces_and_reads_back(rig: Rig, topic_name: str, mechanism: str) -> None:
    values = clients.payloads(50, "ck")
    acked, errors = clients.confluent_produce(
        rig.tls.bootstrap, topic_name, values, **confluent_config(rig.tls, mechanism, "alice")
    )
    assert (acked, errors) == (50, [])
    produced_once(rig.tls, topic_name, values, mechanism)


@pytest.mark.java
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_java_producer_produces_and_reads_back(rig: Rig, topic_name: str, mechanism: str) -> None:
    result = verifiable_producer(
        rig.tls.bootstrap,
        topic_name,
        50,
        producer_config={**java_config(rig.tls, mechanism, "alice"), "linger.ms": 5},
        timeout=120,
    )
    assert len(result.acked) == 50, result.failed[:3]
    values = [str(i).encode() for i in range(50)]  # VerifiableProducer's values
    produced_once(rig.tls, topic_name, values, mechanism)


def test_wrong_password_gets_the_brokers_error_one_line_and_a_count(rig: Rig) -> None:
    before = rig.proxy.metric(
        "idemproxy_sasl_authentication_failures_total",
        side="client",
        reason="sasl_authentication_failed",
    )
    seen = len(events(rig, FAILED_LINE))
    conn = RawConnection(rig)
    try:
        answer = conn.login("alice", "not-her-password")
    finally:
        conn.close()
    assert answer.error_code == SASL_AUTHENTICATION_FAILED
    assert "Authentication failed" in (answer.error_message or "")
    after = rig.proxy.metric(
        "idemproxy_sasl_authentication_failures_total",
        side="client",
        reason="sasl_authentication_failed",
    )
    assert after == before + 1
    deadline = time.monotonic() + 10
    while len(events(rig, FAILED_LINE)) == seen and time.monotonic() < deadline:
        time.sleep(0.05)
    new = events(rig, FAILED_LINE)[seen:]
    assert len(new) == 1, new
    assert new[0]["principal"] == "alice"
    assert "not-her-password" not in rig.proxy.log(), "the password is never logged"
    raw_as(rig, "alice").close()  # the proxy serves the next client
    assert rig.proxy.proc is not None
    assert rig.proxy.proc.poll() is None


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_lost_acks_over_tls_and_sasl_are_answered_by_the_proxy(
    rig: Rig, topic_name: str, mechanism: str
) -> None:
    duplicates = rig.proxy.metric("idemproxy_produce_batches_total", result="duplicate")
    dropped = rig.relay.stats.acks_dropped
    values = clients.payloads(100, f"lost-{mechanism}")
    rig.relay.drop_next_acks(2)
    acked = clients.kafka_python_produce(
        bootstrap(rig),
        topic_name,
        values,
        batch_size=256,
        **kafka_python_config(rig.plain, mechanism, "alice"),
    )
    assert rig.relay.stats.acks_dropped == dropped + 2
    assert acked == 100
    produced_once(rig.plain, topic_name, values, mechanism)
    answered = rig.proxy.metric("idemproxy_produce_batches_total", result="duplicate") - duplicates
    assert answered >= 1, "the retries of the lost acks were answered by the proxy"


def test_another_principal_replaying_an_acknowledged_batch_gets_the_brokers_refusal(
    rig: Rig, topic_name: str
) -> None:
    rig.cluster.create_topic(topic_name)
    alice = raw_as(rig, "alice")
    try:
        init = alice.request(
            InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60000, version=4),
            InitProducerIdResponse,
        )
        assert init.error_code == 0
        # Recent timestamps: the broker expires a producer idle past its last batch's timestamp.
        now = int(time.time() * 1000)
        batch = idempotent_batch(init.producer_id, init.producer_epoch, 0, records=3, timestamp=now)
        body = produce_body(topic_name, batch, 100)
        first = partition_answer(alice.send(body))
        assert first.error_code == 0
    finally:
        alice.close()

    def duplicates() -> float:
        return rig.proxy.metric("idemproxy_produce_batches_total", result="duplicate")

    # Bob replays alice's exact request bytes: the broker refuses him (no WRITE on the topic).
    before = duplicates()
    bob = raw_as(rig, "bob")
    try:
        refused = partition_answer(bob.send(body))
    finally:
        bob.close()
    assert refused.error_code == TOPIC_AUTHORIZATION_FAILED
    assert duplicates() == before, "bob was not answered by the proxy"

    # Alice replaying the same bytes is answered by the proxy (so the test could fail).
    again = raw_as(rig, "alice")
    try:
        replayed = partition_answer(again.send(body))
    finally:
        again.close()
    assert (replayed.error_code, replayed.base_offset) == (0, first.base_offset)
    assert duplicates() == before + 1, "alice's replay was answered by the proxy"


def test_reauthentication_on_an_open_connection_keeps_the_principal(
    rig: Rig, topic_name: str
) -> None:
    """KIP-368: a client re-authenticates on its open connection (SaslHandshake again); the
    proxy keeps answering it as the same principal; a change of principal is the broker's to
    refuse."""
    rig.cluster.create_topic(topic_name)
    conn = raw_as(rig, "alice")
    try:
        init = conn.request(
            InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60000, version=4),
            InitProducerIdResponse,
        )
        now = int(time.time() * 1000)
        batch = idempotent_batch(init.producer_id, init.producer_epoch, 0, timestamp=now)
        body = produce_body(topic_name, batch, 100)
        first = partition_answer(conn.send(body))
        assert first.error_code == 0

        again = conn.login("alice", USERS["alice"])
        assert again.error_code == 0, again
        duplicates = rig.proxy.metric("idemproxy_produce_batches_total", result="duplicate")
        replayed = partition_answer(conn.send(body))
        assert (replayed.error_code, replayed.base_offset) == (0, first.base_offset)
        after = rig.proxy.metric("idemproxy_produce_batches_total", result="duplicate")
        assert after == duplicates + 1, "answered by the proxy after re-authentication"

        try:
            changed = conn.login("bob", USERS["bob"]).error_code
        except ConnectionError:
            changed = -1  # closed by the broker
        assert changed != 0, "the broker refuses a change of principal"
    finally:
        conn.close()


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed")
def test_sasl_failures_on_the_dashboard_and_their_alert_on_a_real_prometheus(rig: Rig) -> None:
    """A wrong password through the proxy: the dashboard's SASL panel shows it by side and
    reason, and IdemproxySaslAuthenticationFailing fires (deploy/ on a real Prometheus)."""
    from integration.test_prometheus import JOB, PrometheusServer
    from tests.deploy.artifacts import ALERTS, dashboard_queries, load_dashboard, substitute

    target = f"127.0.0.1:{rig.proxy.metrics_port}"
    prometheus = PrometheusServer([target], [ALERTS]).start()
    try:
        # A first scrape before the failure, so the panel's increase() sees it happen.
        assert wait_until(lambda: prometheus.value(f'up{{job="{JOB}"}}') == 1)
        conn = RawConnection(rig)
        try:
            assert conn.login("bob", "guessed").error_code == SASL_AUTHENTICATION_FAILED
        finally:
            conn.close()

        (panel,) = [
            q
            for q in dashboard_queries(load_dashboard())
            if q.panel == "SASL authentication failures by side and reason"
        ]
        expr = substitute(panel.expr, {"job": JOB, "instance": target, "__rate_interval": "2m"})

        def failures() -> dict[tuple[str, str], float]:
            rows = prometheus.query(expr)["data"]["result"]
            return {
                (r["metric"]["side"], r["metric"]["reason"]): float(r["value"][1]) for r in rows
            }

        assert wait_until(lambda: failures().get(("client", "sasl_authentication_failed"), 0) > 0)
        shown = failures()
        assert len(shown) == 8, "every side and reason is a series, at 0 until it happens"
        assert shown[("upstream", "sasl_authentication_failed")] == 0

        def firing() -> list[dict[str, str]]:
            alerts = prometheus.api("alerts")["data"]["alerts"]
            return [
                a["labels"]
                for a in alerts
                if a["state"] == "firing"
                and a["labels"]["alertname"] == "IdemproxySaslAuthenticationFailing"
            ]

        assert wait_until(lambda: bool(firing()))
        (labels,) = firing()
        assert (labels["side"], labels["reason"]) == ("client", "sasl_authentication_failed")
    finally:
        prometheus.stop()


def wait_until(check: Any, timeout: float = 30) -> bool:
    """Poll check() until it is true (True) or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_sasl_handshake_v0_is_refused_with_one_line(rig: Rig) -> None:
    """Raw SASL tokens without Kafka headers follow a v0 handshake: the proxy closes the
    connection with one log line rather than forward what it cannot frame."""
    before = rig.proxy.log().count("SaslHandshake v0")
    conn = RawConnection(rig)
    try:
        with pytest.raises(ConnectionError):
            conn.request(SaslHandshakeRequest(mechanism="PLAIN", version=0), SaslHandshakeResponse)
    finally:
        conn.close()
    assert wait_until(lambda: rig.proxy.log().count("SaslHandshake v0") == before + 1)
    raw_as(rig, "alice").close()  # the proxy serves the next client


def test_lost_acks_of_librdkafka_over_tls_and_sasl_are_answered_by_the_proxy(
    rig: Rig, topic_name: str
) -> None:
    duplicates = rig.proxy.metric("idemproxy_produce_batches_total", result="duplicate")
    dropped = rig.relay.stats.acks_dropped
    values = clients.payloads(100, "lost-librdkafka")
    rig.relay.drop_next_acks(2)
    acked, errors = clients.confluent_produce(
        bootstrap(rig),
        topic_name,
        values,
        **confluent_config(rig.plain, "SCRAM-SHA-512", "alice"),
        **{"batch.num.messages": 10},
    )
    assert rig.relay.stats.acks_dropped == dropped + 2
    assert (acked, errors) == (100, [])
    produced_once(rig.plain, topic_name, values, "SCRAM-SHA-512")
    answered = rig.proxy.metric("idemproxy_produce_batches_total", result="duplicate") - duplicates
    assert answered >= 1, "the retries of the lost acks were answered by the proxy"
