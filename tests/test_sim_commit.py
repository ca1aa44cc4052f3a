"""The commit layer in the simulator: every built-in commit scenario meets its expectation at
n=4 and n=7 driving the production single-submitter core, the commit oracles fire on planted
violations, Byzantine submitters are contained, runs are deterministic, and bad commit
sections are one line naming the field. Regression tests replay the seeds on which the
oracles found production bugs (fixed since)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import jsonschema
import pytest

from bftdeliberate.commit.executor import ResourceGrants
from bftdeliberate.errors import ConfigError
from simulator.commit import CommitHarness, ResourceStore
from simulator.debate import DebateHarness
from simulator.runner import build_world, run_scenario, schedule
from simulator.spec import (
    Scenario,
    builtin_names,
    load_builtin,
    load_file,
    resolve,
    scenario_json_schema,
)

COMMITS = [name for name in builtin_names() if name.startswith("commit-")]
#: The scenarios the brief names; each must ship.
EXPECTED_COMMITS = {"commit-happy", "commit-retry-storm", "commit-submitter-crash",
                    "commit-rollback", "commit-conflict", "commit-permission-denied",
                    "commit-byzantine-submitter"}
RUNS = [(4, 1), (4, 2), (4, 3), (7, 1)]
ORACLES = {"commit-exactly-once", "commit-authorised", "commit-rollback",
           "commit-concurrency", "commit-agreement"}


def _explain(result) -> str:
    commit = result.commit or {}
    return (f"{result.repro}: safety {result.safety}, liveness {result.liveness}, "
            f"{result.violations[:2]}, commit {commit.get('results')}, "
            f"{commit.get('expect_failures')}")


def _data(name: str) -> dict:
    return copy.deepcopy(load_builtin(name).model_dump(by_alias=True, exclude_unset=True))


def _scenario(data: dict) -> Scenario:
    return Scenario.model_validate(data)


def _fired(result) -> set[str]:
    return {violation["oracle"] for violation in result.violations}


def _run_world(scenario: Scenario, *, n: int = 4, seed: int = 1):
    """A settled run's world and harnesses (for tests that look inside or tamper)."""
    concrete = resolve(scenario.with_overrides(n=n, seed=seed))
    world = build_world(concrete)
    schedule(world, concrete)
    debate = DebateHarness(world, concrete)
    commits = CommitHarness(world, concrete, debate)
    debate.start()
    commits.start()
    assert world.run(until=lambda: debate.settled and commits.settled, max_time=60)
    assert world.violations == []
    return world, commits


# ----------------------------------------------------------------- built-ins


def test_every_named_commit_scenario_ships():
    assert EXPECTED_COMMITS <= set(COMMITS)
    for name in COMMITS:
        scenario = load_builtin(name)
        assert scenario.commit is not None and scenario.debate is not None
        assert scenario.description.startswith("Commit: ")


@pytest.mark.parametrize("name", COMMITS)
@pytest.mark.parametrize("n, seed", RUNS)
def test_commit_scenario_meets_its_expectation(name, n, seed):
    result = run_scenario(load_builtin(name), n=n, seed=seed)
    assert result.ok and result.safety == "ok" and result.liveness == "ok", _explain(result)
    commit = result.commit
    assert commit["settled"] and commit["expect_met"] and commit["expect_failures"] == []
    assert commit["duplicate_effects"] == 0
    assert len(result.byzantine_members) <= result.f


def test_happy_commit_is_one_intent_one_result_one_effect_per_step():
    result = run_scenario(load_builtin("commit-happy"), n=4, seed=1)
    commit = result.commit
    [only] = commit["commits"]
    assert only["intents"] == [["agent-0", 0]] and only["grant"] == "granted"
    assert (only["result"], only["rollback"]) == ("committed", "not_needed")
    assert commit["calls"] == {"apply": 3, "compensate": 0, "query": 0}
    assert commit["attempts"] == 3 and commit["retries"] == 0 and commit["takeovers"] == 0
    assert commit["resources"] == {"file:src/retry.py": "patch-retry"}
    assert result.debate["decision"] == "approved"


def test_retry_storm_retries_within_bounds_and_keeps_every_effect_single():
    scenario = load_builtin("commit-retry-storm")
    retries = 0
    for seed in range(1, 9):
        commit = run_scenario(scenario, n=4, seed=seed).commit
        assert commit["results"] == {"committed": 1} and commit["duplicate_effects"] == 0
        assert commit["max_attempt"] <= scenario.commit.retry.max_attempts
        retries += commit["retries"]
        if commit["faults"]["lost"]:  # an effect whose answer was lost was asked again
            assert commit["calls"]["apply"] > 3
    assert retries > 0


def test_crashed_submitter_is_taken_over_by_the_next_primary_with_one_effect():
    for n in (4, 7):
        result = run_scenario(load_builtin("commit-submitter-crash"), n=n, seed=2)
        commit = result.commit
        [only] = commit["commits"]
        assert only["intents"] == [["agent-0", 0], ["agent-1", 1]], only
        assert commit["crashes"] == 1 and max(result.views) >= 1
        # The new submitter asked before running: steps 0 and 1 were already there.
        assert commit["calls"]["query"] >= 2 and commit["effects_applied"] == 3


def test_the_watchdog_replaces_a_dead_primary_when_nothing_else_is_pending():
    # Agents that think fast leave no request behind the dead primary: only the submitters'
    # watchdog tick (commit.stall_ms) makes the backups change view.
    data = _data("commit-submitter-crash")
    data["debate"]["default_agent"]["think_ms"] = [0, 0]
    for seed in (1, 2):
        result = run_scenario(_scenario(data), n=4, seed=seed)
        assert result.ok, _explain(result)
        assert result.commit["watch_ticks"] >= 1 and result.commit["takeovers"] == 1


def test_rollback_compensates_in_reverse_and_restores_every_file():
    _world, commits = _run_world(load_builtin("commit-rollback"))
    submitter_wal = commits.wals[0].records()
    compensated = [entry.fields["index"] for entry in submitter_wal
                   if entry.type == "attempt" and entry.fields["action"] == "compensate"]
    assert compensated == [1, 0]
    assert commits.store.values == commits.store.initial == {
        "file:src/retry.py": "v0", "file:src/config.py": "c0"}
    outcome = commits.result()
    assert outcome["results"] == {"rolled_back": 1} and outcome["compensations"] == 2
    assert outcome["commits"][0]["failed_step"] == 2


def test_a_crash_mid_rollback_is_finished_by_the_next_primary():
    data = _data("commit-rollback")
    data["commit"]["faults"]["crash_mid_rollback"] = {"step": 1, "restart_after_ms": None}
    data["commit"]["stall_ms"] = 2000
    data["commit"]["expect"]["takeover"] = True
    data["max_time_ms"] = 90000
    for n in (4, 7):
        result = run_scenario(_scenario(data), n=n, seed=1)
        assert result.ok, _explain(result)
        # The new submitter found step 1 compensated (fenced): its apply is refused.
        assert result.commit["fenced"] >= 1 and result.commit["crashes"] == 1


def test_conflicting_commits_wait_for_each_other():
    _world, commits = _run_world(load_builtin("commit-conflict"))
    outcome = commits.result()
    first, second = outcome["commits"]
    assert outcome["conflicts"] >= 1 and outcome["results"] == {"committed": 2}
    # Two resources (the file, the make command), held by one commit at a time.
    assert set(commits.store.holders) == {"file:src/retry.py", "command:make"}
    assert first["task_id"] != second["task_id"]


def test_a_resource_limit_of_two_lets_both_commits_run_at_once():
    data = _data("commit-conflict")
    data["commit"]["resource_limits"] = {"file:src/retry.py": 2, "command:make": 2}
    data["commit"]["expect"]["min_conflicts"] = 0
    result = run_scenario(_scenario(data), n=4, seed=1)
    assert result.ok and result.commit["conflicts"] == 0, _explain(result)


def test_permission_denied_plan_runs_nothing():
    result = run_scenario(load_builtin("commit-permission-denied"), n=4, seed=1)
    commit = result.commit
    [only] = commit["commits"]
    assert (only["result"], only["error_code"], only["failed_step"]) == (
        "permission_denied", "permission_denied", 2)
    assert commit["calls"] == {"apply": 0, "compensate": 0, "query": 0}
    assert commit["resources"] == {"file:src/retry.py": "v0"}


def test_byzantine_submitter_is_contained_and_counted():
    for n in (4, 7):
        result = run_scenario(load_builtin("commit-byzantine-submitter"), n=n, seed=3)
        commit = result.commit
        assert result.ok, _explain(result)
        assert result.byzantine_members == [0] and commit["byzantine_submitter"] == 0
        # Twice the applies, one effect each; its second result refused and counted.
        assert commit["calls"]["apply"] >= 6 + 1 and commit["effects_applied"] == 3
        assert commit["duplicate_results"] >= 1
        assert commit["rejection_counts"]["already_committed"] >= 1
        assert commit["rejection_counts"]["not_approved"] >= 1
        # The plan nobody approved was refused by the resources' gate.
        assert commit["refusals"] >= 1
        assert commit["resources"] == {"file:src/retry.py": "patch-retry"}


def test_a_scenario_crash_with_a_lost_disk_keeps_effects_single():
    data = _data("commit-happy")
    data["events"] = [{"at_ms": 1580, "crash": 0, "lose_disk": True},
                      {"at_ms": 8000, "restart": 0}]
    data["commit"]["stall_ms"] = 2000
    data["commit"]["expect"] = {"commits": 1, "result": "committed", "effects_applied": 3}
    data["max_time_ms"] = 90000
    for seed in (1, 2, 3):
        result = run_scenario(_scenario(data), n=4, seed=seed)
        assert result.ok, _explain(result)


def test_a_missed_commit_expectation_fails_the_run():
    data = _data("commit-happy")
    data["commit"]["expect"]["result"] = "rolled_back"
    result = run_scenario(_scenario(data), seed=1)
    assert not result.ok and result.safety == "ok" and result.liveness == "ok"
    assert result.commit["expect_failures"] == [
        "results ['committed'], expected 'rolled_back'"]


# ----------------------------------------------------------------- determinism


def test_same_seed_same_trace_and_commits_other_seed_other_trace():
    scenario = load_builtin("commit-retry-storm")
    first = run_scenario(scenario, seed=4)
    again = run_scenario(scenario, seed=4)
    assert again.trace_hash == first.trace_hash and again.commit == first.commit
    assert run_scenario(scenario, seed=5).trace_hash != first.trace_hash


def test_same_trace_in_another_process_with_another_hash_seed():
    expected = run_scenario(load_builtin("commit-submitter-crash"), n=4, seed=3).trace_hash
    code = ("from simulator.runner import run_scenario; from simulator.spec import "
            "load_builtin; print(run_scenario(load_builtin('commit-submitter-crash'), n=4, "
            "seed=3).trace_hash)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONHASHSEED": "11"}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


# ------------------------------------------------------- oracles (negative tests)


def test_clean_commits_pass_the_final_checks():
    world, commits = _run_world(load_builtin("commit-conflict"))
    commits.oracles.final()
    assert world.violations == []


def test_exactly_once_fires_when_the_resource_forgets_its_keys(monkeypatch):
    # A planted handler bug: no record of applied keys, so the second apply acts again.
    monkeypatch.setattr(ResourceStore, "_was_applied", staticmethod(lambda record: False))
    result = run_scenario(load_builtin("commit-byzantine-submitter"), n=4, seed=1)
    assert result.safety == "violated" and not result.ok
    assert "commit-exactly-once" in _fired(result)


def test_authorised_fires_when_the_gate_lets_anything_through(monkeypatch):
    # A planted resource bug: no certificate check, so the unapproved plan takes effect.
    monkeypatch.setattr(ResourceStore, "backed", lambda self, call, caller: True)
    result = run_scenario(load_builtin("commit-byzantine-submitter"), n=4, seed=1)
    assert result.safety == "violated"
    assert "commit-authorised" in _fired(result)


def test_rollback_fires_when_compensation_does_not_restore(monkeypatch):
    monkeypatch.setattr(ResourceStore, "_restore", lambda self, record: None)
    result = run_scenario(load_builtin("commit-rollback"), n=4, seed=1)
    assert result.safety == "violated"
    assert _fired(result) == {"commit-rollback"}


def test_concurrency_fires_when_the_ledger_grants_a_held_resource(monkeypatch):
    # A planted ledger bug: every commit granted at once, whatever is held.
    monkeypatch.setattr(ResourceGrants, "_grantable", lambda self, wanted, ahead: True)
    result = run_scenario(load_builtin("commit-conflict"), n=4, seed=1)
    assert result.safety == "violated"
    assert "commit-concurrency" in _fired(result)


def test_agreement_fires_when_one_replica_records_another_result():
    world, commits = _run_world(load_builtin("commit-happy"))
    book = world.replicas[2].app.commits
    [commit_id] = book.commit_ids
    book._commits[commit_id]["result"] = {**book._commits[commit_id]["result"],
                                          "result": "rolled_back"}
    commits.oracles.final()
    assert "commit-agreement" in {violation.oracle for violation in world.violations}


def test_every_oracle_has_a_planted_violation_test():
    tested = {"commit-exactly-once", "commit-authorised", "commit-rollback",
              "commit-concurrency", "commit-agreement"}
    assert tested == ORACLES


# ------------------------------ production bugs the oracles found, now fixed (regressions)


def _variant(name: str, **commit) -> Scenario:
    data = _data(name)
    for key, value in commit.items():
        if key == "faults":
            data["commit"].setdefault("faults", {}).update(value)
        else:
            data["commit"][key] = value
    data["commit"]["expect"] = {}
    data["max_time_ms"] = 90000
    return _scenario(data)


# Regression (found by the oracles, fixed): ExecutionContext.view is the view of the slot a
# replica executed, so a batch committed in view 0 and re-proposed in view 1's NEW-VIEW executes
# with view 0 at some replicas and view 1 at others; CommitBook.intent checks primary(ctx.view) ==
# signer, so the restarted old primary refuses (not_submitter) an intent the others accepted:
# replicated state diverges
def test_regression_commit_intent_depends_on_the_executing_replicas_view():
    scenario = _variant("commit-submitter-crash", faults={"crash_submitter_after_effect": {
        "step": 1, "restart_after_ms": 10000}})
    result = run_scenario(scenario, n=4, seed=1)
    assert result.safety == "ok", result.violations[:3]


# Regression (found by the oracles, fixed): CommitExecutor._fail treats a step as in doubt only
# when its LAST attempt timed out; after a timed-out apply (that took effect) and a transient
# retry the step is not compensated: 'rolled_back' with the patch in place
def test_regression_a_timed_out_then_failed_step_is_not_compensated():
    scenario = _variant("commit-happy", faults={"timeout_p": 0.4, "transient_p": 0.5},
                        retry={"max_attempts": 2, "base_backoff_ms": 10, "max_backoff_ms": 50})
    result = run_scenario(scenario, n=4, seed=2)
    assert result.safety == "ok", result.violations[:3]


# Regression (found by the oracles, fixed): call_done/step_done match an answer by (step index,
# attempt) only; attempts restart at 1 per call, so the late answer of a timed-out apply is taken
# as the answer of the compensation of the same step (a late query answer likewise as an apply's):
# 'rolled_back' with the patch in place
def test_regression_a_late_apply_answer_is_taken_for_the_compensation():
    scenario = _variant("commit-rollback", faults={"timeout_p": 0.5},
                        retry={"max_attempts": 1})
    result = run_scenario(scenario, n=4, seed=26)
    assert result.safety == "ok", result.violations[:3]


# Regression (found by the oracles, fixed): a resumed commit (takeover) whose was_applied query
# fails for good compensates nothing it has not asked about, though the crashed submitter may have
# applied those steps: 'rolled_back' (rollback not_needed) with effects in place
def test_regression_a_failed_takeover_query_leaves_effects_in_place():
    scenario = _variant("commit-submitter-crash", faults={"transient_p": 0.6},
                        retry={"max_attempts": 2, "base_backoff_ms": 10, "max_backoff_ms": 50})
    result = run_scenario(scenario, n=4, seed=2)
    assert result.safety == "ok", result.violations[:3]


# ------------------------------------------------------------- spec validation

GOOD = {"spec": 1, "name": "mine", "n": 4, "seed": 1, "gst_ms": 0, "max_time_ms": 30000,
        "debate": {"task": {"question": "q?", "round_ms": 1000},
                   "default_agent": {"evidence": ["log:{member}"]},
                   "agents": [{"member": 0, "plan": [{"step": "test", "cmd": "make test"}]}]},
        "commit": {"expect": {"result": "committed"}},
        "expect": {"safety": True, "liveness": True}}


def _error(tmp_path, data) -> str:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message


def _with(change) -> dict:
    data = copy.deepcopy(GOOD)
    change(data["commit"])
    return data


def test_good_commit_spec_runs():
    result = run_scenario(_scenario(GOOD), seed=1)
    assert result.ok, _explain(result)
    assert result.commit["effects_applied"] == 1


@pytest.mark.parametrize("change, field, words", [
    (lambda c: c.update(colour="red"), "commit.colour", "unknown field"),
    (lambda c: c.update(submitters=[1, 2]), "commit.submitters", "must include member 0"),
    (lambda c: c.update(submitters=[0, 9]), "commit.submitters.1", "does not exist"),
    (lambda c: c.update(submitters=[0, -4]), "commit.submitters.1", "listed twice"),
    (lambda c: c.update(submitters=[]), "commit.submitters", "at least one member"),
    (lambda c: c.update(tasks=9), "commit.tasks", "less than or equal to 8"),
    (lambda c: c.update(resources={"no-scheme": {"initial": "v0"}}),
     "commit.resources.no-scheme.[key]", "should match pattern"),
    (lambda c: c.update(resource_limits={"file:a": 0}), "commit.resource_limits.file:a",
     "in 1..1024"),
    (lambda c: c.update(faults={"timeout_p": 0.5, "transient_p": 0.5}),
     "commit.faults.transient_p", "at most 0.9"),
    (lambda c: c.update(faults={"latency_ms": [9, 1]}), "commit.faults.latency_ms",
     "low <= high"),
    (lambda c: c.update(faults={"permanent_at": [1, 1]}), "commit.faults.permanent_at",
     "listed twice"),
    (lambda c: c.update(faults={"permanent_at": [64]}), "commit.faults.permanent_at.0",
     "less than 64"),
    (lambda c: c.update(faults={"crash_submitter_after_effect": {"step": 1, "times": 0}}),
     "commit.faults.crash_submitter_after_effect.times", "greater than or equal to 1"),
    (lambda c: c.update(faults={"crash_mid_rollback": {"step": 0,
                                                       "restart_after_ms": 40000}}),
     "commit.faults.crash_mid_rollback.restart_after_ms", "after max_time_ms"),
    (lambda c: c.update(retry={"max_attempts": 17}), "commit.retry.max_attempts",
     "less than or equal to 16"),
    (lambda c: c.update(retry={"base_backoff_ms": 500, "max_backoff_ms": 100}),
     "commit.retry.base_backoff_ms", "above max_backoff_ms"),
    (lambda c: c.update(stall_ms=0), "commit.stall_ms", "greater than or equal to 1"),
    (lambda c: c.update(byzantine_submitter={"behaviours": ["sneaky"]}),
     "commit.byzantine_submitter.behaviours.0", "execute-twice"),
    (lambda c: c.update(byzantine_submitter={"behaviours": []}),
     "commit.byzantine_submitter.behaviours", "at least 1"),
    (lambda c: c.update(byzantine_submitter={"member": 2, "behaviours": ["execute-twice"]},
                        submitters=[0, 1]),
     "commit.byzantine_submitter.member", "not a submitter"),
    (lambda c: c.update(byzantine_submitter={"member": 7, "behaviours": ["execute-twice"]}),
     "commit.byzantine_submitter.member", "does not exist"),
    (lambda c: c.update(expect={"result": "maybe"}), "commit.expect.result", "committed"),
    (lambda c: c.update(expect={"rejected": ["rude"]}), "commit.expect.rejected.0",
     "unknown rejection reason 'rude'"),
    (lambda c: c.update(expect={"commits": 2}), "commit.expect.commits", "from 1 tasks"),
    (lambda c: c.update(allow={"targets": ["bad\nline"]}), "commit.allow.targets.0",
     "should match pattern"),
])
def test_bad_commit_section_is_one_line_naming_the_field(tmp_path, change, field, words):
    message = _error(tmp_path, _with(change))
    assert f": {field}: " in message and words in message, message


def test_a_commit_needs_a_debate(tmp_path):
    data = copy.deepcopy(GOOD)
    del data["debate"]
    assert ": commit: needs a debate section" in _error(tmp_path, data)


def test_a_byzantine_submitter_counts_against_f(tmp_path):
    data = _with(lambda c: c.update(byzantine_submitter={"behaviours": ["execute-twice"]}))
    data["debate"]["agents"].append({"member": 1, "behaviour": "vote-flip"})
    message = _error(tmp_path, data)
    assert ": expect.safety: " in message and "2 faulty members" in message, message
    data["expect"]["safety"] = False  # a negative control is allowed
    path = tmp_path / "control.json"
    path.write_text(json.dumps(data))
    assert load_file(path).faulty_members == [0, 1]


def test_numbered_questions_must_fit(tmp_path):
    data = _with(lambda c: c.update(tasks=2))
    data["debate"]["task"]["question"] = "q" * 3995  # fits; "... (task 2)" does not
    message = _error(tmp_path, data)
    assert ": commit.tasks: " in message and "shorten debate.task.question" in message


def test_submitters_set_the_genesis_submit_role():
    data = _with(lambda c: c.update(submitters=[0, -1]))
    roles = _scenario(data).with_overrides(n=7).genesis_roles()
    assert [m for m, have in roles.items() if "submit" in have] == [0, 6]
    world = build_world(resolve(_scenario(data)))
    assert [m.name for m in world.committee.members if "submit" in m.roles] == [
        "agent-0", "agent-3"]


def test_schema_describes_the_commit_section_and_accepts_the_built_ins():
    schema = scenario_json_schema()
    assert "commit" in schema["properties"]
    assert {"CommitSpec", "CommitFaults", "CommitExpect", "ByzantineSubmitter"} <= set(
        schema["$defs"])
    validator = jsonschema.Draft202012Validator(schema)
    for name in COMMITS:
        validator.validate(load_builtin(name).model_dump(mode="json", by_alias=True,
                                                         exclude_unset=True))
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(_with(lambda c: c.update(mood="calm")))


# ---------------------------------------------------------------------- CLI


def test_sim_run_json_reports_the_commits(capsys):
    from bftdeliberate.cli import main

    code = main(["sim", "run", "--scenario", "commit-happy", "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    commit = json.loads(out)["commit"]
    assert {"commits", "results", "effects_applied", "duplicate_effects", "conflicts",
            "retries", "refusals", "expect_met"} <= set(commit)
    assert commit["results"] == {"committed": 1} and commit["duplicate_effects"] == 0


def test_sweep_takes_the_commit_pattern_at_both_sizes(capsys):
    from bftdeliberate.cli import main

    code = main(["sim", "sweep", "--scenarios", "commit-*", "--n", "4,7", "--seeds", "1",
                 "--jobs", "1", "--json"])
    out, _ = capsys.readouterr()
    report = json.loads(out)
    assert code == 0, report["failures"]
    assert report["runs"] == 2 * len(COMMITS) and report["violations"] == 0
    assert {row["scenario"] for row in report["by_scenario"]} == set(COMMITS)
