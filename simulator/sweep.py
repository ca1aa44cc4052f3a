"""Sweeps: many (scenario, n, seed) runs over a process pool, and their summary.

Each run is independent and deterministic, so the executor only changes how fast a sweep is
done, never its results: results are sorted back into task order before they are reported.

Executors:

* ``local`` (default): a process pool on this machine. Workers start through the
  ``forkserver`` context (robust next to the progress bar's thread, cheap once the server
  has imported the simulator); ``jobs=1`` runs in this process.
* ``dask``: Dask distributed (optional extra ``distributed``). Without ``scheduler`` it
  starts a ``LocalCluster`` of ``jobs`` single-threaded worker processes on this machine
  (the engine's local mode); with ``scheduler="tcp://host:8786"`` it uses that cluster,
  whose workers must have this package installed. Why Dask rather than Ray: a run is a
  pure function of (scenario, n, seed), so all a sweep needs is a task map with streaming
  results -- Dask's futures give that from a pure-Python install a tenth of Ray's size, a
  local cluster that starts in about a second, and a scheduler that runs anywhere Python
  does; Ray's actors, object store and GPU scheduling buy nothing here.

Tasks go to the workers in chunks (about CHUNKS_PER_WORKER per worker) so the per-task
overhead of either executor stays small next to a run.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from simulator.runner import LIVENESS_FAILED, SAFETY_VIOLATED, repro_command, run_scenario
from simulator.spec import Scenario

#: Worker start method (see the module docstring) and what the server imports up front.
START_METHOD = "forkserver"
PRELOAD = ["simulator.runner"]
#: Progress granularity: about this many chunks per worker, so the bar moves smoothly while
#: chunks stay large enough to amortise inter-process overhead.
CHUNKS_PER_WORKER = 20
#: Violations kept per failed run in a sweep report (the first ones explain the failure).
VIOLATIONS_PER_FAILURE = 3
EXECUTORS = ("local", "dask")
#: Seconds a Dask client waits for its scheduler (a given address, or the local cluster).
DASK_CONNECT_TIMEOUT_S = 30


class ExecutorUnavailable(RuntimeError):
    """The chosen executor cannot run here (its package is not installed)."""


@dataclass(frozen=True, slots=True)
class SweepTask:
    index: int
    scenario: int  # index into the sweep's scenario list
    n: int | None
    seed: int


@dataclass
class SweepReport:
    runs: list[dict[str, Any]]
    wall_seconds: float
    jobs: int
    by_scenario: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [run for run in self.runs if not run["ok"]]

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> dict[str, Any]:
        runs = self.runs
        return {
            "runs": len(runs),
            "ok": sum(run["ok"] for run in runs),
            "missed_expectation": len(self.failures),
            "violations": sum(run["safety"] == SAFETY_VIOLATED for run in runs),
            "unexpected_violations": sum(run["safety"] == SAFETY_VIOLATED
                                         and run["expect"]["safety"] for run in runs),
            "liveness_failures": sum(run["liveness"] == LIVENESS_FAILED for run in runs),
            "incomplete": sum(not run["completed_all"] for run in runs),
            "errors": sum(run.get("error") is not None for run in runs),
            "events": sum(run["events"] for run in runs),
            "wall_seconds": round(self.wall_seconds, 3),
            "runs_per_s": round(len(runs) / self.wall_seconds, 2) if self.wall_seconds else None,
            "jobs": self.jobs,
        }

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary(), "by_scenario": self.by_scenario,
                "failures": [_failure(run) for run in self.failures]}


def _failure(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("scenario", "n", "seed", "safety", "liveness", "committed", "requests", "repro",
            "error")
    # A debate's or a commit's missed expectation says what was missed.
    missed = [why for part in ("debate", "commit")
              for why in (run.get(part) or {}).get("expect_failures", [])]
    return {**{key: run.get(key) for key in keys},
            "violations": run["violations"][:VIOLATIONS_PER_FAILURE],
            **({"expect_failures": missed} if missed else {})}


# ------------------------------------------------------------------ workers

_SCENARIOS: list[Scenario] = []
#: A tiny run in each new worker loads every lazily imported module before gc.freeze().
WARM_UP_REQUESTS = 4


def _init_worker(scenarios: list[Scenario]) -> None:
    global _SCENARIOS
    _SCENARIOS = scenarios
    # Everything alive after a first run (modules, caches, scenarios) lives as long as the
    # worker: move it out of the cyclic collector's sight, so the collection each run
    # triggers scans only that run's objects (measured: 62.7 -> 54.5 ms per chaos run).
    for scenario in scenarios[:1]:
        try:
            run_scenario(scenario, seed=0, requests=WARM_UP_REQUESTS)
        except Exception:  # noqa: BLE001, S110 - only a warm-up; the real run reports any failure
            pass
    gc.freeze()


_INITIALISED_FOR: tuple[str, ...] | None = None


def run_chunk(tasks: list[SweepTask], scenarios: list[Scenario]) -> list[tuple[int, dict[str, Any]]]:
    """A distributed executor's unit of work: prepare this worker for ``scenarios`` once (as
    a pool initializer would), then run ``tasks``."""
    global _INITIALISED_FOR
    key = tuple(scenario.model_dump_json() for scenario in scenarios)
    if _INITIALISED_FOR != key:
        _init_worker(scenarios)
        _INITIALISED_FOR = key
    return [run_task(task) for task in tasks]


def run_task(task: SweepTask) -> tuple[int, dict[str, Any]]:
    """One run, as a compact dict; an exception is a failed run (never a dead sweep)."""
    scenario = _SCENARIOS[task.scenario]
    try:
        result = run_scenario(scenario, n=task.n, seed=task.seed)
    except Exception as exc:  # noqa: BLE001 - a crash in a run is a finding, report it
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        n = task.n if task.n is not None else scenario.n
        return task.index, {
            "scenario": scenario.name, "n": n, "seed": task.seed, "safety": "error",
            "liveness": "error", "completed_all": False, "ok": False, "committed": 0,
            "requests": scenario.workload.requests, "events": 0, "sim_time_ms": 0.0,
            "wall_seconds": 0.0, "violations": [], "expect": scenario.expect.model_dump(),
            "repro": repro_command(scenario, n, task.seed),
            "error": f"{type(exc).__name__}: {exc} ({frame.filename}:{frame.lineno})",
        }
    run = result.as_dict(include_spec=False)
    run["violations"] = run["violations"][:VIOLATIONS_PER_FAILURE]
    for heavy in ("bytes_by_type", "executed", "views", "byzantine_members"):
        run.pop(heavy)
    run["error"] = None
    return task.index, run


def make_tasks(scenarios: list[Scenario], ns: list[int] | None,
               seeds: Iterable[int],
               skip: frozenset[tuple[int, int]] = frozenset()) -> list[SweepTask]:
    seeds = list(seeds)
    tasks: list[SweepTask] = []
    for scenario_index, _ in enumerate(scenarios):
        for n in ns or [None]:  # type: ignore[list-item]
            if (scenario_index, n) in skip:
                continue
            for seed in seeds:
                tasks.append(SweepTask(len(tasks), scenario_index, n, seed))
    return tasks


def pool(jobs: int, scenarios: list[Scenario]):
    context = multiprocessing.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        context.set_forkserver_preload(PRELOAD)
    return context.Pool(jobs, initializer=_init_worker, initargs=(scenarios,))


def sweep(
    scenarios: list[Scenario],
    ns: list[int] | None,
    seeds: Iterable[int],
    *,
    jobs: int = 1,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    skip: frozenset[tuple[int, int]] = frozenset(),
    executor: str = "local",
    scheduler: str | None = None,
) -> SweepReport:
    """Run every scenario at every n (None: the scenario's own) for every seed, except the
    (scenario index, n) pairs in ``skip`` (sizes a scenario is not defined for), on
    ``executor`` (module docstring); the results do not depend on it."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}")
    tasks = make_tasks(scenarios, ns, seeds, skip)
    jobs = max(1, min(jobs, len(tasks) or 1))
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    started = time.perf_counter()
    if executor == "dask":
        _collect(_dask_outcomes(tasks, scenarios, jobs, scheduler), results, on_result)
    elif jobs == 1:
        _init_worker(scenarios)
        outcomes: Iterable[tuple[int, dict[str, Any]]] = map(run_task, tasks)
        _collect(outcomes, results, on_result)
    else:
        chunk = max(1, len(tasks) // (jobs * CHUNKS_PER_WORKER))
        with pool(jobs, scenarios) as workers:
            _collect(workers.imap_unordered(run_task, tasks, chunksize=chunk), results,
                     on_result)
    wall = time.perf_counter() - started
    runs = [run for run in results if run is not None]
    report = SweepReport(runs, wall, jobs)
    report.by_scenario = _by_scenario(runs)
    return report


def _chunks(tasks: list[SweepTask], jobs: int) -> list[list[SweepTask]]:
    size = max(1, len(tasks) // (jobs * CHUNKS_PER_WORKER))
    return [tasks[start:start + size] for start in range(0, len(tasks), size)]


def _dask_outcomes(tasks: list[SweepTask], scenarios: list[Scenario], jobs: int,
                   scheduler: str | None) -> Iterable[tuple[int, dict[str, Any]]]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ExecutorUnavailable("--executor dask needs Dask distributed: pip install -e "
                                  "'.[distributed]'") from None
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
    try:
        with Client(cluster if cluster is not None else scheduler,
                    timeout=DASK_CONNECT_TIMEOUT_S) as client:
            shared = client.scatter(scenarios, broadcast=True)
            futures = client.map(run_chunk, _chunks(tasks, jobs), scenarios=shared,
                                 pure=False)
            for future in as_completed(futures):
                yield from future.result()
    finally:
        if cluster is not None:
            cluster.close()


def _collect(outcomes: Iterable[tuple[int, dict[str, Any]]],
             results: list[dict[str, Any] | None],
             on_result: Callable[[dict[str, Any]], None] | None) -> None:
    for index, run in outcomes:
        results[index] = run
        if on_result is not None:
            on_result(run)


def _by_scenario(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, int], Counter[str]] = {}
    wall: Counter[tuple[str, int]] = Counter()
    for run in runs:
        key = (run["scenario"], run["n"])
        counts = rows.setdefault(key, Counter())
        counts["runs"] += 1
        counts["ok"] += run["ok"]
        counts["violations"] += run["safety"] == SAFETY_VIOLATED
        counts["liveness_failures"] += run["liveness"] == LIVENESS_FAILED
        counts["completed"] += bool(run["completed_all"])
        counts["errors"] += run.get("error") is not None
        counts["events"] += run["events"]
        wall[key] += run["wall_seconds"]
    return [
        {"scenario": name, "n": n, **{k: counts[k] for k in (
            "runs", "ok", "violations", "liveness_failures", "completed", "errors")},
         "expect": next(run["expect"] for run in runs if (run["scenario"], run["n"]) == (name, n)),
         "mean_events": round(counts["events"] / counts["runs"], 1),
         "mean_wall_ms": round(1000 * wall[(name, n)] / counts["runs"], 2)}
        for (name, n), counts in sorted(rows.items())
    ]


def default_jobs() -> int:
    return os.cpu_count() or 1
