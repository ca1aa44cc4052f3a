"""The peer runtime: persist-before-send under group commit, and embedding over loopback
(open_peer / open_client), including a restart from the data directory."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio
import trio.lowlevel
from conftest import make_genesis

from bftdeliberate import kv
from bftdeliberate.pbft.effects import Broadcast, Persist, Send
from bftdeliberate.peer import Peer, PeerConfig, open_client, open_peer
from bftdeliberate.wire.messages import Prepare

GENESIS = make_genesis(4, clients=2)
DIGEST = b"\x11" * 32


def _prepare(seq: int):
    return GENESIS.sign(Prepare(view=0, seq=seq, digest=DIGEST, replica=1), 1)


class RecordingDisk:
    """Wraps a peer's disk and logs every call in order, with the transport's sends."""

    def __init__(self, disk, events: list[str]) -> None:
        self._disk, self._events = disk, events

    def append(self, record):
        self._events.append(f"append {record.message.message.seq}")
        self._disk.append(record)

    def begin_sync(self):
        self._events.append("write")
        return self._disk.begin_sync()

    def fsync(self):
        self._events.append("fsync")
        self._disk.fsync()

    def end_sync(self, position):
        self._disk.end_sync(position)

    def records(self):
        return self._disk.records()

    def close(self):
        self._disk.close()


def _recording_peer(tmp_path) -> tuple[Peer, list[str]]:
    peer = Peer(PeerConfig(GENESIS.committee, 1, GENESIS.member_keys[1], data_dir=tmp_path))
    events: list[str] = []
    peer.disk = RecordingDisk(peer.disk, events)
    peer.transport.send = lambda to, frame: events.append(f"send {to}")  # type: ignore
    return peer, events


async def test_a_step_s_messages_leave_only_after_its_records_are_durable(tmp_path):
    peer, events = _recording_peer(tmp_path)
    first, second = _prepare(1), _prepare(2)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer._perform([Persist("prepare", first), Broadcast(first)])
            # A later step without records still waits behind the held one (FIFO per link).
            peer._perform([Send(0, second)])
            assert events == ["append 1"]  # nothing sent before the fsync
            nursery.start_soon(peer._run_flusher)
            while len(events) < 7:
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    assert events == ["append 1", "write", "fsync", "send 0", "send 2", "send 3", "send 0"]
    peer.disk.close()


async def test_one_fsync_covers_every_step_since_the_flusher_last_ran(tmp_path):
    peer, events = _recording_peer(tmp_path)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for seq in (1, 2, 3):
                prepare = _prepare(seq)
                peer._perform([Persist("prepare", prepare), Send(2, prepare)])
            nursery.start_soon(peer._run_flusher)
            while events.count("send 2") < 3:
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    assert events.count("fsync") == 1
    assert events.index("fsync") < events.index("send 2")
    peer.disk.close()


async def _listeners(count: int):
    return [(await trio.open_tcp_listeners(0, host="127.0.0.1"))[0] for _ in range(count)]


async def test_embedded_committee_commits_and_a_member_restarts_from_its_data_dir(tmp_path):
    listeners = await _listeners(4)
    addresses = {i: ("127.0.0.1", lst.socket.getsockname()[1]) for i, lst in enumerate(listeners)}

    def config(member: int, listener) -> PeerConfig:
        return PeerConfig(GENESIS.committee, member, GENESIS.member_keys[member],
                          data_dir=tmp_path / f"data-{member}", listeners=[listener],
                          addresses=addresses)

    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            peers = [await stack.enter_async_context(open_peer(config(m, listeners[m])))
                     for m in (0, 1, 2)]
            async with open_peer(config(3, listeners[3])) as fourth:
                async with open_client(GENESIS.committee, "client-0",
                                       GENESIS.client_keys["client-0"],
                                       addresses=addresses) as client:
                    for index in range(20):
                        result = await client.call(kv.put(f"k{index}", b"v"))
                        assert kv.cbor.decode(result) == {"ok": True, "previous": None}
                await fourth.wait_executed(20)
                before = (fourth.replica.view, fourth.replica.last_executed)
            # Member 3 stopped (its listener closed with it); it comes back from its disk.
            listener = (await trio.open_tcp_listeners(addresses[3][1], host="127.0.0.1"))[0]
            async with open_peer(config(3, listener)) as again:
                # Restored: its view and its votes; below the first stable checkpoint it
                # re-executes what it learns from the others (STATUS on reconnect).
                assert again.replica.view == before[0]
                assert len(again.disk.records()) > 0
                await again.wait_executed(before[1])
                async with open_client(GENESIS.committee, "client-1",
                                       GENESIS.client_keys["client-1"],
                                       addresses=addresses) as client:
                    result = kv.cbor.decode(await client.call(kv.get("k7")))
                    assert result == {"ok": True, "value": b"v"}
                await again.wait_executed(21)
                await peers[0].wait_executed(21)
                assert again.state_digest() == peers[0].state_digest()


async def test_a_core_error_is_counted_and_logged_and_the_member_stays_up(tmp_path):
    from bftdeliberate.errors import LocalError

    listeners = await _listeners(4)
    addresses = {i: ("127.0.0.1", lst.socket.getsockname()[1]) for i, lst in enumerate(listeners)}
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            peers = [await stack.enter_async_context(open_peer(PeerConfig(
                GENESIS.committee, m, GENESIS.member_keys[m], listeners=[listeners[m]],
                addresses=addresses))) for m in range(4)]
            backup = peers[1]
            real_receive = backup.replica.receive
            failures = []

            def receive_failing_once(sender, data, now):
                if not failures:
                    failures.append(sender)
                    raise LocalError("message of 5000000 bytes exceeds MAX_MESSAGE_SIZE")
                return real_receive(sender, data, now)

            backup.replica.receive = receive_failing_once  # type: ignore[method-assign]
            async with open_client(GENESIS.committee, "client-0", GENESIS.client_keys["client-0"],
                                   addresses=addresses) as client:
                for index in range(5):
                    await client.call(kv.put(f"k{index}", b"v"))
            await backup.wait_executed(peers[0].replica.last_executed)
            assert failures and backup.snapshot()["core_errors"] == 1
