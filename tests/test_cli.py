"""The ``bftd`` command line: exit codes, one-line errors, nothing stored is lost."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from bftdeliberate.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_json_commits_and_contains_the_byzantine_member(capsys):
    code, out, _ = run(capsys, "demo", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["state_digests_equal"] and report["all_completed"]
    assert len({r["state_digest"] for r in report["replicas"]}) == 1
    honest = [r for r in report["replicas"] if r["id"] != report["byzantine_member"]]
    assert all(r["dropped"].get("sender-mismatch") == 1 for r in honest)
    assert report["operations"][-1]["result"] == {"ok": True, "value": "approved"}


def test_demo_table_renders(capsys):
    code, out, _ = run(capsys, "demo")
    assert code == 0 and "state digests: equal" in out


def test_keys_init_then_check(tmp_path, capsys):
    keystore = tmp_path / "keys"
    code, out, _ = run(capsys, "keys", "init", "--n", "4", "--dir", str(keystore), "--clients", "2")
    assert code == 0
    assert sorted(p.name for p in keystore.iterdir()) == [
        "agent-0.key", "agent-1.key", "agent-2.key", "agent-3.key",
        "client-0.key", "client-1.key", "committee.json"]
    code, out, _ = run(capsys, "keys", "check", "--committee", str(keystore / "committee.json"),
                       "--key", str(keystore / "agent-2.key"), "--json")
    assert code == 0
    summary = json.loads(out)
    assert (summary["n"], summary["f"], summary["quorum"], summary["reply_quorum"]) == (4, 1, 3, 2)
    assert summary["keys"] == [{"file": str(keystore / "agent-2.key"), "owner": "member 2"}]


def test_keys_init_refuses_to_overwrite_and_keeps_every_file(tmp_path, capsys):
    keystore = tmp_path / "keys"
    assert run(capsys, "keys", "init", "--n", "4", "--dir", str(keystore))[0] == 0
    before = {p.name: p.read_bytes() for p in keystore.iterdir()}
    code, out, err = run(capsys, "keys", "init", "--n", "4", "--dir", str(keystore))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in keystore.iterdir()} == before


@pytest.mark.parametrize("corrupt, expected", [
    (lambda m: m["members"].pop(), "at least 4 members"),
    (lambda m: m["members"][2]["roles"].append("admin"), "unknown role 'admin'"),
    (lambda m: m["members"][1].update(public_key="ssh-ed25519 AAAA"), "members.1"),
    (lambda m: m["members"][3].update(id=0), "member id"),
])
def test_bad_committee_file_is_one_line_naming_the_file_exit_2(tmp_path, capsys, corrupt, expected):
    keystore = tmp_path / "keys"
    run(capsys, "keys", "init", "--n", "4", "--dir", str(keystore))
    manifest_path = keystore / "committee.json"
    manifest = json.loads(manifest_path.read_text())
    corrupt(manifest)
    bad = tmp_path / "bad-committee.json"
    bad.write_text(json.dumps(manifest))
    code, _, err = run(capsys, "keys", "check", "--committee", str(bad))
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert str(bad) in err and expected in err


def test_bad_key_file_is_one_line_exit_2(tmp_path, capsys):
    keystore = tmp_path / "keys"
    run(capsys, "keys", "init", "--n", "4", "--dir", str(keystore))
    garbage = tmp_path / "agent-9.key"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    code, _, err = run(capsys, "keys", "check", "--committee", str(keystore / "committee.json"),
                       "--key", str(garbage))
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(garbage) in err
    other = tmp_path / "other"
    run(capsys, "keys", "init", "--n", "4", "--dir", str(other))
    code, _, err = run(capsys, "keys", "check", "--committee", str(keystore / "committee.json"),
                       "--key", str(other / "agent-0.key"))
    assert code == 2 and "belongs to no member" in err


@pytest.mark.parametrize("argv", [
    ["bogus"], ["demo", "--n", "3"], ["bench", "core", "--batch", "ten"],
    ["keys", "init"], ["bench", "core", "--n", "4,x"],
])
def test_bad_usage_is_one_line_exit_2(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bench_core_counts_match_pbft(capsys):
    code, out, _ = run(capsys, "bench", "core", "--n", "4", "--batch", "5", "--requests", "100",
                       "--json")
    assert code == 0
    (result,) = json.loads(out)["results"]
    assert result["messages_per_batch"]["pre_prepare"] == 3
    assert result["messages_per_batch"]["prepare"] == 9
    assert result["messages_per_batch"]["commit"] == 12
    assert result["messages_per_batch"]["reply"] == 4 * 5
    assert result["messages_match_analytic"] and result["state_digests_equal"]
    assert result["ops_per_s"] > 0 and result["verify_bound_ops_per_s"] > 0


def test_installed_console_script_runs():
    bftd = shutil.which("bftd") or pytest.skip("bftd console script not on PATH")
    done = subprocess.run([bftd, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "demo" in done.stdout
    done = subprocess.run([sys.executable, "-m", "bftdeliberate.cli", "demo", "--n", "x"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
