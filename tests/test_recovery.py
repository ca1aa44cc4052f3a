"""Crash recovery: a restarted replica rebuilt from what it persisted never signs anything
that conflicts with what it signed before; one that lost its disk signs nothing until it
has caught up; the real peer's record log round-trips the records."""

from __future__ import annotations

from conftest import Genesis, make_genesis

from bftdeliberate import kv
from bftdeliberate.kv import KeyValueStore
from bftdeliberate.pbft.batch import batch_digest
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.pbft.effects import (
    Broadcast,
    Persist,
    Send,
    decode_persist,
    encode_persist,
)
from bftdeliberate.pbft.replica import Replica
from bftdeliberate.storage import RecordLog
from bftdeliberate.wire.messages import Commit, Prepare, PrePrepare, Request
from simulator.world import World

NOW = 100.0
CONFIG = ReplicaConfig(checkpoint_interval=4, log_window=8, batch_size=1, max_in_flight_batches=8)
G = make_genesis(4)


def request(g: Genesis, timestamp: int, value: bytes = b"v"):
    return g.sign(Request(client="client-0", timestamp=timestamp,
                          operation=kv.put("k", value)), "client-0")


def pre_prepare(g: Genesis, seq: int, requests, view: int = 0):
    batch = tuple(r.raw for r in requests)
    ts = int(NOW * 1000)
    primary = view % g.committee.n
    return g.sign(PrePrepare(view=view, seq=seq, timestamp=ts, origin_view=view,
                             replica=primary, batch=batch,
                             digest=batch_digest(ts, batch, view)), primary)


def persisted(effects) -> list[Persist]:
    return [e for e in effects if isinstance(e, Persist)]


def restarted(replica_id: int, records, config=CONFIG) -> Replica:
    replica = Replica(replica_id, G.committee, G.member_keys[replica_id], KeyValueStore(), config)
    replica.restore(records, NOW)
    return replica


def signed_types(effects) -> list[str]:
    return [e.message.type for e in effects if isinstance(e, (Broadcast, Send))]


def test_a_restarted_backup_never_prepares_a_conflicting_proposal():
    backup = G.replica(1, CONFIG)
    first = pre_prepare(G, 1, [request(G, 1, b"a")])
    disk = persisted(backup.receive(0, first.raw, NOW))
    assert [r.kind for r in disk] == ["prepare"]
    again = restarted(1, disk)
    # The (equivocating) primary now shows it another batch at the same (view, seq).
    other = pre_prepare(G, 1, [request(G, 1, b"b")])
    assert signed_types(again.receive(0, other.raw, NOW)) == []
    assert again.stats.dropped["conflicts-own-vote"] == 1
    # The original proposal is accepted and the old PREPARE re-sent, not re-signed.
    effects = again.receive(0, first.raw, NOW)
    assert persisted(effects) == []
    [sent] = [e.message for e in effects if isinstance(e, Broadcast)]
    assert sent.raw == disk[0].message.raw


def test_a_restarted_replica_keeps_its_prepared_certificates_for_the_next_view_change():
    backup = G.replica(1, CONFIG)
    proposal = pre_prepare(G, 1, [request(G, 1)])
    disk = persisted(backup.receive(0, proposal.raw, NOW))
    digest = proposal.message.digest
    prepare = G.sign(Prepare(view=0, seq=1, digest=digest, replica=2), 2)
    disk += persisted(backup.receive(2, prepare.raw, NOW))
    assert [r.kind for r in disk] == ["prepare", "commit"]
    assert len(disk[1].proof) == 3  # the pre-prepare and 2f prepares
    again = restarted(1, disk)
    vc = [e.message.message for e in again._start_view_change(1, NOW)
          if isinstance(e, Broadcast)][0]
    assert vc.type == "view-change" and len(vc.prepared) == 1
    # And a commit it already signed is re-sent, never signed again.
    assert again._log[1].commits[1].raw == disk[1].message.raw


def test_a_replica_that_crashed_during_a_view_change_resumes_it():
    backup = G.replica(2, CONFIG)
    disk = persisted(backup._start_view_change(1, NOW))
    assert [r.kind for r in disk] == ["view-change"]
    again = restarted(2, disk)
    assert again.view == 1 and not again.view_active
    effects = again.handle_timer(NOW)  # retransmission: the very same VIEW-CHANGE
    resent = [e.message for e in effects if isinstance(e, Broadcast)
              and e.message.type == "view-change"]
    assert [m.raw for m in resent] == [disk[0].message.raw]


def test_a_restarted_primary_never_reuses_a_sequence_number():
    primary = G.replica(0, CONFIG)
    disk = []
    for timestamp in (1, 2, 3):
        disk += persisted(primary.submit(request(G, timestamp), NOW))
    assert [r.kind for r in disk] == ["pre-prepare"] * 3
    again = restarted(0, disk)
    effects = again.submit(request(G, 4), NOW)
    [proposal] = [e.message.message for e in effects if isinstance(e, Broadcast)]
    assert proposal.seq == 4


def run_world(world: World, requests: int) -> None:
    operations = (kv.put(f"key-{i % 5}", bytes([i])) for i in range(requests))
    assert world.run_workload(operations, max_time=60.0)


def test_restart_from_disk_restores_the_checkpoint_state_and_catches_up():
    world = World(4, seed=3, clients=2, config=CONFIG)
    run_world(world, 20)
    before = world.replicas[2]
    assert before.low_watermark >= 4
    world.crash(2)
    world.restart(2)
    after = world.replicas[2]
    assert after is not before
    assert after.low_watermark == before.low_watermark  # from its "state" record
    assert after.stable_digest == before.stable_digest
    run_world(world, 10)
    world.run(max_time=world.now + 5.0)
    assert world.violations == []
    assert after.state_digest() == world.replicas[0].state_digest()


def test_a_member_that_lost_its_disk_signs_nothing_until_it_caught_up():
    world = World(4, seed=5, clients=2, config=CONFIG)
    run_world(world, 10)
    signed_before = world.replicas[3].last_executed  # it signed votes up to about here
    world.crash(3, lose_disk=True)
    world.restart(3)
    amnesiac = world.replicas[3]
    assert amnesiac.amnesiac and amnesiac.last_executed == 0
    signed: list[str] = []
    world.link_filters.append(
        lambda sender, to, data, kind: (signed.append(kind) if sender == 3 else None) or data)
    run_world(world, 6)
    world.run(max_time=world.now + 5.0)
    assert world.violations == []
    assert amnesiac.last_executed == world.replicas[0].last_executed  # caught up
    # n-f members reported where they are: the bound covers everything it signed before.
    resume = amnesiac._signing_resumes_after
    assert resume is not None and resume >= signed_before + CONFIG.log_window
    # Only STATUS, CHECKPOINT (and replies) left it: no vote it might contradict.
    assert set(signed) <= {"status", "reply", "checkpoint"}
    # Once its stable checkpoint reaches the bound it votes again.
    run_world(world, 2 * resume)
    assert amnesiac.low_watermark >= resume
    assert not amnesiac.amnesiac and "commit" in signed


def test_records_survive_the_real_record_log(tmp_path):
    world = World(4, seed=7, clients=2, config=CONFIG)
    run_world(world, 14)  # stable at 12 (the disk was compacted there), 13 and 14 above
    records = list(world.disks[1])
    assert {r.kind for r in records} >= {"prepare", "commit", "state"}
    path = tmp_path / "member-1.log"
    with RecordLog.open(path) as log:
        for record in records:
            log.append(encode_persist(record))
        log.sync()
    with RecordLog.open(path) as log:
        decoded = [decode_persist(payload) for payload in log]
    assert [(r.kind, r.message.raw, [p.raw for p in r.proof]) for r in decoded] == [
        (r.kind, r.message.raw, [p.raw for p in r.proof]) for r in records]
    replica = Replica(1, world.committee, world.member_keys[1], KeyValueStore(), CONFIG)
    replica.restore(decoded, NOW)
    assert replica.low_watermark == world.replicas[1].low_watermark
    assert replica.stable_digest == world.replicas[1].stable_digest


def test_a_damaged_record_is_refused():
    import pytest

    from bftdeliberate.errors import DecodeError
    for payload in (b"", b"\xa0", encode_persist(Persist("prepare", G.sign(
            Commit(view=0, seq=1, digest=b"\x01" * 32, replica=1), 1)))[:-3]):
        with pytest.raises(DecodeError):
            decode_persist(payload)
