"""The proxy's error tree: each class carries the Kafka error code a broker would use.

Modelled on h11's small exception hierarchy: the sans-I/O core raises these, the
server turns them into one log line and, where the connection cannot continue,
a closed connection.
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base of every error the protocol core raises on purpose."""

    #: Kafka error code (org.apache.kafka.common.protocol.Errors) closest to the cause.
    error_code: int = -1  # UNKNOWN_SERVER_ERROR

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameError(ProxyError):
    """The byte stream is not a sequence of well-formed Kafka frames."""

    error_code = 42  # INVALID_REQUEST


class FrameTooLarge(FrameError):
    """A length prefix claims more than the configured maximum frame size."""

    error_code = 10  # MESSAGE_TOO_LARGE


class TruncatedFrame(FrameError):
    """The peer closed the connection in the middle of a frame."""


class DecodeError(ProxyError):
    """A frame the proxy must read does not decode for its API and version."""

    error_code = 2  # CORRUPT_MESSAGE


class UnsupportedVersion(ProxyError):
    """A request uses a version of an API the proxy decodes but cannot handle."""

    error_code = 35  # UNSUPPORTED_VERSION


class UpstreamError(ProxyError):
    """The upstream broker cannot be reached or broke the connection."""

    error_code = 8  # NETWORK_EXCEPTION
