"""proxy.wire.sasl: the principal each mechanism's first token names, and the broker's answers."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)

from proxy.wire import sasl
from proxy.wire.sasl import (
    AuthenticateAnswer,
    SaslError,
    oauthbearer_client_first,
    principal_of,
    scram_client_first,
)

NAMES = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1
).filter(lambda s: s.strip() != "")


def jwt(claims: dict[str, object], header: dict[str, object] | None = None) -> str:
    def part(value: object) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return f"{part(header or {'alg': 'none'})}.{part(claims)}."


# -- PLAIN --------------------------------------------------------------------------------------


def test_plain_principal_is_the_user() -> None:
    assert principal_of("PLAIN", b"\x00alice\x00alice-secret") == "alice"


def test_plain_principal_is_the_authorization_id_when_given() -> None:
    # PlainSaslServer authorises as authzid (and refuses one that is not the user).
    assert principal_of("PLAIN", b"alice\x00alice\x00pw") == "alice"
    assert sasl.plain_principal(b"admin\x00alice\x00pw") == "admin"


@pytest.mark.parametrize(
    "token", [b"", b"alice", b"\x00alice", b"a\x00b\x00c\x00d", b"\x00\x00pw", b"\x00\xff\x00pw"]
)
def test_malformed_plain_tokens_raise_sasl_error(token: bytes) -> None:
    with pytest.raises(SaslError):
        sasl.plain_principal(token)


@given(user=NAMES, password=st.binary().filter(lambda b: b"\x00" not in b))
def test_plain_round_trip(user: str, password: bytes) -> None:
    assert sasl.plain_principal(b"\x00" + user.encode() + b"\x00" + password) == user


# -- SCRAM --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_principal_is_the_n_user(mechanism: str) -> None:
    assert principal_of(mechanism, b"n,,n=alice,r=fyko+d2lbbFgONRv9qkxdawL") == "alice"


def test_scram_user_names_are_unescaped() -> None:
    assert sasl.scram_principal(b"n,,n=a=2Cb=3Dc,r=abc") == "a,b=c"


def test_scram_with_an_authzid_and_extensions() -> None:
    # Kafka's ScramExtensions (tokenauth=true for delegation tokens) follow the nonce.
    assert sasl.scram_principal(b"n,a=alice,n=alice,r=abc,tokenauth=true") == "alice"


@pytest.mark.parametrize(
    "token",
    [
        b"",
        b"n=alice,r=abc",  # no GS2 header
        b"x,,n=alice,r=abc",  # bad channel-binding flag
        b"n,,r=abc,n=alice",  # n= not first
        b"n,,n=alice",  # no nonce
        b"n,,n=,r=abc",  # empty name
        b"n,,n=a=2Xb,r=abc",  # bad escape
        b"n,,n=\xff,r=abc",  # not UTF-8
    ],
)
def test_malformed_scram_client_first_raises_sasl_error(token: bytes) -> None:
    with pytest.raises(SaslError):
        sasl.scram_principal(token)


@given(user=NAMES)
def test_scram_round_trip(user: str) -> None:
    assert sasl.scram_principal(scram_client_first(user)) == user


# -- OAUTHBEARER --------------------------------------------------------------------------------


def test_oauthbearer_principal_is_the_sub_claim() -> None:
    token = jwt({"sub": "alice", "exp": 2_000_000_000})
    first = f"n,,\x01host=broker\x01auth=Bearer {token}\x01\x01".encode()
    assert principal_of("OAUTHBEARER", first) == "alice"


def test_oauthbearer_with_an_authzid_in_the_gs2_header() -> None:
    token = jwt({"sub": "alice"})
    assert sasl.oauthbearer_principal(f"n,a=alice,\x01auth=Bearer {token}\x01\x01".encode()) == (
        "alice"
    )


@pytest.mark.parametrize(
    "first",
    [
        b"",
        b"n,,",
        b"n,,\x01\x01",  # no auth=
        b"n,,\x01auth=Basic abc\x01\x01",
        b"n,,\x01auth=Bearer \x01\x01",
        b"n,,\x01auth=Bearer not-a-jwt\x01\x01",
        b"n,,\x01auth=Bearer a.!!!.\x01\x01",
        ("n,,\x01auth=Bearer " + jwt({"scope": "x"}) + "\x01\x01").encode(),  # no sub
        ("n,,\x01auth=Bearer " + jwt({"sub": 7}) + "\x01\x01").encode(),  # sub not a string
        b"\x01auth=Bearer a.b.c\x01\x01",  # no GS2 header
    ],
)
def test_malformed_oauthbearer_responses_raise_sasl_error(first: bytes) -> None:
    with pytest.raises(SaslError):
        sasl.oauthbearer_principal(first)


@given(subject=NAMES)
def test_oauthbearer_round_trip(subject: str) -> None:
    assert sasl.oauthbearer_principal(oauthbearer_client_first(jwt({"sub": subject}))) == subject


# -- every mechanism ----------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["GSSAPI", "AWS_MSK_IAM", "plain"])
def test_other_mechanisms_name_nobody(mechanism: str) -> None:
    assert principal_of(mechanism, b"\x00alice\x00pw") is None


@given(mechanism=st.sampled_from(sorted(sasl.KNOWN_MECHANISMS)), token=st.binary(max_size=300))
def test_random_tokens_only_raise_sasl_error(mechanism: str, token: bytes) -> None:
    try:
        name = principal_of(mechanism, token)
    except SaslError:
        return
    assert isinstance(name, str)
    assert name


@given(token=st.text(max_size=200))
def test_random_text_tokens_only_raise_sasl_error(token: str) -> None:
    for mechanism in sasl.KNOWN_MECHANISMS:
        try:
            principal_of(mechanism, token.encode())
        except SaslError:
            pass


# -- completion ---------------------------------------------------------------------------------


def answer(error_code: int = 0, auth: bytes = b"") -> AuthenticateAnswer:
    return AuthenticateAnswer(error_code, None, auth, 0)


def test_plain_completes_on_the_first_error_free_answer() -> None:
    assert sasl.completes("PLAIN", 1, answer())
    assert not sasl.completes("PLAIN", 1, answer(58))


def test_scram_completes_only_with_the_server_final_message() -> None:
    assert not sasl.completes("SCRAM-SHA-512", 1, answer(auth=b"r=abc,s=salt,i=4096"))
    assert sasl.completes("SCRAM-SHA-512", 2, answer(auth=b"v=signature"))
    assert not sasl.completes("SCRAM-SHA-512", 2, answer(58, b""))
    # A server-final look-alike in the first answer does not end the exchange.
    assert not sasl.completes("SCRAM-SHA-256", 1, answer(auth=b"v=forged"))


def test_oauthbearer_completes_with_an_empty_answer_not_an_error_challenge() -> None:
    assert sasl.completes("OAUTHBEARER", 1, answer())
    assert not sasl.completes("OAUTHBEARER", 1, answer(auth=b'{"status":"invalid_token"}'))


def test_other_mechanisms_never_complete() -> None:
    assert not sasl.completes("GSSAPI", 3, answer())


# -- the messages -------------------------------------------------------------------------------


def _encode(message: object, correlation_id: int = 5) -> bytes:
    message.with_header(correlation_id=correlation_id)  # type: ignore[attr-defined]
    return bytes(message.encode(header=True))  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", [0, 1])
def test_handshake_request_and_response(version: int) -> None:
    body = _encode(SaslHandshakeRequest(mechanism="SCRAM-SHA-512", version=version))
    assert sasl.handshake_mechanism(version, body) == "SCRAM-SHA-512"
    reply = _encode(SaslHandshakeResponse(error_code=33, mechanisms=["PLAIN"], version=version))
    assert sasl.handshake_error(version, reply) == 33


@pytest.mark.parametrize("version", [0, 1, 2])
def test_authenticate_request_and_response(version: int) -> None:
    body = _encode(SaslAuthenticateRequest(auth_bytes=b"\x00alice\x00pw", version=version))
    assert sasl.authenticate_bytes(version, body) == b"\x00alice\x00pw"
    reply = _encode(
        SaslAuthenticateResponse(
            error_code=58,
            error_message="Authentication failed",
            auth_bytes=b"",
            session_lifetime_ms=3_600_000,
            version=version,
        )
    )
    got = sasl.authenticate_answer(version, reply)
    assert (got.error_code, got.error_message, got.auth_bytes) == (
        58,
        "Authentication failed",
        b"",
    )
    assert got.session_lifetime_ms == (3_600_000 if version >= 1 else 0)


@pytest.mark.parametrize("version", [-1, 3])
def test_versions_outside_the_codec_raise_sasl_error(version: int) -> None:
    with pytest.raises(SaslError):
        sasl.authenticate_bytes(version, b"\x00" * 20)


@given(body=st.binary(max_size=100), version=st.integers(0, 2))
def test_random_bodies_only_raise_sasl_error(body: bytes, version: int) -> None:
    for read in (sasl.authenticate_bytes, sasl.authenticate_answer):
        try:
            read(version, body)
        except SaslError:
            pass
    for read_hs in (sasl.handshake_mechanism, sasl.handshake_error):
        try:
            read_hs(min(version, 1), body)
        except SaslError:
            pass
