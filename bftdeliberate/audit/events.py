"""Audit events (DESIGN.md section 7): an append-only JSON-lines sink, a reader, and builders
that turn each layer's records into :class:`~bftdeliberate.commit.model.AuditEvent` lines.

* :class:`AuditLog` appends one event per line through an ``O_APPEND`` descriptor: each line
  is handed to the OS whole as soon as it is appended (nothing buffered in the process),
  :meth:`AuditLog.sync` fsyncs, a line longer than :data:`MAX_LINE_BYTES` is refused, and
  complete lines already in the file are never rewritten. A torn last line left by a crash
  (bytes after the last newline) is cut off when the log is opened for appending
  (:attr:`AuditLog.recovered_truncated_bytes`), so new lines never glue onto it.
* :func:`read_audit_log` reads a log back: a torn last line is reported (``torn_tail``) and
  skipped; a malformed line anywhere else is a one-line :class:`ConfigError` naming the line.
* Builders, one per layer (``layer`` = ``discussion`` | ``commit`` | ``consensus``):
  :func:`discussion_events` from a ledger ``task_status`` (task opened, proposals, signed
  votes, approved/rejected, audits, escalation and resolution); :func:`commit_events` from
  commit WAL records (intent, attempts, result, rollback); :func:`consensus_events` from
  consensus counters (e.g. view changes).

Commit WAL record fields (the convention :func:`commit_events` and ``bftd commit show``
read): an ``intent`` record's fields are ``ExecutionIntent.to_data()``, an ``attempt``'s
``StepAttempt.to_data()``, a ``result``'s ``CommitResult.to_data()`` and a ``rollback``'s
``Rollback.to_data()`` (``commit_id`` may be left out: the record names it, as in
``wal.intent(commit_id, **fields)``). :func:`parse_wal_records` validates them.

``result`` tags of commit-layer attempt events (so the report can tell a second *effect*
from a harmless repeat): an ``apply`` call is ``applied``, ``already_applied`` (the handler
had the key: nothing done again) or ``error`` -- a successful apply of a ``read`` step is
``checked`` (it changes nothing); a permission check that refused a step is ``denied``; a
``compensate`` call ``compensated`` or
``compensation_error``; a ``query`` call ``query_applied``, ``query_not_applied`` or
``query_error``. Outcome events carry the ``CommitResult.result`` (``committed``,
``rolled_back``, ``failed``, ``permission_denied``, ``conflict``) and rollback events
``rollback_compensated`` / ``rollback_failed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from pydantic import ValidationError

from bftdeliberate.commit.model import (
    AuditEvent,
    CommitRecord,
    CommitResult,
    ExecutionIntent,
    RecordSignature,
    Rollback,
    StepAttempt,
)
from bftdeliberate.commit.wal import WalRecord, check_wal_bytes
from bftdeliberate.committee import Committee
from bftdeliberate.errors import ConfigError, LocalError
from bftdeliberate.files import read_bytes

__all__ = [
    "MAX_AUDIT_LOG_SIZE", "MAX_LINE_BYTES", "AuditLog", "AuditLogContents", "ParsedCommit",
    "commit_events", "consensus_events", "discussion_events", "load_wal",
    "parse_wal_records", "read_audit_log",
]

#: Longest audit line in bytes (an event with every field set is well under 2 KiB).
MAX_LINE_BYTES = 16 * 1024
#: Largest audit log :func:`read_audit_log` reads.
MAX_AUDIT_LOG_SIZE = 256 * 1024 * 1024
#: Largest commit WAL :func:`load_wal` reads.
MAX_WAL_READ_SIZE = 1024 * 1024 * 1024


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "(event)"
    return f"{where}: {error['msg']}"


# -- sink ----------------------------------------------------------------------------------------

class AuditLog:
    """Append-only JSON-lines audit sink (module docstring). One writer per file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.recovered_truncated_bytes = 0
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot open the audit log "
                              f"({exc.strerror or exc})") from None
        try:
            self.recovered_truncated_bytes = _cut_torn_tail(fd)
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"{self.path}: cannot recover the audit log "
                              f"({exc.strerror or exc})") from None
        self._fd: int | None = fd

    def append(self, event: AuditEvent) -> None:
        """Write one event as one line (handed to the OS before this returns)."""
        if not isinstance(event, AuditEvent):
            raise LocalError(f"an audit log takes AuditEvent, not {type(event).__name__}")
        line = event.to_json().encode("utf-8") + b"\n"
        if len(line) > MAX_LINE_BYTES:
            raise LocalError(f"audit line of {len(line)} bytes exceeds {MAX_LINE_BYTES}")
        fd = self._open_fd()
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]

    def extend(self, events: Iterable[AuditEvent]) -> None:
        for event in events:
            self.append(event)

    def sync(self) -> None:
        """fsync the lines appended so far."""
        os.fsync(self._open_fd())

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _open_fd(self) -> int:
        if self._fd is None:
            raise LocalError(f"{self.path}: the audit log is closed")
        return self._fd

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _cut_torn_tail(fd: int) -> int:
    """Truncate bytes after the last newline (a line torn by a crash); how many were cut."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    chunk = 4096
    pos = size
    while pos > 0:
        start = max(0, pos - chunk)
        data = os.pread(fd, pos - start, start)
        newline = data.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        pos = start
    else:
        keep = 0
    if keep < size:
        os.ftruncate(fd, keep)
        os.fsync(fd)
    return size - keep


# -- reader --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AuditLogContents:
    path: str
    events: tuple[AuditEvent, ...]
    #: One line describing a torn last line that was skipped (None when the log is whole).
    torn_tail: str | None = None


def read_audit_log(path: str | os.PathLike[str]) -> AuditLogContents:
    """Every event of the audit log at ``path``. A last line without its newline that is not
    a valid event is a torn tail: reported in ``torn_tail`` and skipped. Any other bad line
    (not JSON, not an event, too long, not UTF-8) is a one-line ConfigError naming its line
    number. Blank lines are skipped."""
    source = os.fspath(path)
    data = read_bytes(path, max_size=MAX_AUDIT_LOG_SIZE, kind="an audit log")
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail: after the last newline ('' if none)
    events: list[AuditEvent] = []
    for number, line in enumerate(complete, start=1):
        event = _parse_line(line, source, number)
        if event is not None:
            events.append(event)
    torn = None
    if tail.strip():
        number = len(complete) + 1
        try:
            event = _parse_line(tail, source, number)
        except ConfigError as exc:
            torn = (f"{source}: line {number}: torn last line ({len(tail)} bytes without a "
                    f"newline) skipped: {str(exc).split(': ', 2)[-1]}")
        else:
            if event is not None:
                events.append(event)
    return AuditLogContents(source, tuple(events), torn)


def _parse_line(line: bytes, source: str, number: int) -> AuditEvent | None:
    if not line.strip():
        return None
    if len(line) > MAX_LINE_BYTES:
        raise ConfigError(f"{source}: line {number}: {len(line)} bytes, longer than "
                          f"{MAX_LINE_BYTES}")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: line {number}: not UTF-8 text") from None
    try:
        return AuditEvent.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(f"{source}: line {number}: not an audit event "
                          f"({_describe(exc)})") from None


# -- discussion layer ----------------------------------------------------------------------------

def _ms(*values: Any) -> int:
    """The first usable millisecond value (ledger times may be None while a task runs)."""
    for value in values:
        if type(value) is int and value >= 0:
            return value
    return 0


def discussion_events(status: Mapping[str, Any]) -> list[AuditEvent]:
    """Audit events of one deliberation task from ``Ledger.task_status(task_id)``: the task
    opened (``opener``), each revealed proposal (``proposer``), every signed vote
    (``voter``, result ``approve``/``reject``), each proposal's decision
    (``approved``/``rejected``), audits (``auditor``), and an escalation (``escalated``, a
    discussion-layer failure) with its resolution (``resolved``)."""
    task_id = status["task_id"]
    opened = _ms(status.get("opened_ms"))
    closed = _ms(status.get("closed_ms"), opened)
    events = [AuditEvent(task_id=task_id, agent_id=status.get("opener"), role="opener",
                         result="opened", layer="discussion", ts=opened)]
    proposed_at = {c.get("proposal_id"): c.get("at_ms")
                   for round_ in status.get("rounds", ())
                   for c in round_.get("contributions") or () if c.get("proposal_id")}
    for proposal in status.get("proposals", ()):
        pid = proposal["proposal_id"]
        at = _ms(proposed_at.get(pid), opened)
        events.append(AuditEvent(task_id=task_id, proposal_id=pid, agent_id=proposal["author"],
                                 role="proposer", result="proposed", layer="discussion", ts=at))
        votes = proposal.get("votes", ())
        for vote in votes:
            events.append(AuditEvent(task_id=task_id, proposal_id=pid, agent_id=vote["agent"],
                                     role="voter", result=vote["decision"],
                                     layer="discussion", ts=_ms(vote.get("at_ms"), at)))
        if proposal.get("status") in ("approved", "rejected"):
            last_vote = max((_ms(v.get("at_ms")) for v in votes), default=at)
            events.append(AuditEvent(task_id=task_id, proposal_id=pid,
                                     result=proposal["status"], layer="discussion",
                                     ts=max(last_vote, at)))
    decided = status.get("decided_proposal")
    for audit in status.get("groupthink", {}).get("audits", ()):
        events.append(AuditEvent(task_id=task_id, proposal_id=decided, agent_id=audit["agent"],
                                 role="auditor", result=audit["decision"], layer="discussion",
                                 ts=_ms(audit.get("at_ms"), closed)))
    if status.get("escalated_to"):
        target = status["escalated_to"]
        events.append(AuditEvent(task_id=task_id, agent_id=target,
                                 role="human" if target == "human" else "judge",
                                 result="escalated", layer="discussion", ts=closed))
        if status.get("resolved_by"):
            events.append(AuditEvent(task_id=task_id, proposal_id=decided,
                                     agent_id=status["resolved_by"], role="resolver",
                                     result="resolved", layer="discussion", ts=closed))
    return events


# -- commit layer --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ParsedCommit:
    """One commit's WAL records, validated (intents/attempts/rollbacks in log order)."""

    commit_id: str
    intents: tuple[tuple[WalRecord, ExecutionIntent], ...]
    attempts: tuple[tuple[WalRecord, StepAttempt], ...]
    results: tuple[tuple[WalRecord, CommitResult], ...]
    rollbacks: tuple[tuple[WalRecord, Rollback], ...]


_RECORD_MODELS: dict[str, Any] = {"intent": ExecutionIntent, "attempt": StepAttempt,
                                  "result": CommitResult, "rollback": Rollback}


def parse_wal_records(records: Iterable[WalRecord], *,
                      source: str = "WAL") -> dict[str, ParsedCommit]:
    """Validate WAL records' fields (module docstring) and group them by commit, in log
    order. A record whose fields are not its model is a one-line ConfigError naming its
    index; an attempt/result/rollback before its commit's intent too."""
    grouped: dict[str, dict[str, list[Any]]] = {}
    for index, record in enumerate(records):
        model = _RECORD_MODELS[record.type]
        fields = record.fields
        if record.type != "rollback" and fields.get("commit_id", record.commit_id) \
                != record.commit_id:
            raise ConfigError(f"{source}: record {index}: fields name another commit")
        if record.type != "rollback":  # ``wal.intent(cid, **fields)`` cannot repeat it
            fields = {**fields, "commit_id": record.commit_id}
        try:
            value = model.model_validate(fields, strict=False)
        except ValidationError as exc:
            raise ConfigError(f"{source}: record {index}: not a {record.type} record "
                              f"({_describe(exc)})") from None
        entry = grouped.setdefault(record.commit_id, {t: [] for t in _RECORD_MODELS})
        if record.type != "intent" and not entry["intent"]:
            raise ConfigError(f"{source}: record {index}: {record.type} of commit "
                              f"{record.commit_id} before its intent")
        if record.type == "attempt" and value.index >= len(entry["intent"][-1][1].steps):
            raise ConfigError(f"{source}: record {index}: attempt of step {value.index}; the "
                              f"intent has {len(entry['intent'][-1][1].steps)} steps")
        entry[record.type].append((record, value))
    return {cid: ParsedCommit(cid, tuple(e["intent"]), tuple(e["attempt"]), tuple(e["result"]),
                              tuple(e["rollback"]))
            for cid, e in grouped.items()}


#: Plan step kinds that change nothing (their successful apply is audited as ``checked``).
EFFECT_FREE_STEPS = frozenset({"read"})


def _attempt_result(attempt: StepAttempt) -> str:
    ok = attempt.result == "ok"
    if attempt.action == "apply":
        return ("already_applied" if attempt.already_applied else "applied") if ok else "error"
    if attempt.action == "compensate":
        return "compensated" if ok else "compensation_error"
    if attempt.action == "check":
        return "denied"
    if not ok:
        return "query_error"
    return "query_applied" if attempt.already_applied else "query_not_applied"


def intent_event(intent: ExecutionIntent, *, agent_id: str, ts: int) -> AuditEvent:
    """The audit event of an execution intent (its submitter announced the commit)."""
    return AuditEvent(task_id=intent.task_id, proposal_id=intent.proposal_id,
                      commit_id=intent.commit_id, agent_id=agent_id, role="submitter",
                      resource_targets=intent.resource_targets, result="intent",
                      layer="commit", ts=ts)


def attempt_event(attempt: StepAttempt, intent: ExecutionIntent, *,
                  agent_id: str) -> AuditEvent:
    """The audit event of one handler call (``applied``, ``already_applied``, ``error``,
    ``compensated``, ``query_applied``, ``denied`` ...; a successful ``read`` is
    ``checked``)."""
    event = AuditEvent.from_attempt(attempt, intent, agent_id=agent_id)
    result = _attempt_result(attempt)
    if result in ("applied", "already_applied") and \
            intent.steps[attempt.index].step.step in EFFECT_FREE_STEPS:
        # A read changes nothing and records no key: running it again after a takeover is
        # a second look, not a second effect.
        result = "checked"
    return event.model_copy(update={"result": result})


def result_events(intent: ExecutionIntent, result: CommitResult, *, agent_id: str, ts: int,
                  rollback: bool = True) -> list[AuditEvent]:
    """The audit events of a commit's result: its rollback (unless ``rollback`` is False or
    none was needed), then the result itself."""
    events = []
    if rollback and result.rollback.result != "not_needed":
        events.append(_outcome_event(intent, agent_id, ts, f"rollback_{result.rollback.result}",
                                     result.rollback.error_code))
    events.append(_outcome_event(intent, agent_id, ts, result.result, result.error_code))
    return events


def _outcome_event(intent: ExecutionIntent, agent_id: str, ts: int, result: str,
                   error_code: str | None) -> AuditEvent:
    """A submitter's commit-level event (a result or a rollback) of ``intent``."""
    return AuditEvent(task_id=intent.task_id, proposal_id=intent.proposal_id,
                      commit_id=intent.commit_id, agent_id=agent_id, role="submitter",
                      resource_targets=intent.resource_targets, result=result,
                      error_code=error_code, layer="commit", ts=ts)


def commit_events(records: Iterable[WalRecord], *,
                  member_name: Callable[[int], str] | None = None,
                  source: str = "WAL") -> list[AuditEvent]:
    """Audit events of the commit layer from WAL records (all commits, log order): each
    intent (``intent``), handler call (module docstring), result and rollback. The agent is
    the record's signer (``member_name(signer)``, default ``member-<id>``): after a takeover
    the new primary's attempts are attributed to it."""
    name = member_name or (lambda signer: f"member-{signer}")
    events: list[AuditEvent] = []
    for commit in parse_wal_records(records, source=source).values():
        intent = commit.intents[-1][1]
        ts = min((a.started_ms for _, a in commit.attempts), default=0)
        for record, each in commit.intents:
            events.append(intent_event(each, agent_id=name(record.signer), ts=ts))
        for record, attempt in commit.attempts:
            event = attempt_event(attempt, intent, agent_id=name(record.signer))
            events.append(event)
            ts = max(ts, event.ts)
        for record, rollback in commit.rollbacks:
            events.append(_outcome_event(intent, name(record.signer), ts,
                                         f"rollback_{rollback.result}", rollback.error_code))
        for record, result in commit.results:
            events += result_events(intent, result, agent_id=name(record.signer), ts=ts,
                                    rollback=not commit.rollbacks)
    return events


def commit_record(records: Iterable[WalRecord], commit_id: str, *,
                  member_name: Callable[[int], str] | None = None,
                  source: str = "WAL") -> CommitRecord | None:
    """``commit_record.json`` of ``commit_id`` from WAL records -- of one member's WAL, or of
    several (a takeover: the record then lists every submitter's attempts, and the latest
    intent's submitter and view); None when no record names the commit."""
    name = member_name or (lambda signer: f"member-{signer}")
    commit = parse_wal_records([r for r in records if r.commit_id == commit_id],
                               source=source).get(commit_id)
    if commit is None:
        return None
    signatures = tuple(RecordSignature(signer=name(record.signer), record=record.type,
                                       signature=record.signature.hex())
                       for record, _ in (*commit.intents, *commit.attempts, *commit.results))
    result = commit.results[-1][1] if commit.results else None
    record = CommitRecord.build(commit.intents[-1][1], [a for _, a in commit.attempts], result,
                                signatures)
    if result is None and commit.rollbacks:  # crashed mid-rollback: show how far it got
        record = record.model_copy(update={"rollback": commit.rollbacks[-1][1]})
    return record


def load_wal(path: str | os.PathLike[str],
             committee: Committee | None = None) -> list[WalRecord]:
    """The records of the commit WAL at ``path``, read-only (a torn tail is not cut off but
    refused). With ``committee``, :func:`~bftdeliberate.commit.wal.verify_wal` checks the chain,
    signatures and signers first; without, only the header and the hash chain are checked.
    Any problem is a one-line ConfigError with its byte offset."""
    data = read_bytes(path, max_size=MAX_WAL_READ_SIZE, kind="a commit WAL")
    report = check_wal_bytes(data, os.fspath(path), committee)
    if not report.ok:
        raise ConfigError(str(report.error))
    return list(report.entries)


# -- consensus layer -----------------------------------------------------------------------------

def consensus_events(counts: Mapping[str, int], *, ts: int, agent_id: str | None = None,
                     task_id: str | None = None) -> list[AuditEvent]:
    """``counts[tag]`` consensus-layer events with result ``tag`` each, e.g.
    ``{"view_change": 2}`` from a replica's counters (``view_change`` and ``timeout`` count
    as consensus failures in the report)."""
    events = []
    for tag, count in counts.items():
        if type(count) is not int or count < 0:
            raise LocalError(f"consensus count {tag!r} must be an int >= 0, got {count!r}")
        events.extend(AuditEvent(task_id=task_id, agent_id=agent_id, result=tag,
                                 layer="consensus", ts=ts) for _ in range(count))
    return events
