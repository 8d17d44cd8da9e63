"""FrameDecoder: length-prefixed Kafka frames, bytes in, frame bodies out."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import FrameError, FrameTooLarge, ProxyError, TruncatedFrame
from proxy.wire.frames import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, frame


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def test_frame_prefixes_the_body_with_its_big_endian_size() -> None:
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame(bytearray()) == b"\x00\x00\x00\x00"


def test_single_frame_in_one_read() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(b"hello")) == [b"hello"]
    assert decoder.buffered == 0


def test_empty_frame_body_is_a_frame() -> None:
    assert FrameDecoder().feed(frame(b"")) == [b""]


def test_frame_split_at_every_byte_boundary_is_reassembled() -> None:
    body = bytes(range(37))
    wire = frame(body)
    for cut in range(len(wire) + 1):
        decoder = FrameDecoder()
        first = decoder.feed(wire[:cut])
        assert first == ([body] if cut == len(wire) else [])
        assert decoder.buffered == (0 if cut == len(wire) else cut)
        second = decoder.feed(wire[cut:])
        assert first + second == [body]
        assert decoder.buffered == 0
        decoder.eof()


def test_frame_fed_one_byte_at_a_time_is_reassembled() -> None:
    bodies = [b"first", b"", b"third frame"]
    decoder = FrameDecoder()
    out: list[bytes] = []
    for byte in b"".join(frame(b) for b in bodies):
        out += decoder.feed(bytes([byte]))
    assert out == bodies
    assert decoder.buffered == 0


def test_several_frames_in_one_read_come_out_in_order() -> None:
    bodies = [b"a", b"bb", b"", b"dddd"]
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(frame(b) for b in bodies)) == bodies
    assert decoder.buffered == 0


def test_complete_frames_are_returned_and_a_partial_tail_is_kept() -> None:
    decoder = FrameDecoder()
    wire = frame(b"one") + frame(b"two") + frame(b"three")[:5]
    assert decoder.feed(wire) == [b"one", b"two"]
    assert decoder.buffered == 5
    assert decoder.feed(frame(b"three")[5:]) == [b"three"]


def test_feed_accepts_bytearray_and_memoryview() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(bytearray(frame(b"x"))) == [b"x"]
    assert decoder.feed(memoryview(frame(b"y"))) == [b"y"]


def test_returned_frames_are_immutable_bytes() -> None:
    (body,) = FrameDecoder().feed(frame(b"abc"))
    assert type(body) is bytes


def test_negative_size_raises_frame_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError) as info:
        decoder.feed(struct.pack(">i", -1))
    assert not isinstance(info.value, FrameTooLarge)
    assert info.value.error_code == 42


def test_negative_size_after_a_valid_frame_raises() -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(frame(b"ok") + struct.pack(">i", -(2**31)))


def test_size_equal_to_max_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_bytes=8)
    assert decoder.feed(frame(b"12345678")) == [b"12345678"]


def test_size_above_max_raises_frame_too_large() -> None:
    decoder = FrameDecoder(max_frame_bytes=8)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(frame(b"123456789"))
    assert info.value.error_code == 10
    assert isinstance(info.value, FrameError)


def test_hostile_2gib_prefix_is_rejected_from_the_prefix_alone() -> None:
    decoder = FrameDecoder()
    prefix = struct.pack(">i", 2**31 - 1)
    # Three bytes of the prefix are not enough to judge: nothing raised, nothing allocated.
    assert decoder.feed(prefix[:3]) == []
    assert decoder.buffered == 3
    with pytest.raises(FrameTooLarge):
        decoder.feed(prefix[3:])
    assert decoder.buffered <= 4


def test_hostile_prefix_is_rejected_before_any_body_byte_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    with pytest.raises(FrameTooLarge):
        decoder.feed(struct.pack(">i", 1025))
    assert decoder.buffered == 4


def test_large_but_allowed_prefix_buffers_only_what_was_sent() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(struct.pack(">i", DEFAULT_MAX_FRAME_BYTES) + b"xyz") == []
    assert decoder.buffered == 7


def test_max_frame_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        FrameDecoder(max_frame_bytes=0)


def test_eof_with_nothing_pending_is_clean() -> None:
    decoder = FrameDecoder()
    decoder.feed(frame(b"done"))
    decoder.eof()


@pytest.mark.parametrize("cut", [1, 3, 4, 6])
def test_eof_mid_frame_raises_truncated_frame(cut: int) -> None:
    decoder = FrameDecoder()
    decoder.feed(frame(b"abcdef")[:cut])
    with pytest.raises(TruncatedFrame) as info:
        decoder.eof()
    assert isinstance(info.value, FrameError)
    assert str(cut) in info.value.reason


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=20),
    max_frame=st.integers(min_value=1, max_value=200),
)
def test_random_bytes_in_random_chunks_only_raise_proxy_errors(
    data: bytes, cuts: list[int], max_frame: int
) -> None:
    decoder = FrameDecoder(max_frame_bytes=max_frame)
    try:
        for chunk in _split(data, cuts):
            for body in decoder.feed(chunk):
                assert len(body) <= max_frame
            # At most one unfinished frame is held, never more than the maximum allows.
            assert decoder.buffered < 4 + max_frame
        decoder.eof()
    except ProxyError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=64), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=30),
)
def test_valid_stream_split_randomly_round_trips_exactly(
    bodies: list[bytes], cuts: list[int]
) -> None:
    wire = b"".join(frame(b) for b in bodies)
    decoder = FrameDecoder(max_frame_bytes=64)
    out: list[bytes] = []
    for chunk in _split(wire, cuts):
        out += decoder.feed(chunk)
    assert out == bodies
    assert decoder.buffered == 0
    decoder.eof()
