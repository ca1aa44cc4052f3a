"""One committee member with your own agent (see the README's "Embedding")."""
import sys

import trio

from bftdeliberate.agents.loop import AgentLoop
from bftdeliberate.committee import load_committee
from bftdeliberate.crypto import load_private_key
from bftdeliberate.deliberation.ledger import Ledger
from bftdeliberate.deliberation.ops import CastVote, Contribute, OpenTask, ProposalDraft
from bftdeliberate.peer import PeerConfig, open_client, open_peer

PLAN = ({"step": "read", "target": "file:deploy/api.yaml"},
        {"step": "patch", "target": "file:deploy/api.yaml", "patch_id": "api-2.2"})


class MyAgent:  # the Debater protocol: put your model call here
    async def contribute(self, view):  # the task, the transcript so far, your token budget
        draft = ProposalDraft(plan=PLAN, risks=("rollback",)) if view.round == 0 else None
        return Contribute(task_id=view.task_id, round=view.round, position="roll back",
                          evidence=(f"log:{view.task_id}",), confidence=70, tokens=40,
                          proposal=draft)

    async def vote(self, view, proposal):  # a revealed proposal; None abstains from voting
        return CastVote(task_id=view.task_id, proposal_id=proposal.proposal_id,
                        decision="approve", notes="the plan has a rollback")


async def member(keystore: str, i: int, question: str | None = None,
                 task_status=trio.TASK_STATUS_IGNORED) -> None:
    committee = load_committee(f"{keystore}/committee.json")
    key = load_private_key(f"{keystore}/agent-{i}.key")
    name, ledger = committee.member(i).name, Ledger(committee)  # the replicated debate ledger
    agent = AgentLoop(ledger, name, MyAgent(), rank=i, key=key)
    config = PeerConfig(committee, i, key, app=ledger, on_execute=agent.on_execute,
                        data_dir=f"{keystore}/data-{i}")
    async with open_peer(config), open_client(committee, name, key) as client, \
            trio.open_nursery() as nursery:
        await nursery.start(agent.run, client)  # answers its duties, signed, through PBFT
        opened = await agent.request(OpenTask(question=question)) if question else None
        task_status.started(opened)  # {"ok": True, "task_id": ...} when it opened a task


if __name__ == "__main__":  # python examples/embed_member.py keys 0 "roll back release 2.3?"
    trio.run(member, sys.argv[1], int(sys.argv[2]), *sys.argv[3:4])
