"""The sidecar's own SASL in a session: nothing goes up before it, re-authentication slotted
into the connection's request order, a client's own SASL answered as a listener without SASL.

Playbooks without sockets: the session's upstream frames are answered by tests.wire.sasl_broker.
"""

from __future__ import annotations

from typing import Any

import pytest
from kafka.protocol.metadata import MetadataRequest, MetadataResponse
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)

from proxy.errors import UnsupportedVersion
from proxy.idempotence.coordinator import ProduceCoordinator
from proxy.idempotence.engine import IdempotenceEngine
from proxy.routing.session import Output, Session, Shared
from proxy.routing.upstream_sasl import refused_api_versions
from proxy.wire.codec import decode_response
from proxy.wire.frames import FrameDecoder, frame
from proxy.wire.headers import RequestHeader, peek_correlation_id
from proxy.wire.sasl_client import SaslAuthenticationFailed, SaslCredentials
from tests.routing._support import (
    client_frames,
    encode_request,
    encode_response,
    make_directory,
    upstream_frames,
)
from tests.wire.sasl_broker import FakeBroker, header_of

LIFETIME_MS = 10_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def sidecar_session(
    mechanism: str = "SCRAM-SHA-512", password: str = "s3cret"
) -> tuple[Session, Clock]:
    clock = Clock()
    directory, _ = make_directory()
    shared = Shared(
        directory,
        ProduceCoordinator(IdempotenceEngine(), clock_ms=clock, policy="pass"),
        upstream_sasl=SaslCredentials(mechanism, "alice", password),
    )
    return Session(shared), clock


def metadata_request(correlation_id: int) -> bytes:
    return encode_request(MetadataRequest[1](topics=[]), correlation_id)


def metadata_response(correlation_id: int) -> bytes:
    response: Any = MetadataResponse[1](brokers=[], controller_id=-1, topics=[])
    return encode_response(response, correlation_id)


def authenticate(session: Session, broker: FakeBroker, out: Output) -> Output:
    """Answer the session's SASL frames until it sends something else (or nothing)."""
    frames = upstream_frames(out)
    while frames and header_of(frames[0])[2] < -(2**29):
        assert len(frames) == 1, "the SASL exchange goes one request at a time"
        out = session.receive_upstream(frame(broker.answer(frames[0])))
        frames = upstream_frames(out)
    return out


def test_nothing_goes_up_before_the_sidecar_has_authenticated() -> None:
    session, _ = sidecar_session()
    broker = FakeBroker(lifetime_ms=LIFETIME_MS)
    early = session.receive_client(frame(metadata_request(7)))
    assert early.upstream == []
    assert not session.upstream_ready
    first = session.upstream_connected()
    assert [header_of(b)[0] for b in upstream_frames(first)] == [18]  # ApiVersions v0
    released = authenticate(session, broker, first)
    assert [(k, v) for k, v, _ in broker.seen] == [(18, 0), (17, 1), (36, 2), (36, 2)]
    assert upstream_frames(released) == [metadata_request(7)]
    assert session.upstream_ready
    answered = session.receive_upstream(frame(metadata_response(7)))
    (body,) = client_frames(answered)
    assert peek_correlation_id(body) == 7
    assert session.upstream_sasl is not None
    assert session.upstream_sasl.authentications == 1


def test_the_connection_is_the_configured_users_once_connected() -> None:
    session, _ = sidecar_session()
    session.upstream_connected()
    assert session.principal == "alice"


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_each_mechanism_authenticates_the_connection(mechanism: str) -> None:
    session, _ = sidecar_session(mechanism)
    broker = FakeBroker()
    session.receive_client(frame(metadata_request(1)))
    released = authenticate(session, broker, session.upstream_connected())
    assert upstream_frames(released) == [metadata_request(1)]
    assert broker.mechanism == mechanism


def test_a_refused_password_fails_the_session() -> None:
    session, _ = sidecar_session(password="wrong")
    broker = FakeBroker(password="right")
    with pytest.raises(SaslAuthenticationFailed) as failed:
        authenticate(session, broker, session.upstream_connected())
    assert failed.value.kind == "sasl_authentication_failed"


def test_without_a_session_lifetime_there_is_no_reauthentication() -> None:
    session, _ = sidecar_session()
    authenticate(session, FakeBroker(lifetime_ms=0), session.upstream_connected())
    assert session.next_deadline() is None


def test_reauthentication_is_due_at_85_to_95_percent_of_the_lifetime() -> None:
    session, clock = sidecar_session()
    authenticate(session, FakeBroker(lifetime_ms=LIFETIME_MS), session.upstream_connected())
    deadline = session.next_deadline()
    assert deadline is not None
    assert clock.now + 8_500 <= deadline <= clock.now + 9_500


def test_reauthentication_is_slotted_after_requests_in_flight_and_holds_later_ones() -> None:
    session, clock = sidecar_session()
    broker = FakeBroker(lifetime_ms=LIFETIME_MS)
    authenticate(session, broker, session.upstream_connected())
    sent = session.receive_client(frame(metadata_request(1)))
    assert upstream_frames(sent) == [metadata_request(1)]

    deadline = session.next_deadline()
    assert deadline is not None
    clock.now = deadline
    reauth = session.on_timer(clock.now)
    (handshake,) = upstream_frames(reauth)
    assert header_of(handshake)[:2] == (17, 1)
    assert session.next_deadline() is None  # in progress

    held = session.receive_client(frame(metadata_request(2)))
    assert held.upstream == [], "nothing may follow a SaslHandshake but its exchange"

    # The broker answers in order: request 1 first, then the handshake.
    first = session.receive_upstream(frame(metadata_response(1)))
    assert [peek_correlation_id(b) for b in client_frames(first)] == [1]
    assert first.upstream == []
    seen = len(broker.seen)
    released = authenticate(session, broker, reauth)
    assert [(k, v) for k, v, _ in broker.seen[seen:]] == [(17, 1), (36, 2), (36, 2)]
    assert upstream_frames(released) == [metadata_request(2)]
    second = session.receive_upstream(frame(metadata_response(2)))
    assert [peek_correlation_id(b) for b in client_frames(second)] == [2]
    assert session.upstream_sasl is not None
    assert session.upstream_sasl.authentications == 2
    again = session.next_deadline()
    assert again is not None
    assert again > deadline


def test_a_refused_reauthentication_fails_the_session() -> None:
    session, clock = sidecar_session()
    broker = FakeBroker(lifetime_ms=LIFETIME_MS)
    authenticate(session, broker, session.upstream_connected())
    broker.password = "rotated"
    deadline = session.next_deadline()
    assert deadline is not None
    with pytest.raises(SaslAuthenticationFailed):
        authenticate(session, broker, session.on_timer(deadline))


def test_the_timer_before_the_deadline_does_nothing() -> None:
    session, _ = sidecar_session()
    authenticate(session, FakeBroker(lifetime_ms=LIFETIME_MS), session.upstream_connected())
    deadline = session.next_deadline()
    assert deadline is not None
    early = session.on_timer(deadline - 1)
    assert early.upstream == []
    assert session.next_deadline() == deadline


@pytest.mark.parametrize("version", [0, 1])
def test_a_clients_sasl_handshake_is_answered_as_by_a_listener_without_sasl(version: int) -> None:
    session, _ = sidecar_session()
    request = encode_request(SaslHandshakeRequest[version](mechanism="PLAIN"), 5)
    out = session.receive_client(frame(request))
    assert out.upstream == []
    (body,) = client_frames(out)
    answer = SaslHandshakeResponse[version].decode(body, header=True)
    assert answer.error_code == 34  # ILLEGAL_SASL_STATE, KafkaApis.handleSaslHandshakeRequest
    assert answer.mechanisms == []
    assert peek_correlation_id(body) == 5


@pytest.mark.parametrize("version", [0, 1, 2])
def test_a_clients_sasl_authenticate_is_answered_illegal_sasl_state(version: int) -> None:
    session, _ = sidecar_session()
    request = encode_request(SaslAuthenticateRequest[version](auth_bytes=b"x"), 6)
    out = session.receive_client(frame(request))
    assert out.upstream == []
    (body,) = client_frames(out)
    answer = SaslAuthenticateResponse[version].decode(body, header=True)
    assert answer.error_code == 34
    assert "--upstream-sasl-mechanism" in answer.error_message


def test_a_sasl_handshake_above_the_known_versions_is_refused() -> None:
    session, _ = sidecar_session()
    request = encode_request(SaslHandshakeRequest[1](mechanism="PLAIN"), 5)
    bumped = request[:2] + b"\x00\x05" + request[4:]
    with pytest.raises(UnsupportedVersion):
        session.receive_client(frame(bumped))


def test_without_sidecar_sasl_the_session_sends_nothing_of_its_own() -> None:
    directory, _ = make_directory()
    session = Session(directory)
    assert session.upstream_connected().upstream == []
    assert session.upstream_ready
    assert session.principal is None
    request = encode_request(SaslHandshakeRequest[1](mechanism="PLAIN"), 5)
    assert session.receive_client(frame(request)).upstream == [frame(request)]


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 9])
def test_after_a_failed_sasl_apiversions_is_answered_sasl_authentication_failed(
    version: int,
) -> None:
    answer = refused_api_versions(RequestHeader(18, version, 41))
    assert answer is not None
    (body,) = FrameDecoder().feed(answer)
    assert peek_correlation_id(body) == 41
    decoded = decode_response(18, 0, body)  # error bodies are v0, as the broker's own
    assert (decoded.error_code, decoded.api_keys) == (58, [])


def test_after_a_failed_sasl_other_requests_get_no_answer() -> None:
    assert refused_api_versions(RequestHeader(3, 12, 41)) is None
