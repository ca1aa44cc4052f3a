"""The trio TCP transport: authenticated links between members, and from clients to members.

Topology. Member i sends to member j over a connection i dialled (one outbound link per
other member, redialled with jittered exponential backoff); it reads from every link,
including the ones j dialled to it. A client dials every member and receives its replies
on the same links; members answer a client on its newest link. So every pair of members
has two one-way connections -- no tie-breaking over who dials whom, and a restarted member
is reconnected by both sides independently.

Every connection starts with the mutual handshake of ``net/handshake.py`` (bounded to
``MAX_HANDSHAKE_FRAME`` bytes per frame and ``handshake_timeout`` seconds); refusals are
counted by reason and logged, and the connection is closed.

Bounds (``TransportLimits``, each a named default below):

* Frames: 4-byte length prefix; a length above ``MAX_FRAME_SIZE`` closes that connection
  (and only that one) before any payload is buffered.
* Send queue per link, in messages and bytes. **Overflow policy: drop the oldest** queued
  messages until the new one fits, and count them (``send_dropped``). A peer that stops
  reading therefore costs the sender at most the queue bound plus one write chunk; PBFT
  recovers what was dropped (STATUS-driven retransmission, state transfer), and the newest
  messages are the ones a lagging peer can still use. Messages for a member with no live
  link are dropped the same way (counted as ``not-connected``).
* Receive inbox per link, in frames and bytes. A full inbox stops reading that link (TCP
  pushes back on that peer alone); the consumer drains inboxes round robin, at most
  ``FRAMES_PER_TURN`` frames per link per turn, so one noisy peer cannot starve the others.
* Connections: at most ``max_pending_handshakes`` unauthenticated ones at once (a new one
  evicts the oldest) and ``MAX_LINKS_PER_IDENTITY`` authenticated ones per peer (the
  oldest is closed).

The transport never interprets payloads: it hands ``(link.remote, frame)`` to its consumer
(the peer runtime), which runs the sans-IO core.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from bftdeliberate.committee import Committee, parse_address
from bftdeliberate.crypto import PrivateKey, Verifier
from bftdeliberate.errors import DecodeError, FrameTooLarge
from bftdeliberate.net.handshake import (
    MAX_HANDSHAKE_FRAME,
    HandshakeRefused,
    Identity,
    check_auth,
    describe,
    make_auth,
    make_hello,
    parse_hello,
)
from bftdeliberate.wire.framing import FrameDecoder, encode_frame
from bftdeliberate.wire.limits import FRAME_HEADER_SIZE, MAX_FRAME_SIZE

logger = logging.getLogger("bftd.net")

#: Queued bytes/messages per link to a member before the oldest are dropped. Sized for the
#: pipeline: a window of batched PRE-PREPAREs plus their votes.
MEMBER_SEND_QUEUE_BYTES = 16 * 1024 * 1024
MEMBER_SEND_QUEUE_MESSAGES = 16_384
#: Per client link: replies only (a client has one request outstanding).
CLIENT_SEND_QUEUE_BYTES = 1024 * 1024
CLIENT_SEND_QUEUE_MESSAGES = 1024
#: Frames joined into one ``send_all`` (fewer syscalls under load; bounds one write).
WRITE_COALESCE_BYTES = 256 * 1024
#: Bytes asked of the socket per read; the frame decoder holds at most one incomplete
#: frame plus one chunk.
RECEIVE_CHUNK = 64 * 1024
#: Frames and bytes read from one link and not yet consumed before reading it pauses.
INBOX_FRAMES = 1024
INBOX_BYTES = 8 * 1024 * 1024
#: Frames taken from one link per round-robin turn of the consumer.
FRAMES_PER_TURN = 64
#: Seconds an unauthenticated connection may take to complete the handshake.
HANDSHAKE_TIMEOUT = 5.0
#: Unauthenticated connections handled at once (random scanners cannot pin memory).
MAX_PENDING_HANDSHAKES = 64
#: Authenticated links kept per remote identity; a new one closes the oldest.
MAX_LINKS_PER_IDENTITY = 4
#: Redial backoff (seconds): doubles from the minimum up to the maximum, with full jitter.
RECONNECT_MIN = 0.05
RECONNECT_MAX = 2.0
#: Seconds a dial attempt may take.
CONNECT_TIMEOUT = 5.0
#: Refusal and link-error warnings logged per reason per interval (the rest are counted).
LOG_BURST = 10
LOG_INTERVAL = 60.0
#: Seconds closing one stream may take.
CLOSE_TIMEOUT = 0.5
#: Seconds graceful shutdown waits for queued messages to be written.
SHUTDOWN_GRACE = 2.0


@dataclass(frozen=True, slots=True)
class TransportLimits:
    member_send_queue_bytes: int = MEMBER_SEND_QUEUE_BYTES
    member_send_queue_messages: int = MEMBER_SEND_QUEUE_MESSAGES
    client_send_queue_bytes: int = CLIENT_SEND_QUEUE_BYTES
    client_send_queue_messages: int = CLIENT_SEND_QUEUE_MESSAGES
    max_frame_size: int = MAX_FRAME_SIZE
    receive_chunk: int = RECEIVE_CHUNK
    inbox_frames: int = INBOX_FRAMES
    inbox_bytes: int = INBOX_BYTES
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_pending_handshakes: int = MAX_PENDING_HANDSHAKES
    reconnect_min: float = RECONNECT_MIN
    reconnect_max: float = RECONNECT_MAX
    connect_timeout: float = CONNECT_TIMEOUT
    shutdown_grace: float = SHUTDOWN_GRACE


@dataclass(slots=True)
class TransportStats:
    handshakes_ok: int = 0
    handshakes_refused: Counter[str] = field(default_factory=Counter)
    connections_closed: Counter[str] = field(default_factory=Counter)
    frames_received: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    #: Messages dropped on the send side, per destination (overflow or no link).
    send_dropped: Counter[str] = field(default_factory=Counter)
    dials: int = 0


class Link:
    """One authenticated connection: a bounded send queue and a bounded receive inbox."""

    def __init__(self, transport: Transport, stream: trio.abc.Stream, remote: Identity,
                 *, outbound: bool, leftover: bytes) -> None:
        self.transport = transport
        self.stream = stream
        self.remote = remote
        self.outbound = outbound
        self.closed = False
        limits = transport.limits
        is_client = type(remote) is str
        self.max_queue_bytes = (limits.client_send_queue_bytes if is_client
                                else limits.member_send_queue_bytes)
        self.max_queue_messages = (limits.client_send_queue_messages if is_client
                                   else limits.member_send_queue_messages)
        self._queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self._has_data = trio.lowlevel.ParkingLot()
        self._drained = trio.lowlevel.ParkingLot()
        self.inbox: deque[bytes] = deque()
        self.inbox_bytes = 0
        self._inbox_space = trio.lowlevel.ParkingLot()
        self._decoder = FrameDecoder(limits.max_frame_size)
        self._leftover = leftover
        self._cancel = trio.CancelScope()
        self._close_reason: str | None = None
        # Fast-path writes (write_now) go straight to the socket's descriptor; only while
        # the writer task is idle, so the two never interleave bytes.
        socket = getattr(stream, "socket", None)
        self._fd: int | None = socket.fileno() if socket is not None else None
        self._writing = False
        self._partial = b""

    def __repr__(self) -> str:
        direction = "to" if self.outbound else "from"
        return f"<Link {direction} {describe(self.remote)}>"

    @property
    def queued_messages(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------ sending

    def enqueue(self, frame: bytes) -> None:
        """Queue one framed message; never blocks. Drops the oldest on overflow."""
        if self.closed:
            self.transport.stats.send_dropped[str(self.remote)] += 1
            return
        queue = self._queue
        size = len(frame)
        if size > self.max_queue_bytes:
            self.transport.stats.send_dropped[str(self.remote)] += 1
            return
        while queue and (self.queued_bytes + size > self.max_queue_bytes
                         or len(queue) >= self.max_queue_messages):
            self.queued_bytes -= len(queue.popleft())
            self.transport.stats.send_dropped[str(self.remote)] += 1
        queue.append(frame)
        self.queued_bytes += size
        if len(queue) == 1:
            self.transport._dirty[self] = None  # written at the consumer's next flush()

    def _take_chunk(self) -> bytes:
        """Queued frames joined, up to WRITE_COALESCE_BYTES (at least one frame)."""
        queue, stats = self._queue, self.transport.stats
        parts = [queue.popleft()]
        size = len(parts[0])
        while queue and size + len(queue[0]) <= WRITE_COALESCE_BYTES:
            part = queue.popleft()
            parts.append(part)
            size += len(part)
        self.queued_bytes -= size
        stats.frames_sent += len(parts)
        stats.bytes_sent += size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write_now(self) -> None:
        """Fast path at the end of a consumer step: if the writer task is idle, write what
        is queued with one non-blocking ``os.write`` (no task switch); what the socket does
        not take now, and any stream without a socket, goes to the writer task."""
        if self._writing or self.closed or not self._queue:
            return
        if self._fd is None:
            self._has_data.unpark_all()
            return
        data = self._take_chunk()
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            written = 0  # the writer task meets the error again and closes the link
        if written < len(data):
            # A partial frame must go out next and can never be dropped: not in the queue.
            self._partial = data[written:] if written else data
            self._has_data.unpark_all()

    async def _write_loop(self) -> None:
        queue = self._queue
        while True:
            while not queue and not self._partial:
                self._writing = False
                self._drained.unpark_all()
                await self._has_data.park()
            self._writing = True
            if self._partial:
                data, self._partial = self._partial, b""
            else:
                data = self._take_chunk()
            await self.stream.send_all(data)

    async def flush(self) -> None:
        """Wait until the queue is empty (the last chunk may still be in flight)."""
        while (self._queue or self._partial) and not self.closed:
            self._has_data.unpark_all()
            await self._drained.park()

    # ---------------------------------------------------------------- receiving

    async def _read_loop(self) -> None:
        limits, stats = self.transport.limits, self.transport.stats
        decoder, inbox = self._decoder, self.inbox
        data = self._leftover
        self._leftover = b""
        while True:
            if data:
                decoder.receive_data(data)  # FrameTooLarge/DecodeError close this link
                frames = decoder.frames()
                if frames:
                    for frame in frames:
                        inbox.append(frame)
                        self.inbox_bytes += len(frame)
                    stats.frames_received += len(frames)
                    self.transport._mark_ready(self)
            while len(inbox) >= limits.inbox_frames or self.inbox_bytes >= limits.inbox_bytes:
                await self._inbox_space.park()
            data = await self.stream.receive_some(limits.receive_chunk)
            if not data:
                self._end("eof")
                return
            stats.bytes_received += len(data)

    def take(self, limit: int) -> list[bytes]:
        """Up to ``limit`` frames from the inbox (the consumer's turn for this link)."""
        inbox = self.inbox
        count = min(limit, len(inbox))
        frames = [inbox.popleft() for _ in range(count)]
        self.inbox_bytes -= sum(map(len, frames))
        self._inbox_space.unpark_all()
        return frames

    async def _guarded(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run one half of the link; whatever ends it closes the whole link with a reason."""
        try:
            await loop()
        except FrameTooLarge as error:
            self._end("frame-too-large", str(error))
        except DecodeError as error:
            self._end("bad-framing", str(error))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._end("broken")

    def _end(self, reason: str, detail: str | None = None) -> None:
        if self._close_reason is None:
            self._close_reason = reason
            if detail is not None and self.transport._may_log(reason):
                logger.warning("closing link", extra={"fields": {
                    "peer": str(self.remote), "reason": reason, "detail": detail}})
        self._cancel.cancel()

    async def run(self) -> None:
        """Read and write until the connection fails or the link is closed."""
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guarded, self._read_loop)
                    nursery.start_soon(self._guarded, self._write_loop)
        finally:
            self.closed = True
            self._drained.unpark_all()
            self.transport.stats.connections_closed[self._close_reason or "closed"] += 1
            self.transport._forget(self)
            with trio.move_on_after(CLOSE_TIMEOUT) as cleanup:
                cleanup.shield = True
                await trio.aclose_forcefully(self.stream)

    def close(self) -> None:
        self._cancel.cancel()


Dialer = Callable[[int], Awaitable[trio.abc.Stream]]


class Transport:
    """Links of one identity (a member or a client) to the committee."""

    def __init__(self, committee: Committee, identity: Identity, key: PrivateKey, *,
                 verifier: Verifier | None = None, limits: TransportLimits | None = None,
                 rng: random.Random | None = None,
                 addresses: dict[int, tuple[str, int]] | None = None,
                 dialer: Dialer | None = None,
                 on_connected: Callable[[Link], None] | None = None) -> None:
        self.committee = committee
        self.identity = identity
        self.key = key
        self.verifier = verifier if verifier is not None else Verifier(key.backend)
        self.limits = limits or TransportLimits()
        self.stats = TransportStats()
        self._rng = rng or random.Random(secrets.randbits(64))
        self._addresses = addresses or {}
        self._dialer = dialer
        self._on_connected = on_connected
        #: The link each member is sent to over (ours, dialled), and each client's newest.
        self._send_links: dict[Identity, Link] = {}
        self._links: dict[Identity, list[Link]] = {}
        #: Cancel scopes of the handshakes in progress, oldest first.
        self._pending: dict[trio.CancelScope, None] = {}
        self._log_window: dict[str, tuple[float, int]] = {}
        #: Links with unread frames, in arrival order (the consumer's round robin).
        self.ready: OrderedDict[Link, None] = OrderedDict()
        #: Links with newly queued frames, written by the next flush().
        self._dirty: dict[Link, None] = {}
        self._work = trio.lowlevel.ParkingLot()
        self._connections_changed = trio.lowlevel.ParkingLot()

    # ------------------------------------------------------------ consumer side

    def _mark_ready(self, link: Link) -> None:
        if link not in self.ready:
            self.ready[link] = None
        self._work.unpark_all()

    def wake(self) -> None:
        """Wake the consumer (it has something besides frames to handle)."""
        self._work.unpark_all()

    async def wait_connection_change(self) -> None:
        """Return after the next link is adopted or forgotten."""
        await self._connections_changed.park()

    async def wait_ready(self) -> None:
        """Return once some link has frames (immediately if one has)."""
        if not self.ready:
            await self._work.park()

    def take_turn(self, budget: int) -> list[tuple[Identity, bytes]]:
        """Round robin over ready links: at most ``FRAMES_PER_TURN`` each, ``budget`` total.
        A link that still has frames goes to the back, so every ready link gets its turn."""
        taken: list[tuple[Identity, bytes]] = []
        ready = self.ready
        while ready and len(taken) < budget:
            link = next(iter(ready))
            remote = link.remote
            taken += [(remote, frame) for frame in
                      link.take(min(FRAMES_PER_TURN, budget - len(taken)))]
            if link.inbox:
                ready.move_to_end(link)
            else:
                del ready[link]
        return taken

    # --------------------------------------------------------------- send side

    def send(self, to: Identity, frame: bytes) -> None:
        """Queue an already framed message for ``to``; dropped (counted) if no link. It
        leaves at the next :meth:`flush`."""
        link = self._send_links.get(to)
        if link is None:
            self.stats.send_dropped[str(to)] += 1
            return
        link.enqueue(frame)

    def flush(self) -> None:
        """Write what was queued since the last flush (the consumer calls this at the end
        of each step, so one step's messages to a peer leave in one write)."""
        dirty, self._dirty = self._dirty, {}
        for link in dirty:
            link.write_now()

    def send_message(self, to: Identity, payload: bytes) -> None:
        """Frame ``payload`` and send it now (one message; steps use send + flush)."""
        self.send(to, encode_frame(payload, max_frame_size=self.limits.max_frame_size))
        self.flush()

    def connected(self, to: Identity) -> bool:
        return to in self._send_links

    def send_queue_depths(self) -> dict[str, dict[str, int]]:
        return {str(remote): {"messages": link.queued_messages, "bytes": link.queued_bytes}
                for remote, link in self._send_links.items()}

    @property
    def pending_handshakes(self) -> int:
        return len(self._pending)

    @property
    def link_count(self) -> int:
        return sum(len(links) for links in self._links.values())

    # ------------------------------------------------------------------ links

    def _adopt(self, link: Link) -> None:
        links = self._links.setdefault(link.remote, [])
        links.append(link)
        while len(links) > MAX_LINKS_PER_IDENTITY:
            links.pop(0).close()  # out of the list now: simultaneous adoptions close others
        # We send to members over links we dialled, to clients over their newest link.
        if link.outbound or type(link.remote) is str:
            self._send_links[link.remote] = link
        self._connections_changed.unpark_all()

    def _forget(self, link: Link) -> None:
        links = self._links.get(link.remote, [])
        if link in links:
            links.remove(link)
        if not links:
            self._links.pop(link.remote, None)
        if self._send_links.get(link.remote) is link:
            replacement = next((other for other in reversed(links)
                                if other.outbound or type(other.remote) is str), None)
            if replacement is None:
                del self._send_links[link.remote]
            else:
                self._send_links[link.remote] = replacement
        self.ready.pop(link, None)
        self._connections_changed.unpark_all()

    async def _run_link(self, link: Link) -> None:
        self._adopt(link)
        self.stats.handshakes_ok += 1
        if self._on_connected is not None:
            self._on_connected(link)
        await link.run()

    # -------------------------------------------------------------- handshake

    async def _handshake(self, stream: trio.abc.Stream, *, outbound: bool,
                         expected: Identity | None) -> tuple[Identity, bytes]:
        """Authenticate ``stream``; returns the remote identity and bytes read beyond AUTH."""
        buffer = bytearray()

        async def read_frame() -> bytes:
            while True:
                if len(buffer) >= FRAME_HEADER_SIZE:
                    length = int.from_bytes(buffer[:FRAME_HEADER_SIZE], "big")
                    if not 0 < length <= MAX_HANDSHAKE_FRAME:
                        raise HandshakeRefused("bad-framing",
                                               f"handshake frame of {length} bytes")
                    end = FRAME_HEADER_SIZE + length
                    if len(buffer) >= end:
                        frame = bytes(buffer[FRAME_HEADER_SIZE:end])
                        del buffer[:end]
                        return frame
                data = await stream.receive_some(MAX_HANDSHAKE_FRAME + FRAME_HEADER_SIZE)
                if not data:
                    raise HandshakeRefused("eof", "connection closed during the handshake")
                buffer.extend(data)

        mine = make_hello(self.committee, self.identity, secrets.token_bytes(32))
        await stream.send_all(encode_frame(mine.raw))
        theirs = parse_hello(await read_frame(), self.committee)
        if expected is not None and theirs.identity != expected:
            raise HandshakeRefused("unexpected-identity",
                                   f"dialled member {expected}, {describe(theirs.identity)} "
                                   "answered")
        if theirs.identity == self.identity:
            raise HandshakeRefused("self", "the peer claims our own identity")
        if not outbound and type(self.identity) is str:
            raise HandshakeRefused("client-accepts-nothing", "clients do not accept links")
        initiator, responder = (mine, theirs) if outbound else (theirs, mine)
        await stream.send_all(encode_frame(
            make_auth(self.key, self.committee, initiator, responder, self.identity)))
        check_auth(await read_frame(), self.committee, self.verifier, initiator, responder,
                   theirs.identity)
        return theirs.identity, bytes(buffer)

    def _refused(self, error: HandshakeRefused, peer: str) -> None:
        self.stats.handshakes_refused[error.reason] += 1
        if self._may_log(error.reason):
            logger.warning("handshake refused", extra={"fields": {
                "peer": peer, "reason": error.reason, "detail": error.detail,
                "refused_so_far": self.stats.handshakes_refused[error.reason]}})

    def _may_log(self, reason: str) -> bool:
        """At most LOG_BURST warnings per reason per LOG_INTERVAL seconds: a scanner or a
        flood of bad connections is counted in full but cannot fill the disk with logs."""
        now = trio.current_time()
        start, count = self._log_window.get(reason, (now, 0))
        if now - start >= LOG_INTERVAL:
            start, count = now, 0
        self._log_window[reason] = (start, count + 1)
        return count < LOG_BURST

    # ---------------------------------------------------------------- inbound

    async def handle_inbound(self, stream: trio.abc.Stream) -> None:
        """Authenticate an accepted connection and run it (a ``serve_*`` handler).

        At most ``max_pending_handshakes`` run at once; a new connection beyond that evicts
        the *oldest* pending one (refused as ``evicted``). An honest peer completes its
        handshake in a round trip, so connections that idle until the timeout cannot hold
        the door shut against members redialling."""
        peer = _peer_name(stream)
        pending = self._pending
        while len(pending) >= self.limits.max_pending_handshakes:
            oldest = next(iter(pending))
            del pending[oldest]
            oldest.cancel()  # that handler sees its scope cancelled: refused as evicted
        scope = trio.CancelScope()
        pending[scope] = None
        evicted = False
        try:
            with scope, trio.move_on_after(self.limits.handshake_timeout) as timeout:
                remote, leftover = await self._handshake(stream, outbound=False, expected=None)
            if scope.cancelled_caught:
                evicted = True
                raise HandshakeRefused("evicted", "the oldest pending handshake gave way")
            if timeout.cancelled_caught:
                raise HandshakeRefused("timeout", "no handshake within the timeout")
        except HandshakeRefused as error:
            self._refused(error, peer)
            await trio.aclose_forcefully(stream)
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.stats.handshakes_refused["broken"] += 1
            await trio.aclose_forcefully(stream)
            return
        finally:
            if not evicted:
                pending.pop(scope, None)
        await self._run_link(Link(self, stream, remote, outbound=False, leftover=leftover))

    async def serve(self, listeners: Sequence[trio.abc.Listener[trio.abc.Stream]]) -> None:
        """Accept and run connections on ``listeners`` until cancelled."""
        await trio.serve_listeners(self.handle_inbound, list(listeners))

    # --------------------------------------------------------------- outbound

    async def _open(self, member: int) -> trio.abc.Stream:
        if self._dialer is not None:
            return await self._dialer(member)
        host, port = self._addresses.get(member) or parse_address(
            self.committee.member(member).address)
        return await trio.open_tcp_stream(host, port)

    async def dial_forever(self, member: int) -> None:
        """Keep one authenticated outbound link to ``member``; redial with backoff."""
        failures = 0
        while True:
            stream = None
            try:
                with trio.move_on_after(self.limits.connect_timeout):
                    self.stats.dials += 1
                    stream = await self._open(member)
                if stream is not None:
                    with trio.move_on_after(self.limits.handshake_timeout) as timeout:
                        remote, leftover = await self._handshake(stream, outbound=True,
                                                                 expected=member)
                    if timeout.cancelled_caught:
                        raise HandshakeRefused("timeout", "no handshake within the timeout")
                    up_since = trio.current_time()
                    await self._run_link(Link(self, stream, remote, outbound=True,
                                              leftover=leftover))
                    stream = None
                    # Only a link that stayed up resets the backoff: a peer that hangs up
                    # right after each handshake is redialled ever more slowly.
                    if trio.current_time() - up_since >= self.limits.reconnect_max:
                        failures = 0
            except HandshakeRefused as error:
                self._refused(error, describe(member))
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # not up yet, or gone: retry below
            finally:
                if stream is not None:
                    await trio.aclose_forcefully(stream)
            failures += 1
            await trio.sleep(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.limits.reconnect_max,
                      self.limits.reconnect_min * 2 ** min(failures - 1, 30))
        # Jitter spreads the redials of many peers that lost the same member.
        return min(ceiling, self._rng.uniform(self.limits.reconnect_min / 2, ceiling))

    async def run_dialers(self, members: Sequence[int],
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for member in members:
                nursery.start_soon(self.dial_forever, member)
            task_status.started()

    async def drain(self) -> None:
        """Graceful shutdown: give queued messages ``shutdown_grace`` seconds to leave."""
        with trio.move_on_after(self.limits.shutdown_grace):
            for link in list(self._send_links.values()):
                await link.flush()

    def close_all(self) -> None:
        for links in list(self._links.values()):
            for link in list(links):
                link.close()


def _peer_name(stream: trio.abc.Stream) -> str:
    socket = getattr(stream, "socket", None)
    if socket is None:
        return "stream"
    try:
        host, port = socket.getpeername()[:2]
    except OSError:
        return "socket"
    return f"{host}:{port}"


__all__ = ["Link", "Transport", "TransportLimits", "TransportStats"]
