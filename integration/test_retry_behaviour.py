"""How producers WITHOUT idempotence retry a batch the broker wrote (issue 9's control).

No proxy: each client talks to a real Apache Kafka through the lost-ack relay
(integration/faults.py), in two ways:

(a) the relay drops every 4th produce answer and resets the client's connection
    with the request in flight;
(b) the relay turns the first two successful answers into REQUEST_TIMED_OUT,
    a retriable error, although the broker wrote the batch.

The relay keeps every produce batch it passed on and the broker's answer to it, so
the test sees on the wire what each retry carried, and the read back (by topic
name, all expected values first) shows what the broker wrote:

* every record the broker wrote without the client knowing is sent again and
  written twice (or more): nothing deduplicates records without a producer id;
* whether a retry keeps the record's CreateTime or gives it a new one;
* whether it resends the same batch, or re-batches the records (with new ones).

Findings (numbers printed per test): kafka-python resends the very same batch
bytes; librdkafka keeps timestamps and order but cuts a new batch from its queue,
the retried records first and new ones after them; kafkajs re-encodes every try
with a new CreateTime and, for keyless messages, re-partitions the retried send()
(round-robin counter moved on); kafka-go re-encodes every try with a new
CreateTime, same partition, same records.
"""

from __future__ import annotations

import collections
import dataclasses
import socket
import struct
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka.protocol.producer import ProduceRequest, ProduceResponse
from kafka.protocol.producer.transaction import InitProducerIdRequest, InitProducerIdResponse
from kafka.record import MemoryRecords
from kafka.record.default_records import DefaultRecordBatchBuilder

from integration import clients, extclients
from integration.faults import LostAckRelay, RelayStats
from integration.rigs import Rig, kafka_rig

N = 100
PARTITIONS = 3
DROP_EVERY = 4  # drop every 4th produce acknowledgement (with a connection reset)


@dataclasses.dataclass(frozen=True)
class Copy:
    """One record as it went over the wire to the broker."""

    request: int
    partition: int
    batch: int  #: index of its batch in the relay's capture
    timestamp: int
    value: bytes
    ack_dropped: bool
    error_code: int | None  #: the broker's answer for its batch (None: the relay saw none)
    answered_error: int  #: the error the relay told the client instead (0: none)


@dataclasses.dataclass
class Outcome:
    sent: int
    acked: int
    errors: list[str]


def _kafka_python(bootstrap: str, topic: str, tag: str, n: int) -> Outcome:
    values = [f"{tag}-{i:06d}".encode() for i in range(n)]
    acked = clients.kafka_python_produce(
        bootstrap, topic, values, idempotent=False, batch_size=256, compression_type="gzip"
    )
    return Outcome(n, acked, [])


def _confluent(bootstrap: str, topic: str, tag: str, n: int) -> Outcome:
    """librdkafka with its defaults (enable.idempotence=false), messages trickling in, so
    the retry shows whether librdkafka re-batches them (clients.confluent_trickle_produce)."""
    values = [f"{tag}-{i:06d}".encode() for i in range(n)]
    acked, errors = clients.confluent_trickle_produce(bootstrap, topic, values)
    return Outcome(n, acked, errors)


def _external(run: Callable[..., extclients.ProduceResult], codec: str) -> Callable[..., Outcome]:
    def produce(bootstrap: str, topic: str, tag: str, n: int) -> Outcome:
        try:
            res = run(bootstrap, topic, n, codec, tag=tag)
        except extclients.ToolchainMissing as exc:
            pytest.skip(str(exc))
        return Outcome(res.sent, res.acked, res.errors)

    return produce


CLIENTS: dict[str, Callable[[str, str, str, int], Outcome]] = {
    "kafka-python": _kafka_python,
    "librdkafka": _confluent,
    "kafkajs": _external(extclients.kafkajs_produce, "gzip"),
    "kafka-go": _external(extclients.kafka_go_produce, "none"),
}


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    for r in kafka_rig(1):
        r.broker_relay.capture = True
        yield r


def _copies(stats: RelayStats, first: int, tag: str) -> tuple[list[Copy], list[bytes]]:
    """Every record copy relayed since capture index ``first`` whose value carries ``tag``."""
    copies: list[Copy] = []
    raw: list[bytes] = []
    for relayed in stats.produced[first:]:
        records = MemoryRecords(relayed.records)
        mine = False
        while (batch := records.next_batch()) is not None:
            for record in batch:
                if record.value is None or not record.value.startswith(tag.encode()):
                    continue
                mine = True
                copies.append(
                    Copy(
                        relayed.request,
                        relayed.partition,
                        len(raw),
                        record.timestamp,
                        record.value,
                        relayed.ack_dropped,
                        relayed.error_code,
                        relayed.answered_error,
                    )
                )
        if mine:
            raw.append(relayed.records)
    return copies, raw


@dataclasses.dataclass
class WireView:
    """What the retries looked like on the wire."""

    tries: dict[bytes, list[Copy]]
    by_batch: dict[int, list[Copy]]
    raw: list[bytes]

    @property
    def retried(self) -> dict[bytes, list[Copy]]:
        return {v: c for v, c in self.tries.items() if len(c) > 1}

    def timestamps_kept(self) -> int:
        return sum(1 for c in self.retried.values() if {x.timestamp for x in c} == {c[0].timestamp})

    def timestamps_renewed(self) -> int:
        return sum(1 for c in self.retried.values() if c[-1].timestamp != c[0].timestamp)

    def renewal_delays_ms(self) -> list[int]:
        return [
            c[i].timestamp - c[i - 1].timestamp
            for c in self.retried.values()
            for i in range(1, len(c))
        ]

    def partition_changed(self) -> int:
        return sum(1 for c in self.retried.values() if len({x.partition for x in c}) > 1)

    def retry_batches(self) -> set[int]:
        return {x.batch for c in self.retried.values() for x in c[1:]}

    def same_bytes(self) -> int:
        """Retried batches whose bytes equal the batch of the records' previous try."""
        n = 0
        for b in self.retry_batches():
            first = self.by_batch[b][0]
            prev = self.tries[first.value][self.tries[first.value].index(first) - 1]
            n += self.raw[b] == self.raw[prev.batch]
        return n

    def rebatched(self) -> int:
        """Retry batches that are not exactly the records of one earlier batch."""
        n = 0
        for b in self.retry_batches():
            values = [x.value for x in self.by_batch[b]]
            prev_batches = set()
            for x in self.by_batch[b]:
                i = self.tries[x.value].index(x)
                if i > 0:
                    prev_batches.add(self.tries[x.value][i - 1].batch)
            earlier = [[x.value for x in self.by_batch[p]] for p in sorted(prev_batches)]
            n += earlier != [values]
        return n

    def new_records_beside_retries(self) -> int:
        """Records on their first try inside a batch that also carries retried records."""
        return sum(
            1 for b in self.retry_batches() for x in self.by_batch[b] if self.tries[x.value][0] is x
        )

    def order_kept_in_batches(self) -> bool:
        """Within every relayed batch the records go in the order the application sent them."""
        return all(
            [x.value for x in copies] == sorted(x.value for x in copies)
            for copies in self.by_batch.values()
        )


def _wire_view(copies: list[Copy], raw: list[bytes]) -> WireView:
    tries: dict[bytes, list[Copy]] = collections.defaultdict(list)
    by_batch: dict[int, list[Copy]] = collections.defaultdict(list)
    for c in copies:
        tries[c.value].append(c)
        by_batch[c.batch].append(c)
    return WireView(dict(tries), dict(by_batch), raw)


def _exercise(
    rig: Rig,
    client: str,
    topic: str,
    n: int,
    fault: Callable[[LostAckRelay], None],
    request: pytest.FixtureRequest,
) -> tuple[WireView, set[bytes]]:
    """Produce n values through the relay with ``fault`` on; check what was written.

    Returns the wire view and the values in doubt: written by the broker, yet the
    client was not told (answer dropped with a reset, or turned into an error).
    """
    rig.cluster.create_topic(topic, partitions=PARTITIONS)
    relay = rig.broker_relay
    tag = f"{client}-{uuid.uuid4().hex[:6]}"
    values = [f"{tag}-{i:06d}".encode() for i in range(n)]
    first = len(relay.stats.produced)
    dropped, errored = relay.stats.acks_dropped, relay.stats.acks_turned_into_errors
    started = time.monotonic()
    fault(relay)
    try:
        outcome = CLIENTS[client](rig.relayed_bootstrap, topic, tag, n)
    finally:
        relay.drop_every(0)
        relay.error_next_acks(0)
    produce_seconds = time.monotonic() - started
    acks_lost = relay.stats.acks_dropped - dropped
    errors_told = relay.stats.acks_turned_into_errors - errored
    copies, raw = _copies(relay.stats, first, tag)
    wire = _wire_view(copies, raw)

    # Written for sure: every copy the broker answered with success (the relay saw the
    # answer, whether or not it passed it on). Copies relayed on a connection the relay
    # then closed, before the broker answered, may or may not have been written.
    answered_ok = [c for c in copies if c.error_code == 0]
    got = clients.kafka_python_consume(rig.relayed_bootstrap, topic, len(answered_ok))
    counts = Counter(got)
    assert set(counts) == set(values), "read back every value sent, and nothing else"
    written_twice = sum(k - 1 for k in counts.values())
    in_doubt = {c.value for c in answered_ok if c.ack_dropped or c.answered_error}

    report = {
        "sent": outcome.sent,
        "acked": outcome.acked,
        "acks_lost": acks_lost,
        "acks_turned_into_errors": errors_told,
        "produce_requests": len({c.request for c in copies}),
        "batches_relayed": len(raw),
        "records_relayed": len(copies),
        "read": len(got),
        "written_twice": written_twice,
        "answered_ok": len(answered_ok),
        "broker_errors": dict(Counter(c.error_code for c in copies if c.error_code)),
        "in_doubt": len(in_doubt),
        "retried_on_wire": len(wire.retried),
        "timestamps_kept": wire.timestamps_kept(),
        "timestamps_renewed": wire.timestamps_renewed(),
        "renewal_ms": sorted(set(wire.renewal_delays_ms()))[:8],
        "partition_changed": wire.partition_changed(),
        "retry_batches": len(wire.retry_batches()),
        "retry_batches_same_bytes": wire.same_bytes(),
        "retry_batches_rebatched": wire.rebatched(),
        "new_records_beside_retries": wire.new_records_beside_retries(),
        "order_kept_in_batches": wire.order_kept_in_batches(),
        "produce_seconds": round(produce_seconds, 1),
    }
    request.node.user_properties.extend(report.items())
    print(request.node.name, report)  # noqa: T201

    assert outcome.errors == []
    assert outcome.acked == n, "the client reports success for every message"
    assert in_doubt, "some written records were not acknowledged to the client"
    # The broker wrote a batch, the client was not told and retried it, and the retry
    # was written too: nothing deduplicates records without a producer id.
    assert all(counts[v] >= 2 for v in in_doubt), "every record in doubt written twice"
    assert written_twice >= len(in_doubt)
    assert len(answered_ok) <= len(got) <= len(copies), "written: all answered, none unrelayed"
    assert wire.order_kept_in_batches()
    assert set(wire.retried) >= in_doubt, "every record in doubt was sent again"
    return wire, in_doubt


@pytest.mark.parametrize("client", list(CLIENTS))
def test_retries_after_lost_acks_are_written_twice(
    rig: Rig, client: str, topic_name: str, request: pytest.FixtureRequest
) -> None:
    """(a) The answer is lost and the connection reset, with the request in flight."""
    wire, _ = _exercise(
        rig, client, topic_name, N, lambda relay: relay.drop_every(DROP_EVERY), request
    )
    assert rig.broker_relay.stats.acks_dropped >= 2
    EXPECTED[client](wire)
    if client == "librdkafka":
        # a reset fails every request in flight (max.in.flight defaults to 1000000):
        # many retried messages, and the batches cut from the queue mix in new ones
        assert wire.new_records_beside_retries() > 0, "retried records re-batched with new ones"


@pytest.mark.parametrize("client", list(CLIENTS))
def test_retries_after_a_retriable_error_answer_are_written_twice(
    rig: Rig, client: str, topic_name: str, request: pytest.FixtureRequest
) -> None:
    """(b) The broker wrote the batch, the client is told REQUEST_TIMED_OUT (7)."""
    wire, _ = _exercise(
        rig, client, topic_name, N // 2, lambda relay: relay.error_next_acks(2, 7), request
    )
    EXPECTED[client](wire)


def _resends_same_batch_bytes(wire: WireView) -> None:
    """kafka-python: the ProducerBatch is re-enqueued whole, its buffer built once."""
    assert wire.same_bytes() == len(wire.retry_batches()) > 0
    assert wire.timestamps_kept() == len(wire.retried)
    assert wire.partition_changed() == 0


def _rebatches_keeping_timestamps(wire: WireView) -> None:
    """librdkafka: retried messages go back to the head of the partition queue, in
    order, and the next batch is cut from that queue: original CreateTime, same
    partition, and new messages after them in the same batch when some are queued."""
    assert wire.timestamps_kept() == len(wire.retried)
    assert wire.partition_changed() == 0
    for b in wire.retry_batches():
        first_try = [wire.tries[x.value][0] is x for x in wire.by_batch[b]]
        assert first_try == sorted(first_try), "retried records first, then new ones"


def _renews_timestamps(wire: WireView, *, same_partition: bool) -> None:
    """kafkajs, kafka-go: every try is encoded anew, CreateTime = the time of the try."""
    assert wire.timestamps_renewed() == len(wire.retried)
    assert min(wire.renewal_delays_ms()) > 0, "a retry's CreateTime is later"
    assert wire.rebatched() == 0, "the same records go together again"
    assert wire.new_records_beside_retries() == 0
    if same_partition:
        assert wire.partition_changed() == 0
    else:
        # kafkajs re-partitions a retried send(): keyless messages go round-robin from
        # a counter that has moved on, so they land on other partitions (10 per send,
        # 3 partitions: every group shifts by one).
        assert wire.partition_changed() == len(wire.retried)


EXPECTED: dict[str, Callable[[WireView], None]] = {
    "kafka-python": _resends_same_batch_bytes,
    "librdkafka": _rebatches_keeping_timestamps,
    "kafkajs": lambda w: _renews_timestamps(w, same_partition=False),
    "kafka-go": lambda w: _renews_timestamps(w, same_partition=True),
}


# -- what the broker does with a producer id at acks=1 and acks=0 ---------------------------
#
# Issue 9's stamping needs to know whether the broker's deduplication holds whatever the
# client's acks. Raw requests (kafka-python's protocol classes) straight to the broker:
# InitProducerId without a transactional id, then one stamped batch sent twice, then a
# batch with a gap in its sequence.

OUT_OF_ORDER_SEQUENCE_NUMBER = 45


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed by the broker")
        buf += chunk
    return bytes(buf)


def _send(sock: socket.socket, req: Any, correlation_id: int) -> None:
    req.with_header(correlation_id=correlation_id, client_id="idemproxy-acks-probe")
    sock.sendall(bytes(req.encode(header=True, framed=True)))


def _answer(sock: socket.socket) -> bytes:
    (size,) = struct.unpack(">i", _read_exactly(sock, 4))
    return _read_exactly(sock, size)


def _producer_id(sock: socket.socket) -> tuple[int, int]:
    _send(sock, InitProducerIdRequest[1](transactional_id=None, transaction_timeout_ms=60000), 1)
    resp = InitProducerIdResponse.decode(_answer(sock), version=1, header=True)
    assert resp.error_code == 0
    return resp.producer_id, resp.producer_epoch


def _stamped_batch(pid: int, epoch: int, seq: int, values: list[bytes]) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
        batch_size=1 << 20,
    )
    for i, v in enumerate(values):
        builder.append(i, timestamp=None, key=None, value=v, headers=[])
    return bytes(builder.build())


def _produce(topic: str, acks: int, batch: bytes) -> Any:
    req = ProduceRequest[7]
    data = req.TopicProduceData
    partition = data.PartitionProduceData(index=0, records=batch)
    return req(
        transactional_id=None,
        acks=acks,
        timeout_ms=10000,
        topic_data=[data(name=topic, partition_data=[partition])],
    )


def _partition_answer(body: bytes) -> tuple[int, int]:
    (part,) = ProduceResponse.decode(body, version=7, header=True).responses[0].partition_responses
    return part.error_code, part.base_offset


def test_broker_deduplicates_stamped_batches_at_acks_1_and_0(rig: Rig, topic_name: str) -> None:
    rig.cluster.create_topic(topic_name, partitions=1)
    (node,) = rig.cluster.node_ids()
    host, port = "127.0.0.1", rig.cluster.address(node)[1]
    one = [f"acks1-{i}".encode() for i in range(3)]
    zero = [f"acks0-{i}".encode() for i in range(3)]
    gap = [b"gap-1", b"gap-0"]

    with socket.create_connection((host, port), timeout=15) as sock:
        pid, epoch = _producer_id(sock)
        batch = _stamped_batch(pid, epoch, 0, one)
        answers = []
        for corr in (2, 3):  # acks=1: the batch, then the same batch again
            _send(sock, _produce(topic_name, 1, batch), corr)
            answers.append(_partition_answer(_answer(sock)))
        _send(sock, _produce(topic_name, 1, _stamped_batch(pid, epoch, 5, gap[:1])), 4)
        gap_answer = _partition_answer(_answer(sock))
    # acks=1: the duplicate is answered NONE with the first copy's offset, not written
    assert answers[0] == (0, answers[0][1])
    assert answers[1] == answers[0]
    assert gap_answer[0] == OUT_OF_ORDER_SEQUENCE_NUMBER

    with socket.create_connection((host, port), timeout=15) as sock:
        pid0, epoch0 = _producer_id(sock)
        assert pid0 != pid, "without a transactional id every InitProducerId is a new id"
        batch = _stamped_batch(pid0, epoch0, 0, zero)
        _send(sock, _produce(topic_name, 0, batch), 2)  # acks=0: no answer...
        _send(sock, _produce(topic_name, 0, batch), 3)  # ...to the duplicate either
        _send(sock, _produce(topic_name, 0, _stamped_batch(pid0, epoch0, 9, gap[1:])), 4)
        # acks=0 and an error (the gap): the broker closes the connection, no answer
        with pytest.raises(ConnectionError):
            _answer(sock)

    got = Counter(clients.kafka_python_consume(rig.relayed_bootstrap, topic_name, 6, timeout=20))
    assert got == Counter(one + zero), "each batch written once, the gapped ones not at all"
