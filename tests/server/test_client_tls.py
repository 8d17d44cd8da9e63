"""TLS towards clients: the listener context, the mTLS principal, the ClientHello check, and
a Proxy whose listeners speak TLS to real ssl clients (handshake failures, rotation)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from integration.tlscerts import CA
from proxy.address import Address
from proxy.config import ProxyConfig
from proxy.server.app import Proxy
from proxy.server.tls import (
    HANDSHAKE_FAILURE_REASONS,
    Reloadable,
    TLSSetupError,
    client_principal,
    listener_context,
    looks_like_tls,
)
from proxy.wire.frames import frame

# --- the context -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA("proxy CA")


@pytest.fixture(scope="module")
def client_ca() -> CA:
    return CA("client CA")


@pytest.fixture
def files(tmp_path: Path, ca: CA, client_ca: CA) -> dict[str, Path]:
    cert, key = ca.issue("proxy").write(tmp_path, "proxy")
    client_cert, client_key = client_ca.issue("app", client=True).write(tmp_path, "client")
    return {
        "ca": ca.write(tmp_path, "ca"),
        "cert": cert,
        "key": key,
        "client_ca": client_ca.write(tmp_path, "client-ca"),
        "client_cert": client_cert,
        "client_key": client_key,
    }


def test_listener_context_is_tls12_or_later_and_asks_no_certificate_without_a_client_ca(
    files: dict[str, Path],
) -> None:
    context = listener_context(files["cert"], files["key"])
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE


def test_a_client_ca_makes_the_client_certificate_required(files: dict[str, Path]) -> None:
    context = listener_context(files["cert"], files["key"], files["client_ca"])
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1


def test_listener_context_errors_name_the_listen_options(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    with pytest.raises(TLSSetupError) as caught:
        listener_context(tmp_path / "missing.pem", files["key"])
    assert caught.value.option == "listen_tls_cert"
    with pytest.raises(TLSSetupError) as caught:
        listener_context(files["cert"], files["client_key"])
    assert caught.value.option == "listen_tls_key"
    assert "is not the private key of" in caught.value.reason
    with pytest.raises(TLSSetupError) as caught:
        listener_context(files["cert"], files["key"], files["key"])
    assert caught.value.option == "listen_tls_client_ca"


# --- the principal, as Kafka's DefaultKafkaPrincipalBuilder names a certificate ------------


def subject(*rdns: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {"subject": rdns}


def test_the_principal_is_the_subject_most_specific_first() -> None:
    cert = subject(
        (("countryName", "DE"),),
        (("stateOrProvinceName", "Berlin"),),
        (("localityName", "Berlin"),),
        (("organizationName", "Example"),),
        (("organizationalUnitName", "payments"),),
        (("commonName", "orders-producer"),),
    )
    assert (
        client_principal(cert) == "CN=orders-producer,OU=payments,O=Example,L=Berlin,ST=Berlin,C=DE"
    )


def test_the_principal_of_a_certificate_naming_only_a_common_name() -> None:
    assert client_principal(subject((("commonName", "app"),))) == "CN=app"


def test_special_characters_are_escaped_as_x500principal_does() -> None:
    cert = subject((("organizationName", 'A, B + C "D" <E>; F=G #1 \\'),), (("commonName", " x "),))
    assert client_principal(cert) == (
        'CN=\\ x\\ ,O=A\\, B \\+ C \\"D\\" \\<E\\>\\; F\\=G \\#1 \\\\'
    )


def test_multi_valued_rdns_are_joined_with_plus_and_domain_components_named_dc() -> None:
    cert = subject(
        (("domainComponent", "com"),),
        (("domainComponent", "example"),),
        (("commonName", "app"), ("userId", "u42")),
    )
    assert client_principal(cert) == "CN=app+UID=u42,DC=example,DC=com"


def test_attributes_without_an_rfc2253_keyword_are_an_oid_and_the_hex_of_their_der_value() -> None:
    cert = subject((("commonName", "app"),), (("emailAddress", "a@b.c"),))
    # IA5String (0x16), 5 bytes.
    assert client_principal(cert) == "1.2.840.113549.1.9.1=#16056140622e63,CN=app"


def test_no_certificate_no_principal() -> None:
    assert client_principal(None) is None
    assert client_principal({}) is None  # getpeercert() of an unverified peer


@pytest.mark.parametrize(
    ("first", "tls"),
    [
        (b"\x16\x03", True),
        (b"\x16", True),  # only one byte arrived yet: as a Kafka size it is > 369 MB anyway
        (b"\x00\x00", False),  # a Kafka frame of a sane size
        (b"\x16\x00", False),
        (b"", False),
    ],
)
def test_a_tls_client_hello_is_told_from_a_kafka_frame(first: bytes, tls: bool) -> None:
    assert looks_like_tls(first) is tls


# --- rotation ---------------------------------------------------------------------------


def test_reloadable_rebuilds_only_when_a_file_changes(tmp_path: Path, ca: CA) -> None:
    cert, key = ca.issue("proxy").write(tmp_path, "proxy")
    built: list[ssl.SSLContext] = []

    def build() -> ssl.SSLContext:
        built.append(listener_context(cert, key))
        return built[-1]

    files = Reloadable(build, [cert, key])
    first = files.context
    assert files.check() is False
    assert files.context is first
    ca.issue("proxy").write(tmp_path, "proxy")
    assert files.check() is True
    assert files.context is not first
    assert len(built) == 2


def test_a_rotation_to_unusable_files_keeps_the_old_context_until_they_change_again(
    tmp_path: Path, ca: CA
) -> None:
    cert, key = ca.issue("proxy").write(tmp_path, "proxy")
    files = Reloadable(lambda: listener_context(cert, key), [cert, key])
    first = files.context
    key.write_bytes(ca.issue("other").key_pem)  # a key that is not the certificate's
    with pytest.raises(TLSSetupError):
        files.check()
    assert files.context is first
    assert files.check() is False, "the same broken files are not tried again"
    ca.issue("proxy").write(tmp_path, "proxy")
    assert files.check() is True


# --- a proxy with TLS listeners -------------------------------------------------------------
# On asyncio's loop here; test_every_listener_behaviour_holds_on_uvloop runs them again on
# uvloop's (what `idemproxy serve` uses when installed), which starts reading a server
# transport at a different moment.


async def _answer_api_versions(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A plaintext broker answering every ApiVersions v0 request (error 0, no APIs)."""
    try:
        while True:
            size = int.from_bytes(await reader.readexactly(4), "big")
            request = await reader.readexactly(size)
            writer.write(frame(request[4:8] + b"\x00\x00" + b"\x00\x00\x00\x00"))
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def api_versions(correlation_id: int) -> bytes:
    client_id = b"tls-test"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    return frame(body)


@asynccontextmanager
async def running_proxy(**tls: Any) -> AsyncIterator[Proxy]:
    broker = await asyncio.start_server(_answer_api_versions, "127.0.0.1", 0)
    upstream = Address("127.0.0.1", broker.sockets[0].getsockname()[1])
    config = ProxyConfig(
        upstream=(upstream,),
        listen=Address("127.0.0.1", 0),
        advertised_host="127.0.0.1",
        broker_port_base=20000,
        **tls,
    )
    proxy = Proxy(config)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
        broker.close()


def client_context(files: dict[str, Path], *, cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files["ca"]))
    if cert:
        context.load_cert_chain(files["client_cert"], files["client_key"])
    return context


async def ask(proxy: Proxy, context: ssl.SSLContext | None) -> bytes:
    """One ApiVersions through the proxy's bootstrap listener: the answer's correlation id
    and error code, or b"" when the proxy closed the connection first."""
    assert proxy.bootstrap_address is not None
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        proxy.bootstrap_address.port,
        ssl=context,
        server_hostname="localhost" if context else None,
    )
    try:
        writer.write(api_versions(7))
        size = int.from_bytes(await reader.readexactly(4), "big")
        return (await reader.readexactly(size))[:6]
    except (OSError, asyncio.IncompleteReadError):
        return b""
    finally:
        writer.close()


def served_serial(proxy: Proxy, files: dict[str, Path]) -> int:
    """The serial number of the certificate the proxy's bootstrap listener presents now."""
    assert proxy.bootstrap_address is not None
    with (
        socket.create_connection(("127.0.0.1", proxy.bootstrap_address.port), timeout=5) as raw,
        client_context(files).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def client_failures(proxy: Proxy, reason: str) -> float:
    value = proxy.metrics.registry.get_sample_value(
        "idemproxy_tls_handshake_failures_total", {"side": "client", "reason": reason}
    )
    assert value is not None
    return value


def server_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "idemproxy.server" and r.levelno >= logging.WARNING
    ]


async def wait_for(condition: Any) -> None:
    """Until condition holds: the proxy's handshake task logs and counts a refusal after
    closing the socket, so the client may see the close first."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - a metric or log record, not an event
            await asyncio.sleep(0.01)


ANSWER = b"\x00\x00\x00\x07\x00\x00"  # correlation id 7, error code NONE


async def test_a_tls_client_is_served_and_no_principal_without_a_client_ca(
    files: dict[str, Path],
) -> None:
    async with running_proxy(listen_tls_cert=files["cert"], listen_tls_key=files["key"]) as proxy:
        assert await ask(proxy, client_context(files)) == ANSWER
        for reason in HANDSHAKE_FAILURE_REASONS:
            assert client_failures(proxy, reason) == 0


async def test_mtls_client_with_a_certificate_gets_its_subject_as_principal(
    files: dict[str, Path],
) -> None:
    tls = {
        "listen_tls_cert": files["cert"],
        "listen_tls_key": files["key"],
        "listen_tls_client_ca": files["client_ca"],
    }
    async with running_proxy(**tls) as proxy:
        assert proxy.bootstrap_address is not None
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            proxy.bootstrap_address.port,
            ssl=client_context(files, cert=True),
            server_hostname="localhost",
        )
        writer.write(api_versions(7))
        await reader.readexactly(10)
        (link,) = proxy.links.values()
        assert link.session.principal == "CN=app"
        writer.close()


async def test_mtls_client_without_a_certificate_is_refused_with_one_line(
    files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    tls = {
        "listen_tls_cert": files["cert"],
        "listen_tls_key": files["key"],
        "listen_tls_client_ca": files["client_ca"],
    }
    async with running_proxy(**tls) as proxy:
        with caplog.at_level(logging.WARNING, logger="idemproxy.server"):
            assert await ask(proxy, client_context(files)) == b""
            await wait_for(lambda: client_failures(proxy, "certificate_required") == 1)
        (line,) = server_lines(caplog)
        assert line.getMessage() == "client TLS handshake failed"
        assert line.__dict__["listener"] == "bootstrap"
        assert line.__dict__["reason"] == (
            "certificate_required (peer did not return a certificate)"
        )
        assert await ask(proxy, client_context(files, cert=True)) == ANSWER, "others unaffected"


async def test_a_client_certificate_from_another_ca_is_refused(
    files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stranger_cert, stranger_key = CA("stranger").issue("app", client=True).write(tmp_path, "s")
    tls = {
        "listen_tls_cert": files["cert"],
        "listen_tls_key": files["key"],
        "listen_tls_client_ca": files["client_ca"],
    }
    async with running_proxy(**tls) as proxy:
        context = client_context(files)
        context.load_cert_chain(stranger_cert, stranger_key)
        with caplog.at_level(logging.WARNING, logger="idemproxy.server"):
            assert await ask(proxy, context) == b""
            await wait_for(lambda: client_failures(proxy, "certificate_verify_failed") == 1)
        assert [r.getMessage() for r in server_lines(caplog)] == ["client TLS handshake failed"]


async def test_a_plaintext_client_on_a_tls_listener_is_one_line_and_closed(
    files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    async with running_proxy(listen_tls_cert=files["cert"], listen_tls_key=files["key"]) as proxy:
        with caplog.at_level(logging.WARNING, logger="idemproxy.server"):
            assert await ask(proxy, None) == b""
            await wait_for(lambda: client_failures(proxy, "not_tls") == 1)
        (line,) = server_lines(caplog)
        assert line.getMessage() == "client speaks plaintext to a TLS listener"
        assert line.__dict__["reason"] == "not_tls (not a TLS handshake)"
        assert await ask(proxy, client_context(files)) == ANSWER, "the listener still serves"


async def test_a_tls_client_on_a_plaintext_listener_is_one_line_and_closed(
    files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    async with running_proxy() as proxy:
        with caplog.at_level(logging.WARNING, logger="idemproxy.server"):
            assert proxy.bootstrap_address is not None
            with pytest.raises((ssl.SSLError, OSError)):
                await asyncio.open_connection(
                    "127.0.0.1",
                    proxy.bootstrap_address.port,
                    ssl=client_context(files),
                    server_hostname="localhost",
                )
            await wait_for(lambda: client_failures(proxy, "plaintext_listener") == 1)
        (line,) = server_lines(caplog)
        assert line.getMessage() == "client speaks TLS to a plaintext listener"
        assert line.__dict__["listener"] == "bootstrap"
        assert await ask(proxy, None) == ANSWER, "plaintext clients still served"


async def test_a_connection_closed_before_sending_anything_is_no_failure(
    files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    async with running_proxy(listen_tls_cert=files["cert"], listen_tls_key=files["key"]) as proxy:
        assert proxy.bootstrap_address is not None
        with caplog.at_level(logging.DEBUG, logger="idemproxy.server"):
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.bootstrap_address.port)
            writer.close()
            await wait_for(
                lambda: any(
                    r.getMessage() == "client closed before the TLS handshake"
                    for r in caplog.records
                )
            )
        assert server_lines(caplog) == []
        assert sum(client_failures(proxy, r) for r in HANDSHAKE_FAILURE_REASONS) == 0


async def test_shutdown_closes_connections_still_before_their_handshake(
    files: dict[str, Path],
) -> None:
    async with running_proxy(listen_tls_cert=files["cert"], listen_tls_key=files["key"]) as proxy:
        assert proxy.bootstrap_address is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.bootstrap_address.port)
        await wait_for(  # accepted, waiting for the ClientHello
            lambda: any(t.get_name().startswith("TLS handshake") for t in proxy.tasks._tasks)
        )
        await proxy.close()
        async with asyncio.timeout(5):
            assert await reader.read() == b"", "the proxy closed its end"
        writer.close()


async def test_rotated_files_serve_new_connections_and_keep_established_ones(
    files: dict[str, Path], ca: CA
) -> None:
    async with running_proxy(listen_tls_cert=files["cert"], listen_tls_key=files["key"]) as proxy:
        before = await asyncio.to_thread(served_serial, proxy, files)
        assert proxy.bootstrap_address is not None
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            proxy.bootstrap_address.port,
            ssl=client_context(files),
            server_hostname="localhost",
        )
        ca.issue("proxy").write(files["cert"].parent, "proxy")
        proxy.reload_tls()
        after = await asyncio.to_thread(served_serial, proxy, files)
        assert after != before
        writer.write(api_versions(7))  # the connection opened before the rotation still works
        size = int.from_bytes(await reader.readexactly(4), "big")
        assert (await reader.readexactly(size))[:6] == ANSWER
        writer.close()
        reloads = proxy.metrics.registry.get_sample_value(
            "idemproxy_tls_reloads_total", {"side": "client", "result": "ok"}
        )
        assert reloads == 1


async def test_a_rotation_to_a_mismatched_key_keeps_serving_the_old_certificate(
    files: dict[str, Path], ca: CA, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_proxy(listen_tls_cert=files["cert"], listen_tls_key=files["key"]) as proxy:
        before = await asyncio.to_thread(served_serial, proxy, files)
        files["key"].write_bytes(ca.issue("other").key_pem)
        with caplog.at_level(logging.WARNING, logger="idemproxy.server"):
            proxy.reload_tls()
        (line,) = server_lines(caplog)
        assert line.getMessage() == (
            "certificate files changed but cannot be used, keeping the previous ones"
        )
        assert "is not the private key of" in line.__dict__["reason"]
        assert await asyncio.to_thread(served_serial, proxy, files) == before
        failed = proxy.metrics.registry.get_sample_value(
            "idemproxy_tls_reloads_total", {"side": "client", "result": "failed"}
        )
        assert failed == 1


async def test_rotated_upstream_files_give_links_a_new_context(
    files: dict[str, Path], ca: CA, client_ca: CA
) -> None:
    async with running_proxy(
        upstream_tls=True,
        upstream_ca=files["ca"],
        upstream_cert=files["client_cert"],
        upstream_key=files["client_key"],
    ) as proxy:
        assert proxy.upstream_tls is not None
        before = proxy.upstream_tls.context
        client_ca.issue("app", client=True).write(files["cert"].parent, "client")
        proxy.reload_tls()
        assert proxy.upstream_tls.context is not before
        ok = proxy.metrics.registry.get_sample_value(
            "idemproxy_tls_reloads_total", {"side": "upstream", "result": "ok"}
        )
        assert ok == 1


def test_every_listener_behaviour_holds_on_uvloop(
    files: dict[str, Path], ca: CA, client_ca: CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uvloop = pytest.importorskip("uvloop")
    scenarios = [
        lambda: test_a_tls_client_is_served_and_no_principal_without_a_client_ca(files),
        lambda: test_mtls_client_with_a_certificate_gets_its_subject_as_principal(files),
        lambda: test_mtls_client_without_a_certificate_is_refused_with_one_line(files, caplog),
        lambda: test_a_client_certificate_from_another_ca_is_refused(files, tmp_path, caplog),
        lambda: test_a_plaintext_client_on_a_tls_listener_is_one_line_and_closed(files, caplog),
        lambda: test_a_tls_client_on_a_plaintext_listener_is_one_line_and_closed(files, caplog),
        lambda: test_a_connection_closed_before_sending_anything_is_no_failure(files, caplog),
        lambda: test_shutdown_closes_connections_still_before_their_handshake(files),
        lambda: test_rotated_files_serve_new_connections_and_keep_established_ones(files, ca),
        # Last: it leaves a key that does not match the certificate.
        lambda: test_a_rotation_to_a_mismatched_key_keeps_serving_the_old_certificate(
            files, ca, caplog
        ),
    ]
    assert uvloop.run(_running_loop()) is uvloop.Loop
    for scenario in scenarios:
        caplog.clear()
        uvloop.run(scenario())


async def _running_loop() -> type:
    return type(asyncio.get_running_loop())
