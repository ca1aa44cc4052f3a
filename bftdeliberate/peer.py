"""One committee member as a process: the sans-IO replica + the trio transport + one timer +
durable storage + the application; and the client side that submits operations.

The runtime is a loop of *steps* (etcd-raft's Ready discipline): take the frames that
arrived (round robin over links, at most ``MAX_FRAMES_PER_STEP``) and any due timer, feed
them to the replica, then **persist** every ``Persist`` record of the step, then **send**
the step's messages, then report executions. Persistence is a group commit: a flusher task
writes and fsyncs what the steps since its last turn appended; a step's messages are held
until everything it persisted is durable (and behind any earlier held messages, so each
link keeps the core's order). The replica's ``now`` is wall
time (``clock``, seconds since the epoch), because the primary's batch timestamps are
checked by backups on other machines; the trio timer is re-armed from ``next_deadline()``.

Embedding::

    async with open_peer(PeerConfig(committee, member_id=0, key=key, data_dir=path)) as peer:
        await peer.wait_executed(10)

    async with open_client(committee, "client-0", client_key) as client:
        result = await client.call(kv.put("k", b"v"))   # f+1 matching signed replies
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bftdeliberate.committee import Committee, parse_address
from bftdeliberate.crypto import PrivateKey, Verifier
from bftdeliberate.errors import ConfigError, LocalError, leaf_exceptions
from bftdeliberate.kv import KeyValueStore
from bftdeliberate.net.transport import Dialer, Link, Transport, TransportLimits
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
from bftdeliberate.wire.framing import encode_frame
from bftdeliberate.wire.messages import SignedMessage

logger = logging.getLogger("bftd.peer")

#: Frames fed to the replica per step before its effects are persisted and sent: bounds the
#: latency one step adds, and amortises one fsync over many messages under load.
MAX_FRAMES_PER_STEP = 256
#: File name of a member's protocol log inside its data directory.
LOG_FILE_NAME = "replica-{member}.log"
#: Evidence records kept for inspection (all are logged).
MAX_EVIDENCE_KEPT = 256
#: A client waits this long on start for links to every member before its first request.
CLIENT_CONNECT_WAIT = 2.0
#: ... of which at most this long for the last f members once n-f are linked.
CLIENT_STRAGGLER_GRACE = 0.2
#: Default seconds a client call waits for f+1 matching replies.
DEFAULT_CALL_TIMEOUT = 30.0


class ClientTimeout(LocalError):
    """No f+1 matching replies arrived within the call's timeout."""


def _trio_deadline(deadline: float, clock: Callable[[], float]) -> float:
    """Map a deadline on ``clock`` to trio's clock."""
    return trio.current_time() + max(0.0, deadline - clock())


class _MemoryDisk:
    """Storage for a peer without a data directory: nothing survives the process (tests and
    throwaway demos only -- a restarted member must have its votes back)."""

    fsyncs = 0
    size_bytes = 0
    compactions = 0

    def __init__(self) -> None:
        self._records: list[Persist] = []

    def records(self) -> list[Persist]:
        return list(self._records)

    def append(self, record: Persist) -> None:
        self._records.append(record)

    def begin_sync(self) -> tuple[int, int]:
        return len(self._records), 0

    def fsync(self) -> None:
        pass

    def end_sync(self, position: tuple[int, int]) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """What a member needs to run. Only ``committee``, ``member_id`` and ``key`` are required.

    ``data_dir``: where the protocol log lives (None: in memory, nothing survives a restart).
    ``listen``: (host, port) to bind, default the member's committee address; port 0 binds
    any free port (see ``Peer.port``). ``listeners``: ready trio listeners instead (tests).
    ``addresses``: dial members here instead of their committee addresses; ``dialer``
    replaces dialling altogether (memory streams in tests). ``lost_disk``: this member's
    disk was lost -- it must not sign until it caught up (``Replica.lose_disk``).
    """

    committee: Committee
    member_id: int
    key: PrivateKey
    app: StateMachine | None = None
    data_dir: Path | str | None = None
    replica_config: ReplicaConfig = field(default_factory=ReplicaConfig)
    listen: tuple[str, int] | None = None
    listeners: Sequence[trio.abc.Listener[Any]] | None = None
    addresses: dict[int, tuple[str, int]] | None = None
    dialer: Dialer | None = None
    limits: TransportLimits = field(default_factory=TransportLimits)
    metrics_port: int | None = None
    clock: Callable[[], float] = time.time
    lost_disk: bool = False
    on_execute: Callable[[Execute], None] | None = None
    #: Called (inside the peer's step: no IO) when the replica's view or its activity changed.
    on_view_change: Callable[[int, bool], None] | None = None
    #: More snapshot entries (metrics) from what runs beside the peer, e.g. the submitter's
    #: ``{"commit_events": {...}}``; read at scrape time.
    snapshot_extra: Callable[[], dict[str, Any]] | None = None


def on_execute_all(*hooks: Callable[[Execute], None] | None
                   ) -> Callable[[Execute], None] | None:
    """One ``on_execute`` hook calling each given one in order (None if there is none)."""
    present = [hook for hook in hooks if hook is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def each(execute: Execute) -> None:
        for hook in present:
            hook(execute)
    return each


@dataclass(slots=True)
class PeerStats:
    steps: int = 0
    frames: int = 0
    evidence: Counter[str] = field(default_factory=Counter)
    oversized_outgoing: int = 0
    core_errors: int = 0


class Peer:
    """A running member. Created by :func:`open_peer`; read-only for embedders except
    :meth:`wait_executed` and :meth:`snapshot`."""

    def __init__(self, config: PeerConfig) -> None:
        committee = config.committee
        if committee.member_public_key(config.member_id) != config.key.public_key:
            raise ConfigError(f"the key does not belong to member {config.member_id} of "
                              f"committee {committee.committee_id}")
        self.config = config
        self.committee = committee
        self.id = config.member_id
        self.clock = config.clock
        self.verifier = Verifier(config.key.backend)
        self.app = config.app if config.app is not None else KeyValueStore()
        self.replica = Replica(self.id, committee, config.key, self.app, config.replica_config,
                               verifier=self.verifier)
        self.disk = self._open_disk(config)
        self.transport = Transport(committee, self.id, config.key, verifier=self.verifier,
                                   limits=config.limits, addresses=config.addresses,
                                   dialer=config.dialer, on_connected=self._on_connected)
        self.stats = PeerStats()
        self.evidence: deque[Evidence] = deque(maxlen=MAX_EVIDENCE_KEPT)
        self.host = ""
        self.port = 0
        self.metrics_port: int | None = None
        self._executed = trio.lowlevel.ParkingLot()
        self._status_to: list[int] = []
        # Group commit: steps that appended records count up _appended_generation; the
        # flusher makes them durable and releases the held messages in order.
        self._appended_generation = 0
        self._durable_generation = 0
        self._held: deque[tuple[int, list[Effect]]] = deque()
        self._volatile = isinstance(self.disk, _MemoryDisk)
        self._logged_view = (0, True)
        self._flush_needed = trio.lowlevel.ParkingLot()
        try:
            self._restore()
        except BaseException:
            self.disk.close()  # release the log's lock: the caller may retry
            raise

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def _open_disk(config: PeerConfig) -> Any:
        if config.data_dir is None:
            return _MemoryDisk()
        from bftdeliberate.storage import ReplicaDisk

        data_dir = Path(config.data_dir)
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"{data_dir}: cannot create the data directory "
                              f"({error.strerror})") from None
        return ReplicaDisk.open(data_dir / LOG_FILE_NAME.format(member=config.member_id))

    def _restore(self) -> None:
        records = self.disk.records()
        if self.config.lost_disk:
            if records:
                raise ConfigError("lost_disk was given but the data directory holds a log: "
                                  "a member that kept its disk restarts from it")
            self.replica.lose_disk()
            logger.warning("started without a disk: signing nothing until caught up")
        elif records:
            self.replica.restore(records, self.clock())
            logger.info("restored", extra={"fields": self._position() | {
                "records": len(records)}})

    def _position(self) -> dict[str, Any]:
        replica = self.replica
        return {"view": replica.view, "seq": replica.last_executed}  # the handler adds member

    # ------------------------------------------------------------------- run

    async def _serve(self, nursery: trio.Nursery) -> None:
        config = self.config
        listeners = config.listeners
        if listeners is None:
            host, port = config.listen or parse_address(
                self.committee.member(self.id).address)
            try:
                listeners = await trio.open_tcp_listeners(port, host=host)
            except OSError as error:
                raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror})") from None
        first = listeners[0]
        socket = getattr(first, "socket", None)
        if socket is not None:
            self.host, self.port = socket.getsockname()[:2]
        nursery.start_soon(self.transport.serve, listeners)
        others = [member for member in range(self.committee.n) if member != self.id]
        await nursery.start(self.transport.run_dialers, others)
        nursery.start_soon(self._run_core)
        nursery.start_soon(self._run_flusher)
        if config.metrics_port is not None:
            from bftdeliberate.observability import serve_metrics

            try:
                self.metrics_port = await nursery.start(
                    lambda task_status: serve_metrics(self.snapshot, port=config.metrics_port,
                                                      task_status=task_status))
            except (OSError, BaseExceptionGroup) as error:
                bind_errors = [leaf for leaf in leaf_exceptions(error)
                               if isinstance(leaf, OSError)]
                if not bind_errors:
                    raise
                raise ConfigError(f"cannot serve metrics on 127.0.0.1:{config.metrics_port} "
                                  f"({bind_errors[0].strerror})") from None

    def _on_connected(self, link: Link) -> None:
        # A (re)connected member learns where we are: whoever is behind catches up.
        if link.outbound and type(link.remote) is int:
            self._status_to.append(link.remote)
            self.transport.wake()

    async def _run_core(self) -> None:
        replica, transport, clock = self.replica, self.transport, self.clock
        while True:
            deadline = replica.next_deadline()
            if not transport.ready and not self._status_to:
                if deadline is None:
                    await transport.wait_ready()
                else:
                    with trio.move_on_at(_trio_deadline(deadline, clock)):
                        await transport.wait_ready()
            now = clock()
            effects: list[Effect] = []
            if self._status_to:
                targets, self._status_to = self._status_to, []
                for effect in replica.reconnected(now):
                    if isinstance(effect, Broadcast):
                        effects += [Send(member, effect.message) for member in targets]
            deadline = replica.next_deadline()
            frames = transport.take_turn(MAX_FRAMES_PER_STEP)
            try:
                if deadline is not None and now >= deadline:
                    effects += replica.handle_timer(now)
                receive = replica.receive
                for sender, frame in frames:
                    effects += receive(sender, frame, now)
            except LocalError as error:
                # A limit the core cannot honour (a VIEW-CHANGE over MAX_MESSAGE_SIZE): the
                # step's remaining input is lost, the member stays up and says why.
                self.stats.core_errors += 1
                logger.error("core error", extra={"fields": self._position() | {
                    "detail": str(error)}})
            self.stats.steps += 1
            self.stats.frames += len(frames)
            if effects:
                self._perform(effects)
            if (replica.view, replica.view_active) != self._logged_view:
                self._log_view_change()
            await trio.lowlevel.checkpoint()

    def _perform(self, effects: list[Effect]) -> None:
        """Persist, then send, then report -- in the order the core gave. The step's
        messages leave only once everything it persisted is durable (group commit: see
        :meth:`_run_flusher`); Execute and Evidence are reported at once."""
        disk = self.disk
        sends: list[Effect] = []
        appended = False
        executed = False
        for effect in effects:
            kind = type(effect)
            if kind is Persist:
                disk.append(effect)
                appended = True
            elif kind is Send or kind is Broadcast or kind is Reply:
                sends.append(effect)
            elif kind is Execute:
                executed = True
                if self.config.on_execute is not None:
                    self.config.on_execute(effect)  # type: ignore[arg-type]
            elif kind is Evidence:
                self._on_evidence(effect)  # type: ignore[arg-type]
            elif kind is CheckpointStable:
                logger.debug("checkpoint stable", extra={"fields": self._position() | {
                    "checkpoint": effect.seq}})  # type: ignore[union-attr]
        if appended:
            self._appended_generation += 1
            if self._volatile:
                self._durable_generation = self._appended_generation  # nothing to wait for
            else:
                self._flush_needed.unpark_all()
        if sends:
            if self._held or self._durable_generation < self._appended_generation:
                # Persist-before-send; and FIFO behind earlier held messages.
                self._held.append((self._appended_generation, sends))
            else:
                self._send(sends)
        if executed:
            self._executed.unpark_all()

    async def _run_flusher(self) -> None:
        """Group commit: write what the steps appended, fsync it, then release the messages
        that waited for it. One fsync covers every step that ran since the last one (the
        core runs as long as frames are ready before this task gets its turn).

        The fsync runs on the event loop: handing it to a worker thread kept the loop free
        but cost more CPU than it saved on this 2-core machine (``bftd bench throughput``,
        8 clients: 442 vs 559 ops/s)."""
        disk = self.disk
        while True:
            while self._durable_generation >= self._appended_generation:
                await self._flush_needed.park()
            target = self._appended_generation
            position = disk.begin_sync()
            disk.fsync()
            disk.end_sync(position)
            self._durable_generation = target
            held = self._held
            while held and held[0][0] <= target:
                self._send(held.popleft()[1])

    def _send(self, sends: list[Effect]) -> None:
        transport = self.transport
        members = range(self.committee.n)
        for effect in sends:
            raw = effect.message.raw  # type: ignore[union-attr]
            try:
                frame = encode_frame(raw, max_frame_size=self.config.limits.max_frame_size)
            except LocalError:
                self.stats.oversized_outgoing += 1
                logger.error("message too large to send", extra={"fields": self._position() | {
                    "type": effect.message.type, "bytes": len(raw)}})  # type: ignore[union-attr]
                continue
            kind = type(effect)
            if kind is Broadcast:
                for member in members:
                    if member != self.id:
                        transport.send(member, frame)
            elif kind is Send:
                transport.send(effect.to, frame)  # type: ignore[union-attr]
            else:
                transport.send(effect.client, frame)  # type: ignore[union-attr]
        transport.flush()

    def _log_view_change(self) -> None:
        replica = self.replica
        self._logged_view = (replica.view, replica.view_active)
        event = "view entered" if replica.view_active else "view change started"
        logger.warning(event, extra={"fields": self._position() | {
            "primary": replica.primary, "view_changes": replica.stats.views_entered}})
        if self.config.on_view_change is not None:
            self.config.on_view_change(replica.view, replica.view_active)

    def _on_evidence(self, evidence: Evidence) -> None:
        self.evidence.append(evidence)
        self.stats.evidence[evidence.kind] += 1
        logger.warning("evidence", extra={"fields": self._position() | {
            "kind": evidence.kind, "culprit": evidence.culprit,
            "proofs": len(evidence.proofs)}})

    # --------------------------------------------------------------- queries

    async def wait_executed(self, seq: int) -> None:
        """Return once this member executed sequence number ``seq``."""
        while self.replica.last_executed < seq:
            await self._executed.park()

    def state_digest(self) -> bytes:
        return self.replica.state_digest()

    def snapshot(self) -> dict[str, Any]:
        """Counters and gauges for metrics and status (cheap: read at scrape time)."""
        replica, transport = self.replica, self.transport
        stats = replica.stats
        return {
            "member": self.id, "view": replica.view, "view_active": replica.view_active,
            "last_executed": replica.last_executed, "stable_checkpoint": replica.low_watermark,
            "state_digest": replica.state_digest().hex(),
            "committed_ops": stats.executed_requests, "committed_batches": stats.executed_batches,
            "view_changes": stats.views_entered, "state_transfers": stats.state_transfers,
            "rejected": dict(stats.dropped),
            "send_queue": transport.send_queue_depths(),
            "send_dropped": dict(transport.stats.send_dropped),
            "request_queue": replica.queued_requests, "connections": transport.link_count,
            "handshakes_refused": dict(transport.stats.handshakes_refused),
            "messages_sent": transport.stats.frames_sent,
            "bytes_sent": transport.stats.bytes_sent,
            "messages_received": transport.stats.frames_received,
            "bytes_received": transport.stats.bytes_received,
            "verifications": self.verifier.verifications,
            "verify_cache_hits": self.verifier.cache_hits,
            "fsyncs": getattr(self.disk, "fsyncs", 0),
            "log_bytes": getattr(self.disk, "size_bytes", 0),
            "evidence": dict(self.stats.evidence),
            "core_errors": self.stats.core_errors,
            **(self.config.snapshot_extra() if self.config.snapshot_extra is not None else {}),
        }


@asynccontextmanager
async def open_peer(config: PeerConfig) -> AsyncIterator[Peer]:
    """Run a member until the block exits; then drain send queues (bounded) and close."""
    peer = Peer(config)
    try:
        async with trio.open_nursery() as nursery:
            await peer._serve(nursery)
            logger.info("member up", extra={"fields": peer._position() | {
                "address": f"{peer.host}:{peer.port}", "metrics_port": peer.metrics_port}})
            try:
                yield peer
            finally:
                with trio.CancelScope(shield=True):
                    await peer.transport.drain()
                nursery.cancel_scope.cancel()
    finally:
        peer.disk.close()


# ====================================================================== client


class CommitteeClient:
    """Submit operations to a committee as one authorised client; see :func:`open_client`."""

    def __init__(self, committee: Committee, client_id: str, key: PrivateKey, *,
                 verifier: Verifier | None = None, clock: Callable[[], float] = time.time,
                 limits: TransportLimits | None = None,
                 addresses: dict[int, tuple[str, int]] | None = None,
                 dialer: Dialer | None = None) -> None:
        if committee.client_public_key(client_id) is None:
            raise ConfigError(f"{client_id!r} is not an authorised client of committee "
                              f"{committee.committee_id}")
        if committee.client_public_key(client_id) != key.public_key:
            raise ConfigError(f"the key does not belong to client {client_id!r}")
        self.committee = committee
        self.id = client_id
        self.clock = clock
        self.verifier = verifier if verifier is not None else Verifier(key.backend)
        self.core = Client(client_id, key, committee, verifier=self.verifier)
        self.transport = Transport(committee, client_id, key, verifier=self.verifier,
                                   limits=limits, addresses=addresses, dialer=dialer)
        self._lock = trio.Lock()
        self._done: trio.Event | None = None
        self._result: Completed | None = None
        self._timer_changed = trio.lowlevel.ParkingLot()

    async def _run(self) -> None:
        core, transport, clock = self.core, self.transport, self.clock
        while True:
            deadline = core.next_deadline()
            if not transport.ready:
                with trio.move_on_at(_trio_deadline(deadline, clock) if deadline is not None
                                     else float("inf")):
                    await transport.wait_ready()
            now = clock()
            effects: list[Effect] = []
            deadline = core.next_deadline()
            if deadline is not None and now >= deadline:
                effects += core.handle_timer(now)
            for sender, frame in transport.take_turn(MAX_FRAMES_PER_STEP):
                if type(sender) is int:
                    effects += core.receive(sender, frame, now)
            self._perform(effects)
            await trio.lowlevel.checkpoint()

    def _perform(self, effects: list[Effect]) -> None:
        for effect in effects:
            if type(effect) is Send:
                self.transport.send_message(effect.to, effect.message.raw)
            elif type(effect) is Broadcast:
                frame = encode_frame(effect.message.raw)
                for member in range(self.committee.n):
                    self.transport.send(member, frame)
            elif type(effect) is Completed and self._done is not None:
                self._result = effect
                self._done.set()
        self.transport.flush()

    async def wait_connected(self, count: int, timeout: float) -> int:
        """Wait (at most ``timeout`` seconds) for links to ``count`` members; returns how
        many are up."""
        with trio.move_on_after(timeout):
            while sum(self.transport.connected(m) for m in range(self.committee.n)) < count:
                await self.transport.wait_connection_change()
        return sum(self.transport.connected(m) for m in range(self.committee.n))

    async def call(self, operation: bytes, *, timeout: float = DEFAULT_CALL_TIMEOUT) -> bytes:
        """Order ``operation``; return the result f+1 members agree on.

        Raises :class:`ClientTimeout` if that takes longer than ``timeout`` seconds (the
        request is abandoned: the next call gets a new timestamp).
        """
        async with self._lock:
            self._done = trio.Event()
            self._result = None
            self._perform(self.core.request(operation, self.clock()))
            self.transport.wake()  # the loop re-arms its timer for the new request
            with trio.move_on_after(timeout):
                await self._done.wait()
            result, self._done = self._result, None
            if result is None:
                self.core.abandon()
                raise ClientTimeout(f"no {self.committee.reply_quorum} matching replies "
                                    f"within {timeout:g} s")
            return result.result

    def accept_executed(self, execute: Execute) -> bool:
        """Complete the outstanding :meth:`call` from an execution of this process's *own*
        replica, if ``execute`` holds the request (True when it did).

        For a member's agent running inside its peer: the member trusts its own replica (it
        executes only batches with a 2f+1 commit certificate), so it need not wait for f+1
        replies -- which matters when another process signs under the same name (the CLI
        acting as the member): members send a client's replies over its newest link only.
        An empty result means the request was not executed (a newer request under this
        name overtook it); the caller may send it again, with a new timestamp.
        """
        if self._done is None or not self.core.busy:
            return False
        timestamp = self.core.last_timestamp
        for request, result in zip(execute.requests, execute.results, strict=True):
            if request.client == self.id and request.timestamp == timestamp:
                self.core.abandon()  # late replies are now stale
                self._result = Completed(timestamp, result, execute.view)
                self._done.set()
                return True
        return False

    def send_signed(self, request: SignedMessage) -> None:
        """Send a request signed elsewhere to every member without waiting for any reply.
        Only Byzantine scripts need this (forged or duplicate requests in tests and demos);
        the members check its signature like any other request's."""
        frame = encode_frame(request.raw)
        for member in range(self.committee.n):
            self.transport.send(member, frame)
        self.transport.flush()


@asynccontextmanager
async def open_client(committee: Committee, client_id: str, key: PrivateKey, *,
                      verifier: Verifier | None = None,
                      clock: Callable[[], float] = time.time,
                      limits: TransportLimits | None = None,
                      addresses: dict[int, tuple[str, int]] | None = None,
                      dialer: Dialer | None = None,
                      connect_wait: float = CLIENT_CONNECT_WAIT,
                      ) -> AsyncIterator[CommitteeClient]:
    """A client connected to every member (redialled as needed) until the block exits.

    Waits up to ``connect_wait`` seconds for links first (for the last f members at most
    ``CLIENT_STRAGGLER_GRACE`` once n-f are linked), so that the first request does not
    have to wait for a retransmission timeout.
    """
    client = CommitteeClient(committee, client_id, key, verifier=verifier, clock=clock,
                             limits=limits, addresses=addresses, dialer=dialer)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.transport.run_dialers, range(committee.n))
        nursery.start_soon(client._run)
        # Everyone, but no longer than a short grace once a quorum is linked: one member
        # that is down must not delay every client's start by the whole wait.
        start = trio.current_time()
        await client.wait_connected(committee.n - committee.f, connect_wait)
        remaining = connect_wait - (trio.current_time() - start)
        await client.wait_connected(committee.n, max(0.0, min(remaining,
                                                              CLIENT_STRAGGLER_GRACE)))
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()


__all__ = ["ClientTimeout", "CommitteeClient", "Peer", "PeerConfig", "open_client",
           "open_peer"]
