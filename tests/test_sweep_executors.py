"""The sweep's executors give the same results: a local process pool, this process, and Dask
distributed's local cluster (the engine's local mode) run the same (scenario, n, seed) list,
and every run's deterministic outcome is identical."""

from __future__ import annotations

import json

import pytest

from bftdeliberate.cli import main
from simulator.spec import load_builtin
from simulator.sweep import sweep

#: What a run's outcome is, independent of where and how fast it ran.
DETERMINISTIC = ("scenario", "n", "seed", "safety", "liveness", "completed_all", "committed",
                 "events", "sim_time_ms", "ok", "trace_hash")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def outcomes(report) -> list[dict]:
    return [{key: run.get(key) for key in DETERMINISTIC} for run in report.runs]


def test_the_same_seeds_give_the_same_results_on_every_executor():
    pytest.importorskip("distributed")
    scenarios = [load_builtin("baseline"), load_builtin("commit-happy")]
    here = sweep(scenarios, [4], range(3), jobs=1)
    pool = sweep(scenarios, [4], range(3), jobs=2)
    dask = sweep(scenarios, [4], range(3), jobs=2, executor="dask")
    assert len(here.runs) == 6 and here.ok
    assert outcomes(here) == outcomes(pool) == outcomes(dask)
    assert all(run["trace_hash"] for run in here.runs)


def test_sim_sweep_takes_the_dask_executor_and_refuses_a_stray_scheduler(capsys):
    pytest.importorskip("distributed")
    code, out, err = run(capsys, "sim", "sweep", "--scenarios", "baseline", "--n", "4",
                         "--seeds", "2", "--jobs", "2", "--executor", "dask", "--json")
    assert code == 0, err
    assert json.loads(out)["runs"] == 2
    code, _, err = run(capsys, "sim", "sweep", "--scenarios", "baseline", "--scheduler",
                       "tcp://127.0.0.1:1")
    assert code == 2 and "--executor dask" in err
