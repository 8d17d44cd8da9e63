"""The proxy's error tree: each class carries the Kafka error code closest to its cause.

Modelled on h11's small exception hierarchy: the sans-I/O core raises these for bad input
from a peer, the server turns them into one log line (reason and Kafka error code) and a
closed connection.
"""

from __future__ import annotations

from proxy.wire import error_codes


class ProxyError(Exception):
    """Base of every error the protocol core raises on purpose."""

    #: Kafka error code (org.apache.kafka.common.protocol.Errors) closest to the cause.
    error_code: int = error_codes.UNKNOWN_SERVER_ERROR

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameError(ProxyError):
    """The byte stream is not a sequence of well-formed Kafka frames."""

    error_code = error_codes.INVALID_REQUEST


class FrameTooLarge(FrameError):
    """A length prefix claims more than the configured maximum frame size."""

    error_code = error_codes.MESSAGE_TOO_LARGE


class TruncatedFrame(FrameError):
    """The peer closed the connection in the middle of a frame."""


class DecodeError(ProxyError):
    """A frame the proxy must read does not decode for its API and version."""

    error_code = error_codes.CORRUPT_MESSAGE


class UnsupportedVersion(ProxyError):
    """A request uses a version of an API the proxy decodes but cannot handle."""

    error_code = error_codes.UNSUPPORTED_VERSION


class RoutingError(ProxyError):
    """A broker cannot be given a proxy listener (its node id maps outside the port range)."""

    error_code = error_codes.BROKER_NOT_AVAILABLE


#: Every reason a connection is refused for bad input, as counted in metrics.
REFUSAL_REASONS: tuple[str, ...] = (
    "FrameTooLarge",
    "FrameError",
    "TruncatedFrame",
    "DecodeError",
    "UnsupportedVersion",
)
