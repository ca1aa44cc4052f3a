"""Run one scenario (``simulator/spec.py``) in the simulated world and judge it.

Phases of a run:

1. set-up: the world for the scenario's n, seed, network, clocks and replica settings;
   Byzantine members and clients are installed (``simulator/byzantine.py``);
2. the fault schedule: every event at its time (``world.at``), then GST at ``gst_ms``
   (``network.stabilize()``: loss and duplication stop, partitions and clogs heal);
3. the closed-loop workload runs until every request completed, a safety oracle fired, or
   ``max_time_ms`` of simulated time passed -- or, with a ``debate`` section, the agents
   (``simulator/debate.py``) debate one task on the deliberation ledger until it reached its
   end at every honest replica -- and with a ``commit`` section too, until every approved
   plan was executed by the commit layer (``simulator/commit.py``) and its result ordered;
4. the verdict: safety is "violated" if any oracle fired (the world's oracles after every
   event and ``final_checks()`` at the end, plus the partition check below); liveness is "ok"
   if the workload completed, "failed" if not, "not-checked" when the spec expects nothing.
   ``ok`` says whether the outcome matches ``expect`` (and ``debate.expect``: the result's
   ``debate`` part says what the debate ended with; and ``commit.expect``: its ``commit``
   part says how each commit ended and what the resources saw).

The partition check ("minority-progress"): an honest member cut off in a group smaller than a
quorum may finish slots that were proposed before the cut (their messages were already in
flight) but nothing proposed later. While such a group exists, the runner notes the highest
sequence number any PRE-PREPARE had been sent for, and when the partition ends checks that
the group's honest members executed nothing above it.
"""

from __future__ import annotations

import gc
import shlex
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bftdeliberate import kv
from bftdeliberate.committee import Committee
from bftdeliberate.deliberation.ledger import Ledger
from bftdeliberate.errors import DecodeError
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.wire.messages import decode_envelope
from simulator.commit import CommitHarness
from simulator.debate import DebateHarness
from simulator.network import NetworkProfile
from simulator.spec import BAD_CLIENT, TWIN, Event, Scenario, resolve
from simulator.world import World

SAFETY_OK = "ok"
SAFETY_VIOLATED = "violated"
LIVENESS_OK = "ok"
LIVENESS_FAILED = "failed"
LIVENESS_NOT_CHECKED = "not-checked"
#: Distinct keys the workload writes (a small key space makes results depend on order).
WORKLOAD_KEYS = 97
MINORITY_ORACLE = "minority-progress"
MS = 1000.0
#: After the workload completes, simulated time allowed for every honest member that is up
#: to reach the same sequence number (laggards catch up by retransmission / state transfer).
CONVERGENCE_BUDGET_MS = 20_000.0


@dataclass
class RunResult:
    scenario: str
    seed: int
    n: int
    f: int
    safety: str
    liveness: str
    completed_all: bool
    #: Every honest member that is up executed up to the same seq by the end (checked when
    #: liveness is expected: part of it).
    converged: bool
    violations: list[dict[str, Any]]
    committed: int
    requests: int
    executed: list[int]
    views: list[int]
    byzantine_members: list[int]
    sim_time_ms: float
    events: int
    trace_hash: str
    messages: dict[str, Any]
    bytes: int
    bytes_by_type: dict[str, int]
    repro: str
    expect: dict[str, Any]
    ok: bool
    wall_seconds: float
    resolved: dict[str, Any]
    trace: list[dict[str, Any]] | None = field(default=None, repr=False)
    #: The debate's outcome (scenarios with a ``debate`` section; see simulator/debate.py).
    debate: dict[str, Any] | None = None
    #: The commits' outcome (scenarios with a ``commit`` section; see simulator/commit.py).
    commit: dict[str, Any] | None = None

    def as_dict(self, *, include_spec: bool = True) -> dict[str, Any]:
        result = {
            "scenario": self.scenario, "seed": self.seed, "n": self.n, "f": self.f,
            "safety": self.safety, "liveness": self.liveness,
            "completed_all": self.completed_all, "converged": self.converged,
            "violations": self.violations,
            "committed": self.committed, "requests": self.requests,
            "executed": self.executed, "views": self.views,
            "byzantine_members": self.byzantine_members,
            "sim_time_ms": self.sim_time_ms, "events": self.events,
            "trace_hash": self.trace_hash, "messages": self.messages, "bytes": self.bytes,
            "bytes_by_type": self.bytes_by_type, "repro": self.repro, "expect": self.expect,
            "ok": self.ok, "wall_seconds": self.wall_seconds,
        }
        if self.debate is not None:
            result["debate"] = self.debate
        if self.commit is not None:
            result["commit"] = self.commit
        if include_spec:
            result["resolved"] = self.resolved
        return result


def repro_command(scenario: Scenario, n: int, seed: int, requests: int | None = None) -> str:
    """The exact command that runs this scenario again with this n and seed."""
    source = scenario.source or f"builtin:{scenario.name}"
    what = (f"--scenario {shlex.quote(source[len('builtin:'):])}"
            if source.startswith("builtin:") else f"--spec {shlex.quote(source)}")
    extra = f" --requests {requests}" if requests is not None else ""
    return f"bftd sim run {what} --n {n} --seed {seed}{extra}"


def workload(requests: int):
    return (kv.put(f"key-{i % WORKLOAD_KEYS}", i.to_bytes(4, "big")) for i in range(requests))


def ledger_factory(resource_limits: dict[str, int]) -> Callable[[Committee], Ledger]:
    """The deliberation ledger of a committee, with these per-resource commit limits."""
    limits = dict(resource_limits)

    def make(committee: Committee) -> Ledger:
        return Ledger(committee, resource_limits=limits or None)
    return make


def build_world(scenario: Scenario, *, record_trace: bool = False) -> World:
    """The world of a concrete scenario, Byzantine members installed, nothing scheduled. With
    a debate the application is the deliberation ledger and the genesis roles are the
    debate's (with the commit section's submitters)."""
    network = scenario.network
    replica = scenario.replica
    debate = scenario.debate
    limits = scenario.commit.resource_limits if scenario.commit is not None else {}
    world = World(
        scenario.n,
        seed=scenario.seed,
        clients=scenario.workload.clients,
        config=ReplicaConfig(batch_size=replica.batch_size,
                             checkpoint_interval=replica.checkpoint_interval,
                             log_window=replica.log_window),
        network=NetworkProfile(delay_ms=tuple(network.delay_ms), loss=network.loss,
                               duplicate=network.duplicate, reorder=network.reorder),
        clock_skew_ms=scenario.clock.skew_ms,
        clock_drift=scenario.clock.drift,
        record_trace=record_trace,
        app_for_committee=None if debate is None else ledger_factory(limits),
        roles=scenario.genesis_roles(),
    )
    install_byzantine(world, scenario)
    return world


def install_byzantine(world: World, scenario: Scenario) -> None:
    if not scenario.byzantine:
        return
    from simulator import byzantine

    behaviours: dict[int, list[Any]] = defaultdict(list)
    for entry in scenario.byzantine:
        if entry.client is not None:
            byzantine.make_bad_client(world, entry.client, dict(entry.params))
        elif entry.behaviour == TWIN:
            first, second = entry.params["groups"]
            byzantine.make_twin(world, entry.member, (list(first), list(second)),
                                isolate=entry.params.get("isolate", True))
        elif entry.behaviour != BAD_CLIENT:
            behaviours[entry.member].append(  # type: ignore[index]
                byzantine.BehaviourSpec(entry.behaviour, dict(entry.params), entry.from_ms))
    for member, specs in sorted(behaviours.items()):
        byzantine.make_byzantine(world, member, specs)


class _MinorityWatch:
    """The partition check of the module docstring."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.highest_proposed = 0
        self._last_data: bytes | None = None
        # member -> (group size, start ms, highest seq proposed at the cut)
        self.watched: dict[int, tuple[int, float, int]] = {}
        world.link_filters.append(self._note_proposal)

    def _note_proposal(self, sender: Any, to: Any, data: bytes, message_type: str) -> bytes:
        # A broadcast hands the same bytes object to every link: decode it once.
        if message_type == "pre-prepare" and data is not self._last_data:
            self._last_data = data
            try:
                seq = decode_envelope(data).message.seq
            except (DecodeError, AttributeError):
                return data
            if type(seq) is int and seq > self.highest_proposed:
                self.highest_proposed = seq
        return data

    def start(self, groups: list[list[int]]) -> None:
        self.end()
        quorum = self.world.committee.quorum
        for group in groups:
            if len(group) < quorum:
                for member in group:
                    self.watched[member] = (len(group), self.world.now * MS,
                                            self.highest_proposed)

    def end(self) -> None:
        world = self.world
        for member, (size, since_ms, highest) in sorted(self.watched.items()):
            if member in world.byzantine:
                continue
            executed = world.replicas[member].last_executed
            if executed > highest:
                world.oracles.violate(
                    MINORITY_ORACLE,
                    f"member {member}, cut off in a group of {size} < quorum "
                    f"{world.committee.quorum} from {since_ms:.0f} ms to "
                    f"{world.now * MS:.0f} ms, executed up to seq {executed}; nothing above "
                    f"seq {highest} had been proposed when the partition began",
                    (member,), executed)
        self.watched.clear()


def _partition_groups(groups: list[list[int]], n: int) -> list[list[int]]:
    """The spec's groups plus one group of the members no group lists."""
    listed = {member for group in groups for member in group}
    rest = [member for member in range(n) if member not in listed]
    return [list(group) for group in groups] + ([rest] if rest else [])


def _event_action(world: World, event: Event, watch: _MinorityWatch | None,
                  ) -> Callable[[], None]:
    network = world.network
    n = world.committee.n
    if event.partition is not None:
        groups = _partition_groups(event.partition, n)

        def partition() -> None:
            network.partition(groups)
            if watch is not None:
                watch.start(groups)
        return partition
    if event.one_way is not None:
        senders, receivers = list(event.one_way.senders), list(event.one_way.receivers)
        return lambda: network.one_way(senders, receivers)
    if event.clog is not None:
        members, for_seconds = list(event.clog.members), event.clog.for_ms / MS
        return lambda: network.clog(members, world.now + for_seconds)
    if event.crash is not None:
        member = event.crash
        lose = True if event.lose_unsynced is None else event.lose_unsynced
        lose_disk = bool(event.lose_disk)
        return lambda: world.crash(member, lose, lose_disk)
    if event.restart is not None:
        member = event.restart
        return lambda: world.restart(member)

    def heal() -> None:
        network.heal()
        world.reconnect()
        if watch is not None:
            watch.end()
    return heal


def _needs_minority_watch(scenario: Scenario) -> bool:
    quorum = 2 * scenario.f + 1
    return any(len(group) < quorum
               for event in scenario.events if event.partition is not None
               for group in _partition_groups(event.partition, scenario.n))


def schedule(world: World, scenario: Scenario) -> _MinorityWatch | None:
    """Every event at its time, then GST."""
    watch = _MinorityWatch(world) if _needs_minority_watch(scenario) else None
    for index, event in enumerate(scenario.events):
        world.at(event.at_ms / MS, _event_action(world, event, watch),
                 f"event {index}: {event.action}")

    def stabilize() -> None:
        world.network.stabilize()
        world.reconnect()
        if watch is not None:
            watch.end()
    world.at(scenario.gst_ms / MS, stabilize, "gst")
    return watch


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """A run allocates millions of short-lived objects and keeps its world alive until the
    end, so the cyclic collector's passes during a run find little and cost ~10% of the run
    (measured on chaos n=4). Reference counting still frees everything acyclic at once; the
    cycles a run leaves are collected when the collector resumes."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def run_scenario(spec: Scenario, *, n: int | None = None, seed: int | None = None,
                 requests: int | None = None, record_trace: bool = False) -> RunResult:
    """Run ``spec`` (with command-line overrides) once; the verdict is in the result."""
    started = time.perf_counter()
    overridden = spec.with_overrides(n=n, seed=seed, requests=requests) if (
        n is not None or seed is not None or requests is not None) else spec
    scenario = resolve(overridden)
    world = build_world(scenario, record_trace=record_trace)
    watch = schedule(world, scenario)
    harness: DebateHarness | None = None
    commits: CommitHarness | None = None
    if scenario.debate is not None:
        harness = DebateHarness(world, scenario)
        if scenario.commit is not None:
            commits = CommitHarness(world, scenario, harness)
        harness.start()
        done: Callable[[], bool] = harness.is_settled
        if commits is not None:
            commits.start()
            debate_settled, commits_settled = harness.is_settled, commits.is_settled
            done = lambda: debate_settled() and commits_settled()
    else:
        world.start_workload(workload(scenario.workload.requests))
        done = world.workload_done
    oracles = world.oracles
    with _cyclic_gc_paused():
        # Stop at the first violation: the run has failed, and more events only add noise.
        world.run(until=lambda: bool(oracles.violations) or done(),
                  max_time=scenario.max_time_ms / MS)
        if scenario.expect.convergence and done() and not oracles.violations:
            world.run(until=lambda: bool(oracles.violations) or converged(world),
                      max_time=min(scenario.max_time_ms / MS,
                                   world.now + CONVERGENCE_BUDGET_MS / MS))
    if watch is not None:
        watch.end()
    oracles.final_checks()
    if harness is not None:
        harness.oracles.final()
    if commits is not None:
        commits.oracles.final()
    return _verdict(spec, scenario, world, requests, time.perf_counter() - started, harness,
                    commits)


def converged(world: World) -> bool:
    """Every honest member that is up executed the same batches (the state oracle compares
    their digests)."""
    executed = {world.replicas[m].last_executed for m in world.honest if m not in world.down}
    return len(executed) <= 1


def _verdict(spec: Scenario, scenario: Scenario, world: World, requests: int | None,
             wall_seconds: float, harness: DebateHarness | None = None,
             commits: CommitHarness | None = None) -> RunResult:
    expect = scenario.expect
    safe = not world.violations
    same = converged(world)
    completed_all = world.workload_done() if harness is None else harness.settled and (
        commits is None or commits.settled)
    done = completed_all and (same or not expect.convergence)
    if expect.liveness is None:
        liveness = LIVENESS_NOT_CHECKED
    else:
        liveness = LIVENESS_OK if done else LIVENESS_FAILED
    debate = None if harness is None else harness.result()
    commit = None if commits is None else commits.result()
    ok = (safe == expect.safety and (expect.liveness is None or done == expect.liveness)
          and (debate is None or debate["expect_met"])
          and (commit is None or commit["expect_met"]))
    traffic = world.traffic
    return RunResult(
        scenario=scenario.name,
        seed=scenario.seed,
        n=scenario.n,
        f=world.committee.f,
        safety=SAFETY_OK if safe else SAFETY_VIOLATED,
        liveness=liveness,
        completed_all=completed_all,
        converged=same,
        violations=[violation.as_dict() for violation in world.violations],
        committed=len(world.completed),
        requests=scenario.workload.requests if harness is None else harness.requests,
        executed=[replica.last_executed for replica in world.replicas],
        views=[replica.view for replica in world.replicas],
        byzantine_members=sorted(world.byzantine),
        sim_time_ms=round(world.now * MS, 3),
        events=world.events_processed,
        trace_hash=world.trace_digest(),
        messages={"total": sum(traffic.messages.values()),
                  "by_type": dict(sorted(traffic.messages.items()))},
        bytes=sum(traffic.bytes.values()),
        bytes_by_type=dict(sorted(traffic.bytes.items())),
        repro=repro_command(spec, scenario.n, scenario.seed, requests),
        expect=expect.model_dump(),
        ok=ok,
        wall_seconds=round(wall_seconds, 4),
        resolved=scenario.model_dump(by_alias=True, exclude_none=True),
        trace=world.trace,
        debate=debate,
        commit=commit,
    )
