"""Message-complexity benchmark: messages and bytes per committed operation and per view
change, by message type, next to PBFT's analytic counts (Castro & Liskov, OSDI'99).

Measured in the deterministic simulator (``simulator.world.World``: the production sans-IO
replicas and clients, simulated signatures, every message really encoded and decoded) on a
loss-free network whose links all take exactly ``LINK_DELAY_MS`` (1 ms). Fixed delays keep
the run in lock step, so every batch is full: with jittered delays the primary also cuts a
partial batch whenever a commit frees the pipeline, and per-operation counts then follow the
batch *fill*, not the batch size. Nothing is counted twice and nothing is estimated: a
message is counted once per receiver when it is put on the network (``World.transmit``);
bytes include the 4-byte frame header.

For each (n, batch) one run (per seed):

**normal** -- ``2 x batch`` closed-loop clients submit ``requests`` requests (default: one
checkpoint interval of full batches, ``K x batch`` requests with K = 64: 64, 640 and 6,400
for batches 1, 10, 100); the run goes on until every replica executed every batch and the
last checkpoint is stable. Per committed operation, PBFT's counts (a member never sends to
itself; B = requests / batch batches, R requests):

    request      1 per request        (the client sends it to the primary only; it
                                       broadcasts only when it times out)
    pre-prepare  (n-1) per batch      (the primary to every backup)
    prepare      (n-1)^2 per batch    (every backup to every other member)
    commit       n(n-1) per batch     (every member to every other member)
    reply        n per request        (every member answers the client; it needs f+1)
    checkpoint   n(n-1) per K sequence numbers (floor(B / K) checkpoints in the run)
    status       0                    (only a stalled replica sends STATUS)

**view_change** -- afterwards (all quiet, the last checkpoint stable) the primary of view 0
crashes and one client submits one request. The client times out (0.5 s) and broadcasts it;
the backups relay it to the (dead) primary and start their request timers; after T = 1 s
each live backup sends VIEW-CHANGE; the primary of view 1 sends NEW-VIEW on 2f+1 of them.
The episode runs from the crash to the moment every live replica executed the request and
the client accepted f+1 replies. PBFT's counts with one crashed member:

    view-change  (n-1)(n-1)   (each of the n-1 live members broadcasts one VIEW-CHANGE to
                               the n-1 others; n(n-1) if the old primary were alive too)
    new-view     (n-1)        (the new primary to every other member)

and for the request executed in the new view (one batch, one member down): pre-prepare
n-1, prepare (n-2)(n-1), commit (n-1)(n-1), reply n-1 -- times (P+1) for prepare and commit
when P batches were prepared above the stable checkpoint (the new view re-proposes them
inside NEW-VIEW; P = 0 with the default run length, which ends on a checkpoint). Client
retransmissions and the backups' relays (``request``) depend on the timers and are reported
without a formula.

Where measured differs from analytic the record says why (``note``) and how many copies were
duplicates (the same bytes to the same receiver twice). No formula is adjusted to fit.

Also reported per run: ops/s in virtual time (simulated seconds) and in wall time (this
simulator on one core: a speed of the simulator, not of a deployment), virtual latency
percentiles (submit to f+1 replies), view-change timing in virtual time.

Run on its own: ``python -m benchmarks.complexity --n 4,7 --batch 1,10 --json`` (the same
as ``bftd bench complexity``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from benchmarks.core import parse_int_list, percentile
from benchmarks.plots import add_plot_option, refuse_plot
from bftdeliberate import kv
from bftdeliberate.errors import DecodeError
from bftdeliberate.pbft.config import (
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_CLIENT_RETRANSMIT,
    ReplicaConfig,
)
from bftdeliberate.pbft.effects import Execute
from bftdeliberate.wire.messages import ViewChange, decode_envelope
from simulator.network import NetworkProfile
from simulator.world import CompletedRequest, World

DEFAULT_NS = (4, 7, 10, 13, 16, 22, 31)
DEFAULT_BATCHES = (1, 10, 100)
DEFAULT_SEEDS = 1
DEFAULT_JOBS = 1
#: Every link takes exactly this long (lock step: full batches, deterministic order).
LINK_DELAY_MS = 1.0
#: Clients per batch slot: two full batches are always waiting, so every batch is full.
CLIENTS_PER_BATCH = 2
#: After the last execution: let every message in flight arrive (far below the 0.5 s
#: retransmission timer, so nothing is re-sent meanwhile).
SETTLE_S = 0.05
#: Give up on a phase after this much simulated time (a stall is reported, not waited for).
MAX_PHASE_S = 120.0
FAILED_PRIMARY = 0
#: Width of the tables when the output is not a terminal (logs, files, pipes).
TABLE_WIDTH = 160
NORMAL_TYPES = ("request", "pre-prepare", "prepare", "commit", "reply", "checkpoint", "status")
#: The types with a formula (``status`` must be 0; ``request`` is the client's own send).
PROTOCOL_TYPES = ("pre-prepare", "prepare", "commit", "reply", "checkpoint")
VIEW_CHANGE_TYPES = ("view-change", "new-view")
FORMULAS = {
    "normal": {
        "request": "1 per request (client -> primary)",
        "pre-prepare": "(n-1) per batch",
        "prepare": "(n-1)^2 per batch",
        "commit": "n(n-1) per batch",
        "reply": "n per request",
        "checkpoint": "n(n-1) per K sequence numbers",
        "status": "0",
        "all": "1 + n + ((n-1) + (n-1)^2 + n(n-1)) / batch + n(n-1) floor(B/K) / R",
    },
    "view_change": {
        "view-change": "(n-1)(n-1): n-1 live members each broadcast one",
        "new-view": "n-1",
        "pre-prepare": "n-1 (the pending request's batch in the new view)",
        "prepare": "(n-2)(n-1)(P+1), P = batches prepared above the stable checkpoint "
                   "(re-proposed inside NEW-VIEW; 0 when the run ends on a checkpoint)",
        "commit": "(n-1)(n-1)(P+1)",
        "reply": "n-1",
    },
}
NOTES = {
    "new-view": "the new primary also answers every VIEW-CHANGE that reaches it after it "
                "sent NEW-VIEW with a copy of it (bftdeliberate/pbft/replica.py, "
                "Replica._on_view_change: 'The sender missed the NEW-VIEW of our view: "
                "re-send it'), although its broadcast is on the way: {dup} duplicate(s) = "
                "the n-2-2f live backups beyond the 2f it waited for",
    "request": "no formula: client retransmissions (0.5 s, doubling) and the backups' "
               "relays to the old and the new primary depend on the timers",
    "status": "STATUS is sent only by a replica stalled for 0.5 s",
}


def analytic_normal_counts(n: int, batch: int, requests: int, checkpoint_interval: int
                           ) -> dict[str, int]:
    """PBFT's normal-case messages of a whole run: ``requests`` requests in full batches of
    ``batch``, ``floor(batches / K)`` checkpoints (integers: compared exactly)."""
    batches = -(-requests // batch)
    checkpoints = batches // checkpoint_interval
    counts = {
        "request": requests,
        "pre-prepare": (n - 1) * batches,
        "prepare": (n - 1) ** 2 * batches,
        "commit": n * (n - 1) * batches,
        "reply": n * requests,
        "checkpoint": n * (n - 1) * checkpoints,
        "status": 0,
    }
    counts["all"] = sum(counts.values())
    return counts


def analytic_normal(n: int, batch: int, requests: int, checkpoint_interval: int
                    ) -> dict[str, float]:
    """The same per committed operation."""
    return {t: v / requests for t, v in
            analytic_normal_counts(n, batch, requests, checkpoint_interval).items()}


def analytic_normal_total(n: float, batch: int, requests: int, checkpoint_interval: int
                          ) -> float:
    """All normal-case messages per operation of a run, as a function of a real n (the
    plot's curve; equal to ``analytic_normal(...)["all"]`` at integer n)."""
    batches = -(-requests // batch)
    checkpoints = batches // checkpoint_interval
    per_batch = (n - 1) + (n - 1) ** 2 + n * (n - 1)
    return 1 + n + (per_batch * batches + n * (n - 1) * checkpoints) / requests


def analytic_view_change(n: int, prepared: int = 0) -> dict[str, int]:
    """Messages of one view change after the crash of the primary (one member down), with
    ``prepared`` batches prepared above the stable checkpoint (the new view re-proposes them
    inside NEW-VIEW: prepares and commits again, no reply: they executed already)."""
    slots = prepared + 1
    return {"view-change": (n - 1) * (n - 1), "new-view": n - 1, "pre-prepare": n - 1,
            "prepare": (n - 2) * (n - 1) * slots, "commit": (n - 1) * (n - 1) * slots,
            "reply": n - 1}


def default_requests(batch: int, checkpoint_interval: int) -> int:
    return checkpoint_interval * batch


def _ratio(measured: float | None, analytic: float | None) -> float | None:
    if measured is None or analytic is None:
        return None
    if analytic == 0:
        return 1.0 if measured == 0 else None
    return round(measured / analytic, 6)


def _latency(values: list[float]) -> dict[str, float | None]:
    values = sorted(values)
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    return {"p50": round(percentile(values, 0.50), 3), "p90": round(percentile(values, 0.90), 3),
            "p99": round(percentile(values, 0.99), 3),
            "mean": round(statistics.fmean(values), 3), "max": round(values[-1], 3)}


class _Copies:
    """A link filter: counts copies of identical bytes sent to the same receiver twice, and
    notes what each member's VIEW-CHANGE carries (once per sender)."""

    def __init__(self) -> None:
        self.seen: set[tuple[Any, bytes]] = set()
        self.duplicates: Counter[str] = Counter()
        self.view_change_senders: set[Any] = set()
        self.prepared_certs: list[int] = []
        self.checkpoint_proofs: list[int] = []

    def __call__(self, sender: Any, receiver: Any, data: bytes, message_type: str) -> bytes:
        key = (receiver, hashlib.blake2b(data, digest_size=16).digest())
        if key in self.seen:
            self.duplicates[message_type] += 1
            return data
        self.seen.add(key)
        if message_type == "view-change" and sender not in self.view_change_senders:
            try:
                message = decode_envelope(data).message
            except DecodeError:
                return data
            if isinstance(message, ViewChange):
                self.view_change_senders.add(sender)
                self.prepared_certs.append(len(message.prepared))
                self.checkpoint_proofs.append(len(message.proof))
        return data


def run_one(n: int, batch: int, requests: int | None = None, *, seed: int = 1,
            checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL,
            view_change: bool = True) -> dict[str, Any]:
    """One seeded run at (n, batch): the normal phase, then (``view_change``) the crash of
    the primary. Raw counts; ``summarise`` turns the seeds' runs into records."""
    requests = requests or default_requests(batch, checkpoint_interval)
    requests = -(-requests // batch) * batch  # whole batches only
    batches = requests // batch
    config = ReplicaConfig(batch_size=batch, checkpoint_interval=checkpoint_interval,
                           log_window=4 * checkpoint_interval)
    world = World(n, seed=seed, clients=CLIENTS_PER_BATCH * batch, config=config,
                  network=NetworkProfile(delay_ms=(LINK_DELAY_MS, LINK_DELAY_MS)))
    latencies: list[float] = []

    def on_completed(done: CompletedRequest) -> None:
        latencies.append(1000 * (done.completed_at - done.submitted_at))

    wall_started = time.perf_counter()
    operations = (kv.put(f"k{i % 1000}", b"v" * 16) for i in range(requests))
    workload_done = world.run_workload(operations, on_completed=on_completed,
                                       max_time=MAX_PHASE_S)
    virtual_s = world.now
    executed_all = world.run(until=lambda: all(r.last_executed >= batches for r in world.replicas),
                             max_time=world.now + MAX_PHASE_S)
    world.run(max_time=world.now + SETTLE_S)
    wall_s = time.perf_counter() - wall_started
    normal_messages = Counter(world.traffic.messages)
    normal_bytes = Counter(world.traffic.bytes)
    executed_batches = [r.stats.executed_batches for r in world.replicas]
    executed_requests = [r.stats.executed_requests for r in world.replicas]
    digests_equal = len(set(world.state_digests())) == 1
    result: dict[str, Any] = {
        "n": n, "f": world.committee.f, "batch": batch, "seed": seed,
        "requests": requests, "batches": batches, "clients": len(world.clients),
        "checkpoint_interval": checkpoint_interval,
        "completed": workload_done and executed_all,
        "executed_batches": executed_batches, "executed_requests": executed_requests,
        "full_batches": all(b == batches for b in executed_batches)
                        and all(r == requests for r in executed_requests),
        "state_digests_equal": digests_equal,
        "virtual_seconds": round(virtual_s, 6), "wall_seconds": round(wall_s, 4),
        "latency_ms": _latency(latencies),
        "messages": dict(normal_messages), "bytes": dict(normal_bytes),
        "view_change": None,
    }
    if view_change and result["completed"]:
        result["view_change"] = _view_change(world)
    result["safety_violations"] = len(world.violations)
    result["wall_seconds_total"] = round(time.perf_counter() - wall_started, 4)
    return result


def _view_change(world: World) -> dict[str, Any]:
    """Crash the primary of view 0 in a quiet committee, submit one request, count the
    episode up to its execution everywhere and the client's acceptance."""
    before_messages = Counter(world.traffic.messages)
    before_bytes = Counter(world.traffic.bytes)
    copies = _Copies()
    live = [r for r in world.replicas if r.id != FAILED_PRIMARY]
    first_commit: dict[str, Any] = {}

    def observe(member: int, execute: Execute) -> None:
        if not first_commit and execute.view > 0 and member != FAILED_PRIMARY:
            first_commit.update(at=world.now, member=member, view=execute.view, seq=execute.seq)

    wall_started = time.perf_counter()
    crash_at = world.now
    last_executed = max(r.last_executed for r in live)
    world.crash(FAILED_PRIMARY)
    world.link_filters.append(copies)
    world.execution_observers.append(observe)
    client_id = next(iter(world.clients))
    completed_before = len(world.completed)
    world.submit(client_id, kv.put("view-change", b"x" * 16))

    def done() -> bool:
        return (len(world.completed) > completed_before
                and all(r.view_active and r.view > 0 and r.last_executed > last_executed
                        and r.last_executed == live[0].last_executed for r in live))

    completed = world.run(until=done, max_time=crash_at + MAX_PHASE_S)
    replied_at = world.completed[-1].completed_at if completed else None
    world.run(max_time=world.now + SETTLE_S)
    world.link_filters.remove(copies)
    world.execution_observers.remove(observe)
    messages = Counter(world.traffic.messages) - before_messages
    size = Counter(world.traffic.bytes) - before_bytes
    return {
        "completed": completed,
        "failure": f"crash of the view-0 primary (member {FAILED_PRIMARY}) in a quiet "
                   "committee, then one client request",
        "view": min(r.view for r in live),
        "view_changes_per_replica": round(statistics.fmean(r.stats.view_changes for r in live), 3),
        "failure_to_commit_s": (round(first_commit["at"] - crash_at, 6)
                                if first_commit else None),
        "failure_to_reply_s": None if replied_at is None else round(replied_at - crash_at, 6),
        "first_commit": {k: v for k, v in first_commit.items() if k != "at"} or None,
        "messages": dict(messages), "bytes": dict(size),
        "duplicates": dict(copies.duplicates),
        "prepared_certs_per_view_change": (statistics.median_low(copies.prepared_certs)
                                           if copies.prepared_certs else 0),
        "checkpoint_proof_size": (statistics.median_low(copies.checkpoint_proofs)
                                  if copies.checkpoint_proofs else 0),
        "client_retransmissions": world.clients[client_id].stats.retransmissions,
        "wall_seconds": round(time.perf_counter() - wall_started, 4),
    }


# ------------------------------------------------------------------ summaries


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def summarise(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The seeds' runs of one (n, batch): its point (timing, totals) and its records (one per
    message type and phase). Counts are means over the seeds (``seeds_agree`` says whether
    every seed gave the same counts)."""
    first = runs[0]
    n, f, batch, requests = first["n"], first["f"], first["batch"], first["requests"]
    k = first["checkpoint_interval"]
    analytic_counts = analytic_normal_counts(n, batch, requests, k)
    records: list[dict[str, Any]] = []
    normal_ok = True
    for message_type in (*NORMAL_TYPES, "all"):
        def count(run: dict[str, Any], kind: str, message_type: str = message_type) -> int:
            table = run[kind]
            return sum(table.values()) if message_type == "all" else table.get(message_type, 0)

        totals = [count(r, "messages") for r in runs]
        bytes_per_op = [count(r, "bytes") / requests for r in runs]
        expected = analytic_counts[message_type]
        measured = _mean(totals) / requests
        # From the whole run's integer counts: exactly 1.0 when they are equal.
        ratio = _ratio(_mean(totals), expected)
        record = {
            "n": n, "f": f, "batch": batch, "phase": "normal", "type": message_type,
            "unit": "per committed operation",
            "measured": round(measured, 6), "analytic": round(expected / requests, 6),
            "measured_over_analytic": ratio,
            "messages": _mean(totals), "analytic_messages": expected,
            "bytes": round(_mean(bytes_per_op), 2),
            "bytes_per_message": (round(_mean(bytes_per_op) / measured, 1) if measured else None),
            "seeds_agree": len(set(totals)) == 1 and len(set(bytes_per_op)) == 1,
            "formula": FORMULAS["normal"][message_type],
        }
        if ratio != 1.0:
            normal_ok = False
            if message_type == "status":
                record["note"] = NOTES["status"]
        records.append(record)
    point: dict[str, Any] = {
        "n": n, "f": f, "batch": batch, "requests": requests, "batches": first["batches"],
        "clients": first["clients"], "seeds": len(runs),
        "completed": all(r["completed"] for r in runs),
        "full_batches": all(r["full_batches"] for r in runs),
        "state_digests_equal": all(r["state_digests_equal"] for r in runs),
        "safety_violations": sum(r["safety_violations"] for r in runs),
        "ops_per_s_virtual": round(requests / _mean([r["virtual_seconds"] for r in runs]), 1),
        "ops_per_s_wall": round(requests / _mean([r["wall_seconds"] for r in runs]), 1),
        "latency_ms_virtual": runs[0]["latency_ms"] if len(runs) == 1 else {
            key: round(statistics.median(r["latency_ms"][key] for r in runs), 3)
            for key in runs[0]["latency_ms"]},
        "messages_per_op": records[-1]["measured"],
        "analytic_messages_per_op": records[-1]["analytic"],
        "bytes_per_op": records[-1]["bytes"],
        "normal_matches_analytic": normal_ok,
        "view_change": None,
        "wall_seconds": round(sum(r["wall_seconds_total"] for r in runs), 3),
    }
    episodes = [r["view_change"] for r in runs if r["view_change"] is not None]
    if episodes:
        vc_records, summary = _summarise_view_change(n, f, batch, episodes)
        records += vc_records
        summary["completed"] = summary["completed"] and len(episodes) == len(runs)
        point["view_change"] = summary
    return point, records


def _summarise_view_change(n: int, f: int, batch: int, episodes: list[dict[str, Any]]
                           ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    prepared = {e["prepared_certs_per_view_change"] for e in episodes}
    analytic: dict[str, int | None] = dict(analytic_view_change(n, int(max(prepared))))
    seen = {t for e in episodes for t in e["messages"]}
    ordered = [*VIEW_CHANGE_TYPES, "request", "pre-prepare", "prepare", "commit", "reply"]
    types = ordered + sorted(seen - set(ordered))
    records = []
    matches = True
    for message_type in types:
        counts = [e["messages"].get(message_type, 0) for e in episodes]
        sizes = [e["bytes"].get(message_type, 0) for e in episodes]
        duplicates = [e["duplicates"].get(message_type, 0) for e in episodes]
        expected = analytic.get(message_type)
        measured = _mean(counts)
        dup = _mean(duplicates)
        record: dict[str, Any] = {
            "n": n, "f": f, "batch": batch, "phase": "view_change", "type": message_type,
            "unit": "per view change",
            "measured": round(measured, 3), "analytic": expected,
            "measured_over_analytic": _ratio(measured, expected),
            "bytes": round(_mean(sizes), 1),
            "bytes_per_message": round(_mean(sizes) / measured, 1) if measured else None,
            "duplicates": round(dup, 3),
            "first_copies_over_analytic": _ratio(measured - dup, expected),
            "seeds_agree": len(set(counts)) == 1 and len(set(sizes)) == 1,
            "formula": FORMULAS["view_change"].get(message_type),
        }
        if message_type == "new-view" and dup:
            record["note"] = NOTES["new-view"].format(dup=f"{dup:g}")
        elif message_type in NOTES and message_type != "new-view" and measured:
            record["note"] = NOTES[message_type]
        if expected is not None and record["first_copies_over_analytic"] != 1.0:
            matches = False
        records.append(record)

    def med(key: str) -> float | None:
        values = [e[key] for e in episodes if e[key] is not None]
        return statistics.median(values) if values else None

    vc_nv = [sum(e["messages"].get(t, 0) for t in VIEW_CHANGE_TYPES) for e in episodes]
    vc_nv_bytes = [sum(e["bytes"].get(t, 0) for t in VIEW_CHANGE_TYPES) for e in episodes]
    summary = {
        "completed": all(e["completed"] for e in episodes),
        "failure": episodes[0]["failure"],
        "view": min(e["view"] for e in episodes),
        "failure_to_commit_s": med("failure_to_commit_s"),
        "failure_to_reply_s": med("failure_to_reply_s"),
        "view_change_and_new_view_messages": _mean(vc_nv),
        "analytic_view_change_and_new_view_messages": (n - 1) * (n - 1) + (n - 1),
        "view_change_and_new_view_bytes": _mean(vc_nv_bytes),
        "episode_messages": _mean([sum(e["messages"].values()) for e in episodes]),
        "episode_bytes": _mean([sum(e["bytes"].values()) for e in episodes]),
        "prepared_certs_per_view_change": med("prepared_certs_per_view_change"),
        "checkpoint_proof_size": med("checkpoint_proof_size"),
        "client_retransmissions": med("client_retransmissions"),
        "matches_analytic": matches,
    }
    return records, summary


# ------------------------------------------------------------------------ run


def _task(args: tuple[int, int, int | None, int, int, bool]) -> dict[str, Any]:
    n, batch, requests, seed, checkpoint_interval, view_change = args
    return run_one(n, batch, requests, seed=seed, checkpoint_interval=checkpoint_interval,
                   view_change=view_change)


def run(ns: Sequence[int] = DEFAULT_NS, batches: Sequence[int] = DEFAULT_BATCHES,
        requests: int | None = None, seeds: int = DEFAULT_SEEDS, *,
        checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL, jobs: int = DEFAULT_JOBS,
        view_change: bool = True, command: str = "") -> dict[str, Any]:
    """The sweep: every (n, batch) for seeds 1..``seeds``; the report (see the docstring)."""
    started = time.perf_counter()
    tasks = [(n, b, requests, seed, checkpoint_interval, view_change)
             for n in ns for b in batches for seed in range(1, seeds + 1)]
    jobs = max(1, min(jobs, len(tasks)))
    if jobs == 1:
        outcomes = [_task(t) for t in tasks]
    else:
        import multiprocessing

        # Most expensive first (about n^2 messages per batch, n per request), so the pool
        # does not end waiting for one long run.
        def cost(t: tuple[int, int, int | None, int, int, bool]) -> float:
            n, b, r, *_ = t
            r = r or default_requests(b, checkpoint_interval)
            return r * (n * n / b + n)

        order = sorted(range(len(tasks)), key=lambda i: -cost(tasks[i]))
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("forkserver")
                                 ) as pool:
            done = list(pool.map(_task, [tasks[i] for i in order]))
        outcomes = [None] * len(tasks)  # type: ignore[list-item]
        for index, outcome in zip(order, done):
            outcomes[index] = outcome
    points: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    for start in range(0, len(outcomes), seeds):
        point, point_records = summarise(outcomes[start:start + seeds])
        points.append(point)
        records += point_records
    ok = all(p["completed"] and p["full_batches"] and p["state_digests_equal"]
             and not p["safety_violations"] and p["normal_matches_analytic"]
             and (p["view_change"] is None or (p["view_change"]["completed"]
                                               and p["view_change"]["matches_analytic"]))
             for p in points)
    return {
        "benchmark": "complexity",
        "command": command,
        "n": list(ns),
        "batch": list(batches),
        "seeds": seeds,
        "requests": requests,
        "requests_per_point": {str(p["batch"]): p["requests"] for p in points},
        "checkpoint_interval": checkpoint_interval,
        "link_delay_ms": LINK_DELAY_MS,
        "view_change_timeout_s": ReplicaConfig().view_change_timeout,
        "client_retransmit_s": DEFAULT_CLIENT_RETRANSMIT,
        "jobs": jobs,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "ok": ok,
        "formulas": FORMULAS,
        "notes": "normal: messages and bytes per committed operation (bytes include the "
                 "4-byte frame header), analytic = PBFT's counts for the run's batches and "
                 "checkpoints; view_change: per view change (crash of the primary, one "
                 "member down), episode from the crash to the request's execution at every "
                 "live member; duplicates = copies of the same bytes to the same receiver; "
                 "first_copies_over_analytic = (measured - duplicates) / analytic; "
                 "ops_per_s_virtual = requests / simulated seconds (1 ms links, lock step); "
                 "ops_per_s_wall = requests / wall seconds of the simulator on one core "
                 "(every replica's work on that core); latency_ms_virtual = submit to f+1 "
                 "replies in simulated time",
        "points": points,
        "records": records,
    }


# ------------------------------------------------------------------- rendering


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(report: dict[str, Any], console: Any) -> None:
    """The human tables (rich): the normal case per (n, batch), then the view change."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    wide = console if console.is_terminal else Console(width=TABLE_WIDTH)
    by_key: dict[tuple[int, int, str, str], dict[str, Any]] = {
        (r["n"], r["batch"], r["phase"], r["type"]): r for r in report["records"]}
    table = Table(title=f"bench complexity, normal case: messages per committed operation, "
                        f"measured / PBFT analytic per type (K = "
                        f"{report['checkpoint_interval']}, {report['link_delay_ms']:g} ms "
                        f"links, {report['seeds']} seed(s), {report['wall_seconds']:.1f} s)",
                  box=box.SIMPLE_HEAD)
    # Ratio columns: measured / analytic per type (req = request, pp = pre-prepare, ckpt =
    # checkpoint); status: STATUS messages per op (PBFT: 0).
    for column in ("n", "f", "batch", "reqs", "msgs/op", "PBFT/op", "req", "pp", "prepare",
                   "commit", "reply", "ckpt", "status", "bytes/op", "ops/s sim",
                   "ops/s wall", "p50 ms"):
        table.add_column(column, justify="right", no_wrap=True)
    for p in report["points"]:
        def ratio(t: str, p: dict[str, Any] = p) -> str:
            return _ratio_text(by_key[(p["n"], p["batch"], "normal", t)]["measured_over_analytic"])

        status = by_key[(p["n"], p["batch"], "normal", "status")]["measured"]
        style = None if p["normal_matches_analytic"] and p["full_batches"] else "red"
        table.add_row(str(p["n"]), str(p["f"]), str(p["batch"]), str(p["requests"]),
                      f"{p['messages_per_op']:,.2f}", f"{p['analytic_messages_per_op']:,.2f}",
                      *(ratio(t) for t in ("request", "pre-prepare", "prepare", "commit",
                                           "reply", "checkpoint")),
                      f"{status:g}", f"{p['bytes_per_op']:,.0f}",
                      f"{p['ops_per_s_virtual']:,.0f}", f"{p['ops_per_s_wall']:,.0f}",
                      f"{p['latency_ms_virtual']['p50']:g}", style=style)
    wide.print(table)
    points = [p for p in report["points"] if p["view_change"] is not None]
    if points:
        vc = Table(title="view change: crash of the primary, one request; messages per view "
                         "change, measured (analytic) and measured / analytic",
                   box=box.SIMPLE_HEAD)
        for column in ("n", "batch", "VIEW-CHANGE", "ratio", "NEW-VIEW", "ratio", "dup NV",
                       "VC+NV kB", "episode msgs", "episode kB", "to commit s", "to reply s"):
            vc.add_column(column, justify="right", no_wrap=True)
        for p in points:
            v = p["view_change"]
            vcr = by_key[(p["n"], p["batch"], "view_change", "view-change")]
            nvr = by_key[(p["n"], p["batch"], "view_change", "new-view")]
            style = None if v["completed"] and v["matches_analytic"] else "red"
            vc.add_row(str(p["n"]), str(p["batch"]),
                       f"{vcr['measured']:g} ({vcr['analytic']})",
                       _ratio_text(vcr["measured_over_analytic"]),
                       f"{nvr['measured']:g} ({nvr['analytic']})",
                       _ratio_text(nvr["measured_over_analytic"]), f"{nvr['duplicates']:g}",
                       f"{v['view_change_and_new_view_bytes'] / 1000:,.1f}",
                       f"{v['episode_messages']:g}", f"{v['episode_bytes'] / 1000:,.1f}",
                       "-" if v["failure_to_commit_s"] is None else f"{v['failure_to_commit_s']:.3f}",
                       "-" if v["failure_to_reply_s"] is None else f"{v['failure_to_reply_s']:.3f}",
                       style=style)
        wide.print(vc)
        console.print("NEW-VIEW above n-1: the new primary re-sends its NEW-VIEW to each "
                      "VIEW-CHANGE that reaches it after it sent NEW-VIEW (Replica."
                      "_on_view_change); 'dup NV' counts those copies. The episode also holds "
                      "the client's retransmissions, the relays and the new view's three "
                      "phases for the request (see --json).", highlight=False)
    verdict = "[green]yes[/]" if report["ok"] else "[red]NO[/]"
    console.print(f"normal case exactly PBFT's counts, view change too (less the re-sent "
                  f"copies), every run complete and safe: {verdict}")


# ------------------------------------------------------------------------ main


def parse_sizes(text: str) -> list[int]:
    values = parse_int_list(text)
    if min(values) < 4:
        raise argparse.ArgumentTypeError(f"expected committee sizes >= 4, got {text!r}")
    return values


def parse_positive_list(text: str) -> list[int]:
    values = parse_int_list(text)
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.complexity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=parse_sizes, default=list(DEFAULT_NS))
    parser.add_argument("--batch", type=parse_positive_list, default=list(DEFAULT_BATCHES))
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per (n, batch) (default: K x batch, one checkpoint interval)")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS)
    parser.add_argument("--checkpoint-interval", type=int, default=DEFAULT_CHECKPOINT_INTERVAL)
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS)
    parser.add_argument("--no-view-change", action="store_true")
    parser.add_argument("--json", action="store_true")
    add_plot_option(parser)
    args = parser.parse_args(argv)
    for name in ("requests", "seeds", "checkpoint_interval", "jobs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if refuse_plot(parser, args.plot):
        return 2
    report = run(args.n, args.batch, args.requests, args.seeds,
                 checkpoint_interval=args.checkpoint_interval, jobs=args.jobs,
                 view_change=not args.no_view_change,
                 command="python -m benchmarks.complexity " + " ".join(argv))
    if args.plot:
        from benchmarks.plots import plot_complexity

        plot_complexity(report, args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report, Console())
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
