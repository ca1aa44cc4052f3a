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

Compaction (:meth:`RecordLog.rewrite`): the log's content is replaced atomically by a
fresh log -- new random ``file_id``, new chain -- holding exactly the given payloads. It is
written to ``<path>.compact`` in the same directory, fsynced, flocked, ``os.replace``-d over
the path, and the directory is fsynced; only then does the object switch to the new file
(and release the old one). A crash leaves either the old or the new log at the path, each
complete and verifiable; a leftover ``<path>.compact`` is deleted by the next
:meth:`RecordLog.open` (after it holds the lock, so never under a live writer). Because the
inode behind the path changes, ``open`` re-checks after locking that the file it locked is
still the one at the path (else it retries): a writer racing a rewrite cannot lock the
replaced, unlinked file. :class:`ReplicaDisk` decides *when* to compact (at a new stable
checkpoint's ``state`` record, see its docstring) and *what* to keep
(:func:`~bftdeliberate.pbft.effects.needed_after_checkpoint`).

Limits: payloads up to :data:`MAX_RECORD_SIZE`. Recovered and appended payloads are kept in
memory (the log is compacted at checkpoints, so this is bounded by the log window). A failed
write or fsync -- in :meth:`RecordLog.sync` or :meth:`RecordLog.rewrite` -- poisons the log
(no retry after a failed fsync -- the kernel may have dropped the dirty pages); it must be
reopened, which re-verifies what actually reached the disk.

Pure stdlib, no threads, no trio. An advisory ``flock`` keeps a second process (or a second
``RecordLog`` in this one) from writing the same file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
from collections.abc import Iterable, Iterator
from typing import Protocol, Self, runtime_checkable

from bftdeliberate.errors import ConfigError, DecodeError, LocalError
from bftdeliberate.pbft.effects import (
    Persist,
    decode_persist,
    encode_persist,
    needed_after_checkpoint,
)

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

#: Suffix of the temp file a rewrite (compaction) builds next to the log before renaming it.
COMPACT_SUFFIX = ".compact"
#: How often ``open`` retries when the file it locked was replaced meanwhile by a concurrent
#: rewrite (each retry means another writer is live, so the next attempt is refused anyway).
OPEN_RETRIES = 3
#: ReplicaDisk compacts only logs at least this big: below it, rewriting costs more (fsyncs,
#: a rename) than the disk space it frees.
COMPACTION_MIN_BYTES = 1024 * 1024

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


def _new_header() -> bytes:
    fixed = _HEADER_FIXED.pack(MAGIC, FORMAT_VERSION, 0, os.urandom(FILE_ID_SIZE))
    return fixed + _header_hash(fixed)


def _check_payload(payload: object) -> bytes:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise LocalError(f"record payload must be bytes, not {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) > MAX_RECORD_SIZE:
        raise LocalError(
            f"record of {len(payload)} bytes exceeds MAX_RECORD_SIZE ({MAX_RECORD_SIZE})"
        )
    return payload


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


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
        # Written to the file but maybe not yet durable (group commit: see write_buffered).
        self._written_size = durable_size
        self._written_count = len(payloads)
        self._pending = bytearray()
        self._broken: str | None = None
        #: Bytes of torn or corrupt tail cut off when this log was opened (0 if clean).
        self.recovered_truncated_bytes = truncated
        #: fsync calls made through this object (sync, rewrite's file and directory, and the
        #: truncation of a torn tail on open).
        self.fsyncs = 1 if truncated else 0

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RecordLog:
        """Open (creating with mode 0600 if missing) and verify the log at ``path``."""
        path = os.fspath(path)
        for _ in range(OPEN_RETRIES):
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
                    raise ConfigError(
                        f"{path}: record log is in use by another writer") from None
                if not cls._still_at(path, fd):
                    os.close(fd)  # a rewrite replaced the file between open and flock
                    continue
                try:
                    os.unlink(path + COMPACT_SUFFIX)  # a crash during a rewrite left it
                except FileNotFoundError:
                    pass
                return cls._recover(path, fd)
            except BaseException:
                os.close(fd)
                raise
        raise ConfigError(f"{path}: record log is in use by another writer (being rewritten)")

    @staticmethod
    def _still_at(path: str, fd: int) -> bool:
        """Whether ``fd`` is still the file at ``path`` (not replaced by a rewrite)."""
        try:
            at_path = os.stat(path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (mine.st_dev, mine.st_ino) == (at_path.st_dev, at_path.st_ino)

    @staticmethod
    def _create(path: str) -> None:
        """Write a fresh header atomically: temp file, fsync, link into place, fsync dir."""
        header = _new_header()
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
        payload = _check_payload(payload)
        length_bytes = _LENGTH.pack(len(payload))
        digest = _chain(self._tail_hash, length_bytes, payload)
        self._pending += length_bytes
        self._pending += payload
        self._pending += digest
        self._tail_hash = digest
        self._payloads.append(payload)

    def sync(self) -> None:
        """Write every buffered record and fsync: the batched durability point."""
        position = self.write_buffered()
        if position[1] == self._durable_size:
            return
        self.fsync_written()
        self.mark_durable(position)

    def write_buffered(self) -> tuple[int, int]:
        """Write the buffered records to the file without fsync, and return the position
        (records, bytes) that a following :meth:`fsync_written` makes durable.

        Group commit splits :meth:`sync` in three: ``write_buffered`` and
        :meth:`mark_durable` on the owner's thread, :meth:`fsync_written` on a worker
        thread meanwhile -- during which the owner may only :meth:`append` (no rewrite,
        close or other write)."""
        self._check_usable()
        assert self._fd is not None
        if self._pending:
            try:
                _write_all(self._fd, bytes(self._pending))
            except OSError as exc:
                self._broken = f"write: {exc.strerror or exc}"
                raise LocalError(f"{self.path}: write failed: {exc.strerror or exc}") from exc
            self._written_size += len(self._pending)
            self._pending.clear()
        self._written_count = len(self._payloads)
        return self._written_count, self._written_size

    def fsync_written(self) -> None:
        """fsync what :meth:`write_buffered` wrote (callable from a worker thread). After a
        failure the log is poisoned: the kernel may have dropped the dirty pages."""
        fd = self._fd
        assert fd is not None
        try:
            os.fsync(fd)
        except OSError as exc:
            self._broken = f"fsync: {exc.strerror or exc}"
            raise LocalError(f"{self.path}: fsync failed: {exc.strerror or exc}") from exc

    def mark_durable(self, position: tuple[int, int]) -> None:
        """Record that everything up to ``position`` (from write_buffered) is durable."""
        count, size = position
        self._durable_count = max(self._durable_count, count)
        self._durable_size = max(self._durable_size, size)
        self.fsyncs += 1

    def rewrite(self, payloads: Iterable[bytes]) -> None:
        """Atomically replace the whole log (durable and buffered records) with exactly
        ``payloads``, as a fresh log with a new ``file_id`` and chain (compaction; see the
        module docstring). Durable when it returns; a failure poisons the log."""
        self._check_usable()
        assert self._fd is not None
        items = [_check_payload(p) for p in payloads]
        header = _new_header()
        prev = header[_HEADER_FIXED.size :]
        out = bytearray(header)
        for payload in items:
            length_bytes = _LENGTH.pack(len(payload))
            prev = _chain(prev, length_bytes, payload)
            out += length_bytes
            out += payload
            out += prev
        tmp = self.path + COMPACT_SUFFIX
        new_fd: int | None = None
        replaced = False
        try:
            try:
                os.unlink(tmp)  # a leftover of an earlier failed rewrite
            except FileNotFoundError:
                pass
            new_fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL
                             | os.O_CLOEXEC, 0o600)
            # Lock before it appears at the path: there is never an unlocked log there.
            fcntl.flock(new_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(new_fd, bytes(out))
            os.fsync(new_fd)
            self.fsyncs += 1
            os.replace(tmp, self.path)
            replaced = True
            _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
            self.fsyncs += 1
        except OSError as exc:
            self._broken = f"rewrite: {exc.strerror or exc}"
            if not replaced and new_fd is not None:
                os.close(new_fd)
                new_fd = None
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            if new_fd is not None:  # the path holds the new file: hold its lock
                self._adopt(new_fd, items, prev, len(out))
            raise LocalError(f"{self.path}: rewrite failed: {exc.strerror or exc}") from exc
        assert new_fd is not None
        self._adopt(new_fd, items, prev, len(out))

    def _adopt(self, fd: int, payloads: list[bytes], tail_hash: bytes, size: int) -> None:
        """Switch to the rewritten file ``fd`` (already locked) and release the old one."""
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)
        self._payloads = payloads
        self._tail_hash = tail_hash
        self._durable_size = self._written_size = size
        self._durable_count = self._written_count = len(payloads)
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

    def __enter__(self) -> Self:
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
        return self._written_size + len(self._pending)

    @property
    def synced_size(self) -> int:
        """File size in bytes known to be durable."""
        return self._durable_size

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __repr__(self) -> str:
        return f"RecordLog({self.path!r}, count={self.count}, size={self.size})"


class ReplicaDisk:
    """The production storage of a replica's ``Persist`` effects over a :class:`RecordLog`
    (the real counterpart of the simulator's ``SimDisk``).

    The driver calls :meth:`append` for every ``Persist`` effect of a protocol step and
    :meth:`sync` once, before it sends anything of that step; :meth:`records` feeds
    ``Replica.restore`` after a restart.

    Compaction policy: a ``state`` record marks a new stable checkpoint; at the next
    :meth:`sync` the records :func:`~bftdeliberate.pbft.effects.needed_after_checkpoint`
    rejects (slots at or below it, older states) are dropped by a
    :meth:`RecordLog.rewrite` that keeps the others in order -- but only if the log is at
    least ``compaction_min_bytes`` (:data:`COMPACTION_MIN_BYTES`) and the bytes dropped are
    at least the bytes kept. That amortises the rewrite: every byte it writes is paid for by
    a byte that was appended once and is dropped once, so compaction at most doubles the
    write volume, while the file stays below about ``max(min, 2 x needed)`` plus one
    checkpoint interval of growth. The decoded records are kept in memory (bounded by the
    log window, like the payloads), so deciding never re-decodes the log.
    """

    def __init__(self, log: RecordLog, records: list[Persist], compaction_min_bytes: int) -> None:
        self._log = log
        self._records = records
        #: Size of each record in the file (framing included), aligned with ``_records``.
        self._sizes = [RECORD_OVERHEAD + len(p) for p in log.records()]
        self._compaction_min_bytes = compaction_min_bytes
        self._stable: int | None = None  # highest checkpoint whose state was appended
        self._compaction_due = False
        self.compactions = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str], *,
             compaction_min_bytes: int = COMPACTION_MIN_BYTES) -> ReplicaDisk:
        """Open (creating if missing) and verify the log at ``path`` and decode its records.
        A record that is not a ``Persist`` we wrote is a :class:`CorruptLogError`."""
        log = RecordLog.open(path)
        try:
            records: list[Persist] = []
            for index, payload in enumerate(log.records()):
                try:
                    record = decode_persist(payload)
                except DecodeError as exc:
                    raise CorruptLogError(
                        f"{log.path}: record {index} is not a persisted protocol record ({exc})"
                    ) from None
                if record.message.type != record.kind:
                    raise CorruptLogError(f"{log.path}: record {index} of kind {record.kind!r}"
                                          f" holds a {record.message.type!r} message")
                records.append(record)
        except BaseException:
            log.close()
            raise
        disk = cls(log, records, compaction_min_bytes)
        disk._stable = max((r.message.message.seq for r in records  # type: ignore[union-attr]
                            if r.kind == "state"), default=None)
        return disk

    @property
    def path(self) -> str:
        return self._log.path

    def records(self) -> list[Persist]:
        """Every record in append order (recovered, synced and buffered), for ``restore``."""
        return list(self._records)

    def append(self, record: Persist) -> None:
        """Buffer one ``Persist``; durable after the next :meth:`sync`."""
        payload = encode_persist(record)
        self._log.append(payload)
        self._records.append(record)
        self._sizes.append(RECORD_OVERHEAD + len(payload))
        if record.kind == "state":
            seq = record.message.message.seq  # type: ignore[union-attr]
            if self._stable is None or seq > self._stable:
                self._stable = seq
                self._compaction_due = True

    def sync(self) -> None:
        """One fsync for everything appended since the last sync; then compact if a new
        stable checkpoint makes it worth it (see the class docstring)."""
        self._log.sync()
        self._after_sync()

    def begin_sync(self) -> tuple[int, int]:
        """Group commit, part 1 (owner's thread): write what was appended; returns the
        position :meth:`fsync` then makes durable."""
        return self._log.write_buffered()

    def fsync(self) -> None:
        """Group commit, part 2 (a worker thread may run it; the owner only appends
        meanwhile)."""
        self._log.fsync_written()

    def end_sync(self, position: tuple[int, int]) -> None:
        """Group commit, part 3 (owner's thread): ``position`` is durable; compact if due."""
        self._log.mark_durable(position)
        self._after_sync()

    def _after_sync(self) -> None:
        if self._compaction_due:
            self._compaction_due = False
            self._maybe_compact()

    def _maybe_compact(self) -> None:
        stable = self._stable
        assert stable is not None
        size = self._log.size
        if size < self._compaction_min_bytes:
            return
        keep = [needed_after_checkpoint(r, stable) for r in self._records]
        dropped = sum(n for n, k in zip(self._sizes, keep) if not k)
        if dropped < size - dropped:  # kept bytes (header included) would cost more
            return
        payloads = self._log.records()
        self._log.rewrite(p for p, k in zip(payloads, keep) if k)
        self._records = [r for r, k in zip(self._records, keep) if k]
        self._sizes = [n for n, k in zip(self._sizes, keep) if k]
        self.compactions += 1

    def close(self) -> None:
        """Sync what is buffered (unless the log failed) and release the file. Idempotent."""
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def fsyncs(self) -> int:
        """fsync calls made so far (each sync with data, two per compaction)."""
        return self._log.fsyncs

    @property
    def size_bytes(self) -> int:
        """Log file size once buffered records are synced (header included)."""
        return self._log.size

    @property
    def records_count(self) -> int:
        return len(self._records)

    @property
    def closed(self) -> bool:
        return self._log.closed

    def __repr__(self) -> str:
        return (f"ReplicaDisk({self.path!r}, records={self.records_count},"
                f" size={self.size_bytes}, compactions={self.compactions})")
