"""Whole clusters of production replicas and clients in the deterministic in-process driver."""

from __future__ import annotations

import pytest
from conftest import make_genesis

from bftdeliberate import kv
from bftdeliberate.crypto import get_backend
from bftdeliberate.pbft.client import Client
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.pbft.effects import Completed, Reply, Send
from bftdeliberate.pbft.replica import Replica
from bftdeliberate.pbft.replies import sign_replies
from bftdeliberate.wire import cbor
from simulator.network import NetworkProfile
from simulator.world import World

# Small K and L so that 1,000 requests cross many checkpoints and the window really binds.
SMALL_LOG = ReplicaConfig(batch_size=10, batch_delay=0.002, checkpoint_interval=8, log_window=16)
# Low jitter keeps every replica in step, so "all replicas executed all 1,000" holds the
# moment the workload completes; a replica that does fall behind is the subject of the
# state-transfer test below.
STEADY = NetworkProfile(delay_ms=(0.5, 1.0))


def operations(count: int):
    return (kv.put(f"key-{i % 97}", i.to_bytes(4, "big")) for i in range(count))


@pytest.mark.parametrize("n", [4, 7])
def test_cluster_commits_1000_requests_with_identical_state(n):
    cluster = World(n, seed=n, clients=20, config=SMALL_LOG, network=STEADY,
                    backend=get_backend())  # real Ed25519
    largest_log = [0]

    def watch_log(_completed) -> None:
        largest_log[0] = max(largest_log[0], *(r.log_size() for r in cluster.replicas))

    assert cluster.run_workload(operations(1000), on_completed=watch_log)
    assert len(cluster.completed) == 1000
    assert len({r.last_executed for r in cluster.replicas}) == 1
    assert len(set(cluster.state_digests())) == 1
    assert all(r.stats.executed_requests == 1000 for r in cluster.replicas)
    # Checkpoints became stable and bounded the log: at most L slots, each with a
    # pre-prepare, n prepares and n commits, plus the checkpoint votes in the window.
    config = cluster.config
    bound = config.log_window * (1 + 2 * n) + (config.log_window // config.checkpoint_interval) * n
    assert largest_log[0] <= bound
    for replica in cluster.replicas:
        assert replica.low_watermark >= replica.last_executed - config.checkpoint_interval
        assert len(replica.stable_proof) >= 2 * cluster.committee.f + 1
    assert not cluster.evidence


def test_same_seed_same_trace_and_other_seed_other_trace():
    def run(seed: int) -> str:
        cluster = World(4, seed=seed, clients=3, config=SMALL_LOG, network=STEADY)
        assert cluster.run_workload(operations(60))
        return cluster.trace_digest()

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_client_accepts_only_f_plus_one_matching_verified_replies():
    g = make_genesis(4)
    client = Client("client-0", g.client_keys["client-0"], g.committee)
    (send,) = client.request(kv.get("x"), now=1.0)
    assert isinstance(send, Send) and send.to == 0
    timestamp = send.message.message.timestamp

    def reply(replica: int, result: bytes, signer: int | None = None, ts: int = timestamp):
        key = g.member_keys[replica if signer is None else signer]
        (signed,) = sign_replies(key, g.committee.digest, view=0, seq=1, replica=replica,
                                 executed=[("client-0", ts, result)])
        return signed.raw

    assert client.receive(0, reply(0, b"good"), 1.1) == []
    assert client.receive(0, reply(0, b"good"), 1.1) == []  # same replica again: counted once
    assert client.receive(1, reply(1, b"evil"), 1.1) == []  # different result does not match
    assert client.receive(2, reply(2, b"good", signer=3), 1.1) == []  # forged
    assert client.receive(3, reply(2, b"good"), 1.1) == []  # sender is not the signer
    assert client.receive(2, reply(2, b"good", ts=timestamp - 1), 1.1) == []  # stale
    (done,) = client.receive(2, reply(2, b"good"), 1.2)
    assert isinstance(done, Completed) and done.result == b"good" and not client.busy
    assert client.stats.dropped == {"duplicate": 1, "bad-signature": 1, "sender-mismatch": 1,
                                    "stale-reply": 1}


def test_retransmitted_request_is_answered_from_the_reply_cache_and_executed_once():
    cluster = World(4, seed=5, clients=1, config=ReplicaConfig(batch_delay=0.0))
    lost_replies = []

    def lose_first_replies(sender, receiver, data, message_type):
        # The network eats every reply of the first attempt: the client must retransmit.
        if message_type == "reply" and not cluster.clients["client-0"].stats.retransmissions:
            lost_replies.append(data)
            return None
        return data

    cluster.link_filters.append(lose_first_replies)
    cluster.submit("client-0", kv.put("color", b"blue"))
    assert cluster.run(until=lambda: len(cluster.completed) == 1, max_time=30.0)
    client = cluster.clients["client-0"]
    assert len(lost_replies) == 4 and client.stats.retransmissions == 1
    assert cbor.decode(cluster.completed[0].result) == {"ok": True, "previous": None}
    assert all(r.stats.executed_requests == 1 for r in cluster.replicas)
    # A replayed copy of the request reaches a replica again: the cached reply, no execution.
    replica = cluster.replicas[2]
    request_raw = cluster.disks[0][0].message.message.batch[0]
    effects = replica.receive("client-0", request_raw, cluster.now)
    assert [type(e) for e in effects] == [Reply]
    assert effects[0].message.raw == replica._clients["client-0"].reply.raw
    assert replica.stats.executed_requests == 1


def test_replayed_old_messages_change_nothing():
    cluster = World(4, seed=9, clients=4, config=SMALL_LOG, network=STEADY)
    recorded: list[tuple[object, object, bytes]] = []

    def record(sender, receiver, data, message_type):
        if receiver == 1:
            recorded.append((sender, receiver, data))
        return data

    cluster.link_filters.append(record)
    assert cluster.run_workload(operations(200))
    replica = cluster.replicas[1]
    before = (replica.state_digest(), replica.last_executed, replica.low_watermark,
              replica.log_size(), replica.stats.signatures, replica.stats.executed_requests)
    for sender, _, data in recorded:
        for effect in replica.receive(sender, data, cluster.local_time(1)):
            # At most a cached reply, or an answer to what looks like a stalled peer with
            # messages signed earlier (the signature count below does not move).
            assert isinstance(effect, (Reply, Send))
    after = (replica.state_digest(), replica.last_executed, replica.low_watermark,
             replica.log_size(), replica.stats.signatures, replica.stats.executed_requests)
    assert after == before


def cut_off_and_catch_up(cluster: World) -> Replica:
    """Member 3 is partitioned away for 0.4 s while 300 requests run, then left to catch
    up with member 0; returns it."""
    cluster.network.partition([[0, 1, 2], [3]])
    cluster.at(0.4, cluster.network.heal, "heal")
    assert cluster.run_workload(operations(300), max_time=60)
    lagging = cluster.replicas[3]
    cluster.run(until=lambda: lagging.last_executed == cluster.replicas[0].last_executed,
                max_time=cluster.now + 30)
    return lagging


def test_replica_cut_off_past_the_window_catches_up_by_state_transfer():
    """Member 3 is partitioned away while the others move several checkpoints (and the log
    window) past it; after the heal it cannot get the old slots any more, so a peer answers
    its STATUS with the certified checkpoint state, and it rejoins with an equal digest."""
    cluster = World(4, seed=21, clients=4, config=SMALL_LOG, network=STEADY)
    lagging = cut_off_and_catch_up(cluster)
    assert lagging.stats.state_transfers >= 1
    assert lagging.last_executed == cluster.replicas[0].last_executed
    assert len(set(cluster.state_digests())) == 1
    cluster.oracles.final_checks()
    assert cluster.violations == []


def test_state_with_a_forged_or_short_proof_is_refused():
    from bftdeliberate.wire.messages import Checkpoint, State

    g = make_genesis(4)
    replica = g.replica(1, SMALL_LOG)
    digest = b"\x42" * 32
    votes = [g.sign(Checkpoint(seq=8, state_digest=digest, replica=r), r) for r in (0, 2)]
    blob = b"\x82\x41\xa0\x80"  # [b"\xa0", []]
    short = g.sign(State(seq=8, proof=tuple(v.raw for v in votes), total=len(blob), offset=0,
                         data=blob, replica=2), 2)
    assert replica.receive(2, short.raw, 1.0) == []
    assert replica.stats.dropped["bad-state-proof"] == 1
    # A full certificate, but the bytes do not hash to the certified digest: evidence.
    votes.append(g.sign(Checkpoint(seq=8, state_digest=digest, replica=3), 3))
    lying = g.sign(State(seq=8, proof=tuple(v.raw for v in votes), total=len(blob), offset=0,
                         data=blob, replica=2), 2)
    effects = replica.receive(2, lying.raw, 1.0)
    assert [e.kind for e in effects] == ["bad-state"] and replica.last_executed == 0
    # A chunk claiming bytes past the state's size is refused before anything is kept.
    beyond = g.sign(State(seq=8, proof=tuple(v.raw for v in votes), total=4, offset=2,
                          data=b"abc", replica=3), 3)
    assert replica.receive(3, beyond.raw, 1.0) == [] and replica._assemblies == {}


def test_large_state_travels_in_chunks_and_a_lying_sender_cannot_poison_it():
    """A state several times the chunk size reaches a lagging member in chunks, over a
    reordering network, while a Byzantine member sends chunks of a state of its own."""
    from simulator.byzantine import BehaviourSpec, make_byzantine

    config = ReplicaConfig(batch_size=10, checkpoint_interval=8, log_window=16,
                           state_chunk_size=256)
    reordering = NetworkProfile(delay_ms=(0.5, 5.0), reorder=True)
    cluster = World(4, seed=23, clients=4, config=config, network=reordering)
    make_byzantine(cluster, 1, [BehaviourSpec("fake-checkpoint", {"keep_honest": True}, 0.0)])
    lagging = cut_off_and_catch_up(cluster)
    assert lagging.stats.state_transfers >= 1
    assert len(cluster.replicas[0]._signed_state()) >= 5  # really chunked
    assert lagging.last_executed == cluster.replicas[0].last_executed
    assert lagging.state_digest() == cluster.replicas[0].state_digest()
    cluster.oracles.final_checks()
    assert cluster.violations == []
