"""The Stamper alone: epochs, expiry, the byte budget and counting (issue 9).

The session-level behaviour is in tests/routing/test_stamping_session.py; these pin down the
state machine's edges with hand-fed outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.idempotence.stamping import (
    DROPPED,
    INT16_MAX,
    UNKNOWN,
    WRITTEN,
    Stamper,
)
from proxy.wire import error_codes as E
from proxy.wire.batch import read_batch_header
from tests.routing._stamp_rig import T0, plain_batch

TP = ("orders", 0)


@dataclass
class Counts:
    stamped_: list[tuple[str, int]] = field(default_factory=list)
    dropped: int = 0
    pids: list[str] = field(default_factory=list)

    def stamped(self, result: str, records: int) -> None:
        self.stamped_.append((result, records))

    def retries_dropped(self, records: int) -> None:
        self.dropped += records

    def producer_id(self, result: str) -> None:
        self.pids.append(result)


def stamper(**options: int) -> tuple[Stamper, Counts]:
    counts = Counts()
    s = Stamper(observer=counts, **options)
    s.granted("app", 5000)
    return s, counts


def test_an_epoch_at_its_maximum_hands_the_line_a_new_producer_id() -> None:
    s, counts = stamper()
    first = s.plan("app", TP, plain_batch([b"a"]), 1, T0)
    assert first.send is not None
    s.settle(first.send, E.NONE, 0, T0)
    first.line.epoch = INT16_MAX  # (32,767 bumps later)
    plan = s.plan("app", TP, plain_batch([b"b"], timestamp=T0 + 1), 1, T0)
    assert plan.send is not None
    s.settle(plan.send, E.OUT_OF_ORDER_SEQUENCE_NUMBER, -1, T0)
    assert s.producer_id("app") is None, "the client id must get a new producer id"
    s.granted("app", 6000)
    again = s.plan("app", TP, plain_batch([b"b"], timestamp=T0 + 1), 1, T0)
    assert again.send is None, "the client's retry of b is the refused batch, resent"
    (resend,) = again.resend
    header = read_batch_header(resend.batch)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (6000, 0, 0)
    assert counts.pids == ["obtained", "obtained"]


def test_a_bump_gives_up_batches_of_the_old_epoch_whose_outcome_is_unknown() -> None:
    s, counts = stamper()
    first = s.plan("app", TP, plain_batch([b"a"]), 1, T0).send
    second = s.plan("app", TP, plain_batch([b"b"], timestamp=T0 + 1), 1, T0).send
    assert first is not None
    assert second is not None
    s.lost(second, T0)
    assert second.state == UNKNOWN
    # The broker refuses the first for its sequence with nothing earlier to explain it,
    # but the unknown second could still close the gap: no bump yet.
    s.settle(first, E.INVALID_PRODUCER_EPOCH, -1, T0)
    assert first.line.epoch == 0
    s._bump(first.line)
    assert second.state == DROPPED
    assert ("unresolved", 1) in counts.stamped_


def test_an_answer_lost_for_a_batch_of_an_old_epoch_gives_it_up() -> None:
    s, _ = stamper()
    plan = s.plan("app", TP, plain_batch([b"a"]), 1, T0)
    assert plan.send is not None
    plan.line.epoch += 1
    s.lost(plan.send, T0)
    assert plan.send.state == DROPPED


def test_unresolved_batches_are_given_up_after_the_retry_window() -> None:
    s, counts = stamper(retry_window_ms=1000)
    plan = s.plan("app", TP, plain_batch([b"a"]), 1, T0)
    assert plan.send is not None
    s.lost(plan.send, T0)
    later = s.plan("app", TP, plain_batch([b"b"], timestamp=T0 + 5), 1, T0 + 2000)
    assert later.resend == [], "given up, not resent"
    assert plan.send.state == DROPPED
    assert s.copies == 0
    assert ("unresolved", 1) in counts.stamped_


def test_over_the_byte_budget_the_least_recently_used_partition_sheds_its_batches() -> None:
    s, _ = stamper(max_bytes=1 << 20)
    value = b"x" * 50_000
    for partition in range(40):
        plan = s.plan("app", ("orders", partition), plain_batch([value]), 1, T0)
        assert plan.send is not None
        s.lost(plan.send, T0)  # kept for a resend: its bytes count
    assert s.bytes <= 1 << 20
    assert s.evictions > 0
    oldest = s.line("app", ("orders", 0))
    assert oldest is not None, "the line stays: its sequencing follows the broker"
    assert oldest.queue == []
    assert oldest.next_seq == 1
    newest = s.line("app", ("orders", 39))
    assert newest is not None
    assert newest.queue != []


def test_lines_themselves_are_forgotten_when_shedding_is_not_enough() -> None:
    s, _ = stamper(max_bytes=1 << 20)
    for partition in range(3000):
        plan = s.plan("app", ("orders", partition), plain_batch([b"v"]), 1, T0)
        assert plan.send is not None
        s.settle(plan.send, E.NONE, 0, T0)
    assert s.bytes <= 1 << 20
    assert s.line("app", ("orders", 0)) is None
    assert s.line("app", ("orders", 2999)) is not None
    assert s.lines < 3000


def test_a_batch_written_after_an_error_counts_its_earlier_batches_written() -> None:
    s, _ = stamper()
    a = s.plan("app", TP, plain_batch([b"a"]), 1, T0).send
    b = s.plan("app", TP, plain_batch([b"b"], timestamp=T0 + 1), 1, T0).send
    assert a is not None
    assert b is not None
    s.settle(a, E.OUT_OF_ORDER_SEQUENCE_NUMBER, -1, T0)  # fell out of the broker's 5
    s.settle(b, E.NONE, 41, T0)
    assert a.state == WRITTEN
    assert b.state == WRITTEN
    assert a.line.epoch == 0, "no bump: the later success explains it"


def test_records_recognised_as_retries_are_counted() -> None:
    s, counts = stamper()
    plan = s.plan("app", TP, plain_batch([b"a", b"b"]), 2, T0)
    assert plan.send is not None
    s.settle(plan.send, E.NONE, 0, T0)
    s.in_doubt([plan.send], T0)
    retry = s.plan("app", TP, plain_batch([b"a", b"b"]), 2, T0)
    assert retry.send is None
    assert counts.dropped == 2
    assert s.answer(retry).error_code == E.NONE


def test_a_refused_client_id_is_stamped_again_after_the_retry_window() -> None:
    s, counts = stamper(retry_window_ms=1000)
    s.refused("other", T0)
    assert not s.stamps("other", T0 + 999)
    assert s.stamps("other", T0 + 1000)
    assert counts.pids == ["obtained", "refused"]


def test_undecodable_client_records_are_stamped_without_matching() -> None:
    s, _ = stamper()
    plan = s.plan("app", TP, plain_batch([b"a"]), 1, T0)
    assert plan.send is not None
    s.lost(plan.send, T0)
    bad = bytearray(plain_batch([b"zz"], timestamp=T0 + 1))
    bad[-3] = 0x7F  # a record length that runs past the batch
    retry = s.plan("app", TP, bytes(bad), 1, T0)
    assert retry.send is not None
    assert retry.matched == []
