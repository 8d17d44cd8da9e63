"""The byte pump: asyncio Protocols that hand received bytes to a link, with flow control.

No protocol decision here. A full write buffer on one side pauses reading on the other side
(asyncio's pause_writing/resume_writing), so a slow peer never makes the proxy buffer without
bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol, cast


class Side(Protocol):
    """What a link offers one of its two protocols."""

    def made(self, transport: asyncio.Transport) -> None: ...

    def data(self, data: bytes) -> None: ...

    def eof(self) -> None: ...

    def lost(self, exc: Exception | None) -> None: ...

    def other(self) -> asyncio.Transport | None: ...


class Pump(asyncio.Protocol):
    """One socket of a link: bytes to the side, write-buffer pressure to the other socket."""

    __slots__ = ("_side",)

    def __init__(self, side: Side) -> None:
        self._side = side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._side.made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self._side.data(data)

    def eof_received(self) -> bool | None:
        self._side.eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._side.lost(exc)

    def pause_writing(self) -> None:
        other = self._side.other()
        if other is not None:
            with contextlib.suppress(RuntimeError):
                other.pause_reading()

    def resume_writing(self) -> None:
        other = self._side.other()
        if other is not None:
            with contextlib.suppress(RuntimeError):
                other.resume_reading()
