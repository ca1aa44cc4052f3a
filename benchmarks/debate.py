"""Debate complexity benchmark: PBFT messages and bytes per debate round, and per committed
ledger operation, as the committee grows (DESIGN.md section 8, "Counting").

Each measurement is one simulated run of a debate scenario (default ``debate-honest``: every
agent contributes, a plan is proposed in round 0 and approved by vote) at committee size n.
The network is counted from the moment the opener's agent sends ``open_task`` until every
honest replica holds the task's end (decision, escalation, resolution or audit): messages and
bytes by type, divided by the rounds the ledger used (``rounds_used``: closed rounds, the round
a vote threshold interrupted included) and by the ledger operations executed meanwhile at the
reference replica (contributions, votes, ticks, the opening and rejected ones alike). Every
run is judged as usual (oracles, the scenario's expectations); a run that misses is reported.

A debate round costs n agent requests, each ordered by PBFT's three phases (O(n^2) messages
per operation with all-to-all prepares and commits), so messages per round grow ~n^3 and
messages per operation ~n^2; the fitted exponents say how close the run is.

Run on its own: ``python -m benchmarks.debate --n 4,7,10,13 --seeds 3``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import Counter
from typing import Any

from simulator.runner import RunResult, run_scenario
from simulator.spec import load_builtin

DEFAULT_SCENARIO = "debate-honest"
DEFAULT_NS = (4, 7, 10, 13)
DEFAULT_SEEDS = 3


def measure(n: int, seed: int, scenario: str = DEFAULT_SCENARIO) -> dict[str, Any]:
    """One run of the built-in debate ``scenario`` at size n: its traffic during the task."""
    result: RunResult = run_scenario(load_builtin(scenario), n=n, seed=seed)
    debate = result.debate or {}
    traffic = debate.get("traffic") or {}
    rounds = debate.get("rounds") or 0
    ops = traffic.get("ops") or 0
    messages, size = traffic.get("messages", 0), traffic.get("bytes", 0)
    return {
        "command": result.repro, "scenario": result.scenario, "n": n, "f": result.f,
        "seed": seed, "ok": result.ok, "decision": debate.get("decision"),
        "exit_reason": debate.get("exit_reason"), "rounds": rounds, "ops": ops,
        "messages": messages, "bytes": size,
        "messages_per_round": round(messages / rounds, 1) if rounds else None,
        "bytes_per_round": round(size / rounds, 1) if rounds else None,
        "messages_per_op": round(messages / ops, 1) if ops else None,
        "bytes_per_op": round(size / ops, 1) if ops else None,
        "messages_by_type": traffic.get("messages_by_type", {}),
        "bytes_by_type": traffic.get("bytes_by_type", {}),
        "sim_time_ms": result.sim_time_ms, "wall_seconds": result.wall_seconds,
    }


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 1) if present else None


def _fit_exponent(points: list[tuple[int, float | None]]) -> float | None:
    """Least-squares slope of log y against log n."""
    logs = [(math.log(n), math.log(y)) for n, y in points if y]
    if len(logs) < 2:
        return None
    mx = statistics.fmean(x for x, _ in logs)
    my = statistics.fmean(y for _, y in logs)
    sxx = sum((x - mx) ** 2 for x, _ in logs)
    return round(sum((x - mx) * (y - my) for x, y in logs) / sxx, 3) if sxx else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One record per n: medians over the seeds' runs."""
    first = runs[0]
    per_round_by_type: dict[str, float | None] = {}
    for message_type in sorted({t for run in runs for t in run["messages_by_type"]}):
        per_round_by_type[message_type] = _median([
            run["messages_by_type"].get(message_type, 0) / run["rounds"] if run["rounds"]
            else None for run in runs])
    n = first["n"]
    per_round = _median([run["messages_per_round"] for run in runs])
    return {
        "command": first["command"], "scenario": first["scenario"], "n": n, "f": first["f"],
        "seeds": [run["seed"] for run in runs], "ok": all(run["ok"] for run in runs),
        "decisions": dict(Counter(str(run["decision"]) for run in runs)),
        "rounds": _median([run["rounds"] for run in runs]),
        "ops": _median([run["ops"] for run in runs]),
        "messages": _median([run["messages"] for run in runs]),
        "bytes": _median([run["bytes"] for run in runs]),
        "messages_per_round": per_round,
        "bytes_per_round": _median([run["bytes_per_round"] for run in runs]),
        "messages_per_op": _median([run["messages_per_op"] for run in runs]),
        "bytes_per_op": _median([run["bytes_per_op"] for run in runs]),
        "messages_per_round_by_type": per_round_by_type,
        "messages_per_round_over_n_cubed": None if per_round is None else round(
            per_round / n ** 3, 3),
        "sim_time_ms": _median([run["sim_time_ms"] for run in runs]),
        "wall_seconds": round(sum(run["wall_seconds"] for run in runs), 3),
    }


def run(ns: list[int] | None = None, seeds: int = DEFAULT_SEEDS, *,
        scenario: str = DEFAULT_SCENARIO, command: str = "") -> dict[str, Any]:
    """Measure ``scenario`` at every n for seeds 1..``seeds``; JSON-ready report whose
    ``results`` hold one record per n (``command`` there reproduces its first run)."""
    ns = list(DEFAULT_NS) if ns is None else ns
    started = time.perf_counter()
    results = [summarise([measure(n, seed, scenario) for seed in range(1, seeds + 1)])
               for n in ns]

    def exponent(key: str) -> float | None:
        return _fit_exponent([(r["n"], r[key]) for r in results])

    return {
        "benchmark": "debate", "command": command, "scenario": scenario, "seeds": seeds,
        "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
        "ok": all(r["ok"] for r in results),
        "growth_exponents": {key: exponent(key) for key in (
            "messages_per_round", "bytes_per_round", "messages_per_op", "bytes_per_op")},
        "wall_seconds": round(time.perf_counter() - started, 3),
        "notes": "counted from the opener's open_task to the task's end at every honest "
                 "replica; rounds = rounds the ledger used; ops = ledger operations executed "
                 "meanwhile (contributions, votes, ticks, rejected ones too); figures are "
                 "medians over the seeds",
        "results": results,
    }


def _sizes(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 4,7,10, got {text!r}") from None
    if not values or min(values) < 4:
        raise argparse.ArgumentTypeError(f"expected committee sizes >= 4, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.debate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=_sizes, default=list(DEFAULT_NS))
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS)
    parser.add_argument("--scenario", default=DEFAULT_SCENARIO,
                        help="a built-in debate scenario (default debate-honest)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    report = run(args.n, args.seeds, scenario=args.scenario,
                 command="python -m benchmarks.debate " + " ".join(
                     argv if argv is not None else sys.argv[1:]))
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
