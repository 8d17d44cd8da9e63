"""A Kafka-aware TCP relay that loses produce acknowledgements: the seed's failure, on demand.

It sits in front of a set of ports (every broker's, or every proxy listener's) on
another loopback address, forwards bytes both ways, and can drop a Produce
response after the broker has written the batch, resetting the client's
connection (RST) and closing the server side. The producer never learns the
outcome and retries: exactly the retry idempotence must absorb.

Instead of dropping, it can also turn a produce answer into a retriable error
(``error_next_acks``): the batch was written, the client is told it was not, as
with REQUEST_TIMED_OUT after the leader appended but replication lagged.

It also counts what passes towards the server: every produce batch identity
(producer id, epoch, first sequence, partition) seen, so a test can tell whether
a retried batch reached the broker. With ``capture=True`` it also keeps every
relayed produce batch's bytes (``RelayStats.produced``), marked when its
acknowledgement was the one dropped, for tests that look at how clients retry.

Independent of the proxy's code on purpose: frames are split here and bodies
decoded with kafka-python, so a bug in the proxy's parser cannot hide itself.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka.protocol.producer import ProduceRequest, ProduceResponse

PRODUCE = 0
_HDR = struct.Struct(">hhi")


@dataclass
class RelayedBatch:
    """One partition's record batch in a produce request the relay passed to the server."""

    connection: int  #: relay connection number (1-based, in accept order)
    request: int  #: produce request number across the relay (1-based, in relay order)
    topic: str  #: topic name, or the topic id as text for Produce v13+
    partition: int
    records: bytes  #: the record batch bytes as relayed (v2: decode with kafka.record)
    ack_dropped: bool = False  #: this request's response was the one dropped
    #: the broker's error code for this partition (None: no answer reached the relay)
    error_code: int | None = None
    #: the error the relay answered instead of the broker's success (0: none)
    answered_error: int = 0


@dataclass
class RelayStats:
    produce_requests: int = 0
    #: (topic, partition, producer id, epoch, base sequence) -> times it reached the server side
    batches: collections.Counter[tuple[str, int, int, int, int]] = field(
        default_factory=collections.Counter
    )
    acks_dropped: int = 0
    acks_turned_into_errors: int = 0
    connections: int = 0
    #: time.monotonic() at which each held produce response was finally passed on
    held_released: list[float] = field(default_factory=list)
    #: every relayed produce batch, in order (only with ``LostAckRelay(capture=True)``)
    produced: list[RelayedBatch] = field(default_factory=list)

    @property
    def duplicate_batches(self) -> int:
        """Batches that reached the server more than once (a retry got through)."""
        return sum(n - 1 for n in self.batches.values() if n > 1)


def _batch_ids(version: int, body: bytes) -> list[tuple[str, int, int, int, int]]:
    req = ProduceRequest.decode(body, version=version, header=True)
    ids = []
    for topic in req.topic_data:
        name = str(topic.topic_id) if version >= 13 else topic.name
        for part in topic.partition_data:
            rec = part.records
            if rec and len(rec) >= 61:
                pid, epoch, seq = struct.unpack_from(">qhi", rec, 43)
                ids.append((name, part.index, pid, epoch, seq))
    return ids


def _relayed(req: ProduceRequest, version: int, conn: int, number: int) -> list[RelayedBatch]:
    out = []
    for topic in req.topic_data:
        name = str(topic.topic_id) if version >= 13 else topic.name
        for part in topic.partition_data:
            if part.records:
                out.append(RelayedBatch(conn, number, name, part.index, bytes(part.records)))
    return out


def _answered(seen: list[RelayedBatch], version: int, body: bytes) -> None:
    resp = ProduceResponse.decode(body, version=version, header=True)
    codes = {}
    for topic in resp.responses:
        name = str(topic.topic_id) if version >= 13 else topic.name
        for part in topic.partition_responses:
            codes[name, part.index] = part.error_code
    for batch in seen:
        batch.error_code = codes.get((batch.topic, batch.partition))


def _with_error(frame: bytes, version: int, code: int) -> bytes:
    """The produce response frame with every partition's answer replaced by ``code``."""
    resp = ProduceResponse.decode(frame[4:], version=version, header=True)
    for topic in resp.responses:
        for part in topic.partition_responses:
            part.error_code = code
            part.base_offset = -1
    body = bytes(resp.encode(header=True))
    return struct.pack(">i", len(body)) + body


class _Frames:
    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            (size,) = struct.unpack_from(">i", self.buf, 0)
            if len(self.buf) < 4 + size:
                break
            out.append(bytes(self.buf[: 4 + size]))
            del self.buf[: 4 + size]
        return out


class LostAckRelay:
    """Relays listen_host:port -> target_host:port for each port; drops produce acks on demand."""

    def __init__(
        self, listen_host: str, target_host: str, ports: list[int], *, capture: bool = False
    ) -> None:
        self.capture = capture
        self.listen_host = listen_host
        self.target_host = target_host
        self.ports = list(ports)
        self.stats = RelayStats()
        self._drop_budget = 0
        self._drop_every = 0
        self._hold_budget = 0
        self._hold_seconds = 0.0
        self._error_budget = 0
        self._error_code = 0
        self._produce_acks_seen = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    # -- fault control (thread-safe) -----------------------------------------

    def drop_next_acks(self, n: int = 1) -> None:
        """Drop the next n produce responses (each followed by a connection reset)."""
        with self._lock:
            self._drop_budget += n

    def error_next_acks(self, n: int = 1, error_code: int = 7) -> None:
        """Answer the next n produce requests with error_code (default REQUEST_TIMED_OUT).

        With ``capture=True`` only answers where the broker reported success for every
        partition count, so the batch is known to be written; without, any answer.
        """
        with self._lock:
            self._error_budget += n
            self._error_code = error_code

    def _should_error(self) -> int:
        with self._lock:
            if self._error_budget > 0:
                self._error_budget -= 1
                return self._error_code
            return 0

    def drop_every(self, k: int) -> None:
        """Drop every k-th produce response from now on (0 turns it off)."""
        with self._lock:
            self._drop_every = k

    def hold_next_acks(self, n: int, seconds: float) -> None:
        """Pass the next n produce responses on only after `seconds` (a slow broker answer;
        later responses on the same connection wait behind it, as Kafka's ordering demands)."""
        with self._lock:
            self._hold_budget += n
            self._hold_seconds = seconds

    def _hold_for(self) -> float:
        with self._lock:
            if self._hold_budget > 0:
                self._hold_budget -= 1
                return self._hold_seconds
            return 0.0

    def _should_drop(self) -> bool:
        with self._lock:
            self._produce_acks_seen += 1
            if self._drop_budget > 0:
                self._drop_budget -= 1
                return True
            return bool(self._drop_every) and self._produce_acks_seen % self._drop_every == 0

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> LostAckRelay:
        self._thread = threading.Thread(target=self._run, name="lost-ack-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("relay did not start")
        if self._error is not None:
            raise RuntimeError(f"relay failed to start: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> LostAckRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        servers = []
        try:
            for port in self.ports:
                servers.append(
                    await asyncio.start_server(
                        self._handler(port), self.listen_host, port, reuse_address=True
                    )
                )
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        for server in servers:
            server.close()

    def _handler(self, port: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]:
        async def handle(creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
            self.stats.connections += 1
            conn_no = self.stats.connections
            try:
                sreader, swriter = await asyncio.open_connection(self.target_host, port)
            except OSError:
                cwriter.close()
                return
            # api key, version and captured batches per awaited response
            pending: collections.deque[tuple[int, int, list[RelayedBatch]]] = collections.deque()

            async def upstream() -> None:
                frames = _Frames()
                while data := await creader.read(65536):
                    for f in frames.feed(data):
                        if swriter.is_closing():
                            return  # an ack was dropped: what the client sent since is lost
                        api_key, version, _corr = _HDR.unpack_from(f, 4)
                        expects = True
                        seen: list[RelayedBatch] = []
                        if api_key == PRODUCE:
                            self.stats.produce_requests += 1
                            for batch in _batch_ids(version, f[4:]):
                                self.stats.batches[batch] += 1
                            req = ProduceRequest.decode(f[4:], version=version, header=True)
                            expects = req.acks != 0
                            if self.capture:
                                seen = _relayed(req, version, conn_no, self.stats.produce_requests)
                                self.stats.produced.extend(seen)
                        if expects:
                            pending.append((api_key, version, seen))
                        swriter.write(f)
                    await swriter.drain()
                swriter.close()

            async def downstream() -> None:
                frames = _Frames()
                while data := await sreader.read(65536):
                    for f in frames.feed(data):
                        api_key, version, seen = pending.popleft() if pending else (-1, 0, [])
                        if seen:
                            _answered(seen, version, f[4:])
                        hold = self._hold_for() if api_key == PRODUCE else 0.0
                        if hold:
                            await asyncio.sleep(hold)
                            self.stats.held_released.append(time.monotonic())
                        if api_key == PRODUCE and self._should_drop():
                            self.stats.acks_dropped += 1
                            for batch in seen:
                                batch.ack_dropped = True
                            _reset(cwriter)
                            swriter.close()
                            return
                        written = all(b.error_code == 0 for b in seen)  # (all, without capture)
                        if api_key == PRODUCE and written and (code := self._should_error()):
                            self.stats.acks_turned_into_errors += 1
                            for batch in seen:
                                batch.answered_error = code
                            f = _with_error(f, version, code)
                        cwriter.write(f)
                    await cwriter.drain()
                cwriter.close()

            tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                swriter.close()
                cwriter.close()

        return handle


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a middlebox timeout would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
