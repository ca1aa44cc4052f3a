"""Four ``bftd node run`` processes on 127.0.0.1 under load: kill -9 a backup, restart it (it
catches up by state transfer), kill -9 the primary (a view change; the load goes on), restart
it; every node ends with the same state digest. (f = 1: one member down at a time.)

The nodes run with a small checkpoint interval (K=4, L=8) so that the restarted members
are behind the others' garbage-collected log and can only catch up by state transfer.
"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest
import trio
from processes import Node, bftd_argv, free_port_range, sample, scrape, state_digest

from bftdeliberate import kv
from bftdeliberate.committee import load_committee
from bftdeliberate.crypto import load_private_key
from bftdeliberate.peer import open_client

OPERATIONS = 500
CLIENTS = 4
KILL_BACKUP_AT = 100
RESTART_BACKUP_AT = 180
KILL_PRIMARY_AT = 260
RESTART_PRIMARY_AT = 360
TEST_TIMEOUT = 150
TUNABLES = ["--checkpoint-interval", "4", "--log-window", "8"]


def _keystore(directory: Path, base_port: int) -> None:
    subprocess.run([*bftd_argv(), "keys", "init", "--n", "4", "--dir", str(directory),
                    "--clients", str(CLIENTS), "--base-port", str(base_port)],
                   check=True, capture_output=True)


async def _wait_up(node: Node) -> None:
    while await scrape(node.metrics_port) is None:
        assert node.alive(), f"member {node.member} exited:\n{node.log()[-3000:]}"
        await trio.sleep(0.05)


async def _metrics(nodes: list[Node]) -> dict[int, dict[str, float]]:
    found = {}
    for node in nodes:
        samples = await scrape(node.metrics_port)
        if samples is not None:
            found[node.member] = samples
    return found


@pytest.fixture
def cluster(tmp_path):
    base = free_port_range(8)
    _keystore(tmp_path, base)
    nodes = [Node(member, tmp_path, base + 4 + member, TUNABLES) for member in range(4)]
    yield nodes
    for node in nodes:
        node.stop()


async def test_four_processes_survive_kill9_of_backup_and_primary_and_converge(cluster):
    nodes = cluster
    keystore = nodes[0].keystore
    committee = load_committee(keystore / "committee.json")
    with trio.fail_after(TEST_TIMEOUT):
        for node in nodes:
            node.start()
        for node in nodes:
            await _wait_up(node)

        completed = 0
        progress = trio.lowlevel.ParkingLot()
        # The load pauses at each fault's milestone until the fault was injected, so every
        # fault happens at a known point of the load (clients otherwise run ahead while a
        # restarted member catches up).
        gate = KILL_BACKUP_AT
        gate_opened = trio.lowlevel.ParkingLot()
        values: dict[str, bytes] = {}

        async def load(client_index: int, count: int) -> None:
            nonlocal completed
            client_id = f"client-{client_index}"
            key = load_private_key(keystore / f"{client_id}.key")
            async with open_client(committee, client_id, key) as client:
                for op in range(count):
                    while completed >= gate:
                        await gate_opened.park()
                    name, value = f"{client_id}/{op}", f"{op}".encode()
                    result = await client.call(kv.put(name, value), timeout=60)
                    assert result == kv.cbor.encode({"ok": True, "previous": None})
                    values[name] = value
                    completed += 1
                    progress.unpark_all()

        events: list[str] = []

        async def caught_up(member: int) -> None:
            # Restarted: wait until it adopted a transferred state and executes again, so
            # that the next fault leaves 2f+1 working members.
            while True:
                metrics = await _metrics(nodes)
                if member in metrics and len(metrics) == 4:
                    transfers = sample(metrics[member], "bftd_state_transfers_total", member)
                    seqs = [sample(s, "bftd_last_executed_seq", m) for m, s in metrics.items()]
                    if transfers and min(seqs) > 0 and max(seqs) - min(seqs) <= 4:
                        return
                await trio.sleep(0.05)

        async def faults() -> None:
            nonlocal gate
            schedule = [(KILL_BACKUP_AT, "kill-backup"), (RESTART_BACKUP_AT, "restart-backup"),
                        (KILL_PRIMARY_AT, "kill-primary"),
                        (RESTART_PRIMARY_AT, "restart-primary"), (OPERATIONS + 1, "")]
            for (at, action), (next_at, _) in itertools.pairwise(schedule):
                while completed < at:
                    await progress.park()
                if action == "kill-backup":
                    nodes[2].kill9()
                elif action == "restart-backup":
                    nodes[2].start()
                    await caught_up(2)
                elif action == "kill-primary":
                    nodes[0].kill9()
                else:
                    nodes[0].start()
                events.append(f"{action}@{completed}")
                gate = next_at
                gate_opened.unpark_all()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(faults)
            per_client = OPERATIONS // CLIENTS
            for index in range(CLIENTS):
                nursery.start_soon(load, index, per_client)
        assert completed == OPERATIONS
        assert [event.split("@")[0] for event in events] == [
            "kill-backup", "restart-backup", "kill-primary", "restart-primary"]

        # Every node, the restarted ones included, reaches the same last executed seq and
        # reports the same state digest.
        while True:
            metrics = await _metrics(nodes)
            if len(metrics) == 4:
                seqs = {m: sample(s, "bftd_last_executed_seq", m) for m, s in metrics.items()}
                digests = {m: state_digest(s, m) for m, s in metrics.items()}
                # The restarted old primary also learns the view the others moved to.
                views = {m: sample(s, "bftd_view", m) for m, s in metrics.items()}
                if len(set(seqs.values())) == 1 and len(set(digests.values())) == 1 \
                        and len(set(views.values())) == 1:
                    break
            await trio.sleep(0.1)

    assert all(view >= 1 for view in views.values()), views  # the primary's death: a view change
    for restarted in (0, 2):
        transfers = sample(metrics[restarted], "bftd_state_transfers_total", restarted)
        assert transfers is not None and transfers >= 1, f"member {restarted} did not use state transfer"
    # The replicated store holds the values: ordered reads through the committee, of every
    # client's first, middle and last operation (bftd_committed_ops_total would not do: it
    # counts what a member executed itself, not what it adopted by state transfer).
    assert len(values) == OPERATIONS
    key = load_private_key(keystore / "client-0.key")
    per_client = OPERATIONS // CLIENTS
    with trio.fail_after(30):
        async with open_client(committee, "client-0", key) as client:
            for index in range(CLIENTS):
                for op in (0, per_client // 2, per_client - 1):
                    name = f"client-{index}/{op}"
                    result = kv.cbor.decode(await client.call(kv.get(name)))
                    assert result == {"ok": True, "value": values[name]}
    for node in nodes:
        assert node.stop() == 0, node.log()[-2000:]  # SIGTERM: a clean exit
