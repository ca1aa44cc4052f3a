"""The commit layer across real processes: four ``bftd node run`` processes on 127.0.0.1 share
one sandbox directory and one SQLite database. The primary (member 0, the single submitter)
is killed with SIGKILL right after its handler applied a step -- the effect is in place, no
WAL record or ordered result says so (the ``BFTD_FAILPOINT`` failpoint). The others change
view; the next primary (member 1) orders a takeover intent, asks the handlers which keys were
applied, finishes the plan, and every resource shows exactly one effect. Then a torn WAL tail
is cut off on the next open of the WAL, and a kill -9'd member restarts over its WAL."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
import trio
from processes import Node, bftd_argv, free_port_range, scrape

from bftdeliberate.agents.submitter import AUDIT_FILE_NAME, FAILPOINT_ENV, WAL_FILE_NAME
from bftdeliberate.commit.handlers.base import STATE_DIR

TEST_TIMEOUT = 90
PLAN = [{"step": "read", "target": "file:deploy/api.yaml"},
        {"step": "patch", "target": "file:deploy/api.yaml", "patch_id": "api-v22"},
        {"step": "patch", "target": "kv:flags/new_pool", "patch_id": "flag-off"}]
OLD_CONTENT = b"image: api:2.3\n"
NEW_CONTENT = b"image: api:2.2\n"


def bftd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*bftd_argv(), *args], check=False, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def shared(tmp_path):
    """Keystore, plan, patch store, sandbox and database for a 4-member committee."""
    base = free_port_range(8)
    subprocess.run([*bftd_argv(), "keys", "init", "--n", "4", "--dir", str(tmp_path),
                    "--clients", "1", "--base-port", str(base)], check=True,
                   capture_output=True)
    sandbox = tmp_path / "sandbox"
    (sandbox / "deploy").mkdir(parents=True)
    (sandbox / "deploy" / "api.yaml").write_bytes(OLD_CONTENT)
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "api-v22").write_bytes(NEW_CONTENT)
    (patches / "flag-off").write_bytes(b"off")
    plan = tmp_path / "proposal.json"
    plan.write_text(json.dumps({
        "proposal_id": "p-1", "task_id": "t-1", "plan": PLAN, "risks": ["rollback"],
        "stop_conditions": [], "votes": [],
        "decision": {"threshold": "2/3", "result": "approved"}}))
    common = ["--debater", "scripted", "--position", "roll back", "--sandbox", str(sandbox),
              "--patches", str(patches), "--kv-db", str(tmp_path / "flags.db"),
              "--kv-table", "flags", "--view-change-timeout", "1"]
    nodes = [Node(member, tmp_path, base + 4 + member,
                  common + (["--plan", str(plan)] if member == 0 else []))
             for member in range(4)]
    yield tmp_path, nodes
    for node in nodes:
        node.stop()


async def _wait_up(node: Node) -> None:
    while await scrape(node.metrics_port) is None:
        assert node.alive(), f"member {node.member} exited:\n{node.log()[-3000:]}"
        await trio.sleep(0.05)


async def _task_status(root: Path, task_id: str) -> dict:
    done = await trio.to_thread.run_sync(lambda: bftd(
        "task", "status", task_id, "--committee", str(root / "committee.json"),
        "--key", str(root / "agent-2.key"), "--json"))
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout) if done.returncode == 0 else {}


async def test_kill9_of_the_submitter_between_effect_and_result_next_primary_completes_once(
        shared):
    root, nodes = shared
    nodes[0].env[FAILPOINT_ENV] = "commit.after_effect:1"
    with trio.fail_after(TEST_TIMEOUT):
        for node in nodes:
            node.start()
        for node in nodes:
            await _wait_up(node)
        opened = await trio.to_thread.run_sync(lambda: bftd(
            "task", "open", "--question", "roll back release 2.3?", "--round-ms", "30000",
            "--committee", str(root / "committee.json"), "--key", str(root / "agent-2.key"),
            "--json"))
        assert opened.returncode == 0, opened.stderr
        task_id = json.loads(opened.stdout)["task_id"]
        # Member 0 applies step 1 (the file patch) and dies before anyone learns of it.
        while nodes[0].alive():
            await trio.sleep(0.05)
        assert nodes[0].process.returncode == -9
        assert (root / "sandbox" / "deploy" / "api.yaml").read_bytes() == NEW_CONTENT
        while True:
            status = await _task_status(root, task_id)
            commit = status.get("commit")
            if commit is not None and commit["result"] is not None:
                break
            await trio.sleep(0.2)
    assert commit["result"] == "committed"
    assert [s["submitter"] for s in commit["submitters"]] == ["agent-0", "agent-1"]
    assert [s["status"] for s in commit["steps"]][1:] == ["already_applied", "applied"]
    # Exactly one effect per resource: the file holds the new content, written once (one
    # intent marker under its key); the database has the row and one applied-key record.
    assert (root / "sandbox" / "deploy" / "api.yaml").read_bytes() == NEW_CONTENT
    assert len(list((root / "sandbox" / STATE_DIR / "file").glob("*.intent"))) == 1
    with sqlite3.connect(root / "flags.db") as db:
        assert db.execute("SELECT value FROM flags").fetchall() == [(b"off",)]
        assert db.execute("SELECT count(*) FROM bftd_applied_keys").fetchone() == (1,)
    # The audit trail over every member's log: no duplicate commit; the WALs verify.
    logs = [str(root / f"data-{m}" / AUDIT_FILE_NAME) for m in range(4)
            if (root / f"data-{m}" / AUDIT_FILE_NAME).exists()]
    report = bftd("audit", "report", *logs, "--json")
    assert report.returncode == 0, report.stderr
    figures = json.loads(report.stdout)
    assert figures["duplicate_commits"] == 0
    for member in (0, 1):
        verified = bftd("audit", "verify", str(root / f"data-{member}" / WAL_FILE_NAME),
                        "--committee", str(root / "committee.json"), "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    # Member 0's WAL holds the intent only: it died before recording the attempt.
    wal0 = json.loads(bftd("audit", "verify", str(root / "data-0" / WAL_FILE_NAME),
                           "--committee", str(root / "committee.json"), "--json").stdout)
    assert wal0["counts"]["intent"] == 1 and wal0["counts"]["result"] == 0

    # A torn tail (a write cut short by a crash) is cut off when member 0 opens its WAL
    # again; verify refuses it before that, naming the byte offset, and changes nothing.
    wal_path = root / "data-0" / WAL_FILE_NAME
    intact = wal_path.read_bytes()
    wal_path.write_bytes(intact + b"\x00\x00\x01\x00torn")
    refused = bftd("audit", "verify", str(wal_path), "--committee",
                   str(root / "committee.json"))
    assert refused.returncode == 1 and f"offset {len(intact)}" in refused.stdout + refused.stderr
    assert wal_path.read_bytes() == intact + b"\x00\x00\x01\x00torn"
    nodes[0].env.pop(FAILPOINT_ENV)
    with trio.fail_after(TEST_TIMEOUT):
        nodes[0].start()
        await _wait_up(nodes[0])
    assert wal_path.read_bytes() == intact
    recovered = [line for line in nodes[0].log().splitlines()
                 if "commit WAL recovered" in line]
    assert recovered and '"truncated_bytes":8' in recovered[-1], nodes[0].log()[-2000:]


def test_a_node_refuses_a_damaged_commit_wal_with_its_offset_and_changes_nothing(tmp_path):
    from bftdeliberate.commit.wal import CommitWal
    from bftdeliberate.committee import load_committee
    from bftdeliberate.crypto import load_private_key

    subprocess.run([*bftd_argv(), "keys", "init", "--n", "4", "--dir", str(tmp_path),
                    "--clients", "1", "--base-port", str(free_port_range(4))], check=True,
                   capture_output=True)
    committee = load_committee(tmp_path / "committee.json")
    wal_path = tmp_path / "data-0" / WAL_FILE_NAME
    wal_path.parent.mkdir()
    with CommitWal.open(wal_path, committee_digest=committee.digest, signer=0,
                        key=load_private_key(tmp_path / "agent-0.key")) as wal:
        wal.intent("c-1", view=0)
        wal.result("c-1", result="committed")
    damaged = bytearray(wal_path.read_bytes())
    damaged[100] ^= 0xFF  # inside the first record: valid records follow
    wal_path.write_bytes(bytes(damaged))
    (tmp_path / "sandbox").mkdir()
    done = bftd("node", "run", "--id", "0", "--committee", str(tmp_path / "committee.json"),
                "--key", str(tmp_path / "agent-0.key"), "--data", str(tmp_path / "data-0"),
                "--app", "ledger", "--sandbox", str(tmp_path / "sandbox"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "damaged at offset" in lines[0] and str(wal_path) in lines[0]
    assert wal_path.read_bytes() == bytes(damaged)  # nothing overwritten
