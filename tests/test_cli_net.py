"""``bftd keys init --force``, ``node run``, ``cluster up`` and ``client put|get``: bad input is
one line and exit 2 with nothing written; a client with no committee reachable exits 1; a
local cluster started with ``cluster up`` serves clients and stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess

import pytest
import trio
from processes import bftd_argv, free_port_range, scrape

from bftdeliberate.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> bool:
    return code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.fixture
def keystore(tmp_path, capsys):
    directory = tmp_path / "keys"
    assert run(capsys, "keys", "init", "--n", "4", "--dir", str(directory), "--clients", "2",
               "--base-port", str(free_port_range(4)))[0] == 0
    return directory


def test_keys_init_writes_private_keys_0600_and_force_replaces_them(keystore, capsys):
    for path in keystore.glob("*.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = (keystore / "agent-0.key").read_bytes()
    code, _, err = run(capsys, "keys", "init", "--n", "4", "--dir", str(keystore))
    assert one_line_error(code, err) and "--force" in err
    assert (keystore / "agent-0.key").read_bytes() == before
    assert run(capsys, "keys", "init", "--n", "4", "--dir", str(keystore), "--force")[0] == 0
    assert (keystore / "agent-0.key").read_bytes() != before
    assert stat.S_IMODE((keystore / "agent-0.key").stat().st_mode) == 0o600


def test_keys_init_default_addresses_are_loopback_from_the_base_port(tmp_path, capsys):
    directory = tmp_path / "ks"
    assert run(capsys, "keys", "init", "--n", "4", "--dir", str(directory),
               "--base-port", "7300")[0] == 0
    members = json.loads((directory / "committee.json").read_text())["members"]
    assert [m["address"] for m in members] == [f"127.0.0.1:{7300 + i}" for i in range(4)]
    assert sorted(p.name for p in directory.iterdir()) == [
        "agent-0.key", "agent-1.key", "agent-2.key", "agent-3.key", "client-0.key",
        "committee.json"]


@pytest.mark.parametrize("problem", ["missing-key", "wrong-key", "bad-committee", "bad-id",
                                     "bad-flag", "bad-listen", "bad-settings"])
def test_node_run_bad_input_is_one_line_exit_2_and_writes_nothing(keystore, capsys, problem):
    committee, key = str(keystore / "committee.json"), str(keystore / "agent-1.key")
    data = keystore / "data"
    argv = ["node", "run", "--id", "1", "--committee", committee, "--key", key,
            "--data", str(data)]
    if problem == "missing-key":
        argv[argv.index(key)] = str(keystore / "nope.key")
    elif problem == "wrong-key":
        argv[argv.index(key)] = str(keystore / "agent-2.key")
    elif problem == "bad-committee":
        (keystore / "broken.json").write_text("{not json")
        argv[argv.index(committee)] = str(keystore / "broken.json")
    elif problem == "bad-id":
        argv[argv.index("1")] = "9"
    elif problem == "bad-flag":
        argv += ["--metrics-port", "99999"]
    elif problem == "bad-listen":
        argv += ["--listen", "nowhere"]
    else:
        argv += ["--checkpoint-interval", "4", "--log-window", "6"]
    before = sorted(p.name for p in keystore.iterdir())
    code, _, err = run(capsys, *argv)
    assert one_line_error(code, err), err
    assert sorted(p.name for p in keystore.iterdir()) == before  # no data directory, no log


@pytest.mark.parametrize("problem", ["missing-committee", "member-key", "missing-key"])
def test_client_bad_input_is_one_line_exit_2(keystore, capsys, problem):
    committee = str(keystore / "committee.json")
    argv = ["client", "put", "k", "v", "--committee", committee]
    if problem == "missing-committee":
        argv[argv.index(committee)] = str(keystore / "absent.json")
    elif problem == "member-key":
        argv += ["--key", str(keystore / "agent-0.key")]
    else:
        argv += ["--key", str(keystore / "absent.key")]
    code, _, err = run(capsys, *argv)
    assert one_line_error(code, err), err


def test_client_times_out_with_exit_1_when_no_member_answers(keystore, capsys):
    code, out, _ = run(capsys, "client", "get", "k", "--committee",
                       str(keystore / "committee.json"), "--timeout", "0.5", "--json")
    assert code == 1
    assert json.loads(out)["timeout"] is True


def test_cluster_up_refuses_a_keystore_of_another_size(keystore, capsys):
    code, _, err = run(capsys, "cluster", "up", "--n", "7", "--dir", str(keystore))
    assert one_line_error(code, err) and "n=4" in err


async def test_cluster_up_serves_clients_and_stops_all_nodes_on_ctrl_c(tmp_path):
    base = free_port_range(8)
    directory = tmp_path / "cluster"
    argv = [*bftd_argv(), "cluster", "up", "--n", "4", "--dir", str(directory),
            "--base-port", str(base), "--metrics-base-port", str(base + 4)]
    cluster = subprocess.Popen(argv, stdout=subprocess.PIPE,  # noqa: ASYNC220 (returns at once)
                               stderr=subprocess.STDOUT)
    try:
        with trio.fail_after(60):
            for member in range(4):
                while await scrape(base + 4 + member) is None:
                    assert cluster.poll() is None, cluster.stdout.read().decode()
                    await trio.sleep(0.05)
            committee = str(directory / "committee.json")
            put = await trio.run_process([*bftd_argv(), "client", "put", "color", "blue",
                                          "--committee", committee], capture_stdout=True)
            assert put.returncode == 0
            get = await trio.run_process([*bftd_argv(), "client", "get", "color",
                                          "--committee", committee], capture_stdout=True)
            assert get.stdout.decode().strip() == "blue"
            cluster.send_signal(signal.SIGINT)
            code = await trio.to_thread.run_sync(cluster.wait)
        output = cluster.stdout.read().decode()
        assert code == 0, output
        assert all(f"member {m}: 127.0.0.1:{base + m}" in output for m in range(4)), output
        # Every node process is gone: nothing answers on the metrics ports any more.
        for member in range(4):
            assert await scrape(base + 4 + member) is None
        for member in range(4):
            assert (directory / f"data-{member}" / f"replica-{member}.log").exists()
    finally:
        if cluster.poll() is None:
            os.kill(cluster.pid, signal.SIGKILL)
            cluster.wait()


@pytest.mark.parametrize("busy", ["listen", "metrics"])
def test_node_run_on_a_busy_port_is_one_line_exit_2(keystore, capsys, busy):
    committee = json.loads((keystore / "committee.json").read_text())
    member_port = int(committee["members"][1]["address"].rsplit(":", 1)[1])
    metrics_port = free_port_range(1)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", member_port if busy == "listen" else metrics_port))
    blocker.listen()
    try:
        code, _, err = run(capsys, "node", "run", "--id", "1", "--committee",
                           str(keystore / "committee.json"), "--key",
                           str(keystore / "agent-1.key"), "--data", str(keystore / "d1"),
                           "--metrics-port", str(metrics_port))
    finally:
        blocker.close()
    assert one_line_error(code, err) and "already in use" in err, err
