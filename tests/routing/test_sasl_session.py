"""SASL passthrough in the session: SaslHandshake/SaslAuthenticate forwarded byte for byte, the
principal learned from them, failures counted; and no local produce answer across principals.

Playbook style: the client sends X -> the upstream receives X; the broker replies Y -> the
client receives Y; what changes is `Session.principal` and what the proxy answers itself.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)

from proxy.errors import UnsupportedVersion
from proxy.idempotence.decisions import UNKNOWN_PRINCIPAL
from proxy.routing.session import Session
from proxy.wire.error_codes import NONE
from proxy.wire.frames import frame
from proxy.wire.sasl import oauthbearer_client_first, scram_client_first

from ._support import (
    client_frames,
    encode_request,
    encode_response,
    exchange,
    idempotent_batch,
    make_directory,
    produce_request_with,
    produce_response_with,
)
from .test_produce_session import PID, Conn, Proxy, V, acknowledge, failed, local_answer, one

SASL_AUTHENTICATION_FAILED = 58
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
TOPIC_AUTHORIZATION_FAILED = 29


class SaslCounts:
    """An Observer that counts SASL failures by reason."""

    def __init__(self) -> None:
        self.failures: Counter[str] = Counter()

    def request(self, api_key: int, size: int) -> None:
        pass

    def response(self, api_key: int, size: int, started: float) -> None:
        pass

    def upstream(self, api_key: int, started: float) -> None:
        pass

    def sasl_failure(self, reason: str) -> None:
        self.failures[reason] += 1


def new_session() -> tuple[Session, SaslCounts]:
    counts = SaslCounts()
    directory, _ = make_directory()
    return Session(directory, observer=counts), counts


def handshake(session: Session, mechanism: str, *, error: int = NONE, cid: int = 10) -> None:
    request = encode_request(SaslHandshakeRequest(mechanism=mechanism, version=1), cid)
    mechanisms = ["PLAIN", "SCRAM-SHA-512", "OAUTHBEARER"]
    reply = encode_response(
        SaslHandshakeResponse(error_code=error, mechanisms=mechanisms, version=1), cid
    )
    assert exchange(session, request, reply) == reply


def authenticate_step(
    session: Session,
    token: bytes,
    *,
    error: int = NONE,
    answer: bytes = b"",
    cid: int = 11,
    version: int = 2,
    lifetime_ms: int = 0,
) -> None:
    """One SaslAuthenticate round trip, checked byte for byte both ways."""
    request = encode_request(SaslAuthenticateRequest(auth_bytes=token, version=version), cid)
    reply = encode_response(
        SaslAuthenticateResponse(
            error_code=error,
            error_message="Authentication failed: Invalid username or password" if error else None,
            auth_bytes=answer,
            session_lifetime_ms=lifetime_ms,
            version=version,
        ),
        cid,
    )
    assert exchange(session, request, reply) == reply


def login(session: Session, user: str, *, cid: int = 10) -> None:
    """A successful PLAIN exchange as `user`."""
    handshake(session, "PLAIN", cid=cid)
    authenticate_step(session, b"\x00" + user.encode() + b"\x00secret", cid=cid + 1)


# -- the principal ------------------------------------------------------------------------------


def test_plain_principal_is_set_once_the_broker_accepts() -> None:
    session, counts = new_session()
    assert session.principal is None
    handshake(session, "PLAIN")
    assert session.principal == UNKNOWN_PRINCIPAL, "authenticating: nobody yet"
    request = encode_request(SaslAuthenticateRequest(auth_bytes=b"\x00alice\x00pw", version=2), 11)
    sent = session.receive_client(frame(request))
    assert sent.upstream == [frame(request)]
    assert session.principal == UNKNOWN_PRINCIPAL, "the claim counts once the broker agrees"
    reply = encode_response(
        SaslAuthenticateResponse(
            error_code=0, error_message=None, auth_bytes=b"", session_lifetime_ms=0, version=2
        ),
        11,
    )
    got = session.receive_upstream(frame(reply))
    assert client_frames(got) == [reply]
    assert session.principal == "alice"
    assert not counts.failures


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_principal_is_set_by_the_server_final_message(mechanism: str) -> None:
    session, _ = new_session()
    handshake(session, mechanism)
    first = scram_client_first("alice", "nonce")
    authenticate_step(session, first, answer=b"r=nonceSERVER,s=c2FsdA==,i=4096")
    assert session.principal == UNKNOWN_PRINCIPAL, "server-first: the exchange is not over"
    authenticate_step(session, b"c=biws,r=nonceSERVER,p=proof", answer=b"v=sig", cid=12)
    assert session.principal == "alice"


def test_oauthbearer_principal_is_the_token_subject() -> None:
    session, _ = new_session()
    handshake(session, "OAUTHBEARER")
    token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJib2IifQ."  # {"alg":"none"}.{"sub":"bob"}
    authenticate_step(session, oauthbearer_client_first(token))
    assert session.principal == "bob"


def test_oauthbearer_error_challenge_then_failure_leaves_nobody() -> None:
    session, counts = new_session()
    handshake(session, "OAUTHBEARER")
    token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJib2IifQ."
    challenge = b'{"status":"invalid_token"}'
    authenticate_step(session, oauthbearer_client_first(token), answer=challenge)
    assert session.principal == UNKNOWN_PRINCIPAL
    authenticate_step(session, b"\x01", error=SASL_AUTHENTICATION_FAILED, cid=12)
    assert session.principal == UNKNOWN_PRINCIPAL
    assert counts.failures == {"sasl_authentication_failed": 1}


def test_a_mechanism_the_proxy_cannot_read_authenticates_nobody_it_can_name() -> None:
    session, counts = new_session()
    handshake(session, "GSSAPI")
    authenticate_step(session, b"\x60\x82kerberos-ticket")
    authenticate_step(session, b"", cid=12)
    assert session.principal == UNKNOWN_PRINCIPAL
    assert not counts.failures


def test_an_unreadable_token_of_a_known_mechanism_names_nobody() -> None:
    session, _ = new_session()
    handshake(session, "PLAIN")
    authenticate_step(session, b"no-separators")  # the broker's to refuse; here it accepts
    assert session.principal == UNKNOWN_PRINCIPAL


# -- failures -----------------------------------------------------------------------------------


def test_wrong_password_is_counted_logged_once_and_passed_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session, counts = new_session()
    session.peer = "10.0.0.7:51000"
    handshake(session, "PLAIN")
    with caplog.at_level(logging.INFO, logger="idemproxy.sasl"):
        authenticate_step(session, b"\x00alice\x00wrong", error=SASL_AUTHENTICATION_FAILED)
    assert counts.failures == {"sasl_authentication_failed": 1}
    assert session.principal == UNKNOWN_PRINCIPAL
    (record,) = caplog.records
    assert record.getMessage() == "client SASL authentication failed"
    assert record.peer == "10.0.0.7:51000"
    assert record.principal == "alice"
    assert record.kafka_error == SASL_AUTHENTICATION_FAILED
    assert "wrong" not in str(record.__dict__), "the password is never logged"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (UNSUPPORTED_SASL_MECHANISM, "unsupported_sasl_mechanism"),
        (ILLEGAL_SASL_STATE, "illegal_sasl_state"),
        (42, "other"),
    ],
)
def test_handshake_failures_are_counted_by_reason(error: int, reason: str) -> None:
    session, counts = new_session()
    handshake(session, "PLAIN", error=error)
    assert counts.failures == {reason: 1}
    assert session.principal == UNKNOWN_PRINCIPAL


def test_handshake_v0_is_refused_before_anything_is_forwarded() -> None:
    # Raw SASL tokens without Kafka headers would follow a v0 handshake.
    session, _ = new_session()
    request = encode_request(SaslHandshakeRequest(mechanism="PLAIN", version=0), 10)
    with pytest.raises(UnsupportedVersion, match="SaslHandshake v0"):
        session.receive_client(frame(request))


def test_sasl_authenticate_above_the_offered_version_is_refused() -> None:
    session, _ = new_session()
    handshake(session, "PLAIN")
    body = bytearray(encode_request(SaslAuthenticateRequest(auth_bytes=b"x", version=2), 11))
    body[2:4] = (3).to_bytes(2, "big")
    with pytest.raises(UnsupportedVersion):
        session.receive_client(frame(bytes(body)))


# -- re-authentication (KIP-368) ----------------------------------------------------------------


def test_reauthentication_keeps_the_principal_throughout() -> None:
    session, _ = new_session()
    login(session, "alice")
    assert session.principal == "alice"
    handshake(session, "PLAIN", cid=20)
    assert session.principal == "alice", "still authenticated as alice while re-authenticating"
    authenticate_step(session, b"\x00alice\x00secret", cid=21, lifetime_ms=60_000)
    assert session.principal == "alice"


def test_reauthentication_as_someone_else_leaves_nobody() -> None:
    # The broker refuses a principal change; should one ever be accepted, nobody is known.
    session, _ = new_session()
    login(session, "alice")
    login(session, "mallory", cid=20)
    assert session.principal == UNKNOWN_PRINCIPAL
    login(session, "alice", cid=30)
    assert session.principal == UNKNOWN_PRINCIPAL, "for the rest of the connection"


def test_failed_reauthentication_leaves_nobody() -> None:
    session, counts = new_session()
    login(session, "alice")
    handshake(session, "PLAIN", cid=20)
    authenticate_step(session, b"\x00alice\x00old", error=SASL_AUTHENTICATION_FAILED, cid=21)
    assert session.principal == UNKNOWN_PRINCIPAL
    assert counts.failures["sasl_authentication_failed"] == 1


# -- no local answer across principals -----------------------------------------------------------


def results(proxy: Proxy) -> list[str]:
    return [result for result, _ in proxy.counts.batches]


def connect_as(proxy: Proxy, user: str | None) -> Conn:
    conn = proxy.connect()
    if user is not None:
        login(conn.session, user, cid=500)
    return conn


def replay(conn: Conn, batch: bytes, correlation_id: int) -> tuple[bytes, Any]:
    return conn.send(produce_request_with(V, one("orders", 0, batch)), correlation_id)


def test_a_duplicate_is_answered_locally_only_to_the_principal_that_wrote_it() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0, records=3)
    acknowledge(connect_as(proxy, "alice"), batch, 100)

    # Bob replays alice's exact request: the broker decides (it refuses bob: no WRITE).
    bob = connect_as(proxy, "bob")
    body, sent = replay(bob, batch, 7)
    assert sent.upstream == [frame(body)]
    assert sent.client == []
    assert results(proxy) == ["forwarded", "forwarded"]

    # A connection whose principal the proxy cannot name is not anyone.
    stranger = proxy.connect()
    handshake(stranger.session, "GSSAPI", cid=500)
    authenticate_step(stranger.session, b"ticket", cid=501)
    body, sent = replay(stranger, batch, 8)
    assert sent.upstream == [frame(body)]

    # Alice's retry on another connection is answered from memory (the test can fail).
    (answer,) = local_answer(replay(connect_as(proxy, "alice"), batch, 9)[1], V, 9)
    assert (answer[1].error_code, answer[1].base_offset) == (NONE, 100)
    assert results(proxy).count("duplicate") == 1


def test_an_unauthenticated_retry_is_not_answered_from_an_authenticated_write() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    acknowledge(connect_as(proxy, "alice"), batch, 100)
    body, sent = replay(connect_as(proxy, None), batch, 7)
    assert sent.upstream == [frame(body)]


def test_plaintext_connections_answer_each_other_as_before() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    acknowledge(connect_as(proxy, None), batch, 100)
    (answer,) = local_answer(replay(connect_as(proxy, None), batch, 7)[1], V, 7)
    assert answer[1].base_offset == 100


def test_a_retry_waits_for_an_identical_batch_in_flight_only_of_its_own_principal() -> None:
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    first, sent = replay(connect_as(proxy, "alice"), batch, 1)
    assert sent.upstream == [frame(first)]

    _, held = replay(connect_as(proxy, "alice"), batch, 2)
    assert held.upstream == [], "alice's copy waits for the original"
    assert held.client == []
    assert proxy.coordinator.waiting == 1

    bob_body, bob_sent = replay(connect_as(proxy, "bob"), batch, 3)
    assert bob_sent.upstream == [frame(bob_body)], "bob's copy goes to the broker, unheld"
    assert proxy.coordinator.waiting == 1


def test_state_written_by_two_principals_answers_neither() -> None:
    proxy = Proxy()
    first, second = idempotent_batch(PID, 0, 0), idempotent_batch(PID, 0, 1)
    acknowledge(connect_as(proxy, "alice"), first, 100)
    acknowledge(connect_as(proxy, "bob"), second, 101, correlation_id=2)
    for user in ("alice", "bob"):
        body, sent = replay(connect_as(proxy, user), first, 9)
        assert sent.upstream == [frame(body)], user


def test_a_refused_replay_leaves_the_writers_memory_intact() -> None:
    # The broker refuses bob before the append (TOPIC_AUTHORIZATION_FAILED): nothing changed.
    proxy = Proxy()
    batch = idempotent_batch(PID, 0, 0)
    acknowledge(connect_as(proxy, "alice"), batch, 100)
    bob = connect_as(proxy, "bob")
    replay(bob, batch, 7)
    refusal = produce_response_with(V, [("orders", [failed(0, TOPIC_AUTHORIZATION_FAILED)])])
    reply, got = bob.reply(refusal, 7)
    assert client_frames(got) == [reply], "bob gets the broker's refusal"
    (answer,) = local_answer(replay(connect_as(proxy, "alice"), batch, 8)[1], V, 8)
    assert answer[1].base_offset == 100
