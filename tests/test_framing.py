"""Sans-IO frame codec: round trips under any chunking, early refusal of bad headers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bftdeliberate.errors import DecodeError, FrameTooLarge, LocalError
from bftdeliberate.wire.framing import FrameDecoder, encode_frame
from bftdeliberate.wire.limits import FRAME_HEADER_SIZE, MAX_FRAME_SIZE

SMALL_MAX = 64
PAYLOADS = [bytes([index % 256]) * (1 + index % SMALL_MAX) for index in range(200)]
STREAM = b"".join(encode_frame(payload, max_frame_size=SMALL_MAX) for payload in PAYLOADS)


def header(length: int) -> bytes:
    return length.to_bytes(FRAME_HEADER_SIZE, "big")


def test_encode_frame_is_big_endian_length_then_payload() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_encode_frame_refuses_empty_and_oversize_payloads() -> None:
    with pytest.raises(LocalError):
        encode_frame(b"")
    with pytest.raises(LocalError):
        encode_frame(b"x" * (SMALL_MAX + 1), max_frame_size=SMALL_MAX)
    assert encode_frame(b"x" * SMALL_MAX, max_frame_size=SMALL_MAX)[FRAME_HEADER_SIZE:] == (
        b"x" * SMALL_MAX
    )


def test_max_frame_size_must_fit_the_header() -> None:
    with pytest.raises(LocalError):
        FrameDecoder(max_frame_size=0)
    with pytest.raises(LocalError):
        FrameDecoder(max_frame_size=2 ** (8 * FRAME_HEADER_SIZE))


def test_many_frames_in_one_chunk() -> None:
    decoder = FrameDecoder(max_frame_size=SMALL_MAX)
    decoder.receive_data(STREAM)
    assert decoder.frames() == PAYLOADS
    assert decoder.buffered_bytes == 0
    assert decoder.next_frame() is None


def test_many_frames_byte_by_byte() -> None:
    decoder = FrameDecoder(max_frame_size=SMALL_MAX)
    received = []
    for offset in range(len(STREAM)):
        decoder.receive_data(STREAM[offset : offset + 1])
        received.extend(decoder.frames())
        assert decoder.buffered_bytes < FRAME_HEADER_SIZE + SMALL_MAX
    assert received == PAYLOADS
    assert decoder.buffered_bytes == 0


def test_next_frame_returns_none_until_the_frame_is_complete() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"hello")
    decoder.receive_data(frame[:-1])
    assert decoder.next_frame() is None
    assert decoder.buffered_bytes == len(frame) - 1
    decoder.receive_data(frame[-1:])
    assert decoder.next_frame() == b"hello"
    assert decoder.next_frame() is None


def test_empty_data_is_a_no_op() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"")
    assert decoder.next_frame() is None


def test_bytearray_and_memoryview_are_accepted() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(bytearray(encode_frame(b"a")))
    assert decoder.frames() == [b"a"]
    decoder.receive_data(memoryview(encode_frame(b"b")))
    assert decoder.frames() == [b"b"]
    assert type(encode_frame(bytearray(b"c"))) is bytes


def test_oversize_header_raises_before_any_payload_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=SMALL_MAX)
    decoder.receive_data(header(SMALL_MAX + 1)[:-1])  # header incomplete: no verdict yet
    assert decoder.buffered_bytes == FRAME_HEADER_SIZE - 1
    with pytest.raises(FrameTooLarge):
        decoder.receive_data(header(SMALL_MAX + 1)[-1:])
    assert decoder.buffered_bytes == 0


def test_default_limit_header_checked_without_payload() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge):
        decoder.receive_data(header(MAX_FRAME_SIZE + 1))
    assert decoder.buffered_bytes == 0


def test_largest_allowed_header_is_accepted_and_waits_for_the_payload() -> None:
    decoder = FrameDecoder(max_frame_size=SMALL_MAX)
    decoder.receive_data(header(SMALL_MAX))
    assert decoder.next_frame() is None
    decoder.receive_data(b"y" * SMALL_MAX)
    assert decoder.next_frame() == b"y" * SMALL_MAX


def test_bad_header_behind_complete_frames_in_the_same_chunk_is_caught() -> None:
    decoder = FrameDecoder(max_frame_size=SMALL_MAX)
    with pytest.raises(FrameTooLarge):
        decoder.receive_data(encode_frame(b"ok") + header(2**32 - 1))


def test_zero_length_frame_is_refused() -> None:
    decoder = FrameDecoder()
    with pytest.raises(DecodeError, match="empty"):
        decoder.receive_data(header(0))


@pytest.mark.parametrize("bad_header", [header(0), header(SMALL_MAX + 1)])
def test_decoder_is_broken_after_an_error(bad_header: bytes) -> None:
    decoder = FrameDecoder(max_frame_size=SMALL_MAX)
    with pytest.raises(DecodeError):
        decoder.receive_data(bad_header)
    for later_call in (
        lambda: decoder.receive_data(encode_frame(b"fine")),
        decoder.next_frame,
        decoder.frames,
    ):
        with pytest.raises(DecodeError, match="decoder failed earlier"):
            later_call()


def test_receiving_before_draining_complete_frames_is_a_caller_bug() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(b"a") + encode_frame(b"b"))
    assert decoder.next_frame() == b"a"
    with pytest.raises(LocalError, match="drain"):
        decoder.receive_data(encode_frame(b"c"))
    assert decoder.next_frame() == b"b"  # the LocalError did not break the decoder
    decoder.receive_data(encode_frame(b"c"))
    assert decoder.frames() == [b"c"]


def test_buffer_is_compacted_after_draining() -> None:
    decoder = FrameDecoder(max_frame_size=SMALL_MAX)
    frame = encode_frame(b"z" * 10, max_frame_size=SMALL_MAX)
    for _ in range(1000):
        decoder.receive_data(frame * 3 + frame[:5])
        assert len(decoder.frames()) == 3
        assert decoder.buffered_bytes == 5
        decoder.receive_data(frame[5:])
        assert decoder.frames() == [b"z" * 10]
        assert decoder.buffered_bytes == 0
    assert len(decoder._buffer) == 0


def test_memory_bound_holds_for_a_partial_max_frame_plus_a_chunk() -> None:
    decoder = FrameDecoder(max_frame_size=SMALL_MAX)
    chunk_size = 7
    stream = b"".join(encode_frame(b"m" * SMALL_MAX, max_frame_size=SMALL_MAX) for _ in range(50))
    for offset in range(0, len(stream), chunk_size):
        decoder.receive_data(stream[offset : offset + chunk_size])
        assert len(decoder._buffer) < FRAME_HEADER_SIZE + SMALL_MAX + chunk_size
        decoder.frames()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=SMALL_MAX), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=30 * (SMALL_MAX + FRAME_HEADER_SIZE))),
)
def test_any_chunking_yields_exactly_the_frames(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(payload, max_frame_size=SMALL_MAX) for payload in payloads)
    boundaries = sorted({cut for cut in cuts if cut < len(stream)} | {0, len(stream)})
    decoder = FrameDecoder(max_frame_size=SMALL_MAX)
    received = []
    for start, end in zip(boundaries, boundaries[1:]):
        chunk = stream[start:end]
        decoder.receive_data(chunk)
        assert decoder.buffered_bytes < FRAME_HEADER_SIZE + SMALL_MAX + len(chunk)
        received.extend(decoder.frames())
    assert received == payloads
    assert decoder.buffered_bytes == 0
