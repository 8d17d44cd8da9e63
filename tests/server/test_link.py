"""The connection policy: every way a link ends settles what its connection owes the engine.

Playbook style with fake transports (no sockets): the test plays the operating system's part,
delivering bytes and connection events to the link and reading what it wrote or closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest

from proxy.address import Address
from proxy.config import ProxyConfig, StartError
from proxy.errors import REFUSAL_REASONS
from proxy.server.app import Proxy
from proxy.server.link import Link
from proxy.server.metrics import Metrics
from proxy.wire.frames import frame
from tests.routing._support import (
    PartitionAnswer,
    encode_request,
    encode_response,
    idempotent_batch,
    produce_request_with,
    produce_response_with,
)

UPSTREAM = Address("127.0.0.1", 1)


class FakeTransport(asyncio.Transport):
    """Records writes and closes; `lost` is called once, as asyncio would after close."""

    def __init__(self, lost: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.reading = True
        self._lost = lost

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def writelines(self, data: Any) -> None:
        self.written.extend(bytes(d) for d in data)

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._lost is not None:
                asyncio.get_running_loop().call_soon(self._lost)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed


class Rig:
    """A proxy (never started) whose links connect through `connect`, and one link."""

    def __init__(self, *, reachable: bool = True, drain_timeout: float = 30.0) -> None:
        config = ProxyConfig(
            upstream=(UPSTREAM,),
            advertised_host="127.0.0.1",
            broker_port_base=9100,
            drain_timeout=drain_timeout,
        )
        self.proxy = Proxy(config)
        self.proxy.connector = self._connect
        self.reachable = reachable
        self.connected = asyncio.Event()
        self.link = Link(self.proxy, [UPSTREAM], "test", 1)
        self.client = FakeTransport(self.link.client_lost)
        self.upstream: FakeTransport | None = None

    async def _connect(
        self, factory: Callable[[], asyncio.Protocol], host: str, port: int
    ) -> object:
        await asyncio.sleep(0)
        if not self.reachable:
            raise ConnectionRefusedError(111, "Connection refused")
        protocol = factory()
        self.upstream = FakeTransport(lambda: protocol.connection_lost(None))
        protocol.connection_made(self.upstream)
        self.connected.set()
        return self.upstream, protocol

    async def start(self) -> None:
        self.link.client_made(self.client)
        if self.reachable:
            await self.connected.wait()

    @property
    def pending(self) -> int:
        return self.proxy.engine.pending


def produce(correlation_id: int, seq: int = 0) -> bytes:
    batch = idempotent_batch(4242, 0, seq)
    return frame(
        encode_request(produce_request_with(9, [("orders", [(0, batch)])]), correlation_id)
    )


def produce_ok(correlation_id: int) -> bytes:
    response = produce_response_with(9, [("orders", [PartitionAnswer(0, 0, 42, -1, 0)])])
    return frame(encode_response(response, correlation_id))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_upstream_never_reached_settles_the_frames_buffered_meanwhile() -> None:
    rig = Rig(reachable=False)
    rig.link.client_made(rig.client)
    rig.link.client_data(produce(1))  # delivered before reading paused took effect
    assert rig.pending == 1
    await settle()
    assert rig.link.finished
    assert rig.pending == 0
    assert rig.client.closed
    assert rig.proxy.links == {}


async def test_upstream_eof_with_a_produce_in_flight_settles_it() -> None:
    rig = Rig()
    await rig.start()
    rig.link.client_data(produce(1))
    assert rig.upstream is not None
    assert rig.upstream.written == [produce(1)]
    assert rig.pending == 1
    rig.link.upstream_lost()
    assert rig.pending == 0
    assert rig.client.closed


async def test_client_eof_keeps_upstream_open_to_learn_the_outcome() -> None:
    rig = Rig()
    await rig.start()
    rig.link.client_data(produce(1))
    rig.client.close()
    await settle()
    assert rig.upstream is not None
    assert not rig.upstream.closed  # draining
    rig.link.upstream_data(produce_ok(1))
    assert rig.pending == 0
    assert rig.proxy.engine.entries == 1  # the answer taught the engine: written at 42
    assert rig.upstream.closed
    await settle()
    assert rig.link.finished


async def test_drain_timeout_closes_upstream_and_settles_as_unknown() -> None:
    rig = Rig(drain_timeout=0.01)
    await rig.start()
    rig.link.client_data(produce(1))
    rig.client.close()
    await asyncio.sleep(0.05)
    await settle()
    assert rig.upstream is not None
    assert rig.upstream.closed
    assert rig.link.finished
    assert rig.pending == 0


async def test_shutdown_settles_every_link() -> None:
    rig = Rig()
    await rig.start()
    rig.link.client_data(produce(1))
    await rig.proxy.close()
    assert rig.link.finished
    assert rig.pending == 0
    assert rig.client.aborted


@pytest.mark.parametrize(
    "broker_bytes",
    [
        frame(struct.pack(">i", 1) + b"\xff\xff\xff\xff not a produce response"),
        produce_ok(77),  # answers another correlation id
    ],
    ids=["undecodable", "mismatched-correlation-id"],
)
async def test_bad_bytes_from_the_broker_end_the_link_and_settle(broker_bytes: bytes) -> None:
    rig = Rig()
    await rig.start()
    rig.link.client_data(produce(1))
    rig.link.upstream_data(broker_bytes)
    assert rig.link.finished
    assert rig.pending == 0
    assert rig.client.aborted


# -- start-up and readiness (issue 8, defect 5) -----------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket is listening on."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        yield blocker.getsockname()[1]
    finally:
        blocker.close()


async def test_a_broker_listener_that_cannot_open_fails_readiness_with_the_reason(
    busy_port: int,
) -> None:
    rig = Rig()
    rig.proxy.directory.port_base = busy_port - 2
    rig.proxy.config = dataclasses.replace(
        rig.proxy.config, listen=Address("127.0.0.1", 0), broker_port_base=busy_port - 2
    )
    await rig.proxy.start()
    rig.proxy.open_broker_listener(2, Address("kafka-2", 9092))
    reason = await rig.proxy.readiness()
    assert reason is not None
    assert f"cannot open the listener for broker 2 on 127.0.0.1:{busy_port}" in reason
    await rig.proxy.close()


async def test_listen_port_in_use_is_a_start_error_naming_the_option(busy_port: int) -> None:
    rig = Rig()
    rig.proxy.config = dataclasses.replace(rig.proxy.config, listen=Address("127.0.0.1", busy_port))
    with pytest.raises(StartError) as info:
        await rig.proxy.start()
    assert str(info.value).startswith(f"--listen: cannot listen on 127.0.0.1:{busy_port}: ")


def test_every_refusal_reason_is_exported_at_zero_before_any_refusal() -> None:
    text = generate_latest(Metrics().registry).decode()
    for reason in REFUSAL_REASONS:
        assert f'idemproxy_frames_refused_total{{reason="{reason}"}} 0.0' in text
