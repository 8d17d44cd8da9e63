"""The sidecar's own SASL in the link and the probes: authenticated before the client's frames
go up; a failure counted, logged once, the client's connection closed, /readyz told why."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest

from proxy.address import Address
from proxy.config import ProxyConfig
from proxy.server.app import Proxy
from proxy.server.health import probe_upstream
from proxy.server.link import Link
from proxy.wire.frames import FrameDecoder, frame
from proxy.wire.sasl_client import SaslCredentials
from tests.server.test_link import UPSTREAM, FakeTransport, Rig, produce, settle
from tests.wire.sasl_broker import FakeBroker


def api_versions(version: int, correlation_id: int) -> bytes:
    client_id = b"app"
    header = struct.pack(">hhih", 18, version, correlation_id, len(client_id)) + client_id
    return frame(header + (b"\x00\x00\x00" if version >= 3 else b""))


class SaslRig(Rig):
    """Rig's fake sockets, with a proxy doing SCRAM-SHA-512 as alice."""

    def __init__(self, password: str = "s3cret") -> None:
        super().__init__()
        config = ProxyConfig(
            upstream=(UPSTREAM,),
            advertised_host="127.0.0.1",
            broker_port_base=9100,
            upstream_sasl_mechanism="SCRAM-SHA-512",
            upstream_sasl_username="alice",
            upstream_sasl_password=password,
        )
        self.proxy = Proxy(config)
        self.proxy.connector = self._connect
        self.link = Link(self.proxy, [UPSTREAM], "test", 1)
        self.client = FakeTransport(self.link.client_lost)
        self._decoder = FrameDecoder()
        self._read = 0

    def sent_upstream(self) -> list[bytes]:
        """Frame bodies written upstream since the last call."""
        assert self.upstream is not None
        fresh = self.upstream.written[self._read :]
        self._read = len(self.upstream.written)
        return [body for data in fresh for body in self._decoder.feed(data)]

    def answer_sasl(self, broker: FakeBroker) -> list[bytes]:
        """Play the broker until the proxy sends something else than SASL; returns that."""
        bodies = self.sent_upstream()
        while bodies and struct.unpack_from(">i", bodies[0], 4)[0] < -(2**29):
            (body,) = bodies
            self.link.upstream_data(frame(broker.answer(body)))
            bodies = self.sent_upstream()
        return bodies

    def failures(self, reason: str) -> float:
        value = self.proxy.metrics.registry.get_sample_value(
            "idemproxy_sasl_authentication_failures_total",
            {"side": "upstream", "reason": reason},
        )
        assert value is not None
        return value


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="idemproxy.server")
    return caplog


async def test_the_clients_frames_go_up_only_after_the_sidecar_authenticated() -> None:
    rig = SaslRig()
    await rig.start()
    assert not rig.client.reading
    rig.link.client_data(produce(1))  # delivered before reading paused took effect
    broker = FakeBroker(lifetime_ms=60_000)
    after = rig.answer_sasl(broker)
    assert [(k, v) for k, v, _ in broker.seen] == [(18, 0), (17, 1), (36, 2), (36, 2)]
    assert [frame(b) for b in after] == [produce(1)]
    assert rig.client.reading
    assert rig.link.session.principal == "alice"
    assert rig.link._deadline_timer is not None  # the re-authentication is armed
    rig.link.finish()


async def test_a_refused_password_is_counted_logged_once_and_closes_the_client(
    warnings: pytest.LogCaptureFixture,
) -> None:
    rig = SaslRig(password="pw-WRONG-1")
    await rig.start()
    rig.link.client_data(produce(1))
    assert rig.pending == 1
    rig.answer_sasl(FakeBroker(password="right"))
    await settle()
    assert rig.pending == 0, "what the client sent meanwhile is settled at once"
    assert rig.upstream is not None
    assert rig.upstream.aborted
    assert rig.failures("sasl_authentication_failed") == 1
    assert rig.link.finished
    assert rig.client.closed
    assert rig.client.written == [], "a Produce gets no answer, the connection closes"
    lines = [r for r in warnings.records if "SASL" in r.getMessage()]
    assert [r.getMessage() for r in lines] == [
        "upstream SASL authentication failed, closing client connection"
    ]
    reason = lines[0].__dict__["reason"]
    assert reason.startswith(f"{UPSTREAM}: sasl_authentication_failed (")
    assert "Invalid credentials" in reason
    assert "pw-WRONG-1" not in reason


async def test_the_clients_first_apiversions_is_answered_with_the_reason() -> None:
    rig = SaslRig(password="wrong")
    await rig.start()
    rig.answer_sasl(FakeBroker(password="right"))
    # The client, not read so far, is read for its first request.
    assert rig.client.reading
    assert not rig.link.finished
    rig.link.client_data(api_versions(3, correlation_id=9))
    (answer,) = rig.client.written
    assert answer == frame(b"\x00\x00\x00\x09" + b"\x00\x3a" + b"\x00\x00\x00\x00")
    assert not rig.link.finished, "the client reads the answer and closes"
    rig.link.client_lost()
    assert rig.link.finished


async def test_an_apiversions_read_before_the_failure_is_answered_with_the_reason() -> None:
    rig = SaslRig(password="wrong")
    await rig.start()
    rig.link.client_data(api_versions(3, correlation_id=5))  # delivered as reading paused
    rig.answer_sasl(FakeBroker(password="right"))
    (answer,) = rig.client.written
    assert answer[4:8] == b"\x00\x00\x00\x05"
    assert answer[8:10] == b"\x00\x3a"
    rig.link.client_data(produce(6))  # a client that goes on anyway
    assert rig.link.finished
    assert len(rig.client.written) == 1


async def test_after_a_failed_authentication_other_requests_are_closed_unanswered() -> None:
    rig = SaslRig(password="wrong")
    await rig.start()
    rig.answer_sasl(FakeBroker(password="right"))
    assert not rig.link.finished
    rig.link.client_data(produce(3))
    assert rig.link.finished
    assert rig.client.written == []


async def test_a_silent_client_is_closed_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("proxy.server.link._REFUSAL_GRACE_SECONDS", 0.01)
    rig = SaslRig(password="wrong")
    await rig.start()
    rig.answer_sasl(FakeBroker(password="right"))
    assert not rig.link.finished
    await asyncio.sleep(0.05)
    assert rig.link.finished
    assert rig.client.closed


async def test_a_failed_reauthentication_closes_the_client_at_once() -> None:
    rig = SaslRig()
    await rig.start()
    broker = FakeBroker(lifetime_ms=60_000)
    rig.answer_sasl(broker)
    broker.password = "rotated"
    sasl = rig.link.session.upstream_sasl
    assert sasl is not None
    assert sasl.reauth_at is not None
    rig.link.apply(rig.link.session.on_timer(sasl.reauth_at))
    rig.answer_sasl(broker)
    assert rig.link.finished
    assert rig.client.aborted
    assert rig.failures("sasl_authentication_failed") == 1


async def test_the_broker_closing_during_authentication_counts_as_other(
    warnings: pytest.LogCaptureFixture,
) -> None:
    rig = SaslRig()
    await rig.start()
    assert rig.sent_upstream()  # the exchange has begun
    rig.link.upstream_lost()
    await settle()
    assert rig.failures("other") == 1
    rig.link.client_data(api_versions(0, correlation_id=4))
    assert len(rig.client.written) == 1
    (line,) = [r for r in warnings.records if "SASL" in r.getMessage()]
    assert "closed the connection during SASL authentication" in line.__dict__["reason"]


async def test_a_failure_after_the_close_is_not_counted_twice() -> None:
    rig = SaslRig(password="wrong")
    await rig.start()
    rig.answer_sasl(FakeBroker(password="right"))
    await settle()  # the upstream transport's connection_lost follows the abort
    assert rig.failures("sasl_authentication_failed") == 1
    assert rig.failures("other") == 0


async def _serve(broker: FakeBroker) -> tuple[asyncio.Server, Address]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack(">i", await reader.readexactly(4))
                body = await reader.readexactly(size)
                writer.write(frame(broker.answer(body)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, Address("127.0.0.1", port)


async def test_the_readiness_probe_authenticates_and_names_a_sasl_failure() -> None:
    broker = FakeBroker(password="right")
    server, address = await _serve(broker)
    seen: list[str] = []
    try:
        good = SaslCredentials("SCRAM-SHA-256", "alice", "right")
        assert await probe_upstream([address], 5.0, sasl=good, observe_sasl=seen.append) is None
        assert (17, 1) in [(k, v) for k, v, _ in broker.seen]
        bad = SaslCredentials("SCRAM-SHA-256", "alice", "pw-WRONG-1")
        problem = await probe_upstream([address], 5.0, sasl=bad, observe_sasl=seen.append)
    finally:
        server.close()
        await server.wait_closed()
    assert problem is not None
    assert problem.startswith(f"{address}: SASL authentication failed: sasl_authentication_failed")
    assert "pw-WRONG-1" not in problem
    assert seen == ["sasl_authentication_failed"]
