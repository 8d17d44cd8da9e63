"""Target ``session``: whole connections through the sans-I/O ``Session`` and its handlers.

Input: ``u16 n`` + n bytes the client sends, then the broker's answers as ``u16 len`` +
response body, repeated. Each answer gets the correlation id the session waits for (as a
broker would; without it nearly every input would stop at the pairing check) and its
size prefix. Two connections share one produce coordinator and get the same client
bytes, so the second one's Produce requests are retries of the first's: answered from
the engine's memory, held, or forwarded. Any ``ProxyError`` closes the connection, as the
server does, and ``close()`` must then settle everything without raising. Every frame
the session writes to the client or the broker must be a well-formed frame.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from proxy.errors import ProxyError
from proxy.idempotence.coordinator import ProduceCoordinator
from proxy.idempotence.engine import IdempotenceEngine
from proxy.routing.directory import BrokerDirectory
from proxy.routing.session import Output, Session, Shared

_NOW_MS = 1_700_000_000_000
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")


def split(data: bytes) -> tuple[bytes, list[bytes]]:
    """The client's bytes and the broker's answers (bodies) an input holds."""
    if len(data) < 2:
        return data, []
    (n,) = _U16.unpack_from(data, 0)
    client = data[2 : 2 + n]
    answers = []
    pos = 2 + n
    while pos + 2 <= len(data):
        (size,) = _U16.unpack_from(data, pos)
        answers.append(data[pos + 2 : pos + 2 + size])
        pos += 2 + size
    return client, answers


def _check_frames(frames: list[bytes]) -> None:
    for f in frames:
        assert len(f) >= 4, f
        assert _I32.unpack_from(f, 0)[0] == len(f) - 4, f[:16]


def _check(out: Output) -> Output:
    _check_frames(out.upstream)
    _check_frames(out.client)
    return out


def _guard(session: Session, action: Callable[[], Output]) -> None:
    """Run one step of a connection; a ProxyError closes it, as the server does."""
    if session.closed:
        return
    try:
        _check(action())
    except ProxyError:
        _check(session.close())


def _answer(session: Session, body: bytes) -> bytes:
    """The broker's frame: the correlation id the session waits for, and the size prefix."""
    awaiting = session._awaiting
    if awaiting and len(body) >= 4:
        body = _I32.pack(awaiting[0][1]) + body[4:]
    return _I32.pack(len(body)) + body


def test_one_input(data: bytes) -> None:
    client, answers = split(data)
    coordinator = ProduceCoordinator(IdempotenceEngine(), clock_ms=lambda: _NOW_MS)
    shared = Shared(BrokerDirectory(advertised_host="proxy.fuzz", port_base=19000), coordinator)
    a = Session(shared, session_id=1)
    b = Session(shared, session_id=2)
    # b sends the same requests while a's are in flight: its Produce batches are retries.
    _guard(a, lambda: a.receive_client(client))
    _guard(b, lambda: b.receive_client(client))
    half = (len(answers) + 1) // 2
    for body in answers[:half]:
        _guard(a, lambda body=body: a.receive_upstream(_answer(a, body)))  # type: ignore[misc]
    _guard(b, b.resume)
    for body in answers[half:]:
        _guard(b, lambda body=body: b.receive_upstream(_answer(b, body)))  # type: ignore[misc]
    for session in (a, b):
        _guard(session, lambda s=session: s.on_timer(_NOW_MS + 3_600_000))  # type: ignore[misc]
        _guard(session, session.resume)
        try:
            session.client_eof()
        except ProxyError:
            pass
        _check(session.close())
        assert session.closed
