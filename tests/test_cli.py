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


def test_demo_json_shows_a_debate_decided_and_the_byzantine_vote_contained(capsys):
    from bftdeliberate.deliberation.ledger import EXIT_REASONS
    from bftdeliberate.deliberation.proposal import Proposal

    code, out, err = run(capsys, "demo", "--json")
    assert code == 0, err
    report = json.loads(out)  # one JSON object
    assert report["decision"] == "approved" and report["exit_reason"] in EXIT_REASONS
    byzantine = report["byzantine"]
    assert byzantine["behaviour"] == "vote-flip" and byzantine["contained"]
    name = byzantine["name"]
    # Its first vote counts like anyone's; every further one was refused as a duplicate.
    assert [v["agent"] for v in report["votes"]].count(name) == 1
    assert byzantine["evidence"] and all(
        e["reason"] == "duplicate_vote" and e["agent"] == name and e["op"] == "vote"
        for e in byzantine["evidence"])
    assert all(set(v) >= {"agent", "decision", "notes"} for v in report["votes"])
    assert sum(v["decision"] == "approve" for v in report["votes"]) >= report["task"]["threshold"]
    assert report["rounds"] and report["rounds"][0]["contributions"]
    assert report["tokens"]["used"] > 0 and "signals" in report["groupthink"]
    proposal = Proposal.model_validate_json(json.dumps(report["proposal"]))
    assert proposal.decision.result == "approved" and proposal.plan
    assert report["honest_members_agree"] and report["transport"] == "tcp 127.0.0.1"
    # The commit layer applied the plan exactly once in the sandbox, through one injected
    # transient failure and a crash of the first submitter that the next primary completed.
    commit = report["commit"]
    assert commit["result"] == "committed" and commit["members_agree"]
    assert report["duplicate_commits"] == 0
    assert report["effects_applied"] == len(proposal.plan) == len(commit["steps"])
    assert [s["submitter"] for s in commit["submitters"]] == ["agent-0", "agent-1"]
    assert [f["fault"] for f in commit["injected"]] == ["transient", "submitter_crash"]
    assert commit["after"]["files"]["deploy/api.yaml"].startswith("image: registry.local/api:2.2")
    assert commit["before"]["kv"]["releases/api"] is None
    assert commit["after"]["kv"]["releases/api"] == "2.2"
    record = commit["record"]
    assert record["commit_id"] == commit["commit_id"] and record["result"] == "committed"
    assert any(a["retry_reason"] == "transient" for a in record["attempts"])
    assert {s["signer"] for s in record["signatures"]} == {"agent-0", "agent-1"}
    assert report["audit"]["attribution"]["submitters"] == ["agent-0", "agent-1"]
    assert report["seconds"] < 30


def test_demo_keeps_its_sandbox_and_logs_in_dir(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "--json", "--dir", str(tmp_path / "demo"))
    assert code == 0, err
    report = json.loads(out)
    sandbox = tmp_path / "demo" / "sandbox"
    assert report["commit"]["sandbox"] == str(sandbox)
    assert (sandbox / "deploy" / "api.yaml").read_text().startswith("image: registry.local/api:2.2")
    logs = [str(p) for p in sorted((tmp_path / "demo").glob("data-*/audit.jsonl"))]
    code, out, _ = run(capsys, "audit", "report", *logs, "--json")
    assert code == 0 and json.loads(out)["duplicate_commits"] == 0
    code, _, err = run(capsys, "demo", "--dir", str(tmp_path / "demo"))
    assert code == 2 and "not empty" in err


def test_demo_renders_for_people(capsys):
    code, out, _ = run(capsys, "demo")
    assert code == 0
    assert "decision: APPROVED" in out and "duplicate_vote" in out and "proposal.json" in out
    assert "committed by agent-0 (view 0) -> agent-1 (view 1)" in out
    assert "duplicate commits: 0" in out


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


def test_keys_init_puts_members_on_separate_hosts(tmp_path, capsys):
    code, _, err = run(capsys, "keys", "init", "--n", "4", "--dir", str(tmp_path / "k"),
                       "--hosts", "10.0.0.1,10.0.0.2,db-3.example,fd00::4", "--base-port", "7100")
    assert code == 0, err
    manifest = json.loads((tmp_path / "k" / "committee.json").read_text())
    assert [m["address"] for m in manifest["members"]] == [
        "10.0.0.1:7100", "10.0.0.2:7100", "db-3.example:7100", "[fd00::4]:7100"]
    code, _, err = run(capsys, "keys", "init", "--n", "4", "--dir", str(tmp_path / "k2"),
                       "--hosts", "10.0.0.1,10.0.0.2")
    assert code == 2 and "2 hosts for 4 members" in err and not (tmp_path / "k2").exists()


def test_keys_init_refuses_to_overwrite_and_keeps_every_file(tmp_path, capsys):
    keystore = tmp_path / "keys"
    assert run(capsys, "keys", "init", "--n", "4", "--dir", str(keystore))[0] == 0
    before = {p.name: p.read_bytes() for p in keystore.iterdir()}
    code, _, err = run(capsys, "keys", "init", "--n", "4", "--dir", str(keystore))
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
    ["bogus"], ["demo", "--n", "3"], ["demo", "--model", "m"], ["bench", "core", "--batch", "ten"],
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
    done = subprocess.run([bftd, "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and "demo" in done.stdout
    done = subprocess.run([sys.executable, "-m", "bftdeliberate.cli", "demo", "--n", "x"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1


def test_demo_switches_the_honest_debaters_to_an_openai_compatible_server(capsys):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class FakeModel(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            schema = body.get("response_format", {}).get("json_schema", {}).get("name")
            prompt = json.dumps(body["messages"])
            if schema == "VoteDraft":
                answer = {"decision": "approve", "notes": "reversible and tested"}
            else:
                answer = {"position": "roll back", "argument": "errors began with 2.3",
                          "evidence": ["incident:INC-4821"], "confidence": 80}
                if "You are agent-0" in prompt:
                    answer["proposal"] = {"plan": [{"step": "test", "cmd": "make smoke"}]}
            data = json.dumps({"choices": [{"message": {"content": json.dumps(answer)},
                                            "finish_reason": "stop"}],
                               "usage": {"total_tokens": 200}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeModel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code, out, err = run(capsys, "demo", "--json", "--llm-base-url",
                             f"http://127.0.0.1:{server.server_address[1]}/v1", "--model", "m")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, err
    report = json.loads(out)
    assert report["debaters"] == "llm" and report["decision"] == "approved"
    assert report["members"][0]["llm"]["calls"] >= 1
    assert report["members"][3]["debater"] == "scripted vote-flip"
    assert report["tokens"]["by_agent"]["agent-0"] >= 200  # the server's reported usage
