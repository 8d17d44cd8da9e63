"""SASL as the proxy sees it pass: who a connection authenticates as, and whether it did.

Pure: SaslHandshake (17) and SaslAuthenticate (36) bodies in (kafka-python's classes decode
them), mechanism, principal and outcome out. The broker does the authenticating; the proxy
only reads the client's first token for the name it claims and the broker's answers for
whether the broker accepted it:

- PLAIN (RFC 4616, ``authzid NUL authcid NUL passwd``): Kafka's PlainSaslServer takes the
  authorization id when given (and refuses one that differs from the user), else the user.
- SCRAM-SHA-256/512 (RFC 5802 client-first ``gs2-header n=user,r=nonce``): ScramSaslServer
  takes the ``n=`` user name, ``=2C`` and ``=3D`` unescaped; the exchange is complete when
  the broker's server-final message (``v=``) comes back with error 0.
- OAUTHBEARER (RFC 7628 ``gs2-header \\x01auth=Bearer <token>\\x01...\\x01\\x01``): the
  token's ``sub`` claim (OAuthBearerUnsecuredJws's default principal claim; a JWT, read
  unverified: the broker verifies it); complete when the broker answers with error 0 and no
  bytes (OAuthBearerSaslServer answers a bad token with an error challenge and error 0 first).

Any other mechanism (GSSAPI, AWS_MSK_IAM ...) authenticates someone the proxy cannot name.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)

PLAIN = "PLAIN"
SCRAM_MECHANISMS = frozenset({"SCRAM-SHA-256", "SCRAM-SHA-512"})
OAUTHBEARER = "OAUTHBEARER"
#: Mechanisms whose principal the proxy reads.
KNOWN_MECHANISMS = frozenset({PLAIN, OAUTHBEARER, *SCRAM_MECHANISMS})
#: The JWT claim Kafka's OAUTHBEARER validators take the principal from by default.
PRINCIPAL_CLAIM = "sub"

#: Highest versions kafka-python's classes decode (the proxy caps ApiVersions at them).
HANDSHAKE_MAX_VERSION = int(SaslHandshakeRequest.max_version)
AUTHENTICATE_MAX_VERSION = int(SaslAuthenticateRequest.max_version)


class SaslError(ValueError):
    """A SASL message or token that does not parse."""


def _decode(cls: Any, version: int, body: bytes) -> Any:
    if not 0 <= version <= cls.max_version:
        raise SaslError(f"{cls.__name__} v{version} is not decoded by the proxy")
    try:
        return cls.decode(body, version=version, header=True)
    except Exception as exc:
        raise SaslError(f"{cls.__name__} v{version} does not decode: {exc!r}") from exc


def handshake_mechanism(version: int, body: bytes) -> str:
    """The mechanism a SaslHandshake request (header included) asks for."""
    mechanism = _decode(SaslHandshakeRequest, version, body).mechanism
    if not isinstance(mechanism, str):
        raise SaslError("SaslHandshake without a mechanism")
    return mechanism


def handshake_error(version: int, body: bytes) -> int:
    """The error code of a SaslHandshake response (header included)."""
    return int(_decode(SaslHandshakeResponse, version, body).error_code)


def authenticate_bytes(version: int, body: bytes) -> bytes:
    """The client's token in a SaslAuthenticate request (header included)."""
    auth = _decode(SaslAuthenticateRequest, version, body).auth_bytes
    return bytes(auth) if auth is not None else b""


@dataclass(frozen=True, slots=True)
class AuthenticateAnswer:
    """The broker's SaslAuthenticate response fields."""

    error_code: int
    error_message: str | None
    auth_bytes: bytes
    #: v1+: ms until the broker ends the session unless re-authenticated (KIP-368); 0: none.
    session_lifetime_ms: int


def authenticate_answer(version: int, body: bytes) -> AuthenticateAnswer:
    """Decode a SaslAuthenticate response (header included)."""
    r = _decode(SaslAuthenticateResponse, version, body)
    lifetime = getattr(r, "session_lifetime_ms", 0) if version >= 1 else 0
    auth = r.auth_bytes
    return AuthenticateAnswer(
        int(r.error_code), r.error_message, bytes(auth) if auth is not None else b"", int(lifetime)
    )


# -- principals from the client's first token -------------------------------------------------


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SaslError(f"{what} is not UTF-8") from exc


def plain_principal(token: bytes) -> str:
    """PLAIN: the authorization id if non-empty, else the user (PlainSaslServer)."""
    parts = token.split(b"\x00")
    if len(parts) != 3:
        raise SaslError("PLAIN token is not authzid NUL user NUL password")
    authzid, user = _utf8(parts[0], "PLAIN authzid"), _utf8(parts[1], "PLAIN user")
    if not user:
        raise SaslError("PLAIN token without a user name")
    return authzid or user


def _scram_unescape(name: str) -> str:
    # RFC 5802 saslname: "," and "=" travel as "=2C" and "=3D"; any other "=" is invalid.
    out, i = [], 0
    while i < len(name):
        if name[i] == "=":
            code = name[i + 1 : i + 3]
            if code == "2C":
                out.append(",")
            elif code == "3D":
                out.append("=")
            else:
                raise SaslError("SCRAM user name with a bad '=' escape")
            i += 3
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def scram_principal(client_first: bytes) -> str:
    """SCRAM: the ``n=`` user of the client-first message (ScramSaslServer, ScramFormatter)."""
    text = _utf8(client_first, "SCRAM client-first message")
    fields = text.split(",")
    # gs2-header: cbind flag ("n", "y" or "p=..."), optional "a=authzid", then the bare message.
    if len(fields) < 4 or not (fields[0] in ("n", "y") or fields[0].startswith("p=")):
        raise SaslError("SCRAM client-first message without a GS2 header")
    bare = fields[2:]
    if not bare[0].startswith("n=") or not any(f.startswith("r=") for f in bare[1:]):
        raise SaslError("SCRAM client-first message without n= and r=")
    user = _scram_unescape(bare[0][2:])
    if not user:
        raise SaslError("SCRAM client-first message with an empty user name")
    return user


def scram_client_first(user: str, nonce: str = "rOprNGfwEbeRWgbNEkqO") -> bytes:
    """The client-first message of ``user`` (for tests and round trips)."""
    name = user.replace("=", "=3D").replace(",", "=2C")
    return f"n,,n={name},r={nonce}".encode()


def _b64url(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SaslError("JWT segment is not base64url") from exc


def jwt_claim(token: str, claim: str = PRINCIPAL_CLAIM) -> str:
    """A string claim of a JWT's payload, unverified."""
    parts = token.split(".")
    if len(parts) != 3:
        raise SaslError("OAUTHBEARER token is not a JWS (header.payload.signature)")
    try:
        payload = json.loads(_utf8(_b64url(parts[1]), "JWT payload"))
    except json.JSONDecodeError as exc:
        raise SaslError("JWT payload is not JSON") from exc
    value = payload.get(claim) if isinstance(payload, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise SaslError(f"JWT without a {claim!r} claim")
    return value


def oauthbearer_principal(client_first: bytes, claim: str = PRINCIPAL_CLAIM) -> str:
    """OAUTHBEARER: the token's ``sub`` (OAuthBearerClientInitialResponse, unverified)."""
    text = _utf8(client_first, "OAUTHBEARER initial response")
    header, sep, rest = text.partition("\x01")
    if not sep or not header.endswith(","):
        raise SaslError("OAUTHBEARER initial response without a GS2 header")
    for kv in rest.split("\x01"):
        key, eq, value = kv.partition("=")
        if eq and key == "auth":
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise SaslError("OAUTHBEARER auth value is not 'Bearer <token>'")
            return jwt_claim(token.strip(), claim)
    raise SaslError("OAUTHBEARER initial response without auth=")


def oauthbearer_client_first(token: str) -> bytes:
    """The client's initial response carrying ``token`` (for tests and round trips)."""
    return f"n,,\x01auth=Bearer {token}\x01\x01".encode()


def principal_of(mechanism: str, token: bytes) -> str | None:
    """Who the client's first token of ``mechanism`` names; None for mechanisms the proxy
    cannot read. Raises SaslError for a token that does not parse."""
    if mechanism == PLAIN:
        return plain_principal(token)
    if mechanism in SCRAM_MECHANISMS:
        return scram_principal(token)
    if mechanism == OAUTHBEARER:
        return oauthbearer_principal(token)
    return None


def completes(mechanism: str, step: int, answer: AuthenticateAnswer) -> bool:
    """Whether the broker's error-free answer to the client's ``step``-th token (1-based)
    ends the exchange successfully (False: the broker expects another token)."""
    if answer.error_code != 0:
        return False
    if mechanism == PLAIN:
        return True
    if mechanism in SCRAM_MECHANISMS:
        # ScramSaslServer: server-first ("r=...") after step 1, server-final ("v=...") after 2.
        return step >= 2 and answer.auth_bytes.startswith(b"v=")
    if mechanism == OAUTHBEARER:
        # OAuthBearerSaslServer: success is an empty challenge; a bad token gets an error JSON.
        return not answer.auth_bytes
    return False
