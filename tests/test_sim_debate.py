"""Debates in the simulator: every built-in debate scenario meets its expectation at n=4 and
n=7, the Byzantine debaters are contained (and counted), runs are deterministic, the debate
oracles fire on planted violations, and bad debate sections are one line naming the field."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.debate import run as debate_benchmark
from bftdeliberate.deliberation.ledger import Ledger
from bftdeliberate.deliberation.scripts import BYZANTINE_BEHAVIOURS, HONEST_BEHAVIOURS
from bftdeliberate.errors import ConfigError
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

DEBATES = [name for name in builtin_names() if name.startswith("debate-")]
#: The scenarios the brief names; each must ship.
EXPECTED_DEBATES = {"debate-honest", "debate-byzantine-voter", "debate-budget-burner",
                    "debate-groupthink", "debate-impersonation", "debate-role-escalation",
                    "debate-no-convergence"}
RUNS = [(4, 1), (4, 2), (4, 3), (7, 1)]


def _explain(result) -> str:
    debate = result.debate or {}
    return (f"{result.repro}: safety {result.safety}, liveness {result.liveness}, "
            f"{result.violations[:2]}, debate {debate.get('decision')}/"
            f"{debate.get('exit_reason')}, {debate.get('expect_failures')}")


def _agents(result) -> dict:
    return result.debate["agents"]


def test_every_named_debate_scenario_ships():
    assert EXPECTED_DEBATES <= set(DEBATES)
    for name in DEBATES:
        assert load_builtin(name).debate is not None


@pytest.mark.parametrize("name", DEBATES)
@pytest.mark.parametrize("n, seed", RUNS)
def test_debate_scenario_meets_its_expectation(name, n, seed):
    result = run_scenario(load_builtin(name), n=n, seed=seed)
    assert result.ok and result.safety == "ok" and result.liveness == "ok", _explain(result)
    debate = result.debate
    assert debate["settled"] and debate["expect_met"] and debate["expect_failures"] == []
    assert debate["rounds"] <= debate["max_rounds"]
    tokens = debate["tokens"]
    assert tokens["used"] <= tokens["budget"]
    assert all(used <= tokens["agent_budget"] for used in tokens["by_agent"].values())
    # A member whose debater is Byzantine counts against f.
    assert set(debate["byzantine_debaters"]) <= set(result.byzantine_members)
    assert len(result.byzantine_members) <= result.f


def test_honest_debate_approves_in_the_first_round_without_rejections_or_flags():
    result = run_scenario(load_builtin("debate-honest"), n=4, seed=1)
    debate = result.debate
    assert (debate["decision"], debate["exit_reason"]) == ("approved", "threshold_reached")
    assert debate["rejection_counts"] == {} and not debate["flagged"]
    assert debate["commit_ready"] and len(debate["approvals"]) >= debate["threshold"] == 3
    assert debate["decided_proposal"].endswith(".agent-0.r0")
    assert result.byzantine_members == [] and debate["forged_requests"] == 0
    traffic = debate["traffic"]
    assert traffic["ops"] >= 1 + 4 + 3 and traffic["messages"] > 0 and traffic["bytes"] > 0


def test_vote_flip_second_vote_is_a_duplicate_and_counts_once():
    result = run_scenario(load_builtin("debate-byzantine-voter"), n=4, seed=2)
    debate = result.debate
    assert debate["decision"] == "approved" and debate["rejection_counts"]["duplicate_vote"] >= 1
    assert _agents(result)["agent-1"]["rejected"]["duplicate_vote"] >= 1
    # Its first vote (approve) counted once; nobody's vote counts twice (oracle ran clean).
    assert debate["approvals"].count("agent-1") == 1
    assert result.byzantine_members == [1]


def test_budget_burner_is_refused_then_spends_exactly_its_budget():
    result = run_scenario(load_builtin("debate-budget-burner"), n=7, seed=1)
    debate = result.debate
    tokens = debate["tokens"]
    assert debate["rejection_counts"]["budget_exceeded"] >= 1
    assert _agents(result)["agent-2"]["rejected"]["budget_exceeded"] >= 1
    assert tokens["by_agent"]["agent-2"] == tokens["agent_budget"] == 300
    assert tokens["used"] == sum(tokens["by_agent"].values()) <= tokens["budget"]


@pytest.mark.parametrize("n, seed", [(4, 3), (7, 1)])
def test_a_tight_task_budget_is_never_overshot(n, seed):
    data = _data("debate-budget-burner")
    data["debate"]["task"].update(token_budget=450, agent_token_budget=300)
    data["debate"]["expect"] = {"rejected": ["budget_exceeded"]}
    result = run_scenario(_scenario(data), n=n, seed=seed)
    assert result.ok, _explain(result)
    tokens = result.debate["tokens"]
    # Honest answers race for the last tokens too: the ledger refuses what would overshoot.
    assert tokens["used"] <= tokens["budget"] == 450
    assert result.debate["rejection_counts"]["budget_exceeded"] >= 2


def test_groupthink_is_flagged_and_waits_for_the_auditor():
    for n in (4, 7):
        result = run_scenario(load_builtin("debate-groupthink"), n=n, seed=1)
        debate = result.debate
        assert debate["flagged"] and "blind_unanimity_thin_evidence" in debate["signals"]
        # Approved first, not commit-ready until the audit member (the last one) approved.
        assert debate["audit_gated"] and debate["commit_ready"]
        assert debate["audit_approvals"] == [f"agent-{n - 1}"]
        # The audit-only member took no part in the debate's votes.
        assert f"agent-{n - 1}" not in debate["approvals"] + debate["rejections"]


def test_groupthink_with_an_auditor_who_rejects_is_never_commit_ready():
    data = _data("debate-groupthink")
    data["debate"]["audit"]["decision"] = "reject"
    data["debate"]["expect"]["commit_ready"] = False
    result = run_scenario(_scenario(data), seed=1)
    assert result.ok, _explain(result)
    assert result.debate["decision"] == "approved" and not result.debate["commit_ready"]


def test_impersonation_is_dropped_by_signature_and_never_reaches_the_transcript():
    scenario = load_builtin("debate-impersonation")
    world, harness = _run_world(scenario, n=4, seed=1)
    outcome = harness.result()
    assert outcome["forged_requests"] >= 2
    # Every honest replica received every forged request and dropped it: bad signature.
    honest = [m for m in world.honest]
    assert outcome["dropped_bad_signature"] == outcome["forged_requests"] * len(honest)
    assert outcome["rejection_counts"]["malformed"] >= 1  # the "agent" field in the body
    for member in honest:
        ledger: Ledger = world.replicas[member].app
        status = ledger.task_status(harness.task_id)
        texts = [c["position"] for r in status["rounds"] for c in r["contributions"] or ()]
        assert "forged position" not in texts and "forged" not in texts
        votes = [(v["agent"], v["notes"]) for p in status["proposals"] for v in p["votes"]]
        assert all(agent != "agent-1" or "forged" not in notes for agent, notes in votes)
    assert world.violations == []


def test_role_escalation_is_refused_and_nobody_gains_a_role():
    result = run_scenario(load_builtin("debate-role-escalation"), n=4, seed=1)
    debate = result.debate
    counts = debate["rejection_counts"]
    assert counts["missing_role"] >= 1 and counts["malformed"] >= 1
    assert "agent-3" not in debate["approvals"] + debate["rejections"]
    world, harness = _run_world(load_builtin("debate-role-escalation"), n=4, seed=1)
    for member in world.honest:
        ledger: Ledger = world.replicas[member].app
        assert "agent-3" not in ledger.voters and "agent-3" not in ledger.contributors
        status = ledger.task_status(harness.task_id)
        assert all(c["agent"] != "agent-3" for r in status["rounds"]
                   for c in r["contributions"] or ())


def test_no_convergence_escalates_to_a_human_who_resolves():
    result = run_scenario(load_builtin("debate-no-convergence"), n=4, seed=1)
    debate = result.debate
    assert (debate["decision"], debate["exit_reason"]) == ("approved", "max_rounds")
    assert debate["rounds"] == debate["max_rounds"] == 3
    assert debate["escalated_to"] == "human" and debate["resolved_by"] == "agent-3"
    assert debate["decided_proposal"].endswith(".agent-0.r0")
    assert len(debate["approvals"]) < debate["threshold"]  # the votes alone did not decide


def test_no_convergence_without_a_resolver_stays_escalated():
    data = _data("debate-no-convergence")
    del data["debate"]["resolve"]
    data["debate"]["expect"].update(decision="escalated", resolved=False)
    result = run_scenario(_scenario(data), n=7, seed=2)
    assert result.ok, _explain(result)
    assert result.debate["escalated_to"] == "human" and result.debate["resolved_by"] is None


def test_a_judge_without_the_human_role_resolves_an_escalation():
    data = _data("debate-no-convergence")
    data["debate"]["task"]["judge"] = 2
    data["debate"]["roles"] = [{"member": 2, "roles": ["propose", "vote"]}]
    data["debate"]["resolve"] = {"member": 2, "decision": "reject"}
    data["debate"]["expect"].update(decision="rejected")
    result = run_scenario(_scenario(data), n=4, seed=1)
    assert result.ok, _explain(result)
    assert result.debate["escalated_to"] == "agent-2" and result.debate["resolved_by"] == "agent-2"


def test_debate_survives_a_silent_primary_a_lossy_network_and_a_silent_debater():
    data = _data("debate-honest")
    data.update(n=7, byzantine=[{"member": 0, "behaviour": "silent"}],
                network={"delay_ms": [1, 30], "loss": 0.05, "duplicate": 0.05}, gst_ms=3000)
    data["debate"]["agents"].append({"member": 1, "behaviour": "silent"})
    result = run_scenario(_scenario(data), seed=1)
    assert result.ok, _explain(result)
    assert set(result.byzantine_members) == {0, 1} and max(result.views) >= 1
    assert _agents(result)["agent-1"]["sent"] == 0  # silent sends nothing, not even ticks


def test_an_opener_that_is_down_at_opening_time_opens_once_it_restarted():
    data = _data("debate-honest")
    data["events"] = [{"at_ms": 50, "crash": 0}, {"at_ms": 2000, "restart": 0}]
    result = run_scenario(_scenario(data), seed=1)
    assert result.ok, _explain(result)
    assert result.debate["traffic"] is not None and result.sim_time_ms > 2000


def test_a_flooding_agent_owning_the_first_tick_slot_neither_spins_nor_stalls_time():
    # Regression: member 0's Byzantine agent (first in the tick stagger) keeps its queue full
    # with a tick waiting in it; its wake-ups once re-armed at the same instant for ever.
    data = copy.deepcopy(GOOD)
    data.update(n=7, seed=74, max_time_ms=120000)
    data["debate"] = {
        "task": {"max_rounds": 3, "round_ms": 300, "vote_ms": 300, "token_budget": 200},
        "agents": [
            {"member": 0, "behaviour": "role-escalation", "position": "A", "tokens": 50,
             "plan": [{"step": "test", "cmd": "make test"}], "think_ms": [0, 300]},
            {"member": 1, "behaviour": "garbage", "think_ms": [0, 300]},
            {"member": 2, "behaviour": "conformist", "position": "approve as is",
             "tokens": 400, "plan": [{"step": "test", "cmd": "make test"}]},
            {"member": 3, "position": "B", "evidence": ["e2", "e3"], "tokens": 0,
             "plan": [{"step": "test", "cmd": "make test"}], "stop": "budget_exceeded",
             "think_ms": [0, 1500]},
            {"member": 4, "position": "A", "evidence": ["e4x"], "tokens": 400},
            {"member": 5, "position": "approve as is", "evidence": ["e5x"], "tokens": 0,
             "plan": [{"step": "test", "cmd": "make test"}]},
            {"member": 6, "behaviour": "budget-burner", "position": "B", "tokens": 50,
             "later_positions": ["C", "approve as is"], "think_ms": [0, 300]}]}
    result = run_scenario(_scenario(data))
    assert result.ok and result.debate["decision"] is not None, _explain(result)
    assert result.events < 50_000


def test_a_missed_debate_expectation_fails_the_run():
    data = _data("debate-honest")
    data["debate"]["expect"]["decision"] = "rejected"
    result = run_scenario(_scenario(data), seed=1)
    assert not result.ok and result.safety == "ok" and result.liveness == "ok"
    assert result.debate["expect_failures"] == ["decision is 'approved', expected 'rejected'"]


# ------------------------------------------------------------ random debates

#: Random debates per run of the property test (each a whole simulated debate).
PROPERTY_EXAMPLES = 15
POSITIONS = ("A", "B", "approve as is")
PROTOCOL_FAULTS = ("silent", "equivocate", "replay", "duplicate-votes", "slow")


@st.composite
def debates(draw) -> dict:
    """Any mix of debater behaviours (at most f Byzantine members, debaters or replicas
    together), roles, budgets, timings, lossy networks and a crash of an honest member."""
    n = draw(st.sampled_from([4, 4, 7]))
    f = (n - 1) // 3
    faulty = draw(st.lists(st.integers(0, n - 1), max_size=f, unique=True))
    agents = []
    for member in range(n):
        behaviour = draw(st.sampled_from(BYZANTINE_BEHAVIOURS if member in faulty
                                         else HONEST_BEHAVIOURS))
        agent = {"member": member, "behaviour": behaviour,
                 "position": draw(st.sampled_from(POSITIONS)),
                 "evidence": draw(st.lists(st.sampled_from(["e1", "e2", f"e{member}"]),
                                           max_size=2, unique=True)),
                 "tokens": draw(st.sampled_from([0, 50, 100, 400])),
                 "think_ms": [0, draw(st.sampled_from([0, 300, 1500]))],
                 "later_positions": draw(st.lists(st.sampled_from(POSITIONS), max_size=2))}
        if draw(st.booleans()):
            agent["plan"] = [{"step": "test", "cmd": "make test"}]
        if behaviour == "impersonate":
            agent["victim"] = (member + 1) % n
        agents.append(agent)
    task = {"max_rounds": draw(st.integers(1, 4)), "round_ms": draw(st.sampled_from([300, 1000])),
            "vote_ms": draw(st.sampled_from([300, 1000])),
            "deadline_ms": draw(st.sampled_from([1500, 30000])),
            "token_budget": draw(st.sampled_from([200, 5000])),
            "require_audit": draw(st.booleans())}
    data = {"spec": 1, "name": "property", "n": n, "seed": draw(st.integers(0, 2**32)),
            "gst_ms": 0, "max_time_ms": 120000, "expect": {"safety": True, "liveness": True},
            "debate": {"task": task, "agents": agents,
                       "roles": draw(st.sampled_from([[], [{"member": -1, "roles": ["audit"]}],
                                                      [{"member": -1, "roles": ["submit"]}]]))}}
    if draw(st.booleans()):
        honest = [m for m in range(n) if m not in faulty]
        crashed = draw(st.sampled_from(honest))
        data.update(network={"delay_ms": [1, 30], "loss": 0.1, "duplicate": 0.1}, gst_ms=4000,
                    events=[{"at_ms": draw(st.integers(0, 1500)), "crash": crashed},
                            {"at_ms": 3000, "restart": crashed}])
    if faulty and draw(st.booleans()):
        data["byzantine"] = [{"member": faulty[0],
                              "behaviour": draw(st.sampled_from(PROTOCOL_FAULTS))}]
    return data


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
@given(debates())
def test_any_debate_with_at_most_f_faulty_members_is_safe_and_ends(data):
    result = run_scenario(_scenario(data))
    assert result.safety == "ok" and result.liveness == "ok", (_explain(result), data)
    assert result.debate["decision"] is not None


# ----------------------------------------------------------------- determinism


def test_same_seed_same_trace_other_seed_other_trace():
    scenario = load_builtin("debate-byzantine-voter")
    first = run_scenario(scenario, seed=4)
    again = run_scenario(scenario, seed=4)
    assert again.trace_hash == first.trace_hash and again.debate == first.debate
    assert run_scenario(scenario, seed=5).trace_hash != first.trace_hash


def test_same_trace_in_another_process_with_another_hash_seed():
    expected = run_scenario(load_builtin("debate-impersonation"), n=4, seed=3).trace_hash
    code = ("from simulator.runner import run_scenario; from simulator.spec import "
            "load_builtin; print(run_scenario(load_builtin('debate-impersonation'), n=4, "
            "seed=3).trace_hash)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONHASHSEED": "7"}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


# ------------------------------------------------------- oracles (negative tests)


def _data(name: str) -> dict:
    return copy.deepcopy(load_builtin(name).model_dump(by_alias=True, exclude_unset=True))


def _scenario(data: dict) -> Scenario:
    return Scenario.model_validate(data)


def _run_world(scenario: Scenario, *, n: int = 4, seed: int = 1):
    concrete = resolve(scenario.with_overrides(n=n, seed=seed))
    world = build_world(concrete)
    schedule(world, concrete)
    harness = DebateHarness(world, concrete)
    harness.start()
    assert world.run(until=lambda: harness.settled, max_time=60)
    assert world.violations == []
    return world, harness


def _oracles_fired(world) -> set[str]:
    return {violation.oracle for violation in world.violations}


def _tasks(world, member: int) -> dict:
    return world.replicas[member].app._tasks


def test_clean_debate_passes_the_final_checks():
    world, harness = _run_world(load_builtin("debate-honest"))
    harness.oracles.final()
    assert world.violations == []


def test_agreement_fires_when_one_replica_decides_otherwise():
    world, harness = _run_world(load_builtin("debate-honest"))
    _tasks(world, 1)[harness.task_id]["state"] = "rejected"
    harness.oracles.final()
    assert "debate-agreement" in _oracles_fired(world)


def test_attribution_fires_on_a_contribution_its_agent_never_sent():
    world, harness = _run_world(load_builtin("debate-honest"))
    for member in world.honest:  # every replica agrees on the forged entry: only attribution
        round_ = _tasks(world, member)[harness.task_id]["rounds"][0]
        victim = next(c for c in round_["contributions"] if c["agent"] == "agent-1")
        victim["position"] = "forged position"
    harness.oracles.final()
    assert _oracles_fired(world) == {"debate-attribution"}


def test_budget_fires_when_tokens_exceed_the_budget():
    world, harness = _run_world(load_builtin("debate-honest"))
    for member in world.honest:
        _tasks(world, member)[harness.task_id]["token_budget"] = 10
    harness.oracles.final()
    assert "debate-budget" in _oracles_fired(world)


def test_duplicates_and_threshold_fire_on_a_vote_counted_twice():
    world, harness = _run_world(load_builtin("debate-honest"))
    for member in world.honest:
        task = _tasks(world, member)[harness.task_id]
        votes = task["proposals"][0]["votes"]
        first = votes[0]
        votes[:] = [first, dict(first), dict(first)]  # one agent's approval three times
    harness.oracles.final()
    assert {"debate-duplicates", "debate-threshold"} <= _oracles_fired(world)


def test_rounds_fire_past_max_rounds():
    world, harness = _run_world(load_builtin("debate-honest"))
    for member in world.honest:
        _tasks(world, member)[harness.task_id]["max_rounds"] = 1
    harness.oracles.final()
    assert "debate-rounds" in _oracles_fired(world)


def test_roles_fire_when_a_contributor_lacks_the_role():
    world, harness = _run_world(load_builtin("debate-honest"))
    harness.oracles.roles["agent-2"] = frozenset({"submit"})
    harness.oracles.final()
    assert "debate-roles" in _oracles_fired(world)


def test_audit_gate_fires_on_a_ledger_that_skips_the_audit(monkeypatch):
    # A planted bug: the ledger never holds a flagged approval for an auditor.
    monkeypatch.setattr(Ledger, "_audit_pending", lambda self, task: False)
    result = run_scenario(load_builtin("debate-groupthink"), n=4, seed=1)
    assert result.safety == "violated" and not result.ok
    assert result.violations[0]["oracle"] == "debate-audit-gate"


def test_forgery_fires_if_a_forged_request_were_executed():
    scenario = resolve(load_builtin("debate-impersonation").with_overrides(seed=1))
    world = build_world(scenario)
    harness = DebateHarness(world, scenario)

    class EveryRequestForged(dict):
        def __contains__(self, key) -> bool:
            return True

        def __getitem__(self, key) -> str:
            return "agent-2"

    harness.forged = EveryRequestForged(planted=True)
    harness.start()
    world.run(until=lambda: bool(world.violations), max_time=10)
    assert "debate-forgery" in _oracles_fired(world)


# ------------------------------------------------------------- spec validation

GOOD = {"spec": 1, "name": "mine", "n": 4, "seed": 1, "gst_ms": 0, "max_time_ms": 30000,
        "debate": {"task": {"question": "q?", "round_ms": 1000},
                   "agents": [{"member": 0, "plan": [{"step": "test", "cmd": "make test"}]}],
                   "expect": {"decision": "approved"}},
        "expect": {"safety": True, "liveness": True}}


def _error(tmp_path, data) -> str:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message


def test_good_debate_spec_runs():
    result = run_scenario(_scenario(GOOD), seed=1)
    assert result.ok, _explain(result)


def _with(change):
    data = copy.deepcopy(GOOD)
    change(data["debate"])
    return data


@pytest.mark.parametrize("change, field, words", [
    (lambda d: d["agents"][0].update(member=4), "debate.agents.0.member", "does not exist"),
    (lambda d: d["agents"][0].update(member=-5), "debate.agents.0.member", "does not exist"),
    (lambda d: d["agents"].append({"member": -4}), "debate.agents.1.member", "two agents"),
    (lambda d: d["agents"][0].update(behaviour="sneaky"), "debate.agents.0.behaviour",
     "unknown debater behaviour 'sneaky'"),
    (lambda d: d["agents"][0].update(colour="red"), "debate.agents.0.colour", "unknown field"),
    (lambda d: d["agents"][0].update(plan=[{"step": "test"}]), "debate.agents.0.plan.0.cmd",
     "required by step 'test'"),
    (lambda d: d.update(default_agent={"think_ms": [9, 1]}), "debate.default_agent.think_ms",
     "low <= high"),
    (lambda d: d["agents"].append({"member": 1, "behaviour": "impersonate"}),
     "debate.agents.1.victim", "needs a victim"),
    (lambda d: d["agents"].append({"member": 1, "behaviour": "impersonate", "victim": 1}),
     "debate.agents.1.victim", "itself"),
    (lambda d: d["agents"].extend([{"member": 1, "behaviour": "vote-flip"},
                                   {"member": 2, "behaviour": "silent"}]),
     "expect.safety", "2 faulty members"),
    (lambda d: d.update(roles=[{"member": 1, "roles": ["king"]}]), "debate.roles.0.roles.0",
     "unknown role 'king'"),
    (lambda d: d.update(roles=[{"member": 0, "roles": ["vote"]}]), "debate.opener",
     "lacks the 'propose' role"),
    (lambda d: d["task"].update(threshold=2), "debate.task.threshold", "not in 3..4"),
    (lambda d: d["task"].update(max_rounds=99), "debate.task.max_rounds", "less than or equal"),
    (lambda d: d["task"].update(judge=7), "debate.task.judge", "does not exist"),
    (lambda d: d.update(roles=[{"member": 3, "roles": ["vote"]}],
                        resolve={"member": 3}), "debate.resolve.member", "no 'human' role"),
    (lambda d: d.update(audit={"member": 1}, default_roles=["propose", "vote"]),
     "debate.audit.member", "lacks the 'audit' role"),
    (lambda d: d["expect"].update(exit_reason="boredom"), "debate.expect.exit_reason",
     "unknown exit reason 'boredom'"),
    (lambda d: d["expect"].update(rejected=["rude"]), "debate.expect.rejected.0",
     "unknown rejection reason 'rude'"),
    (lambda d: d["expect"].update(decision="maybe"), "debate.expect.decision", "approved"),
    (lambda d: d.update(open_at_ms=40000), "debate.open_at_ms", "after max_time_ms"),
])
def test_bad_debate_section_is_one_line_naming_the_field(tmp_path, change, field, words):
    message = _error(tmp_path, _with(change))
    assert f": {field}: " in message and words in message, message


def test_a_debate_does_not_combine_with_a_generator(tmp_path):
    data = {"spec": 1, "name": "mine", "generator": "chaos", "debate": {}}
    assert ": debate: " in _error(tmp_path, data)


def test_member_references_scale_with_n():
    scenario = load_builtin("debate-groupthink").with_overrides(n=7)
    assert scenario.debate.member_roles(7)[6] == ("audit",)
    assert scenario.debate.member_roles(7)[5] == ("human", "propose", "submit", "vote")
    scripts = load_builtin("debate-honest").debate.agent_scripts(7)
    assert scripts[6].evidence == ["log:incident-6"] and scripts[0].plan is not None
    assert load_builtin("debate-role-escalation").faulty_members == [3]


def test_schema_describes_the_debate_section_and_accepts_the_built_ins():
    schema = scenario_json_schema()
    assert "debate" in schema["properties"]
    assert {"DebateSpec", "DebateTask", "AgentEntry", "DebateExpect"} <= set(schema["$defs"])
    validator = jsonschema.Draft202012Validator(schema)
    for name in DEBATES:
        validator.validate(load_builtin(name).model_dump(mode="json", by_alias=True,
                                                         exclude_unset=True))
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(_with(lambda d: d.update(mood="calm")))


# ------------------------------------------------------------- CLI and benchmark


def test_sim_run_json_reports_the_debate(capsys):
    from bftdeliberate.cli import main

    code = main(["sim", "run", "--scenario", "debate-honest", "--n", "4", "--seed", "1",
                 "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    debate = json.loads(out)["debate"]
    assert {"decision", "exit_reason", "rounds", "tokens", "flagged", "signals",
            "rejection_counts"} <= set(debate)
    assert (debate["decision"], debate["exit_reason"]) == ("approved", "threshold_reached")


def test_debate_benchmark_counts_messages_per_round_and_per_op():
    report = debate_benchmark([4, 7], seeds=1)
    assert report["ok"] and [r["n"] for r in report["results"]] == [4, 7]
    small, large = report["results"]
    for record in report["results"]:
        assert record["command"].startswith("bftd sim run --scenario debate-honest --n ")
        assert record["rounds"] >= 1 and record["ops"] >= record["n"]
        assert record["messages_per_round"] * record["rounds"] == pytest.approx(
            record["messages"], rel=0.01)
        assert record["messages_per_round_by_type"]["commit"] > 0
    assert large["messages_per_round"] > 2 * small["messages_per_round"]
    assert large["bytes_per_op"] > small["bytes_per_op"]
    json.dumps(report)  # JSON-ready
