"""Target ``frames``: a client's byte stream through everything the proxy reads of requests.

The input is what a client sends: length-prefixed request frames. It is fed to a
``FrameDecoder`` in chunks whose sizes (and the decoder's maximum frame size) are
derived from the input itself, so a failing input replays identically. Each frame then
goes through the request header peek, ``request_header_length`` and, for Produce, the
zero-copy ``ProduceRequestView`` and the batch header of every partition's records, as
the produce handler reads them (the proxy decodes no other request body).
"""

from __future__ import annotations

import random
import zlib

from proxy.errors import ProxyError
from proxy.wire.apis import ApiKey
from proxy.wire.batch import passes_broker_checks, single_batch_header
from proxy.wire.frames import DEFAULT_MAX_FRAME_BYTES, FrameDecoder
from proxy.wire.headers import peek_request_header, request_header_length
from proxy.wire.produce import MAX_VERSION, MIN_VERSION, ProduceRequestView
from tests.fuzz._common import must_not_raise

_SMALL_LIMITS = (1, 8, 64, 4096)


def _chunks(data: bytes) -> tuple[int, list[bytes]]:
    """A maximum frame size and a split of data into chunks, both chosen by data's CRC."""
    rng = random.Random(zlib.crc32(data))
    limit = rng.choice(_SMALL_LIMITS) if rng.random() < 0.125 else DEFAULT_MAX_FRAME_BYTES
    chunks = []
    pos = 0
    while pos < len(data):
        size = rng.choice((1, 2, 3, 4, 5, 7, 64, 1024, len(data)))
        chunks.append(data[pos : pos + size])
        pos += size
    return limit, chunks


def produce_request(version: int, body: bytes) -> None:
    """What ProduceHandler.request reads: the zero-copy view and each partition's batch."""
    if not MIN_VERSION <= version <= MAX_VERSION:
        return
    view = must_not_raise("ProduceRequestView", ProduceRequestView, body, version)
    if view is None:
        return
    for part in view.partitions():
        records = view.records(part)
        header = single_batch_header(records)
        if header is not None:
            passes_broker_checks(records)


def check_request(body: bytes) -> None:
    """Everything the proxy may read of one request frame's body."""
    header = must_not_raise("peek_request_header", peek_request_header, body)
    if header is None:
        return
    for flexible in (False, True):
        length = must_not_raise("request_header_length", request_header_length, body, flexible)
        assert length is None or 10 <= length <= len(body), (length, len(body))
    if header.api_key == ApiKey.PRODUCE:
        produce_request(header.api_version, body)


def test_one_input(data: bytes) -> None:
    limit, chunks = _chunks(data)
    decoder = FrameDecoder(limit)
    try:
        for chunk in chunks:
            for body in decoder.feed(chunk):
                assert len(body) <= limit, (len(body), limit)
                check_request(body)
            # The decoder holds at most what it was given: never what a prefix claims.
            assert decoder.buffered <= len(data), (decoder.buffered, len(data))
        decoder.eof()
    except ProxyError:
        return
