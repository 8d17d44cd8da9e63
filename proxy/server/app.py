"""The asyncio server: listeners, one upstream connection per client connection.

Only moves bytes between sockets and the sans-I/O session (proxy.routing.session);
every protocol decision lives there. Uses asyncio Protocols (no stream layer on the
hot path) with flow control in both directions: a full write buffer on one side
pauses reading on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Coroutine
from typing import Any, cast

from proxy.config import ProxyConfig
from proxy.errors import ProxyError
from proxy.idempotence.engine import IdempotenceEngine
from proxy.idempotence.produce import ProduceCoordinator
from proxy.routing.directory import Address, BrokerDirectory
from proxy.routing.session import Session
from proxy.server.health import probe_upstream
from proxy.server.metrics import Metrics

log = logging.getLogger("idemproxy.server")

_PROBE_CACHE_SECONDS = 2.0
_PROBE_INTERVAL_SECONDS = 10.0


class TaskSet:
    """Owns the background tasks the server starts: none is left unreferenced or unawaited."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(Address(str(peer[0]), int(peer[1])))
    return str(peer)


class _Link:
    """A client connection, its upstream connection and the session between them."""

    def __init__(self, proxy: Proxy, targets: list[Address], listener: str) -> None:
        self.proxy = proxy
        self.targets = targets
        self.listener = listener
        self.session = Session(
            proxy.directory,
            max_frame_bytes=proxy.config.max_frame_bytes,
            observer=proxy.metrics,
            clock=time.monotonic,
            produce=proxy.produce,
            on_client_output=self._to_client,
        )
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.peer = "?"
        self.client_open = False
        self.upstream_open = False
        self._drain_timer: asyncio.TimerHandle | None = None
        #: Frames for the broker that arrived before the upstream connection was up
        #: (reading is paused meanwhile, but a transport may deliver what it already read).
        self._early: list[bytes] = []

    # -- client side ------------------------------------------------------

    def client_made(self, transport: asyncio.Transport) -> None:
        self.client = transport
        self.client_open = True
        self.peer = _peer(transport)
        self.proxy.metrics.client_connections.inc()
        self.proxy.metrics.connections_total.inc()
        self.proxy.links.add(self)
        log.debug("client connected", extra={"peer": self.peer, "listener": self.listener})
        transport.pause_reading()  # until the upstream connection is up
        self.proxy.tasks.spawn(self._connect(), name=f"connect {self.peer}")

    def client_data(self, data: bytes) -> None:
        try:
            out = self.session.receive_client(data)
        except ProxyError as exc:
            self._refuse(exc)
            return
        if out.upstream:
            if self.upstream is not None:
                self.upstream.writelines(out.upstream)
            else:
                self._early.extend(out.upstream)
        if out.client:
            self._to_client(out.client)

    def client_eof(self) -> None:
        try:
            self.session.client_eof()
        except ProxyError as exc:
            self._note_error("client", exc)

    def client_lost(self) -> None:
        if not self.client_open:
            return
        self.client_open = False
        self.proxy.metrics.client_connections.dec()
        log.debug("client disconnected", extra={"peer": self.peer})
        self._release_upstream()

    def _refuse(self, exc: ProxyError) -> None:
        """Bad input from the client: one log line, this connection closed, nothing else touched."""
        self._note_error("client", exc)
        self.proxy.metrics.frames_refused.labels(type(exc).__name__).inc()
        if self.client is not None:
            self.client.abort()

    def _to_client(self, frames: list[bytes]) -> None:
        if self.client_open and self.client is not None:
            self.client.writelines(frames)

    # -- upstream side ----------------------------------------------------

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.proxy.config.connect_timeout
        failures: list[str] = []
        for target in self.targets:
            if not self.client_open:
                return
            try:
                async with asyncio.timeout(timeout):
                    await loop.create_connection(
                        lambda: _UpstreamProtocol(self), target.host, target.port
                    )
            except (OSError, TimeoutError) as exc:
                failures.append(f"{target}: {exc or type(exc).__name__}")
                continue
            return
        self.proxy.metrics.connection_errors.labels("upstream_unreachable").inc()
        log.warning(
            "upstream unreachable, closing client connection",
            extra={"peer": self.peer, "reason": "; ".join(failures) or "no upstream address"},
        )
        if self.client is not None:
            self.client.close()

    def upstream_made(self, transport: asyncio.Transport) -> None:
        self.upstream = transport
        self.upstream_open = True
        self.proxy.metrics.upstream_connections.inc()
        if not self.client_open:
            transport.close()
            return
        if self._early:
            transport.writelines(self._early)
            self._early.clear()
        if self.client is not None:
            self.client.resume_reading()

    def upstream_data(self, data: bytes) -> None:
        try:
            out = self.session.receive_upstream(data)
        except ProxyError as exc:
            self._note_error("upstream", exc)
            self._close_both()
            return
        if out.client:
            self._to_client(out.client)
        if not self.client_open and self.session.awaiting_upstream == 0:
            self._close_upstream()
        if self.proxy.stopping:
            self.proxy.note_answered()

    def upstream_lost(self) -> None:
        if not self.upstream_open:
            return
        self.upstream_open = False
        self.proxy.metrics.upstream_connections.dec()
        unanswered = self.session.awaiting_upstream
        self.session.abandon()
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        if self.client_open and self.client is not None:
            if unanswered:
                log.warning(
                    "upstream closed with requests in flight",
                    extra={"peer": self.peer, "reason": f"{unanswered} requests unanswered"},
                )
            self.client.close()
        self.proxy.links.discard(self)
        if self.proxy.stopping:
            self.proxy.note_answered()

    def _release_upstream(self) -> None:
        """The client is gone: read the responses still in flight (bounded), then close."""
        if not self.upstream_open:
            self.proxy.links.discard(self)
            return
        if self.session.awaiting_upstream == 0:
            self._close_upstream()
            return
        self._drain_timer = asyncio.get_running_loop().call_later(
            self.proxy.config.drain_timeout, self._close_upstream
        )

    def _close_upstream(self) -> None:
        if self.upstream is not None and self.upstream_open:
            self.upstream.close()

    def _close_both(self) -> None:
        if self.client is not None:
            self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()

    def _note_error(self, side: str, exc: ProxyError) -> None:
        reason = type(exc).__name__
        self.proxy.metrics.connection_errors.labels(reason).inc()
        log.warning(
            "closing connection: %s sent bad data: %s",
            side,
            exc.reason,
            extra={"peer": self.peer, "reason": reason},
        )

    # -- flow control -----------------------------------------------------

    def pause(self, side: str) -> None:
        other = self.upstream if side == "client" else self.client
        if other is not None:
            with contextlib.suppress(RuntimeError):
                other.pause_reading()

    def resume(self, side: str) -> None:
        other = self.upstream if side == "client" else self.client
        if other is not None:
            with contextlib.suppress(RuntimeError):
                other.resume_reading()


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, link: _Link) -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.link.client_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.link.client_data(data)

    def eof_received(self) -> bool | None:
        self.link.client_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.client_lost()

    def pause_writing(self) -> None:
        self.link.pause("client")

    def resume_writing(self) -> None:
        self.link.resume("client")


class _UpstreamProtocol(asyncio.Protocol):
    def __init__(self, link: _Link) -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.link.upstream_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.link.upstream_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.upstream_lost()

    def pause_writing(self) -> None:
        self.link.pause("upstream")

    def resume_writing(self) -> None:
        self.link.resume("upstream")


class Proxy:
    """A running proxy: the bootstrap listener, one listener per upstream broker, the links."""

    def __init__(self, config: ProxyConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.engine = IdempotenceEngine(
            max_entries=config.max_producer_states, expiry_ms=config.producer_state_expiry
        )
        self.produce = ProduceCoordinator(
            self.engine,
            policy=config.non_idempotent,
            observer=self.metrics,
            clock_ms=lambda: int(time.time() * 1000),
        )
        self.metrics.watch_producer_state(
            lambda: self.engine.entries, lambda: self.engine.evictions
        )
        self.tasks = TaskSet()
        self.links: set[_Link] = set()
        self.directory = BrokerDirectory(
            advertised_host=config.advertised_host,
            port_base=config.broker_port_base,
            on_new_broker=self._open_broker_listener,
        )
        self._servers: list[asyncio.Server] = []
        self._http: asyncio.Server | None = None
        self.bootstrap_address: Address | None = None
        self.upstream_targets = [Address(a.host, a.port) for a in config.upstream]
        self.stopping = False
        self._drained: asyncio.Event | None = None
        self._upstream_problem: str | None = "not probed yet"
        self._probed_at = -1e9

    async def start(self) -> None:
        """Bind the bootstrap listener (and the metrics port when configured)."""
        listen = self.config.listen
        bootstrap = self.upstream_targets
        server = await asyncio.get_running_loop().create_server(
            lambda: _ClientProtocol(_Link(self, bootstrap, "bootstrap")),
            listen.host,
            listen.port,
            reuse_address=True,
        )
        self._servers.append(server)
        sockname = server.sockets[0].getsockname()
        self.bootstrap_address = Address(listen.host, int(sockname[1]))
        if self.config.metrics_listen is not None:
            from proxy.server.http import start_http

            self._http = await start_http(self, self.config.metrics_listen)
            self.tasks.spawn(self._watch_upstream(), name="upstream probe")
        log.info(
            "listening",
            extra={
                "listen": str(self.bootstrap_address),
                "upstream": ",".join(str(a) for a in bootstrap),
            },
        )

    def _open_broker_listener(self, node_id: int, upstream: Address) -> None:
        """Bind broker node_id's listener now, so it accepts before its address reaches a client."""
        port = self.directory.listener_port(node_id)
        host = self.config.listen.host
        try:
            sock = _bind(host, port)
        except OSError as exc:
            self.metrics.connection_errors.labels("listener_bind").inc()
            log.error(
                "cannot open the listener for broker %d on %s: %s",
                node_id,
                Address(host, port),
                exc,
            )
            return
        self.tasks.spawn(self._serve_broker(node_id, sock), name=f"listener {node_id}")
        log.info(
            "broker listener opened",
            extra={
                "node_id": node_id,
                "listen": str(Address(host, port)),
                "upstream": str(upstream),
            },
        )

    async def _serve_broker(self, node_id: int, sock: socket.socket) -> None:
        def factory() -> _ClientProtocol:
            target = self.directory.upstream(node_id)
            return _ClientProtocol(_Link(self, [target] if target else [], f"broker {node_id}"))

        server = await asyncio.get_running_loop().create_server(factory, sock=sock)
        self._servers.append(server)

    async def readiness(self) -> str | None:
        """None when ready (listening, upstream answers), else the reason it is not."""
        if self.stopping:
            return "shutting down"
        if not self._servers or not self._servers[0].is_serving():
            return "not listening"
        if time.monotonic() - self._probed_at > _PROBE_CACHE_SECONDS:
            await self._probe()
        if self._upstream_problem is not None:
            return f"upstream cluster does not answer: {self._upstream_problem}"
        return None

    async def _probe(self) -> None:
        self._upstream_problem = await probe_upstream(
            self.upstream_targets, min(self.config.connect_timeout, 5.0)
        )
        self._probed_at = time.monotonic()
        self.metrics.upstream_up.set(0 if self._upstream_problem else 1)

    async def _watch_upstream(self) -> None:
        """Keep idemproxy_upstream_up current even when nobody asks /readyz."""
        while True:
            await self._probe()
            await asyncio.sleep(_PROBE_INTERVAL_SECONDS)

    def in_flight(self) -> int:
        """Requests forwarded to brokers and not answered yet, over all connections."""
        return sum(link.session.awaiting_upstream for link in self.links if link.upstream_open)

    def note_answered(self) -> None:
        """Called as responses arrive: wakes a shutdown waiting for requests in flight."""
        if self._drained is not None and not self.in_flight():
            self._drained.set()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, give requests in flight up to grace seconds to finish, then close."""
        self.stopping = True
        for server in self._servers:
            server.close()
        self._drained = asyncio.Event()
        self.note_answered()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._drained.wait()
        left = self.in_flight()
        if left:
            log.warning("closing with requests still in flight", extra={"in_flight": left})
        await self.close()

    async def close(self) -> None:
        """Stop listening, close every connection and background task."""
        for server in self._servers:
            server.close()
        if self._http is not None:
            self._http.close()
        for link in list(self.links):
            link._close_both()
        await self.tasks.cancel_all()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(config: ProxyConfig) -> None:
    """Run the proxy until SIGINT or SIGTERM."""
    proxy = Proxy(config)
    await proxy.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"in_flight": proxy.in_flight()})
    await proxy.shutdown(config.shutdown_timeout)
    log.info("stopped")


def run(config: ProxyConfig) -> None:
    """Blocking entry point used by the command line (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
