"""Capture seed corpora from real clients: ``python -m tests.fuzz.capture [--out DIR]``.

Starts one local Apache Kafka broker (the integration harness) that advertises a
second loopback address, where a recording TCP relay forwards every connection to the
broker; so every client connection, bootstrap or not, passes the relay. Then runs
kafka-python, aiokafka, confluent-kafka (librdkafka) and the Java tools through it:
produce with and without idempotence (and compressed, and transactional), consume in
a group, admin calls. Each frame is recorded as the wire carried it and written as
seed files, deduplicated and capped per (client, API, version) so the corpus stays
small:

* ``frames/``: request frames with their size prefix, and each connection's first
  requests as one stream (the ``frames`` target's input is a client byte stream);
* ``responses/``: ``api_key, version`` + response body, for the APIs the proxy decodes;
* ``batch/``: the ``records`` of each partition of each Produce request;
* ``produce/``: ``version`` + Produce request body (header included);
* ``session/``: a request frame and a response of the same kind, for the session target.

Needs Java 17+ and the Kafka jars (``make install``); takes about two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from kafka.protocol.producer import ProduceRequest

from integration import clients
from integration.harness import KafkaCluster
from integration.harness import java_tools as jt

RELAY_HOST = "127.0.0.5"  # integration.rigs uses .2 and .3
DECODED = {
    0: "produce",
    3: "metadata",
    10: "findcoordinator",
    18: "apiversions",
    60: "describecluster",
}
#: Distinct seeds kept per (client, API, version); Produce gets more (batches differ).
PER_KEY = 3
PER_KEY_PRODUCE = 8
#: A connection's stream seed: its first frames, up to this many bytes.
STREAM_BYTES = 8192
#: Frames larger than this are not kept as seeds (the fuzzer mutates small inputs best).
MAX_SEED = 16384

_HDR = struct.Struct(">hhi")


@dataclass
class Recording:
    """What passed the relay: (client, api, version, correlation, request body, response body)."""

    label: str = "unknown"
    exchanges: list[tuple[str, int, int, bytes, bytes | None]] = field(default_factory=list)
    streams: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _split(buf: bytearray) -> list[bytes]:
    out = []
    while len(buf) >= 4:
        (size,) = struct.unpack_from(">i", buf, 0)
        if len(buf) < 4 + size:
            break
        out.append(bytes(buf[: 4 + size]))
        del buf[: 4 + size]
    return out


class RecordingRelay:
    """listen_host:port -> target_host:port for each port, recording every frame both ways."""

    def __init__(self, listen_host: str, target_host: str, ports: list[int]) -> None:
        self.listen_host, self.target_host, self.ports = listen_host, target_host, ports
        self.recording = Recording()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> RecordingRelay:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("relay did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        servers = [
            await asyncio.start_server(self._handler(p), self.listen_host, p, reuse_address=True)
            for p in self.ports
        ]
        self._ready.set()
        await self._stop.wait()
        for server in servers:
            server.close()

    def _handler(
        self, port: int
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        rec = self.recording

        async def handle(creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
            label = rec.label
            try:
                sreader, swriter = await asyncio.open_connection(self.target_host, port)
            except OSError:
                cwriter.close()
                return
            pending: dict[int, tuple[int, int, bytes]] = {}
            stream = bytearray()

            async def upstream() -> None:
                buf = bytearray()
                while data := await creader.read(65536):
                    if len(stream) < STREAM_BYTES:
                        stream.extend(data)
                    buf += data
                    for f in _split(buf):
                        if len(f) >= 12:
                            api, version, corr = _HDR.unpack_from(f, 4)
                            pending[corr] = (api, version, f)
                            if api == 0 and _acks(version, f) == 0:
                                pending.pop(corr)
                                with rec.lock:
                                    rec.exchanges.append((label, api, version, f, None))
                    swriter.write(data)
                    await swriter.drain()
                swriter.close()

            async def downstream() -> None:
                buf = bytearray()
                while data := await sreader.read(65536):
                    buf += data
                    for f in _split(buf):
                        (corr,) = struct.unpack_from(">i", f, 4)
                        if corr in pending:
                            api, version, req = pending.pop(corr)
                            with rec.lock:
                                rec.exchanges.append((label, api, version, req, f))
                    cwriter.write(data)
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
                with rec.lock:
                    rec.streams.append((label, bytes(stream)))

        return handle


def _acks(version: int, frame: bytes) -> int:
    try:
        return int(ProduceRequest.decode(frame[4:], version=version, header=True).acks)
    except Exception:
        return -1


# -- the clients -------------------------------------------------------------------------------


def _run(name: str, fn: Callable[[], object]) -> None:
    started = time.monotonic()
    try:
        fn()
    except Exception as exc:  # a client that fails still left its frames: keep going
        print(f"  {name}: failed: {exc!r}"[:300], flush=True)
    else:
        print(f"  {name}: {time.monotonic() - started:.1f} s", flush=True)


def drive(relay: RecordingRelay, bootstrap: str, cluster: KafkaCluster) -> None:
    topic = f"fuzz-seeds-{uuid.uuid4().hex[:6]}"
    values = clients.payloads(40, "seed")
    rec = relay.recording

    def phase(label: str, name: str, fn: Callable[[], object]) -> None:
        rec.label = label
        _run(f"{label} {name}", fn)

    phase(
        "kafka-python",
        "create topic",
        lambda: clients.kafka_python_create_topic(bootstrap, topic, 3, 1),
    )
    cluster.wait_for_topic(topic, partitions=3)
    phase(
        "kafka-python",
        "idempotent produce",
        lambda: clients.kafka_python_produce(bootstrap, topic, values),
    )
    phase(
        "kafka-python",
        "plain produce acks=1 gzip",
        lambda: clients.kafka_python_produce(
            bootstrap, topic, values, idempotent=False, compression_type="gzip"
        ),
    )
    phase(
        "kafka-python",
        "consume (group)",
        lambda: clients.kafka_python_consume(bootstrap, topic, 80, group_id="seed-kp", timeout=20),
    )
    phase("kafka-python", "describe cluster", lambda: _kafka_python_admin(bootstrap, topic))
    phase(
        "aiokafka", "idempotent produce", lambda: clients.aiokafka_produce(bootstrap, topic, values)
    )
    phase(
        "confluent",
        "create topic",
        lambda: clients.confluent_create_topic(bootstrap, topic + "-c", 2, 1),
    )
    phase(
        "confluent",
        "idempotent produce",
        lambda: clients.confluent_produce(bootstrap, topic, values),
    )
    phase(
        "confluent",
        "plain produce lz4",
        lambda: clients.confluent_produce(
            bootstrap,
            topic,
            values,
            **{"enable.idempotence": False, "acks": 1, "compression.type": "lz4"},
        ),
    )
    phase(
        "confluent",
        "acks=0 produce",
        lambda: clients.confluent_produce(
            bootstrap, topic, values[:10], **{"enable.idempotence": False, "acks": 0}
        ),
    )
    phase(
        "confluent",
        "consume (group)",
        lambda: clients.confluent_consume(bootstrap, topic, 80, group_id="seed-c", timeout=20),
    )
    phase("confluent", "describe cluster", lambda: _confluent_admin(bootstrap))
    phase(
        "java",
        "idempotent produce",
        lambda: jt.verifiable_producer(bootstrap, topic, 40, timeout=90),
    )
    phase(
        "java",
        "plain produce zstd",
        lambda: jt.producer_performance(
            bootstrap,
            topic,
            40,
            record_size=50,
            producer_props={"enable.idempotence": False, "acks": 1, "compression.type": "zstd"},
            timeout=90,
        ),
    )
    phase(
        "java",
        "transactional produce",
        lambda: jt.producer_performance(
            bootstrap, topic, 40, record_size=50, transactional_id="seed-tx", timeout=90
        ),
    )
    phase(
        "java",
        "consume (group)",
        lambda: jt.verifiable_consumer(bootstrap, topic, "seed-j", 40, timeout=90),
    )
    phase("java", "admin: describe topics and cluster",
          lambda: _java_admin(bootstrap))  # fmt: skip


def _kafka_python_admin(bootstrap: str, topic: str) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.describe_cluster()
        admin.describe_topics([topic])
        admin.list_groups()
        admin.describe_groups(["seed-kp"])
    finally:
        admin.close()


def _confluent_admin(bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.describe_cluster().result(30)
    admin.list_topics(timeout=30)


def _java_admin(bootstrap: str) -> None:
    jt.run_tool(
        "org.apache.kafka.tools.TopicCommand",
        ["--bootstrap-server", bootstrap, "--describe"],
        timeout=90,
    )
    jt.run_tool("org.apache.kafka.tools.ClusterTool",
                ["cluster-id", "--bootstrap-server", bootstrap], timeout=90)  # fmt: skip


# -- seeds ------------------------------------------------------------------------------------


def _records(version: int, frame: bytes) -> list[bytes]:
    try:
        request = ProduceRequest.decode(frame[4:], version=version, header=True)
    except Exception:
        return []
    return [bytes(p.records) for t in request.topic_data for p in t.partition_data if p.records]


class Seeds:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.counts: collections.Counter[tuple[str, ...]] = collections.Counter()
        self.seen: set[bytes] = set()
        self.written = 0

    def add(self, target: str, key: tuple[str, ...], name: str, data: bytes, cap: int) -> None:
        if len(data) > MAX_SEED or self.counts[(target, *key)] >= cap:
            return
        digest = hashlib.sha1(data).digest()
        if (target.encode() + digest) in self.seen:
            return
        self.seen.add(target.encode() + digest)
        self.counts[(target, *key)] += 1
        directory = self.out / target
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}-{digest.hex()[:10]}").write_bytes(data)
        self.written += 1


def write_seeds(rec: Recording, out: Path) -> Seeds:
    seeds = Seeds(out)
    # Smallest first, so the caps keep the small frames of each kind.
    for label, api, version, request, response in sorted(rec.exchanges, key=lambda e: len(e[3])):
        api_name = DECODED.get(api, f"api{api}")
        cap = PER_KEY_PRODUCE if api == 0 else PER_KEY
        key = (label, str(api), str(version))
        seeds.add("frames", key, f"{label}-{api_name}-v{version}", request, cap)
        if response is not None and api in DECODED:
            seeds.add("responses", key, f"{label}-{api_name}-v{version}",
                      bytes([api, version]) + response[4:], cap)  # fmt: skip
        if api == 0:
            seeds.add("produce", key, f"{label}-v{version}", bytes([version]) + request[4:], cap)
            for i, records in enumerate(_records(version, request)):
                seeds.add("batch", (label, str(version), str(i)), f"{label}-records", records, 4)
    for label, stream in rec.streams:
        seeds.add("frames", ("stream", label), f"{label}-stream", stream[:STREAM_BYTES], 4)
    return seeds


def session_seeds(out: Path) -> int:
    """Seeds of the ``session`` target from ``frames/`` and ``responses/`` of one capture.

    Each request frame seed of an API the proxy decodes, with a response of the same
    client, API and version (the target gives it the right correlation id), as
    ``u16 len`` + frame + ``u16 len`` + response body; opaque APIs without a response.
    """
    responses: dict[str, list[bytes]] = collections.defaultdict(list)
    for path in sorted((out / "responses").iterdir()):
        responses[path.name.rsplit("-", 1)[0]].append(path.read_bytes()[2:])
    directory = out / "session"
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    for i, path in enumerate(sorted((out / "frames").iterdir())):
        prefix = path.name.rsplit("-", 1)[0]
        if prefix.endswith("-stream"):
            continue
        request = path.read_bytes()
        seed = struct.pack(">H", len(request)) + request
        candidates = responses.get(prefix)
        if candidates:
            body = candidates[i % len(candidates)]
            seed += struct.pack(">H", len(body)) + body
        (directory / path.name).write_bytes(seed)
        written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz.capture", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "corpus")
    parser.add_argument(
        "--session-only",
        action="store_true",
        help="only derive session/ from the frames/ and responses/ already in --out",
    )
    args = parser.parse_args(argv)
    if args.session_only:
        print(f"{session_seeds(args.out)} session seeds written to {args.out / 'session'}")
        return 0
    cluster = KafkaCluster(1, advertised_host=RELAY_HOST)
    ports = [cluster.address(n)[1] for n in cluster.node_ids()]
    relay = RecordingRelay(RELAY_HOST, "127.0.0.1", ports).start()
    try:
        print("starting Kafka ...", flush=True)
        cluster.start()
        drive(relay, f"{RELAY_HOST}:{ports[0]}", cluster)
    finally:
        cluster.close()
        relay.stop()
    seeds = write_seeds(relay.recording, args.out)
    seeds.written += session_seeds(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{len(relay.recording.exchanges)} exchanges recorded; {seeds.written} seeds written "
          f"to {args.out} ({total} bytes in all)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
