"""Durable, append-only record log: the production storage behind ``Persist`` (and later the
commit layer's WAL, DESIGN.md section 6).

A replica persists every message it signs before the message leaves the process (DESIGN.md
section 3). The driver appends one record per ``Persist`` effect and calls :meth:`sync` once
per protocol step, before it performs the ``Send``/``Broadcast`` effects of that step (the
batched fsync point). In simulation ``simulator.world.SimDisk`` plays the same role (lossy:
a crash drops what was not synced); both satisfy the :class:`Storage` protocol's shape.

On-disk format (all integers big-endian)::

    header  = MAGIC (8) || FORMAT_VERSION u16 || flags u16 (0) || file_id (16 random bytes)
              || header_hash (32)                        -- HEADER_SIZE = 60 bytes
    record  = length u32 || payload (length bytes) || hash (32)
    hash_i  = BLAKE2b-256[person=RECORD_PERSON](hash_{i-1} || length || payload)
    hash_-1 = header_hash = BLAKE2b-256[person=HEADER_PERSON](magic..file_id)  (genesis)

The chain starts from a genesis bound to the header and its random ``file_id``, so a torn
write, a truncated tail, a flipped bit, or a record spliced in from another log (even one
with identical contents) fails verification.

Recovery policy (decided here, checked on every :meth:`RecordLog.open`):

* A damaged **header** (short, wrong magic, unknown version, bad header hash) is a
  :class:`CorruptLogError` -- the file is not ours or is broken; nothing is truncated.
* A **torn tail** is normal after a crash: the first record that fails verification, and
  everything after it, is cut off (``ftruncate`` + ``fsync``) and the number of bytes
  dropped is reported in :attr:`RecordLog.recovered_truncated_bytes`. Only unsynced data
  can be lost this way, because a completed :meth:`RecordLog.sync` is never torn.
* **Damage in the middle** is not normal (bit rot, a bad splice, an operator edit) and is
  refused with a one-line :class:`CorruptLogError` naming the file and offset, because
  truncating would silently forget records that were synced -- for a replica, messages it
  signed. "Middle" means there is evidence of valid data after the bad record: walking on
  from the bad record by declared lengths, some record's hash chains to its predecessor's
  stored (or recomputed) hash; or a single-bit repair of the bad record's length field
  makes it verify and bytes follow it. Garbage or zeros after a crash produce no such
  evidence (a chain link by chance is a 2^-256 event).

Limits: payloads up to :data:`MAX_RECORD_SIZE`. Recovered and appended payloads are kept in
memory (the log is expected to be compacted at checkpoints). A failed write or fsync poisons
the log (no retry after a failed fsync -- the kernel may have dropped the dirty pages); it
must be reopened, which re-verifies what actually reached the disk.

Pure stdlib, no threads, no trio. An advisory ``flock`` keeps a second process (or a second
``RecordLog`` in this one) from writing the same file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from bftdeliberate.errors import ConfigError, LocalError

#: First bytes of every record log file.
MAGIC = b"BFTDRLOG"
#: On-disk format version written in the header; any other version is refused.
FORMAT_VERSION = 1
#: Size of the per-file random identifier bound into the genesis hash.
FILE_ID_SIZE = 16
#: BLAKE2b digest size used for the header hash and every chained record hash.
HASH_SIZE = 32
#: Record length prefix (u32 big-endian).
LENGTH_SIZE = 4
#: Largest payload of one record (checked on append and from the length prefix on recovery).
MAX_RECORD_SIZE = 8 * 1024 * 1024
#: Per-record overhead: length prefix plus chained hash.
RECORD_OVERHEAD = LENGTH_SIZE + HASH_SIZE
#: BLAKE2b personalisation strings (domain separation of header and record hashes).
HEADER_PERSON = b"bftd.rlog.head"
RECORD_PERSON = b"bftd.rlog.rec"

_HEADER_FIXED = struct.Struct(">8sHH16s")
#: Total header size: magic, version, flags, file id, header hash.
HEADER_SIZE = _HEADER_FIXED.size + HASH_SIZE
_LENGTH = struct.Struct(">I")


class CorruptLogError(ConfigError):
    """A record log whose header is damaged or whose middle (not its tail) is damaged."""


@runtime_checkable
class Storage(Protocol):
    """Where a replica keeps what it signed. ``append`` buffers, ``sync`` makes everything
    appended so far durable (called once per step, before sending), ``records`` returns the
    payloads in append order. :class:`RecordLog` is the real implementation; the simulator's
    ``SimDisk`` plays the same role in simulation (holding ``Persist`` records, not bytes).
    """

    def append(self, payload: bytes) -> None: ...

    def sync(self) -> None: ...

    def records(self) -> list[bytes]: ...


def _header_hash(fixed: bytes) -> bytes:
    return hashlib.blake2b(fixed, digest_size=HASH_SIZE, person=HEADER_PERSON).digest()


def _chain(prev: bytes, length_bytes: bytes, payload: bytes | memoryview) -> bytes:
    h = hashlib.blake2b(digest_size=HASH_SIZE, person=RECORD_PERSON)
    h.update(prev)
    h.update(length_bytes)
    h.update(payload)
    return h.digest()


def _parse(data: bytes, pos: int) -> tuple[int, bytes, bytes, int] | None:
    """The record at ``pos`` as (length, payload, stored hash, next offset), or None if its
    length prefix is incomplete, over the limit, or its extent runs past the end."""
    end = len(data)
    if end - pos < LENGTH_SIZE:
        return None
    (length,) = _LENGTH.unpack_from(data, pos)
    if length > MAX_RECORD_SIZE:
        return None
    nxt = pos + RECORD_OVERHEAD + length
    if nxt > end:
        return None
    body = pos + LENGTH_SIZE
    return length, data[body : body + length], data[body + length : nxt], nxt


def _links_follow(data: bytes, pos: int, prevs: set[bytes]) -> bool:
    """Walk records from ``pos`` by declared lengths; True if any one chains to a candidate
    hash of its predecessor (evidence of valid records after a damaged one)."""
    while True:
        rec = _parse(data, pos)
        if rec is None:
            return False
        length, payload, stored, nxt = rec
        length_bytes = _LENGTH.pack(length)
        if any(_chain(p, length_bytes, payload) == stored for p in prevs):
            return True
        prevs = {stored}
        pos = nxt


def _damage_in_middle(data: bytes, pos: int, prev: bytes) -> bool:
    """Decide whether the bad record at ``pos`` is mid-file damage (True) or a torn tail."""
    end = len(data)
    rec = _parse(data, pos)
    if rec is not None:
        length, payload, stored, nxt = rec
        computed = _chain(prev, _LENGTH.pack(length), payload)
        if _links_follow(data, nxt, {stored, computed}):
            return True
    if end - pos >= LENGTH_SIZE:
        (declared,) = _LENGTH.unpack_from(data, pos)
        for bit in range(8 * LENGTH_SIZE):
            length = declared ^ (1 << bit)
            nxt = pos + RECORD_OVERHEAD + length
            if length > MAX_RECORD_SIZE or nxt > end:
                continue
            body = pos + LENGTH_SIZE
            if _chain(prev, _LENGTH.pack(length), data[body : body + length]) == data[
                body + length : nxt
            ]:
                return nxt < end
    return False


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RecordLog:
    """An append-only, hash-chained, fsync-batched record log (see the module docstring).

    Use :meth:`open`; ``append`` buffers in memory, ``sync`` writes and fsyncs. ``records()``
    and iteration return every payload, recovered and appended (synced or not) in order.
    """

    def __init__(self, path: str, fd: int, payloads: list[bytes], tail_hash: bytes,
                 durable_size: int, truncated: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self._payloads = payloads
        self._tail_hash = tail_hash
        self._durable_size = durable_size
        self._durable_count = len(payloads)
        self._pending = bytearray()
        self._broken: str | None = None
        #: Bytes of torn or corrupt tail cut off when this log was opened (0 if clean).
        self.recovered_truncated_bytes = truncated

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RecordLog:
        """Open (creating with mode 0600 if missing) and verify the log at ``path``."""
        path = os.fspath(path)
        if not os.path.exists(path):
            cls._create(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot open record log: {exc.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise ConfigError(f"{path}: record log is in use by another writer") from None
            return cls._recover(path, fd)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _create(path: str) -> None:
        """Write a fresh header atomically: temp file, fsync, link into place, fsync dir."""
        fixed = _HEADER_FIXED.pack(MAGIC, FORMAT_VERSION, 0, os.urandom(FILE_ID_SIZE))
        header = fixed + _header_hash(fixed)
        tmp = f"{path}.tmp"
        try:
            os.unlink(tmp)  # a leftover of a crash during an earlier creation
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, header)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never clobbers a log that appeared meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))

    @classmethod
    def _recover(cls, path: str, fd: int) -> RecordLog:
        with open(fd, "rb", closefd=False) as f:
            f.seek(0)
            data = f.read()
        if len(data) < HEADER_SIZE:
            raise CorruptLogError(f"{path}: not a record log (header is {len(data)} bytes)")
        magic, version, flags, _file_id = _HEADER_FIXED.unpack_from(data, 0)
        if magic != MAGIC:
            raise CorruptLogError(f"{path}: not a record log (bad magic {magic!r})")
        if version != FORMAT_VERSION:
            raise CorruptLogError(f"{path}: unsupported record log format version {version}")
        fixed = data[: _HEADER_FIXED.size]
        if flags != 0 or _header_hash(fixed) != data[_HEADER_FIXED.size : HEADER_SIZE]:
            raise CorruptLogError(f"{path}: record log header is corrupt")

        prev = data[_HEADER_FIXED.size : HEADER_SIZE]
        pos = HEADER_SIZE
        payloads: list[bytes] = []
        while pos < len(data):
            rec = _parse(data, pos)
            if rec is None:
                break
            length, payload, stored, nxt = rec
            if _chain(prev, _LENGTH.pack(length), payload) != stored:
                break
            payloads.append(payload)
            prev = stored
            pos = nxt

        truncated = len(data) - pos
        if truncated:
            if _damage_in_middle(data, pos, prev):
                raise CorruptLogError(
                    f"{path}: record log is damaged at offset {pos} (record {len(payloads)})"
                    " and valid records follow; refusing to truncate"
                )
            os.ftruncate(fd, pos)
            os.fsync(fd)
        return cls(path, fd, payloads, prev, pos, truncated)

    # -- writing ---------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._fd is None:
            raise LocalError(f"{self.path}: record log is closed")
        if self._broken is not None:
            raise LocalError(f"{self.path}: record log failed earlier ({self._broken}); reopen it")

    def append(self, payload: bytes) -> None:
        """Buffer one record; it is durable only after the next :meth:`sync`."""
        self._check_usable()
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise LocalError(f"record payload must be bytes, not {type(payload).__name__}")
        payload = bytes(payload)
        if len(payload) > MAX_RECORD_SIZE:
            raise LocalError(
                f"record of {len(payload)} bytes exceeds MAX_RECORD_SIZE ({MAX_RECORD_SIZE})"
            )
        length_bytes = _LENGTH.pack(len(payload))
        digest = _chain(self._tail_hash, length_bytes, payload)
        self._pending += length_bytes
        self._pending += payload
        self._pending += digest
        self._tail_hash = digest
        self._payloads.append(payload)

    def sync(self) -> None:
        """Write every buffered record and fsync: the batched durability point."""
        self._check_usable()
        if not self._pending:
            return
        assert self._fd is not None
        try:
            view = memoryview(bytes(self._pending))
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError as exc:
            self._broken = f"write/fsync: {exc.strerror or exc}"
            raise LocalError(f"{self.path}: sync failed: {exc.strerror or exc}") from exc
        self._durable_size += len(self._pending)
        self._durable_count = len(self._payloads)
        self._pending.clear()

    def close(self) -> None:
        """Sync what is buffered (unless the log failed) and release the file. Idempotent."""
        if self._fd is None:
            return
        try:
            if self._broken is None:
                self.sync()
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)  # also releases the flock

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def records(self) -> list[bytes]:
        """Every payload in append order: recovered, synced and still-buffered."""
        return list(self._payloads)

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._payloads))

    def __len__(self) -> int:
        return len(self._payloads)

    @property
    def count(self) -> int:
        """Number of records, including buffered ones."""
        return len(self._payloads)

    @property
    def synced_count(self) -> int:
        """Number of records known to be durable."""
        return self._durable_count

    @property
    def size(self) -> int:
        """File size in bytes once buffered records are synced (header included)."""
        return self._durable_size + len(self._pending)

    @property
    def synced_size(self) -> int:
        """File size in bytes known to be durable."""
        return self._durable_size

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __repr__(self) -> str:
        return f"RecordLog({self.path!r}, count={self.count}, size={self.size})"
