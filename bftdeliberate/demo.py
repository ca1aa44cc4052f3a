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

:func:`~bftdeliberate.local.open_local_committee` (the in-process committee, re-exported
here) is shared with the debate benchmark and the tests.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bftdeliberate.agents.loop import AgentConfig, AgentLoop
from bftdeliberate.agents.submitter import AUDIT_FILE_NAME, WAL_FILE_NAME
from bftdeliberate.audit.events import commit_record, load_wal, read_audit_log
from bftdeliberate.audit.report import audit_report
from bftdeliberate.commit.executor import RetryPolicy
from bftdeliberate.commit.handlers import (
    CommandHandler,
    FileHandler,
    HandlerRegistry,
    SqliteKvHandler,
)
from bftdeliberate.commit.handlers.base import transient
from bftdeliberate.commit.types import StepCall, StepOutcome
from bftdeliberate.committee import init_keystore, load_committee
from bftdeliberate.crypto import load_private_key
from bftdeliberate.deliberation.ledger import Ledger
from bftdeliberate.deliberation.ops import OpenTask
from bftdeliberate.deliberation.scripts import Script, ScriptedDebater
from bftdeliberate.errors import ConfigError, LocalError
from bftdeliberate.local import LocalCommittee, LocalMember, open_local_committee
from bftdeliberate.pbft.config import ReplicaConfig

__all__ = ["DemoResult", "LocalCommittee", "LocalMember", "open_local_committee", "run_demo"]

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
#: The plan member 0 proposes (proposal.json step format): check the 2.2 release manifest,
#: point the deployment file at 2.2, record the release in the release database, and smoke
#: test the result. The commit layer applies it inside the demo's sandbox directory.
DEMO_PLAN: tuple[dict[str, Any], ...] = (
    {"step": "read", "target": "file:deploy/releases/2.2.yaml"},
    {"step": "patch", "target": "file:deploy/api.yaml", "patch_id": "api-2.2"},
    {"step": "patch", "target": "kv:releases/api", "patch_id": "release-2.2"},
    {"step": "test", "cmd": "grep -q api:2.2 deploy/api.yaml", "timeout_ms": 10000},
)
#: The sandbox before the commit, and the patch store (content named by patch_id).
DEMO_SANDBOX = {"deploy/api.yaml": b"image: registry.local/api:2.3\nreplicas: 6\n",
                "deploy/releases/2.2.yaml": b"image: registry.local/api:2.2\nreplicas: 6\n"}
DEMO_PATCHES = {"api-2.2": b"image: registry.local/api:2.2\nreplicas: 6\n",
                "release-2.2": b"2.2"}
DEMO_KV_TABLES = ("releases",)
DEMO_COMMANDS = ("grep",)
#: Injected faults: the file patch (step 1) fails once with a transient error (retried after
#: a backoff); the first submitter crashes right after its handler applied step 2 (the
#: database row) -- before any record says so; the next primary completes the commit.
TRANSIENT_STEP = 1
CRASH_AFTER_STEP = 2
#: Commit tuning for a quick demo: short backoffs, a watchdog after 1 s, a view change after
#: 1 s without progress.
DEMO_RETRY = RetryPolicy(max_attempts=3, base_backoff_ms=50, max_backoff_ms=200)
DEMO_STALL_MS = 1000
DEMO_VIEW_CHANGE_TIMEOUT = 1.0
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


class InjectedFaults:
    """Wraps an effect handler to inject the demo's faults (any handler: the registry checks
    the EffectHandler protocol): ``transient_step``'s first apply fails with a transient
    error; after ``crash_step``'s first successful apply, ``crash()`` is called (from the
    worker thread, into trio) -- the submitter dies with the effect in place."""

    def __init__(self, inner: Any, *, transient_step: int | None = None,
                 crash_step: int | None = None, crash: Callable[[], None] | None = None
                 ) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.step_kinds = inner.step_kinds
        self.transient_step = transient_step
        self.crash_step = crash_step
        self.crash = crash
        #: What was injected: [{"fault", "step", "idempotency_key"}].
        self.injected: list[dict[str, Any]] = []

    def check(self, call: StepCall) -> StepOutcome | None:
        return self.inner.check(call)

    def apply(self, call: StepCall) -> StepOutcome:
        if call.index == self.transient_step:
            self.transient_step = None
            self.injected.append({"fault": "transient", "step": call.index,
                                  "idempotency_key": call.idempotency_key})
            return transient("injected: the volume is busy")
        outcome = self.inner.apply(call)
        if call.index == self.crash_step and outcome.ok and self.crash is not None:
            self.crash_step = None
            self.injected.append({"fault": "submitter_crash", "step": call.index,
                                  "idempotency_key": call.idempotency_key})
            trio.from_thread.run_sync(self.crash)
        return outcome

    def was_applied(self, key: str) -> bool:
        return self.inner.was_applied(key)

    def state(self, key: str) -> Any:
        return self.inner.state(key)

    def compensate(self, call: StepCall) -> StepOutcome:
        return self.inner.compensate(call)


@dataclass
class DemoResources:
    """The sandbox, the release database and the handlers every member shares."""

    sandbox: Path
    database: Path
    file: InjectedFaults
    kv: InjectedFaults
    command: CommandHandler

    @classmethod
    def create(cls, root: Path) -> DemoResources:
        sandbox = root / "sandbox"
        for name, content in DEMO_SANDBOX.items():
            (sandbox / name).parent.mkdir(parents=True, exist_ok=True)
            (sandbox / name).write_bytes(content)
        database = root / "releases.db"
        # The kv handler's crash is set once the committee (its first submitter) is up.
        return cls(sandbox, database,
                   InjectedFaults(FileHandler(sandbox, DEMO_PATCHES),
                                  transient_step=TRANSIENT_STEP),
                   InjectedFaults(SqliteKvHandler(database, DEMO_KV_TABLES, DEMO_PATCHES),
                                  crash_step=CRASH_AFTER_STEP),
                   CommandHandler(sandbox, DEMO_COMMANDS))

    def registry(self, member: int) -> HandlerRegistry:
        return HandlerRegistry([self.file, self.kv, self.command])

    def contents(self) -> dict[str, Any]:
        kv = self.kv.inner
        return {"files": {name: (self.sandbox / name).read_text(errors="replace")
                          for name in sorted(DEMO_SANDBOX)},
                "kv": {f"{table}/api": (value.decode(errors="replace") if (
                    value := kv.value(table, "api")) is not None else None)
                    for table in DEMO_KV_TABLES}}


def run_demo(n: int = 4, *, llm: dict[str, Any] | None = None,
             progress: Callable[[str], None] | None = None,
             directory: Path | None = None) -> DemoResult:
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
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            if any(directory.iterdir()):
                raise ConfigError(f"--dir {directory}: not empty (the demo writes a fresh "
                                  "keystore, data directories and sandbox there)")
            return trio.run(_demo, n, directory, llm, progress or (lambda text: None))
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
    resources = DemoResources.create(root)
    before = resources.contents()
    try:
        with trio.move_on_after(limit):
            async with open_local_committee(
                    committee, keys, debaters, data_root=root, agent_config=agent_config,
                    replica_config=ReplicaConfig(view_change_timeout=DEMO_VIEW_CHANGE_TIMEOUT),
                    handlers=resources.registry, commit_policy=DEMO_RETRY,
                    commit_stall_ms=DEMO_STALL_MS) as local:
                first_submitter = local.members[0]
                resources.kv.crash = first_submitter.crash
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
                # The commit: members that neither submit first nor are Byzantine see it end
                # (the first submitter crashes on the way: the next primary completes it).
                completers = [i for i in honest if i != first_submitter.id]
                if local.members[completers[0]].ledger.decision(task_id) == "approved":
                    progress("approved: the commit layer applies the plan (one transient "
                             f"failure and a crash of {names[0]}, the submitter, injected)")
                    await local.wait_all(lambda m: _commit_ended(m.ledger, task_id),
                                         completers)
                    for i in completers:
                        submitter = local.members[i].submitter
                        assert submitter is not None
                        await submitter.wait_until(lambda s=submitter: s.idle)
                alive = [m.id for m in local.members if m.alive]
                # Every agent done with the task (the Byzantine one's extra votes ordered),
                # then every honest member has executed what the Byzantine one saw ordered.
                await local.wait_all(lambda m: m.agent.idle, alive)
                rogue = local.members[byzantine]
                seen = len(_duplicate_votes(rogue.ledger, names[byzantine]))
                await local.wait_all(lambda m: len(_duplicate_votes(
                    m.ledger, names[byzantine])) >= seen,
                    [i for i in honest if local.members[i].alive])
                decided = True
                report = _report(local, task_id, byzantine, llm)
                report.update(_commit_report(local, root, task_id, resources, before,
                                             completers, llm))
                report["ok"] = report["ok"] and report["commit_ok"]
                report["members"] = [
                    {"id": m.id, "name": m.name,
                     "address": f"127.0.0.1:{local.addresses[m.id][1]}",
                     "debater": _describe_debater(debaters[m.id]),
                     "byzantine": m.id == byzantine, "alive": m.alive,
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
    digests = {json.dumps({**m.ledger.task_status(task_id), "commit": None}, sort_keys=True)
               for m in honest}
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


def _commit_ended(ledger: Ledger, task_id: str) -> bool:
    commit_id = ledger.commits.commit_of(task_id)
    return commit_id is not None and ledger.commits.status(commit_id)["result"] is not None


def _commit_report(local: LocalCommittee, root: Path, task_id: str, resources: DemoResources,
                   before: dict[str, Any], completers: list[int],
                   llm: dict[str, Any] | None) -> dict[str, Any]:
    """The commit part of the report: its status (agreed by the members that saw it end),
    commit_record.json over every member's WAL, the resources before and after, the faults
    injected, and the audit report over every member's audit log."""
    committee = local.committee
    reference = local.members[completers[0]].ledger
    commit_id = reference.commits.commit_of(task_id)
    if commit_id is None:
        # No commit: fine only for a model debate that did not approve anything.
        return {"commit": None, "duplicate_commits": 0, "effects_applied": 0,
                "commit_ok": llm is not None and reference.decision(task_id) != "approved"}
    statuses = [json.dumps(local.members[i].ledger.commits.status(commit_id), sort_keys=True)
                for i in completers]
    status = reference.commits.status(commit_id)
    result = status["result"]
    plan = status["intent"]["steps"]
    steps = [{"index": step["index"], **step["step"],
              "status": outcome["status"], "attempts": outcome["attempts"]}
             for step, outcome in zip(plan, result["steps"], strict=True)]
    effects_applied = sum(s["status"] in ("applied", "already_applied") for s in steps)
    records = []
    for member in committee.members:
        wal = root / f"data-{member.id}" / WAL_FILE_NAME
        if wal.exists():
            records += load_wal(wal, committee)
    record = commit_record(records, commit_id,
                           member_name=lambda m: committee.member(m).name)
    events = []
    for member in committee.members:
        log = root / f"data-{member.id}" / AUDIT_FILE_NAME
        if log.exists():
            events += read_audit_log(log).events
    audit = audit_report(events)
    attribution = next((a for a in audit["attribution"] if a["commit_id"] == commit_id), None)
    committed = result["result"] == "committed"
    return {
        "commit": {
            "commit_id": commit_id, "result": result["result"],
            "error_code": result.get("error_code"),
            "submitters": [{"submitter": i["submitter"], "view": i["view"]}
                           for i in status["intents"]],
            "resource_targets": status["intent"]["resource_targets"],
            "steps": steps, "members_agree": len(set(statuses)) == 1,
            "injected": resources.file.injected + resources.kv.injected,
            "sandbox": str(resources.sandbox), "before": before,
            "after": resources.contents(),
            "record": None if record is None else json.loads(record.to_json()),
        },
        "audit": {name: audit[name] for name in (
            "events", "commits", "failure_reasons", "rollback", "conflicts",
            "duplicate_commits", "failures_by_layer")} | {"attribution": attribution},
        "duplicate_commits": audit["duplicate_commits"],
        "effects_applied": effects_applied,
        # A model's plan may well be refused or rolled back in the sandbox; what must hold
        # whatever the plan: no duplicate effect, and the members agree on the outcome.
        "commit_ok": (audit["duplicate_commits"] == 0 and len(set(statuses)) == 1
                      and (llm is not None or (committed and effects_applied == len(plan)))),
    }

