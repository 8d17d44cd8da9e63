"""The management port: Prometheus exposition at /metrics, /livez and /readyz.

A small HTTP/1.1 handler on the proxy's own event loop (prometheus-client's
start_http_server runs a thread and serves metrics on every path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from proxy.address import Address
    from proxy.server.app import Proxy

log = logging.getLogger("idemproxy.http")

_MAX_REQUEST_HEAD = 8192


def _response(
    status: str,
    body: bytes,
    *,
    head_only: bool,
    content_type: str = "text/plain; charset=utf-8",
    extra: str = "",
) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    # A response to HEAD carries the headers of the GET response and no content (RFC 9110 9.3.2).
    return head.encode("ascii") + (b"" if head_only else body)


def route(proxy: Proxy, method: str, path: str, not_ready: str | None = None) -> bytes:
    """The response for one request line; not_ready is the readiness verdict for /readyz."""
    path = path.split("?", 1)[0]
    head_only = method == "HEAD"
    if method not in ("GET", "HEAD"):
        return _response(
            "405 Method Not Allowed",
            b"method not allowed\n",
            head_only=False,
            extra="Allow: GET, HEAD\r\n",
        )
    if path == "/metrics":
        return _response(
            "200 OK",
            generate_latest(proxy.metrics.registry),
            head_only=head_only,
            content_type=CONTENT_TYPE_LATEST,
        )
    if path == "/livez":
        return _response("200 OK", b"ok\n", head_only=head_only)
    if path == "/readyz":
        if not_ready is None:
            return _response("200 OK", b"ready\n", head_only=head_only)
        return _response(
            "503 Service Unavailable", f"not ready: {not_ready}\n".encode(), head_only=head_only
        )
    return _response("404 Not Found", b"not found\n", head_only=head_only)


async def start_http(proxy: Proxy, listen: Address) -> asyncio.Server:
    """Serve the management endpoints on listen."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_REQUEST_HEAD:
                raise ValueError("request head too large")
            method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            not_ready = await proxy.readiness() if path.split("?", 1)[0] == "/readyz" else None
            writer.write(route(proxy, method, path, not_ready))
            await writer.drain()
        except (ValueError, TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.debug("bad management request: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(
        handle, listen.host, listen.port, limit=_MAX_REQUEST_HEAD, reuse_address=True
    )
