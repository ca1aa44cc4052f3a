"""The trio transport (net/transport.py) under hostile and slow peers.

Real-socket tests run members with ``open_peer`` on 127.0.0.1 (listeners bound to port 0
first) and act as a misbehaving peer by hand with ``RawPeer``; the others use memory streams
(``trio.testing``) and, where time matters, the virtual ``autojump_clock``. Nothing waits
on wall-clock sleeps: tests park on events, read until the node closes a connection (it
counts the reason before closing), or poll a condition with ``trio.sleep(0)``.
"""

from __future__ import annotations

import itertools
import logging
import random
import secrets
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio.lowlevel
import trio.testing
from conftest import make_genesis

from bftdeliberate import kv
from bftdeliberate.committee import make_committee
from bftdeliberate.crypto import PrivateKey, Verifier
from bftdeliberate.net.handshake import (
    MAX_HANDSHAKE_FRAME,
    HandshakeRefused,
    check_auth,
    make_auth,
    make_hello,
    parse_hello,
)
from bftdeliberate.net.transport import (
    FRAMES_PER_TURN,
    MAX_LINKS_PER_IDENTITY,
    WRITE_COALESCE_BYTES,
    Link,
    Transport,
    TransportLimits,
)
from bftdeliberate.peer import MAX_FRAMES_PER_STEP, Peer, PeerConfig, open_client, open_peer
from bftdeliberate.wire.framing import encode_frame
from bftdeliberate.wire.limits import FRAME_HEADER_SIZE, MAX_FRAME_SIZE

GENESIS = make_genesis(4, clients=2)
COMMITTEE = GENESIS.committee
#: The same members and keys under another committee id: only the digest differs.
OTHER_COMMITTEE = make_committee(4, clients=2, rng=random.Random(1), committee_id="other")[0]
HOST = "127.0.0.1"
#: Fast redials so that a test never waits long for a reconnection.
FAST = TransportLimits(reconnect_min=0.01, reconnect_max=0.1)

Address = tuple[str, int]


# ===================================================================== helpers


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` at every scheduling round (the caller's fail_after bounds it).
    Never under the autojump clock: a polling task is never blocked, so time stands still."""
    while not condition():
        await trio.lowlevel.checkpoint()


async def bind() -> tuple[trio.SocketListener, Address]:
    listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
    return listener, (HOST, listener.socket.getsockname()[1])


def closed_port() -> int:
    """A port nothing listens on (dials to it are refused at once)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def cluster(limits: TransportLimits = FAST, live: int = 4,
                  ) -> AsyncIterator[tuple[list[Peer], dict[int, Address]]]:
    """Members ``0..live-1`` of GENESIS running in this process; the rest are absent."""
    bound = [await bind() for _ in range(live)]
    addresses = {i: address for i, (_, address) in enumerate(bound)}
    addresses.update({i: (HOST, closed_port()) for i in range(live, COMMITTEE.n)})
    async with AsyncExitStack() as stack:
        peers = [await stack.enter_async_context(open_peer(PeerConfig(
            COMMITTEE, i, GENESIS.member_keys[i], listeners=[listener], addresses=addresses,
            limits=limits))) for i, (listener, _) in enumerate(bound)]
        # Every member has its outbound links before the test starts.
        for peer in peers:
            for other in peers:
                while other is not peer and not peer.transport.connected(other.id):
                    await peer.transport.wait_connection_change()
        yield peers, addresses


async def client_call_succeeds(addresses: dict[int, Address], key: str = "k") -> None:
    async with open_client(COMMITTEE, "client-0", GENESIS.client_keys["client-0"],
                           addresses=addresses, limits=FAST) as client:
        value = secrets.token_bytes(8)
        await client.call(kv.put(key, value), timeout=5)
        assert value in await client.call(kv.get(key), timeout=5)


class RawPeer:
    """The far end of one connection, played by hand: the handshake with any identity, key
    and committee, then raw bytes."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, address: Address) -> RawPeer:
        return cls(await trio.open_tcp_stream(*address))

    async def read_frame(self) -> bytes:
        while True:
            if len(self.buffer) >= FRAME_HEADER_SIZE:
                length = int.from_bytes(self.buffer[:FRAME_HEADER_SIZE], "big")
                assert 0 < length <= MAX_HANDSHAKE_FRAME
                end = FRAME_HEADER_SIZE + length
                if len(self.buffer) >= end:
                    frame = bytes(self.buffer[FRAME_HEADER_SIZE:end])
                    del self.buffer[:end]
                    return frame
            data = await self.stream.receive_some()
            if not data:
                raise HandshakeRefused("eof", "the node closed the connection")
            self.buffer += data

    async def handshake(self, identity: int | str, key: PrivateKey, *, committee=COMMITTEE,
                        outbound: bool = True, extra: bytes = b"") -> int | str:
        """Authenticate as ``identity``; ``extra`` is sent in the same write as our AUTH.
        Returns the node's identity; raises HandshakeRefused if the node hangs up."""
        mine = make_hello(committee, identity, secrets.token_bytes(32))
        await self.stream.send_all(encode_frame(mine.raw))
        theirs = parse_hello(await self.read_frame(), committee)
        initiator, responder = (mine, theirs) if outbound else (theirs, mine)
        await self.stream.send_all(encode_frame(
            make_auth(key, committee, initiator, responder, identity)) + extra)
        check_auth(await self.read_frame(), committee, Verifier(), initiator, responder,
                   theirs.identity)
        return theirs.identity

    async def attempt(self, identity: int | str, key: PrivateKey, **kwargs) -> None:
        """A handshake the node is expected to refuse: it must hang up on us. (The node sends
        its AUTH before checking ours, so our side may well finish.)"""
        try:
            await self.handshake(identity, key, **kwargs)
        except (HandshakeRefused, trio.BrokenResourceError):
            pass
        await self.until_closed()

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError:
            pass  # the node hung up mid-way: fine, it refuses garbage

    async def until_closed(self) -> None:
        """Read (and discard) until the node closes the connection."""
        try:
            while await self.stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass  # reset: the node closed with our bytes unread
        await self.stream.aclose()


def refusals(peer: Peer) -> dict[str, int]:
    return dict(peer.transport.stats.handshakes_refused)


# ============================================================ refused handshakes


async def test_unknown_keys_are_refused_and_counted_and_the_node_keeps_serving():
    with trio.fail_after(20):
        async with cluster() as (peers, addresses):
            node = peers[0]
            ok_before = node.transport.stats.handshakes_ok
            links_before = node.transport.link_count
            impostors = [
                # A member's identity with another key (a fresh one, another member's).
                (1, PrivateKey.generate(random.Random(5)), "bad-signature"),
                (2, GENESIS.member_keys[3], "bad-signature"),
                # A client's identity with a member's key.
                ("client-1", GENESIS.member_keys[1], "bad-signature"),
                # Identities the committee does not know at all.
                ("mallory", PrivateKey.generate(random.Random(6)), "unknown-identity"),
                (4, PrivateKey.generate(random.Random(7)), "unknown-identity"),
            ]
            for identity, key, _ in impostors:
                raw = await RawPeer.connect(addresses[0])
                await raw.attempt(identity, key)
            # A whole Transport built for member 1 with the wrong key, dialling member 0.
            wrong = Transport(COMMITTEE, 1, PrivateKey.generate(random.Random(8)))
            stream = await trio.open_tcp_stream(*addresses[0])
            assert (await wrong._handshake(stream, outbound=True, expected=0))[0] == 0
            await RawPeer(stream).until_closed()

            expected = Counter(reason for _, _, reason in impostors)
            expected["bad-signature"] += 1  # the Transport's attempt
            assert expected == {"bad-signature": 4, "unknown-identity": 2}
            assert refusals(node) == expected
            assert node.snapshot()["handshakes_refused"] == expected
            assert node.transport.stats.handshakes_ok == ok_before
            assert node.transport.link_count == links_before
            assert all(node.transport.connected(m) for m in (1, 2, 3))
            await client_call_succeeds(addresses)


async def test_a_peer_from_another_committee_is_refused():
    with trio.fail_after(20):
        async with cluster() as (peers, addresses):
            node = peers[0]
            raw = await RawPeer.connect(addresses[0])
            # Member 1's own key and id, but the HELLO names the other committee's digest.
            # (Our side refuses the node's HELLO too, before sending an AUTH.)
            await raw.attempt(1, GENESIS.member_keys[1], committee=OTHER_COMMITTEE)
            # A full Transport of the other committee, dialling member 0.
            foreign = Transport(OTHER_COMMITTEE, 2, GENESIS.member_keys[2])
            stream = await trio.open_tcp_stream(*addresses[0])
            with pytest.raises(HandshakeRefused) as caught:
                await foreign._handshake(stream, outbound=True, expected=0)
            assert caught.value.reason == "wrong-committee"
            await RawPeer(stream).until_closed()
            assert refusals(node) == {"wrong-committee": 2}
            await client_call_succeeds(addresses)


# =========================================================== hostile bytes


@pytest.mark.parametrize("with_auth", [False, True], ids=["header-later", "header-with-auth"])
async def test_oversized_frame_closes_only_that_connection(with_auth):
    header = (MAX_FRAME_SIZE + 1).to_bytes(FRAME_HEADER_SIZE, "big")
    with trio.fail_after(20):
        async with cluster() as (peers, addresses):
            node = peers[0]
            # A well-behaved second link of the same client stays up throughout.
            good = RawPeer(await trio.open_tcp_stream(*addresses[0]))
            assert await good.handshake("client-1", GENESIS.client_keys["client-1"]) == 0
            raw = await RawPeer.connect(addresses[0])
            # Authenticated (a legitimate client), then a header announcing MAX + 1 bytes;
            # either in the same write as the AUTH (the handshake's leftover bytes) or later.
            identity = await raw.handshake("client-1", GENESIS.client_keys["client-1"],
                                           extra=header if with_auth else b"")
            assert identity == 0
            if not with_auth:
                await raw.send(header)
            await raw.until_closed()
            assert node.transport.stats.connections_closed["frame-too-large"] == 1
            assert refusals(node) == {}
            # The member links, and the client's other link, are untouched.
            assert all(node.transport.connected(m) for m in (1, 2, 3))
            assert all(peer.transport.connected(0) for peer in peers[1:])
            assert node.transport.connected("client-1")
            await good.send(encode_frame(b"still here"))
            await client_call_succeeds(addresses)
            await good.stream.aclose()


async def test_random_bytes_do_not_crash_the_node():
    chunk = 64 * 1024
    with trio.fail_after(20):
        async with cluster() as (peers, addresses):
            node = peers[0]
            connections = 0
            # Unauthenticated garbage: pure noise, and noise behind a plausible header.
            for seed in range(6):
                noise = random.Random(seed).randbytes(chunk)
                if seed % 2:
                    noise = (200).to_bytes(FRAME_HEADER_SIZE, "big") + noise
                raw = await RawPeer.connect(addresses[seed % 4])
                await raw.send(noise)
                await raw.until_closed()
                connections += 1
            # A valid HELLO, then noise where the AUTH should be.
            for seed in range(6, 8):
                raw = await RawPeer.connect(addresses[0])
                hello = make_hello(COMMITTEE, "client-1", secrets.token_bytes(32))
                await raw.send(encode_frame(hello.raw) + random.Random(seed).randbytes(chunk))
                await raw.until_closed()
                connections += 1
            refused = sum(sum(refusals(peer).values()) for peer in peers)
            assert refused == connections
            # Authenticated garbage: random bytes as a raw stream after the handshake (closes
            # on bad framing) and random payloads in valid frames (reach the replica).
            raw = await RawPeer.connect(addresses[0])
            await raw.handshake("client-1", GENESIS.client_keys["client-1"])
            await raw.send(random.Random(8).randbytes(chunk))
            await raw.until_closed()
            closed = node.transport.stats.connections_closed
            assert closed["bad-framing"] + closed["frame-too-large"] == 1
            raw = await RawPeer.connect(addresses[0])
            await raw.handshake("client-1", GENESIS.client_keys["client-1"])
            rng = random.Random(9)
            malformed = node.replica.stats.dropped["malformed"]
            await raw.send(b"".join(encode_frame(rng.randbytes(rng.randrange(1, 4096)))
                                    for _ in range(64)))
            await until(lambda: node.replica.stats.dropped["malformed"] == malformed + 64)
            await client_call_succeeds(addresses)
            await raw.stream.aclose()


# ============================================================ send-side bounds


@asynccontextmanager
async def slow_member(limits: TransportLimits) -> AsyncIterator[tuple[Transport, Link]]:
    """Member 0's Transport with an authenticated link to a member 1 that stops reading after
    the handshake. Member 0 writes into a lockstep stream (``send_all`` returns only once
    the other side received the bytes: no buffer at all); member 1 writes into a memory
    stream (so that both sides can send their HELLO at once)."""

    async def dialer(member: int) -> trio.abc.Stream:
        to_remote, from_near = trio.testing.lockstep_stream_one_way_pair()
        to_near, from_remote = trio.testing.memory_stream_one_way_pair()
        near = trio.StapledStream(to_remote, from_remote)
        remote = RawPeer(trio.StapledStream(to_near, from_near))

        async def answer() -> None:
            await remote.handshake(member, GENESIS.member_keys[member], outbound=False)
        nursery.start_soon(answer)  # then it stops reading for good
        return near

    transport = Transport(COMMITTEE, 0, GENESIS.member_keys[0], limits=limits, dialer=dialer)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run_dialers, [1])
        while not transport.connected(1):
            await transport.wait_connection_change()
        try:
            yield transport, transport._send_links[1]
        finally:
            nursery.cancel_scope.cancel()


async def test_a_peer_that_stops_reading_costs_at_most_the_queue_bound():
    bound = 64 * 1024
    limits = TransportLimits(member_send_queue_bytes=bound, member_send_queue_messages=100)
    payload = b"x" * 1000
    with trio.fail_after(10):
        async with slow_member(limits) as (transport, link):
            assert link.max_queue_bytes == bound
            for i in range(5000):  # 5 MB for a peer that reads nothing
                transport.send_message(1, payload)
                assert link.queued_bytes <= bound and link.queued_messages <= 100
                if i % 500 == 0:
                    await trio.testing.wait_all_tasks_blocked()  # the writer runs, and sticks
            await trio.testing.wait_all_tasks_blocked()
            assert link.queued_bytes <= bound
            stats = transport.stats
            # One write is in flight (blocked in send_all), the rest was dropped oldest first.
            assert stats.bytes_sent <= WRITE_COALESCE_BYTES
            assert stats.send_dropped["1"] == 5000 - link.queued_messages - stats.frames_sent > 0
            assert transport.send_queue_depths()["1"]["bytes"] == link.queued_bytes
            # The newest messages are the ones kept.
            transport.send_message(1, b"newest")
            assert link._queue[-1] == encode_frame(b"newest")


async def test_a_frame_larger_than_the_queue_bound_is_not_queued():
    bound = 4096
    limits = TransportLimits(member_send_queue_bytes=bound)
    with trio.fail_after(10):
        async with slow_member(limits) as (transport, link):
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(3):
                transport.send_message(1, b"y" * (4 * bound))  # legal: below max_frame_size
                assert link.queued_bytes <= bound


# ============================================================ fair receiving


async def _inbound_links(transport: Transport, nursery: trio.Nursery,
                         senders: list[tuple[int | str, int]]) -> list[Link]:
    """One authenticated inbound link per ``(identity, frames)``, made ready in this order,
    each with ``frames`` small frames in its inbox."""
    links = []
    for identity, count in senders:
        near, far = trio.testing.memory_stream_pair()
        nursery.start_soon(transport.handle_inbound, far)
        remote = RawPeer(near)
        key = GENESIS.member_keys[identity] if type(identity) is int \
            else GENESIS.client_keys[identity]
        await remote.handshake(identity, key)
        await remote.stream.send_all(b"".join(encode_frame(f"{identity}:{i}".encode())
                                              for i in range(count)))
        await trio.testing.wait_all_tasks_blocked()
        link = next(link for link in transport.ready if link.remote == identity)
        assert len(link.inbox) == count
        links.append(link)
    return links


BIG_INBOX = TransportLimits(inbox_frames=50_000)


async def test_a_quiet_link_is_not_behind_a_noisy_links_backlog():
    transport = Transport(COMMITTEE, 0, GENESIS.member_keys[0], limits=BIG_INBOX)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            noisy, quiet = await _inbound_links(transport, nursery, [(1, 10_000),
                                                                     ("client-0", 10)])
            taken = transport.take_turn(100)
            assert len(taken) == 100
            from_quiet = [frame for sender, frame in taken if sender == "client-0"]
            assert from_quiet == [f"client-0:{i}".encode() for i in range(10)]
            assert sum(sender == 1 for sender, _ in taken) == 90
            assert not quiet.inbox and quiet not in transport.ready
            assert len(noisy.inbox) == 10_000 - 90 and noisy in transport.ready
            nursery.cancel_scope.cancel()


async def test_round_robin_reaches_every_link_while_others_stay_noisy():
    # Four noisy links (e.g. one Byzantine client's MAX_LINKS_PER_IDENTITY links, or flooding
    # members) became ready first, and fill the peer's per-step budget of 4 * 64 frames.
    assert MAX_FRAMES_PER_STEP == 4 * FRAMES_PER_TURN
    transport = Transport(COMMITTEE, 0, GENESIS.member_keys[0], limits=BIG_INBOX)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await _inbound_links(transport, nursery, [(1, 2000), (2, 2000), (3, 2000),
                                                      ("client-1", 2000), ("client-0", 10)])
            served = [sender for _ in range(3)
                      for sender, _ in transport.take_turn(MAX_FRAMES_PER_STEP)]
            nursery.cancel_scope.cancel()
    # Fair round robin serves the fifth link in the second step at the latest.
    assert "client-0" in served


async def test_a_full_inbox_stops_reading_that_link_only():
    limits = TransportLimits(inbox_frames=100)
    transport = Transport(COMMITTEE, 0, GENESIS.member_keys[0], limits=limits)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            count = 20_000  # 10 bytes a frame: three receive chunks' worth
            near, far = trio.testing.memory_stream_pair()
            nursery.start_soon(transport.handle_inbound, far)
            remote = RawPeer(near)
            await remote.handshake(1, GENESIS.member_keys[1])
            await remote.stream.send_all(b"".join(encode_frame(b"%06d" % i)
                                                  for i in range(count)))
            await trio.testing.wait_all_tasks_blocked()
            (noisy,) = transport.ready
            # Reading paused at the bound (plus what the last receive chunk held).
            assert 100 <= len(noisy.inbox) <= 100 + limits.receive_chunk // 10
            assert transport.stats.bytes_received < count * 10
            # Another link is still read meanwhile.
            (quiet,) = await _inbound_links(transport, nursery, [(2, 10)])
            assert list(transport.ready) == [noisy, quiet]
            # Draining resumes reading, and every frame arrives, in order.
            got = []
            while len(got) < count + 10:
                got += [frame for _, frame in transport.take_turn(MAX_FRAMES_PER_STEP)]
                await trio.testing.wait_all_tasks_blocked()
            assert [frame for frame in got if len(frame) == 6] == [b"%06d" % i
                                                                   for i in range(count)]
            assert transport.stats.frames_received == count + 10
            nursery.cancel_scope.cancel()


# ============================================================ connection limits


async def test_silent_connections_time_out_and_pending_handshakes_are_bounded(autojump_clock):
    limits = TransportLimits(max_pending_handshakes=2, handshake_timeout=3.0)
    transport = Transport(COMMITTEE, 0, GENESIS.member_keys[0], limits=limits)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            silent = []
            start = trio.current_time()
            for _ in range(3):
                near, far = trio.testing.memory_stream_pair()
                silent.append(RawPeer(near))
                nursery.start_soon(transport.handle_inbound, far)
                await silent[-1].read_frame()  # the node's HELLO: its handshake began
            await silent[0].until_closed()  # the oldest gave way to the third at once
            assert trio.current_time() == start
            assert refusals_of(transport) == {"evicted": 1}
            assert transport.pending_handshakes == 2
            await silent[1].until_closed()
            await silent[2].until_closed()
            assert trio.current_time() - start == pytest.approx(3.0)
            assert refusals_of(transport) == {"evicted": 1, "timeout": 2}
            assert transport.pending_handshakes == 0


async def test_silent_connections_cannot_keep_a_member_out(autojump_clock):
    # More idle connections than the pending bound, then a member dials in: it
    # authenticates at once (each new connection evicts the oldest idle one).
    limits = TransportLimits(max_pending_handshakes=4, handshake_timeout=60.0)
    transport = Transport(COMMITTEE, 0, GENESIS.member_keys[0], limits=limits)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                near, far = trio.testing.memory_stream_pair()
                nursery.start_soon(transport.handle_inbound, far)
                await RawPeer(near).read_frame()
            near, far = trio.testing.memory_stream_pair()
            nursery.start_soon(transport.handle_inbound, far)
            member = RawPeer(near)
            await member.handshake(1, GENESIS.member_keys[1])
            while transport.link_count < 1:
                await trio.testing.wait_all_tasks_blocked()
            assert trio.current_time() < 1.0
            assert refusals_of(transport)["evicted"] == 7
            nursery.cancel_scope.cancel()


def refusals_of(transport: Transport) -> dict[str, int]:
    return dict(transport.stats.handshakes_refused)


async def test_links_per_identity_are_bounded_oldest_closed_first():
    transport = Transport(COMMITTEE, 0, GENESIS.member_keys[0])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            remotes = []
            for _ in range(MAX_LINKS_PER_IDENTITY + 1):
                near, far = trio.testing.memory_stream_pair()
                nursery.start_soon(transport.handle_inbound, far)
                remote = RawPeer(near)
                await remote.handshake("client-0", GENESIS.client_keys["client-0"])
                remotes.append(remote)
            await remotes[0].until_closed()  # the oldest was closed
            await trio.testing.wait_all_tasks_blocked()
            assert transport.link_count == MAX_LINKS_PER_IDENTITY
            assert transport.stats.connections_closed == {"closed": 1}
            # Replies go over the newest link.
            transport.send_message("client-0", b"reply")
            assert await remotes[-1].stream.receive_some() == encode_frame(b"reply")
            nursery.cancel_scope.cancel()


def _gate_second_read(release: trio.Event) -> Callable[[], Awaitable[None]]:
    """A ``receive_some_hook`` that holds the node's second read (our AUTH; the first is our
    HELLO) until ``release`` is set."""
    reads = 0

    async def gate() -> None:
        nonlocal reads
        reads += 1
        if reads == 2:
            await release.wait()
    return gate


async def test_links_per_identity_stay_bounded_when_handshakes_finish_together():
    transport = Transport(COMMITTEE, 0, GENESIS.member_keys[0])
    key = GENESIS.client_keys["client-0"]
    release = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            remotes = []
            for _ in range(MAX_LINKS_PER_IDENTITY):
                near, far = trio.testing.memory_stream_pair()
                nursery.start_soon(transport.handle_inbound, far)
                remotes.append(RawPeer(near))
                await remotes[-1].handshake("client-0", key)
            # Four more connections of the same client; the node reads their AUTHs only when
            # ``release`` is set, so the four handshakes complete in one scheduling batch.
            late = []
            for _ in range(4):
                near, far = trio.testing.memory_stream_pair()
                far.receive_stream.receive_some_hook = _gate_second_read(release)
                nursery.start_soon(transport.handle_inbound, far)
                remote = RawPeer(near)
                mine = make_hello(COMMITTEE, "client-0", secrets.token_bytes(32))
                await near.send_all(encode_frame(mine.raw))
                theirs = parse_hello(await remote.read_frame(), COMMITTEE)
                await remote.read_frame()  # the node's AUTH: it now waits for ours
                await near.send_all(encode_frame(make_auth(key, COMMITTEE, mine, theirs,
                                                           "client-0")))
                late.append(remote)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
            await trio.testing.wait_all_tasks_blocked()
            live = transport.link_count
            nursery.cancel_scope.cancel()
    assert transport.stats.handshakes_ok == MAX_LINKS_PER_IDENTITY + 4
    assert live <= MAX_LINKS_PER_IDENTITY


# ================================================================= reconnects


async def test_a_closed_outbound_link_is_redialled_with_bounded_backoff():
    with trio.fail_after(20):
        async with cluster() as (peers, addresses):
            transport = peers[0].transport
            backoffs: list[float] = []
            original = transport._backoff

            def recording(failures: int) -> float:
                backoffs.append(original(failures))
                return backoffs[-1]

            transport._backoff = recording  # type: ignore[method-assign]
            for round_ in range(3):
                old = transport._send_links[1]
                old.close()
                await until(lambda old=old: transport._send_links.get(1) not in (None, old))
                assert transport.connected(1) and old.closed
                assert transport.stats.connections_closed["closed"] == round_ + 1
            assert len(backoffs) >= 3
            assert all(FAST.reconnect_min / 2 <= b <= FAST.reconnect_max for b in backoffs)
            assert peers[1].transport.stats.handshakes_ok >= 3 + 3  # 3 redials, 3 originals
            await client_call_succeeds(addresses)


async def test_redial_backoff_grows_to_the_maximum_and_resets(autojump_clock):
    limits = TransportLimits(reconnect_min=0.05, reconnect_max=2.0)
    responder = Transport(COMMITTEE, 1, GENESIS.member_keys[1])
    dials: list[float] = []

    async def dialer(member: int) -> trio.abc.Stream:
        dials.append(trio.current_time())
        if len(dials) <= 12:
            raise OSError("connection refused")
        near, far = trio.testing.memory_stream_pair()
        nursery.start_soon(responder.handle_inbound, far)
        return near

    transport = Transport(COMMITTEE, 0, GENESIS.member_keys[0], limits=limits, dialer=dialer,
                          rng=random.Random(3))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run_dialers, [1])
            while not transport.connected(1):
                await transport.wait_connection_change()
            gaps = [b - a for a, b in itertools.pairwise(dials)]
            assert len(gaps) == 12
            assert all(limits.reconnect_min / 2 <= gap <= limits.reconnect_max for gap in gaps)
            assert max(gaps[-4:]) > limits.reconnect_max / 2  # it did back off
            # After a link that worked for a while dies, the backoff starts again from the
            # minimum. (Virtual time: the link stays up for reconnect_max seconds.)
            await trio.sleep(limits.reconnect_max)
            closed_at = trio.current_time()
            transport._send_links[1].close()
            while len(dials) < 14:
                await transport.wait_connection_change()
            assert dials[-1] - closed_at <= limits.reconnect_min
            while not transport.connected(1):
                await transport.wait_connection_change()
            nursery.cancel_scope.cancel()


async def test_a_peer_that_hangs_up_after_each_handshake_is_redialled_with_growing_backoff(
        autojump_clock):
    limits = TransportLimits(reconnect_min=0.05, reconnect_max=2.0)
    dials: list[float] = []
    enough = trio.Event()

    async def hang_up(remote: RawPeer) -> None:
        await remote.handshake(1, GENESIS.member_keys[1], outbound=False)
        await remote.stream.aclose()

    async def dialer(member: int) -> trio.abc.Stream:
        dials.append(trio.current_time())
        if len(dials) == 12:
            enough.set()
        near, far = trio.testing.memory_stream_pair()
        nursery.start_soon(hang_up, RawPeer(far))
        return near

    transport = Transport(COMMITTEE, 0, GENESIS.member_keys[0], limits=limits, dialer=dialer,
                          rng=random.Random(3))
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run_dialers, [1])
            await enough.wait()
            nursery.cancel_scope.cancel()
    assert transport.stats.handshakes_ok >= 11
    gaps = [b - a for a, b in itertools.pairwise(dials)]
    # A flapping peer is a failing peer: by the 11th redial the backoff has grown.
    assert max(gaps) > 4 * limits.reconnect_min


def test_backoff_is_bounded_by_reconnect_max():
    transport = Transport(COMMITTEE, 0, GENESIS.member_keys[0], limits=FAST,
                          rng=random.Random(1))
    values = [transport._backoff(failures) for failures in range(1, 200)]
    assert all(FAST.reconnect_min / 2 <= value <= FAST.reconnect_max for value in values)
    assert max(values) > FAST.reconnect_max / 2


def test_backoff_never_exceeds_reconnect_max_even_below_the_minimum():
    limits = TransportLimits(reconnect_min=1.0, reconnect_max=0.1)
    transport = Transport(COMMITTEE, 0, GENESIS.member_keys[0], limits=limits,
                          rng=random.Random(1))
    assert all(transport._backoff(failures) <= 0.1 for failures in range(1, 50))


# ============================================================== shutdown


async def test_graceful_shutdown_finishes_within_its_deadline_with_a_peer_that_never_reads():
    grace = 0.5
    limits = TransportLimits(shutdown_grace=grace, reconnect_min=0.01, reconnect_max=0.1)
    listener, address = await bind()
    fake_member, fake_address = await bind()
    addresses = {0: address, 1: fake_address, 2: (HOST, closed_port()),
                 3: (HOST, closed_port())}
    with trio.fail_after(grace + 10):
        async with trio.open_nursery() as nursery:
            send, receive = trio.open_memory_channel[trio.SocketStream](1)

            async def accept() -> None:
                await send.send(await fake_member.accept())
            nursery.start_soon(accept)
            async with open_peer(PeerConfig(COMMITTEE, 0, GENESIS.member_keys[0],
                                            listeners=[listener], addresses=addresses,
                                            limits=limits)) as peer:
                # Member 0 dials "member 1": we answer the handshake, then never read again.
                member1 = RawPeer(await receive.receive())
                assert await member1.handshake(1, GENESIS.member_keys[1], outbound=False) == 0
                await until(lambda: peer.transport.connected(1))
                link = peer.transport._send_links[1]
                frame = encode_frame(b"z" * (1024 * 1024))
                for _ in range(40):  # 40 MiB against a 16 MiB queue and kernel buffers
                    peer.transport.send(1, frame)
                    assert link.queued_bytes <= limits.member_send_queue_bytes
                await trio.testing.wait_all_tasks_blocked()
                assert link.queued_bytes > 0 and peer.transport.stats.send_dropped["1"] > 0
                started = trio.current_time()
            elapsed = trio.current_time() - started
            # The drain gave up after the grace period; closing took at most CLOSE_TIMEOUT.
            assert grace <= elapsed < grace + 1.0
            assert link.closed
            await member1.stream.aclose()
            await fake_member.aclose()


def test_refusal_warnings_are_rate_limited_but_all_counted(caplog):
    from bftdeliberate.net.handshake import HandshakeRefused
    from bftdeliberate.net.transport import LOG_BURST

    transport = Transport(COMMITTEE, 0, GENESIS.member_keys[0])

    async def flood() -> None:
        for _ in range(10 * LOG_BURST):
            transport._refused(HandshakeRefused("malformed", "garbage"), "127.0.0.1:1")

    caplog.set_level(logging.WARNING, logger="bftd.net")
    trio.run(flood)
    assert transport.stats.handshakes_refused["malformed"] == 10 * LOG_BURST
    assert len([r for r in caplog.records if r.getMessage() == "handshake refused"]) == LOG_BURST
