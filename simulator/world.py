"""The deterministic simulated world: production sans-IO replicas and clients driven by a
seeded discrete-event loop in virtual time (DESIGN.md section 8).

One ``seed`` fixes everything: keys, every network decision, clock skews, Byzantine choices.
Each subsystem draws from its own ``random.Random`` derived from the seed and the
subsystem's name (``world.rng(name)``), so adding draws in one never shifts another.
``trace_digest()`` fingerprints the whole run (every event, in order, with its bytes).

There is no trio and no wall clock here: a ``heapq`` of ``(time, tiebreak, event)``. Nodes
see their own *local* clock: ``epoch + t * (1 + drift) + offset`` with a per-member offset
and drift drawn from the seed.

What a node is: anything with ``receive(sender, data, now)``, ``handle_timer(now)`` and
``next_deadline()`` returning effects -- an honest ``Replica``, a Byzantine wrapper around
one (``simulator/byzantine.py``), or a ``Client``.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bftdeliberate.committee import Committee, make_committee
from bftdeliberate.crypto import PrivateKey, SignatureBackend, Verifier
from bftdeliberate.kv import KeyValueStore
from bftdeliberate.pbft.app import StateMachine
from bftdeliberate.pbft.client import Client
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.pbft.effects import (
    Broadcast,
    CheckpointStable,
    Completed,
    Evidence,
    Execute,
    Persist,
    Reply,
    Send,
)
from bftdeliberate.pbft.replica import Replica
from bftdeliberate.wire.limits import FRAME_HEADER_SIZE
from simulator.fastsig import SimulatedSignatureBackend
from simulator.network import Network, NetworkProfile
from simulator.oracles import Oracles

Node = int | str
#: A link filter sees (sender, receiver, envelope bytes, message type) and returns the bytes
#: to deliver, or None to drop the message. Tests use it for surgical faults.
LinkFilter = Callable[[Node, Node, bytes, str], bytes | None]
#: Local clocks start here (seconds) so that skewed clocks never read negative.
CLOCK_EPOCH = 1_000.0
#: Safety valve against runaway runs (a flood behaviour, a bug): events per run.
DEFAULT_MAX_EVENTS = 5_000_000


class NodeLike(Protocol):
    def receive(self, sender: Node, data: bytes, now: float) -> list[Any]: ...
    def handle_timer(self, now: float) -> list[Any]: ...
    def next_deadline(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Delayed:
    """Effect wrapper (Byzantine ``slow``): perform ``effect`` ``delay`` seconds later."""

    effect: Any
    delay: float


@dataclass(slots=True)
class Traffic:
    """What crossed the network, by message type (a member never sends to itself)."""

    messages: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)

    def count(self, message_type: str, size: int) -> None:
        self.messages[message_type] += 1
        self.bytes[message_type] += size + FRAME_HEADER_SIZE


@dataclass(slots=True)
class SimDisk:
    """A member's durable log. Writes are unsynced until the end of the step that made them
    (the driver syncs before it sends, as the real peer's batched fsync does); a crash with
    ``lose_unsynced`` drops what was not synced. A new stable checkpoint's ``state`` record
    compacts the log (votes at or below it and older states are no longer needed)."""

    synced: list[Persist] = field(default_factory=list)
    unsynced: list[Persist] = field(default_factory=list)

    def append(self, record: Persist) -> None:
        self.unsynced.append(record)
        if record.kind == "state":
            self._compact(record.message.message.seq)  # type: ignore[union-attr]

    def _compact(self, stable: int) -> None:
        from bftdeliberate.pbft.effects import needed_after_checkpoint

        self.synced = [r for r in self.synced if needed_after_checkpoint(r, stable)]
        self.unsynced = [r for r in self.unsynced if needed_after_checkpoint(r, stable)]

    def sync(self) -> None:
        if self.unsynced:
            self.synced.extend(self.unsynced)
            self.unsynced.clear()

    def crash(self, lose_unsynced: bool) -> int:
        lost = len(self.unsynced) if lose_unsynced else 0
        if lose_unsynced:
            self.unsynced.clear()
        else:
            self.sync()
        return lost

    def __iter__(self) -> Iterator[Persist]:
        return iter(self.synced + self.unsynced)

    def __getitem__(self, index: int) -> Persist:
        return (self.synced + self.unsynced)[index]

    def __len__(self) -> int:
        return len(self.synced) + len(self.unsynced)


@dataclass(frozen=True, slots=True)
class CompletedRequest:
    client: str
    timestamp: int
    result: bytes
    submitted_at: float
    completed_at: float


def with_roles(committee: Committee, roles: Mapping[int, Sequence[str]]) -> Committee:
    """``committee`` with the genesis roles of some members replaced (roles come only from
    the genesis manifest, so this makes another committee, with another digest)."""
    members = tuple(
        member.model_copy(update={"roles": tuple(sorted(set(roles[member.id])))})
        if member.id in roles else member
        for member in committee.members)
    return committee.model_copy(update={"members": members})


class Alarm:
    """One owner's pending wake-up in a world: :meth:`arm` keeps an earlier pending time
    (so many requests for a wake-up cost one event), :meth:`cancel` forgets it; ``fire`` runs
    only for the latest arming."""

    def __init__(self, world: World, label: str, fire: Callable[[], None]) -> None:
        self.world = world
        self.label = label
        self.fire = fire
        self._generation = 0
        self.at: float | None = None

    def arm(self, at: float) -> None:
        if self.at is not None and self.world.now <= self.at <= at:
            return  # an earlier wake-up is already set
        self._generation += 1
        generation = self._generation
        self.at = at
        self.world.at(at, lambda: self._fired(generation), self.label)

    def cancel(self) -> None:
        self._generation += 1
        self.at = None

    def _fired(self, generation: int) -> None:
        if generation != self._generation:
            return  # superseded
        self.at = None
        self.fire()


class World:
    """n members (honest replicas or Byzantine wrappers) and some clients of one committee."""

    def __init__(
        self,
        n: int = 4,
        *,
        seed: int = 0,
        clients: int = 1,
        config: ReplicaConfig | None = None,
        network: NetworkProfile | None = None,
        backend: SignatureBackend | None = None,
        clock_skew_ms: float = 0.0,
        clock_drift: float = 0.0,
        app_factory: Callable[[], StateMachine] = KeyValueStore,
        app_for_committee: Callable[[Committee], StateMachine] | None = None,
        roles: Mapping[int, Sequence[str]] | None = None,
        cpu_clock: Callable[[], float] | None = None,
        record_trace: bool = False,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        self.seed = seed
        self.backend: SignatureBackend = backend or SimulatedSignatureBackend()
        committee, member_keys, client_keys = make_committee(
            n, clients=clients, rng=self.rng("keys"), backend=self.backend
        )
        if roles:
            committee = with_roles(committee, roles)
        self.committee: Committee = committee
        self.member_keys: list[PrivateKey] = member_keys
        self.client_keys: dict[str, PrivateKey] = client_keys
        self.config = config or ReplicaConfig()
        self.app_factory: Callable[[], StateMachine] = (
            app_factory if app_for_committee is None
            else (lambda: app_for_committee(self.committee)))
        self.replicas: list[Replica] = [self.make_replica(i) for i in range(n)]
        self.clients: dict[str, Client] = {
            cid: Client(cid, key, committee, verifier=self.make_verifier())
            for cid, key in client_keys.items()
        }
        self.nodes: dict[Node, NodeLike] = {i: r for i, r in enumerate(self.replicas)}
        self.nodes.update(self.clients)
        self.byzantine: set[int] = set()
        self.down: set[int] = set()
        self._amnesiac: set[int] = set()  # down members whose disk was lost
        self.network = Network(network or NetworkProfile(), self.rng("network"))
        clock_rng = self.rng("clocks")
        self._clock: dict[Node, tuple[float, float]] = {
            i: (clock_rng.uniform(-clock_skew_ms, clock_skew_ms) / 1000.0,
                clock_rng.uniform(-clock_drift, clock_drift))
            for i in range(n)
        }
        self.now = 0.0
        self.link_filters: list[LinkFilter] = []
        #: Called with (member, Execute) for every execution, after the oracles saw it.
        self.execution_observers: list[Callable[[int, Execute], None]] = []
        #: Called with every request a client completed (after the workload saw it).
        self.completion_observers: list[Callable[[CompletedRequest], None]] = []
        self.traffic = Traffic()
        self.disks: dict[int, SimDisk] = {i: SimDisk() for i in range(n)}
        self.evidence: list[tuple[Node, Evidence]] = []
        self.stable_checkpoints: dict[int, list[int]] = {i: [] for i in range(n)}
        self.completed: list[CompletedRequest] = []
        self.events_processed = 0
        self.max_events = max_events
        self.oracles = Oracles(self)
        self.trace: list[dict[str, Any]] | None = [] if record_trace else None
        # Optional wall-clock accounting for benchmarks (never affects the run).
        self._cpu_clock = cpu_clock
        self.cpu_seconds: Counter[str] = Counter()

        self._events: list[tuple[float, int, str, Node, Node, Any]] = []
        self._tiebreak = itertools.count()
        self._timer_at: dict[Node, float | None] = {}
        self._timer_local: dict[Node, float] = {}  # the node's own deadline, in its clock
        self._submitted_at: dict[tuple[str, int], float] = {}
        self._trace_hash = hashlib.sha256(f"seed={seed};n={n}".encode())
        self._workload: Iterator[bytes] | None = None
        self._on_completed: Callable[[CompletedRequest], None] | None = None

    # ------------------------------------------------------------- set-up

    def rng(self, subsystem: str) -> random.Random:
        """An independent generator for one subsystem, derived from the run seed."""
        return random.Random(f"{self.seed}/{subsystem}")

    def make_verifier(self) -> Verifier:
        # With the simulated MAC backend a verification costs what a cache lookup costs
        # (one keyed hash), so the cache would only add work.
        simulated = isinstance(self.backend, SimulatedSignatureBackend)
        return Verifier(self.backend, cache_size=0) if simulated else Verifier(self.backend)

    def make_replica(self, member: int) -> Replica:
        """A fresh honest replica for ``member`` (also used by twins and wrappers)."""
        return Replica(member, self.committee, self.member_keys[member], self.app_factory(),
                       self.config, verifier=self.make_verifier())

    def add_client(self, client_id: str, key: PrivateKey, *, clock_of: Node | None = None,
                   ) -> Client:
        """A further client node (a member's agent signs requests under the member's name
        with the member's key); ``clock_of``: it reads that node's local clock."""
        if client_id in self.nodes:
            raise ValueError(f"node {client_id!r} already exists")
        client = Client(client_id, key, self.committee, verifier=self.make_verifier())
        self.clients[client_id] = client
        self.nodes[client_id] = client
        if clock_of is not None and clock_of in self._clock:
            self._clock[client_id] = self._clock[clock_of]
        return client

    def set_node(self, node_id: Node, node: NodeLike, *, byzantine: bool = True) -> None:
        """Replace what handles ``node_id``'s traffic (e.g. with a Byzantine wrapper)."""
        self.nodes[node_id] = node
        if byzantine and type(node_id) is int:
            self.byzantine.add(node_id)

    @property
    def honest(self) -> list[int]:
        return [i for i in range(self.committee.n) if i not in self.byzantine]

    def local_time(self, node: Node, at: float | None = None) -> float:
        offset, drift = self._clock.get(node, (0.0, 0.0))
        return CLOCK_EPOCH + (self.now if at is None else at) * (1.0 + drift) + offset

    def global_time(self, node: Node, local: float) -> float:
        """The global time at which ``node``'s local clock reads ``local``."""
        return self._global_time(node, local)

    def _global_time(self, node: Node, local: float) -> float:
        offset, drift = self._clock.get(node, (0.0, 0.0))
        return (local - CLOCK_EPOCH - offset) / (1.0 + drift)

    # ------------------------------------------------------------ actions

    def at(self, when: float, action: Callable[[], None], label: str) -> None:
        """Run ``action`` at global time ``when`` (fault schedules, phase changes)."""
        self._schedule(when, "action", label, label, action)

    def crash(self, member: int, lose_unsynced: bool = True, lose_disk: bool = False) -> None:
        """Stop ``member``: its memory is gone; its disk keeps what was synced (nothing at
        all with ``lose_disk``)."""
        self.down.add(member)
        self._timer_at[member] = None
        disk = self.disks[member]
        lost = len(disk) if lose_disk else disk.crash(lose_unsynced)
        if lose_disk:
            self.disks[member] = SimDisk()
            self._amnesiac.add(member)
        self._record("crash", member, member, f"lost={lost}".encode())

    def restart(self, member: int) -> None:
        """Start ``member`` again. An honest replica is a new process: a fresh ``Replica``
        rebuilt from its disk (``Replica.restore``) or, after ``lose_disk``, one that knows
        nothing and must not sign until it caught up (``Replica.lose_disk``). A Byzantine
        wrapper keeps its state (its faults are its behaviours)."""
        self.down.discard(member)
        if self.nodes[member] is self.replicas[member]:
            replica = self.make_replica(member)
            now = self.local_time(member)
            if member in self._amnesiac:
                replica.lose_disk()
            else:
                replica.restore(list(self.disks[member]), now)
            self.replicas[member] = replica
            self.nodes[member] = replica
            self.oracles.on_restart(member, replica.last_executed,
                                    disk_lost=member in self._amnesiac)
        self._amnesiac.discard(member)
        self._record("restart", member, member, b"")
        self._arm(member)

    def reconnect(self) -> None:
        """Links came back (a healed partition): every member that is up is told, as the
        peer runtime does on reconnecting (it then sends STATUS)."""
        for member in range(self.committee.n):
            node = self.nodes[member]
            if member not in self.down and hasattr(node, "reconnected"):
                self._perform(member, node.reconnected(self.local_time(member)))

    def submit(self, client_id: str, operation: bytes) -> None:
        """Have ``client_id`` send ``operation`` now."""
        client = self.clients[client_id]
        started = self._cpu_clock() if self._cpu_clock else 0.0
        effects = client.request(operation, self.local_time(client_id))
        if self._cpu_clock:
            self.cpu_seconds["clients"] += self._cpu_clock() - started
        self._submitted_at[(client_id, client.last_timestamp)] = self.now
        self._perform(client_id, effects)

    def inject(self, to: Node, sender: Node, data: bytes, delay: float = 0.0) -> None:
        """Deliver ``data`` to ``to`` as if the authenticated peer ``sender`` sent it."""
        self._schedule(self.now + delay, "deliver", to, sender, data)

    def transmit(self, sender: Node, to: Node, data: bytes, message_type: str) -> None:
        """Put one message on the network (filters, faults and counting apply)."""
        if self.link_filters:
            for link_filter in self.link_filters:
                filtered = link_filter(sender, to, data, message_type)
                if filtered is None:
                    return
                data = filtered
        if sender == to:
            return
        self.traffic.count(message_type, len(data))
        for arrival in self.network.arrivals(sender, to, self.now):
            heapq.heappush(self._events, (arrival, next(self._tiebreak), "deliver", to, sender, data))

    # -------------------------------------------------------------- running

    def run(
        self,
        *,
        until: Callable[[], bool] | None = None,
        max_time: float = 60.0,
        max_events: int | None = None,
    ) -> bool:
        """Process events until ``until()`` holds (True) or time/events run out (False)."""
        budget = self.max_events if max_events is None else max_events
        while self._events:
            if until is not None and until():
                return True
            if budget <= 0 or self._events[0][0] > max_time:
                return False
            budget -= 1
            at, _, kind, node, sender, data = heapq.heappop(self._events)
            self.now = max(self.now, at)
            self._step(kind, node, sender, data)
        return until is None or until()

    def start_workload(self, operations: Iterable[bytes],
                       on_completed: Callable[[CompletedRequest], None] | None = None) -> None:
        """Closed loop: every idle client takes the next operation as it completes one."""
        self._workload = iter(operations)
        self._on_completed = on_completed
        for client_id in self.clients:
            self._next_operation(client_id)

    def workload_done(self) -> bool:
        return self._workload is None and not any(c.busy for c in self.clients.values())

    def run_workload(
        self,
        operations: Iterable[bytes],
        *,
        max_time: float = 600.0,
        on_completed: Callable[[CompletedRequest], None] | None = None,
    ) -> bool:
        self.start_workload(operations, on_completed)
        done = self.run(until=self.workload_done, max_time=max_time)
        self._on_completed = None
        return done

    # ---------------------------------------------------------- inspection

    def state_digests(self) -> list[bytes]:
        return [replica.state_digest() for replica in self.replicas]

    def trace_digest(self) -> str:
        return self._trace_hash.hexdigest()

    @property
    def violations(self) -> list:
        return self.oracles.violations

    # ------------------------------------------------------------ internals

    def _next_operation(self, client_id: str) -> None:
        if self._workload is None:
            return
        operation = next(self._workload, None)
        if operation is None:
            self._workload = None
            return
        self.submit(client_id, operation)

    def _schedule(self, at: float, kind: str, node: Node, sender: Node, data: Any) -> None:
        heapq.heappush(self._events, (at, next(self._tiebreak), kind, node, sender, data))

    def _record(self, kind: str, node: Node, sender: Node, data: bytes) -> None:
        # Time in whole nanoseconds (exact, no float formatting) and the bytes themselves.
        self._trace_hash.update(b"%d|%s|%s|%s|" % (round(self.now * 1e9), kind.encode(),
                                                    str(node).encode(), str(sender).encode()))
        self._trace_hash.update(data)
        if self.trace is not None:
            self.trace.append({"event": self.events_processed, "t_ms": round(self.now * 1000, 6),
                               "kind": kind, "node": node, "sender": sender, "bytes": len(data)})

    def _step(self, kind: str, node: Node, sender: Node, data: Any) -> None:
        self.events_processed += 1
        if kind == "action":
            self._record("action", node, sender, str(node).encode())
            data()
            return
        if kind == "perform":
            self._perform(node, [data])
            return
        if type(node) is int and node in self.down:
            return  # a crashed member neither receives nor fires timers
        if kind == "timer" and self._timer_at.get(node) != self.now:
            return  # superseded by a re-armed timer
        self._record(kind, node, sender, data)
        target = self.nodes[node]
        local_now = self.local_time(node)
        started = self._cpu_clock() if self._cpu_clock else 0.0
        if kind == "timer":
            self._timer_at[node] = None
            # Converting clocks can land a hair before the deadline; never fire early.
            effects = target.handle_timer(max(local_now, self._timer_local.get(node, local_now)))
        else:
            effects = target.receive(sender, data, local_now)
        if self._cpu_clock:
            self.cpu_seconds["replicas" if type(node) is int else "clients"] += (
                self._cpu_clock() - started)
        self._perform(node, effects)
        if type(node) is int:
            self.oracles.after_step(node)

    def _perform(self, node: Node, effects: list[Any]) -> None:
        disk = self.disks.get(node) if type(node) is int else None  # type: ignore[arg-type]
        for effect in effects:
            kind = type(effect)  # exact types, commonest first: this loop is the hot path
            if kind is Persist:
                if disk is not None:
                    disk.append(effect)
                continue
            if disk is not None and disk.unsynced:
                disk.sync()  # persist-before-send: what was recorded is durable first
            if kind is Broadcast:
                raw, message_type = effect.message.raw, effect.message.type
                for member in range(self.committee.n):
                    if member != node:
                        self.transmit(node, member, raw, message_type)
            elif kind is Send:
                self.transmit(node, effect.to, effect.message.raw, effect.message.type)
            elif kind is Reply:
                self.transmit(node, effect.client, effect.message.raw, "reply")
            elif kind is Execute:
                self.oracles.on_execute(node, effect)  # type: ignore[arg-type]
                for observer in self.execution_observers:
                    observer(node, effect)  # type: ignore[arg-type]
            elif kind is Completed:
                self._complete(node, effect)  # type: ignore[arg-type]
            elif kind is Evidence:
                self.evidence.append((node, effect))
            elif kind is CheckpointStable:
                self.stable_checkpoints[node].append(effect.seq)  # type: ignore[index]
            elif kind is Delayed:
                self._schedule(self.now + effect.delay, "perform", node, node, effect.effect)
        if disk is not None and disk.unsynced:
            disk.sync()
        self._arm(node)

    def _arm(self, node: Node) -> None:
        if type(node) is int and node in self.down:
            return
        deadline = self.nodes[node].next_deadline()
        if deadline is None:
            return
        at = max(self.now, self._global_time(node, deadline))
        if at != self._timer_at.get(node):
            self._timer_at[node] = at
            self._timer_local[node] = deadline
            self._schedule(at, "timer", node, node, b"")

    def _complete(self, client_id: str, effect: Completed) -> None:
        record = CompletedRequest(
            client_id, effect.timestamp, effect.result,
            self._submitted_at.pop((client_id, effect.timestamp), self.now), self.now,
        )
        self.completed.append(record)
        if self._on_completed is not None:
            self._on_completed(record)
        for observer in self.completion_observers:
            observer(record)
        self._next_operation(client_id)
