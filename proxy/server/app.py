"""The asyncio server: listeners, the links between client and upstream connections.

Only moves bytes between sockets and the sans-I/O core: proxy.server.pump reads and writes
sockets with flow control, proxy.server.link applies each connection's policy, and every
protocol decision lives in proxy.routing (sessions and their handlers). The proxy owns every
link, so a session's output naming another session (`woken`) is delivered here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

from proxy.address import Address
from proxy.config import ProxyConfig, StartError
from proxy.idempotence.coordinator import ProduceCoordinator
from proxy.idempotence.engine import IdempotenceEngine
from proxy.idempotence.stamping import Stamper
from proxy.routing.directory import BrokerDirectory
from proxy.routing.session import Shared
from proxy.server.health import probe_producer_expiry, probe_upstream
from proxy.server.link import Connector, Link, wall_ms
from proxy.server.metrics import Metrics
from proxy.server.pump import Pump
from proxy.server.tls import (
    Reloadable,
    TLSSetupError,
    UpstreamTLS,
    describe_failure,
    failure_reason,
    listener_context,
    upstream_context,
)
from proxy.server.tls_listener import Listening, TLSListener

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


class Proxy:
    """A running proxy: the bootstrap listener, one listener per upstream broker, the links."""

    def __init__(self, config: ProxyConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.engine = IdempotenceEngine(
            max_entries=config.max_producer_states, expiry_ms=config.producer_state_expiry
        )
        produce = ProduceCoordinator(
            self.engine,
            policy=config.non_idempotent,
            observer=self.metrics,
            clock_ms=wall_ms,
            inflight_wait_ms=int(config.inflight_wait * 1000),
        )
        self.metrics.watch_producer_state(
            lambda: self.engine.entries,
            lambda: self.engine.evictions,
            lambda: self.engine.expiry_ms,
        )
        self.tasks = TaskSet()
        self.links: dict[int, Link] = {}
        self._session_ids = itertools.count(1)
        self.directory = BrokerDirectory(
            advertised_host=config.advertised_host, port_base=config.broker_port_base
        )
        self.stamper: Stamper | None = None
        if config.non_idempotent == "stamp":
            self.stamper = Stamper(
                retry_window_ms=int(config.retry_window * 1000),
                max_bytes=config.stamp_memory,
                observer=self.metrics,
            )
            stamper = self.stamper
            self.metrics.watch_stamping(
                lambda: stamper.bytes,
                lambda: stamper.copies,
                lambda: stamper.lines,
                lambda: stamper.evictions,
            )
        self.shared = Shared(self.directory, produce, stamper=self.stamper)
        self._servers: list[Listening] = []
        self._http: asyncio.Server | None = None
        self.bootstrap_address: Address | None = None
        self.upstream_targets = list(config.upstream)
        self.stopping = False
        self._drained: asyncio.Event | None = None
        self._upstream_problem: str | None = "not probed yet"
        #: Broker listeners that could not be opened: node id -> reason (fails /readyz).
        self.listener_problems: dict[int, str] = {}
        self._probed_at = -1e9
        #: How links reach brokers; None is the loop's create_connection (tests substitute it).
        self.connector: Connector | None = None
        #: TLS towards the brokers (--upstream-tls): links and probes use it; replaced when
        #: reload_tls rebuilds the context from changed files.
        self.upstream_tls: UpstreamTLS | None = None
        #: Certificate files re-read when they change: (side, files) for "client", "upstream".
        self.tls_files: list[tuple[str, Reloadable]] = []
        if config.upstream_tls:
            ca, cert, key = config.upstream_ca, config.upstream_cert, config.upstream_key
            upstream = Reloadable(
                lambda: upstream_context(ca, cert, key), [p for p in (ca, cert, key) if p]
            )
            self.upstream_tls = UpstreamTLS(upstream.context, config.upstream_server_name)
            if upstream.paths:
                self.tls_files.append(("upstream", upstream))
        #: TLS towards clients (--listen-tls-cert): the context every listener's new
        #: connections take.
        self.listen_tls: Reloadable | None = None
        if config.listen_tls_cert is not None and config.listen_tls_key is not None:
            cert, key, client_ca = (
                config.listen_tls_cert,
                config.listen_tls_key,
                config.listen_tls_client_ca,
            )
            self.listen_tls = Reloadable(
                lambda: listener_context(cert, key, client_ca),
                [p for p in (cert, key, client_ca) if p],
            )
            self.tls_files.append(("client", self.listen_tls))

    async def start(self) -> None:
        """Bind the bootstrap listener (and the metrics port when configured).

        Raises StartError when a port cannot be bound.
        """
        listen = self.config.listen
        bootstrap = self.upstream_targets
        # The management port first: once clients can connect, /metrics and /readyz answer.
        if self.config.metrics_listen is not None:
            from proxy.server.http import start_http

            try:
                self._http = await start_http(self, self.config.metrics_listen)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise StartError("metrics_listen", self.config.metrics_listen, reason) from exc
        try:
            server: Listening
            if self.listen_tls is None:
                server = await asyncio.get_running_loop().create_server(
                    lambda: self._accept(bootstrap, "bootstrap"),
                    listen.host,
                    listen.port,
                    reuse_address=True,
                )
            else:
                server = self._tls_listener(
                    _bind(listen.host, listen.port),
                    lambda: self._accept(bootstrap, "bootstrap"),
                    "bootstrap",
                )
        except OSError as exc:
            if self._http is not None:
                self._http.close()
            raise StartError("listen", listen, exc.strerror or str(exc)) from exc
        self._servers.append(server)
        sockname = server.sockets[0].getsockname()
        self.bootstrap_address = Address(listen.host, int(sockname[1]))
        self.tasks.spawn(self._watch_upstream(), name="upstream probe")
        if self.tls_files:
            self.tasks.spawn(self._watch_tls_files(), name="TLS files")
        log.info(
            "listening",
            extra={
                "listen": str(self.bootstrap_address),
                "upstream": ",".join(str(a) for a in bootstrap),
            },
        )

    def _accept(self, targets: list[Address], listener: str) -> Pump:
        link = Link(self, targets, listener, next(self._session_ids))
        return Pump(link.client_side)

    # -- TLS towards clients ---------------------------------------------------------

    def _tls_listener(
        self, sock: socket.socket, protocol: Callable[[], Pump], listener: str
    ) -> TLSListener:
        tls = self.listen_tls
        assert tls is not None

        def refused(peer: str, reason: str, exc: BaseException | None) -> None:
            self.client_tls_refused(peer, listener, reason, exc)

        return TLSListener(
            sock,
            context=lambda: tls.context,
            protocol=protocol,
            spawn=self.tasks.spawn,
            handshake_timeout=self.config.connect_timeout,
            refused=refused,
            name=listener,
        )

    def client_tls_refused(
        self, peer: str, listener: str, reason: str, exc: BaseException | None
    ) -> None:
        """A client whose connection ends before TLS is up: one line, counted, closed."""
        reason = reason or failure_reason(exc or OSError())
        if reason == "not_tls":
            message, detail = "client speaks plaintext to a TLS listener", "not a TLS handshake"
        elif reason == "plaintext_listener":
            message, detail = "client speaks TLS to a plaintext listener", "a TLS ClientHello"
        else:
            message = "client TLS handshake failed"
            detail = describe_failure(exc, "the client") if exc else reason
        self.metrics.tls_handshake_failures.labels("client", reason).inc()
        self.metrics.connection_errors.labels("client_tls").inc()
        log.warning(
            message,
            extra={"peer": peer, "listener": listener, "reason": f"{reason} ({detail})"},
        )

    async def _watch_tls_files(self) -> None:
        """Re-read certificate files that changed (secret rotation); open connections stay."""
        while True:
            await asyncio.sleep(self.config.tls_reload_interval)
            self.reload_tls()

    def reload_tls(self) -> None:
        """Rebuild each context whose files changed; a failed rebuild keeps the old one."""
        for side, files in self.tls_files:
            try:
                if not files.check():
                    continue
            except TLSSetupError as exc:
                self.metrics.tls_reloads.labels(side, "failed").inc()
                log.warning(
                    "certificate files changed but cannot be used, keeping the previous ones",
                    extra={"side": side, "reason": str(exc)},
                )
                continue
            self.metrics.tls_reloads.labels(side, "ok").inc()
            if side == "upstream" and self.upstream_tls is not None:
                self.upstream_tls = UpstreamTLS(files.context, self.upstream_tls.server_name)
            log.info(
                "certificate files re-read",
                extra={"side": side, "files": ",".join(str(p) for p in files.paths)},
            )

    # -- links ------------------------------------------------------------------

    def adopt(self, link: Link) -> None:
        self.links[link.session.session_id] = link

    def release(self, link: Link) -> None:
        self.links.pop(link.session.session_id, None)

    def wake(self, session_id: int) -> None:
        """Another connection's response resolved retries this session holds."""
        link = self.links.get(session_id)
        if link is not None and not link.finished:
            link.apply(link.session.resume())

    def open_broker_listener(self, node_id: int, upstream: Address) -> None:
        """Bind broker node_id's listener now, so it accepts before its address reaches a client."""
        port = self.directory.listener_port(node_id)
        host = self.config.listen.host
        try:
            sock = _bind(host, port)
        except OSError as exc:
            self.metrics.connection_errors.labels("listener_bind").inc()
            reason = (
                f"cannot open the listener for broker {node_id} on {Address(host, port)}: {exc}"
            )
            self.listener_problems[node_id] = reason
            log.error(reason)
            return
        self.listener_problems.pop(node_id, None)
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
        def factory() -> Pump:
            target = self.directory.upstream(node_id)
            return self._accept([target] if target else [], f"broker {node_id}")

        server: Listening
        if self.listen_tls is None:
            server = await asyncio.get_running_loop().create_server(factory, sock=sock)
        else:
            server = self._tls_listener(sock, factory, f"broker {node_id}")
        self._servers.append(server)

    # -- readiness --------------------------------------------------------------

    async def readiness(self) -> str | None:
        """None when ready (listening, upstream answers), else the reason it is not."""
        if self.stopping:
            return "shutting down"
        if not self._servers or not self._servers[0].is_serving():
            return "not listening"
        if self.listener_problems:
            return "; ".join(self.listener_problems[n] for n in sorted(self.listener_problems))
        if time.monotonic() - self._probed_at > _PROBE_CACHE_SECONDS:
            await self._probe()
        if self._upstream_problem is not None:
            return f"upstream cluster does not answer: {self._upstream_problem}"
        return None

    async def _probe(self) -> None:
        timeout = min(self.config.connect_timeout, 5.0)
        self._upstream_problem = await probe_upstream(
            self.upstream_targets, timeout, self.upstream_tls, self._handshake_failed
        )
        self._probed_at = time.monotonic()
        self.metrics.upstream_up.set(0 if self._upstream_problem else 1)
        if self._upstream_problem is None:
            await self._learn_producer_expiry(timeout)

    def _handshake_failed(self, reason: str) -> None:
        self.metrics.tls_handshake_failures.labels("upstream", reason).inc()

    async def _learn_producer_expiry(self, per_broker: float) -> None:
        """Keep the engine's memory within the brokers' producer.id.expiration.ms.

        The proxy must not answer from a producer state the broker has already expired: the
        broker would accept (KIP-360) what the proxy rejects as out of sequence.
        """
        brokers = self.directory.known_brokers()
        learned = await probe_producer_expiry(
            brokers, per_broker, self.upstream_tls, self._handshake_failed
        )
        if learned is None:
            return
        effective = min(self.config.producer_state_expiry, learned)
        if effective != self.engine.expiry_ms:
            log.info(
                "producer state expiry follows the brokers",
                extra={"expiry_ms": effective, "broker_expiry_ms": learned},
            )
            self.engine.expiry_ms = effective

    async def _watch_upstream(self) -> None:
        """Keep idemproxy_upstream_up current even when nobody asks /readyz."""
        while True:
            await self._probe()
            await asyncio.sleep(_PROBE_INTERVAL_SECONDS)

    # -- shutdown -----------------------------------------------------------------

    def in_flight(self) -> int:
        """Requests forwarded to brokers and not answered yet, over all connections."""
        return sum(
            link.session.awaiting_upstream for link in self.links.values() if link.upstream_open
        )

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
        """Stop listening, end every link (settling what each owes) and background task."""
        for server in self._servers:
            server.close()
        if self._http is not None:
            self._http.close()
        for link in list(self.links.values()):
            link.abort()
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
    """Run the proxy until SIGINT or SIGTERM (StartError when a listener cannot open)."""
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
