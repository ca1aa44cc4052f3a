"""``bftd bench viewchange`` / ``benchmarks.viewchange``: a crashed primary is replaced, the
first commit of the new view comes within 3 base timeouts, the episode's traffic is counted,
the JSON carries the documented fields. No wall-clock assertions."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import viewchange
from bftdeliberate.cli import main

RECORD_FIELDS = {"benchmark", "command", "n", "f", "seeds", "base_timeout_s", "failure",
                 "completed_runs", "view_advanced", "safety_violations", "fail_at_s",
                 "failure_to_commit_s", "failure_to_commit_s_range", "timeout_multiple",
                 "goal_timeout_multiple", "meets_goal", "view", "view_changes_per_replica",
                 "messages", "bytes", "pbft_min_view_change_messages",
                 "prepared_certs_per_view_change", "checkpoint_proof_size", "growth", "runs",
                 "wall_seconds"}
COUNT_FIELDS = {"view_change", "new_view", "view_change_and_new_view", "all", "by_type"}
GROWTH_FIELDS = {"view_change_messages_per_n2", "view_change_bytes_per_n3",
                 "all_messages_per_n2", "all_bytes_per_n3", "view_change_messages_slope",
                 "view_change_bytes_slope", "all_messages_slope", "all_bytes_slope"}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def report() -> dict:
    return viewchange.run([4, 7], seeds=1, command="test")


def test_the_view_changes_and_the_new_view_commits_within_three_timeouts(report):
    assert report["ok"] and report["meets_goal"]
    for record in report["results"]:
        n, f = record["n"], record["f"]
        assert (record["seeds"], record["completed_runs"]) == (1, 1)
        assert record["view_advanced"] and record["view"] >= 1
        assert record["safety_violations"] == 0
        (run,) = record["runs"]
        assert run["first_commit"]["view"] >= 1 and run["first_commit"]["member"] != 0
        multiple = record["timeout_multiple"]
        # The request timer (T) must expire before anyone suspects the primary.
        assert math.isfinite(multiple) and 1.0 <= multiple <= 3.0
        assert record["failure_to_commit_s"] == pytest.approx(multiple * record["base_timeout_s"])
        assert record["fail_at_s"] > 0
        messages = record["messages"]
        # The new primary needed 2f+1 VIEW-CHANGEs (each broadcast to the n-1 others) before
        # its NEW-VIEW went to the n-1 others.
        assert messages["view_change"] >= (2 * f + 1) * (n - 1)
        assert messages["new_view"] >= n - 1
        assert messages["view_change_and_new_view"] == messages["view_change"] + messages["new_view"]
        assert messages["all"] == sum(messages["by_type"].values()) > messages["view_change_and_new_view"]
        sizes = record["bytes"]
        assert sizes["view_change"] > 0 and sizes["new_view"] > sizes["view_change"] / (n - 1)
        assert sizes["all"] >= sizes["view_change_and_new_view"]
        # Steady state when the primary failed: a stable checkpoint with its 2f+1 proof.
        assert record["checkpoint_proof_size"] == 2 * f + 1
        assert record["prepared_certs_per_view_change"] >= 1


def test_growth_figures(report):
    first, second = report["results"]
    assert first["growth"]["view_change_messages_slope"] is None
    for name in GROWTH_FIELDS:
        assert second["growth"][name] is not None
    # More members: more messages and more bytes per view change.
    assert second["growth"]["view_change_messages_slope"] > 1
    assert second["growth"]["view_change_bytes_slope"] > 2
    assert set(report["growth_exponents"]) == {"view_change_messages", "view_change_bytes",
                                               "all_messages", "all_bytes"}


def test_runs_are_deterministic():
    assert viewchange.run_one(4, 3) == viewchange.run_one(4, 3)


def test_failure_at_a_fixed_time():
    run = viewchange.run_one(4, 2, fail_at_s=1.5)
    assert run["completed"] and run["fail_at_s"] == 1.5 and run["view"] >= 1
    assert 1.0 <= run["timeout_multiple"] <= 3.0


def test_cli_json_has_the_documented_fields(capsys):
    code, out, _ = run_cli(capsys, "bench", "viewchange", "--n", "4", "--seeds", "1", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["benchmark"] == "viewchange" and report["seeds"] == 1
    (record,) = report["results"]
    assert RECORD_FIELDS <= set(record)
    assert COUNT_FIELDS <= set(record["messages"]) and COUNT_FIELDS <= set(record["bytes"])
    assert GROWTH_FIELDS <= set(record["growth"])
    assert record["command"] == "bftd bench viewchange --n 4 --seeds 1 --json"
    assert (record["n"], record["f"], record["base_timeout_s"]) == (4, 1, 1.0)
    assert record["view_advanced"] and 1.0 <= record["timeout_multiple"] <= 3.0


def test_cli_table(capsys):
    code, out, _ = run_cli(capsys, "bench", "viewchange", "--n", "4", "--seeds", "1")
    assert code == 0
    assert "bench viewchange" in out and "growth exponents" in out and "met" in out


@pytest.mark.parametrize("argv", [
    ["--n", "3"], ["--n", "4,x"], ["--n", ""], ["--n", "0"], ["--seeds", "0"],
    ["--seeds", "two"], ["--fail-at-s", "-1"],
])
def test_bad_usage_is_one_line_exit_2(capsys, argv):
    code, out, err = run_cli(capsys, "bench", "viewchange", *argv)
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_module_entry_point_prints_json(capsys):
    assert viewchange.main(["--n", "4", "--seeds", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["command"] == "python -m benchmarks.viewchange --n 4 --seeds 1"
    assert report["results"][0]["view_advanced"]
