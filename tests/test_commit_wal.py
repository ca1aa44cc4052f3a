"""The commit WAL: signed typed records over the record log, recovery of a torn tail, in-doubt
intents, and read-only verification (chain, signatures, signers) with byte offsets."""

from __future__ import annotations

import json
import os
import random

import pytest

from bftdeliberate import storage
from bftdeliberate.commit.wal import CommitWal, decode_record, verify_wal
from bftdeliberate.committee import make_committee
from bftdeliberate.crypto import PrivateKey


@pytest.fixture(scope="module")
def genesis():
    committee, keys, _ = make_committee(4, rng=random.Random(7))
    return committee, keys


def open_wal(path, genesis, signer=0, key=None) -> CommitWal:
    committee, keys = genesis
    return CommitWal.open(path, committee_digest=committee.digest, signer=signer,
                          key=key or keys[signer])


def write_commit(wal: CommitWal, commit_id: str, *, finish: bool = True) -> None:
    wal.intent(commit_id, proposal_id="p-1", task_id="t-1", view=0,
               idempotency_keys=["ab" * 32], resource_targets=["file:src/foo.ts"])
    wal.attempt(commit_id, step=0, attempt=1, started=1000, retry_reason=None)
    if finish:
        wal.result(commit_id, result="committed", error_code=None)


def test_round_trip(tmp_path, genesis):
    path = tmp_path / "commit.wal"
    with open_wal(path, genesis) as wal:
        write_commit(wal, "c-1")
        wal.rollback("c-1", steps=[0], result="ok")
    with open_wal(path, genesis) as wal:
        records = wal.records()
        assert [r.type for r in records] == ["intent", "attempt", "result", "rollback"]
        assert records[0].fields["resource_targets"] == ["file:src/foo.ts"]
        assert records[1].fields == {"step": 0, "attempt": 1, "started": 1000,
                                     "retry_reason": None}
        assert all(r.signer == 0 and r.commit_id == "c-1" for r in records)
        assert wal.in_doubt() == [] and wal.recovered_truncated_bytes == 0
    report = verify_wal(path, genesis[0])
    assert report.ok and report.records == 4 and report.error is None
    assert report.counts == {"intent": 1, "attempt": 1, "result": 1, "rollback": 1}
    assert "ok: 4 records" in report.summary()


def test_in_doubt_lists_intents_without_a_result(tmp_path, genesis):
    path = tmp_path / "commit.wal"
    with open_wal(path, genesis) as wal:
        write_commit(wal, "c-1")
        write_commit(wal, "c-2", finish=False)
        write_commit(wal, "c-3", finish=False)
    with open_wal(path, genesis, signer=1) as wal:  # the next primary recovers
        assert [r.commit_id for r in wal.in_doubt()] == ["c-2", "c-3"]
        wal.result("c-2", result="committed", error_code=None, resolved="was_applied")
        assert [r.commit_id for r in wal.in_doubt()] == ["c-3"]
    report = verify_wal(path, genesis[0])
    assert report.ok and report.in_doubt == ("c-3",)


def test_attempts_are_written_at_once_and_fsynced_at_the_next_commit_point(
        tmp_path, genesis, monkeypatch):
    path = tmp_path / "commit.wal"
    wal = open_wal(path, genesis)
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    wal.intent("c-1", view=0)
    assert fsyncs  # the intent is a commit point
    size, fsyncs[:] = os.path.getsize(path), []
    wal.attempt("c-1", step=0, attempt=1)
    assert os.path.getsize(path) > size and not fsyncs  # in the file (a kill keeps it)
    wal.result("c-1", result="committed")
    assert fsyncs  # ... durable with the result
    wal.close()


def test_torn_tail_is_truncated_and_recovered(tmp_path, genesis):
    path = tmp_path / "commit.wal"
    with open_wal(path, genesis) as wal:
        write_commit(wal, "c-1")
        write_commit(wal, "c-2")
    full = path.read_bytes()
    path.write_bytes(full[:-7])  # the crash tore the last record (c-2's result)
    torn = verify_wal(path, genesis[0])
    assert not torn.ok and "torn tail" in torn.error and torn.offset is not None
    assert path.read_bytes() == full[:-7]  # verification repaired nothing
    with open_wal(path, genesis) as wal:
        assert wal.recovered_truncated_bytes > 0
        assert [r.type for r in wal.records()] == ["intent", "attempt", "result",
                                                   "intent", "attempt"]
        assert [r.commit_id for r in wal.in_doubt()] == ["c-2"]
        wal.result("c-2", result="committed", error_code=None)
    assert verify_wal(path, genesis[0]).ok


def test_verify_reports_a_flipped_byte_with_its_offset_and_changes_nothing(tmp_path, genesis):
    path = tmp_path / "commit.wal"
    with open_wal(path, genesis) as wal:
        write_commit(wal, "c-1")
        write_commit(wal, "c-2")
    data = bytearray(path.read_bytes())
    # The second record starts after the header and the first record.
    first_len = int.from_bytes(data[storage.HEADER_SIZE:storage.HEADER_SIZE + 4], "big")
    second = storage.HEADER_SIZE + storage.RECORD_OVERHEAD + first_len
    data[second + 10] ^= 0x01
    path.write_bytes(bytes(data))
    stat_before = os.stat(path)
    report = verify_wal(path, genesis[0])
    assert not report.ok and report.offset == second
    assert f"offset {second}" in report.error and "record 1" in report.error
    assert "\n" not in report.error and "valid records follow" in report.error
    assert path.read_bytes() == bytes(data)
    assert os.stat(path).st_mtime_ns == stat_before.st_mtime_ns
    with pytest.raises(storage.CorruptLogError, match=f"offset {second}"):
        open_wal(path, genesis)  # the writer refuses too, and truncates nothing
    assert path.read_bytes() == bytes(data)


def test_verify_detects_a_bad_signature(tmp_path, genesis):
    path = tmp_path / "commit.wal"
    impostor = PrivateKey(b"\x01" * 32)
    with open_wal(path, genesis) as wal:
        write_commit(wal, "c-1")
    with open_wal(path, genesis, signer=2, key=impostor) as wal:  # claims member 2
        wal.result("c-2", result="committed", error_code=None)
    assert len(open_wal(path, genesis).records()) == 4  # the chain itself is intact
    report = verify_wal(path, genesis[0])
    assert not report.ok and "record 3: bad signature by member 2" in report.error
    assert report.records == 3


def test_verify_checks_the_committee_binding_and_the_signer(tmp_path, genesis):
    path = tmp_path / "commit.wal"
    with open_wal(path, genesis) as wal:
        write_commit(wal, "c-1")
    other, _, _ = make_committee(4, rng=random.Random(8))
    assert "bad signature" in verify_wal(path, other).error
    path2 = tmp_path / "outsider.wal"
    with open_wal(path2, genesis, signer=9, key=genesis[1][0]) as wal:
        wal.intent("c-9", view=0)
    assert "signer 9 is not a committee member" in verify_wal(path2, genesis[0]).error


def test_verify_reports_bad_headers_and_foreign_records(tmp_path, genesis):
    short = tmp_path / "short.wal"
    short.write_bytes(b"BFTD")
    assert verify_wal(short, genesis[0]).offset == 0
    foreign = tmp_path / "foreign.wal"
    with storage.RecordLog.open(foreign) as log:
        log.append(b"\xa0")  # an empty CBOR map: a record, but not a WAL record
    report = verify_wal(foreign, genesis[0])
    assert "record 0: not a WAL record" in report.error
    assert report.offset == storage.HEADER_SIZE
    with pytest.raises(storage.CorruptLogError, match="record 0 is not a WAL record"):
        open_wal(foreign, genesis)


def test_records_decode_and_types_are_checked(tmp_path, genesis):
    from bftdeliberate.errors import LocalError

    with open_wal(tmp_path / "w", genesis) as wal:
        record = wal.intent("c-1", view=3)
        with pytest.raises(LocalError):
            wal.append("bogus", "c-1", {})
    with storage.RecordLog.open(tmp_path / "w") as log:
        payload = log.records()[0]
    assert decode_record(payload) == record


def test_audit_verify_command(tmp_path, genesis, capsys):
    from bftdeliberate.cli import main
    from bftdeliberate.committee import save_committee

    committee_file = tmp_path / "committee.json"
    save_committee(genesis[0], committee_file)
    path = tmp_path / "commit.wal"
    with open_wal(path, genesis) as wal:
        write_commit(wal, "c-1")
        write_commit(wal, "c-2", finish=False)
    assert main(["audit", "verify", str(path), "--committee", str(committee_file)]) == 0
    assert "ok: 5 records" in capsys.readouterr().out
    data = bytearray(path.read_bytes())
    data[storage.HEADER_SIZE + 10] ^= 0x01
    path.write_bytes(bytes(data))
    assert main(["audit", "verify", str(path), "--committee", str(committee_file),
                 "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["offset"] == storage.HEADER_SIZE
    assert f"offset {storage.HEADER_SIZE}" in report["error"]
    assert path.read_bytes() == bytes(data)  # nothing overwritten
    assert main(["audit", "verify", str(tmp_path / "missing.wal"), "--committee",
                 str(committee_file)]) == 2
    assert "cannot read WAL" in capsys.readouterr().err
