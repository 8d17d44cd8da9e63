"""A broker side of SASL for unit tests: RFC 5802 / RFC 4616 arithmetic (hashlib, hmac).

Not Kafka: it lets the tests pin down the sidecar's exchange (order, versions, correlation ids,
failures) with the bytes of a real SCRAM computation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
from collections.abc import Callable
from typing import Any

from kafka.protocol.metadata.api_versions import ApiVersionsRequest, ApiVersionsResponse
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)

HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}
SALT = b"kafka-salt-0123"
ITERATIONS = 4096


def ids() -> Callable[[], int]:
    """Correlation ids -1000, -1001, ..."""
    counter = itertools.count(-1000, -1)
    return lambda: next(counter)


def header_of(body: bytes) -> tuple[int, int, int]:
    return (
        int.from_bytes(body[0:2], "big", signed=True),
        int.from_bytes(body[2:4], "big", signed=True),
        int.from_bytes(body[4:8], "big", signed=True),
    )


def respond(message: Any, correlation_id: int) -> bytes:
    message.with_header(correlation_id=correlation_id)
    return bytes(message.encode(header=True))


class FakeBroker:
    """Answers the sidecar's requests as a SASL listener would (SCRAM or PLAIN users)."""

    def __init__(
        self,
        password: str = "s3cret",
        mechanisms: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        authenticate_max: int = 2,
        lifetime_ms: int = 0,
    ) -> None:
        self.password = password
        self.mechanisms = mechanisms
        self.authenticate_max = authenticate_max
        self.lifetime_ms = lifetime_ms
        self.mechanism = ""
        self.seen: list[tuple[int, int, int]] = []
        self.tokens: list[bytes] = []
        self._auth_message = b""
        self._nonce = ""

    def answer(self, body: bytes) -> bytes:
        """The response body to a request body of the exchange."""
        api_key, version, cid = header_of(body)
        self.seen.append((api_key, version, cid))
        if api_key == 18:
            ApiVersionsRequest[version].decode(body, header=True)
            keys = [(17, 0, 1), (18, 0, 4), (36, 0, self.authenticate_max), (0, 3, 12)]
            return respond(
                ApiVersionsResponse[0](
                    error_code=0,
                    api_keys=[
                        ApiVersionsResponse.ApiVersion(api_key=k, min_version=lo, max_version=hi)
                        for k, lo, hi in keys
                    ],
                ),
                cid,
            )
        if api_key == 17:
            handshake = SaslHandshakeRequest[version].decode(body, header=True)
            self.mechanism = handshake.mechanism
            error = 0 if handshake.mechanism in self.mechanisms else 33
            return respond(
                SaslHandshakeResponse[version](error_code=error, mechanisms=list(self.mechanisms)),
                cid,
            )
        assert api_key == 36
        token = bytes(SaslAuthenticateRequest[version].decode(body, header=True).auth_bytes)
        self.tokens.append(token)
        error, reply = self._verify(token)
        return respond(
            SaslAuthenticateResponse[version](
                error_code=error,
                error_message=None if error == 0 else "Authentication failed: Invalid credentials",
                auth_bytes=reply,
                session_lifetime_ms=self.lifetime_ms if error == 0 else 0,
            ),
            cid,
        )

    def _verify(self, token: bytes) -> tuple[int, bytes]:
        if self.mechanism == "PLAIN":
            _authzid, _user, password = token.split(b"\0")
            return (0, b"") if password.decode() == self.password else (58, b"")
        digest = HASHES[self.mechanism]
        if token.startswith(b"n,,"):
            bare = token[3:]
            client_nonce = dict(p.split(b"=", 1) for p in bare.split(b","))[b"r"].decode()
            self._nonce = client_nonce + "servernonce"
            first = f"r={self._nonce},s={base64.b64encode(SALT).decode()},i={ITERATIONS}"
            self._auth_message = bare + b"," + first.encode()
            return 0, first.encode()
        final = dict(p.split(b"=", 1) for p in token.split(b","))
        without_proof = token[: token.index(b",p=")]
        auth_message = self._auth_message + b"," + without_proof
        salted = hashlib.pbkdf2_hmac(digest().name, self.password.encode(), SALT, ITERATIONS)
        client_key = hmac.new(salted, b"Client Key", digest).digest()
        stored_key = digest(client_key).digest()
        signature = hmac.new(stored_key, auth_message, digest).digest()
        proof = base64.b64decode(final[b"p"])
        recovered = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if digest(recovered).digest() != stored_key or final[b"r"].decode() != self._nonce:
            return 58, b""
        server_key = hmac.new(salted, b"Server Key", digest).digest()
        verifier = hmac.new(server_key, auth_message, digest).digest()
        return 0, b"v=" + base64.b64encode(verifier)
