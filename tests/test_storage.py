"""The durable record log behind ``Persist``: format, recovery policy, limits."""

from __future__ import annotations

import os
import shutil
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bftdeliberate.errors import ConfigError, LocalError
from bftdeliberate.storage import (
    HASH_SIZE,
    HEADER_SIZE,
    LENGTH_SIZE,
    MAGIC,
    MAX_RECORD_SIZE,
    RECORD_OVERHEAD,
    CorruptLogError,
    RecordLog,
    Storage,
)


def payloads(n: int, seed: int = 0) -> list[bytes]:
    return [
        bytes([(seed + i) % 256]) * ((i * 7) % 50) + f"rec-{seed}-{i}".encode() for i in range(n)
    ]


def write_log(path, items: list[bytes]) -> None:
    with RecordLog.open(path) as log:
        for p in items:
            log.append(p)
        log.sync()


def offsets(items: list[bytes]) -> list[int]:
    """Start offset of each record, plus the end of the file."""
    out = [HEADER_SIZE]
    for p in items:
        out.append(out[-1] + RECORD_OVERHEAD + len(p))
    return out


def flip_bit(path, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


def test_round_trip_across_reopen(tmp_path):
    path = tmp_path / "log"
    items = payloads(200) + [b"", b"\x00" * 1000]
    with RecordLog.open(path) as log:
        assert log.records() == [] and log.count == 0 and log.size == HEADER_SIZE
        for i, p in enumerate(items):
            log.append(p)
            if i % 17 == 0:
                log.sync()
        log.sync()
        assert log.size == offsets(items)[-1] == os.path.getsize(path)
    with RecordLog.open(path) as log:
        assert log.records() == items and list(log) == items and len(log) == len(items)
        assert log.recovered_truncated_bytes == 0
        log.append(b"more")
    with RecordLog.open(path) as log:  # close() synced the last append
        assert log.records() == items + [b"more"]
        assert log.synced_count == log.count == len(items) + 1
    assert isinstance(log, Storage)


def test_unsynced_records_do_not_survive_a_crash(tmp_path):
    path, crashed = tmp_path / "log", tmp_path / "crashed"
    with RecordLog.open(path) as log:
        log.append(b"a")
        log.append(b"b")
        log.sync()
        durable = os.path.getsize(path)
        log.append(b"c")
        assert log.count == 3 and log.synced_count == 2 and log.synced_size == durable
        assert os.path.getsize(path) == durable  # nothing written before sync
        shutil.copyfile(path, crashed)  # the disk as a crash right now would leave it
        log.sync()
    with RecordLog.open(crashed) as log:
        assert log.records() == [b"a", b"b"] and log.recovered_truncated_bytes == 0
    with RecordLog.open(path) as log:
        assert log.records() == [b"a", b"b", b"c"]


def test_torn_tail_at_every_offset_of_the_last_record(tmp_path):
    items = payloads(5)
    src = tmp_path / "src"
    write_log(src, items)
    starts = offsets(items)
    last_start, end = starts[-2], starts[-1]
    for cut in range(last_start + 1, end):
        path = tmp_path / f"cut{cut}"
        shutil.copyfile(src, path)
        os.truncate(path, cut)
        with RecordLog.open(path) as log:
            assert log.records() == items[:-1], cut
            assert log.recovered_truncated_bytes == cut - last_start
            assert os.path.getsize(path) == last_start
            log.append(b"after")  # the chain continues from the last good record
        with RecordLog.open(path) as log:
            assert log.records() == items[:-1] + [b"after"]
        path.unlink()


def test_truncation_at_a_record_boundary_is_clean(tmp_path):
    items = payloads(4)
    path = tmp_path / "log"
    write_log(path, items)
    os.truncate(path, offsets(items)[2])
    with RecordLog.open(path) as log:
        assert log.records() == items[:2] and log.recovered_truncated_bytes == 0


@pytest.mark.parametrize("where", ["length", "payload", "hash"])
def test_flipped_bit_in_last_record_is_truncated(tmp_path, where):
    items = payloads(4)
    path = tmp_path / "log"
    write_log(path, items)
    start, end = offsets(items)[-2:]
    offset = {"length": start + LENGTH_SIZE - 1, "payload": start + LENGTH_SIZE + 1,
              "hash": end - 1}[where]
    flip_bit(path, offset, 1)
    with RecordLog.open(path) as log:
        assert log.records() == items[:-1]
        assert log.recovered_truncated_bytes == end - start
    assert os.path.getsize(path) == start


@pytest.mark.parametrize("where", ["length", "length-high", "payload", "hash"])
def test_flipped_bit_in_early_record_is_an_error(tmp_path, where):
    items = payloads(6)
    path = tmp_path / "log"
    write_log(path, items)
    before = path.read_bytes()
    start, end = offsets(items)[1:3]
    offset = {"length": start + LENGTH_SIZE - 1, "length-high": start,
              "payload": start + LENGTH_SIZE + 2, "hash": end - HASH_SIZE}[where]
    flip_bit(path, offset, 3)
    with pytest.raises(CorruptLogError) as info:
        RecordLog.open(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and f"offset {start}" in message
    assert isinstance(info.value, ConfigError)
    assert len(path.read_bytes()) == len(before)  # nothing truncated


def test_zero_filled_tail_is_a_torn_tail(tmp_path):
    items = payloads(3)
    path = tmp_path / "log"
    write_log(path, items)
    with open(path, "ab") as f:  # a crash after the size grew but before the data landed
        f.write(b"\x00" * 500)
    with RecordLog.open(path) as log:
        assert log.records() == items and log.recovered_truncated_bytes == 500


@pytest.mark.parametrize(
    "header",
    [b"", MAGIC + b"\x00\x01", b"NOTALOG!", None],
    ids=["empty", "short", "magic", "hash"],
)
def test_bad_header_is_an_error(tmp_path, header):
    path = tmp_path / "log"
    write_log(path, payloads(2))
    if header is None:
        flip_bit(path, 20)  # inside the file id
    else:
        data = path.read_bytes()
        path.write_bytes(header + data[len(header):] if header == b"NOTALOG!" else header)
    with pytest.raises(CorruptLogError, match=str(path)) as info:
        RecordLog.open(path)
    assert "\n" not in str(info.value)


def test_unknown_version_is_an_error(tmp_path):
    path = tmp_path / "log"
    write_log(path, [])
    data = bytearray(path.read_bytes())
    data[9] = 2
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match="version 2"):
        RecordLog.open(path)


def test_record_spliced_from_another_log_is_detected(tmp_path):
    items = payloads(5)
    a, b = tmp_path / "a", tmp_path / "b"
    write_log(a, items)
    write_log(b, items)  # same contents, different file id: a different chain
    data_a, data_b = a.read_bytes(), b.read_bytes()
    assert data_a[HEADER_SIZE:] != data_b[HEADER_SIZE:]
    starts = offsets(items)

    # Spliced into the middle (valid records follow): refused.
    s, e = starts[1], starts[2]
    a.write_bytes(data_a[:s] + data_b[s:e] + data_a[e:])
    with pytest.raises(CorruptLogError, match="record 1"):
        RecordLog.open(a)

    # Spliced as the last record: not accepted, cut off as a bad tail.
    s, e = starts[-2], starts[-1]
    a.write_bytes(data_a[:s] + data_b[s:e])
    with RecordLog.open(a) as log:
        assert log.records() == items[:-1] and log.recovered_truncated_bytes == e - s

    # A whole foreign body under this header: nothing verifies, nothing follows that chains
    # to this header -- but the foreign records chain among themselves: refused.
    a.write_bytes(data_a[:HEADER_SIZE] + data_b[HEADER_SIZE:])
    with pytest.raises(CorruptLogError, match="record 0"):
        RecordLog.open(a)


def test_limits_and_closed_log(tmp_path):
    path = tmp_path / "log"
    log = RecordLog.open(path)
    with pytest.raises(LocalError, match="MAX_RECORD_SIZE"):
        log.append(b"x" * (MAX_RECORD_SIZE + 1))
    with pytest.raises(LocalError):
        log.append("text")  # type: ignore[arg-type]
    log.append(b"ok")
    log.close()
    log.close()  # idempotent
    assert log.closed
    with pytest.raises(LocalError, match="closed"):
        log.append(b"late")
    with pytest.raises(LocalError, match="closed"):
        log.sync()
    with RecordLog.open(path) as again:
        assert again.records() == [b"ok"]


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "log"
    with RecordLog.open(path), pytest.raises(ConfigError, match="in use"):
        RecordLog.open(path)
    RecordLog.open(path).close()  # the lock is released on close


def test_new_file_mode_is_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "log"
        RecordLog.open(path).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.path.getsize(path) == HEADER_SIZE
    assert not (tmp_path / "log.tmp").exists()


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(OSError):
        RecordLog.open(tmp_path / "nope" / "log")


@settings(max_examples=60)
@given(
    batches=st.lists(st.lists(st.binary(max_size=64), max_size=5), min_size=1, max_size=6),
    cut=st.integers(min_value=0, max_value=10**6),
    garbage=st.binary(max_size=40),
)
def test_recovery_yields_a_prefix_of_what_was_synced(tmp_path_factory, batches, cut, garbage):
    path = tmp_path_factory.mktemp("prop") / "log"
    synced: list[bytes] = []
    with RecordLog.open(path) as log:
        for batch in batches:
            for p in batch:
                log.append(p)
            log.sync()
            synced.extend(batch)
    size = os.path.getsize(path)
    cut_at = HEADER_SIZE + cut % (size - HEADER_SIZE + 1)
    os.truncate(path, cut_at)
    with open(path, "ab") as f:
        f.write(garbage)
    with RecordLog.open(path) as log:
        recovered = log.records()
    assert recovered == synced[: len(recovered)]
    whole = [i for i, off in enumerate(offsets(synced)) if off <= cut_at]
    assert len(recovered) == whole[-1]  # every record wholly before the cut survives
    assert os.path.getsize(path) == offsets(synced)[len(recovered)]


def test_failed_fsync_poisons_the_log(tmp_path, monkeypatch):
    path = tmp_path / "log"
    log = RecordLog.open(path)
    log.append(b"a")
    log.sync()
    log.append(b"b")

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(LocalError, match="sync failed"):
        log.sync()
    monkeypatch.undo()
    with pytest.raises(LocalError, match="reopen"):  # never retry a failed fsync
        log.sync()
    with pytest.raises(LocalError, match="reopen"):
        log.append(b"c")
    log.close()
    with RecordLog.open(path) as again:  # reopening verifies what reached the file
        assert again.records()[0] == b"a"


def test_rewrite_keeps_exactly_the_given_payloads(tmp_path):
    path = tmp_path / "log"
    items = payloads(40)
    log = RecordLog.open(path)
    for p in items:
        log.append(p)
    log.sync()
    log.append(b"buffered, superseded by the rewrite")
    with open(path, "rb") as f:
        old_header = f.read(HEADER_SIZE)
    kept = items[25:] + [b""]
    log.rewrite(iter(kept))
    assert log.records() == kept and log.count == log.synced_count == len(kept)
    assert log.size == log.synced_size == offsets(kept)[-1] == os.path.getsize(path)
    with open(path, "rb") as f:
        assert f.read(HEADER_SIZE) != old_header  # a fresh file id and chain
    log.append(b"after")
    log.close()
    assert not (tmp_path / "log.compact").exists()
    with RecordLog.open(path) as again:  # the new chain verifies end to end
        assert again.records() == kept + [b"after"]
        assert again.recovered_truncated_bytes == 0
        again.rewrite([])
    with RecordLog.open(path) as again:
        assert again.records() == [] and os.path.getsize(path) == HEADER_SIZE


def test_rewrite_holds_the_lock_on_the_new_file(tmp_path):
    path = tmp_path / "log"
    with RecordLog.open(path) as log:
        log.append(b"a")
        log.rewrite([b"b"])
        with pytest.raises(ConfigError, match="in use"):
            RecordLog.open(path)
        log.append(b"c")
    with RecordLog.open(path) as again:
        assert again.records() == [b"b", b"c"]


def test_leftover_compact_file_is_removed_on_open(tmp_path):
    path = tmp_path / "log"
    write_log(path, [b"a", b"b"])
    leftover = tmp_path / "log.compact"
    leftover.write_bytes(MAGIC + b"half a rewrite")
    with RecordLog.open(path) as log:
        assert log.records() == [b"a", b"b"]
        assert not leftover.exists()
        leftover.write_bytes(b"junk")  # a rewrite replaces whatever is there
        log.rewrite([b"c"])
    with RecordLog.open(path) as log:
        assert log.records() == [b"c"]


def test_rewrite_checks_payloads_before_touching_the_file(tmp_path):
    path = tmp_path / "log"
    write_log(path, [b"a"])
    with RecordLog.open(path) as log:
        with pytest.raises(LocalError, match="MAX_RECORD_SIZE"):
            log.rewrite([b"ok", b"x" * (MAX_RECORD_SIZE + 1)])
        assert log.records() == [b"a"]
        log.append(b"b")  # misuse does not poison the log
    with RecordLog.open(path) as log:
        assert log.records() == [b"a", b"b"]


def test_failed_rewrite_poisons_the_log_and_keeps_the_old_content(tmp_path, monkeypatch):
    path = tmp_path / "log"
    write_log(path, [b"a", b"b"])
    log = RecordLog.open(path)

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(LocalError, match="rewrite failed"):
        log.rewrite([b"c"])
    monkeypatch.undo()
    assert not (tmp_path / "log.compact").exists()
    with pytest.raises(LocalError, match="reopen"):
        log.append(b"d")
    with pytest.raises(ConfigError, match="in use"):  # still locked until closed
        RecordLog.open(path)
    log.close()
    with RecordLog.open(path) as again:
        assert again.records() == [b"a", b"b"]


def test_rewrite_failing_after_the_rename_holds_the_new_file(tmp_path, monkeypatch):
    from bftdeliberate import storage

    path = tmp_path / "log"
    write_log(path, [b"a"])
    log = RecordLog.open(path)

    def failing_fsync_dir(directory):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(storage, "_fsync_dir", failing_fsync_dir)
    with pytest.raises(LocalError, match="rewrite failed"):
        log.rewrite([b"new"])
    monkeypatch.undo()
    with pytest.raises(LocalError, match="reopen"):
        log.sync()
    with pytest.raises(ConfigError, match="in use"):  # the lock is on the file at the path
        RecordLog.open(path)
    log.close()
    with RecordLog.open(path) as again:
        assert again.records() == [b"new"]


def test_an_opener_racing_a_rewrite_never_locks_the_replaced_file(tmp_path, monkeypatch):
    import fcntl

    path = tmp_path / "log"
    writer = RecordLog.open(path)
    writer.append(b"a")
    real_flock = fcntl.flock
    raced: list[bool] = []

    def flock_after_a_rewrite(fd, op):
        if not raced:  # the opener holds the old file open; the writer replaces it now
            raced.append(True)
            writer.rewrite([b"b"])
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_rewrite)
    with pytest.raises(ConfigError, match="in use"):
        RecordLog.open(path)
    monkeypatch.undo()
    assert raced
    writer.append(b"c")
    writer.close()
    with RecordLog.open(path) as again:
        assert again.records() == [b"b", b"c"]
