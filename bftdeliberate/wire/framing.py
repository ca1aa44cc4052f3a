"""Length-prefixed frames, sans-IO (DESIGN.md section 4): bytes in, payloads out.

A frame is a ``FRAME_HEADER_SIZE``-byte big-endian unsigned length followed by that many
payload bytes. Lengths of 0 or above the maximum frame size are refused from the header
alone, before any of the payload is waited for.

Memory bound of ``FrameDecoder``: callers drain every complete frame (``next_frame`` until
``None``, or ``frames()``) before feeding more data; ``receive_data`` enforces this. After
draining, the decoder holds at most one incomplete frame, fewer than
``FRAME_HEADER_SIZE + max_frame_size`` bytes, so after ``receive_data(chunk)`` it holds
fewer than ``FRAME_HEADER_SIZE + max_frame_size + len(chunk)`` bytes. The transport bounds
``len(chunk)`` (e.g. trio's ``receive_some(max_bytes)``).
"""

from __future__ import annotations

import struct

from bftdeliberate.errors import DecodeError, FrameTooLarge, LocalError
from bftdeliberate.wire.limits import FRAME_HEADER_SIZE, MAX_FRAME_SIZE

__all__ = ["FrameDecoder", "encode_frame"]

_HEADER = struct.Struct(">I")
assert _HEADER.size == FRAME_HEADER_SIZE, "the header format must match FRAME_HEADER_SIZE"

#: Largest length the header can express.
_LARGEST_HEADER_LENGTH = 2 ** (8 * FRAME_HEADER_SIZE) - 1


def _require_valid_max_frame_size(max_frame_size: int) -> None:
    if not 1 <= max_frame_size <= _LARGEST_HEADER_LENGTH:
        raise LocalError(f"max_frame_size must be within 1..{_LARGEST_HEADER_LENGTH}")


def encode_frame(payload: bytes, *, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """Prefix ``payload`` with its length. Empty or oversized payloads are a LocalError."""
    _require_valid_max_frame_size(max_frame_size)
    size = len(payload)
    if size == 0:
        raise LocalError("cannot frame an empty payload")
    if size > max_frame_size:
        raise LocalError(f"payload of {size} bytes exceeds the frame limit of {max_frame_size}")
    return _HEADER.pack(size) + payload


class FrameDecoder:
    """Turn a byte stream from one peer into frame payloads.

    Any framing error (a length of 0 or above ``max_frame_size``) is raised by the
    ``receive_data`` call that completes the offending header. The decoder is then broken:
    its buffer is dropped (including complete frames that arrived in the same chunk: the
    peer is faulty and its connection should be closed) and every later call raises
    DecodeError.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        _require_valid_max_frame_size(max_frame_size)
        self._max_frame_size = max_frame_size
        self._buffer = bytearray()
        # Offset of the first unconsumed byte: frames are consumed by moving it, and the
        # consumed prefix is dropped once per receive_data, so draining many small frames
        # from one big chunk costs O(chunk), not O(frames * chunk).
        self._read_offset = 0
        # Offset of the first header not yet known to be followed by its whole payload.
        # Everything in [_read_offset, _scan_offset) is complete frames with checked headers.
        self._scan_offset = 0
        self._failed = False

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet returned as frames (see the module's memory bound)."""
        return len(self._buffer) - self._read_offset

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer ``data`` and check every frame header it completes."""
        self._require_usable()
        if self._read_offset < self._scan_offset:
            raise LocalError("drain the complete frames before receiving more data")
        if not data:
            return
        if self._read_offset:
            del self._buffer[: self._read_offset]
            self._scan_offset -= self._read_offset
            self._read_offset = 0
        self._buffer += data
        self._scan_headers()

    def next_frame(self) -> bytes | None:
        """Return the next complete payload, or None if more bytes are needed."""
        self._require_usable()
        if self._read_offset == self._scan_offset:
            return None
        (length,) = _HEADER.unpack_from(self._buffer, self._read_offset)
        start = self._read_offset + FRAME_HEADER_SIZE
        payload = bytes(self._buffer[start : start + length])
        self._read_offset = start + length
        if self._read_offset == len(self._buffer):  # all consumed: free the memory now
            self._buffer.clear()
            self._read_offset = self._scan_offset = 0
        return payload

    def frames(self) -> list[bytes]:
        """Return every complete payload (possibly none)."""
        payloads = []
        while (payload := self.next_frame()) is not None:
            payloads.append(payload)
        return payloads

    def _scan_headers(self) -> None:
        buffer_end = len(self._buffer)
        scan = self._scan_offset
        while scan + FRAME_HEADER_SIZE <= buffer_end:
            (length,) = _HEADER.unpack_from(self._buffer, scan)
            if length == 0:
                self._fail()
                raise DecodeError("frame header announces an empty frame")
            if length > self._max_frame_size:
                self._fail()
                raise FrameTooLarge(
                    f"frame header announces {length} bytes, limit is {self._max_frame_size}"
                )
            frame_end = scan + FRAME_HEADER_SIZE + length
            if frame_end > buffer_end:
                break  # header checked; the payload is still arriving
            scan = frame_end
        self._scan_offset = scan

    def _fail(self) -> None:
        self._failed = True
        self._buffer = bytearray()
        self._read_offset = self._scan_offset = 0

    def _require_usable(self) -> None:
        if self._failed:
            raise DecodeError("decoder failed earlier")
