"""A deterministic in-process cluster: the production sans-IO replicas and clients driven by a
seeded discrete-event loop in virtual time.

This is the seed of the simulator (DESIGN.md section 8): one ``seed`` fixes the keys, every
network delay and therefore the whole run; ``trace_digest()`` fingerprints it. There is no
trio and no wall clock here -- a ``heapq`` of ``(time, tiebreak, event)``.

Faults are added from outside through ``link_filters`` (drop/alter a message on a link) and
``inject`` (deliver arbitrary bytes as if a given sender sent them); the fault catalogue
itself (partitions, Byzantine behaviours, crashes) is built on these seams by the simulator.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

from bftdeliberate.committee import Committee, make_committee
from bftdeliberate.crypto import PrivateKey, SignatureBackend, Verifier, get_backend
from bftdeliberate.kv import KeyValueStore
from bftdeliberate.pbft.app import StateMachine
from bftdeliberate.pbft.client import Client
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.pbft.effects import (
    Broadcast,
    CheckpointStable,
    Completed,
    Effect,
    Evidence,
    Execute,
    Persist,
    Reply,
    Send,
)
from bftdeliberate.pbft.replica import Replica
from bftdeliberate.wire.limits import FRAME_HEADER_SIZE

Node = int | str
#: A link filter sees (sender, receiver, envelope bytes, message type) and returns the bytes
#: to deliver, or None to drop the message.
LinkFilter = Callable[[Node, Node, bytes, str], bytes | None]


class SafetyViolation(AssertionError):
    """An oracle found two honest replicas disagreeing (or an op executed twice)."""


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """One-way delay of every link: ``base_delay`` plus uniform jitter, in seconds."""

    base_delay: float = 0.0005
    jitter: float = 0.0005


@dataclass(slots=True)
class Traffic:
    """What crossed the network, by message type (a member never sends to itself)."""

    messages: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)

    def count(self, message_type: str, size: int) -> None:
        self.messages[message_type] += 1
        self.bytes[message_type] += size + FRAME_HEADER_SIZE


@dataclass(frozen=True, slots=True)
class CompletedRequest:
    client: str
    timestamp: int
    result: bytes
    submitted_at: float
    completed_at: float


class SimCluster:
    """n replicas and some clients of one committee, in one seeded virtual world."""

    def __init__(
        self,
        n: int = 4,
        *,
        seed: int = 0,
        clients: int = 1,
        config: ReplicaConfig | None = None,
        profile: LinkProfile | None = None,
        backend: SignatureBackend | None = None,
        app_factory: Callable[[], StateMachine] = KeyValueStore,
        cpu_clock: Callable[[], float] | None = None,
    ) -> None:
        self.seed = seed
        master = random.Random(seed)
        # One generator per subsystem, so adding draws in one never shifts another.
        key_rng = random.Random(master.getrandbits(64))
        self._net_rng = random.Random(master.getrandbits(64))
        self.backend = backend or get_backend()
        committee, member_keys, client_keys = make_committee(
            n, clients=clients, rng=key_rng, backend=self.backend
        )
        self.committee: Committee = committee
        self.member_keys: list[PrivateKey] = member_keys
        self.client_keys: dict[str, PrivateKey] = client_keys
        self.config = config or ReplicaConfig()
        self.profile = profile or LinkProfile()
        self.replicas: list[Replica] = [
            Replica(i, committee, member_keys[i], app_factory(), self.config,
                    verifier=Verifier(self.backend))
            for i in range(n)
        ]
        self.clients: dict[str, Client] = {
            cid: Client(cid, key, committee, verifier=Verifier(self.backend))
            for cid, key in client_keys.items()
        }
        self.now = 0.0
        self.link_filters: list[LinkFilter] = []
        self.traffic = Traffic()
        self.disks: dict[int, list[Persist]] = {i: [] for i in range(n)}
        self.evidence: list[tuple[int, Evidence]] = []
        self.stable_checkpoints: dict[int, list[int]] = {i: [] for i in range(n)}
        self.completed: list[CompletedRequest] = []
        self.events_processed = 0
        # Optional wall-clock accounting for benchmarks (never affects the run): seconds
        # spent inside replica code vs. client code.
        self._cpu_clock = cpu_clock
        self.cpu_seconds: Counter[str] = Counter()
        # Oracles' memory: the digest agreed at each seq, and executions per (client, ts).
        self._agreed: dict[int, bytes] = {}
        self._executions: Counter[tuple[int, str, int]] = Counter()
        self.executed: dict[int, list[int]] = {i: [] for i in range(n)}

        self._events: list[tuple[float, int, str, Node, Node, bytes]] = []
        self._tiebreak = itertools.count()
        self._timer_at: dict[Node, float | None] = {}
        self._submitted_at: dict[tuple[str, int], float] = {}
        self._trace = hashlib.sha256(f"seed={seed};n={n}".encode())
        self._workload: Iterable[bytes] | None = None
        self._on_completed: Callable[[CompletedRequest], None] | None = None

    # ----------------------------------------------------------------- driving

    def submit(self, client_id: str, operation: bytes) -> None:
        """Have ``client_id`` send ``operation`` now."""
        client = self.clients[client_id]
        started = self._cpu_clock() if self._cpu_clock else 0.0
        effects = client.request(operation, self.now)
        if self._cpu_clock:
            self.cpu_seconds["clients"] += self._cpu_clock() - started
        self._submitted_at[(client_id, client.last_timestamp)] = self.now
        self._perform(client_id, effects)

    def inject(self, to: Node, sender: Node, data: bytes, delay: float = 0.0) -> None:
        """Deliver ``data`` to ``to`` as if the authenticated peer ``sender`` sent it."""
        self._schedule(self.now + delay, "deliver", to, sender, data)

    def run(
        self,
        *,
        until: Callable[[], bool] | None = None,
        max_time: float = 60.0,
        max_events: int = 10_000_000,
    ) -> bool:
        """Process events until ``until()`` holds (True) or time/events run out (False)."""
        budget = max_events
        while self._events:
            if until is not None and until():
                return True
            if budget == 0 or self._events[0][0] > max_time:
                return False
            budget -= 1
            at, _, kind, node, sender, data = heapq.heappop(self._events)
            self.now = max(self.now, at)
            self._step(kind, node, sender, data)
        return until is None or until()

    def run_workload(
        self,
        operations: Iterable[bytes],
        *,
        max_time: float = 600.0,
        on_completed: Callable[[CompletedRequest], None] | None = None,
    ) -> bool:
        """Closed loop: every idle client takes the next operation until all completed."""
        self._workload = iter(operations)
        self._on_completed = on_completed
        for client_id in self.clients:
            self._next_operation(client_id)
        done = self.run(until=lambda: self._workload is None and not self._busy(), max_time=max_time)
        self._on_completed = None
        return done

    # ----------------------------------------------------------------- oracles

    def state_digests(self) -> list[bytes]:
        return [replica.state_digest() for replica in self.replicas]

    def max_executed(self) -> int:
        return max(replica.last_executed for replica in self.replicas)

    def trace_digest(self) -> str:
        return self._trace.hexdigest()

    # -------------------------------------------------------------- internals

    def _busy(self) -> bool:
        return any(client.busy for client in self.clients.values())

    def _next_operation(self, client_id: str) -> None:
        if self._workload is None:
            return
        operation = next(self._workload, None)
        if operation is None:
            self._workload = None
            return
        self.submit(client_id, operation)

    def _schedule(self, at: float, kind: str, node: Node, sender: Node, data: bytes) -> None:
        heapq.heappush(self._events, (at, next(self._tiebreak), kind, node, sender, data))

    def _delay(self) -> float:
        return self.profile.base_delay + self._net_rng.random() * self.profile.jitter

    def _step(self, kind: str, node: Node, sender: Node, data: bytes) -> None:
        self.events_processed += 1
        self._trace.update(f"{self.now:.9f}|{kind}|{node}|{sender}|".encode())
        self._trace.update(hashlib.sha256(data).digest())
        if kind == "timer" and self._timer_at.get(node) != self.now:
            return  # superseded by a re-armed timer
        started = self._cpu_clock() if self._cpu_clock else 0.0
        if kind == "timer":
            self._timer_at[node] = None
            effects = self._node(node).handle_timer(self.now)
        elif type(node) is int:
            effects = self.replicas[node].receive(sender, data, self.now)
        else:
            effects = self.clients[node].receive(sender, data, self.now)  # type: ignore[arg-type]
        if self._cpu_clock:
            self.cpu_seconds["replicas" if type(node) is int else "clients"] += (
                self._cpu_clock() - started)
        self._perform(node, effects)

    def _node(self, node: Node) -> Replica | Client:
        return self.replicas[node] if type(node) is int else self.clients[node]  # type: ignore[index]

    def _transmit(self, sender: Node, to: Node, data: bytes, message_type: str) -> None:
        for link_filter in self.link_filters:
            filtered = link_filter(sender, to, data, message_type)
            if filtered is None:
                return
            data = filtered
        self.traffic.count(message_type, len(data))
        self._schedule(self.now + self._delay(), "deliver", to, sender, data)

    def _perform(self, node: Node, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self._transmit(node, effect.to, effect.message.raw, effect.message.type)
            elif isinstance(effect, Broadcast):
                for member in range(self.committee.n):
                    if member != node:
                        self._transmit(node, member, effect.message.raw, effect.message.type)
            elif isinstance(effect, Reply):
                self._transmit(node, effect.client, effect.message.raw, "reply")
            elif isinstance(effect, Persist):
                self.disks[node].append(effect)  # type: ignore[index]
            elif isinstance(effect, Execute):
                self._check_execute(node, effect)  # type: ignore[arg-type]
            elif isinstance(effect, Completed):
                self._complete(node, effect)  # type: ignore[arg-type]
            elif isinstance(effect, Evidence):
                self.evidence.append((node, effect))  # type: ignore[arg-type]
            elif isinstance(effect, CheckpointStable):
                self.stable_checkpoints[node].append(effect.seq)  # type: ignore[index]
        self._arm(node)

    def _arm(self, node: Node) -> None:
        deadline = self._node(node).next_deadline()
        if deadline is not None and deadline != self._timer_at.get(node):
            self._timer_at[node] = deadline
            self._schedule(deadline, "timer", node, node, b"")

    def _check_execute(self, replica: int, effect: Execute) -> None:
        agreed = self._agreed.setdefault(effect.seq, effect.digest)
        if agreed != effect.digest:
            raise SafetyViolation(
                f"agreement: replica {replica} executed seq {effect.seq} with another batch"
            )
        self.executed[replica].append(effect.seq)
        for request, ran in zip(effect.requests, effect.executed):
            if ran:
                key = (replica, request.client, request.timestamp)
                self._executions[key] += 1
                if self._executions[key] > 1:
                    raise SafetyViolation(f"integrity: replica {replica} executed {key[1:]} twice")

    def _complete(self, client_id: str, effect: Completed) -> None:
        record = CompletedRequest(
            client_id, effect.timestamp, effect.result,
            self._submitted_at.pop((client_id, effect.timestamp), self.now), self.now,
        )
        self.completed.append(record)
        if self._on_completed is not None:
            self._on_completed(record)
        self._next_operation(client_id)
