"""No local answer across principals (issue 11): the engine answers a batch, or holds it for an
identical one in flight, only for the principal whose batches made what it answers from."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.idempotence import Forward, IdempotenceEngine, Success
from proxy.idempotence.coordinator import Answer, ProduceCoordinator, Send, Wait
from proxy.idempotence.decisions import (
    UNKNOWN_PRINCIPAL,
    AwaitInflight,
    Duplicate,
    Failure,
    Principal,
    Reject,
    Unknown,
    same_principal,
)
from proxy.idempotence.stamping import Stamper, client_id_of, client_key

from ._support import NOW, TP, batch

TOPIC_AUTHORIZATION_FAILED = 29


def write_as(engine: IdempotenceEngine, principal: Principal, seq: int, offset: int) -> None:
    decision = engine.admit(TP, batch(seq), NOW, principal=principal)
    assert isinstance(decision, Forward), decision
    engine.complete(decision.ticket, Success(offset, -1, 0), NOW)


def test_same_principal_is_equality_but_for_the_unknown_one() -> None:
    assert same_principal(None, None)
    assert same_principal("alice", "alice")
    assert not same_principal("alice", "bob")
    assert not same_principal("alice", None)
    assert not same_principal(None, "alice")
    assert not same_principal(UNKNOWN_PRINCIPAL, UNKNOWN_PRINCIPAL)


def test_a_duplicate_is_answered_to_its_writer_and_forwarded_for_anyone_else() -> None:
    engine = IdempotenceEngine()
    write_as(engine, "alice", 0, 100)
    assert isinstance(engine.admit(TP, batch(0), NOW, principal="bob"), Forward)
    assert isinstance(engine.admit(TP, batch(0), NOW, principal=None), Forward)
    assert isinstance(engine.admit(TP, batch(0), NOW, principal=UNKNOWN_PRINCIPAL), Forward)
    assert engine.admit(TP, batch(0), NOW, principal="alice") == Duplicate(100, NOW, 0)


def test_rejections_are_the_writers_only_too() -> None:
    engine = IdempotenceEngine()
    first = engine.admit(TP, batch(0, epoch=1), NOW, principal="alice")
    assert isinstance(first, Forward)
    engine.complete(first.ticket, Success(100, -1, 0), NOW)
    # A fenced epoch for alice; for bob the broker first checks his authorisation.
    assert isinstance(engine.admit(TP, batch(1, epoch=0), NOW, principal="alice"), Reject)
    assert isinstance(engine.admit(TP, batch(1, epoch=0), NOW, principal="bob"), Forward)


def test_the_unknown_principal_is_not_answered_even_from_its_own_writes() -> None:
    engine = IdempotenceEngine()
    write_as(engine, UNKNOWN_PRINCIPAL, 0, 100)
    assert isinstance(engine.admit(TP, batch(0), NOW, principal=UNKNOWN_PRINCIPAL), Forward)


def test_a_second_writer_leaves_the_state_to_no_one() -> None:
    engine = IdempotenceEngine()
    write_as(engine, "alice", 0, 100)
    write_as(engine, "bob", 1, 101)
    for who in ("alice", "bob", None):
        assert isinstance(engine.admit(TP, batch(0), NOW, principal=who), Forward), who


def test_a_refused_replay_by_another_principal_changes_nothing() -> None:
    engine = IdempotenceEngine()
    write_as(engine, "alice", 0, 100)
    replay = engine.admit(TP, batch(0), NOW, principal="bob")
    assert isinstance(replay, Forward)
    engine.complete(replay.ticket, Failure(TOPIC_AUTHORIZATION_FAILED), NOW)
    assert isinstance(engine.admit(TP, batch(0), NOW, principal="alice"), Duplicate)


def test_an_unknown_outcome_of_another_principal_leaves_the_state_to_no_one() -> None:
    engine = IdempotenceEngine()
    write_as(engine, "alice", 0, 100)
    replay = engine.admit(TP, batch(1), NOW, principal="bob")
    assert isinstance(replay, Forward)
    engine.complete(replay.ticket, Unknown(), NOW)
    assert isinstance(engine.admit(TP, batch(0), NOW, principal="alice"), Forward)


def test_only_the_in_flight_batchs_principal_waits_for_it() -> None:
    engine = IdempotenceEngine()
    first = engine.admit(TP, batch(0), NOW, principal="alice")
    assert isinstance(first, Forward)
    assert engine.admit(TP, batch(0), NOW, principal="alice") == AwaitInflight(first.ticket)
    assert isinstance(engine.admit(TP, batch(0), NOW, principal="bob"), Forward)


def test_the_coordinator_passes_the_principal_to_waiters_and_answers() -> None:
    coordinator = ProduceCoordinator(IdempotenceEngine(), clock_ms=lambda: NOW)

    def decide(owner: int, principal: Principal) -> object:
        return coordinator.decide(
            owner, TP, batch(0), 1, acks=-1, valid=lambda: True, now_ms=NOW, principal=principal
        )

    original = decide(1, "alice")
    assert isinstance(original, Send)
    assert original.ticket is not None
    held = decide(2, "alice")
    assert isinstance(held, Wait)
    assert held.waiter.principal == "alice"
    assert isinstance(decide(3, "bob"), Send)
    coordinator.settle(original.ticket, Success(100, -1, 0), NOW)
    assert held.waiter.answer == Answer(0, 100, NOW, 0)
    assert isinstance(decide(4, "bob"), Wait), "bob's copy is in flight: his retry waits for it"
    assert isinstance(decide(5, "carol"), Send)
    assert decide(6, "alice") == Answer(0, 100, NOW, 0)


PRINCIPALS = st.sampled_from([None, "alice", "bob", UNKNOWN_PRINCIPAL])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), PRINCIPALS, st.integers(0, 3), st.booleans()),
        st.tuples(st.just("complete"), st.integers(0, 20), st.sampled_from(["ok", "fail", "?"])),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS)
def test_no_local_answer_ever_reaches_another_principal(ops: list[tuple[object, ...]]) -> None:
    """Whatever the interleaving, a Duplicate or Reject goes only to the one principal whose
    batches may be in the broker's state, and a batch waits only for its own principal's."""
    engine = IdempotenceEngine()
    pending: dict[int, Principal] = {}  # ticket -> principal, in admission order
    writers: set[Principal] = set()  # principals of batches that may be in the broker's state
    offset = 0
    for op in ops:
        if op[0] == "admit":
            _, principal, seq, coalesce = op
            assert principal is None or isinstance(principal, str)
            assert isinstance(seq, int)
            assert isinstance(coalesce, bool)
            decision = engine.admit(TP, batch(seq), NOW, coalesce=coalesce, principal=principal)
            if isinstance(decision, Forward):
                pending[decision.ticket] = principal
            elif isinstance(decision, AwaitInflight):
                assert same_principal(principal, pending[decision.ticket])
            else:
                assert isinstance(decision, Duplicate | Reject)
                assert principal != UNKNOWN_PRINCIPAL
                assert writers == {principal}, (decision, principal, writers)
        elif pending:
            _, pick, kind = op
            assert isinstance(pick, int)
            ticket = list(pending)[pick % len(pending)]
            principal = pending.pop(ticket)
            if kind == "ok":
                offset += 1
                engine.complete(ticket, Success(offset, -1, 0), NOW)
                writers.add(principal)
            elif kind == "fail":
                engine.complete(ticket, Failure(TOPIC_AUTHORIZATION_FAILED), NOW)
            else:
                engine.complete(ticket, Unknown(), NOW)
                writers.add(principal)
        if engine.entries == 0:
            writers.clear()  # forgotten (a conflict): the next write starts afresh


# -- stamp mode ---------------------------------------------------------------------------------


def test_stamping_keys_keep_principals_apart() -> None:
    assert client_key(None, 1, "app") == "app", "without authentication: as before"
    assert client_key("alice", 1, "app") != client_key("bob", 1, "app")
    assert client_key("alice", 1, "app") == client_key("alice", 2, "app")
    assert client_key(UNKNOWN_PRINCIPAL, 1, "app") != client_key(UNKNOWN_PRINCIPAL, 2, "app")
    for key in (client_key(p, 3, "app") for p in (None, "alice", UNKNOWN_PRINCIPAL)):
        assert client_id_of(key) == "app"


def test_two_principals_never_share_a_stamping_producer_id() -> None:
    stamper = Stamper()
    alice, bob = client_key("alice", 1, "app"), client_key("bob", 2, "app")
    stamper.granted(alice, 11)
    assert stamper.producer_id(alice) == 11
    assert stamper.producer_id(bob) is None, "bob asks the broker for a producer id of his own"
    stamper.granted(bob, 12)
    assert (stamper.producer_id(alice), stamper.producer_id(bob)) == (11, 12)
