"""The agent loop inside real peers: 4 members over TCP on 127.0.0.1 in this process, each
with the deliberation ledger and its agent. Nothing here waits by sleeping: tests wait on
executions (``AgentLoop.wait_until``) under ``trio.fail_after``."""

from __future__ import annotations

import json

import pytest
import trio
from conftest import make_genesis

from bftdeliberate.agents.loop import AgentConfig, AgentLoop
from bftdeliberate.deliberation.ledger import Ledger
from bftdeliberate.deliberation.ops import Contribute, OpenTask, Tick, encode_op
from bftdeliberate.deliberation.proposal import Proposal
from bftdeliberate.deliberation.scripts import Script, ScriptedDebater
from bftdeliberate.demo import open_local_committee
from bftdeliberate.errors import LocalError
from bftdeliberate.pbft.app import ExecutionContext

GENESIS = make_genesis(4, clients=1)
NAMES = [m.name for m in GENESIS.committee.members]
PLAN = ({"step": "read", "target": "file:deploy/api.yaml"},
        {"step": "test", "cmd": "make test", "timeout_ms": 60000})
#: Generous: a round in these tests closes on contributions or on an explicit short round_ms.
LIMIT = 20


def honest(index: int, **script) -> ScriptedDebater:
    fields = {"position": "roll back", "evidence": (f"ref:{index}",), "tokens": 10}
    if index == 0:
        fields.update(plan=PLAN, risks=("rollback",))
    return ScriptedDebater(NAMES[index], Script(**{**fields, **script}))


def task(**fields) -> OpenTask:
    return OpenTask(**{"question": "roll back release 2.3?", "round_ms": 30_000,
                       "vote_ms": 30_000, **fields})


async def open_and_wait(local, **fields) -> str:
    result = await local.members[0].agent.request(task(**fields))
    assert result is not None and result["ok"], result
    task_id = result["task_id"]
    await local.wait_all(lambda m: m.ledger.decision(task_id) is not None)
    return task_id


async def test_agents_alone_debate_and_approve_the_plan():
    debaters = [honest(i) for i in range(4)]
    with trio.fail_after(LIMIT):
        async with open_local_committee(GENESIS.committee, GENESIS.member_keys,
                                        debaters) as local:
            task_id = await open_and_wait(local, max_rounds=3)
            await local.wait_all(lambda m: m.agent.idle)
            statuses = {json.dumps(m.ledger.task_status(task_id), sort_keys=True)
                        for m in local.members}
            ledger = local.members[1].ledger
            status = ledger.task_status(task_id)
            document = ledger.proposal_document(task_id)
            stats = [m.agent.stats for m in local.members]
    assert len(statuses) == 1  # every member holds the same transcript and decision
    assert status["decision"] == "approved"
    assert status["exit_reason"] in ("threshold_reached", "positions_stable")
    assert {c["agent"] for c in status["rounds"][0]["contributions"]} == set(NAMES)
    assert isinstance(document, Proposal) and document.decision.result == "approved"
    assert [step.step for step in document.plan] == ["read", "test"]
    assert document.approvals >= 3 and document.rejections == 0
    # Each duty was answered exactly once: no duplicate contribution or vote reached the ledger.
    assert ledger.rejection_counts.get("duplicate_contribution", 0) == 0
    assert ledger.rejection_counts.get("duplicate_vote", 0) == 0
    assert all(s.contributions >= 1 and s.votes == 1 for s in stats)
    # Calls complete on the member's own replica executing them (no need for f+1 replies).
    assert sum(s.completed_locally for s in stats) >= 1


class Raising:
    """A broken debater: every call raises."""

    async def contribute(self, view):
        raise RuntimeError("model exploded")

    async def vote(self, view, proposal):
        raise RuntimeError("model exploded")


class Garbage:
    """Answers a contribution with garbage (not an operation, then another round's); votes
    honestly."""

    def __init__(self, inner: ScriptedDebater) -> None:
        self.inner = inner
        self.calls = 0

    async def contribute(self, view):
        self.calls += 1
        if self.calls == 1:
            return {"position": "not an operation"}
        return Contribute(task_id=view.task_id, round=view.round + 1, position="wrong round")

    async def vote(self, view, proposal):
        return await self.inner.vote(view, proposal)


class Hanging:
    """Never answers a contribution (a model that hangs); votes honestly."""

    def __init__(self, inner: ScriptedDebater) -> None:
        self.inner = inner

    async def contribute(self, view):
        await trio.sleep_forever()

    async def vote(self, view, proposal):
        return await self.inner.vote(view, proposal)


async def test_a_debater_that_raises_answers_garbage_or_hangs_abstains_and_the_round_closes():
    debaters = [honest(0), Raising(), Garbage(honest(2)), Hanging(honest(3))]
    config = AgentConfig(debater_timeout=0.3)
    with trio.fail_after(LIMIT):
        async with open_local_committee(GENESIS.committee, GENESIS.member_keys, debaters,
                                        agent_config=config) as local:
            task_id = await open_and_wait(local, max_rounds=1)
            ledger = local.members[0].ledger
            status = ledger.task_status(task_id)
            failures = [m.agent.stats.debater_failures for m in local.members]
    round0 = status["rounds"][0]
    assert round0["closed_ms"] is not None
    by_agent = {c["agent"]: c for c in round0["contributions"]}
    assert set(by_agent) == set(NAMES)  # the round closed on its contributions, not on time
    assert by_agent[NAMES[0]]["position"] == "roll back"
    assert by_agent[NAMES[1]]["position"] is None
    assert "debater raised RuntimeError: model exploded" in by_agent[NAMES[1]]["argument"]
    assert by_agent[NAMES[2]]["position"] is None
    assert "invalid debater answer" in by_agent[NAMES[2]]["argument"]
    assert by_agent[NAMES[3]]["position"] is None
    assert "timed out" in by_agent[NAMES[3]]["argument"]
    assert failures[1]["raised"] == 2 and failures[2]["invalid"] == 1
    assert failures[3]["timeout"] == 1
    # The three members with a working vote approve: the task is decided by them.
    assert status["exit_reason"] == "max_rounds" and status["decision"] == "approved"
    votes = {v["agent"]: v["decision"] for v in status["proposals"][0]["votes"]}
    assert votes == {NAMES[0]: "approve", NAMES[2]: "approve", NAMES[3]: "approve"}


async def test_a_member_without_debater_orders_and_ticks_close_the_round_it_is_silent_in():
    debaters = [honest(0), honest(1), honest(2), None]
    with trio.fail_after(LIMIT):
        async with open_local_committee(GENESIS.committee, GENESIS.member_keys,
                                        debaters) as local:
            task_id = await open_and_wait(local, max_rounds=1, round_ms=200)
            silent = local.members[3]
            status = silent.ledger.task_status(task_id)
            ticks = [m.agent.stats.ticks for m in local.members]
            assert silent.peer.replica.last_executed > 0
            assert silent.agent.stats.asked == 0
    round0 = status["rounds"][0]
    # Member 3 never contributed; agreed time closed the round once someone ticked.
    assert sorted(round0["participants"]) == NAMES[:3]
    assert round0["closed_ms"] - round0["opened_ms"] >= 200
    assert status["exit_reason"] == "max_rounds" and status["decision"] == "approved"
    assert sum(ticks) >= 1
    assert ticks[0] >= 1  # rank 0 ticks first; the others are staggered behind it


def test_a_tick_is_due_past_the_deadline_plus_margins_and_backs_off_while_it_stays():
    ledger = Ledger(GENESIS.committee)
    ledger.apply(encode_op(task(round_ms=10, vote_ms=10, deadline_ms=10)),
                 ExecutionContext(seq=1, view=0, timestamp_ms=1_000, client=NAMES[0],
                                  request_timestamp=1, index=0))
    assert ledger.next_deadline_ms() == 1_010
    config = AgentConfig(tick_margin_ms=50, tick_stagger_ms=100, tick_retry=0.1,
                         tick_retry_max=0.4)
    loop = AgentLoop(ledger, NAMES[2], None, config=config, rank=2)
    assert loop._tick_due_at() == pytest.approx(1.010 + 0.050 + 0.200)
    # Ticked for this deadline and it is still pending (the primary's clock lags): back off.
    loop._ticked_deadline, loop._ticked_at = 1_010, 5.0
    assert loop._tick_due_at() == pytest.approx(5.1)
    loop._tick_pending = True  # one tick at a time
    assert loop._tick_due_at() is None


def test_the_loop_refuses_a_non_member_and_requests_while_stopped():
    ledger = Ledger(GENESIS.committee)
    with pytest.raises(LocalError, match="not a member"):
        AgentLoop(ledger, "client-0", None)
    loop = AgentLoop(ledger, NAMES[0], None)
    with pytest.raises(LocalError, match="not running"):
        trio.run(loop.request, Tick())
