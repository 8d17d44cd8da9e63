"""Unit tests of the idempotence engine: one broker rule or engine guarantee per test."""

from __future__ import annotations

import pytest

from proxy.idempotence import (
    AwaitInflight,
    Duplicate,
    Failure,
    Forward,
    IdempotenceEngine,
    Reject,
    Success,
    Unknown,
    in_sequence,
    last_sequence,
)
from proxy.idempotence.state import MAX_GHOSTS, ProducerPartitionState, SuccessEffect
from proxy.wire.error_codes import INVALID_PRODUCER_EPOCH, OUT_OF_ORDER_SEQUENCE_NUMBER

from ._support import NOW, OTHER_TP, PID, TP, batch, write, write_chain

INT32_MAX = 2**31 - 1


def forward(engine: IdempotenceEngine, b: object, now: int = NOW, tp: tuple[str, int] = TP) -> int:
    decision = engine.admit(tp, b, now)  # type: ignore[arg-type]
    assert isinstance(decision, Forward), decision
    return decision.ticket


# Sequence arithmetic (DefaultRecordBatch, ProducerAppendInfo.inSequence)


def test_last_sequence_adds_the_last_offset_delta() -> None:
    assert last_sequence(10, 4) == 14


def test_last_sequence_wraps_past_int32_max_to_zero() -> None:
    assert last_sequence(INT32_MAX, 0) == INT32_MAX
    assert last_sequence(INT32_MAX, 1) == 0
    assert last_sequence(INT32_MAX - 1, 4) == 2


def test_last_sequence_of_a_batch_without_sequence_is_no_sequence() -> None:
    assert last_sequence(-1, 7) == -1


def test_zero_follows_int32_max_in_sequence() -> None:
    assert in_sequence(INT32_MAX, 0)
    assert in_sequence(4, 5)
    assert not in_sequence(4, 6)


# Admission basics


@pytest.mark.parametrize("first_seq", [0, 17, INT32_MAX])
def test_unknown_producer_is_forwarded_whatever_its_sequence(first_seq: int) -> None:
    engine = IdempotenceEngine()
    assert isinstance(engine.admit(TP, batch(first_seq), NOW), Forward)


def test_tickets_are_distinct() -> None:
    engine = IdempotenceEngine()
    assert forward(engine, batch(0)) != forward(engine, batch(1))


# Duplicates (UnifiedLog.append, ProducerStateEntry.findDuplicateBatch)


def test_retry_of_acknowledged_batch_is_answered_with_cached_offset() -> None:
    engine = IdempotenceEngine()
    write(engine, batch(0, 3), 100)
    assert engine.admit(TP, batch(0, 3), NOW + 5) == Duplicate(100, NOW, 0)


def test_duplicate_on_create_time_topic_reports_batch_max_timestamp_as_log_append_time() -> None:
    engine = IdempotenceEngine()
    write(engine, batch(0, 3, max_timestamp=NOW - 40), 100, log_append_time=-1)
    dup = engine.admit(TP, batch(0, 3, max_timestamp=NOW - 40), NOW)
    assert isinstance(dup, Duplicate)
    assert dup.log_append_time_ms == NOW - 40


def test_duplicate_on_log_append_time_topic_reports_original_log_append_time() -> None:
    engine = IdempotenceEngine()
    write(engine, batch(0, 3, max_timestamp=NOW - 40), 100, log_append_time=NOW + 7)
    dup = engine.admit(TP, batch(0, 3), NOW + 20)
    assert isinstance(dup, Duplicate)
    assert dup.log_append_time_ms == NOW + 7


def test_duplicate_reports_latest_known_log_start_offset() -> None:
    engine = IdempotenceEngine()
    write(engine, batch(0), 100, log_start=10)
    engine.observe_log_start_offset(TP, 60)
    engine.observe_log_start_offset(TP, 30)  # a late, older answer does not move it back
    dup = engine.admit(TP, batch(0), NOW)
    assert isinstance(dup, Duplicate)
    assert dup.log_start_offset == 60


def test_duplicate_needs_same_first_and_last_sequence() -> None:
    engine = IdempotenceEngine()
    write_chain(engine, 5, per_batch=2)  # sequences 0-1, 2-3, ..., 8-9
    assert isinstance(engine.admit(TP, batch(0, 2), NOW), Duplicate)
    assert engine.admit(TP, batch(0, 3), NOW) == Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)


def test_duplicate_needs_same_epoch() -> None:
    engine = IdempotenceEngine()
    write(engine, batch(0, epoch=0), 100)
    write(engine, batch(0, epoch=1), 101)
    assert engine.admit(TP, batch(0, epoch=0), NOW) == Reject(INVALID_PRODUCER_EPOCH)
    assert engine.admit(TP, batch(0, epoch=1), NOW) == Duplicate(101, NOW, 0)


def test_every_one_of_the_last_five_batches_is_a_duplicate() -> None:
    engine = IdempotenceEngine()
    chain = write_chain(engine, 7)
    for b, offset in chain[2:]:
        assert engine.admit(TP, b, NOW) == Duplicate(offset, NOW, 0)


def test_retry_older_than_five_cached_batches_is_out_of_order() -> None:
    engine = IdempotenceEngine()
    chain = write_chain(engine, 6)
    assert engine.admit(TP, chain[0][0], NOW) == Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)


def test_duplicate_is_forwarded_while_pending_batches_may_push_it_out_of_broker_cache() -> None:
    engine = IdempotenceEngine()
    chain = write_chain(engine, 5)  # sequences 0..9
    forward(engine, batch(10, 2))
    # One more append would leave the oldest cached batch out of the broker's last five.
    assert engine.admit(TP, chain[1][0], NOW) == Duplicate(chain[1][1], NOW, 0)
    assert isinstance(engine.admit(TP, chain[0][0], NOW), Forward)


def test_pending_batch_of_newer_epoch_makes_duplicates_and_gaps_uncertain() -> None:
    engine = IdempotenceEngine()
    chain = write_chain(engine, 5)
    forward(engine, batch(0, epoch=1))
    assert isinstance(engine.admit(TP, chain[4][0], NOW), Forward)
    assert isinstance(engine.admit(TP, batch(40), NOW), Forward)
    # Lower epochs stay certain: the broker's epoch only grows.
    write(engine, batch(0, epoch=2), 200)
    assert engine.admit(TP, batch(3, epoch=1), NOW) == Reject(INVALID_PRODUCER_EPOCH)


# In-flight retries


def test_retry_of_batch_in_flight_awaits_the_original() -> None:
    engine = IdempotenceEngine()
    ticket = forward(engine, batch(0, 3))
    assert engine.admit(TP, batch(0, 3), NOW) == AwaitInflight(ticket)


def test_in_flight_match_needs_same_producer_partition_epoch_and_range() -> None:
    engine = IdempotenceEngine()
    forward(engine, batch(0, 3))
    assert isinstance(engine.admit(OTHER_TP, batch(0, 3), NOW), Forward)
    assert isinstance(engine.admit(TP, batch(0, 3, pid=PID + 1), NOW), Forward)
    assert isinstance(engine.admit(TP, batch(0, 3, epoch=1), NOW), Forward)
    assert isinstance(engine.admit(TP, batch(0, 2), NOW), Forward)


def test_waiters_get_the_duplicate_answer_of_a_success() -> None:
    engine = IdempotenceEngine()
    ticket = forward(engine, batch(0, 3, max_timestamp=NOW - 3))
    engine.observe_log_start_offset(TP, 12)
    answer = engine.complete(ticket, Success(100, -1, 5), NOW)
    # As the broker answers the identical batch arriving next: the cached timestamp, not -1.
    assert answer == Duplicate(100, NOW - 3, 12)


@pytest.mark.parametrize("outcome", [Failure(6), Failure(45), Unknown()])
def test_waiters_are_admitted_again_when_the_original_did_not_succeed(outcome: object) -> None:
    engine = IdempotenceEngine()
    ticket = forward(engine, batch(0))
    assert engine.complete(ticket, outcome, NOW) is None  # type: ignore[arg-type]
    assert isinstance(engine.admit(TP, batch(0), NOW), Forward)


def test_completing_a_ticket_twice_or_an_unknown_ticket_is_ignored() -> None:
    engine = IdempotenceEngine()
    ticket = write(engine, batch(0), 100)
    assert engine.complete(ticket, Success(300, -1, 0), NOW) is None
    assert engine.complete(9999, Unknown(), NOW) is None
    assert engine.admit(TP, batch(0), NOW) == Duplicate(100, NOW, 0)


# Sequence checks (ProducerAppendInfo.checkSequence)


def test_next_batch_in_sequence_is_forwarded() -> None:
    engine = IdempotenceEngine()
    write_chain(engine, 5)
    assert isinstance(engine.admit(TP, batch(10, 4), NOW), Forward)


def test_pipelined_batches_continuing_pending_ones_are_forwarded() -> None:
    engine = IdempotenceEngine()
    write_chain(engine, 5)
    for seq in range(10, 20, 2):
        forward(engine, batch(seq, 2))
    assert engine.pending == 5


def test_gap_is_rejected_only_when_no_pending_batch_fills_it() -> None:
    engine = IdempotenceEngine()
    write_chain(engine, 5)  # up to sequence 9
    assert engine.admit(TP, batch(12, 2), NOW) == Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
    t10 = forward(engine, batch(10, 2))
    t12 = forward(engine, batch(12, 2))  # would follow 10-11, if that is written
    # Whatever the pending batches' fate, 16 continues none of them nor the acknowledged state.
    assert engine.admit(TP, batch(16, 2), NOW) == Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
    engine.complete(t10, Failure(19), NOW)
    engine.complete(t12, Failure(45), NOW)
    assert engine.admit(TP, batch(12, 2), NOW) == Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)


def test_gap_is_forwarded_until_five_consecutive_batches_are_known() -> None:
    # With fewer than five known, the broker may cache older batches the engine never saw.
    engine = IdempotenceEngine()
    write_chain(engine, 4, first_seq=50)
    engine.complete(forward(engine, batch(40, 2)), Failure(45), NOW)
    engine.complete(forward(engine, batch(90, 2)), Failure(45), NOW)
    write(engine, batch(58, 2), 200)
    assert engine.admit(TP, batch(90, 2), NOW) == Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)


def engine_missing_an_acknowledgement() -> IdempotenceEngine:
    """Cached 0-1, 4-5, ..., 10-11; 2-3 failed although 4-5 was accepted after it."""
    engine = IdempotenceEngine()
    write(engine, batch(0, 2), 100)
    t_middle = forward(engine, batch(2, 2))
    for seq in range(4, 12, 2):
        write(engine, batch(seq, 2), 100 + seq)
    engine.complete(t_middle, Failure(19), NOW)
    return engine


def test_missing_acknowledgement_in_the_middle_makes_older_batches_uncertain() -> None:
    engine = engine_missing_an_acknowledgement()
    assert isinstance(engine.admit(TP, batch(0, 2), NOW), Forward)
    assert engine.admit(TP, batch(4, 2), NOW) == Duplicate(104, NOW, 0)


def test_missing_acknowledgement_in_the_middle_is_not_taken_for_a_gap() -> None:
    engine = engine_missing_an_acknowledgement()
    assert isinstance(engine.admit(TP, batch(2, 2), NOW), Forward)


def test_sequences_wrap_around_int32_max() -> None:
    engine = IdempotenceEngine()
    chain = write_chain(engine, 5, first_seq=INT32_MAX - 4, per_batch=3)
    assert [b.base_sequence for b, _ in chain] == [INT32_MAX - 4, INT32_MAX - 1, 1, 4, 7]
    assert chain[1][0].last_sequence == 0
    assert engine.admit(TP, chain[1][0], NOW) == Duplicate(chain[1][1], NOW, 0)
    assert isinstance(engine.admit(TP, batch(10), NOW), Forward)
    assert engine.admit(TP, batch(12), NOW) == Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)


def test_zero_after_int32_max_is_in_sequence() -> None:
    engine = IdempotenceEngine()
    write(engine, batch(INT32_MAX - 1, 2), 100)
    assert isinstance(engine.admit(TP, batch(0, 3), NOW), Forward)


def test_negative_base_sequence_is_left_to_the_broker() -> None:
    engine = IdempotenceEngine()
    write_chain(engine, 5)
    assert isinstance(engine.admit(TP, batch(-1), NOW), Forward)


# Epochs (ProducerAppendInfo.checkProducerEpoch / checkSequence, ProducerStateEntry)


def test_older_epoch_is_invalid_producer_epoch() -> None:
    engine = IdempotenceEngine()
    write(engine, batch(0, epoch=3), 100)
    assert engine.admit(TP, batch(1, epoch=2), NOW) == Reject(INVALID_PRODUCER_EPOCH)


def test_new_epoch_not_starting_at_zero_is_out_of_order() -> None:
    engine = IdempotenceEngine()
    write(engine, batch(0, epoch=0), 100)
    assert engine.admit(TP, batch(1, epoch=1), NOW) == Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)


def test_new_epoch_starting_at_zero_is_forwarded() -> None:
    engine = IdempotenceEngine()
    write(engine, batch(0, epoch=0), 100)
    assert isinstance(engine.admit(TP, batch(0, epoch=1), NOW), Forward)


def test_new_epoch_continuing_a_pending_batch_of_that_epoch_is_forwarded() -> None:
    engine = IdempotenceEngine()
    write(engine, batch(0, epoch=0), 100)
    forward(engine, batch(0, 2, epoch=1))
    assert isinstance(engine.admit(TP, batch(2, epoch=1), NOW), Forward)
    assert engine.admit(TP, batch(5, epoch=1), NOW) == Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
    forward(engine, batch(0, epoch=2))
    assert isinstance(engine.admit(TP, batch(5, epoch=1), NOW), Forward)


def test_success_in_new_epoch_clears_cached_batches() -> None:
    engine = IdempotenceEngine()
    chain = write_chain(engine, 3)
    write(engine, batch(0, 2, epoch=1), 300)
    assert engine.admit(TP, chain[0][0], NOW) == Reject(INVALID_PRODUCER_EPOCH)
    assert engine.admit(TP, batch(0, 2, epoch=1), NOW) == Duplicate(300, NOW, 0)


def test_stale_success_of_older_epoch_does_not_roll_the_epoch_back() -> None:
    engine = IdempotenceEngine()
    t_old = forward(engine, batch(0, epoch=0))
    write(engine, batch(0, epoch=1), 101)
    assert engine.complete(t_old, Success(100, -1, 0), NOW) == Duplicate(100, NOW, 0)
    assert engine.admit(TP, batch(0, epoch=0), NOW) == Reject(INVALID_PRODUCER_EPOCH)
    assert engine.admit(TP, batch(0, epoch=1), NOW) == Duplicate(101, NOW, 0)


# Out-of-order acknowledgements


def test_out_of_order_successes_are_cached_by_offset_keeping_the_newest_five() -> None:
    engine = IdempotenceEngine()
    tickets = [forward(engine, batch(seq, 2)) for seq in range(0, 12, 2)]
    offsets = [100 + 2 * i for i in range(6)]
    for i in (5, 3, 1, 0, 4, 2):
        engine.complete(tickets[i], Success(offsets[i], -1, 0), NOW)
    assert engine.admit(TP, batch(0, 2), NOW) == Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
    for i in range(1, 6):
        assert engine.admit(TP, batch(2 * i, 2), NOW) == Duplicate(offsets[i], NOW, 0)


# Unknown outcomes


def test_unknown_outcome_makes_partition_forward_until_reanchored() -> None:
    engine = IdempotenceEngine()
    chain = write_chain(engine, 5)
    lost = forward(engine, batch(10, 2))
    engine.complete(lost, Unknown(), NOW)
    # Maybe written, maybe not: retries, older batches and gaps all go to the broker.
    engine.complete(forward(engine, chain[4][0]), Success(chain[4][1], NOW, 0), NOW)
    engine.complete(forward(engine, batch(40)), Failure(45), NOW)
    retry = engine.admit(TP, batch(10, 2), NOW)
    assert isinstance(retry, Forward)
    # The broker answers the retry (writing it or finding it cached): the doubt is gone.
    engine.complete(retry.ticket, Success(110, -1, 0), NOW)
    assert engine.admit(TP, chain[4][0], NOW) == Duplicate(chain[4][1], NOW, 0)
    assert engine.admit(TP, batch(10, 2), NOW) == Duplicate(110, NOW, 0)
    assert engine.admit(TP, batch(40), NOW) == Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)


def test_unknown_outcome_for_unknown_producer_is_remembered() -> None:
    engine = IdempotenceEngine()
    lost = forward(engine, batch(0, 2))
    engine.complete(lost, Unknown(), NOW)
    assert engine.entries == 1
    write(engine, batch(2, 2), 102)  # continues the lost batch: it was written
    assert isinstance(engine.admit(TP, batch(2, 2), NOW), Forward)


def test_newer_epoch_success_ends_doubt_about_older_epochs() -> None:
    engine = IdempotenceEngine()
    write(engine, batch(0, epoch=0), 100)
    lost = forward(engine, batch(1, epoch=0))
    engine.complete(lost, Unknown(), NOW)
    write(engine, batch(0, epoch=1), 101)
    assert engine.admit(TP, batch(0, epoch=1), NOW) == Duplicate(101, NOW, 0)


def test_error_after_append_is_treated_as_unknown() -> None:
    # REQUEST_TIMED_OUT comes from DelayedProduce after the leader appended the batch.
    engine = IdempotenceEngine()
    write_chain(engine, 5)
    ticket = forward(engine, batch(10, 2))
    engine.complete(ticket, Failure(7), NOW)
    assert isinstance(engine.admit(TP, batch(12, 2), NOW), Forward)


def test_error_before_append_leaves_no_trace() -> None:
    engine = IdempotenceEngine()
    write_chain(engine, 5)
    ticket = forward(engine, batch(10, 2))
    engine.complete(ticket, Failure(19), NOW)  # NOT_ENOUGH_REPLICAS: refused before appending
    assert engine.admit(TP, batch(12, 2), NOW) == Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)


def test_unknown_outcome_of_already_cached_batch_changes_nothing() -> None:
    engine = IdempotenceEngine()
    chain = write_chain(engine, 5)
    next_ticket = forward(engine, batch(10, 2))
    old_retry = forward(engine, chain[0][0])  # may have left the broker's cache: forwarded
    engine.complete(old_retry, Unknown(), NOW)
    engine.complete(next_ticket, Failure(19), NOW)
    assert engine.admit(TP, chain[0][0], NOW) == Duplicate(chain[0][1], NOW, 0)


def test_many_unknown_outcomes_keep_the_epoch_uncertain_until_a_newer_one() -> None:
    engine = IdempotenceEngine()
    write_chain(engine, 5)
    for seq in range(10, 10 + MAX_GHOSTS + 3):
        engine.complete(forward(engine, batch(seq)), Unknown(), NOW)
    for seq in range(10, 10 + MAX_GHOSTS + 3):
        retry = engine.admit(TP, batch(seq), NOW)
        assert isinstance(retry, Forward)
        engine.complete(retry.ticket, Success(200 + seq, -1, 0), NOW)
    assert isinstance(engine.admit(TP, batch(10 + MAX_GHOSTS + 2), NOW), Forward)
    write(engine, batch(0, epoch=1), 500)
    assert engine.admit(TP, batch(0, epoch=1), NOW) == Duplicate(500, NOW, 0)


def test_unknown_outcome_in_a_newer_epoch_outlives_an_older_epoch_success() -> None:
    engine = IdempotenceEngine()
    write(engine, batch(0, epoch=0), 100)
    t_one = forward(engine, batch(0, epoch=1))
    engine.complete(forward(engine, batch(0, epoch=2)), Unknown(), NOW)
    engine.complete(t_one, Success(101, -1, 0), NOW)
    # Epoch 2 may have reached the broker, which would then fence epoch 1.
    assert isinstance(engine.admit(TP, batch(0, epoch=1), NOW), Forward)


def test_unknown_outcome_of_stale_epoch_changes_nothing() -> None:
    engine = IdempotenceEngine()
    ticket = forward(engine, batch(0, epoch=0))
    write(engine, batch(0, epoch=1), 100)
    engine.complete(ticket, Unknown(), NOW)
    assert engine.admit(TP, batch(0, epoch=1), NOW) == Duplicate(100, NOW, 0)


def test_conflicting_acknowledgement_resets_the_partition_state() -> None:
    # The same batch at another offset: the log was truncated or recreated.
    engine = IdempotenceEngine()
    write(engine, batch(0), 100)
    engine.complete(forward(engine, batch(1)), Unknown(), NOW)
    retry = forward(engine, batch(0))  # in doubt, so forwarded
    engine.complete(retry, Success(500, -1, 0), NOW)
    assert engine.entries == 0
    assert isinstance(engine.admit(TP, batch(0), NOW), Forward)


# Transactional batches


def test_transactional_batches_are_forwarded_by_default() -> None:
    engine = IdempotenceEngine()
    write(engine, batch(0, transactional=True), 100)
    assert isinstance(engine.admit(TP, batch(0, transactional=True), NOW), Forward)
    assert isinstance(engine.admit(TP, batch(7, epoch=1, transactional=True), NOW), Forward)


def test_transactional_retry_still_awaits_an_identical_batch_in_flight() -> None:
    engine = IdempotenceEngine()
    ticket = forward(engine, batch(0, transactional=True))
    assert engine.admit(TP, batch(0, transactional=True), NOW) == AwaitInflight(ticket)


def test_transactional_batches_follow_the_same_rules_when_enabled() -> None:
    engine = IdempotenceEngine(answer_transactional=True)
    write(engine, batch(0, transactional=True), 100)
    assert engine.admit(TP, batch(0, transactional=True), NOW) == Duplicate(100, NOW, 0)
    assert engine.admit(TP, batch(7, epoch=1, transactional=True), NOW) == Reject(
        OUT_OF_ORDER_SEQUENCE_NUMBER
    )


# Bounds


def test_least_recently_updated_entry_is_evicted_and_counted() -> None:
    engine = IdempotenceEngine(max_entries=2)
    write(engine, batch(0, pid=1), 100)
    write(engine, batch(0, pid=2), 101)
    write(engine, batch(1, pid=1), 102)  # pid 1 is now the most recently updated
    write(engine, batch(0, pid=3), 103)
    assert engine.entries == 2
    assert engine.evictions == 1
    assert isinstance(engine.admit(TP, batch(0, pid=2), NOW), Forward)
    assert engine.admit(TP, batch(1, pid=1), NOW) == Duplicate(102, NOW, 0)


def test_idle_entries_expire_and_are_counted() -> None:
    engine = IdempotenceEngine(expiry_ms=1_000)
    write(engine, batch(0, pid=1), 100, now=NOW)
    write(engine, batch(0, pid=2, max_timestamp=NOW + 600), 101, now=NOW + 600)
    engine.admit(OTHER_TP, batch(0, pid=9), NOW + 1_000)
    assert engine.entries == 1
    assert engine.evictions == 1
    assert isinstance(engine.admit(TP, batch(0, pid=1), NOW + 1_000), Forward)
    assert isinstance(engine.admit(TP, batch(0, pid=2), NOW + 1_000), Duplicate)


def test_entry_expires_with_old_record_timestamps_as_the_broker_does() -> None:
    # ProducerStateManager.isProducerExpired measures from the last batch's timestamp.
    engine = IdempotenceEngine(expiry_ms=1_000)
    write(engine, batch(0, max_timestamp=NOW - 900), 100)
    assert isinstance(engine.admit(TP, batch(0), NOW + 50), Duplicate)
    assert isinstance(engine.admit(TP, batch(0), NOW + 100), Forward)
    assert engine.evictions == 1


def test_pending_batch_with_old_timestamp_brings_expiry_forward() -> None:
    engine = IdempotenceEngine(expiry_ms=1_000)
    write(engine, batch(0), 100)
    ticket = forward(engine, batch(1, max_timestamp=NOW - 5_000))
    assert isinstance(engine.admit(TP, batch(0), NOW), Forward)
    # The acknowledgement of a batch pending when its entry was dropped does not rebuild it.
    assert engine.complete(ticket, Success(101, -1, 0), NOW) == Duplicate(101, NOW - 5_000, 0)
    assert engine.entries == 0


def test_acknowledgement_pending_across_eviction_is_not_trusted() -> None:
    engine = IdempotenceEngine(max_entries=1)
    write(engine, batch(0, pid=1), 100)
    ticket = forward(engine, batch(1, pid=1))
    write(engine, batch(0, pid=2), 200)  # evicts pid 1 while its batch 1 is in flight
    engine.complete(ticket, Success(101, -1, 0), NOW)
    assert engine.entries == 1
    assert isinstance(engine.admit(TP, batch(1, pid=1), NOW), Forward)


def test_batches_in_flight_across_eviction_cannot_hide_a_later_write() -> None:
    # Six pipelined batches; the last one's answer arrives first, then the entry is evicted.
    engine = IdempotenceEngine(max_entries=1)
    tickets = [forward(engine, batch(seq, pid=1)) for seq in range(6)]
    engine.complete(tickets[5], Success(105, -1, 0), NOW)
    write(engine, batch(0, pid=2), 200)
    for seq in range(5):
        engine.complete(tickets[seq], Success(100 + seq, -1, 0), NOW)
    # 0-4 alone would look like a complete history ending at 4; the broker's ends at 5.
    assert isinstance(engine.admit(TP, batch(6, pid=1), NOW), Forward)


def test_forgotten_write_between_known_batches_is_not_skipped_over() -> None:
    engine = IdempotenceEngine(max_entries=1)
    first = forward(engine, batch(0, pid=1))
    engine.complete(forward(engine, batch(1, pid=1)), Success(101, -1, 0), NOW)
    write(engine, batch(0, pid=2), 200)  # evicts pid 1, whose batch 0 is in flight
    engine.complete(first, Success(100, -1, 0), NOW)
    for seq in range(2, 6):
        write(engine, batch(seq, pid=1), 100 + seq)
    # The broker caches 1..5: batch 0 is no longer a duplicate there.
    assert isinstance(engine.admit(TP, batch(0, pid=1), NOW), Forward)


def test_pending_tickets_beyond_the_bound_are_dropped_as_unknown() -> None:
    engine = IdempotenceEngine(max_pending=2)
    write_chain(engine, 5)
    first = forward(engine, batch(10))
    forward(engine, batch(11))
    forward(engine, batch(12))
    assert engine.pending == 2
    assert engine.complete(first, Success(110, -1, 0), NOW) is None
    # The dropped batch may have been written: the partition is in doubt.
    assert isinstance(engine.admit(TP, batch(0, 2), NOW), Forward)


def test_fewer_retained_batches_answer_fewer_retries_and_never_reject_gaps() -> None:
    engine = IdempotenceEngine(batches_to_retain=2)
    chain = write_chain(engine, 6)
    assert isinstance(engine.admit(TP, chain[3][0], NOW), Forward)
    assert engine.admit(TP, chain[4][0], NOW) == Duplicate(chain[4][1], NOW, 0)
    assert isinstance(engine.admit(TP, batch(40), NOW), Forward)


def test_log_start_offsets_are_kept_for_a_bounded_number_of_partitions() -> None:
    engine = IdempotenceEngine(max_entries=2)
    for partition in range(4):
        engine.observe_log_start_offset(("t", partition), 10)
    write(engine, batch(0), 100, log_start=3)
    engine.observe_log_start_offset(TP, 7)
    assert engine.admit(TP, batch(0), NOW) == Duplicate(100, NOW, 7)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_entries": 0},
        {"max_pending": 0},
        {"expiry_ms": 0},
        {"batches_to_retain": 0},
        {"batches_to_retain": 6},
    ],
)
def test_constructor_rejects_unusable_bounds(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must"):
        IdempotenceEngine(**kwargs)  # type: ignore[arg-type]


# -- ProducerPartitionState.add_success: the in-order fast path and the general path agree ----


def _cached(state: ProducerPartitionState) -> list[tuple[int, int, int, int]]:
    return [
        (state.first_sequence(i), state.last_sequence(i), state.base_offset(i), state.timestamp(i))
        for i in range(state.size)
    ]


@pytest.mark.parametrize("retain", [1, 2, 5])
def test_in_order_successes_keep_only_the_newest_retained_batches(retain: int) -> None:
    state = ProducerPartitionState(NOW)
    for i in range(7):
        effect = state.add_success(0, 10 * i, 10 * i + 9, 100 * i, NOW + i, retain)
        assert effect is SuccessEffect.RECORDED
    assert _cached(state) == [(10 * i, 10 * i + 9, 100 * i, NOW + i) for i in range(7 - retain, 7)]


def test_a_cached_range_acknowledged_again_at_a_higher_offset_is_a_conflict() -> None:
    state = ProducerPartitionState(NOW)
    state.add_success(0, 0, 9, 100, NOW, 5)
    state.add_success(0, 10, 19, 110, NOW, 5)
    # Same sequence range, a later offset: the log is not what the entry says.
    assert state.add_success(0, 0, 9, 500, NOW, 5) is SuccessEffect.CONFLICT


def test_an_older_acknowledgement_arriving_late_is_inserted_in_offset_order() -> None:
    state = ProducerPartitionState(NOW)
    state.add_success(0, 10, 19, 110, NOW, 5)
    state.add_success(0, 0, 9, 100, NOW, 5)
    assert _cached(state) == [(0, 9, 100, NOW), (10, 19, 110, NOW)]
    assert state.newest_last_sequence() == 19
    assert state.newest_timestamp(NOW + 1) == NOW
