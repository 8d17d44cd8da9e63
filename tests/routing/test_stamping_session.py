"""Stamp mode through the sans-I/O session: a non-idempotent client's batches get the proxy's
producer id and sequences, and its retries are written once (issue 9).

Playbook style: the client sends, the test carries the proxy's upstream requests to a model
broker (tests/routing/_stamp_rig.py) or drops them, and checks what the client and the broker
got. Every "not written twice" check first checks the records are there.
"""

from __future__ import annotations

from typing import Any

import pytest
from kafka.protocol.producer import ProduceRequest
from kafka.record import MemoryRecords
from kafka.record.default_records import DefaultRecordBatch

from proxy.wire import error_codes as E
from proxy.wire.apis import ApiKey
from proxy.wire.batch import read_batch_header
from proxy.wire.headers import peek_request_header

from ._stamp_rig import (
    T0,
    StampConn,
    StampRig,
    answers_of,
    batch_values,
    plain_batch,
    produce_answer_with_error,
    produce_bodies,
)

TOPIC = "orders"
TP = (TOPIC, 0)


def stamps_of(body: bytes, version: int = 9) -> list[tuple[int, int, int, list[bytes]]]:
    """(producer id, epoch, base sequence, values) of each batch in a Produce request body."""
    request: Any = ProduceRequest.decode(body, version=version, header=True)
    out = []
    for topic in request.topic_data:
        for p in topic.partition_data:
            raw = bytes(p.records)
            batch: Any = MemoryRecords(raw).next_batch()
            assert batch.validate_crc(), "the stamped batch's CRC-32C is valid"
            out.append(
                (batch.producer_id, batch.producer_epoch, batch.base_sequence, batch_values(raw))
            )
    return out


def vals(*names: str) -> list[bytes]:
    return [n.encode() for n in names]


def one(batch: bytes, partition: int = 0) -> list[tuple[str, list[tuple[int, bytes]]]]:
    return [(TOPIC, [(partition, batch)])]


def sent_ok(conn: StampConn, batch: bytes, partition: int = 0) -> int:
    """Send, let everything through, return the base offset the client was told."""
    upstream, client = conn.send(one(batch, partition))
    assert client == []
    (response,) = conn.through_broker(upstream)
    (answer,) = answers_of(response)
    assert answer.error_code == E.NONE
    return answer.base_offset


def lost_upstream(conn: StampConn, batch: bytes, *, written: bool = True) -> None:
    """The batch reaches the broker (or not), the upstream connection drops before the answer."""
    upstream, _ = conn.send(one(batch))
    if written:
        for body in upstream:
            conn.rig.broker.handle(body)
    conn.close()


def retried(rig: StampRig, batch: bytes) -> tuple[list[bytes], list[Any]]:
    """The client retries on a new connection: (produce bodies upstream, the client's answers)."""
    conn = rig.connect()
    upstream, client = conn.send(one(batch))
    produce = produce_bodies(upstream)
    client += conn.through_broker(upstream)
    (response,) = client
    return produce, answers_of(response)


# -- stamping --------------------------------------------------------------------------


def test_first_batch_waits_for_a_producer_id_then_goes_up_stamped_with_sequence_zero() -> None:
    rig = StampRig()
    conn = rig.connect()
    upstream, client = conn.send(one(plain_batch(vals("a", "b", "c"))))
    assert client == []
    (ask,) = upstream
    header = peek_request_header(ask)
    assert header.api_key == ApiKey.INIT_PRODUCER_ID
    assert header.correlation_id < 0, "the proxy's own request"
    client, more = conn.feed([rig.broker.handle(ask)])
    assert client == []
    (produce,) = more
    assert stamps_of(produce) == [(5000, 0, 0, vals("a", "b", "c"))]
    (response,) = conn.through_broker(more)
    assert answers_of(response)[0].error_code == E.NONE
    assert rig.broker.logs[TP] == vals("a", "b", "c")


def test_requests_behind_the_producer_id_keep_their_order() -> None:
    rig = StampRig()
    conn = rig.connect()
    first, _ = conn.send(one(plain_batch(vals("a"))))
    second, _ = conn.send(one(plain_batch(vals("b"), timestamp=T0 + 10)))
    assert second == [], "held behind the first until the producer id is known"
    client = conn.through_broker(first)
    assert len(client) == 2
    assert rig.broker.logs[TP] == vals("a", "b")


def test_sequences_continue_across_batches_and_connections_of_one_client_id() -> None:
    rig = StampRig()
    first = rig.connect()
    sent_ok(first, plain_batch(vals("a", "b")))
    first.close()
    rig.clock.ms += 10_000  # long after the answer: nothing in doubt
    again = rig.connect()
    upstream, _ = again.send(one(plain_batch(vals("c"))))
    (produce,) = upstream  # no second InitProducerId: the client id has its producer id
    assert stamps_of(produce) == [(5000, 0, 2, vals("c"))]
    again.through_broker(upstream)
    assert rig.broker.pids_issued == 1


def test_a_client_reconnecting_a_thousand_times_costs_one_producer_id() -> None:
    rig = StampRig()
    for i in range(1000):
        conn = rig.connect()
        sent_ok(conn, plain_batch([b"%d" % i], timestamp=T0 + i))
        conn.close()
    assert rig.broker.pids_issued == 1
    assert rig.stamper.producer_ids == 1
    assert len(rig.broker.logs[TP]) == 1000


def test_each_client_id_gets_its_own_producer_id() -> None:
    rig = StampRig()
    sent_ok(rig.connect("one"), plain_batch(vals("a")))
    sent_ok(rig.connect("two"), plain_batch(vals("a")))
    assert rig.broker.pids_issued == 2
    assert rig.broker.logs[TP] == vals("a", "a")


@pytest.mark.parametrize(
    "codec",
    [
        DefaultRecordBatch.CODEC_GZIP,
        DefaultRecordBatch.CODEC_SNAPPY,
        DefaultRecordBatch.CODEC_LZ4,
        DefaultRecordBatch.CODEC_ZSTD,
    ],
)
def test_compressed_batches_are_stamped_and_their_retries_recognised(codec: int) -> None:
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("x")))
    a, b, c = (v * 300 for v in vals("a", "b", "c"))  # compressible: the builder compresses
    batch = plain_batch([a, b], codec=codec, timestamp=T0 + 5)
    upstream, _ = conn.send(one(batch))
    (produce,) = upstream
    (raw,) = [
        bytes(p.records)
        for t in ProduceRequest.decode(produce, version=9, header=True).topic_data
        for p in t.partition_data
    ]
    assert read_batch_header(raw).attributes & 0x07 == codec, "same codec"
    conn.through_broker(upstream)
    conn.close()  # the answer lost with the connection
    produce, answers = retried(rig, plain_batch([a, b, c], codec=codec, timestamp=T0 + 5))
    (body,) = produce
    assert stamps_of(body)[0][3] == [c]
    assert answers[0].error_code == E.NONE
    assert rig.broker.logs[TP] == [b"x", a, b, c], "a and b once, c written"


def test_acks_zero_batches_pass_unstamped() -> None:
    rig = StampRig()
    conn = rig.connect()
    upstream, client = conn.send(one(plain_batch(vals("a"))), acks=0)
    assert client == []
    (produce,) = upstream
    assert stamps_of(produce) == [(-1, -1, -1, vals("a"))]
    assert rig.broker.pids_issued == 0


def test_a_refused_producer_id_lets_the_client_pass_unstamped_without_asking_again() -> None:
    rig = StampRig()
    rig.broker.refuse_pids = E.CLUSTER_AUTHORIZATION_FAILED
    conn = rig.connect()
    upstream, _ = conn.send(one(plain_batch(vals("a"))))
    conn.through_broker(upstream)
    upstream, _ = conn.send(one(plain_batch(vals("b"))))
    (produce,) = upstream
    assert stamps_of(produce) == [(-1, -1, -1, vals("b"))]
    assert rig.broker.pids_issued == 1
    rig.clock.ms += rig.stamper.retry_window_ms  # the proxy asks again after a retry window
    upstream, _ = conn.send(one(plain_batch(vals("c"))))
    assert peek_request_header(upstream[0]).api_key == ApiKey.INIT_PRODUCER_ID


def test_a_corrupt_batch_passes_unstamped_for_the_broker_to_refuse() -> None:
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("x")))
    batch = bytearray(plain_batch(vals("a")))
    batch[-1] ^= 0xFF  # a flipped bit after the CRC was computed
    upstream, _ = conn.send(one(bytes(batch)))
    request: Any = ProduceRequest.decode(upstream[0], version=9, header=True)
    assert bytes(request.topic_data[0].partition_data[0].records) == bytes(batch)


# -- retries ---------------------------------------------------------------------------


def test_retry_after_an_answer_lost_with_the_connection_is_answered_without_writing_again() -> None:
    rig = StampRig()
    conn = rig.connect()
    base = sent_ok(conn, plain_batch(vals("x")))
    batch = plain_batch(vals("a", "b", "c"), timestamp=T0 + 1)
    assert sent_ok(conn, batch) == base + 1
    conn.close()  # right after the answer was written: the client may not have read it
    produce, answers = retried(rig, batch)
    assert produce == [], "answered by the proxy"
    assert answers[0].error_code == E.NONE
    assert answers[0].base_offset == base + 1, "where the records were written"
    assert rig.broker.logs[TP] == vals("x", "a", "b", "c")


def test_a_rebatched_retry_sends_only_the_new_records_with_the_next_sequence() -> None:
    """librdkafka: the retried records 0-3 come back first in a batch with new ones."""
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("r0", "r1", "r2", "r3")))
    conn.close()
    produce, answers = retried(rig, plain_batch(vals("r0", "r1", "r2", "r3", "n4", "n5", "n6")))
    (body,) = produce
    assert stamps_of(body) == [(5000, 0, 4, vals("n4", "n5", "n6"))]
    assert answers[0].error_code == E.NONE
    assert answers[0].base_offset == 0, "the first record's offset"
    assert rig.broker.logs[TP] == vals("r0", "r1", "r2", "r3", "n4", "n5", "n6")


def test_a_retry_with_new_timestamps_is_recognised() -> None:
    """kafkajs and kafka-go encode every try anew, with a later CreateTime."""
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("a", "b"), timestamp=T0))
    conn.close()
    produce, answers = retried(rig, plain_batch(vals("a", "b"), timestamp=T0 + 350))
    assert produce == []
    assert answers[0].error_code == E.NONE
    assert rig.broker.logs[TP] == vals("a", "b")


def test_an_unknown_outcome_is_resolved_by_resending_the_kept_stamped_batch() -> None:
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("x")))
    upstream, _ = conn.send(one(plain_batch(vals("a", "b"), timestamp=T0 + 1)))
    kept = upstream[0]
    rig.broker.handle(kept)  # written, and the answer never comes back
    conn.close()
    produce, answers = retried(rig, plain_batch(vals("a", "b"), timestamp=T0 + 1))
    (resend,) = produce
    assert stamps_of(resend) == stamps_of(kept), "the same producer id, epoch and sequence"
    assert answers[0].error_code == E.NONE
    assert answers[0].base_offset == 1
    assert rig.broker.logs[TP] == vals("x", "a", "b"), "the broker deduplicated the resend"


def test_an_unknown_outcome_never_written_is_written_by_the_resend() -> None:
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("x")))
    lost_upstream(conn, plain_batch(vals("a"), timestamp=T0 + 1), written=False)
    produce, answers = retried(rig, plain_batch(vals("a"), timestamp=T0 + 1))
    assert len(produce) == 1
    assert answers[0].error_code == E.NONE
    assert rig.broker.logs[TP] == vals("x", "a")


def test_a_retriable_error_after_the_write_is_resolved_like_an_unknown_outcome() -> None:
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("x")))
    upstream, _ = conn.send(one(plain_batch(vals("a"), timestamp=T0 + 1)))
    rig.broker.handle(upstream[0])
    # The broker wrote it, yet answers REQUEST_TIMED_OUT (acks=all not met in time).
    timed_out = conn.rig.broker.handle(upstream[0])  # a duplicate answer to get the frame shape
    response = produce_answer_with_error(timed_out, E.REQUEST_TIMED_OUT)
    (told,) = conn.feed([response])[0]
    assert answers_of(told)[0].error_code == E.REQUEST_TIMED_OUT
    upstream, client = conn.send(one(plain_batch(vals("a"), timestamp=T0 + 1)))
    client += conn.through_broker(upstream)
    assert answers_of(client[0])[0].error_code == E.NONE
    assert rig.broker.logs[TP] == vals("x", "a")


def test_identical_records_in_doubt_are_matched_one_for_one() -> None:
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("same", "same")))
    conn.close()
    produce, answers = retried(rig, plain_batch(vals("same", "same", "same"), timestamp=T0))
    (body,) = produce
    assert stamps_of(body)[0][3] == vals("same"), "two retries matched, the third is new"
    assert rig.broker.logs[TP] == vals("same", "same", "same")


def test_a_retry_answered_by_the_proxy_and_lost_again_is_still_recognised() -> None:
    rig = StampRig()
    conn = rig.connect()
    batch = plain_batch(vals("a"))
    sent_ok(conn, batch)
    conn.close()
    for _ in range(3):
        again = rig.connect()
        upstream, client = again.send(one(batch))
        assert upstream == [], "answered by the proxy"
        assert answers_of(client[0])[0].error_code == E.NONE
        again.close()  # and that answer is lost too
    assert rig.broker.logs[TP] == vals("a")


# -- deliberate resends ----------------------------------------------------------------


def test_a_record_sent_again_after_its_success_on_a_live_connection_is_written_again() -> None:
    rig = StampRig()
    conn = rig.connect()
    batch = plain_batch(vals("again"))
    sent_ok(conn, batch)
    sent_ok(conn, batch)  # the same record, on purpose, after its success
    assert rig.broker.logs[TP] == vals("again", "again")


def test_a_record_sent_again_after_the_connection_outlived_the_ack_grace_is_written_again() -> None:
    rig = StampRig()
    conn = rig.connect()
    batch = plain_batch(vals("again"))
    sent_ok(conn, batch)
    rig.clock.ms += rig.stamper.ack_grace_ms + 1
    conn.close()
    sent_ok(rig.connect(), batch)
    assert rig.broker.logs[TP] == vals("again", "again")


def test_the_false_positive_an_identical_record_sent_while_one_is_in_doubt_is_not_written() -> None:
    """The documented limit: on purpose or not, a copy arriving while an identical record is
    in doubt is taken for its retry."""
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("ping")))
    conn.close()
    produce, _ = retried(rig, plain_batch(vals("ping"), timestamp=T0 + 60_000))
    assert produce == []
    assert rig.broker.logs[TP] == vals("ping")


def test_records_in_doubt_are_forgotten_after_the_retry_window() -> None:
    rig = StampRig()
    conn = rig.connect()
    batch = plain_batch(vals("a"))
    sent_ok(conn, batch)
    conn.close()
    rig.clock.ms += rig.stamper.retry_window_ms + 1
    produce, _ = retried(rig, batch)
    assert len(produce) == 1
    assert rig.broker.logs[TP] == vals("a", "a")
    assert rig.stamper.copies == 0


# -- the proxy's own sequencing: the client never sees a sequence error -------------------


@pytest.mark.parametrize(
    "code", [E.OUT_OF_ORDER_SEQUENCE_NUMBER, E.INVALID_PRODUCER_EPOCH, E.UNKNOWN_PRODUCER_ID]
)
def test_a_sequence_error_bumps_the_epoch_and_the_client_gets_a_retriable_error(code: int) -> None:
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("x")))
    upstream, _ = conn.send(one(plain_batch(vals("a"), timestamp=T0 + 1)))
    answer = produce_answer_with_error(rig.broker.handle(upstream[0]), code)
    rig.broker.logs[TP].pop()  # the broker refused it: not written
    (told,) = conn.feed([answer])[0]
    assert answers_of(told)[0].error_code == E.REQUEST_TIMED_OUT
    upstream, client = conn.send(one(plain_batch(vals("a"), timestamp=T0 + 1)))
    bodies = produce_bodies(upstream)
    assert [s[:3] for b in bodies for s in stamps_of(b)] == [(5000, 1, 0)], "epoch 1, from 0"
    client += conn.through_broker(upstream)
    assert answers_of(client[0])[0].error_code == E.NONE
    assert rig.broker.logs[TP] == vals("x", "a")


def test_broker_state_lost_is_recovered_with_a_new_epoch() -> None:
    """Producer state expired or lost on a leader change: the next batch is out of order."""
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("x")))
    sent_ok(conn, plain_batch(vals("y"), timestamp=T0 + 1))
    rig.broker.states[(5000, TOPIC, 0)].epoch = 0
    rig.broker.states[(5000, TOPIC, 0)].last_seq = 10  # the broker's state disagrees
    rig.broker.states[(5000, TOPIC, 0)].cached = []
    upstream, _ = conn.send(one(plain_batch(vals("z"), timestamp=T0 + 2)))
    (told,) = conn.through_broker(upstream)
    assert answers_of(told)[0].error_code == E.REQUEST_TIMED_OUT
    sent_ok(conn, plain_batch(vals("z"), timestamp=T0 + 2))
    assert rig.broker.logs[TP] == vals("x", "y", "z")


def test_duplicate_sequence_number_counts_as_written() -> None:
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("x")))
    upstream, _ = conn.send(one(plain_batch(vals("a"), timestamp=T0 + 1)))
    answer = produce_answer_with_error(rig.broker.handle(upstream[0]), E.DUPLICATE_SEQUENCE_NUMBER)
    (told,) = conn.feed([answer])[0]
    assert answers_of(told)[0].error_code == E.NONE


def test_a_permanent_error_is_passed_on_and_its_sequence_reused() -> None:
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("x")))
    upstream, _ = conn.send(one(plain_batch(vals("big"), timestamp=T0 + 1)))
    answer = produce_answer_with_error(rig.broker.handle(upstream[0]), E.MESSAGE_TOO_LARGE)
    rig.broker.logs[TP].pop()  # the broker refused it: not written, state unchanged
    state = rig.broker.states[(5000, TOPIC, 0)]
    state.last_seq = 0
    state.cached.pop()
    (told,) = conn.feed([answer])[0]
    assert answers_of(told)[0].error_code == E.MESSAGE_TOO_LARGE
    upstream, _ = conn.send(one(plain_batch(vals("small"), timestamp=T0 + 2)))
    assert [s[:3] for s in stamps_of(upstream[0])] == [(5000, 0, 1)]
    conn.through_broker(upstream)
    assert rig.broker.logs[TP] == vals("x", "small")


def test_pipelined_batches_after_a_lost_one_are_resent_in_order() -> None:
    """Three batches in flight, the first lost on the way, the others refused out of order:
    the client's retries are all written, once, in order."""
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("x")))
    batches = [plain_batch(vals(v), timestamp=T0 + i) for i, v in enumerate("abc", 1)]
    sent = [conn.send(one(b))[0][0] for b in batches]
    answers = [rig.broker.handle(b) for b in sent[1:]]  # the first never reached the broker
    assert [answers_of(a)[0].error_code for a in answers] == [E.OUT_OF_ORDER_SEQUENCE_NUMBER] * 2
    conn.close()
    for b in batches:
        _, answers_ = retried(rig, b)
        assert answers_[0].error_code == E.NONE
    assert rig.broker.logs[TP] == vals("x", "a", "b", "c")


def test_retries_pipelined_on_one_connection_wait_for_the_resends_of_the_first() -> None:
    """librdkafka sends its retries back to back: the first retry resends every kept batch,
    the second's records are in those resends and are not sent again."""
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("x")))
    first = plain_batch(vals("a", "b"), timestamp=T0 + 1)
    second = plain_batch(vals("c", "d"), timestamp=T0 + 3)
    for batch in (first, second):
        upstream, _ = conn.send(one(batch))
        rig.broker.handle(upstream[0])  # written, answers lost
    conn.close()
    retry = rig.connect()
    up1, _ = retry.send(one(first))
    up2, client2 = retry.send(one(second))
    assert len(produce_bodies(up1)) == 2, "both kept batches resent by the first retry"
    assert up2 == [], "the second's records are in the resends: nothing more goes up"
    assert client2 == [], "and its answer waits for theirs"
    client = retry.through_broker(up1)
    assert [answers_of(b)[0].error_code for b in client] == [E.NONE, E.NONE]
    assert rig.broker.logs[TP] == vals("x", "a", "b", "c", "d")


def test_a_retry_on_a_new_connection_while_the_old_one_drains_is_resolved_by_a_resend() -> None:
    """The client's connection closed; its upstream is still reading the answer when the
    client reconnects and retries."""
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("x")))
    batch = plain_batch(vals("a"), timestamp=T0 + 1)
    upstream, _ = conn.send(one(batch))
    late_answer = rig.broker.handle(upstream[0])
    conn.session.client_gone()
    produce, answers = retried(rig, batch)
    assert len(produce) == 1, "the kept batch resent"
    assert answers[0].error_code == E.NONE
    client, more = conn.feed([late_answer])  # the drained answer: nobody to tell
    assert more == []
    conn.close()
    assert rig.broker.logs[TP] == vals("x", "a")


def test_a_broker_without_init_producer_id_v3_leaves_batches_unstamped() -> None:
    rig = StampRig()
    conn = rig.connect()
    conn.session.broker_versions = {ApiKey.INIT_PRODUCER_ID: (0, 2)}
    upstream, _ = conn.send(one(plain_batch(vals("a"))))
    (produce,) = upstream
    assert stamps_of(produce) == [(-1, -1, -1, vals("a"))]


def test_an_undecodable_producer_id_answer_leaves_the_held_batches_unstamped() -> None:
    rig = StampRig()
    conn = rig.connect()
    upstream, _ = conn.send(one(plain_batch(vals("a"))))
    (ask,) = upstream
    garbage = ask[4:8] + b"\x00\x01"  # the right correlation id, then too short
    client, more = conn.feed([garbage])
    assert client == []
    (produce,) = more
    assert stamps_of(produce) == [(-1, -1, -1, vals("a"))]


def test_a_stamped_partition_missing_from_the_broker_answer_is_in_doubt() -> None:
    rig = StampRig()
    conn = rig.connect()
    sent_ok(conn, plain_batch(vals("x")))
    upstream, _ = conn.send(one(plain_batch(vals("a"), timestamp=T0 + 1)))
    rig.broker.handle(upstream[0])
    from ._support import encode_response, produce_response_with

    empty = encode_response(produce_response_with(9, []), 2)
    (told,) = conn.feed([empty])[0]
    assert answers_of(told)[0].error_code == E.REQUEST_TIMED_OUT
    produce, answers = retried(rig, plain_batch(vals("a"), timestamp=T0 + 1))
    assert len(produce) == 1, "resent with its stamp"
    assert answers[0].error_code == E.NONE
    assert rig.broker.logs[TP] == vals("x", "a")
