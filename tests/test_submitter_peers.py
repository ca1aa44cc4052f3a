"""The commit layer inside real peers: 4 members over TCP on 127.0.0.1 in this process, each
with the deliberation ledger, its agent and its submitter, sharing one sandbox directory and
one SQLite database (the resources). Tests wait on executions under ``trio.fail_after``."""

from __future__ import annotations

import sqlite3

import pytest
import trio
from conftest import make_genesis
from prometheus_client import generate_latest

from bftdeliberate.agents.submitter import AUDIT_FILE_NAME, WAL_FILE_NAME
from bftdeliberate.audit.events import read_audit_log
from bftdeliberate.audit.report import audit_report
from bftdeliberate.commit.executor import RetryPolicy
from bftdeliberate.commit.handlers import CommandHandler, FileHandler, SqliteKvHandler
from bftdeliberate.commit.handlers.base import HandlerRegistry
from bftdeliberate.commit.wal import verify_wal
from bftdeliberate.deliberation.ops import OpenTask
from bftdeliberate.deliberation.scripts import Script, ScriptedDebater
from bftdeliberate.demo import open_local_committee
from bftdeliberate.observability import metrics_registry

GENESIS = make_genesis(4, clients=1)
NAMES = [m.name for m in GENESIS.committee.members]
LIMIT = 30
PATCHES = {"api-v22": b"image: api:2.2\n", "flag-off": b"off"}
PLAN = ({"step": "read", "target": "file:deploy/api.yaml"},
        {"step": "patch", "target": "file:deploy/api.yaml", "patch_id": "api-v22"},
        {"step": "patch", "target": "kv:flags/new_pool", "patch_id": "flag-off"})


def debaters(plan):
    return [ScriptedDebater(NAMES[i], Script(
        position="roll back", evidence=(f"ref:{i}",), tokens=10,
        **({"plan": plan, "risks": ("rollback",)} if i == 0 else {}))) for i in range(4)]


def resources(tmp_path):
    sandbox = tmp_path / "sandbox"
    (sandbox / "deploy").mkdir(parents=True)
    (sandbox / "deploy" / "api.yaml").write_bytes(b"image: api:2.3\n")
    database = tmp_path / "flags.db"

    def registry(member: int) -> HandlerRegistry:
        return HandlerRegistry([FileHandler(sandbox, PATCHES),
                                SqliteKvHandler(database, ["flags"], PATCHES),
                                CommandHandler(sandbox, ["true"])])
    return sandbox, database, registry


async def debate_and_commit(local, plan_task="roll back release 2.3?"):
    result = await local.members[0].agent.request(OpenTask(
        question=plan_task, round_ms=30_000, vote_ms=30_000, max_rounds=2))
    assert result is not None and result["ok"], result
    task_id = result["task_id"]

    def finished(member) -> bool:
        cid = member.ledger.commits.commit_of(task_id)
        return cid is not None and member.ledger.commits.status(cid)["result"] is not None
    await local.wait_all(finished)
    for member in local.members:
        await member.submitter.wait_until(lambda m=member: m.submitter.idle)
    return task_id


def kv_value(database, key):
    with sqlite3.connect(database) as db:
        row = db.execute("SELECT value FROM flags WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


async def test_the_primary_commits_the_approved_plan_once_and_every_member_agrees(tmp_path):
    sandbox, database, registry = resources(tmp_path)
    with trio.fail_after(LIMIT):
        async with open_local_committee(GENESIS.committee, GENESIS.member_keys,
                                        debaters(PLAN), data_root=tmp_path / "data",
                                        handlers=registry) as local:
            task_id = await debate_and_commit(local)
            statuses = [m.ledger.commits.status(m.ledger.commits.commit_of(task_id))
                        for m in local.members]
            snapshot = local.members[0].peer.snapshot()
    # The submitter's counters reach the member's metrics.
    events = snapshot["commit_events"]
    assert events["commit_begun"] == 1 and events["apply_ok"] == 3
    assert events["result_committed"] == 1 and events["intents"] == 1
    exposition = generate_latest(metrics_registry(lambda: snapshot)).decode()
    assert 'bftd_commit_events_total{event="result_committed",member="0"} 1.0' in exposition
    assert all(s == statuses[0] for s in statuses)  # no state tearing
    status = statuses[0]
    assert status["result"]["result"] == "committed"
    assert [i["submitter"] for i in status["intents"]] == [NAMES[0]]  # primary of view 0
    assert [s["status"] for s in status["result"]["steps"]] == ["applied"] * 3
    assert (sandbox / "deploy" / "api.yaml").read_bytes() == b"image: api:2.2\n"
    assert kv_value(database, "new_pool") == b"off"
    # The submitter's WAL verifies (chain and signatures) and its audit log says: one apply
    # per key, no duplicate commit. The other members executed nothing.
    wal = tmp_path / "data" / "data-0" / WAL_FILE_NAME
    report = verify_wal(wal, GENESIS.committee)
    assert report.ok
    assert {k: v for k, v in report.counts.items() if v} == {"intent": 1, "attempt": 3,
                                                              "result": 1}
    audit = audit_report(read_audit_log(tmp_path / "data" / "data-0" / AUDIT_FILE_NAME).events)
    assert audit["duplicate_commits"] == 0
    for member in (1, 2, 3):
        counts = verify_wal(tmp_path / "data" / f"data-{member}" / WAL_FILE_NAME,
                            GENESIS.committee).counts
        assert not any(counts.values())


@pytest.mark.parametrize(("refused", "code"), [
    ({"step": "command", "cmd": "rm -rf deploy", "target": "file:deploy"}, "permission_denied"),
    ({"step": "patch", "target": "file:../outside.txt", "patch_id": "flag-off"},
     "permission_denied"),
    ({"step": "patch", "target": "kv:users/admin", "patch_id": "flag-off"},
     "permission_denied"),
    ({"step": "patch", "target": "s3:bucket/key", "patch_id": "flag-off"}, "invalid_step"),
], ids=["command-not-allowed", "sandbox-escape", "kv-table-not-allowed", "no-handler"])
async def test_a_plan_with_a_step_outside_the_allow_list_executes_nothing(tmp_path, refused,
                                                                          code):
    sandbox, database, registry = resources(tmp_path)
    plan = (PLAN[1], refused, PLAN[2])
    with trio.fail_after(LIMIT):
        async with open_local_committee(GENESIS.committee, GENESIS.member_keys,
                                        debaters(plan), data_root=tmp_path / "data",
                                        handlers=registry) as local:
            task_id = await debate_and_commit(local)
            ledger = local.members[2].ledger
            status = ledger.commits.status(ledger.commits.commit_of(task_id))
    result = status["result"]
    assert result["result"] == "permission_denied"
    assert result["failed_step"] == 1 and result["error_code"] == code
    assert [s["status"] for s in result["steps"]] == ["not_run", "failed", "not_run"]
    assert (sandbox / "deploy" / "api.yaml").read_bytes() == b"image: api:2.3\n"
    assert kv_value(database, "new_pool") is None
    assert (sandbox / "deploy").is_dir() and not (tmp_path / "outside.txt").exists()
    events = read_audit_log(tmp_path / "data" / "data-0" / AUDIT_FILE_NAME).events
    assert [e.result for e in events if e.layer == "commit"] == [
        "intent", "denied", "permission_denied"]


class FlakyFileHandler(FileHandler):
    """Fails the first ``failures`` applies with a transient error (then behaves)."""

    def __init__(self, *args, failures: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.failures = failures

    def apply(self, call):
        if call.step.get("step") == "patch" and self.failures > 0:
            self.failures -= 1
            from bftdeliberate.commit.handlers.base import transient
            return transient("injected: the volume is busy")
        return super().apply(call)


async def test_a_transient_failure_is_retried_with_backoff_and_applied_once(tmp_path):
    sandbox, database, _ = resources(tmp_path)
    flaky = FlakyFileHandler(sandbox, PATCHES, failures=2)

    def registry(member: int) -> HandlerRegistry:
        return HandlerRegistry([flaky, SqliteKvHandler(database, ["flags"], PATCHES)])
    policy = RetryPolicy(max_attempts=3, base_backoff_ms=5, max_backoff_ms=20)
    with trio.fail_after(LIMIT):
        async with open_local_committee(GENESIS.committee, GENESIS.member_keys,
                                        debaters(PLAN), data_root=tmp_path / "data",
                                        handlers=registry, commit_policy=policy) as local:
            task_id = await debate_and_commit(local)
            ledger = local.members[1].ledger
            status = ledger.commits.status(ledger.commits.commit_of(task_id))
    assert status["result"]["result"] == "committed"
    assert status["result"]["steps"][1]["attempts"] == 3
    events = read_audit_log(tmp_path / "data" / "data-0" / AUDIT_FILE_NAME).events
    retries = [e for e in events if e.retry_reason == "transient"]
    assert len(retries) == 2
    assert audit_report(events)["duplicate_commits"] == 0
    assert (sandbox / "deploy" / "api.yaml").read_bytes() == b"image: api:2.2\n"
