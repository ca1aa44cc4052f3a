"""View-change benchmark: how long a committee takes to recover from a failed primary, and
what the view change costs on the network as n grows.

For each n a simulated committee (``simulator.world.World``, default network: 1-20 ms
delays, no loss; default ``ReplicaConfig``) runs a closed-loop workload of two clients.
The primary of view 0 crashes (``world.crash``) at a fixed point of steady state: right
after it executes sequence number ``FAIL_AFTER_SEQ`` (72 = the first checkpoint at 64 plus
8 slots, about 2 s of simulated time), so that every n changes view from the same protocol
state -- a stable checkpoint with its 2f+1 proof and about 8 prepared certificates in each
VIEW-CHANGE. ``fail_at_s`` (``--fail-at-s``) crashes it at a fixed simulated time instead;
the number of prepared certificates then varies with n and seed, and so do the bytes.

Measured per run, the *episode* being the simulated time from the crash to the first
commit in the new view:

* ``failure_to_commit_s``: from the crash to the first execution of a batch of a view
  above 0 at an honest (not crashed) replica -- the first commit of the new view. Clients
  see their reply one network delay later. It includes the client's retransmission
  timeout (0.5 s: only then do backups learn of the request and start their request timer),
  the request timer T, the VIEW-CHANGE/NEW-VIEW exchange and the new view's three phases.
* ``timeout_multiple``: ``failure_to_commit_s`` / T, T = ``ReplicaConfig.view_change_timeout``
  (the base timeout). The request timer must expire first, so it is >= 1; the goal is <= 3.
* messages and bytes on the network during the episode, by message type; ``view_change``
  = VIEW-CHANGE + NEW-VIEW only, ``all`` = every message of the episode (client
  retransmissions, relays, STATUS, the new view's PRE-PREPARE/PREPARE/COMMIT, ...). Bytes
  include the frame header; messages sent to the crashed primary count (they were sent).
* growth with n: ``messages / n^2`` and ``bytes / n^3`` (PBFT: O(n^2) messages, and
  O(n^3) bytes -- a NEW-VIEW carries 2f+1 VIEW-CHANGEs, each with a 2f+1 checkpoint proof
  and prepared certificates of 2f+1 signatures), the log-log slope from the previous n and a
  least-squares exponent over all n.

Every figure is the median over ``seeds`` seeds (1..K) per n. Runs are deterministic.

Run on its own: ``python -m benchmarks.viewchange --n 4,7,10 --seeds 3`` (the same as
``bftd bench viewchange --json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from benchmarks.core import parse_int_list
from benchmarks.plots import add_plot_option, refuse_plot
from bftdeliberate import kv
from bftdeliberate.errors import DecodeError
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.pbft.effects import Execute
from bftdeliberate.wire.messages import ViewChange, decode_envelope
from simulator.world import World

DEFAULT_NS = (4, 7, 10, 13, 16)
DEFAULT_SEEDS = 5
CLIENTS = 2
#: The primary of view 0 crashes right after it executes this seq (steady state: the first
#: checkpoint, 64, is stable and about 8 slots above it are prepared).
FAIL_AFTER_SEQ = 72
#: Give up on a run this many base timeouts after the failure (a view change that does not
#: complete is reported, not waited for forever).
MAX_EPISODE_TIMEOUTS = 60
#: The goal: the first commit in the new view within this many base timeouts.
GOAL_TIMEOUT_MULTIPLE = 3.0
VIEW_CHANGE_TYPES = ("view-change", "new-view")
FAILED_PRIMARY = 0


@dataclass(slots=True)
class _Episode:
    fail_at: float | None = None
    commit_at: float | None = None
    commit: tuple[int, int, int] | None = None  # (member, view, seq) of the first commit
    messages_at_fail: Counter[str] = field(default_factory=Counter)
    bytes_at_fail: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    prepared_certs: list[int] = field(default_factory=list)
    checkpoint_proofs: list[int] = field(default_factory=list)


def run_one(n: int, seed: int, *, fail_after_seq: int = FAIL_AFTER_SEQ,
            fail_at_s: float | None = None, view_change_timeout: float | None = None
            ) -> dict[str, Any]:
    """One seeded run: crash the view-0 primary, measure the episode up to the first commit
    of the new view."""
    config = ReplicaConfig() if view_change_timeout is None else ReplicaConfig(
        view_change_timeout=view_change_timeout,
        max_view_change_timeout=max(view_change_timeout, ReplicaConfig().max_view_change_timeout))
    base_timeout = config.view_change_timeout
    world = World(n, seed=seed, clients=CLIENTS, config=config)
    episode = _Episode()

    def observe_view_changes(sender, receiver, data: bytes, message_type: str) -> bytes:
        # One copy of each VIEW-CHANGE (the one to the new primary's neighbour, any receiver
        # would do): what it carries.
        if message_type == "view-change" and receiver == (sender + 1) % n:
            try:
                message = decode_envelope(data).message
            except DecodeError:
                return data
            if isinstance(message, ViewChange):
                episode.prepared_certs.append(len(message.prepared))
                episode.checkpoint_proofs.append(len(message.proof))
        return data

    def fail() -> None:
        if episode.fail_at is not None:
            return
        episode.fail_at = world.now
        episode.messages_at_fail = Counter(world.traffic.messages)
        episode.bytes_at_fail = Counter(world.traffic.bytes)
        world.crash(FAILED_PRIMARY)
        world.link_filters.append(observe_view_changes)

    def observe(member: int, execute: Execute) -> None:
        if episode.fail_at is None:
            if fail_at_s is None and member == FAILED_PRIMARY and execute.seq >= fail_after_seq:
                world.at(world.now, fail, "fail-primary")  # right after this step
            return
        if episode.commit_at is None and execute.view > 0 and member != FAILED_PRIMARY:
            episode.commit_at = world.now
            episode.commit = (member, execute.view, execute.seq)
            episode.messages = Counter(world.traffic.messages) - episode.messages_at_fail
            episode.bytes = Counter(world.traffic.bytes) - episode.bytes_at_fail
            world.link_filters.remove(observe_view_changes)

    world.execution_observers.append(observe)
    if fail_at_s is not None:
        world.at(fail_at_s, fail, "fail-primary")
    operations = (kv.put(f"k{i % 1000}", b"v" * 16) for i in range(10**9))
    world.start_workload(operations)
    # Before the failure: the run goes until it happens (seq trigger: a generous bound).
    horizon = fail_at_s if fail_at_s is not None else 600.0
    world.run(until=lambda: episode.fail_at is not None, max_time=horizon + 1.0)
    completed = False
    if episode.fail_at is not None:
        completed = world.run(until=lambda: episode.commit_at is not None,
                              max_time=episode.fail_at + MAX_EPISODE_TIMEOUTS * base_timeout)
    honest = [r for r in world.replicas if r.id != FAILED_PRIMARY]
    elapsed = (episode.commit_at - episode.fail_at) if completed else None
    vc_messages = sum(episode.messages[t] for t in VIEW_CHANGE_TYPES)
    vc_bytes = sum(episode.bytes[t] for t in VIEW_CHANGE_TYPES)
    return {
        "seed": seed,
        "completed": completed,
        "fail_at_s": None if episode.fail_at is None else round(episode.fail_at, 6),
        "failure_to_commit_s": None if elapsed is None else round(elapsed, 6),
        "timeout_multiple": None if elapsed is None else round(elapsed / base_timeout, 6),
        "first_commit": None if episode.commit is None else dict(
            zip(("member", "view", "seq"), episode.commit)),
        "view": max(r.view for r in honest),
        "view_changes_per_replica": round(statistics.fmean(
            r.stats.view_changes for r in honest), 3),
        "messages": _counts(episode.messages, vc_messages),
        "bytes": _counts(episode.bytes, vc_bytes),
        "prepared_certs_per_view_change": (statistics.median(episode.prepared_certs)
                                           if episode.prepared_certs else 0),
        "checkpoint_proof_size": (statistics.median(episode.checkpoint_proofs)
                                  if episode.checkpoint_proofs else 0),
        "safety_violations": len(world.violations),
    }


def _counts(counter: Counter[str], view_change_total: int) -> dict[str, Any]:
    return {
        "view_change": counter["view-change"],
        "new_view": counter["new-view"],
        "view_change_and_new_view": view_change_total,
        "all": sum(counter.values()),
        "by_type": {t.replace("-", "_"): v for t, v in sorted(counter.items()) if v},
    }


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _slope(n0: int, y0: float | None, n1: int, y1: float | None) -> float | None:
    if not y0 or not y1:
        return None
    return round(math.log(y1 / y0) / math.log(n1 / n0), 3)


def _fit_exponent(points: list[tuple[int, float | None]]) -> float | None:
    """Least-squares slope of log y against log n."""
    points = [(math.log(n), math.log(y)) for n, y in points if y]
    if len(points) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return round(sum((x - mx) * (y - my) for x, y in points) / sxx, 3)


def summarise(n: int, runs: list[dict[str, Any]], base_timeout: float, command: str,
              trigger: str) -> dict[str, Any]:
    """The per-n record: medians over the seeds' runs."""
    done = [r for r in runs if r["completed"]]

    def med(*path: str) -> float | None:
        values = []
        for run in done:
            value: Any = run
            for key in path:
                value = value[key]
            values.append(value)
        return _median(values)

    types = sorted({t for r in done for t in r["messages"]["by_type"]})
    f = (n - 1) // 3
    multiple = med("timeout_multiple")
    vc_messages = med("messages", "view_change_and_new_view")
    vc_bytes = med("bytes", "view_change_and_new_view")
    all_messages = med("messages", "all")
    all_bytes = med("bytes", "all")
    return {
        "benchmark": "viewchange",
        "command": command,
        "n": n,
        "f": f,
        "seeds": len(runs),
        "base_timeout_s": base_timeout,
        "failure": trigger,
        "completed_runs": len(done),
        "view_advanced": len(done) == len(runs) and all(r["view"] >= 1 for r in runs),
        "safety_violations": sum(r["safety_violations"] for r in runs),
        "fail_at_s": med("fail_at_s"),
        "failure_to_commit_s": med("failure_to_commit_s"),
        "failure_to_commit_s_range": ([min(r["failure_to_commit_s"] for r in done),
                                       max(r["failure_to_commit_s"] for r in done)]
                                      if done else None),
        "timeout_multiple": multiple,
        "goal_timeout_multiple": GOAL_TIMEOUT_MULTIPLE,
        "meets_goal": multiple is not None and len(done) == len(runs)
                      and max(r["timeout_multiple"] for r in done) <= GOAL_TIMEOUT_MULTIPLE,
        "view": med("view"),
        "view_changes_per_replica": med("view_changes_per_replica"),
        "messages": {
            "view_change": med("messages", "view_change"),
            "new_view": med("messages", "new_view"),
            "view_change_and_new_view": vc_messages,
            "all": all_messages,
            "by_type": {t: med_or_zero(done, "messages", t) for t in types},
        },
        "bytes": {
            "view_change": med("bytes", "view_change"),
            "new_view": med("bytes", "new_view"),
            "view_change_and_new_view": vc_bytes,
            "all": all_bytes,
            "by_type": {t: med_or_zero(done, "bytes", t) for t in types},
        },
        # One VIEW-CHANGE from each of the n-1 live members to the n-1 others, one NEW-VIEW
        # from the new primary to the n-1 others: the fewest a view change can send.
        "pbft_min_view_change_messages": (n - 1) ** 2 + (n - 1),
        "prepared_certs_per_view_change": med("prepared_certs_per_view_change"),
        "checkpoint_proof_size": med("checkpoint_proof_size"),
        "growth": {
            "view_change_messages_per_n2": _ratio(vc_messages, n ** 2),
            "view_change_bytes_per_n3": _ratio(vc_bytes, n ** 3),
            "all_messages_per_n2": _ratio(all_messages, n ** 2),
            "all_bytes_per_n3": _ratio(all_bytes, n ** 3),
            # Log-log slopes from the previous n of the run (None for the first n).
            "view_change_messages_slope": None,
            "view_change_bytes_slope": None,
            "all_messages_slope": None,
            "all_bytes_slope": None,
        },
        "runs": runs,
    }


def med_or_zero(runs: list[dict[str, Any]], kind: str, message_type: str) -> float:
    return statistics.median(r[kind]["by_type"].get(message_type, 0) for r in runs)


def _ratio(value: float | None, scale: int) -> float | None:
    return None if value is None else round(value / scale, 3)


def run(ns: list[int] | None = None, seeds: int = DEFAULT_SEEDS, *,
        fail_after_seq: int = FAIL_AFTER_SEQ, fail_at_s: float | None = None,
        view_change_timeout: float | None = None, command: str = "") -> dict[str, Any]:
    ns = list(DEFAULT_NS) if ns is None else ns
    base_timeout = (ReplicaConfig().view_change_timeout if view_change_timeout is None
                    else view_change_timeout)
    trigger = (f"crash of the view-0 primary at t={fail_at_s} s" if fail_at_s is not None else
               f"crash of the view-0 primary right after it executes seq {fail_after_seq}")
    started = time.perf_counter()
    results = []
    for n in ns:
        n_started = time.perf_counter()
        runs = [run_one(n, seed, fail_after_seq=fail_after_seq, fail_at_s=fail_at_s,
                        view_change_timeout=view_change_timeout)
                for seed in range(1, seeds + 1)]
        record = summarise(n, runs, base_timeout, command, trigger)
        record["wall_seconds"] = round(time.perf_counter() - n_started, 3)
        results.append(record)
    for previous, record in itertools.pairwise(results):
        growth = record["growth"]
        for name, (kind, part) in {
            "view_change_messages_slope": ("messages", "view_change_and_new_view"),
            "view_change_bytes_slope": ("bytes", "view_change_and_new_view"),
            "all_messages_slope": ("messages", "all"),
            "all_bytes_slope": ("bytes", "all"),
        }.items():
            growth[name] = _slope(previous["n"], previous[kind][part], record["n"], record[kind][part])

    def exponent(kind: str, part: str) -> float | None:
        return _fit_exponent([(r["n"], r[kind][part]) for r in results])

    return {
        "benchmark": "viewchange",
        "command": command,
        "seeds": seeds,
        "base_timeout_s": base_timeout,
        "failure": trigger,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "ok": all(r["view_advanced"] and not r["safety_violations"] for r in results),
        "meets_goal": all(r["meets_goal"] for r in results),
        # Least-squares log-log exponents over all n (PBFT: messages 2, bytes 3).
        "growth_exponents": {
            "view_change_messages": exponent("messages", "view_change_and_new_view"),
            "view_change_bytes": exponent("bytes", "view_change_and_new_view"),
            "all_messages": exponent("messages", "all"),
            "all_bytes": exponent("bytes", "all"),
        },
        "wall_seconds": round(time.perf_counter() - started, 3),
        "notes": "failure_to_commit_s: simulated time from the primary's crash to the first "
                 "execution of a new-view batch at a live replica; timeout_multiple = "
                 "failure_to_commit_s / base_timeout_s (goal <= 3); messages/bytes count the "
                 "network during that episode: view_change_and_new_view = VIEW-CHANGE + "
                 "NEW-VIEW only, all = every type; figures are medians over the seeds",
        "results": results,
    }


def parse_committee_sizes(text: str) -> list[int]:
    values = parse_int_list(text)
    if min(values) < 4:
        raise argparse.ArgumentTypeError(f"expected committee sizes >= 4, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.viewchange", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=parse_committee_sizes, default=list(DEFAULT_NS))
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS)
    parser.add_argument("--fail-at-s", type=float, default=None,
                        help="crash the primary at this simulated time instead")
    add_plot_option(parser)
    args = parser.parse_args(argv)
    from benchmarks.plots import plot_viewchange

    if refuse_plot(parser, args.plot):
        return 2
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    report = run(args.n, args.seeds, fail_at_s=args.fail_at_s,
                 command="python -m benchmarks.viewchange " + " ".join(
                     argv if argv is not None else sys.argv[1:]))
    print(json.dumps(report, indent=2))
    if args.plot:
        plot_viewchange(report, args.plot)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
