"""A client listener with TLS: accept, check the first byte, handshake, then hand over.

asyncio's (and uvloop's) ``create_server(ssl=...)`` never tells the application about a
failed handshake (an OSError there is at most a debug line of the loop's own), so a TLS
listener accepts its sockets itself. It peeks at the client's first byte without consuming
it (a plaintext Kafka client is named as such, and a connection closed before sending
anything, like a TCP port check, is no failure), then lets
``loop.connect_accepted_socket(ssl=...)`` do the handshake, which raises the handshake's
error; on success the protocol (the link's pump) gets the TLS transport as usual. Each
connection takes the context current when it arrives, so a rotated certificate applies to
new connections and established ones keep theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from proxy.address import Address
from proxy.server.tls import looks_like_tls

log = logging.getLogger("idemproxy.server")

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]
#: Told of each refused client: its address, the reason label, and the exception (None for
#: a plaintext client, recognised before any TLS).
Refused = Callable[[str, str, BaseException | None], None]


class Listening(Protocol):
    """What the proxy needs of a listener: asyncio.Server, or a TLSListener."""

    @property
    def sockets(self) -> Any: ...

    def is_serving(self) -> bool: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


#: Pause after accept() fails (out of file descriptors), as asyncio's own accept loop does.
_ACCEPT_BACKOFF_SECONDS = 1.0


class TLSListener:
    """Serves one listening socket over TLS; close() stops accepting (like asyncio.Server)."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        context: Callable[[], ssl.SSLContext],
        protocol: Callable[[], asyncio.Protocol],
        spawn: Spawn,
        handshake_timeout: float,
        refused: Refused,
        name: str,
    ) -> None:
        self.sockets = [sock]
        self._sock = sock
        self._context = context
        self._protocol = protocol
        self._spawn = spawn
        self._timeout = handshake_timeout
        self._refused = refused
        self._name = name
        self._serving = True
        self._task = spawn(self._accept(), f"accept {name}")

    def is_serving(self) -> bool:
        return self._serving

    def close(self) -> None:
        if self._serving:
            self._serving = False
            self._task.cancel()
            self._sock.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while self._serving:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: the listener itself is fine
                log.error("cannot accept a connection on %s: %s", self._name, exc)
                await asyncio.sleep(_ACCEPT_BACKOFF_SECONDS)
                continue
            peer = str(Address(str(addr[0]), int(addr[1])))
            self._spawn(self._handshake(conn, peer), f"TLS handshake {peer}")

    async def _handshake(self, conn: socket.socket, peer: str) -> None:
        try:
            await self._open(conn, peer)
        except BaseException:  # cancelled (shutdown): the socket is ours until handed over
            conn.close()
            raise

    async def _open(self, conn: socket.socket, peer: str) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            async with asyncio.timeout(self._timeout):
                first = await _peek(loop, conn)
        except (OSError, TimeoutError) as exc:
            conn.close()
            self._refused(peer, "handshake_failed", exc)
            return
        if not first:
            conn.close()
            log.debug("client closed before the TLS handshake", extra={"peer": peer})
            return
        if not looks_like_tls(first):
            conn.close()
            self._refused(peer, "not_tls", None)
            return
        try:
            await loop.connect_accepted_socket(
                self._protocol, conn, ssl=self._context(), ssl_handshake_timeout=self._timeout
            )
        except OSError as exc:  # ssl.SSLError, a reset, or ConnectionAbortedError (timeout)
            # The transport closed the socket (asyncio closes it, uvloop detached it first):
            # closing it again is a no-op, never another connection's descriptor.
            conn.close()
            self._refused(peer, "", exc)


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    """The first bytes the client sent (b"" when it closed), left unread in the socket."""
    while True:
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(conn.fileno(), _set_once, readable)
        try:
            await readable
        finally:
            loop.remove_reader(conn.fileno())
        try:
            return conn.recv(2, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
