"""Readiness: does the upstream cluster answer a Kafka request?

The probe sends ApiVersions v0 (every broker since 0.10 answers it, and v0 needs no
tagged fields) to the bootstrap brokers in turn, and reports the first answer or
every failure.
"""

from __future__ import annotations

import asyncio
import struct

from proxy.routing.directory import Address
from proxy.wire.apis import ApiKey
from proxy.wire.frames import frame
from proxy.wire.headers import peek_correlation_id

_PROBE_CORRELATION_ID = 0x1D3


def api_versions_probe() -> bytes:
    """An ApiVersions v0 request frame: api key, version, correlation id, client id."""
    client_id = b"idemproxy-readiness"
    body = struct.pack(">hhih", ApiKey.API_VERSIONS, 0, _PROBE_CORRELATION_ID, len(client_id))
    return frame(body + client_id)


def probe_answered(body: bytes) -> bool:
    """True when body is a response to the probe (its correlation id, error code NONE)."""
    return (
        len(body) >= 6
        and peek_correlation_id(body) == _PROBE_CORRELATION_ID
        and (body[4:6] == b"\x00\x00")
    )


async def probe_upstream(targets: list[Address], per_target: float) -> str | None:
    """None when one of the targets answers ApiVersions, else why none did."""
    failures = []
    for target in targets:
        try:
            async with asyncio.timeout(per_target):
                reader, writer = await asyncio.open_connection(target.host, target.port)
                try:
                    writer.write(api_versions_probe())
                    (size,) = struct.unpack(">i", await reader.readexactly(4))
                    if not 0 < size <= 1 << 20:
                        raise ValueError(f"implausible response size {size}")
                    if probe_answered(await reader.readexactly(size)):
                        return None
                    raise ValueError("unexpected answer to ApiVersions")
                finally:
                    writer.close()
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            failures.append(f"{target}: {exc or type(exc).__name__}")
    return "; ".join(failures) or "no upstream configured"
