"""Scenario spec v1: built-ins load, the JSON Schema agrees, bad specs are one clear line."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from pydantic import ValidationError

from bftdeliberate.errors import ConfigError
from simulator.spec import (
    CHAOS_SIZES,
    Scenario,
    builtin_names,
    load_builtin,
    load_file,
    resolve,
    scenario_json_schema,
)

#: The scenarios the issue names; each must ship.
ISSUE_SCENARIOS = {
    "baseline", "lossy-network", "duplicating-network", "partition-minority", "clogged-member",
    "crash-restart-backup", "forged-and-spoofed", "duplicate-vote-stuffing", "seq-abuse",
    "wrong-digest", "replay", "flood", "bad-client", "twins", "over-threshold", "chaos",
}

GOOD = {
    "spec": 1, "name": "my-scenario", "n": 4, "seed": 7,
    "workload": {"clients": 2, "requests": 50},
    "network": {"delay_ms": [1, 20], "loss": 0.0, "duplicate": 0.0, "reorder": True},
    "events": [
        {"at_ms": 1000, "partition": [[0, 1], [2, 3]]},
        {"at_ms": 1000, "one_way": {"from": [2], "to": [0, 1, 3]}},
        {"at_ms": 1500, "clog": {"members": [1], "for_ms": 3000}},
        {"at_ms": 2000, "crash": 2, "lose_unsynced": True},
        {"at_ms": 4000, "restart": 2},
        {"at_ms": 5000, "heal": True}],
    "clock": {"skew_ms": 50, "drift": 0.01},
    "gst_ms": 30000, "max_time_ms": 300000,
    "expect": {"safety": True, "liveness": True},
}


def write(tmp_path, data) -> str:
    path = tmp_path / "my.json"
    path.write_text(json.dumps(data))
    return str(path)


def error_of(tmp_path, data) -> str:
    with pytest.raises(ConfigError) as caught:
        load_file(write(tmp_path, data))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_every_issue_scenario_ships_with_a_description():
    assert ISSUE_SCENARIOS <= set(builtin_names())
    for name in builtin_names():
        scenario = load_builtin(name)
        assert scenario.name == name and scenario.description
        assert scenario.source == f"builtin:{name}"


def test_the_issue_example_is_valid(tmp_path):
    scenario = load_file(write(tmp_path, GOOD))
    assert scenario.events[1].one_way.senders == [2]
    assert scenario.expect.liveness is True and scenario.f == 1


def test_schema_forbids_unknown_fields_everywhere():
    schema = scenario_json_schema()
    assert schema["additionalProperties"] is False
    assert {"spec", "name"} <= set(schema["required"])
    assert all(definition.get("additionalProperties") is False
               for definition in schema["$defs"].values())
    assert schema["properties"]["spec"]["const"] == 1
    assert "from" in schema["$defs"]["OneWay"]["properties"]


def test_built_ins_satisfy_the_schema():
    schema = scenario_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for name in builtin_names():
        validator.validate(load_builtin(name).model_dump(mode="json", by_alias=True,
                                                         exclude_unset=True))
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**GOOD, "colour": "red"})


def mutate(change):
    data = copy.deepcopy(GOOD)
    change(data)
    return data


@pytest.mark.parametrize("change, field, words", [
    (lambda d: d.update(colour="red"), "colour", "unknown field"),
    (lambda d: d["network"].update(jitter=3), "network.jitter", "unknown field"),
    (lambda d: d["events"][0].update(extra=1), "events.0.extra", "unknown field"),
    (lambda d: d.update(n=3), "n:", ">= 4"),
    (lambda d: d.update(spec=2), "spec:", "unsupported spec version 2"),
    (lambda d: d.pop("name"), "name:", "required"),
    (lambda d: d["events"][0].update(partition=[[0, 1], [2, 9]]), "events.0.partition.1.1",
     "member 9 does not exist"),
    (lambda d: d["events"][3].update(crash=4), "events.3.crash", "member 4 does not exist"),
    (lambda d: d.update(byzantine=[{"member": 4, "behaviour": "twin",
                                    "params": {"groups": [[0], [1]]}}]),
     "byzantine.0.member", "does not exist"),
    (lambda d: d["events"][1].update(at_ms=4000), "events.2.at_ms",
     "times out of order (1500 after 4000)"),
    (lambda d: d["network"].update(delay_ms=[30, 20]), "network.delay_ms", "low <= high"),
    (lambda d: d["network"].update(loss=1.5), "network.loss", "less than or equal to 1"),
    (lambda d: d["network"].update(duplicate=-0.1), "network.duplicate", "greater than"),
    (lambda d: d.update(gst_ms=400000), "gst_ms", "after max_time_ms"),
    (lambda d: d["events"][4].update(restart=1), "events.4.restart", "member 1 is not down"),
    (lambda d: d["events"][5].update(crash=1), "events.5", "exactly one of"),
    (lambda d: d["events"].append({"at_ms": 40000, "partition": [[0]]}), "events.6.at_ms",
     "faults stop at GST"),
    (lambda d: d.update(byzantine=[{"member": 0, "behaviour": "twin",
                                    "params": {"groups": [[0, 1, 2], [0, 1, 3]]}},
                                   {"member": 1, "behaviour": "twin",
                                    "params": {"groups": [[0, 1, 2], [0, 1, 3]]}}]),
     "expect.safety", "negative control"),
    (lambda d: d.update(byzantine=[{"client": "client-7", "behaviour": "bad-client"}]),
     "byzantine.0.client", "no client 'client-7'"),
    (lambda d: d.update(byzantine=[{"member": 1, "client": "client-0",
                                    "behaviour": "bad-client"}]),
     "byzantine.0.member", "exactly one of member and client"),
    (lambda d: d.update(replica={"checkpoint_interval": 8, "log_window": 12}),
     "replica.log_window", "multiple of checkpoint_interval"),
])
def test_bad_spec_is_one_line_naming_file_and_field(tmp_path, change, field, words):
    message = error_of(tmp_path, mutate(change))
    assert message.startswith(str(tmp_path / "my.json") + ": "), message
    assert field in message and words in message, message


def test_unknown_behaviour_is_named(tmp_path):
    pytest.importorskip("simulator.byzantine")
    message = error_of(tmp_path, mutate(lambda d: d.update(
        byzantine=[{"member": 1, "behaviour": "teleport"}])))
    assert "byzantine.0.behaviour: unknown behaviour 'teleport'" in message


def test_not_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"spec": 1,,}')
    with pytest.raises(ConfigError, match=r"broken.json: not valid JSON: .* \(line 1 column"):
        load_file(path)
    with pytest.raises(ConfigError, match="nope.json: no such file"):
        load_file(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="no built-in scenario 'nope'"):
        load_builtin("nope")


def test_overrides_are_validated_again(tmp_path):
    data = mutate(lambda d: d.update(n=7, events=[{"at_ms": 0, "partition": [[5, 6]]}]))
    scenario = load_file(write(tmp_path, data))
    assert scenario.with_overrides(n=10, seed=3).n == 10
    with pytest.raises(ConfigError) as caught:
        scenario.with_overrides(n=4)
    message = str(caught.value)
    assert "(with --n 4)" in message
    assert "events.0.partition.0.0: member 5 does not exist" in message
    overridden = scenario.with_overrides(seed=11)
    assert (overridden.seed, overridden.n, overridden.source) == (11, 7, scenario.source)


def test_frozen_and_round_trips():
    scenario = load_builtin("partition-minority")
    with pytest.raises(ValidationError):
        scenario.n = 7  # type: ignore[misc]
    again = Scenario.model_validate(scenario.model_dump(by_alias=True))
    assert again.model_dump() == scenario.model_dump() and again.source is None


def test_chaos_is_a_function_of_the_seed():
    chaos = load_builtin("chaos")
    first = resolve(chaos.with_overrides(seed=5))
    assert first == resolve(chaos.with_overrides(seed=5)) and first.generator is None
    assert first.n in CHAOS_SIZES
    assert len(first.byzantine_members) <= first.f
    # --n equal to the drawn n is the seed's own run: repro lines always name --n.
    assert resolve(chaos.with_overrides(seed=5, n=first.n)) == first
    drawn = {resolve(chaos.with_overrides(seed=seed)).n for seed in range(40)}
    assert drawn == set(CHAOS_SIZES)
    assert {resolve(chaos.with_overrides(seed=s, n=7)).n for s in range(5)} == {7}


@pytest.mark.parametrize("n", [4, 7, 10])
def test_over_threshold_has_f_plus_one_twins_and_two_quorums(n):
    scenario = resolve(load_builtin("over-threshold").with_overrides(n=n))
    f, quorum = scenario.f, 2 * scenario.f + 1
    assert scenario.byzantine_members == list(range(f + 1))
    assert scenario.expect.safety is False
    for entry in scenario.byzantine:
        # Each side: its members (a quorum) and its own clients.
        first, second = ([m for m in group if type(m) is int] for group in entry.params["groups"])
        assert len(first) == len(second) == quorum
        assert set(first) | set(second) == set(range(n))


def test_generator_scenarios_cannot_also_set_faults(tmp_path):
    data = {"spec": 1, "name": "x", "generator": "chaos",
            "network": {"loss": 0.5}, "expect": {"safety": True}}
    assert "network: generator 'chaos' fills this in" in error_of(tmp_path, data)
