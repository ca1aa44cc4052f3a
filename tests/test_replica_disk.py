"""ReplicaDisk: the production storage of ``Persist`` effects over the record log, and its
compaction at stable checkpoints (the real counterpart of the simulator's ``SimDisk``)."""

from __future__ import annotations

import pytest

from bftdeliberate import kv
from bftdeliberate.kv import KeyValueStore
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.pbft.effects import Persist, encode_persist, needed_after_checkpoint
from bftdeliberate.pbft.replica import Replica
from bftdeliberate.storage import CorruptLogError, RecordLog, ReplicaDisk
from simulator.world import SimDisk, World

NOW = 100.0
CONFIG = ReplicaConfig(checkpoint_interval=4, log_window=8, batch_size=1)
MEMBER = 1


class MirroredDisk(SimDisk):
    """The simulator's disk for one member, also driving a ReplicaDisk the way the real
    peer does (append per effect, one sync per step) and keeping the uncompacted history."""

    def __init__(self, disk: ReplicaDisk) -> None:
        super().__init__()
        self.disk = disk
        self.history: list[Persist] = []

    def append(self, record: Persist) -> None:
        super().append(record)
        self.disk.append(record)
        self.history.append(record)

    def sync(self) -> None:
        super().sync()
        self.disk.sync()


def run_mirrored(tmp_path, requests: int = 24):
    world = World(4, seed=7, clients=2, config=CONFIG)
    disk = ReplicaDisk.open(tmp_path / "member.log", compaction_min_bytes=0)
    mirror = MirroredDisk(disk)
    world.disks[MEMBER] = mirror
    operations = (kv.put(f"key-{i % 5}", bytes([i])) for i in range(requests))
    assert world.run_workload(operations, max_time=60.0)
    assert world.violations == []
    return world, mirror


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    world, mirror = run_mirrored(tmp_path_factory.mktemp("mirror"))
    mirror.disk.close()
    return world, mirror


def key(record: Persist):
    return record.kind, record.message.raw, tuple(p.raw for p in record.proof)


def restored(world: World, records) -> Replica:
    replica = Replica(MEMBER, world.committee, world.member_keys[MEMBER], KeyValueStore(),
                      CONFIG)
    replica.restore(records, NOW)
    return replica


def summary(replica: Replica):
    return (replica.view, replica.last_executed, replica.low_watermark,
            replica.stable_digest, replica.state_digest())


def stable_of(records) -> int:
    return max(r.message.message.seq for r in records if r.kind == "state")


def test_round_trip_and_fsync_batching(tmp_path, mirrored):
    _, mirror = mirrored
    records = mirror.history[:30]
    path = tmp_path / "disk.log"
    with ReplicaDisk.open(path) as disk:  # default threshold: too small to compact
        assert disk.records() == [] and disk.fsyncs == 0
        disk.sync()
        assert disk.fsyncs == 0  # nothing appended, nothing to fsync
        for record in records[:10]:
            disk.append(record)
        disk.sync()
        assert disk.fsyncs == 1  # one fsync per step, however many records
        for record in records[10:]:
            disk.append(record)
        disk.sync()
        assert disk.fsyncs == 2 and disk.compactions == 0
        assert disk.records_count == len(records)
        size = disk.size_bytes
    with ReplicaDisk.open(path) as again:
        assert [key(r) for r in again.records()] == [key(r) for r in records]
        assert again.size_bytes == size


def test_compaction_drops_what_the_checkpoint_covers(tmp_path, mirrored):
    world, mirror = mirrored
    full = mirror.history
    stable = stable_of(full)
    assert stable >= 3 * CONFIG.checkpoint_interval
    path = tmp_path / "disk.log"
    with ReplicaDisk.open(path, compaction_min_bytes=0) as disk:
        for record in full:
            disk.append(record)
        before = disk.size_bytes
        disk.sync()
        assert disk.compactions == 1 and disk.size_bytes < before // 2
    expected = [r for r in full if needed_after_checkpoint(r, stable)]
    with ReplicaDisk.open(path) as compacted:
        kept = compacted.records()
    assert [key(r) for r in kept] == [key(r) for r in expected]  # order kept
    assert [r.kind for r in kept].count("state") == 1
    assert all(getattr(r.message.message, "seq", stable + 1) > stable
               for r in kept if r.kind != "state")
    assert any(getattr(r.message.message, "seq", 0) > stable for r in kept)  # above: kept
    assert summary(restored(world, kept)) == summary(restored(world, full))


def test_live_compaction_matches_the_full_history(mirrored):
    world, mirror = mirrored
    assert mirror.disk.compactions >= 2
    with ReplicaDisk.open(mirror.disk.path) as reopened:
        records = reopened.records()
        assert reopened.records_count < len(mirror.history) // 2
    from_full = summary(restored(world, mirror.history))
    assert from_full[2] >= 3 * CONFIG.checkpoint_interval
    assert summary(restored(world, records)) == from_full
    assert summary(restored(world, list(mirror))) == from_full  # the simulator's SimDisk


def test_compaction_waits_until_it_pays_for_itself(tmp_path, mirrored):
    _, mirror = mirrored
    full = mirror.history
    state = [r for r in full if r.kind == "state"][-1]
    stable = state.message.message.seq
    below = [r for r in full if r.kind != "state" and not needed_after_checkpoint(r, stable)]
    above = [r for r in full if r.kind != "state" and needed_after_checkpoint(r, stable)]
    assert below and above

    def size(records) -> int:
        return sum(len(encode_persist(r)) for r in records)

    kept_heavy = below + above * (size(below) // size(above) + 1)
    drop_heavy = below * ((size(above) + size([state])) // size(below) + 2) + above
    for records, compacts in ((kept_heavy, False), (drop_heavy, True)):
        path = tmp_path / f"disk-{compacts}.log"
        with ReplicaDisk.open(path, compaction_min_bytes=0) as disk:
            for record in [*records, state]:
                disk.append(record)
            disk.sync()
            assert disk.compactions == int(compacts)
            count = disk.records_count
        with ReplicaDisk.open(path) as again:
            assert again.records_count == count
    # The size floor: the same drop-heavy log under the default threshold is left alone.
    with ReplicaDisk.open(tmp_path / "small.log") as disk:
        for record in [*drop_heavy, state]:
            disk.append(record)
        disk.sync()
        assert disk.compactions == 0 and disk.size_bytes < 1024 * 1024


def test_a_record_that_is_not_a_persist_is_corruption(tmp_path, mirrored):
    _, mirror = mirrored
    path = tmp_path / "disk.log"
    with RecordLog.open(path) as log:
        log.append(encode_persist(mirror.history[0]))
        log.append(b"\xa0")
    with pytest.raises(CorruptLogError, match="record 1 is not a persisted") as info:
        ReplicaDisk.open(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    RecordLog.open(path).close()  # the failed open released the lock
