"""Stamp mode against the reference broker, over random runs of a non-idempotent client.

The client (one request in flight, as kafka-python, kafka-go and librdkafka with
max.in.flight=1 run) sends batches of fresh values, and every fault the issue names hits it:
the answer lost after the broker wrote the batch (client side: written then the connection
reset; broker side: the upstream connection dropped), the request lost before the broker got
it, a retriable error answered although the batch was written, the broker's producer state
lost (expiry, leader change), time passing. It retries what it was not told succeeded in the
way of one of the real clients: the same batch bytes (kafka-python, Java), the records again
first with new ones behind them (librdkafka), or the same records with new timestamps
(kafkajs, kafka-go). The properties, checked against the model broker's log:

- every value the client was told succeeded is written exactly once;
- the log of each partition holds the values in the order the client first sent them;
- the client never sees a sequence error (it never sent a sequence).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.idempotence.stamping import SEQUENCE_ERRORS
from proxy.wire import error_codes as E

from ._stamp_rig import StampConn, StampRig, answers_of, plain_batch

TOPIC = "orders"
PARTITIONS = 2

FAULTS = ("deliver", "lost_after_write", "lost_before_write", "error_after_write", "state_lost")
STYLES = ("same_bytes", "rebatch", "new_timestamps")


@dataclass
class Pending:
    """A batch the client sent and was not told succeeded."""

    values: list[bytes]
    timestamps: list[int]
    raw: bytes


@dataclass
class Client:
    rig: StampRig
    style: str
    conn: StampConn
    counter: int = 0
    acked: list[bytes] = field(default_factory=list)
    first_sent: dict[int, list[bytes]] = field(default_factory=lambda: {0: [], 1: []})
    pending: dict[int, list[Pending]] = field(default_factory=lambda: {0: [], 1: []})
    seen_errors: list[int] = field(default_factory=list)

    def batch_for(self, partition: int, new: int) -> tuple[list[bytes], list[int], bytes]:
        """The next batch: retries first (the client's way), then `new` fresh values."""
        now = self.rig.clock.ms
        values: list[bytes] = []
        retry = self.pending[partition]
        fresh = []
        if retry and self.style != "rebatch":
            new = 0  # this try is the retry alone
        for _ in range(new):
            self.counter += 1
            fresh.append(b"p%d-%05d" % (partition, self.counter))
        self.first_sent[partition].extend(fresh)
        stamps = [now + i for i in range(len(fresh))]
        if retry and self.style == "same_bytes":
            head = retry.pop(0)
            return head.values, head.timestamps, head.raw
        if retry and self.style == "rebatch":
            # librdkafka: every retried message (its own timestamp kept) first, then new ones.
            values = [v for p in retry for v in p.values] + fresh
            times = [t for p in retry for t in p.timestamps] + stamps
            retry.clear()
            return values, times, plain_batch(values, timestamps=times)
        if retry:  # kafkajs, kafka-go: the same records, CreateTime of this try
            head = retry.pop(0)
            times = [now + i for i in range(len(head.values))]
            return head.values, times, plain_batch(head.values, timestamps=times)
        return fresh, stamps, plain_batch(fresh, timestamps=stamps)


def run_step(client: Client, partition: int, new: int, fault: str, advance: int) -> None:
    rig = client.rig
    rig.clock.ms += advance
    values, times, raw = client.batch_for(partition, new)
    if not values:
        return
    conn = client.conn
    upstream, answered = conn.send([(TOPIC, [(partition, raw)])])
    failed = False
    if fault == "state_lost":
        # The broker forgets the producer state (producer.id.expiration.ms after an idle day,
        # a truncation). Only once every earlier outcome is settled: a broker that forgets a
        # batch whose outcome is still unknown writes its resend again, and no proxy can tell
        # (README, limits).
        pid = rig.stamper.producer_id(conn.client_id)
        line = rig.stamper.line(conn.client_id, (TOPIC, partition))
        if pid is not None and (line is None or not line.queue):
            rig.broker.forget(pid, (TOPIC, partition))
        fault = "deliver"
    if fault == "deliver":
        answered += conn.through_broker(upstream)
    elif fault == "lost_after_write":
        # Everything the proxy sends reaches the broker, nothing comes back.
        while upstream:
            replies = [rig.broker.handle(b) for b in upstream]
            if any(b[:2] == b"\x00\x16" for b in upstream):  # InitProducerId: let it through
                got, upstream = conn.feed(replies)
                answered += got
                continue
            upstream = []
        failed = not answered
    elif fault == "lost_before_write":
        failed = not answered
    elif fault == "error_after_write":
        replies = conn.through_broker_with_error(upstream, E.REQUEST_TIMED_OUT)
        answered += replies
    for body in answered:
        (answer,) = answers_of(body)
        if answer.error_code == E.NONE:
            client.acked.extend(values)
        else:
            client.seen_errors.append(answer.error_code)
            failed = True
    if failed or not answered:
        # No answer or an error: the client closes the connection (request timeout) or keeps
        # it (an error answer) and retries these values.
        client.pending[partition].insert(0, Pending(values, times, raw))
        if not answered:
            conn.close()
            client.conn = rig.connect(conn.client_id)


def flush(client: Client) -> None:
    for _ in range(50):
        if not any(client.pending.values()):
            return
        for partition in range(PARTITIONS):
            if client.pending[partition]:
                run_step(client, partition, 0, "deliver", 10)
    raise AssertionError("the client could not get its retries written")


steps = st.lists(
    st.tuples(
        st.integers(0, PARTITIONS - 1),
        st.integers(1, 3),
        st.sampled_from(FAULTS),
        st.sampled_from([1, 5, 2_000]),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps, style=st.sampled_from(STYLES))
def test_every_acknowledged_value_is_written_once_in_order(
    steps: list[tuple[int, int, str, int]], style: str
) -> None:
    rig = StampRig()
    client = Client(rig, style, rig.connect())
    for partition, new, fault, advance in steps:
        run_step(client, partition, new, fault, advance)
    flush(client)
    assert not set(client.seen_errors) & SEQUENCE_ERRORS
    sent = [v for p in range(PARTITIONS) for v in client.first_sent[p]]
    assert sorted(set(client.acked)) == sorted(sent), "the client was told every value succeeded"
    for p in range(PARTITIONS):
        log = rig.broker.logs[(TOPIC, p)]
        assert sorted(log) == sorted(client.first_sent[p]), "every value written, once"
        assert log == client.first_sent[p], "in the order the client first sent them"


def test_the_model_run_can_fail_without_stamping() -> None:
    """The same run through a proxy that only passes batches: values written twice."""
    rig = StampRig()
    rig.shared.stamper = None
    client = Client(rig, "same_bytes", rig.connect())
    run_step(client, 0, 2, "lost_after_write", 1)
    flush(client)
    assert rig.broker.logs[(TOPIC, 0)] == [b"p0-00001", b"p0-00002"] * 2
