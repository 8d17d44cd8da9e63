"""Target ``batch``: a partition's record set through the v2 batch header reader.

The input is the ``records`` bytes of one partition of a Produce request, read the way
the produce handler reads them: ``single_batch_header`` (then ``passes_broker_checks``
on a batch it would track), ``read_batch_header`` at every batch offset (from bytes and
from a memoryview, as the zero-copy view hands them over). (``count_batches`` left
the proxy with main's produce reshape.)
"""

from __future__ import annotations

from proxy.wire.batch import (
    HEADER_SIZE,
    LOG_OVERHEAD,
    passes_broker_checks,
    read_batch_header,
    single_batch_header,
)
from tests.fuzz._common import must_not_raise


def test_one_input(data: bytes) -> None:
    view = memoryview(data)
    single = must_not_raise("single_batch_header", single_batch_header, view)
    if single is not None:
        assert single.size == len(data), (single.size, len(data))
        _ = (single.last_sequence, single.is_transactional, single.is_control)
        _ = single.has_producer_id
        must_not_raise("passes_broker_checks", passes_broker_checks, view)
    offset = 0
    while offset < len(data):
        header = must_not_raise("read_batch_header", read_batch_header, data, offset)
        again = must_not_raise("read_batch_header(memoryview)", read_batch_header, view, offset)
        assert header == again, (header, again)
        if header is None:
            break
        assert header.size >= HEADER_SIZE
        assert header.batch_length >= HEADER_SIZE - LOG_OVERHEAD
        offset += header.size
