"""A whole committee in this process: every member a real peer over trio TCP on 127.0.0.1.

Used by ``bftd demo``, the debate benchmark and the tests. Each member runs in its own task
(its peer, its agent's client, its agent loop and, with effect handlers, its commit
submitter), so one member can be stopped while the others go on (:meth:`LocalMember.crash`):
its peer closes its links, its agent and submitter stop where they are.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bftdeliberate.agents.loop import AgentConfig, AgentLoop
from bftdeliberate.agents.submitter import SubmitterLoop, open_submitter
from bftdeliberate.commit.executor import RetryPolicy
from bftdeliberate.commit.handlers.base import HandlerRegistry
from bftdeliberate.committee import Committee, parse_address
from bftdeliberate.crypto import PrivateKey
from bftdeliberate.deliberation.debater import Debater
from bftdeliberate.deliberation.ledger import Ledger
from bftdeliberate.errors import LocalError
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.peer import (
    CommitteeClient,
    Peer,
    PeerConfig,
    on_execute_all,
    open_client,
    open_peer,
)

__all__ = ["LocalCommittee", "LocalMember", "open_local_committee"]


@dataclass(slots=True, eq=False)
class LocalMember:
    """One in-process member: its peer, its ledger, its agent loop and its submitter."""

    id: int
    name: str
    ledger: Ledger
    agent: AgentLoop
    #: Runs an agent loop (False: an operator signs as this member instead).
    running: bool
    #: The member's commit-layer submitter (None without handlers).
    submitter: SubmitterLoop | None = None
    peer: Peer = field(default=None)  # type: ignore[assignment]  # set once it is up
    #: The client the agent signs with (None when ``running`` is False).
    client: CommitteeClient | None = None
    #: False once :meth:`crash` stopped it.
    alive: bool = True
    _scope: trio.CancelScope | None = None

    def crash(self) -> None:
        """Stop this member now: peer, client, agent and submitter (a call in a worker
        thread is abandoned). Safe to call from its own tasks."""
        self.alive = False
        if self._scope is not None:
            self._scope.cancel()


@dataclass(slots=True)
class LocalCommittee:
    committee: Committee
    members: list[LocalMember]
    addresses: dict[int, tuple[str, int]] = field(default_factory=dict)

    async def wait_all(self, predicate: Callable[[LocalMember], bool],
                       members: Sequence[int] | None = None) -> None:
        """Return once ``predicate(member)`` holds at every given member (default all),
        re-checked after each of its executions."""
        for member in (self.members if members is None else
                       [self.members[i] for i in members]):
            await member.agent.wait_until(lambda m=member: predicate(m))


@asynccontextmanager
async def open_local_committee(
    committee: Committee, keys: Sequence[PrivateKey], debaters: Sequence[Debater | None], *,
    data_root: Path | None = None, agent_config: AgentConfig | None = None,
    replica_config: ReplicaConfig | None = None, run_agents: Sequence[bool] | None = None,
    on_submit: Callable[[int, Any], None] | None = None, committee_addresses: bool = False,
    handlers: Callable[[int], HandlerRegistry] | None = None,
    commit_policy: RetryPolicy | None = None, commit_stall_ms: int | None = None,
) -> AsyncIterator[LocalCommittee]:
    """Every member of ``committee`` in this process over TCP on 127.0.0.1 (ephemeral ports),
    each with the deliberation ledger and an agent loop around ``debaters[i]`` (None: that
    member only ticks). ``run_agents[i]`` False: member i runs no agent loop at all (an
    operator signs as it instead). ``data_root``: protocol logs in ``data_root/data-I``
    (None: in memory). ``committee_addresses``: listen on the members' committee addresses
    (so that other processes, e.g. ``bftd task``, reach them) instead of ephemeral ports.
    ``handlers(i)``: member i's effect handlers; each running member then also runs a commit
    submitter (``agents/submitter.py``) ordering through its agent, with its WAL and audit log
    in its data directory (without ``data_root``: a temporary directory kept while open)."""
    n = committee.n
    if len(keys) != n or len(debaters) != n:
        raise LocalError(f"need {n} keys and {n} debaters")
    run_agents = list(run_agents) if run_agents is not None else [True] * n
    listeners = []
    for member in committee.members:
        host, port = parse_address(member.address) if committee_addresses else ("127.0.0.1", 0)
        listeners.append((await trio.open_tcp_listeners(port, host=host))[0])
    addresses = {i: tuple(listener.socket.getsockname()[:2])
                 for i, listener in enumerate(listeners)}
    async with AsyncExitStack() as stack:
        volatile = handlers is not None and data_root is None
        if volatile:
            data_root = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="bftd-commit-")))
        members: list[LocalMember] = []
        configs: list[PeerConfig] = []
        for i, member in enumerate(committee.members):
            ledger = Ledger(committee)
            submitted = None if on_submit is None else (lambda op, i=i: on_submit(i, op))
            agent = AgentLoop(ledger, member.name, debaters[i], config=agent_config, rank=i,
                              key=keys[i], on_submit=submitted)
            data_dir = None if data_root is None else data_root / f"data-{i}"
            submitter = None
            if handlers is not None and run_agents[i]:
                assert data_dir is not None
                submitter = stack.enter_context(open_submitter(
                    committee, i, keys[i], ledger, handlers(i), data_dir,
                    policy=commit_policy, stall_ms=commit_stall_ms))
            configs.append(PeerConfig(
                committee, i, keys[i], app=ledger,
                on_execute=on_execute_all(agent.on_execute,
                                          None if submitter is None else submitter.on_execute),
                on_view_change=None if submitter is None else submitter.on_view_change,
                snapshot_extra=None if submitter is None else submitter.metrics,
                listeners=[listeners[i]], addresses=addresses,
                data_dir=None if data_dir is None or volatile else data_dir,
                replica_config=replica_config or ReplicaConfig()))
            members.append(LocalMember(i, member.name, ledger, agent, run_agents[i],
                                       submitter=submitter))
        nursery = await stack.enter_async_context(trio.open_nursery())
        peers_up = trio.Event()
        # Every peer first, then the clients: a client waits for links to n - f members.
        for member, config in zip(members, configs, strict=True):
            await nursery.start(_run_member, member, config, keys[member.id], addresses,
                                peers_up)
        peers_up.set()
        for member in members:
            await member.agent.wait_until(lambda m=member: m.client is not None
                                          or not m.running or not m.alive)
        try:
            yield LocalCommittee(committee, members, addresses)
        finally:
            nursery.cancel_scope.cancel()


async def _run_member(member: LocalMember, config: PeerConfig, key: PrivateKey,
                      addresses: dict[int, tuple[str, int]], peers_up: trio.Event, *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.CancelScope() as scope:
        member._scope = scope
        async with open_peer(config) as peer:
            member.peer = peer
            if member.submitter is not None:
                member.submitter.bind_view(lambda: peer.replica.view)
            task_status.started()
            await peers_up.wait()
            if not member.running:
                await trio.sleep_forever()
            async with open_client(config.committee, member.name, key,
                                   addresses=addresses) as client, \
                    trio.open_nursery() as nursery:
                await nursery.start(member.agent.run, client)
                if member.submitter is not None:
                    await nursery.start(member.submitter.run, member.agent.request)
                member.client = client
                member.agent._poke()  # wake open_local_committee's wait for the client
    member.alive = False
