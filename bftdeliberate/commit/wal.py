"""The commit layer's write-ahead log: signed intent/attempt/result/rollback records over a
:class:`~bftdeliberate.storage.RecordLog` (length-prefixed, hash-chained, fsync-batched,
torn tail truncated on open, damage in the middle refused with its offset).

Each record's payload is canonical CBOR ``{"record": BODY, "sig": SIGNATURE}`` where
``BODY`` is the canonical CBOR of ``{"v": 1, "type": TYPE, "commit_id": ..., "signer":
MEMBER_ID, "fields": {...}}`` and the signature is the submitter's Ed25519 signature of
``BODY`` as a ``"wal-record"`` message of the committee (``crypto.signing_payload``:
domain-separated and bound to the committee digest). ``TYPE`` is one of
:data:`RECORD_TYPES`; ``fields`` is free-form CBOR-encodable data that the executor and
``commit_record.json`` define (intent: proposal_id, task_id, view, steps, idempotency keys,
resource targets; attempt: step, attempt, started, retry_reason; result: result,
error_code; rollback: steps, result).

Commit points: :meth:`CommitWal.intent`, :meth:`CommitWal.result` and
:meth:`CommitWal.rollback` fsync before they return (an intent is durable before its effect
runs; a result is durable before it is reported); :meth:`CommitWal.attempt` only buffers
(the next commit point or :meth:`CommitWal.sync` makes it durable). After a crash,
:meth:`CommitWal.open` recovers and :meth:`CommitWal.in_doubt` lists intents without a
result: the submitter asks each handler ``was_applied(key)`` before retrying them.

:func:`verify_wal` audits a WAL file read-only: header, chain and every record's signature
and signer (a committee member with the ``submit`` role). It never truncates or rewrites: a
torn tail is reported (with its offset), not repaired.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Self

from bftdeliberate import storage
from bftdeliberate.committee import Committee
from bftdeliberate.crypto import PrivateKey, Verifier
from bftdeliberate.errors import ConfigError, DecodeError, LocalError
from bftdeliberate.wire import cbor

#: Record types, in the order a commit normally writes them.
RECORD_TYPES = ("intent", "attempt", "result", "rollback")
#: Signature domain of WAL records.
WAL_MESSAGE_TYPE = "wal-record"
WAL_VERSION = 1
#: The role a record's signer must hold in the committee.
SUBMIT_ROLE = "submit"


class CorruptWalError(storage.CorruptLogError):
    """A WAL whose records do not decode as WAL records (one line, with the record index)."""


@dataclass(frozen=True, slots=True)
class WalRecord:
    type: str
    commit_id: str
    signer: int
    fields: dict[str, Any]
    #: The signed bytes (canonical CBOR of the record body) and the signature over them.
    body: bytes = field(repr=False)
    signature: bytes = field(repr=False)


def _encode_body(type_: str, commit_id: str, signer: int, fields: dict[str, Any]) -> bytes:
    if type_ not in RECORD_TYPES:
        raise LocalError(f"unknown WAL record type {type_!r} (known: {', '.join(RECORD_TYPES)})")
    if not isinstance(commit_id, str) or not commit_id:
        raise LocalError("a WAL record needs a non-empty commit_id")
    if not isinstance(fields, dict):
        raise LocalError("WAL record fields must be a dict")
    return cbor.encode({"v": WAL_VERSION, "type": type_, "commit_id": commit_id,
                        "signer": signer, "fields": fields})


def decode_record(payload: bytes) -> WalRecord:
    """Parse one WAL payload; :class:`DecodeError` (one line) if it is not one."""
    outer = cbor.decode(payload, max_size=storage.MAX_RECORD_SIZE)
    if not isinstance(outer, dict) or set(outer) != {"record", "sig"}:
        raise DecodeError("not a signed WAL record")
    body, signature = outer["record"], outer["sig"]
    if not isinstance(body, bytes) or not isinstance(signature, bytes):
        raise DecodeError("WAL record body and signature must be bytes")
    inner = cbor.decode(body, max_size=storage.MAX_RECORD_SIZE)
    if (not isinstance(inner, dict)
            or set(inner) != {"v", "type", "commit_id", "signer", "fields"}
            or inner["v"] != WAL_VERSION or inner["type"] not in RECORD_TYPES
            or not isinstance(inner["commit_id"], str) or type(inner["signer"]) is not int
            or not isinstance(inner["fields"], dict)):
        raise DecodeError("WAL record body has the wrong shape")
    return WalRecord(inner["type"], inner["commit_id"], inner["signer"], inner["fields"],
                     body, signature)


class CommitWal:
    """The submitter's WAL (module docstring). Use :meth:`open`; one writer per file."""

    def __init__(self, log: storage.RecordLog, records: list[WalRecord], *,
                 committee_digest: bytes, signer: int, key: PrivateKey) -> None:
        self._log = log
        self._records = records
        self.committee_digest = committee_digest
        self.signer = signer
        self._key = key

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, committee_digest: bytes, signer: int,
             key: PrivateKey) -> CommitWal:
        """Open (creating if missing) and recover the WAL at ``path``: a torn tail is cut
        off by the record log (:attr:`recovered_truncated_bytes`), damage in the middle or
        a record that is not a WAL record is a one-line :class:`CorruptLogError`."""
        log = storage.RecordLog.open(path)
        try:
            records = []
            for index, payload in enumerate(log.records()):
                try:
                    records.append(decode_record(payload))
                except DecodeError as exc:
                    raise CorruptWalError(
                        f"{log.path}: record {index} is not a WAL record ({exc})") from None
        except BaseException:
            log.close()
            raise
        return cls(log, records, committee_digest=committee_digest, signer=signer, key=key)

    # -- writing ----------------------------------------------------------------------------

    def append(self, type_: str, commit_id: str, fields: dict[str, Any], *,
               sync: bool = False) -> WalRecord:
        """Sign and buffer one record; fsync too when ``sync`` (a commit point)."""
        body = _encode_body(type_, commit_id, self.signer, fields)
        signature = self._key.sign(self.committee_digest, WAL_MESSAGE_TYPE, body)
        self._log.append(cbor.encode({"record": body, "sig": signature}))
        record = WalRecord(type_, commit_id, self.signer, dict(fields), body, signature)
        self._records.append(record)
        if sync:
            self.sync()
        else:
            # Written to the OS at once (a killed process keeps it), fsynced at the next
            # commit point (what survives a power loss).
            self._log.write_buffered()
        return record

    def intent(self, commit_id: str, **fields: Any) -> WalRecord:
        """The execution intent; durable on return (before any effect runs)."""
        return self.append("intent", commit_id, fields, sync=True)

    def attempt(self, commit_id: str, **fields: Any) -> WalRecord:
        """One attempt of a step; written at once, durable at the next commit point."""
        return self.append("attempt", commit_id, fields)

    def result(self, commit_id: str, **fields: Any) -> WalRecord:
        """The commit's result; durable on return."""
        return self.append("result", commit_id, fields, sync=True)

    def rollback(self, commit_id: str, **fields: Any) -> WalRecord:
        """A rollback (compensation) record; durable on return."""
        return self.append("rollback", commit_id, fields, sync=True)

    def sync(self) -> None:
        """fsync everything appended so far (the batched durability point)."""
        self._log.sync()

    def close(self) -> None:
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------

    def records(self) -> list[WalRecord]:
        return list(self._records)

    def for_commit(self, commit_id: str) -> list[WalRecord]:
        return [r for r in self._records if r.commit_id == commit_id]

    def in_doubt(self) -> list[WalRecord]:
        """Intents without a result, in log order: effects that may or may not have run."""
        done = {r.commit_id for r in self._records if r.type == "result"}
        seen: set[str] = set()
        found = []
        for record in self._records:
            if record.type == "intent" and record.commit_id not in done \
                    and record.commit_id not in seen:
                seen.add(record.commit_id)
                found.append(record)
        return found

    @property
    def path(self) -> str:
        return self._log.path

    @property
    def recovered_truncated_bytes(self) -> int:
        return self._log.recovered_truncated_bytes


# -- verification (read-only) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalReport:
    """What :func:`verify_wal` found. ``error`` is one line (None when ``ok``)."""

    path: str
    ok: bool
    records: int
    counts: dict[str, int]
    in_doubt: tuple[str, ...]
    error: str | None = None
    #: Byte offset of the first bad record (or of the header problem: 0).
    offset: int | None = None
    #: The records that verified, in log order.
    entries: tuple[WalRecord, ...] = ()

    def summary(self) -> str:
        if not self.ok:
            return str(self.error)
        counts = ", ".join(f"{self.counts.get(t, 0)} {t}" for t in RECORD_TYPES)
        return (f"{self.path}: ok: {self.records} records ({counts});"
                f" {len(self.in_doubt)} in doubt")


def _signer_problem(record: WalRecord, committee: Committee, verifier: Verifier) -> str | None:
    """Why ``record`` is not signed by a ``submit`` member of ``committee`` (None: it is)."""
    public_key = committee.member_public_key(record.signer)
    if public_key is None:
        return f"signer {record.signer} is not a committee member"
    if SUBMIT_ROLE not in committee.member(record.signer).roles:
        return f"signer {record.signer} lacks the {SUBMIT_ROLE!r} role"
    if not verifier.verify(public_key, committee.digest, WAL_MESSAGE_TYPE, record.body,
                           record.signature):
        return f"bad signature by member {record.signer}"
    return None


def verify_wal(path: str | os.PathLike[str], committee: Committee) -> WalReport:
    """Check the WAL at ``path`` without modifying it: header, hash chain (every record
    from the genesis), record shape, and each record's signature by its signer, who must
    be a committee member with the ``submit`` role. The first problem ends the walk and is
    reported as one line with its byte offset. An unreadable file is a ConfigError."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:  # read-only: never truncates a torn tail
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read WAL ({exc.strerror or exc})") from None
    return check_wal_bytes(data, path, committee)


def check_wal_bytes(data: bytes, path: str, committee: Committee | None) -> WalReport:
    """:func:`verify_wal` on bytes already read. Without ``committee`` only the header, the
    chain and the record shape are checked (signers and signatures are not)."""
    counts = {t: 0 for t in RECORD_TYPES}
    records: list[WalRecord] = []

    def report(error: str | None, offset: int | None) -> WalReport:
        done = {r.commit_id for r in records if r.type == "result"}
        doubt = tuple(dict.fromkeys(r.commit_id for r in records
                                    if r.type == "intent" and r.commit_id not in done))
        line = f"{path}: offset {offset}: {error}" if error is not None else None
        return WalReport(path, error is None, len(records), counts, doubt, line, offset,
                         tuple(records))

    header = storage._HEADER_FIXED
    if len(data) < storage.HEADER_SIZE:
        return report(f"not a WAL (header is {len(data)} bytes)", 0)
    magic, version, flags, _ = header.unpack_from(data, 0)
    if magic != storage.MAGIC:
        return report(f"not a WAL (bad magic {magic!r})", 0)
    if version != storage.FORMAT_VERSION:
        return report(f"unsupported record log format version {version}", 0)
    prev = data[header.size : storage.HEADER_SIZE]
    if flags != 0 or storage._header_hash(data[: header.size]) != prev:
        return report("record log header is corrupt", 0)

    verifier = Verifier(cache_size=0)
    pos = storage.HEADER_SIZE
    while pos < len(data):
        index = len(records)
        rec = storage._parse(data, pos)
        if rec is None:
            return report(f"record {index}: truncated or oversized record"
                          f" ({len(data) - pos} bytes left; a torn tail)", pos)
        length, payload, stored, nxt = rec
        if storage._chain(prev, storage._LENGTH.pack(length), payload) != stored:
            where = ("damaged; valid records follow" if storage._damage_in_middle(data, pos, prev)
                     else "a torn tail or damage")
            return report(f"record {index}: hash chain mismatch ({where})", pos)
        try:
            record = decode_record(payload)
        except DecodeError as exc:
            return report(f"record {index}: not a WAL record ({exc})", pos)
        problem = None if committee is None else _signer_problem(record, committee, verifier)
        if problem is not None:
            return report(f"record {index}: {problem}", pos)
        records.append(record)
        counts[record.type] += 1
        prev = stored
        pos = nxt
    return report(None, None)
