"""Target ``batch``: a partition's record set through the v2 batch header reader.

The input is the ``records`` bytes of one partition of a Produce request: read with
``read_batch_header`` (from bytes and from a memoryview, as the zero-copy path will)
and walked with ``count_batches``, and the header's derived fields read the way the
idempotence engine reads them.
"""

from __future__ import annotations

from proxy.wire.batch import HEADER_SIZE, count_batches, read_batch_header
from tests.fuzz._common import must_not_raise


def test_one_input(data: bytes) -> None:
    header = must_not_raise("read_batch_header", read_batch_header, data)
    view = must_not_raise("read_batch_header(memoryview)", read_batch_header, memoryview(data))
    assert header == view, (header, view)
    if header is not None:
        assert len(data) >= HEADER_SIZE
        _ = (header.last_sequence, header.is_transactional, header.is_control)
        _ = header.has_producer_id
    count = must_not_raise("count_batches", count_batches, data)
    assert count is None or 0 <= count <= len(data) // HEADER_SIZE, (count, len(data))
