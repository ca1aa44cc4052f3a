"""``bftd sim list|run|sweep|schema`` and ``bftd bench sim``: exit codes, JSON fields, one-line
errors."""

from __future__ import annotations

import json
import shlex

import pytest

from bftdeliberate.cli import main
from simulator.spec import builtin_names

RUN_FIELDS = {"scenario", "seed", "n", "f", "safety", "liveness", "violations", "committed",
              "views", "sim_time_ms", "events", "trace_hash", "messages", "bytes", "repro",
              "expect", "ok"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def spec_file(tmp_path, name="mine", **changes) -> str:
    data = {"spec": 1, "name": name, "n": 4, "seed": 3,
            "workload": {"clients": 2, "requests": 10},
            "network": {"delay_ms": [1, 5]}, "gst_ms": 0, "max_time_ms": 20000,
            "expect": {"safety": True, "liveness": True}}
    data.update(changes)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_sim_list_names_every_built_in(capsys):
    code, out, _ = run(capsys, "sim", "list", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [entry["name"] for entry in listed] == builtin_names()
    assert all(entry["description"] for entry in listed)
    code, out, _ = run(capsys, "sim", "list")
    assert code == 0 and "partition-minority" in out


def test_sim_run_json_fields_and_the_repro_line_reproduces(capsys):
    code, out, _ = run(capsys, "sim", "run", "--scenario", "baseline", "--seed", "4", "--json")
    assert code == 0
    result = json.loads(out)
    assert RUN_FIELDS <= set(result)
    assert (result["scenario"], result["seed"], result["n"], result["f"]) == ("baseline", 4, 4, 1)
    assert (result["safety"], result["liveness"], result["ok"]) == ("ok", "ok", True)
    assert result["committed"] == 50 and result["views"] == [0, 0, 0, 0]
    assert result["messages"]["total"] == sum(result["messages"]["by_type"].values())
    assert result["bytes"] > 0 and len(result["trace_hash"]) == 64
    assert result["repro"] == "bftd sim run --scenario baseline --n 4 --seed 4"
    code, out, _ = run(capsys, *shlex.split(result["repro"])[1:], "--json")
    assert code == 0 and json.loads(out)["trace_hash"] == result["trace_hash"]


def test_sim_run_table_trace_and_determinism(capsys, tmp_path):
    trace = tmp_path / "run.jsonl"
    code, out, _ = run(capsys, "sim", "run", "--scenario", "partition-minority", "--trace",
                       str(trace), "--check-determinism")
    assert code == 0
    assert "same trace hash twice" in out and "repro: bftd sim run --scenario" in out
    lines = trace.read_text().splitlines()
    assert lines and all({"event", "t_ms", "kind", "node"} <= set(json.loads(line))
                         for line in lines)
    code, out, _ = run(capsys, "sim", "run", "--spec", spec_file(tmp_path), "--json",
                       "--check-determinism")
    result = json.loads(out)
    assert code == 0 and result["determinism"]["same_trace"]
    assert result["repro"].startswith("bftd sim run --spec ")


def test_outcome_that_misses_its_expectation_exits_1(capsys, tmp_path):
    path = spec_file(tmp_path, expect={"safety": True, "liveness": False})
    code, out, _ = run(capsys, "sim", "run", "--spec", path, "--json")
    result = json.loads(out)
    assert code == 1 and result["liveness"] == "ok" and not result["ok"]


@pytest.mark.parametrize("changes, field", [
    ({"colour": "blue"}, "colour: unknown field"),
    ({"n": 3}, "n: "),
    ({"events": [{"at_ms": 0, "crash": 6}]}, "events.0.crash: member 6 does not exist"),
    ({"events": [{"at_ms": 900, "partition": [[0]]}, {"at_ms": 100, "heal": True}],
      "gst_ms": 1000}, "events.1.at_ms: times out of order (100 after 900)"),
    ({"network": {"delay_ms": [5, 1]}}, "network.delay_ms"),
])
def test_bad_spec_exits_2_with_one_line_naming_the_field(capsys, tmp_path, changes, field):
    path = spec_file(tmp_path, **changes)
    code, out, err = run(capsys, "sim", "run", "--spec", path)
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{path}: {field}" in err, err


@pytest.mark.parametrize("argv", [
    ["sim", "run"],
    ["sim", "run", "--scenario", "baseline", "--spec", "x.json"],
    ["sim", "run", "--scenario", "nope"],
    ["sim", "run", "--scenario", "baseline", "--n", "3"],
    ["sim", "run", "--scenario", "baseline", "--seed", "-1"],
    ["sim", "run", "--spec", "/nonexistent/spec.json"],
    ["sim", "sweep", "--scenarios", "nope"],
    ["sim", "sweep", "--seed-range", "5:2"],
    ["sim", "sweep", "--seeds", "3", "--seed-range", "0:3"],
    ["sim", "sweep", "--n", "4,2"],
    ["bench", "sim", "--seconds", "0"],
    ["bench", "sim", "--scenario", "nope"],
])
def test_bad_usage_exits_2_with_one_line(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_sim_sweep_small_passes_and_summarises(capsys):
    code, out, _ = run(capsys, "sim", "sweep", "--scenarios", "baseline,partition-minority",
                       "--seeds", "3", "--jobs", "2", "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["runs"], report["ok"], report["missed_expectation"]) == (6, 6, 0)
    assert report["jobs"] == 2 and report["runs_per_s"] > 0 and report["failures"] == []
    assert [(row["scenario"], row["runs"]) for row in report["by_scenario"]] == [
        ("baseline", 3), ("partition-minority", 3)]


def test_sim_sweep_skips_sizes_a_scenario_is_not_defined_for(capsys):
    # silent-primary silences two members: it needs n >= 7.
    code, out, _ = run(capsys, "sim", "sweep", "--scenarios", "silent-primary,baseline",
                       "--n", "4,7", "--seeds", "1", "--jobs", "1", "--json")
    assert code == 0
    report = json.loads(out)
    assert [(s["scenario"], s["n"]) for s in report["skipped"]] == [("silent-primary", 4)]
    assert "2 Byzantine members at n=4" in report["skipped"][0]["reason"]
    assert sorted((row["scenario"], row["n"]) for row in report["by_scenario"]) == [
        ("baseline", 4), ("baseline", 7), ("silent-primary", 7)]
    code, _, err = run(capsys, "sim", "sweep", "--scenarios", "silent-primary", "--n", "4")
    assert code == 2 and "no scenario is defined at these sizes" in err


def test_sim_sweep_reports_each_failure_with_its_repro_and_exits_1(capsys, tmp_path):
    wrong = spec_file(tmp_path, name="wrong", expect={"safety": True, "liveness": False})
    code, out, _ = run(capsys, "sim", "sweep", "--scenarios", f"baseline,{wrong}",
                       "--seed-range", "10:12", "--jobs", "2")
    assert code == 1
    assert "runs 4, missed expectation 2" in " ".join(out.split())
    for seed in (10, 11):
        assert f"FAILED bftd sim run --spec {wrong} --n 4 --seed {seed}" in out


def test_sim_schema_is_json_schema(capsys):
    code, out, _ = run(capsys, "sim", "schema")
    schema = json.loads(out)
    assert code == 0 and schema["$schema"].endswith("2020-12/schema")
    assert "byzantine" in schema["properties"]


def test_bench_sim_reports_seed_runs_per_minute(capsys):
    code, out, _ = run(capsys, "bench", "sim", "--scenario", "baseline", "--requests", "10",
                       "--seconds", "1", "--jobs", "1", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["seed_runs_per_min"] > 0 and report["sim_events_per_s"] > 0
    assert report["jobs"] == 1 and report["missed_expectation"] == 0
    assert report["seed_runs"] >= 1 and report["wall_seconds"] >= 1


def test_sweep_takes_scenario_patterns_and_run_prints_the_debate(capsys):
    code, out, _ = run(capsys, "sim", "sweep", "--scenarios", "debate-hon*", "--seeds", "1",
                       "--jobs", "1", "--json")
    assert code == 0
    assert [row["scenario"] for row in json.loads(out)["by_scenario"]] == ["debate-honest"]
    code, _, err = run(capsys, "sim", "sweep", "--scenarios", "nothing-*", "--seeds", "1")
    assert code == 2 and "matches no built-in scenario" in err
    code, out, _ = run(capsys, "sim", "run", "--scenario", "debate-honest", "--seed", "1")
    assert code == 0
    assert "decision approved (exit threshold_reached)" in " ".join(out.split())
