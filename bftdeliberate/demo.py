"""``bftd demo``: a whole debate on a local committee, for a first look.

Four members (n = 4, f = 1) run in this process as real peers over trio TCP on 127.0.0.1
(ephemeral ports), with keys generated into a temporary keystore and protocol logs in
temporary data directories (both removed at the end). Every member runs the deliberation
ledger and its agent loop with a scripted debater; the last member is Byzantine
(``vote-flip``: it votes, then votes again the other way). One member opens a sample
engineering task; the agents debate in rounds and vote, every contribution and vote a signed
request ordered by PBFT; the ledger refuses the Byzantine member's second vote
(``duplicate_vote``) on every honest replica. The report: the decision, the exit reason, who
voted what, tokens, groupthink flags and the resulting ``proposal.json``.

With ``llm`` options the honest debaters ask an OpenAI-compatible model instead
(``agents/llm.py``); the Byzantine member stays scripted. Member n-2 chairs: it votes last
(:class:`ChairDebater`), so the Byzantine member's first vote is ordered while voting is still
open and its second one is refused as a duplicate, however the requests interleave.

``bftd demo --json`` prints one object (stable; fields are only ever added):

* ``ok`` -- the run showed what it should (scripted: approved, the extra vote refused, the
  honest members agree; llm: some decision, and the models answered at least once);
* ``decision`` (``approved`` | ``rejected`` | ``escalated``), ``exit_reason`` (one of
  ``Ledger.EXIT_REASONS``), ``escalated_to``, ``decided_proposal``;
* ``votes``: ``[{agent, decision, notes, signer}]`` on the decided (else the first) proposal,
  in ledger order -- each a request signed by ``signer`` and verified by every replica;
* ``byzantine``: ``{member, name, behaviour, counted_votes, contained, evidence}``, evidence
  being the ledger's rejection log entries ``{seq, agent, op, reason, detail}`` of its
  refused votes (``reason`` ``duplicate_vote``);
* ``rounds``: ``[{round, closed, duration_ms, contributions: [{agent, position, confidence,
  evidence, tokens, proposal_id, argument}]}]``, ``rounds_used``;
* ``tokens`` (``used``, ``budget``, ``agent_budget``, ``by_agent``), ``groupthink`` (as
  ``Ledger.task_status``), ``commit_ready``, ``rejections`` (counts by reason);
* ``proposal``: the resulting ``proposal.json`` (None without a proposal);
* ``task``, ``members`` (address, debater, agent counters, ``llm`` call counters), ``n``,
  ``f``, ``committee_digest``, ``transport``, ``debaters``, ``honest_members_agree``,
  ``seconds``. A run that found no decision in time has ``ok`` false and ``error``.

:func:`open_local_committee` (the in-process committee) is shared with the debate benchmark
and the tests.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bftdeliberate.agents.loop import AgentConfig, AgentLoop
from bftdeliberate.agents.submitter import AUDIT_FILE_NAME, WAL_FILE_NAME, SubmitterLoop
from bftdeliberate.audit.events import AuditLog
from bftdeliberate.commit.executor import RetryPolicy
from bftdeliberate.commit.handlers.base import HandlerRegistry
from bftdeliberate.commit.wal import CommitWal
from bftdeliberate.committee import Committee, init_keystore, load_committee, parse_address
from bftdeliberate.crypto import PrivateKey, load_private_key
from bftdeliberate.deliberation.debater import Debater
from bftdeliberate.deliberation.ledger import Ledger
from bftdeliberate.deliberation.ops import OpenTask
from bftdeliberate.deliberation.scripts import Script, ScriptedDebater
from bftdeliberate.errors import LocalError
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.peer import CommitteeClient, Peer, PeerConfig, open_client, open_peer

#: Wall seconds the scripted demo may take before it is declared failed.
DEMO_TIME_LIMIT = 60.0
#: ... with LLM debaters (model calls take seconds each).
DEMO_LLM_TIME_LIMIT = 900.0
BYZANTINE_BEHAVIOUR = "vote-flip"

DEMO_QUESTION = "Release 2.3 raised checkout errors from 0.1% to 2.4%: roll back to 2.2?"
DEMO_CONTEXT = (
    "Release 2.3 of the api service went out at 09:10 UTC. Since then checkout requests fail "
    "with HTTP 502 at 2.4% (baseline 0.1%); the errors come from the new connection pool in "
    "payments-client 4.1. Release 2.2 ran for three weeks without incident; the 2.3 database "
    "migration is additive, so 2.2 runs against the migrated schema. A proposal is a plan in "
    "proposal.json steps: read, patch, test, command."
)
DEMO_EVIDENCE = ("incident:INC-4821", "dashboard:grafana/checkout-errors",
                 "changelog:release-2.3", "migration:0042_add_payment_index")
#: The plan member 0 proposes (proposal.json step format).
DEMO_PLAN: tuple[dict[str, Any], ...] = (
    {"step": "read", "target": "file:deploy/releases/2.2.yaml"},
    {"step": "command", "cmd": "kubectl rollout undo deployment/api --to-revision=22",
     "target": "k8s:deployment/api", "timeout_ms": 300000},
    {"step": "test", "cmd": "make smoke-test ENV=prod", "timeout_ms": 600000},
)
DEMO_RISKS = ("rollback", "timeouts", "observability")
DEMO_STOP_CONDITIONS = ("test_failed_twice", "permission_denied")
HONEST_POSITION = "roll back to 2.2"
BYZANTINE_POSITION = "hotfix forward"
#: Evidence each honest member cites (distinct references: no thin-evidence unanimity).
HONEST_EVIDENCE = (
    ("incident:INC-4821", "dashboard:grafana/checkout-errors"),
    ("changelog:release-2.3", "trace:payments-client-4.1-pool"),
    ("migration:0042_add_payment_index", "runbook:rollback-api"),
)


# ------------------------------------------------------------------ the committee


@dataclass(slots=True)
class LocalMember:
    """One in-process member: its peer, its ledger and its agent loop."""

    id: int
    name: str
    peer: Peer
    ledger: Ledger
    agent: AgentLoop
    running: bool
    #: The client the agent signs with (None when ``running`` is False).
    client: CommitteeClient | None = None
    #: The member's commit-layer submitter (None without handlers).
    submitter: SubmitterLoop | None = None


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
    commit_policy: RetryPolicy | None = None,
) -> AsyncIterator[LocalCommittee]:
    """Every member of ``committee`` in this process over TCP on 127.0.0.1 (ephemeral ports),
    each with the deliberation ledger and an agent loop around ``debaters[i]`` (None: that
    member only ticks). ``run_agents[i]`` False: member i runs no agent loop at all (an
    operator signs as it instead). ``data_root``: protocol logs in ``data_root/data-I``
    (None: in memory). ``committee_addresses``: listen on the members' committee addresses
    (so that other processes, e.g. ``bftd task``, reach them) instead of ephemeral ports."""
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
        if handlers is not None and data_root is None:
            data_root = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="bftd-commit-")))
            volatile = True
        else:
            volatile = False
        members: list[LocalMember] = []
        for i, member in enumerate(committee.members):
            ledger = Ledger(committee)
            submitted = None if on_submit is None else (lambda op, i=i: on_submit(i, op))
            agent = AgentLoop(ledger, member.name, debaters[i], config=agent_config, rank=i,
                              key=keys[i], on_submit=submitted)
            data_dir = None if data_root is None else data_root / f"data-{i}"
            submitter = None
            if handlers is not None and run_agents[i]:
                assert data_dir is not None
                submitter = stack.enter_context(_open_submitter(
                    committee, i, keys[i], ledger, handlers(i), data_dir, commit_policy))
            hooks = [agent.on_execute] + ([] if submitter is None else [submitter.on_execute])
            config = PeerConfig(
                committee, i, keys[i], app=ledger,
                on_execute=lambda e, hooks=hooks: [hook(e) for hook in hooks] and None,
                on_view_change=None if submitter is None else submitter.on_view_change,
                listeners=[listeners[i]], addresses=addresses,
                data_dir=None if data_dir is None or volatile else data_dir,
                replica_config=replica_config or ReplicaConfig())
            peer = await stack.enter_async_context(open_peer(config))
            if submitter is not None:
                submitter.bind_view(lambda peer=peer: peer.replica.view)
            members.append(LocalMember(i, member.name, peer, ledger, agent, run_agents[i],
                                       submitter=submitter))
        nursery = await stack.enter_async_context(trio.open_nursery())
        for member in members:
            if member.running:
                member.client = await stack.enter_async_context(open_client(
                    committee, member.name, keys[member.id], addresses=addresses))
                await nursery.start(member.agent.run, member.client)
                if member.submitter is not None:
                    await nursery.start(member.submitter.run, member.agent.request)
        try:
            yield LocalCommittee(committee, members, addresses)
        finally:
            nursery.cancel_scope.cancel()


@contextmanager
def _open_submitter(committee: Committee, member: int, key: PrivateKey, ledger: Ledger,
                    registry: HandlerRegistry, data_dir: Path, policy: RetryPolicy | None
                    ) -> Iterator[SubmitterLoop]:
    """Member ``member``'s submitter with its WAL and audit log in ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with CommitWal.open(data_dir / WAL_FILE_NAME, committee_digest=committee.digest,
                        signer=member, key=key) as wal, \
            AuditLog(data_dir / AUDIT_FILE_NAME) as audit:
        yield SubmitterLoop(ledger, committee.member(member).name, registry=registry,
                            view=lambda: 0, wal=wal, audit=audit, policy=policy)


# ---------------------------------------------------------------------- the demo


@dataclass(frozen=True)
class DemoResult:
    report: dict[str, Any]

    @property
    def ok(self) -> bool:
        return bool(self.report["ok"])


def _scripted(name: str, index: int, *, byzantine: bool) -> ScriptedDebater:
    if byzantine:
        return ScriptedDebater(name, Script(
            behaviour=BYZANTINE_BEHAVIOUR, position=BYZANTINE_POSITION, confidence=90,
            argument="The pool bug is a one-line fix; rolling back loses the 2.3 features.",
            evidence=("pr:api#1873",), tokens=140))
    proposer = index == 0
    return ScriptedDebater(name, Script(
        position=HONEST_POSITION, confidence=80 - 5 * index, tokens=120 + 30 * index,
        evidence=HONEST_EVIDENCE[index % len(HONEST_EVIDENCE)],
        argument=("Errors began with the 2.3 deploy and 2.2 is compatible with the migrated "
                  "schema: roll back now, fix the pool in 2.3.1." if proposer else
                  f"The evidence I checked supports {HONEST_POSITION!r}; the plan has a smoke "
                  "test and a stop on repeated failure."),
        plan=DEMO_PLAN if proposer else None,
        risks=DEMO_RISKS if proposer else (),
        stop_conditions=DEMO_STOP_CONDITIONS if proposer else ()))


class ChairDebater:
    """An honest debater that votes last, as a chair does: before answering a vote it waits
    until every other voter voted on the proposal (or the proposal closed). In the demo this
    lets the Byzantine member's first vote count, so its second one is refused as a
    *duplicate* -- not merely as late -- however the requests happen to be ordered."""

    def __init__(self, inner: Any, *, patience: float = 30.0) -> None:
        self.inner = inner
        self.agent: AgentLoop | None = None  # set once the committee is up
        #: Seconds the chair waits for the others at most (a voter may never answer).
        self.patience = patience

    @property
    def behaviour(self) -> str:
        return f"{getattr(self.inner, 'behaviour', 'llm')} (chair: votes last)"

    async def contribute(self, view: Any) -> Any:
        return await self.inner.contribute(view)

    async def vote(self, view: Any, proposal: Any) -> Any:
        agent = self.agent
        if agent is not None:
            ledger = agent.ledger
            others = len(ledger.voters) - 1

            def others_voted() -> bool:
                status = ledger.task_status(view.task_id)
                found = next((p for p in status["proposals"]
                              if p["proposal_id"] == proposal.proposal_id), None)
                return (found is None or found["status"] != "open"
                        or status["decision"] is not None or len(found["votes"]) >= others)

            with trio.move_on_after(self.patience):
                await agent.wait_until(others_voted)
            view = ledger.view_for(view.task_id, agent.name)
            proposal = next((p for p in view.proposals
                             if p.proposal_id == proposal.proposal_id), proposal)
        return await self.inner.vote(view, proposal)

    async def aclose(self) -> None:
        if hasattr(self.inner, "aclose"):
            await self.inner.aclose()


def _llm_debaters(llm: dict[str, Any], names: Sequence[str]) -> list[Any]:
    from bftdeliberate.agents.llm import LLMConfig, OpenAICompatibleDebater

    config = LLMConfig(base_url=llm["base_url"], model=llm["model"],
                       api_key_env=llm.get("api_key_env"))
    return [OpenAICompatibleDebater(config) for _ in names]


def run_demo(n: int = 4, *, llm: dict[str, Any] | None = None,
             progress: Callable[[str], None] | None = None) -> DemoResult:
    """Run the debate; the report (see the module docstring and ``bftd demo --json``)."""
    if llm is not None:
        from bftdeliberate.agents.llm import LLMConfig

        LLMConfig(base_url=llm["base_url"], model=llm["model"],
                  api_key_env=llm.get("api_key_env"))  # ConfigError before anything starts
    # The Byzantine member's refused votes are the point of the demo, not warnings to print.
    bftd_logger = logging.getLogger("bftd")
    level = bftd_logger.level
    bftd_logger.setLevel(max(level, logging.ERROR))
    try:
        with tempfile.TemporaryDirectory(prefix="bftd-demo-") as temp:
            return trio.run(_demo, n, Path(temp), llm, progress or (lambda text: None))
    finally:
        bftd_logger.setLevel(level)


async def _demo(n: int, root: Path, llm: dict[str, Any] | None,
                progress: Callable[[str], None]) -> DemoResult:
    started = time.perf_counter()
    keystore = root / "keys"
    committee = init_keystore(keystore, n, clients=0, committee_id="demo", base_port=7000)
    committee = load_committee(keystore / "committee.json")
    keys = [load_private_key(keystore / f"agent-{i}.key") for i in range(n)]
    names = [m.name for m in committee.members]
    byzantine = n - 1
    debaters: list[Any] = [_scripted(names[i], i, byzantine=i == byzantine) for i in range(n)]
    if llm is not None:
        models = _llm_debaters(llm, names[:byzantine])
        debaters[:byzantine] = models
    chair_index = byzantine - 1
    chair = ChairDebater(debaters[chair_index], patience=10.0 if llm is None else 300.0)
    debaters[chair_index] = chair
    limit = DEMO_TIME_LIMIT if llm is None else DEMO_LLM_TIME_LIMIT
    round_ms = 10_000 if llm is None else 300_000
    agent_config = AgentConfig(debater_timeout=30.0 if llm is None else 600.0)
    decided = False
    try:
        with trio.move_on_after(limit):
            async with open_local_committee(committee, keys, debaters, data_root=root,
                                            agent_config=agent_config) as local:
                chair.agent = local.members[chair_index].agent
                ports = ", ".join(f"{local.addresses[i][1]}" for i in range(n))
                progress(f"{n} members up on 127.0.0.1 ports {ports}; {names[byzantine]} is "
                         f"Byzantine ({BYZANTINE_BEHAVIOUR})")
                opener = local.members[0]
                result = await opener.agent.request(OpenTask(
                    question=DEMO_QUESTION, context=DEMO_CONTEXT, evidence=DEMO_EVIDENCE,
                    max_rounds=3, round_ms=round_ms, vote_ms=round_ms,
                    deadline_ms=max(60_000, 4 * round_ms), token_budget=20_000))
                if result is None or not result.get("ok"):
                    raise LocalError(f"the demo task was not opened: {result}")
                task_id = result["task_id"]
                progress(f"{names[0]} opened task {task_id}: {DEMO_QUESTION}")
                honest = [i for i in range(n) if i != byzantine]
                await local.wait_all(lambda m: m.ledger.decision(task_id) is not None, honest)
                # Every agent done with the task (the Byzantine one's extra votes ordered),
                # then every honest member has executed what the Byzantine one saw ordered.
                await local.wait_all(lambda m: m.agent.idle)
                rogue = local.members[byzantine]
                seen = len(_duplicate_votes(rogue.ledger, names[byzantine]))
                await local.wait_all(lambda m: len(_duplicate_votes(
                    m.ledger, names[byzantine])) >= seen, honest)
                decided = True
                report = _report(local, task_id, byzantine, llm)
                report["members"] = [
                    {"id": m.id, "name": m.name,
                     "address": f"127.0.0.1:{local.addresses[m.id][1]}",
                     "debater": _describe_debater(debaters[m.id]),
                     "byzantine": m.id == byzantine,
                     "agent": {"contributions": m.agent.stats.contributions,
                               "abstentions": m.agent.stats.abstentions,
                               "votes": m.agent.stats.votes,
                               "ticks": m.agent.stats.ticks,
                               "rejected": dict(m.agent.stats.rejections)},
                     **_llm_stats(debaters[m.id])}
                    for m in local.members]
    finally:
        for debater in debaters:
            if hasattr(debater, "aclose"):
                with trio.CancelScope(shield=True):
                    await debater.aclose()
    if not decided:
        return DemoResult({"ok": False, "error": f"no decision within {limit:g} s",
                           "decision": None, "exit_reason": None, "votes": [],
                           "seconds": round(time.perf_counter() - started, 3)})
    report["seconds"] = round(time.perf_counter() - started, 3)
    return DemoResult(report)


def _llm_stats(debater: Any) -> dict[str, Any]:
    inner = debater.inner if isinstance(debater, ChairDebater) else debater
    stats = getattr(inner, "stats", None)
    if stats is None or isinstance(inner, ScriptedDebater):
        return {}
    names = ("calls", "retries", "timeouts", "transport_errors", "http_errors",
             "invalid_outputs", "abstentions", "tokens_reported", "tokens_estimated")
    return {"llm": {name: getattr(stats, name, None) for name in names}}


def _describe_debater(debater: Any) -> str:
    if isinstance(debater, ChairDebater):
        return f"{_describe_debater(debater.inner)}, chair (votes last)"
    if isinstance(debater, ScriptedDebater):
        return f"scripted {debater.behaviour}"
    config = getattr(debater, "config", None)
    return f"llm {getattr(config, 'model', '?')}"


def _duplicate_votes(ledger: Ledger, agent: str) -> list[dict[str, Any]]:
    return [entry for entry in ledger.rejection_log
            if entry["agent"] == agent and entry["reason"] == "duplicate_vote"]


def _report(local: LocalCommittee, task_id: str, byzantine: int,
            llm: dict[str, Any] | None) -> dict[str, Any]:
    committee = local.committee
    reference = local.members[0]
    ledger = reference.ledger
    status = ledger.task_status(task_id)
    decision = status["decision"]
    proposals = status["proposals"]
    decided = status["decided_proposal"]
    shown = next((p for p in proposals if p["proposal_id"] == decided),
                 proposals[0] if proposals else None)
    proposal = None
    if shown is not None:
        proposal = ledger.proposal_document(task_id, shown["proposal_id"]).model_dump(
            mode="json", exclude_none=True)
    byzantine_name = committee.members[byzantine].name
    evidence = [{k: entry[k] for k in ("seq", "agent", "op", "reason", "detail")}
                for entry in _duplicate_votes(ledger, byzantine_name)]
    counted = [v for p in proposals for v in p["votes"] if v["agent"] == byzantine_name]
    honest = [m for m in local.members if m.id != byzantine]
    # Every honest member holds the same transcript, votes and decision (the task no longer
    # changes once decided; the members' whole states may differ by a few late operations).
    digests = {json.dumps(m.ledger.task_status(task_id), sort_keys=True) for m in honest}
    rounds = [{
        "round": r["round"], "closed": r["closed_ms"] is not None,
        "duration_ms": None if r["closed_ms"] is None else r["closed_ms"] - r["opened_ms"],
        "contributions": [
            {"agent": c["agent"], "position": c["position"], "confidence": c["confidence"],
             "evidence": c["evidence"], "tokens": c["tokens"], "proposal_id": c["proposal_id"],
             "argument": c["argument"]}
            for c in (r["contributions"] or [])]}
        for r in ledger.task_status(task_id, reveal_open_round=True)["rounds"]]
    honest_names = {m.name for m in honest}
    answered = sum(c["position"] is not None for r in rounds for c in r["contributions"]
                   if c["agent"] in honest_names)
    if llm is None:
        ok = decision == "approved" and bool(evidence) and len(digests) == 1
    else:
        # A model may well leave the question to a human; a model that never answered fails.
        ok = decision is not None and len(digests) == 1 and answered > 0
    return {
        "ok": ok,
        "n": committee.n, "f": committee.f, "committee_digest": committee.digest.hex(),
        "transport": "tcp 127.0.0.1", "debaters": "llm" if llm else "scripted",
        "task": {"task_id": task_id, "question": status["question"],
                 "context": status["context"], "evidence": status["evidence"],
                 "opener": status["opener"], "threshold": status["threshold"],
                 "voters": status["voters"]},
        "decision": decision, "exit_reason": status["exit_reason"],
        "escalated_to": status["escalated_to"], "decided_proposal": decided,
        "votes": ([{"agent": v["agent"], "decision": v["decision"], "notes": v["notes"],
                    "signer": v["agent"]} for v in shown["votes"]] if shown else []),
        "rounds": rounds, "rounds_used": status["rounds_used"],
        "tokens": status["tokens"], "groupthink": status["groupthink"],
        "byzantine": {"member": byzantine, "name": byzantine_name,
                      "behaviour": BYZANTINE_BEHAVIOUR,
                      "counted_votes": [{"proposal_id": p["proposal_id"],
                                         "decision": v["decision"]}
                                        for p in proposals for v in p["votes"]
                                        if v["agent"] == byzantine_name],
                      "contained": bool(evidence) and len(counted) <= len(proposals),
                      "evidence": evidence},
        "rejections": ledger.rejection_counts,
        "proposal": proposal,
        "honest_members_agree": len(digests) == 1,
        "commit_ready": ledger.commit_ready(task_id),
    }
