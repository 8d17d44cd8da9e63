"""Target ``produce``: the zero-copy Produce request view, its rebuilds and the proxy's answers.

Input: byte 0 chooses the version (itself when it is one of v3-v13, which is how the
seeds are written), the rest is a Produce request body with its header. The body goes
through ``ProduceRequestView`` as the produce handler reads it; when it parses:

* every byte range lies inside the body, in order;
* ``rebuild`` of a subset of partitions (the request the proxy forwards when it answers
  the others itself, and a late retry with the proxy's own correlation id) parses again
  into exactly those partitions, with the same records;
* a response merged from the proxy's own partition answers (``encode_partition_answer``
  and ``encode_response``, as ``ProduceHandler._merge`` builds it) parses with
  ``ProduceResponseView`` into the request's partitions, in order.
"""

from __future__ import annotations

import zlib

from proxy.wire.produce import (
    FIRST_FLEXIBLE,
    MAX_VERSION,
    MIN_VERSION,
    ProduceRequestView,
    ProduceResponseView,
    ResponseTopicEntries,
    encode_partition_answer,
    encode_response,
)
from tests.fuzz._common import must_not_raise

_MESSAGES = (None, "", "Duplicate batch", "réponse ✓")


def version_of(selector: int) -> int:
    if MIN_VERSION <= selector <= MAX_VERSION:
        return selector
    return MIN_VERSION + selector % (MAX_VERSION - MIN_VERSION + 1)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    version = version_of(data[0])
    body = data[1:]
    view = must_not_raise("ProduceRequestView", ProduceRequestView, body, version)
    if view is None:
        return
    parts = list(view.partitions())
    previous_end = view.topics_start
    for part in parts:
        assert previous_end <= part.start < part.end <= view.tail_start <= len(body), part
        if part.records_start >= 0:
            assert part.start < part.records_start <= part.records_end <= part.end, part
            assert bytes(view.records(part)) == body[part.records_start : part.records_end]
        else:
            assert len(view.records(part)) == 0
        previous_end = part.end

    # The forwarded subset: chosen by the input, so a failure replays.
    mask = zlib.crc32(data)
    keep = [p for i, p in enumerate(parts) if mask >> (i % 32) & 1]
    for correlation_id in (None, -5):
        rebuilt = view.rebuild(keep, correlation_id=correlation_id)
        again = ProduceRequestView(rebuilt, version)  # must parse: the broker gets these bytes
        assert again.acks == view.acks
        assert again.transactional_id == view.transactional_id
        got = [(p.topic, p.partition, bytes(again.records(p))) for p in again.partitions()]
        want = [(p.topic, p.partition, bytes(view.records(p))) for p in keep]
        assert got == want, (got, want)
        if correlation_id is not None:
            assert again.correlation_id == correlation_id

    # The client's answer, merged from the proxy's own partition answers.
    topics = []
    for i, topic in enumerate(view.topics):
        entries = [
            encode_partition_answer(
                version,
                p.partition,
                error_code=(mask + j) % 120 - 1,
                base_offset=j - 1,
                error_message=_MESSAGES[(i + j) % len(_MESSAGES)],
            )
            for j, p in enumerate(topic.partitions)
        ]
        tags = b"\x00" if version >= FIRST_FLEXIBLE else b""
        topics.append(ResponseTopicEntries(body[topic.key_start : topic.key_end], entries, tags))
    response = encode_response(version, view.correlation_id, topics, throttle_time_ms=0)
    answer = ProduceResponseView(response, version)
    assert answer.correlation_id == view.correlation_id
    assert [(r.topic, r.partition) for r in answer.partitions()] == [
        (p.topic, p.partition) for p in parts
    ]
