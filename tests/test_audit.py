"""Audit events and metrics: the JSON-lines sink and reader (torn last line tolerated, a bad
middle line refused with its number), event builders per layer, the report's figures
(duplicate commits computed, never assumed), the attribution chain, ``bftd audit report``,
``bftd commit show`` and the commit schemas written by ``bftd schema --out``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest

from bftdeliberate.audit.events import (
    MAX_LINE_BYTES,
    AuditLog,
    commit_events,
    consensus_events,
    discussion_events,
    load_wal,
    read_audit_log,
)
from bftdeliberate.audit.report import audit_report
from bftdeliberate.cli import main
from bftdeliberate.commit.model import (
    AuditEvent,
    CommitResult,
    ExecutionIntent,
    Rollback,
    StepAttempt,
    StepResult,
    commit_schemas,
)
from bftdeliberate.commit.wal import CommitWal
from bftdeliberate.committee import make_committee, save_committee
from bftdeliberate.deliberation.proposal import parse_proposal
from bftdeliberate.errors import ConfigError, LocalError

ROOT = Path(__file__).resolve().parent.parent
SEED = parse_proposal((ROOT / "tests/fixtures/proposal-seed.json").read_text())
DESIGN_AUDIT = ["task_id", "proposal_id", "commit_id", "agent_id", "role", "idempotency_key",
                "attempt", "retry_reason", "timeout_ms", "latency_ms", "resource_targets",
                "result", "error_code", "layer", "ts"]
C1, C2, C3 = "11" * 32, "22" * 32, "33" * 32
K1, K2, K3 = "a1" * 32, "a2" * 32, "a3" * 32


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ev(**fields) -> AuditEvent:
    return AuditEvent(**{"ts": 1, **fields})


def crafted() -> list[AuditEvent]:
    """Two proposals' discussion, three commits, two view changes (figures in the test)."""
    talk = {"task_id": "t-1", "proposal_id": "p-1", "layer": "discussion"}
    c1 = {"task_id": "t-1", "proposal_id": "p-1", "commit_id": C1, "layer": "commit",
          "role": "submitter", "agent_id": "S"}
    c2 = {"task_id": "t-2", "proposal_id": "p-2", "commit_id": C2, "layer": "commit",
          "role": "submitter", "agent_id": "S"}
    return [
        ev(**talk, agent_id="P1", role="proposer", result="proposed"),
        ev(**talk, agent_id="A", role="voter", result="approve"),
        ev(**talk, agent_id="B", role="voter", result="approve"),
        ev(**talk, agent_id="C", role="voter", result="reject"),
        ev(**talk, result="approved"),
        ev(**talk, agent_id="D", role="auditor", result="approve"),
        ev(task_id="t-9", agent_id="human", role="human", result="escalated",
           layer="discussion"),
        # c1: the key K1 applied twice (a duplicate), K2 already applied (not a duplicate).
        ev(**c1, result="intent"),
        ev(**c1, idempotency_key=K1, attempt=1, result="applied"),
        ev(**c1, idempotency_key=K1, attempt=2, result="applied"),
        ev(**c1, idempotency_key=K2, attempt=1, result="applied"),
        ev(**c1, idempotency_key=K2, attempt=2, result="already_applied"),
        ev(**c1, idempotency_key=K2, attempt=1, result="query_applied"),
        ev(**c1, result="committed"),
        # c2: a failed test, rolled back.
        ev(**c2, result="intent"),
        ev(**c2, idempotency_key=K3, attempt=1, result="applied"),
        ev(**c2, idempotency_key=K3, attempt=1, result="error", error_code="test_failed"),
        ev(**c2, idempotency_key=K3, attempt=1, result="compensated"),
        ev(**c2, result="rollback_compensated"),
        ev(**c2, result="rolled_back", error_code="test_failed"),
        # c3: refused for a resource conflict.
        ev(task_id="t-3", proposal_id="p-3", commit_id=C3, layer="commit", role="submitter",
           agent_id="T", result="conflict", error_code="conflict"),
        *consensus_events({"view_change": 2}, ts=7, agent_id="agent-1"),
    ]


# -- sink and reader ------------------------------------------------------------------------------

def test_sink_reader_round_trip_and_append_only(tmp_path):
    path = tmp_path / "audit.jsonl"
    events = crafted()
    with AuditLog(path) as log:
        log.extend(events[:10])
        log.sync()
    first = path.read_bytes()
    with AuditLog(path) as log:  # reopened: appends after the existing lines
        log.extend(events[10:])
    assert path.read_bytes().startswith(first)
    contents = read_audit_log(path)
    assert contents.events == tuple(events) and contents.torn_tail is None
    lines = path.read_text().splitlines()
    assert len(lines) == len(events) and list(json.loads(lines[0])) == DESIGN_AUDIT
    with pytest.raises(LocalError):
        AuditLog(path).append({"result": "ok"})  # type: ignore[arg-type]
    closed = AuditLog(path)
    closed.close()
    with pytest.raises(LocalError):
        closed.append(events[0])


def test_overlong_line_refused(tmp_path, monkeypatch):
    import bftdeliberate.audit.events as module

    monkeypatch.setattr(module, "MAX_LINE_BYTES", 64)
    with AuditLog(tmp_path / "a.jsonl") as log, pytest.raises(LocalError, match="exceeds 64"):
        log.append(crafted()[0])
    assert (tmp_path / "a.jsonl").read_bytes() == b""
    assert MAX_LINE_BYTES >= 4096


def test_torn_last_line_is_reported_not_fatal_and_cut_before_appending(tmp_path):
    path = tmp_path / "audit.jsonl"
    events = crafted()
    with AuditLog(path) as log:
        log.extend(events[:3])
    whole = path.read_bytes()
    path.write_bytes(whole + events[3].to_json().encode()[:25])  # a crash mid-line
    contents = read_audit_log(path)
    assert contents.events == tuple(events[:3])
    assert contents.torn_tail is not None and "line 4: torn last line" in contents.torn_tail
    with AuditLog(path) as log:
        assert log.recovered_truncated_bytes == 25
        log.append(events[3])
    assert read_audit_log(path).events == tuple(events[:4])
    assert read_audit_log(path).torn_tail is None
    # A complete last event without its newline is kept, not called torn.
    path.write_bytes(whole + events[3].to_json().encode())
    assert read_audit_log(path).events == tuple(events[:4])


def test_malformed_middle_line_refused_with_its_number(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    good = [e.to_json() for e in crafted()[:3]]
    for bad, why in (("{not json", "not an audit event"),
                     (json.dumps({**json.loads(good[0]), "layer": "elsewhere"}), "layer"),
                     (json.dumps({**json.loads(good[0]), "extra": 1}), "extra")):
        path.write_text("\n".join([good[0], bad, good[1], good[2]]) + "\n")
        with pytest.raises(ConfigError, match=f"line 2: .*{why}"):
            read_audit_log(path)
        code, out, err = run(capsys, "audit", "report", str(path))
        assert code == 2 and out == "" and err.count("\n") == 1 and "line 2" in err
    path.write_bytes(good[0].encode() + b"\n\xff\xfe\n" + good[1].encode() + b"\n")
    with pytest.raises(ConfigError, match="line 2: not UTF-8"):
        read_audit_log(path)
    code, _, err = run(capsys, "audit", "report", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "no such file" in err


# -- report -------------------------------------------------------------------------------------

def test_report_figures_on_a_crafted_event_set():
    report = audit_report(crafted())
    assert report["events"] == len(crafted())
    assert report["by_layer"] == {"discussion": 7, "commit": 14, "consensus": 2}
    assert report["commits"] == 3 and report["commit_outcomes"] == 3
    assert report["failed_commits"] == 2
    assert report["failure_reasons"] == {"conflict": 1, "test_failed": 1}
    assert report["rollback"] == {"commits": 1, "frequency": round(1 / 3, 6)}
    assert report["conflicts"] == {"count": 1, "attempts": 3, "rate": round(1 / 3, 6)}
    # K1 applied twice: one duplicate; K2's already_applied and query are not second applies.
    assert report["duplicate_commits"] == 1
    assert report["duplicate_keys"] == [{"idempotency_key": K1, "applies": 2}]
    assert report["failures_by_layer"] == {"discussion": 1, "commit": 3, "consensus": 2}
    json.dumps(report)  # JSON-ready


def test_clean_run_has_no_duplicates_and_empty_log_reports_zeros():
    clean = [e for e in crafted() if not (e.idempotency_key == K1 and e.attempt == 2)]
    assert audit_report(clean)["duplicate_commits"] == 0
    empty = audit_report([])
    assert empty["commits"] == 0 and empty["rollback"]["frequency"] == 0.0
    assert empty["conflicts"]["rate"] == 0.0 and empty["attribution"] == []


def test_attribution_chain():
    chains = {row["commit_id"]: row for row in audit_report(crafted())["attribution"]}
    assert chains[C1] == {
        "commit_id": C1, "task_id": "t-1", "proposal_id": "p-1", "proposer": "P1",
        "approvers": ["A", "B"], "submitter": "S", "submitters": ["S"],
        "auditors": [{"agent_id": "D", "decision": "approve"}], "result": "committed"}
    assert chains[C2]["result"] == "rolled_back" and chains[C2]["proposer"] is None
    assert chains[C3]["submitter"] == "T" and chains[C3]["approvers"] == []


# -- builders -----------------------------------------------------------------------------------

def test_discussion_events_from_a_task_status():
    status = {
        "task_id": "t-5-0", "opener": "agent-0", "opened_ms": 100, "closed_ms": 900,
        "decided_proposal": "t-5-0.agent-0.r0", "escalated_to": "human",
        "resolved_by": "agent-3",
        "rounds": [{"round": 0, "contributions": [
            {"agent": "agent-0", "proposal_id": "t-5-0.agent-0.r0", "at_ms": 200}]}],
        "proposals": [{"proposal_id": "t-5-0.agent-0.r0", "author": "agent-0",
                       "status": "approved",
                       "votes": [{"agent": "agent-1", "decision": "approve", "at_ms": 300},
                                 {"agent": "agent-2", "decision": "reject", "at_ms": 310}]}],
        "groupthink": {"audits": [{"agent": "agent-3", "decision": "approve",
                                   "at_ms": 400}]},
    }
    events = discussion_events(status)
    assert all(e.layer == "discussion" and e.task_id == "t-5-0" for e in events)
    assert [(e.agent_id, e.role, e.result, e.ts) for e in events] == [
        ("agent-0", "opener", "opened", 100), ("agent-0", "proposer", "proposed", 200),
        ("agent-1", "voter", "approve", 300), ("agent-2", "voter", "reject", 310),
        (None, None, "approved", 310), ("agent-3", "auditor", "approve", 400),
        ("human", "human", "escalated", 900), ("agent-3", "resolver", "resolved", 900)]
    assert audit_report(events)["failures_by_layer"]["discussion"] == 1


@pytest.fixture(scope="module")
def genesis():
    committee, keys, _ = make_committee(4, rng=random.Random(11))
    return committee, keys


def attempt(intent, index, action="apply", n=1, ok=True, code=None, retry=None,
            already=False, started=1000) -> StepAttempt:
    step = intent.steps[index]
    return StepAttempt(commit_id=intent.commit_id, index=index,
                       idempotency_key=step.idempotency_key, action=action, attempt=n,
                       started_ms=started, latency_ms=5, result="ok" if ok else "error",
                       error_code=code, retry_reason=retry, timeout_ms=step.timeout_ms,
                       already_applied=already)


def data(model) -> dict:
    """WAL record fields: the model's data; the record itself names the commit."""
    fields = model.to_data()
    fields.pop("commit_id", None)
    return fields


def write_wal(path, genesis) -> tuple[ExecutionIntent, ExecutionIntent]:
    """Commit 1 (by agent-0) fails its test and is rolled back; commit 2's submitter crashes
    after its effect, the next primary (agent-1) finds the key applied and commits."""
    committee, keys = genesis
    one = ExecutionIntent.from_proposal(SEED, committee_digest=committee.digest,
                                        submitter="agent-0", view=0)
    other = SEED.model_copy(update={"proposal_id": "p-2"})
    two = [ExecutionIntent.from_proposal(other, committee_digest=committee.digest,
                                         submitter=name, view=view)
           for name, view in (("agent-0", 0), ("agent-1", 1))]
    with CommitWal.open(path, committee_digest=committee.digest, signer=0, key=keys[0]) as wal:
        wal.intent(one.commit_id, **data(one))
        for record in (attempt(one, 0), attempt(one, 1, ok=False, code="transient",
                                                retry="transient"),
                       attempt(one, 1, n=2), attempt(one, 2, ok=False, code="test_failed"),
                       attempt(one, 1, action="compensate"),
                       attempt(one, 0, action="compensate")):
            wal.attempt(one.commit_id, **data(record))
        rollback = Rollback(steps=(1, 0), result="compensated")
        wal.rollback(one.commit_id, **data(rollback))
        steps = tuple(StepResult(index=i, idempotency_key=s.idempotency_key,
                                 status="failed" if i == 2 else "applied", attempts=1)
                      for i, s in enumerate(one.steps))
        wal.result(one.commit_id, **data(CommitResult(
            commit_id=one.commit_id, result="rolled_back", steps=steps, rollback=rollback,
            failed_step=2, error_code="test_failed")))
        wal.intent(two[0].commit_id, **data(two[0]))
        wal.attempt(two[0].commit_id, **data(attempt(two[0], 0)))
    with CommitWal.open(path, committee_digest=committee.digest, signer=1, key=keys[1]) as wal:
        intent = two[1]
        wal.intent(intent.commit_id, **data(intent))
        wal.attempt(intent.commit_id, **data(attempt(intent, 0, action="query", already=True,
                                                     started=2000)))
        for index in (1, 2):
            wal.attempt(intent.commit_id, **data(attempt(intent, index, started=2100)))
        steps = tuple(StepResult(index=i, idempotency_key=s.idempotency_key,
                                 status="already_applied" if i == 0 else "applied",
                                 attempts=1) for i, s in enumerate(intent.steps))
        wal.result(intent.commit_id, **data(CommitResult(
            commit_id=intent.commit_id, result="committed", steps=steps)))
    return one, two[1]


def test_commit_events_from_wal_records(tmp_path, genesis):
    path = tmp_path / "commit.wal"
    one, two = write_wal(path, genesis)
    committee = genesis[0]
    events = commit_events(load_wal(path, committee),
                           member_name=lambda m: committee.member(m).name)
    assert all(e.layer == "commit" for e in events)
    first = [(e.agent_id, e.result, e.error_code) for e in events if e.commit_id == one.commit_id]
    assert first == [
        ("agent-0", "intent", None), ("agent-0", "checked", None),
        ("agent-0", "error", "transient"), ("agent-0", "applied", None),
        ("agent-0", "error", "test_failed"), ("agent-0", "compensated", None),
        ("agent-0", "compensated", None), ("agent-0", "rollback_compensated", None),
        ("agent-0", "rolled_back", "test_failed")]
    second = [(e.agent_id, e.result) for e in events if e.commit_id == two.commit_id]
    assert second == [("agent-0", "intent"), ("agent-1", "intent"), ("agent-0", "checked"),
                      ("agent-1", "query_applied"), ("agent-1", "applied"),
                      ("agent-1", "applied"), ("agent-1", "committed")]
    report = audit_report(events)
    # The takeover asked before retrying: every key applied once.
    assert report["duplicate_commits"] == 0 and report["rollback"]["commits"] == 1
    assert report["failure_reasons"] == {"test_failed": 1}
    chain = {row["commit_id"]: row for row in report["attribution"]}[two.commit_id]
    assert chain["submitter"] == "agent-1" and chain["submitters"] == ["agent-0", "agent-1"]


# -- CLI ----------------------------------------------------------------------------------------

def test_cli_audit_report_text_and_json(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    clean = [e for e in crafted() if not (e.idempotency_key == K1 and e.attempt == 2)]
    with AuditLog(path) as log:
        log.extend(clean)
    code, out, err = run(capsys, "audit", "report", str(path), "--json")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report["duplicate_commits"] == 0 and report["torn_tail"] is None
    assert report["file"] == str(path) and report["commits"] == 3
    code, out, err = run(capsys, "audit", "report", str(path))
    assert code == 0 and err == ""
    for text in ("duplicate commits (must be 0)", "rollback frequency", "test_failed",
                 "attribution", "P1", "commit failures"):
        assert text in out, text
    # A duplicate apply: exit 1, shown; a torn last line: a warning on stderr, still a report.
    with AuditLog(path) as log:
        log.append(next(e for e in crafted() if e.idempotency_key == K1 and e.attempt == 2))
    with path.open("ab") as file:
        file.write(b'{"task_id": "t-')
    code, out, err = run(capsys, "audit", "report", str(path))
    assert code == 1 and "DUPLICATE key " + K1 in out and "torn last line" in err
    code, out, _ = run(capsys, "audit", "report", str(path), "--json")
    assert code == 1 and json.loads(out)["duplicate_commits"] == 1


def test_cli_commit_show(tmp_path, capsys, genesis):
    path = tmp_path / "commit.wal"
    one, two = write_wal(path, genesis)
    committee_file = tmp_path / "committee.json"
    save_committee(genesis[0], committee_file)
    code, out, err = run(capsys, "commit", "show", one.commit_id, "--wal", str(path),
                         "--committee", str(committee_file), "--json")
    assert code == 0 and err == ""
    record = json.loads(out)
    jsonschema.validate(record, commit_schemas()["commit-record"])
    assert record["result"] == "rolled_back" and record["submitter"] == "agent-0"
    assert record["rollback"] == {"steps": [1, 0], "result": "compensated",
                                  "failed_step": None, "error_code": None}
    assert record["idempotency_key"] == [s.idempotency_key for s in one.steps]
    assert len(record["attempts"]) == 6 and record["attempts"][1]["retry_reason"] == "transient"
    assert [s["record"] for s in record["signatures"]] == ["intent"] + ["attempt"] * 6 + [
        "result"]
    assert all(s["signer"] == "agent-0" and len(s["signature"]) == 128
               for s in record["signatures"])
    code, out, _ = run(capsys, "commit", "show", two.commit_id, "--wal", str(path), "--json")
    record = json.loads(out)  # without --committee: chain checked, signers by member id
    assert code == 0 and record["submitter"] == "agent-1" and record["view"] == 1
    assert record["result"] == "committed" and record["signatures"][-1]["signer"] == "member-1"
    code, out, _ = run(capsys, "commit", "show", two.commit_id, "--wal", str(path))
    assert code == 0 and "committed" in out and "not verified" in out
    code, out, err = run(capsys, "commit", "show", "ff" * 32, "--wal", str(path))
    assert code == 1 and out == "" and "no commit" in err


def test_cli_commit_show_refuses_a_damaged_wal_with_its_offset(tmp_path, capsys, genesis):
    path = tmp_path / "commit.wal"
    one, _ = write_wal(path, genesis)
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF  # inside the first record
    path.write_bytes(bytes(data))
    for extra in ((), ("--committee", str(tmp_path / "committee.json"))):
        if extra:
            save_committee(genesis[0], tmp_path / "committee.json")
        code, out, err = run(capsys, "commit", "show", one.commit_id, "--wal", str(path),
                             *extra)
        assert code == 2 and out == "" and "offset" in err and err.count("\n") == 1
    assert path.read_bytes() == bytes(data)  # nothing rewritten
    code, _, err = run(capsys, "commit", "show", one.commit_id, "--wal",
                       str(tmp_path / "missing.wal"))
    assert code == 2 and "no such file" in err


def test_schema_out_writes_the_commit_schemas(tmp_path, capsys):
    out = tmp_path / "schemas"
    code, stdout, _ = run(capsys, "schema", "--out", str(out))
    assert code == 0
    for name, schema in commit_schemas().items():
        path = out / f"{name}.schema.json"
        assert str(path) in stdout.splitlines()
        written = json.loads(path.read_text(encoding="utf-8"))
        assert written == schema
        jsonschema.Draft202012Validator.check_schema(written)
    jsonschema.validate(json.loads(crafted()[0].to_json()),
                        json.loads((out / "audit-event.schema.json").read_text()))
