"""Length-prefixed Kafka frames: bytes in, complete frames out, no I/O.

Every Kafka request and response is a signed 32-bit big-endian size followed by
that many bytes. The decoder never allocates what a length prefix claims: it
only ever holds the bytes the peer actually sent, and rejects a prefix above
the configured maximum before reading any further.
"""

from __future__ import annotations

import struct

from proxy.errors import FrameError, FrameTooLarge, TruncatedFrame

DEFAULT_MAX_FRAME_BYTES = 100 * 1024 * 1024

_SIZE = struct.Struct(">i")


class FrameDecoder:
    """Incremental splitter of a byte stream into frame bodies (without the size prefix)."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes <= 0:
            raise ValueError("max_frame_bytes must be positive")
        self._buf = bytearray()
        self._max = max_frame_bytes

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; return the bodies of every frame now complete.

        Raises FrameError for a negative size and FrameTooLarge for a size above
        the maximum; the decoder is unusable afterwards (the stream has no
        resynchronisation point, so the connection must close).
        """
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray | memoryview = buf
        else:
            # Nothing pending (the common case): frames are cut straight from the bytes
            # received, one copy each, and only a trailing partial frame is buffered.
            src = data
        frames: list[bytes] = []
        pos = 0
        end = len(src)
        view = memoryview(src)
        try:
            while end - pos >= 4:
                (size,) = _SIZE.unpack_from(src, pos)
                if size < 0:
                    raise FrameError(f"negative frame size {size}")
                if size > self._max:
                    raise FrameTooLarge(
                        f"frame size {size} exceeds the maximum of {self._max} bytes"
                    )
                if end - pos - 4 < size:
                    break
                frames.append(bytes(view[pos + 4 : pos + 4 + size]))
                pos += 4 + size
        except FrameError:
            if src is not buf:
                buf += view[pos:]  # the decoder holds what was sent, as on the buffered path
            raise
        finally:
            view.release()
        if src is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += memoryview(src)[pos:]
        return frames

    def eof(self) -> None:
        """Signal the end of the stream; raises TruncatedFrame if a partial frame is pending."""
        if self._buf:
            raise TruncatedFrame(
                f"connection closed with {len(self._buf)} bytes of an unfinished frame"
            )


def frame(body: bytes | bytearray) -> bytes:
    """Prefix a body with its 32-bit size."""
    return _SIZE.pack(len(body)) + bytes(body)
