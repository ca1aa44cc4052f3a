"""Debate benchmark on a real committee: what ordering costs per debate round.

A local committee of 4 members runs in this process over trio TCP on 127.0.0.1 (ephemeral
ports, real Ed25519, protocol logs with fsync in a temporary directory), each member with the
deliberation ledger and its agent loop (``bftdeliberate.demo.open_local_committee``). The
debaters are scripted and answer instantly; member 0 changes its position every round, so no
debate ends before ``MAX_ROUNDS`` rounds (``positions_stable`` never fires); tasks are opened
one after the other until ``rounds`` rounds were measured (after an unmeasured warm-up task).

Per round: **round close latency** = from the moment the round's last contribution is handed
to its agent's client (after its debater answered: debater time is excluded) to the moment the
round's close has been executed at *every* honest member -- the consensus overhead of one
debate round (PBFT's three phases for that request, batching, fsync, the agents' hand-off).
Reported as p50 / p90 / max / mean over the rounds. Also per round: messages and bytes sent on
every TCP link (members and agents' clients), and ordered operations.

``simulated``: messages and bytes per round vs n from the deterministic simulator
(``benchmarks/debate.py``: the same ledger and replicas, counted per message type).

Run on its own: ``python -m benchmarks.debate_cluster --rounds 30`` (the same as
``bftd bench debate --json``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks.core import percentile
from benchmarks.plots import add_plot_option, refuse_plot
from bftdeliberate.committee import init_keystore, load_committee
from bftdeliberate.crypto import load_private_key
from bftdeliberate.deliberation.ops import MAX_ROUNDS, Contribute, OpenTask
from bftdeliberate.deliberation.scripts import Script, ScriptedDebater
from bftdeliberate.demo import LocalCommittee, open_local_committee

N = 4
DEFAULT_ROUNDS = 30
WARMUP_ROUNDS = 2
#: Generous timers: every round must close on its contributions, never on time.
ROUND_MS = 60_000
#: Wall seconds the whole benchmark may take before it is declared failed.
TIME_LIMIT = 300.0


def _debaters(names: list[str]) -> list[ScriptedDebater]:
    flip = tuple("position b" if r % 2 == 0 else "position a" for r in range(MAX_ROUNDS))
    return [ScriptedDebater(name, Script(
        position="position a", tokens=1, evidence=(f"ref:{name}",),
        later_positions=flip if index == 0 else ()))
        for index, name in enumerate(names)]


def _link_totals(local: LocalCommittee) -> tuple[int, int]:
    messages = bytes_ = 0
    transports = [m.peer.transport for m in local.members]
    transports += [m.client.transport for m in local.members if m.client is not None]
    for transport in transports:
        messages += transport.stats.frames_sent
        bytes_ += transport.stats.bytes_sent
    return messages, bytes_


async def _debate(local: LocalCommittee, rounds: int, submitted: dict[tuple[str, int], float]
                  ) -> list[float]:
    """Open one task of ``rounds`` rounds and wait until it ended at every member; the close
    latency (seconds) of each round."""
    opener = local.members[0]
    known = set(opener.ledger.task_ids)
    closes: dict[int, dict[int, float]] = {m.id: {} for m in local.members}

    async def watch(member: Any) -> None:
        await member.agent.wait_until(lambda: bool(set(member.ledger.task_ids) - known))
        (task_id,) = set(member.ledger.task_ids) - known
        for number in range(rounds):
            def closed(number: int = number) -> bool:
                task = member.ledger.task_status(task_id)
                return (len(task["rounds"]) > number
                        and task["rounds"][number]["closed_ms"] is not None)
            await member.agent.wait_until(closed)
            closes[member.id][number] = trio.current_time()

    async with trio.open_nursery() as nursery:
        for member in local.members:
            nursery.start_soon(watch, member)
        result = await opener.agent.request(OpenTask(
            question="benchmark: how fast do debate rounds close?", max_rounds=rounds,
            round_ms=ROUND_MS, vote_ms=ROUND_MS, deadline_ms=10 * ROUND_MS,
            token_budget=10**6))
        if result is None or not result.get("ok"):
            raise RuntimeError(f"the benchmark task was not opened: {result}")
        task_id = result["task_id"]
    latencies = []
    for number in range(rounds):
        last_submit = submitted[(task_id, number)]
        closed_everywhere = max(closes[m.id][number] for m in local.members)
        latencies.append(closed_everywhere - last_submit)
    return latencies


async def _run(rounds: int, root: Path) -> dict[str, Any]:
    committee = init_keystore(root / "keys", N, clients=0, committee_id="bench-debate")
    committee = load_committee(root / "keys" / "committee.json")
    keys = [load_private_key(root / "keys" / f"agent-{i}.key") for i in range(N)]
    names = [m.name for m in committee.members]
    # (task, round) -> trio time the round's last contribution was handed to a client.
    submitted: dict[tuple[str, int], float] = {}

    def on_submit(member: int, op: Any) -> None:
        if isinstance(op, Contribute):
            key = (op.task_id, op.round)
            submitted[key] = max(submitted.get(key, 0.0), trio.current_time())

    async with open_local_committee(committee, keys, _debaters(names), data_root=root,
                                    on_submit=on_submit) as local:
        await _debate(local, WARMUP_ROUNDS, submitted)
        messages0, bytes0 = _link_totals(local)
        ops0 = local.members[0].peer.replica.stats.executed_requests
        started = time.perf_counter()
        latencies: list[float] = []
        tasks = 0
        while len(latencies) < rounds:
            latencies += await _debate(local, min(MAX_ROUNDS, rounds - len(latencies)),
                                       submitted)
            tasks += 1
        wall = time.perf_counter() - started
        messages1, bytes1 = _link_totals(local)
        ops1 = local.members[0].peer.replica.stats.executed_requests
    ms = sorted(1000 * value for value in latencies)
    return {
        "n": N, "f": committee.f, "tasks": tasks, "rounds": len(ms),
        "round_close_latency_ms": {
            "p50": round(percentile(ms, 0.5), 3), "p90": round(percentile(ms, 0.9), 3),
            "max": round(ms[-1], 3), "mean": round(statistics.fmean(ms), 3)},
        "rounds_per_s": round(len(ms) / wall, 2) if wall > 0 else None,
        "per_round": {"messages": round((messages1 - messages0) / len(ms), 1),
                      "bytes": round((bytes1 - bytes0) / len(ms), 1),
                      "operations": round((ops1 - ops0) / len(ms), 2)},
        "measured_wall_seconds": round(wall, 3),
    }


def _simulated() -> tuple[Any, str]:
    """Messages per round vs n from the simulator benchmark, if it exists."""
    try:
        from benchmarks import debate  # written separately (simulator-based)
    except ImportError:
        return None, "not available: benchmarks/debate.py does not exist yet"
    for name in ("messages_per_round", "messages_per_round_vs_n", "run"):
        function = getattr(debate, name, None)
        if callable(function):
            try:
                return function(), f"benchmarks.debate.{name}()"
            except TypeError as error:
                return None, f"benchmarks.debate.{name} could not be called: {error}"
    return None, "benchmarks/debate.py has no messages-per-round function"


def run(rounds: int = DEFAULT_ROUNDS, *, command: str | None = None,
        sim_ns: list[int] | None = None, sim_seeds: int | None = None,
        simulated: bool = True) -> dict[str, Any]:
    """The whole report (see the module docstring): the TCP figures, and under ``simulated``
    the simulator's messages per round vs n (``benchmarks.debate.run``)."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    started = time.perf_counter()
    report: dict[str, Any] = {"command": command or f"bftd bench debate --rounds {rounds}",
                              "transport": "tcp 127.0.0.1", "debaters": "scripted (instant)"}
    with tempfile.TemporaryDirectory(prefix="bftd-bench-debate-") as temp:
        async def main() -> dict[str, Any] | None:
            with trio.move_on_after(TIME_LIMIT):
                return await _run(rounds, Path(temp))
            return None

        measured = trio.run(main)
    if measured is None:
        report.update({"ok": False, "error": f"not finished within {TIME_LIMIT:g} s",
                       "n": N, "rounds": 0})
    else:
        report.update(measured)
        report["ok"] = measured["rounds"] == rounds and math.isfinite(
            measured["round_close_latency_ms"]["max"])
    report["simulated"] = None
    if simulated:
        from benchmarks import debate

        report["simulated"] = debate.run(
            sim_ns, sim_seeds if sim_seeds is not None else debate.DEFAULT_SEEDS,
            command="python -m benchmarks.debate"
                    + (f" --n {','.join(map(str, sim_ns))}" if sim_ns else "")
                    + (f" --seeds {sim_seeds}" if sim_seeds else ""))
        report["ok"] = report["ok"] and report["simulated"]["ok"]
    report["wall_seconds"] = round(time.perf_counter() - started, 3)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    add_plot_option(parser)
    args = parser.parse_args(argv)
    from benchmarks.plots import plot_debate

    if refuse_plot(parser, args.plot):
        return 2
    report = run(args.rounds, command="python -m benchmarks.debate_cluster "
                                      f"--rounds {args.rounds}")
    print(json.dumps(report, indent=2))
    if args.plot:
        plot_debate(report, args.plot)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
