"""A real multi-host test: four ``bftd node run`` members, each in its own Linux network
namespace on a private subnet (10.77.0.0/24), joined by veth links to a bridge (in a hub
namespace of its own, see tests/netns.py for why), every link delayed and lossy with
``tc netem``; ``bftd client put`` runs in a fifth namespace through ``ip netns exec``.

Phase 1 cuts a backup off (nftables where usable, else iptables, else blackhole routes: the
output says which): the three others keep committing, the isolated member executes nothing;
heal, more load, and all four converge (same last executed seq, state digest and view).
Phase 2 cuts the primary off the same way: the majority side changes view and keeps
committing; heal, more load, and all four converge again, the old primary in the new view.
Finally ordered reads (``bftd client get``) return what was written in every phase.

Needs root and network namespaces; skips itself with the reason elsewhere. Everything it
creates lives in namespaces named after the pid (plus a random tag) and is deleted in the
fixture's teardown, failure or not. The summary (mechanism, counts, views, timings) is
printed: run with ``-s`` (or ``-rP``) to see it.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netns
import pytest
import trio
from netns import Topology
from processes import Node, bftd_argv, sample, state_digest

from bftdeliberate.committee import load_committee

MEMBERS = 4
CLIENTS = 4
PEER_PORT = 7000
#: Each node serves metrics on 127.0.0.1:METRICS_PORT of its own namespace.
METRICS_PORT = 9100
#: Every host's uplink: a member-to-member path sees 20 ms +- 5 ms one way and 1 % loss.
NETEM = ["delay", "20ms", "5ms", "loss", "1%"]
#: Small checkpoint interval and window: an isolated member falls behind the others'
#: garbage-collected log and catches up by state transfer.
TUNABLES = ["--checkpoint-interval", "4", "--log-window", "8", "--view-change-timeout", "1"]
#: Puts per client in each workload step (the clients run concurrently).
PUTS_PER_CLIENT = 2
#: Seconds a ``bftd client`` call may wait for f+1 matching replies.
CLIENT_TIMEOUT = 20
#: Bounds of the polls (seconds).
UP_TIMEOUT = 20
CONVERGE_TIMEOUT = 25
POLL_INTERVAL = 0.1
TEST_TIMEOUT = 90


@dataclass
class NetnsNode(Node):
    """A ``bftd node run`` process inside its host's namespace (``ip netns exec`` execs the
    node, so the Popen pid is the node's and stop/kill reach it directly)."""

    topology: Topology | None = None

    @property
    def label(self) -> str:
        return f"m{self.member}"

    def start(self) -> None:
        assert self.topology is not None
        argv = self.topology.exec_argv(self.label, [
            *bftd_argv(), "node", "run", "--id", str(self.member),
            "--committee", str(self.keystore / "committee.json"),
            "--key", str(self.keystore / f"agent-{self.member}.key"),
            "--data", str(self.keystore / f"data-{self.member}"),
            "--metrics-port", str(self.metrics_port), *self.extra])
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def _write_committee(directory: Path, topology: Topology) -> None:
    """``bftd keys init --hosts``: each member on its own namespace's address."""
    hosts = ",".join(topology.hosts[f"m{i}"].address for i in range(MEMBERS))
    subprocess.run([*bftd_argv(), "keys", "init", "--n", str(MEMBERS), "--dir", str(directory),
                    "--clients", str(CLIENTS), "--hosts", hosts, "--base-port", str(PEER_PORT)],
                   check=True, capture_output=True, timeout=30)
    path = directory / "committee.json"
    addresses = [m.address for m in load_committee(path).members]
    assert addresses == [f"10.77.0.{10 + i}:{PEER_PORT}" for i in range(MEMBERS)], addresses


@pytest.fixture
def network(tmp_path):
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    topology = Topology([*(f"m{i}" for i in range(MEMBERS)), "client"], netem=NETEM)
    nodes: list[NetnsNode] = []
    try:
        topology.create()
        _write_committee(tmp_path, topology)
        nodes = [NetnsNode(i, tmp_path, METRICS_PORT, TUNABLES, topology=topology)
                 for i in range(MEMBERS)]
        yield topology, nodes
    finally:
        for node in nodes:
            node.stop()
        errors = topology.destroy()
        listed = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True,
                                text=True, timeout=10).stdout
        left = [line for line in listed.splitlines() if line.startswith(topology.prefix)]
        print(f"teardown: namespaces {topology.prefix}-* deleted; errors {errors}; "
              f"left over {left}")
        assert not left, f"namespaces left over: {left}"


class Cluster:
    """The test's view of the running committee: metrics scrapes, client calls, polls."""

    def __init__(self, topology: Topology, nodes: list[NetnsNode]) -> None:
        self.topology = topology
        self.nodes = nodes
        self.keystore = nodes[0].keystore
        self.values: dict[str, str] = {}
        self.client_views: list[int] = []

    async def metrics(self, members: list[int]) -> dict[int, dict[str, float]]:
        found = {}
        for member in members:
            samples = await netns.scrape(self.topology, f"m{member}", METRICS_PORT)
            if samples is not None:
                found[member] = samples
        return found

    async def state(self, members: list[int]) -> dict[int, dict[str, Any]]:
        """Per member: last executed seq, view, view active, state digest, executed ops,
        state transfers, view changes (absent members are left out)."""
        out = {}
        for member, samples in (await self.metrics(members)).items():
            def get(name: str, m: int = member, s: dict[str, float] = samples) -> int | None:
                value = sample(s, name, m)
                return None if value is None else int(value)
            out[member] = {
                "seq": get("bftd_last_executed_seq"), "view": get("bftd_view"),
                "active": get("bftd_view_active"), "digest": state_digest(samples, member),
                "ops": get("bftd_committed_ops_total"),
                "transfers": get("bftd_state_transfers_total"),
                "view_changes": get("bftd_view_changes_total"),
                "connections": get("bftd_connections")}
        return out

    def logs(self) -> str:
        return "\n".join(f"--- member {n.member} log tail:\n{n.log()[-1500:]}" for n in self.nodes)

    async def poll(self, what: str, timeout: float, members: list[int], done) -> dict:
        """Scrape ``members`` every POLL_INTERVAL until ``done(state)``; the state then. An
        AssertionError with the last state and the logs after ``timeout`` seconds."""
        state: dict[int, dict[str, Any]] = {}
        with trio.move_on_after(timeout):
            while True:
                state = await self.state(members)
                if len(state) == len(members) and done(state):
                    return state
                for node in self.nodes:
                    assert node.alive(), f"member {node.member} exited:\n{node.log()[-3000:]}"
                await trio.sleep(POLL_INTERVAL)
        raise AssertionError(f"{what}: not within {timeout} s; last state {state}\n"
                             f"{self.logs()}")

    async def converged(self, what: str, members: list[int], *, above: int = 0) -> dict:
        """Poll until ``members`` report one last executed seq (> ``above``), one state
        digest and one active view."""
        def done(state: dict[int, dict[str, Any]]) -> bool:
            seqs = {s["seq"] for s in state.values()}
            return (len(seqs) == 1 and min(seqs) > above
                    and len({s["digest"] for s in state.values()}) == 1
                    and len({s["view"] for s in state.values()}) == 1
                    and all(s["active"] == 1 for s in state.values()))
        return await self.poll(what, CONVERGE_TIMEOUT, members, done)

    async def client(self, index: int, action: str, *args: str) -> dict[str, Any]:
        """``bftd client ACTION ARGS --json`` as client ``index``, in the client namespace."""
        argv = self.topology.exec_argv("client", [
            *bftd_argv(), "client", action, *args,
            "--committee", str(self.keystore / "committee.json"),
            "--key", str(self.keystore / f"client-{index}.key"),
            "--json", "--timeout", str(CLIENT_TIMEOUT)])
        with trio.fail_after(CLIENT_TIMEOUT + 20):
            done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                          check=False)
        detail = f"{' '.join(argv[4:])}: exit {done.returncode}\n" \
                 f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
        assert done.returncode == 0, detail
        outcome = json.loads(done.stdout)
        assert outcome["ok"], detail
        return outcome

    async def workload(self, step: str) -> float:
        """PUTS_PER_CLIENT fresh keys per client, the clients concurrently; seconds taken."""
        started = time.monotonic()

        async def one(index: int) -> None:
            for op in range(PUTS_PER_CLIENT):
                key, value = f"{step}/c{index}/{op}", f"{step}-{index}-{op}"
                outcome = await self.client(index, "put", key, value)
                assert outcome["result"] == {"ok": True, "previous": None}, outcome
                self.values[key] = value
                self.client_views.append(outcome["view"])

        async with trio.open_nursery() as nursery:
            for index in range(CLIENTS):
                nursery.start_soon(one, index)
        return round(time.monotonic() - started, 2)

    async def isolate(self, member: int, mechanism: str, step: str) -> dict[str, Any]:
        """Cut ``member`` off, load the majority side, heal, load again, converge: the
        phase's record."""
        everyone = list(range(MEMBERS))
        majority = [m for m in everyone if m != member]
        before = await self.converged(f"{step}: all converged before the partition", everyone)
        seq0 = before[member]["seq"]
        view0 = before[member]["view"]
        partition = self.topology.partition(f"m{member}", mechanism)
        cut_at = time.monotonic()
        load_partitioned = await self.workload(f"{step}-partitioned")
        during = await self.converged(f"{step}: majority side converged while partitioned",
                                      majority, above=seq0)
        isolated = (await self.poll(f"{step}: isolated member's own metrics", UP_TIMEOUT,
                                    [member], lambda state: True))[member]
        # The isolated member executed nothing while cut off.
        assert isolated["seq"] == seq0, (isolated, before)
        assert isolated["ops"] == before[member]["ops"], (isolated, before)
        dropped = self.topology.heal(partition)
        partitioned_for = round(time.monotonic() - cut_at, 2)
        healed_at = time.monotonic()
        load_healed = await self.workload(f"{step}-healed")
        after = await self.converged(f"{step}: all four converged after healing", everyone,
                                     above=during[majority[0]]["seq"])
        return {
            "isolated_member": member, "partitioned_seconds": partitioned_for,
            "partition_dropped_packets": dropped,
            "seq_before": seq0, "view_before": view0,
            "majority_seq_during": during[majority[0]]["seq"],
            "majority_view_during": during[majority[0]]["view"],
            "isolated_seq_during": isolated["seq"], "isolated_view_during": isolated["view"],
            "committed_ops_during_partition": {
                m: during[m]["ops"] - before[m]["ops"] for m in majority}
            | {member: isolated["ops"] - before[member]["ops"]},
            "load_seconds": {"partitioned": load_partitioned, "healed": load_healed},
            "heal_to_converged_seconds": round(time.monotonic() - healed_at, 2),
            "isolated_state_transfers": after[member]["transfers"]
            - before[member]["transfers"],
            # bftd_view_changes_total: views each member entered after a view change.
            "views_entered": {m: s["view_changes"] for m, s in after.items()},
            "converged": {"seq": after[0]["seq"], "view": after[0]["view"],
                          "digest": after[0]["digest"]},
            "_before": before, "_during": during, "_after": after,
        }


async def test_four_namespaced_members_commit_through_partitions_and_converge(network):
    topology, nodes = network
    cluster = Cluster(topology, nodes)
    started = time.monotonic()
    everyone = list(range(MEMBERS))
    with trio.fail_after(TEST_TIMEOUT):
        for node in nodes:
            node.start()
        await cluster.poll("all members serve metrics", UP_TIMEOUT, everyone, lambda s: True)
        mechanism, why = topology.mechanism()
        print(f"netns: hosts {[(h.label, h.namespace, h.address) for h in topology.hosts.values()]}"
              f"\nnetns: netem {topology.netem_note}\nnetns: partition mechanism {mechanism} "
              f"({why})")
        warm_up = await cluster.workload("warm-up")

        # Phase 1: a backup (not the next primary) is cut off.
        view = (await cluster.converged("warm-up converged", everyone))[0]["view"]
        backup = (view + MEMBERS - 1) % MEMBERS
        phase1 = await cluster.isolate(backup, mechanism, "backup")
        assert phase1["majority_view_during"] == phase1["view_before"]  # no view change needed

        # Phase 2: the primary is cut off; the majority side changes view.
        primary = phase1["converged"]["view"] % MEMBERS
        phase2 = await cluster.isolate(primary, mechanism, "primary")
        assert phase2["majority_view_during"] > phase2["view_before"], phase2
        assert phase2["converged"]["view"] >= phase2["majority_view_during"], phase2

        # Ordered reads through the committee return what each phase wrote.
        reads = {}
        async with trio.open_nursery() as nursery:
            async def read(index: int, key: str) -> None:
                reads[key] = await cluster.client(index, "get", key)

            for index, step in enumerate(("warm-up", "backup-partitioned", "primary-partitioned",
                                          "primary-healed")):
                nursery.start_soon(read, index, f"{step}/c{index}/{PUTS_PER_CLIENT - 1}")
        for key, outcome in reads.items():
            assert outcome["result"] == {"ok": True, "value": cluster.values[key]}, outcome
        assert len(cluster.values) == 5 * CLIENTS * PUTS_PER_CLIENT

        lost = topology.lost_frames()
        for node in nodes:
            assert node.stop() == 0, node.log()[-2000:]  # SIGTERM: a clean exit

    summary = {
        "seconds": round(time.monotonic() - started, 2), "partition_mechanism": mechanism,
        "mechanism_reason": why, "netem": topology.netem_note, "warm_up_seconds": warm_up,
        "puts": len(cluster.values), "loss_fallback_dropped_frames": lost, "client_views_seen": sorted(set(cluster.client_views)),
        "phases": [{k: v for k, v in phase.items() if not k.startswith("_")}
                   for phase in (phase1, phase2)]}
    print("netns summary: " + json.dumps(summary))
