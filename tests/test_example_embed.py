"""The README's embedding example (examples/embed_member.py) runs: four members, each with
its own agent, over TCP on 127.0.0.1, debate and approve a task opened by a client. The
README shows the file verbatim."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import trio
from processes import free_port_range

from bftdeliberate.committee import init_keystore
from bftdeliberate.crypto import load_private_key
from bftdeliberate.deliberation.ops import Status, encode_op
from bftdeliberate.peer import open_client
from bftdeliberate.wire import cbor

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "embed_member.py"
LIMIT = 60
#: Between two ordered status reads while waiting for the decision.
POLL_S = 0.1


def load_example():
    spec = importlib.util.spec_from_file_location("embed_member", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_shows_the_example_verbatim():
    source = EXAMPLE.read_text()
    assert source.split("\n", 1)[1].strip() in (ROOT / "README.md").read_text()


async def test_four_embedded_members_debate_and_decide(tmp_path):
    example = load_example()
    committee = init_keystore(tmp_path, 4, clients=1, base_port=free_port_range(4))
    key = load_private_key(tmp_path / "client-0.key")
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            for member in (1, 2, 3):
                await nursery.start(example.member, str(tmp_path), member)
            opened = await nursery.start(example.member, str(tmp_path), 0,
                                         "roll back release 2.3?")
            assert opened["ok"], opened
            # A plain client may read: ordered status reads until the task is decided.
            async with open_client(committee, "client-0", key) as client:
                while True:
                    status = cbor.decode(await client.call(encode_op(Status(
                        task_id=opened["task_id"])), timeout=20))
                    if status["task"]["decision"] is not None:
                        break
                    await trio.sleep(POLL_S)
            nursery.cancel_scope.cancel()
    task = status["task"]
    assert task["decision"] == "approved"
    assert task["exit_reason"] in ("threshold_reached", "positions_stable")
    spent = task["tokens"]["by_agent"]  # 40 per contribution; every member spoke in round 0
    assert sorted(spent) == [f"agent-{i}" for i in range(4)]
    assert all(tokens >= 40 and tokens % 40 == 0 for tokens in spent.values())
    decided = next(p for p in task["proposals"] if p["proposal_id"] == task["decided_proposal"])
    assert len(decided["approvals"]) >= committee.quorum
