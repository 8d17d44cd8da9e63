"""How producers WITHOUT idempotence retry after a lost acknowledgement (issue 9's control).

No proxy: each client talks to a real Apache Kafka through the lost-ack relay
(integration/faults.py), which drops some Produce responses after the broker wrote
the batch and resets the client's connection. The relay keeps every produce batch
it passed on, so the test sees on the wire what each retry carried, and the read
back shows what the broker wrote:

* every record of a batch whose acknowledgement was lost reaches the broker again
  and is written twice (or more): nothing deduplicates it without a producer id;
* whether a retry keeps the record's original CreateTime or gives it a new one;
* whether it resends the same batch or re-batches the records, with new ones beside.

The findings per client (see the report in issue 9):
kafka-python resends the very same batch bytes; librdkafka keeps timestamps and
order but builds a new batch from its queue, the retried records first and new
ones after them; kafkajs and kafka-go re-encode every try with a new CreateTime.
"""

from __future__ import annotations

import collections
import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from kafka.record import MemoryRecords

from integration import clients, extclients
from integration.faults import RelayStats
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


@dataclasses.dataclass
class Outcome:
    sent: int
    acked: int
    errors: list[str]


def _kafka_python(bootstrap: str, topic: str, tag: str) -> Outcome:
    values = [f"{tag}-{i:06d}".encode() for i in range(N)]
    acked = clients.kafka_python_produce(
        bootstrap, topic, values, idempotent=False, batch_size=256, compression_type="gzip"
    )
    return Outcome(N, acked, [])


def _confluent(bootstrap: str, topic: str, tag: str) -> Outcome:
    """librdkafka with its defaults (enable.idempotence=false), messages trickling in.

    One message every ~3 ms with linger.ms=5 makes small batches; by the time a
    failed batch is retried (retry.backoff.ms) more messages are queued behind it,
    so the retry shows whether librdkafka re-batches them.
    """
    from confluent_kafka import Producer

    acked, errors = 0, []

    def report(err: object, _msg: object) -> None:
        nonlocal acked
        if err is None:
            acked += 1
        else:
            errors.append(str(err))

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 7, "acks": "all"}
    )
    for i in range(N):
        producer.produce(topic, f"{tag}-{i:06d}".encode(), on_delivery=report)
        producer.poll(0.003)
    if remaining := producer.flush(60):
        errors.append(f"{remaining} messages still queued after flush")
    return Outcome(N, acked, errors)


def _external(run: Callable[..., extclients.ProduceResult], codec: str) -> Callable[..., Outcome]:
    def produce(bootstrap: str, topic: str, tag: str) -> Outcome:
        try:
            res = run(bootstrap, topic, N, codec, tag=tag)
        except extclients.ToolchainMissing as exc:
            pytest.skip(str(exc))
        return Outcome(res.sent, res.acked, res.errors)

    return produce


CLIENTS: dict[str, Callable[[str, str, str], Outcome]] = {
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


@pytest.mark.parametrize("client", list(CLIENTS))
def test_retries_without_idempotence_are_written_twice(
    rig: Rig, client: str, topic_name: str, request: pytest.FixtureRequest
) -> None:
    rig.cluster.create_topic(topic_name, partitions=PARTITIONS)
    relay = rig.broker_relay
    tag = f"{client}-{uuid.uuid4().hex[:6]}"
    values = [f"{tag}-{i:06d}".encode() for i in range(N)]
    first, dropped_before = len(relay.stats.produced), relay.stats.acks_dropped
    started = time.monotonic()
    relay.drop_every(DROP_EVERY)
    try:
        outcome = CLIENTS[client](rig.relayed_bootstrap, topic_name, tag)
    finally:
        relay.drop_every(0)
    produce_seconds = time.monotonic() - started
    acks_lost = relay.stats.acks_dropped - dropped_before
    copies, raw = _copies(relay.stats, first, tag)
    wire = _wire_view(copies, raw)

    # Written for sure: every copy the broker answered with success (the relay saw the
    # answer, whether or not it passed it on). Copies relayed on a connection the relay
    # then closed, before the broker answered, may or may not have been written.
    answered_ok = [c for c in copies if c.error_code == 0]
    got = clients.kafka_python_consume(rig.relayed_bootstrap, topic_name, len(answered_ok))
    counts = Counter(got)
    assert set(counts) == set(values), "read back every value sent, and nothing else"
    written_twice = sum(n - 1 for n in counts.values())
    # records whose successful answer the relay dropped: written, and the client never knew
    in_lost_acks = {c.value for c in answered_ok if c.ack_dropped}
    error_answers = Counter(c.error_code for c in copies if c.error_code)

    report = {
        "sent": outcome.sent,
        "acked": outcome.acked,
        "acks_lost": acks_lost,
        "produce_requests": len({c.request for c in copies}),
        "batches_relayed": len(raw),
        "records_relayed": len(copies),
        "read": len(got),
        "written_twice": written_twice,
        "answered_ok": len(answered_ok),
        "error_answers": dict(error_answers),
        "in_lost_acks": len(in_lost_acks),
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
    print(client, report)  # noqa: T201

    assert outcome.errors == []
    assert outcome.acked == N, "the client reports success for every message"
    assert acks_lost >= 2, "acknowledgements were lost"
    assert in_lost_acks, "some relayed records had their acknowledgement dropped"
    # The broker wrote a batch before the relay dropped its answer; the client retried
    # it and the retry was written too: nothing deduplicates records without a producer id.
    assert all(counts[v] >= 2 for v in in_lost_acks), "every record of a lost ack written twice"
    assert written_twice >= len(in_lost_acks)
    assert len(answered_ok) <= len(got) <= len(copies), "written: all answered, none unrelayed"
    assert wire.order_kept_in_batches()
    assert set(wire.retried) >= in_lost_acks, "every record of a lost ack was sent again"
    EXPECTED[client](wire)


def _resends_same_batch_bytes(wire: WireView) -> None:
    """kafka-python: the ProducerBatch is re-enqueued whole, its buffer built once."""
    assert wire.same_bytes() == len(wire.retry_batches()) > 0
    assert wire.timestamps_kept() == len(wire.retried)
    assert wire.partition_changed() == 0


def _rebatches_keeping_timestamps(wire: WireView) -> None:
    """librdkafka: retried messages go back to the head of the partition queue, in
    order, and the next batch is cut from that queue: original CreateTime, same
    partition, and new messages after them in the same batch."""
    assert wire.timestamps_kept() == len(wire.retried)
    assert wire.partition_changed() == 0
    assert wire.new_records_beside_retries() > 0, "retried records re-batched with new ones"
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
