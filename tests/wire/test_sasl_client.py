"""The sidecar's SASL client state machine, against a broker side computed in the test
(tests.wire.sasl_broker: SCRAM and PLAIN arithmetic, not Kafka)."""

from __future__ import annotations

import base64

import pytest
from kafka.protocol.metadata.api_versions import ApiVersionsResponse
from kafka.protocol.sasl import SaslAuthenticateResponse, SaslHandshakeResponse

from proxy.wire.sasl_client import (
    Request,
    SaslAuthenticationFailed,
    SaslClient,
    SaslCredentials,
    failure_reason,
)
from tests.wire.sasl_broker import FakeBroker, ids, respond


def run(client: SaslClient, broker: FakeBroker) -> None:
    request: Request | None = client.start()
    while request is not None:
        request = client.receive(broker.answer(request.body))


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("authenticate_max", [0, 1, 2])
def test_scram_exchange_authenticates_at_the_highest_common_version(
    mechanism: str, authenticate_max: int
) -> None:
    broker = FakeBroker(authenticate_max=authenticate_max, lifetime_ms=5000)
    client = SaslClient(SaslCredentials(mechanism, "alice", "s3cret"), ids())
    run(client, broker)
    assert client.authenticated
    assert [(k, v) for k, v, _ in broker.seen] == [
        (18, 0),
        (17, 1),
        (36, authenticate_max),
        (36, authenticate_max),
    ]
    assert [cid for _, _, cid in broker.seen] == [-1000, -1001, -1002, -1003]
    assert client.session_lifetime_ms == (5000 if authenticate_max >= 1 else 0)
    assert broker.tokens[0].startswith(b"n,,n=alice,r=")


def test_plain_sends_one_rfc4616_token() -> None:
    broker = FakeBroker(lifetime_ms=3_600_000)
    client = SaslClient(SaslCredentials("PLAIN", "key", "s3cret"), ids())
    run(client, broker)
    assert client.authenticated
    assert broker.tokens == [b"key\0key\0s3cret"]
    assert client.session_lifetime_ms == 3_600_000


def test_reauthentication_reuses_the_version_without_api_versions() -> None:
    broker = FakeBroker(lifetime_ms=5000)
    client = SaslClient(SaslCredentials("SCRAM-SHA-512", "alice", "s3cret"), ids(), 1)
    run(client, broker)
    assert client.authenticated
    assert [(k, v) for k, v, _ in broker.seen] == [(17, 1), (36, 1), (36, 1)]


def test_wrong_password_fails_with_the_brokers_message_and_never_the_password() -> None:
    broker = FakeBroker(password="right")
    client = SaslClient(SaslCredentials("SCRAM-SHA-512", "alice", "wrong-pw"), ids())
    with pytest.raises(SaslAuthenticationFailed) as failed:
        run(client, broker)
    assert failed.value.kind == "sasl_authentication_failed"
    assert failed.value.kafka_error == 58
    assert "Invalid credentials" in failed.value.reason
    assert "alice" in failed.value.reason
    assert "wrong-pw" not in failed.value.reason
    assert not client.authenticated


def test_plain_wrong_password_fails() -> None:
    client = SaslClient(SaslCredentials("PLAIN", "key", "nope"), ids())
    with pytest.raises(SaslAuthenticationFailed) as failed:
        run(client, FakeBroker(password="right"))
    assert failed.value.kind == "sasl_authentication_failed"


def test_mechanism_not_enabled_names_the_brokers_mechanisms() -> None:
    broker = FakeBroker(mechanisms=("PLAIN", "OAUTHBEARER"))
    client = SaslClient(SaslCredentials("SCRAM-SHA-256", "alice", "s3cret"), ids())
    with pytest.raises(SaslAuthenticationFailed) as failed:
        run(client, broker)
    assert failed.value.kind == "unsupported_sasl_mechanism"
    assert "SCRAM-SHA-256" in failed.value.reason
    assert "enabled: PLAIN, OAUTHBEARER" in failed.value.reason


def test_a_listener_without_sasl_answers_illegal_sasl_state() -> None:
    client = SaslClient(SaslCredentials("PLAIN", "key", "pw"), ids(), 1)
    request = client.start()
    answer = respond(SaslHandshakeResponse[1](error_code=34, mechanisms=[]), request.correlation_id)
    with pytest.raises(SaslAuthenticationFailed) as failed:
        client.receive(answer)
    assert failed.value.kind == "illegal_sasl_state"
    assert "without SASL" in failed.value.reason


def test_a_broker_without_sasl_authenticate_is_refused() -> None:
    client = SaslClient(SaslCredentials("PLAIN", "key", "pw"), ids())
    request = client.start()
    answer = respond(
        ApiVersionsResponse[0](
            error_code=0,
            api_keys=[ApiVersionsResponse.ApiVersion(api_key=17, min_version=0, max_version=0)],
        ),
        request.correlation_id,
    )
    with pytest.raises(SaslAuthenticationFailed) as failed:
        client.receive(answer)
    assert failed.value.kind == "other"
    assert "Kafka 1.0" in failed.value.reason


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\xff\xff", b"\xff\xff\xfc\x18\x00", b"\xff\xff\xfc\x18\x00\x00\x00\x07\x00\x01"],
    ids=["empty", "short", "truncated", "bad-array"],
)
def test_garbage_answers_fail_the_exchange(garbage: bytes) -> None:
    client = SaslClient(SaslCredentials("PLAIN", "key", "pw"), ids())
    client.start()
    with pytest.raises(SaslAuthenticationFailed) as failed:
        client.receive(garbage)
    assert failed.value.kind == "other"


def test_an_answer_to_another_correlation_id_fails() -> None:
    client = SaslClient(SaslCredentials("PLAIN", "key", "pw"), ids(), 1)
    request = client.start()
    answer = respond(SaslHandshakeResponse[1](error_code=0, mechanisms=["PLAIN"]), 7)
    assert request.correlation_id != 7
    with pytest.raises(SaslAuthenticationFailed, match="correlation id"):
        client.receive(answer)


def test_a_scram_server_signature_that_does_not_verify_fails() -> None:
    broker = FakeBroker()
    client = SaslClient(SaslCredentials("SCRAM-SHA-256", "alice", "s3cret"), ids(), 1)
    request = client.start()
    request = client.receive(broker.answer(request.body))  # handshake -> client-first
    assert request is not None
    request = client.receive(broker.answer(request.body))  # server-first -> client-final
    assert request is not None
    forged = respond(
        SaslAuthenticateResponse[1](
            error_code=0,
            error_message=None,
            auth_bytes=b"v=" + base64.b64encode(b"x" * 32),
            session_lifetime_ms=0,
        ),
        request.correlation_id,
    )
    with pytest.raises(SaslAuthenticationFailed, match="does not verify") as failed:
        client.receive(forged)
    assert failed.value.kind == "other"
    assert not client.authenticated


def test_a_plain_answer_with_bytes_does_not_authenticate() -> None:
    client = SaslClient(SaslCredentials("PLAIN", "key", "pw"), ids(), 1)
    request = client.start()
    request = client.receive(
        respond(
            SaslHandshakeResponse[1](error_code=0, mechanisms=["PLAIN"]), request.correlation_id
        )
    )
    assert request is not None
    answer = SaslAuthenticateResponse[1](
        error_code=0, error_message=None, auth_bytes=b"unexpected", session_lifetime_ms=0
    )
    with pytest.raises(SaslAuthenticationFailed, match="does not authenticate"):
        client.receive(respond(answer, request.correlation_id))


def test_a_response_with_nothing_pending_fails() -> None:
    client = SaslClient(SaslCredentials("PLAIN", "key", "pw"), ids(), 1)
    with pytest.raises(SaslAuthenticationFailed, match="no SASL request pending"):
        client.receive(b"\x00\x00\x00\x01")


def test_scram_names_are_escaped_as_rfc5802_saslnames() -> None:
    broker = FakeBroker()
    client = SaslClient(SaslCredentials("SCRAM-SHA-256", "a,b=c", "s3cret"), ids())
    run(client, broker)
    assert broker.tokens[0].startswith(b"n,,n=a=2Cb=3Dc,r=")


def test_the_salted_password_is_computed_once_per_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    import kafka.net.sasl.scram as scram

    calls: list[bytes] = []
    original = scram.hashlib.pbkdf2_hmac

    def counting(name: str, password: bytes, salt: bytes, iterations: int) -> bytes:
        calls.append(salt)
        return original(name, password, salt, iterations)

    monkeypatch.setattr(scram.hashlib, "pbkdf2_hmac", counting)
    credentials = SaslCredentials("SCRAM-SHA-512", "alice", "s3cret")
    for _ in range(3):
        client = SaslClient(credentials, ids())
        run(client, FakeBroker())
        assert client.authenticated
    # The broker's side (FakeBroker) salts on every exchange; the client's side once.
    assert len(calls) == 3 + 1


def test_credentials_never_show_the_password() -> None:
    credentials = SaslCredentials("SCRAM-SHA-512", "alice", "hunter2")
    assert "hunter2" not in repr(credentials)
    assert "hunter2" not in str(credentials)


def test_unknown_mechanisms_are_refused() -> None:
    with pytest.raises(ValueError, match="GSSAPI"):
        SaslCredentials("GSSAPI", "alice", "pw")


def test_failure_reasons_follow_the_kafka_error_codes() -> None:
    assert failure_reason(58) == "sasl_authentication_failed"
    assert failure_reason(33) == "unsupported_sasl_mechanism"
    assert failure_reason(34) == "illegal_sasl_state"
    assert failure_reason(35) == "other"
    assert failure_reason(None) == "other"
