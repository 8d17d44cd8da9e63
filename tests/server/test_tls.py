"""TLS towards the brokers (proxy.server.tls and its use by links and probes), with real
handshakes against local asyncio TLS servers and certificates made by the test."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from integration.tlscerts import CA, Issued
from proxy.address import Address
from proxy.config import ProxyConfig
from proxy.server.app import Proxy
from proxy.server.health import probe_upstream
from proxy.server.link import Link
from proxy.server.tls import (
    HANDSHAKE_FAILURE_REASONS,
    TLSSetupError,
    UpstreamTLS,
    describe_failure,
    failure_reason,
    is_handshake_failure,
    upstream_context,
)
from proxy.wire.frames import frame


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA("trusted CA")


@pytest.fixture(scope="module")
def server_cert(ca: CA) -> Issued:
    return ca.issue("broker")


@pytest.fixture
def ca_file(tmp_path: Path, ca: CA) -> Path:
    return ca.write(tmp_path)


def server_context(
    tmp_path: Path, issued: Issued, *, client_ca: CA | None = None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert, key = issued.write(tmp_path, "server")
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca.write(tmp_path, "client-ca")))
    return context


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]


async def _echo_api_versions(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one ApiVersions probe like a broker would (error code 0, no APIs)."""
    try:
        size = int.from_bytes(await reader.readexactly(4), "big")
        request = await reader.readexactly(size)
        correlation_id = request[4:8]
        writer.write(frame(correlation_id + b"\x00\x00" + b"\x00\x00\x00\x00"))
        await writer.drain()
        await reader.read()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


@asynccontextmanager
async def tls_server(
    context: ssl.SSLContext | None, handler: Handler = _echo_api_versions
) -> AsyncIterator[Address]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
    try:
        yield Address("127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def handshake(
    address: Address, tls: UpstreamTLS, *, send: bool = True
) -> BaseException | None:
    """Connect, send one ApiVersions probe frame (unless not send), read 4 bytes of the
    answer: the error, if any."""
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection(
                address.host,
                address.port,
                ssl=tls.context,
                server_hostname=tls.hostname(address),
            )
            try:
                if send:
                    writer.write(frame(b"\x00\x12\x00\x00\x00\x00\x00\x07\x00\x00"))
                await reader.readexactly(4)
            finally:
                writer.close()
    except (OSError, asyncio.IncompleteReadError) as exc:
        return exc
    return None


# --- the context -----------------------------------------------------------------------


def test_context_is_tls12_or_later_and_verifies_certificate_and_host(ca_file: Path) -> None:
    for context in (upstream_context(), upstream_context(ca_file)):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True
    assert len(upstream_context(ca_file).get_ca_certs()) == 1


def test_context_setup_errors_name_the_option(tmp_path: Path, ca: CA) -> None:
    cert, _ = ca.issue("proxy", client=True).write(tmp_path, "client")
    with pytest.raises(TLSSetupError) as caught:
        upstream_context(cert=cert)
    assert caught.value.option == "upstream_key"
    with pytest.raises(TLSSetupError) as caught:
        upstream_context(tmp_path / "missing.pem")
    assert caught.value.option == "upstream_ca"


def test_server_name_overrides_the_host_verified() -> None:
    context = upstream_context()
    target = Address("10.0.0.7", 9093)
    assert UpstreamTLS(context).hostname(target) == "10.0.0.7"
    assert UpstreamTLS(context, "kafka.internal").hostname(target) == "kafka.internal"


# --- reasons, from real handshakes ---------------------------------------------------


async def test_trusted_certificate_handshakes(
    tmp_path: Path, ca_file: Path, server_cert: Issued
) -> None:
    async with tls_server(server_context(tmp_path, server_cert)) as address:
        assert await handshake(address, UpstreamTLS(upstream_context(ca_file))) is None


async def test_untrusted_ca_is_certificate_verify_failed(tmp_path: Path, ca_file: Path) -> None:
    stranger = CA("a CA the proxy does not trust").issue("broker")
    async with tls_server(server_context(tmp_path, stranger)) as address:
        exc = await handshake(address, UpstreamTLS(upstream_context(ca_file)))
    assert exc is not None
    assert is_handshake_failure(exc)
    assert failure_reason(exc) == "certificate_verify_failed"
    assert "unable to get local issuer certificate" in describe_failure(exc)


async def test_expired_certificate(tmp_path: Path, ca: CA, ca_file: Path) -> None:
    async with tls_server(server_context(tmp_path, ca.expired("broker"))) as address:
        exc = await handshake(address, UpstreamTLS(upstream_context(ca_file)))
    assert exc is not None
    assert failure_reason(exc) == "certificate_expired"
    assert describe_failure(exc) == "certificate has expired"


async def test_wrong_host_is_hostname_mismatch_unless_overridden(
    tmp_path: Path, ca: CA, ca_file: Path
) -> None:
    other = ca.issue("broker", dns=("kafka.internal",), ips=())
    async with tls_server(server_context(tmp_path, other)) as address:
        exc = await handshake(address, UpstreamTLS(upstream_context(ca_file)))
        assert exc is not None
        assert failure_reason(exc) == "hostname_mismatch"
        overridden = UpstreamTLS(upstream_context(ca_file), "kafka.internal")
        assert await handshake(address, overridden) is None


@contextmanager
def blocking_tls_server(context: ssl.SSLContext, connections: int) -> Iterator[Address]:
    """A TLS server in a thread: unlike asyncio's, it sends its alert when the handshake
    fails, as a Kafka broker does. Sends 4 bytes on each connection and closes it (reading
    nothing: a close with unread bytes would reset the connection before the alert is read)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for _ in range(connections):
            conn, _ = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"\x00\x00\x00\x00")
            except OSError:
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Address("127.0.0.1", listener.getsockname()[1])
    finally:
        thread.join(timeout=5)
        listener.close()


async def test_missing_client_certificate_is_certificate_rejected(
    tmp_path: Path, ca: CA, ca_file: Path, server_cert: Issued
) -> None:
    client_ca = CA("client CA")
    context = server_context(tmp_path, server_cert, client_ca=client_ca)
    cert, key = client_ca.issue("proxy", client=True).write(tmp_path, "client")
    with blocking_tls_server(context, connections=2) as address:
        # TLS 1.3: the client's handshake completes, the refusal is an alert on first read.
        exc = await handshake(address, UpstreamTLS(upstream_context(ca_file)), send=False)
        assert exc is not None
        assert is_handshake_failure(exc)
        assert failure_reason(exc) == "certificate_rejected"
        with_cert = UpstreamTLS(upstream_context(ca_file, cert, key))
        assert await handshake(address, with_cert, send=False) is None


async def test_plaintext_peer_is_not_tls(ca_file: Path) -> None:
    async def plaintext(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(5)
        writer.write(b"\x00\x00\x00\x08" + b"\x00" * 8)  # a Kafka-ish frame, not a TLS record
        await writer.drain()
        writer.close()

    async with tls_server(None, plaintext) as address:
        exc = await handshake(address, UpstreamTLS(upstream_context(ca_file)))
    assert exc is not None
    assert failure_reason(exc) == "not_tls"


def test_other_errors_are_handshake_failed() -> None:
    assert failure_reason(ConnectionResetError()) == "handshake_failed"
    assert failure_reason(ssl.SSLError(1, "[SSL: SOMETHING_NEW] new")) == "handshake_failed"
    assert is_handshake_failure(ConnectionResetError())
    assert not is_handshake_failure(ConnectionRefusedError())
    assert not is_handshake_failure(TimeoutError())
    assert describe_failure(ConnectionResetError()) == (
        "connection closed by the broker during the handshake"
    )
    assert set(HANDSHAKE_FAILURE_REASONS) >= {
        "certificate_verify_failed",
        "certificate_expired",
        "hostname_mismatch",
        "certificate_rejected",
        "not_tls",
        "handshake_failed",
    }


# --- links and probes use it ------------------------------------------------------------


def tls_proxy(address: Address, ca_file: Path) -> Proxy:
    config = ProxyConfig(
        upstream=(address,),
        advertised_host="127.0.0.1",
        broker_port_base=9100,
        upstream_tls=True,
        upstream_ca=ca_file,
    )
    return Proxy(config)


def failures(proxy: Proxy, reason: str) -> float:
    value = proxy.metrics.registry.get_sample_value(
        "idemproxy_tls_handshake_failures_total", {"side": "upstream", "reason": reason}
    )
    assert value is not None
    return value


def test_metric_children_start_at_zero(ca_file: Path) -> None:
    proxy = tls_proxy(Address("127.0.0.1", 1), ca_file)
    for reason in HANDSHAKE_FAILURE_REASONS:
        assert failures(proxy, reason) == 0


async def test_probe_over_tls_answers_or_names_the_reason(
    tmp_path: Path, ca: CA, ca_file: Path, server_cert: Issued
) -> None:
    tls = UpstreamTLS(upstream_context(ca_file))
    async with tls_server(server_context(tmp_path, server_cert)) as address:
        assert await probe_upstream([address], 5.0, tls) is None
    seen: list[str] = []
    async with tls_server(server_context(tmp_path, ca.expired("broker"))) as address:
        problem = await probe_upstream([address], 5.0, tls, seen.append)
    assert problem == (
        f"{address}: TLS handshake failed: certificate_expired (certificate has expired)"
    )
    assert seen == ["certificate_expired"]


async def test_proxy_probe_counts_a_failed_handshake(tmp_path: Path, ca: CA, ca_file: Path) -> None:
    async with tls_server(server_context(tmp_path, ca.expired("broker"))) as address:
        proxy = tls_proxy(address, ca_file)
        await proxy._probe()
    assert failures(proxy, "certificate_expired") == 1
    assert proxy.metrics.upstream_up._value.get() == 0


class _Client(asyncio.Transport):
    """The client side of a link: records whether the proxy closed it."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = asyncio.Event()
        self.resumed = asyncio.Event()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        self.resumed.set()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def close(self) -> None:
        self.closed.set()

    def abort(self) -> None:
        self.closed.set()

    def is_closing(self) -> bool:
        return self.closed.is_set()


async def test_link_with_an_untrusted_broker_closes_the_client_with_one_log_line(
    tmp_path: Path, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = CA("a CA the proxy does not trust").issue("broker")
    async with tls_server(server_context(tmp_path, stranger)) as address:
        proxy = tls_proxy(address, ca_file)
        link = Link(proxy, [address], "bootstrap", 1)
        client = _Client()
        with caplog.at_level(logging.WARNING, logger="idemproxy.server"):
            link.client_made(client)
            async with asyncio.timeout(5):
                await client.closed.wait()
    assert link.finished
    lines = [r for r in caplog.records if r.name == "idemproxy.server"]
    assert [r.getMessage() for r in lines] == [
        "upstream TLS handshake failed, closing client connection"
    ]
    reason = lines[0].__dict__["reason"]
    assert reason.startswith(f"{address}: certificate_verify_failed (")
    assert failures(proxy, "certificate_verify_failed") == 1
    errors = proxy.metrics.registry.get_sample_value(
        "idemproxy_connection_errors_total", {"reason": "upstream_tls"}
    )
    assert errors == 1
    await proxy.close()


async def test_link_over_tls_reaches_the_broker(
    tmp_path: Path, ca_file: Path, server_cert: Issued
) -> None:
    async with tls_server(server_context(tmp_path, server_cert)) as address:
        proxy = tls_proxy(address, ca_file)
        link = Link(proxy, [address], "bootstrap", 1)
        client = _Client()
        link.client_made(client)
        async with asyncio.timeout(5):
            await client.resumed.wait()  # the link resumes the client once upstream is up
        assert link.upstream_open
        assert link.upstream is not None
        assert link.upstream.get_extra_info("ssl_object") is not None
        link.abort()
        await proxy.close()


async def test_link_refused_for_its_missing_client_certificate_logs_one_line(
    tmp_path: Path, ca_file: Path, server_cert: Issued, caplog: pytest.LogCaptureFixture
) -> None:
    context = server_context(tmp_path, server_cert, client_ca=CA("client CA"))
    with blocking_tls_server(context, connections=1) as address:
        proxy = tls_proxy(address, ca_file)
        link = Link(proxy, [address], "bootstrap", 1)
        client = _Client()
        with caplog.at_level(logging.WARNING, logger="idemproxy.server"):
            link.client_made(client)
            async with asyncio.timeout(5):
                await client.closed.wait()
    lines = [r for r in caplog.records if r.name == "idemproxy.server"]
    assert [r.getMessage() for r in lines] == [
        "upstream TLS handshake failed, closing client connection"
    ]
    assert lines[0].__dict__["reason"].startswith(f"{address}: certificate_rejected (")
    assert failures(proxy, "certificate_rejected") == 1
    await proxy.close()
