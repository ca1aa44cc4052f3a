"""``bftd task open|status|resolve`` against a committee running in this process (4 members
over TCP on their committee addresses, each with the ledger and a scripted agent), and the
input checks of ``task``, ``node run`` and ``cluster up`` that refuse bad input with one line
and exit 2 before anything is sent or written."""

from __future__ import annotations

import functools
import json

import pytest
import trio
from processes import free_port_range

from bftdeliberate.cli import main
from bftdeliberate.committee import load_committee
from bftdeliberate.crypto import load_private_key
from bftdeliberate.deliberation.ledger import Rejected
from bftdeliberate.deliberation.ops import OpenTask, Status
from bftdeliberate.deliberation.scripts import Script, ScriptedDebater
from bftdeliberate.demo import open_local_committee

PLAN = ({"step": "read", "target": "file:deploy/api.yaml"},
        {"step": "command", "cmd": "kubectl rollout undo deployment/api", "timeout_ms": 60000})
LIMIT = 30


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def run_in_thread(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI (which runs trio itself) from inside a trio test."""
    code = await trio.to_thread.run_sync(functools.partial(main, list(argv)))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> bool:
    return code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.fixture
def keystore(tmp_path, capsys):
    directory = tmp_path / "keys"
    assert run(capsys, "keys", "init", "--n", "4", "--dir", str(directory), "--clients", "1",
               "--base-port", str(free_port_range(4)))[0] == 0
    return directory


class PlansOnlyForRollbacks:
    """Member 0's debater: proposes its plan when the question is about a roll-back, nothing
    otherwise (so such a debate ends without proposals and escalates to a human)."""

    def __init__(self, name: str) -> None:
        self.with_plan = ScriptedDebater(name, Script(position="roll back", plan=PLAN,
                                                      evidence=("ref:a",)))
        self.without = ScriptedDebater(name, Script(position="roll back", evidence=("ref:a",)))

    def _pick(self, view):
        return self.with_plan if "roll back" in view.question else self.without

    async def contribute(self, view):
        return await self._pick(view).contribute(view)

    async def vote(self, view, proposal):
        return await self._pick(view).vote(view, proposal)


def debaters(names):
    return [PlansOnlyForRollbacks(names[0])] + [
        ScriptedDebater(name, Script(position="roll back", evidence=(f"ref:{name}",)))
        for name in names[1:]]


def committee_files(keystore):
    committee = load_committee(keystore / "committee.json")
    keys = [load_private_key(keystore / f"agent-{i}.key") for i in range(committee.n)]
    return committee, keys


async def test_task_open_status_and_resolve_against_a_running_committee(keystore, capsys):
    committee, keys = committee_files(keystore)
    names = [m.name for m in committee.members]
    common = ["--committee", str(keystore / "committee.json")]
    member0 = [*common, "--key", str(keystore / "agent-0.key")]
    with trio.fail_after(LIMIT):
        async with open_local_committee(committee, keys, debaters(names),
                                        committee_addresses=True) as local:
            # Opened by member 0's operator while member 0's own agent runs (same name).
            code, out, err = await run_in_thread(
                capsys, "task", "open", "--question", "roll back release 2.3?", "--context",
                "errors doubled", "--evidence", "incident:INC-1", "dashboard:errors",
                "--max-rounds", "2", *member0, "--json")
            assert code == 0, err
            opened = json.loads(out)
            task_id = opened["task_id"]
            assert opened["signer"] == "agent-0"
            await local.wait_all(lambda m: m.ledger.decision(task_id) is not None
                                 and m.agent.idle)
            code, out, err = await run_in_thread(capsys, "task", "status", task_id, *member0,
                                                 "--json")
            assert code == 0, err
            status = json.loads(out)
            assert status["task_id"] == task_id and status["decision"] == "approved"
            assert status["evidence"] == ["incident:INC-1", "dashboard:errors"]
            assert status["exit_reason"] in ("threshold_reached", "positions_stable")
            closed = [r for r in status["rounds"] if r["closed_ms"] is not None]
            assert closed and all(r["contributions"] for r in closed)
            assert {c["agent"] for c in closed[0]["contributions"]} == set(names)
            (proposal,) = status["proposals"]
            assert len(proposal["approvals"]) >= 3
            assert all(v["agent"] in names for v in proposal["votes"])  # the signers
            assert status["tokens"]["used"] > 0 and "groupthink" in status
            # The same read with an authorised client's key, rendered for people.
            code, out, err = await run_in_thread(capsys, "task", "status", task_id, *common,
                                                 "--key", str(keystore / "client-0.key"))
            assert code == 0, err
            assert "decision: approved" in out and "round 0" in out

            # No plan: the debate ends without proposals and waits for a human.
            code, out, err = await run_in_thread(
                capsys, "task", "open", "--question", "adopt the new retry policy?",
                "--max-rounds", "2", *member0, "--json")
            assert code == 0, err
            other = json.loads(out)["task_id"]
            await local.wait_all(lambda m: m.ledger.decision(other) is not None
                                 and m.agent.idle)
            assert local.members[0].ledger.decision(other) == "escalated"
            member1 = [*common, "--key", str(keystore / "agent-1.key")]
            code, _, err = await run_in_thread(capsys, "task", "resolve", other, "--decision",
                                               "approve", *member1)
            assert one_line_error(code, err) and "--proposal" in err
            code, out, err = await run_in_thread(capsys, "task", "resolve", other, "--decision",
                                                 "reject", "--notes", "not now", *member1)
            assert code == 0, err
            assert f"task {other} resolved by agent-1: rejected" in out
            await local.wait_all(lambda m: m.ledger.decision(other) == "rejected")
            status = local.members[2].ledger.task_status(other)
            assert status["resolved_by"] == "agent-1"
            # A rejection by the ledger: exit 1 with its reason.
            code, _, err = await run_in_thread(capsys, "task", "resolve", other, "--decision",
                                               "reject", *member1)
            assert code == 1 and "not_escalated" in err and len(err.strip().splitlines()) == 1
            code, _, err = await run_in_thread(capsys, "task", "status", "t-999-0", *member1)
            assert code == 1 and "unknown_task" in err


async def test_task_status_reads_a_round_too_large_for_one_reply_agent_by_agent(
        keystore, capsys):
    committee, keys = committee_files(keystore)
    names = [m.name for m in committee.members]
    bulky = [ScriptedDebater(name, Script(
        position="roll back", argument="a" * 4000,
        evidence=tuple(f"ref:{name}:{i}:" + "e" * 480 for i in range(32))))
        for name in names]
    with trio.fail_after(LIMIT):
        async with open_local_committee(committee, keys, bulky,
                                        committee_addresses=True) as local:
            opened = await local.members[0].agent.request(OpenTask(
                question="a long debate", max_rounds=1, vote_ms=10))
            task_id = opened["task_id"]
            await local.wait_all(lambda m: m.ledger.decision(task_id) is not None)
            with pytest.raises(Rejected, match="result_too_large"):  # one read cannot hold it
                local.members[0].ledger._status_result(Status(task_id=task_id, round=0))
            code, out, err = await run_in_thread(
                capsys, "task", "status", task_id, "--committee",
                str(keystore / "committee.json"), "--key", str(keystore / "agent-1.key"),
                "--json")
    assert code == 0, err
    (round0,) = json.loads(out)["rounds"]
    assert sorted(c["agent"] for c in round0["contributions"]) == sorted(names)
    assert all(len(c["evidence"]) == 32 for c in round0["contributions"])


@pytest.mark.parametrize("argv, field", [
    (["--question", ""], "--question"),
    (["--question", "q", "--max-rounds", "0"], "--max-rounds"),
    (["--question", "q", "--budget", "0"], "--budget"),
    (["--question", "q", "--agent-budget", "-5"], "--agent-budget"),
    (["--question", "q", "--round-ms", "1"], "--round-ms"),
    (["--question", "q", "--evidence", "ok", "bad\nref"], "--evidence"),
    (["--question", "q", "--threshold", "2"], "--threshold"),
    (["--question", "q", "--threshold", "5"], "--threshold"),
    (["--question", "q", "--judge", "nobody"], "--judge"),
    (["--question", "q" * 5000], "--question"),
    (["--question", "q", "--max-rounds", "x"], "--max-rounds"),
])
def test_task_open_bad_input_is_one_line_naming_the_field_and_sends_nothing(
        keystore, capsys, argv, field):
    # Nothing listens on the committee's addresses: had anything been sent, the command
    # would time out with exit 1 instead of refusing at once with exit 2.
    code, out, err = run(capsys, "task", "open", *argv, "--committee",
                         str(keystore / "committee.json"), "--key",
                         str(keystore / "agent-0.key"), "--timeout", "0.2")
    assert one_line_error(code, err), err
    assert field in err and out == ""


@pytest.mark.parametrize("argv, expected", [
    (["open", "--question", "q", "--key", "client-0.key"], "not the key of a member"),
    (["open", "--question", "q", "--key", "absent.key"], "absent.key"),
    (["status", "bad id", "--key", "agent-0.key"], "ID"),
    (["resolve", "t-1-0", "--decision", "maybe", "--key", "agent-0.key"], "--decision"),
    (["resolve", "t-1-0", "--decision", "approve", "--key", "agent-0.key"], "--proposal"),
])
def test_task_commands_refuse_bad_keys_and_ids_with_one_line(keystore, capsys, argv, expected):
    key = argv.index("--key") + 1
    argv[key] = str(keystore / argv[key])
    code, _, err = run(capsys, "task", *argv, "--committee", str(keystore / "committee.json"),
                       "--timeout", "0.2")
    assert one_line_error(code, err), err
    assert expected in err


async def test_task_commands_say_when_the_committee_runs_the_kv_app(keystore, capsys):
    from contextlib import AsyncExitStack

    from bftdeliberate.committee import parse_address
    from bftdeliberate.peer import PeerConfig, open_peer

    committee, keys = committee_files(keystore)
    with trio.fail_after(LIMIT):
        async with AsyncExitStack() as stack:
            for i, member in enumerate(committee.members):
                await stack.enter_async_context(open_peer(PeerConfig(
                    committee, i, keys[i], listen=parse_address(member.address))))
            code, _, err = await run_in_thread(
                capsys, "task", "open", "--question", "q", "--committee",
                str(keystore / "committee.json"), "--key", str(keystore / "agent-0.key"))
    assert code == 1 and "--app ledger" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, expected", [
    (["--app", "kv", "--debater", "scripted"], "needs --app ledger"),
    (["--debater", "llm"], "--llm-base-url and --model"),
    (["--debater", "llm", "--llm-base-url", "ftp://x", "--model", "m"], "base_url"),
    (["--position", "yes"], "--debater scripted"),
    (["--debater", "scripted", "--behaviour", "sneaky"], "--behaviour"),
    (["--debater", "scripted", "--plan", "absent-proposal.json"], "absent-proposal.json"),
    (["--model", "m"], "--debater llm"),
    (["--debater", "psychic"], "--debater"),
    (["--app", "kv", "--sandbox", "."], "need --app ledger"),
    (["--app", "ledger", "--sandbox", "no-such-dir"], "no-such-dir: not a directory"),
    (["--app", "ledger", "--kv-db", "x.db"], "--kv-table"),
    (["--app", "ledger", "--kv-table", "flags"], "need --sandbox or --kv-db"),
    (["--app", "ledger", "--kv-db", "x.db", "--allow-command", "make", "--kv-table", "t"],
     "--allow-command needs --sandbox"),
    (["--app", "ledger", "--sandbox", ".", "--patches", "no-such-patches"], "no-such-patches"),
])
def test_node_run_and_cluster_up_refuse_bad_agent_options_before_writing(
        keystore, tmp_path, capsys, extra, expected):
    before = sorted(p.name for p in keystore.iterdir())
    code, _, err = run(capsys, "node", "run", "--id", "1", "--committee",
                       str(keystore / "committee.json"), "--key", str(keystore / "agent-1.key"),
                       "--data", str(keystore / "data"), *extra)
    assert one_line_error(code, err), err
    assert expected in err
    assert sorted(p.name for p in keystore.iterdir()) == before
    fresh = tmp_path / "fresh-cluster"
    code, _, err = run(capsys, "cluster", "up", "--n", "4", "--dir", str(fresh), *extra)
    assert one_line_error(code, err), err
    assert not fresh.exists()  # no keystore written


def test_schema_writes_the_ledger_operation_schema(tmp_path, capsys):
    code, out, _ = run(capsys, "schema", "--out", str(tmp_path / "schemas"))
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "schemas").iterdir())
    assert names == ["audit-event.schema.json", "commit-record.schema.json",
                     "commit-result.schema.json", "execution-intent.schema.json",
                     "ledger-operation.schema.json", "proposal.schema.json",
                     "scenario.schema.json", "step-attempt.schema.json"]
    schema = json.loads((tmp_path / "schemas" / "ledger-operation.schema.json").read_text())
    assert schema["$id"].endswith("ledger-operation-v1.json")
    assert "open_task" in json.dumps(schema) and "ledger-operation.schema.json" in out


async def test_cluster_up_with_scripted_agents_decides_a_task_opened_with_the_cli(tmp_path):
    """The whole user path with processes: ``cluster up --debater scripted`` passes the app
    and the agent on to every ``node run``; ``task open`` starts a debate the agents decide."""
    import os
    import signal
    import subprocess

    from processes import bftd_argv, scrape

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "proposal_id": "p-1", "task_id": "t-x", "plan": list(PLAN), "risks": ["rollback"],
        "stop_conditions": [], "votes": [], "decision": {"threshold": "3/4",
                                                          "result": "escalated"}}))
    base = free_port_range(8)
    directory = tmp_path / "cluster"
    cluster = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
        [*bftd_argv(), "cluster", "up", "--n", "4", "--dir", str(directory), "--base-port",
         str(base), "--metrics-base-port", str(base + 4), "--debater", "scripted",
         "--position", "roll back", "--plan", str(plan)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    committee = ["--committee", str(directory / "committee.json"), "--key",
                 str(directory / "agent-1.key")]
    try:
        with trio.fail_after(90):
            for member in range(4):
                while await scrape(base + 4 + member) is None:
                    assert cluster.poll() is None, cluster.stdout.read().decode()
                    await trio.sleep(0.05)
            opened = await trio.run_process(
                [*bftd_argv(), "task", "open", "--question", "roll back release 2.3?",
                 *committee, "--json"], capture_stdout=True, capture_stderr=True, check=False)
            assert opened.returncode == 0, opened.stderr.decode()
            task_id = json.loads(opened.stdout)["task_id"]
            while True:  # processes: nothing to wait on but their answers
                status = await trio.run_process(
                    [*bftd_argv(), "task", "status", task_id, *committee, "--json"],
                    capture_stdout=True, capture_stderr=True, check=False)
                assert status.returncode == 0, status.stderr.decode()
                task = json.loads(status.stdout)
                if task["decision"] is not None:
                    break
                await trio.sleep(0.1)
            cluster.send_signal(signal.SIGINT)
            code = await trio.to_thread.run_sync(cluster.wait)
        output = cluster.stdout.read().decode()
        assert code == 0, output
        assert "app ledger, debater scripted" in output
        assert task["decision"] == "approved", task
        (proposal,) = task["proposals"]
        assert proposal["author"] == "agent-0" and [s["step"] for s in proposal["plan"]] == [
            "read", "command"]
    finally:
        if cluster.poll() is None:
            os.kill(cluster.pid, signal.SIGKILL)
            cluster.wait()
