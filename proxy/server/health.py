"""Probes of the upstream cluster: readiness, and the brokers' producer state expiry.

The readiness probe sends ApiVersions v0 (every broker since 0.10 answers it, and v0 needs
no tagged fields) to the bootstrap brokers in turn, and reports the first answer or every
failure. With the sidecar's own SASL, every probe connection authenticates first, as the
links' connections do (a broker answers ApiVersions before authentication, so only that
shows whether the credentials work). The expiry probe asks each known broker for its
producer.id.expiration.ms (DescribeConfigs v1, resource type BROKER named by its node id,
as the broker's ConfigHelper.describeConfigs answers static and dynamic values only for its
own id).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from collections.abc import Callable
from typing import Any

from kafka.protocol.admin import DescribeConfigsRequest, DescribeConfigsResponse

from proxy.address import Address
from proxy.server.tls import UpstreamTLS, describe_failure, failure_reason, is_handshake_failure
from proxy.wire.apis import ApiKey
from proxy.wire.frames import frame
from proxy.wire.headers import peek_correlation_id
from proxy.wire.sasl_client import (
    Request,
    SaslAuthenticationFailed,
    SaslClient,
    SaslCredentials,
)

_PROBE_CORRELATION_ID = 0x1D3
_EXPIRY_CORRELATION_ID = 0x1D4
_SASL_CORRELATION_ID = -0x1D5
_BROKER_RESOURCE = 4  # ConfigResource.Type.BROKER
PRODUCER_EXPIRY_KEY = "producer.id.expiration.ms"
_MAX_PROBE_RESPONSE = 1 << 20

log = logging.getLogger("idemproxy.health")

#: How a probe of one broker fails: refused, timed out, garbage or cut short, or refused
#: the sidecar's credentials.
_PROBE_FAILURES = (
    OSError,
    TimeoutError,
    ValueError,
    asyncio.IncompleteReadError,
    SaslAuthenticationFailed,
)


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


#: Told the reason of each failed TLS handshake or SASL authentication (the metric's label).
HandshakeObserver = Callable[[str], None]


async def _ask(
    target: Address,
    request: bytes,
    within: float,
    tls: UpstreamTLS | None = None,
    sasl: SaslCredentials | None = None,
) -> bytes:
    """Send one request frame, return the response body (size-checked, bounded); with sasl,
    after authenticating the connection as the links do."""
    async with asyncio.timeout(within):
        if tls is None:
            reader, writer = await asyncio.open_connection(target.host, target.port)
        else:
            reader, writer = await asyncio.open_connection(
                target.host, target.port, ssl=tls.context, server_hostname=tls.hostname(target)
            )
        try:
            if sasl is not None:
                await _authenticate(reader, writer, sasl)
            writer.write(request)
            return await _read_frame(reader)
        finally:
            writer.close()


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    if not 0 < size <= _MAX_PROBE_RESPONSE:
        raise ValueError(f"implausible response size {size}")
    return await reader.readexactly(size)


async def _authenticate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sasl: SaslCredentials
) -> None:
    """The sidecar's SASL exchange on a probe connection (raises SaslAuthenticationFailed)."""
    ids = itertools.count(_SASL_CORRELATION_ID, -1)
    client = SaslClient(sasl, lambda: next(ids))
    request: Request | None = client.start()
    while request is not None:
        writer.write(frame(request.body))
        try:
            body = await _read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            raise SaslAuthenticationFailed(
                "the broker closed the connection during SASL authentication"
            ) from None
        request = client.receive(body)


def producer_expiry_request(node_id: int) -> bytes:
    """DescribeConfigs v1 for one broker's producer.id.expiration.ms."""
    request: Any = DescribeConfigsRequest[1](
        resources=[
            DescribeConfigsRequest.DescribeConfigsResource(
                resource_type=_BROKER_RESOURCE,
                resource_name=str(node_id),
                configuration_keys=[PRODUCER_EXPIRY_KEY],
            )
        ],
        include_synonyms=False,
    )
    request.with_header(correlation_id=_EXPIRY_CORRELATION_ID, client_id="idemproxy-probe")
    return frame(bytes(request.encode(header=True)))


def producer_expiry_answer(body: bytes) -> int | None:
    """The value in a DescribeConfigs v1 answer, None when absent, refused or malformed."""
    try:
        response: Any = DescribeConfigsResponse.decode(body, version=1, header=True)
    except Exception:  # the library raises assorted types on bad bytes
        return None
    for result in response.results:
        if result.error_code != 0:
            return None
        for config in result.configs:
            if config.name == PRODUCER_EXPIRY_KEY and config.value is not None:
                try:
                    value = int(config.value)
                except ValueError:
                    return None
                return value if value > 0 else None
    return None


def _failure(
    target: Address,
    exc: BaseException,
    tls: UpstreamTLS | None,
    observe: HandshakeObserver | None,
    observe_sasl: HandshakeObserver | None = None,
) -> str:
    """Why asking target failed; a failed TLS handshake or SASL authentication is named, and
    observed."""
    if isinstance(exc, SaslAuthenticationFailed):
        if observe_sasl is not None:
            observe_sasl(exc.kind)
        return f"{target}: SASL authentication failed: {exc.kind} ({exc.reason})"
    if tls is not None and is_handshake_failure(exc):
        reason = failure_reason(exc)
        if observe is not None:
            observe(reason)
        return f"{target}: TLS handshake failed: {reason} ({describe_failure(exc)})"
    return f"{target}: {exc or type(exc).__name__}"


async def probe_producer_expiry(
    brokers: dict[int, Address],
    per_target: float,
    tls: UpstreamTLS | None = None,
    observe: HandshakeObserver | None = None,
    *,
    sasl: SaslCredentials | None = None,
    observe_sasl: HandshakeObserver | None = None,
) -> int | None:
    """The lowest producer.id.expiration.ms of the brokers that answer, None when none does
    (no broker known yet, or DescribeConfigs not authorised)."""
    values: list[int] = []
    for node_id, target in sorted(brokers.items()):
        try:
            body = await _ask(target, producer_expiry_request(node_id), per_target, tls, sasl)
        except _PROBE_FAILURES as exc:
            log.debug(
                "no producer expiry from broker %d: %s",
                node_id,
                _failure(target, exc, tls, observe, observe_sasl),
            )
            continue
        value = producer_expiry_answer(body)
        if value is not None:
            values.append(value)
    return min(values) if values else None


async def probe_upstream(
    targets: list[Address],
    per_target: float,
    tls: UpstreamTLS | None = None,
    observe: HandshakeObserver | None = None,
    *,
    sasl: SaslCredentials | None = None,
    observe_sasl: HandshakeObserver | None = None,
) -> str | None:
    """None when one of the targets answers ApiVersions, else why none did (over TLS when
    tls is given, after authenticating with sasl when given; observe and observe_sasl are
    told the reason of each failed handshake or authentication)."""
    failures = []
    for target in targets:
        try:
            if probe_answered(await _ask(target, api_versions_probe(), per_target, tls, sasl)):
                return None
            raise ValueError("unexpected answer to ApiVersions")
        except _PROBE_FAILURES as exc:
            failures.append(_failure(target, exc, tls, observe, observe_sasl))
    return "; ".join(failures) or "no upstream configured"
