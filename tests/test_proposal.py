"""``proposal.json`` (DESIGN.md section 7): the seed validates verbatim, every bad input is one
ConfigError line naming the field path, and ``bftd proposal validate`` / ``bftd schema``."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from bftdeliberate.cli import main
from bftdeliberate.deliberation.proposal import (
    MAX_CMD_LENGTH,
    MAX_NOTES_LENGTH,
    MAX_PLAN_STEPS,
    MAX_PROPOSAL_SIZE,
    MAX_STEP_TIMEOUT_MS,
    MAX_TAG_LENGTH,
    MAX_VOTES,
    Proposal,
    parse_proposal,
    proposal_schema,
)
from bftdeliberate.errors import ConfigError
from bftdeliberate.files import load_proposal

SEED_FILE = Path(__file__).parent / "fixtures" / "proposal-seed.json"
SEED = json.loads(SEED_FILE.read_text(encoding="utf-8"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def changed(path: str, value: object) -> dict:
    """The seed with ``path`` ("plan.1.timeout_ms") set to ``value``, or removed if DELETE."""
    data = copy.deepcopy(SEED)
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    node = data
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()

# (field path to change, new value, field path the error must name)
BAD = [
    ("task_id", DELETE, "task_id"),
    ("plan.0.step", DELETE, "plan.0.step"),
    ("decision.result", DELETE, "decision.result"),
    ("proposal_id", 7, "proposal_id"),
    ("plan.2.timeout_ms", "600000", "plan.2.timeout_ms"),
    ("plan.2.timeout_ms", 0, "plan.2.timeout_ms"),
    ("plan.2.timeout_ms", MAX_STEP_TIMEOUT_MS + 1, "plan.2.timeout_ms"),
    ("plan.2.timeout_ms", 1.5, "plan.2.timeout_ms"),
    ("plan.2.timeout_ms", None, "plan.2.timeout_ms"),
    ("votes.1.decision", "abstain", "votes.1.decision"),
    ("votes.1.agent", "", "votes.1.agent"),
    ("votes.1.agent", "A", "votes.1.agent"),  # A votes twice
    ("surprise", 1, "surprise"),
    ("plan.1.surprise", 1, "plan.1.surprise"),
    ("decision.surprise", 1, "decision.surprise"),
    ("decision.threshold", "3/2", "decision.threshold"),
    ("decision.threshold", "abc", "decision.threshold"),
    ("decision.threshold", "0/3", "decision.threshold"),
    ("decision.threshold", "1/0", "decision.threshold"),
    ("decision.threshold", 0.66, "decision.threshold"),
    ("decision.result", "maybe", "decision.result"),
    ("plan", [{"step": "read", "target": "file:a"}] * (MAX_PLAN_STEPS + 1), "plan"),
    ("plan", [], "plan"),
    ("votes", [{"agent": f"a{i}", "decision": "approve"} for i in range(MAX_VOTES + 1)],
     "votes"),
    ("votes.0.notes", "x" * (MAX_NOTES_LENGTH + 1), "votes.0.notes"),
    ("plan.2.cmd", "y" * (MAX_CMD_LENGTH + 1), "plan.2.cmd"),
    ("plan.2.cmd", "npm test\nrm -rf /", "plan.2.cmd"),
    ("risks.0", "t" * (MAX_TAG_LENGTH + 1), "risks.0"),
    ("risks.0", "has space", "risks.0"),
    ("risks.1", "timeouts", "risks.1"),  # listed twice
    ("stop_conditions", "budget_exceeded", "stop_conditions"),
    ("plan.0.step", "deploy", "plan.0.step"),
    ("plan.0.target", DELETE, "plan.0.target"),  # read needs a target
    ("plan.1.patch_id", DELETE, "plan.1.patch_id"),
    ("plan.0.cmd", "ls", "plan.0.cmd"),  # a read step runs nothing
    ("plan.0.target", "src/foo.ts", "plan.0.target"),  # no scheme
    ("version", 2, "version"),
]


def test_seed_validates_verbatim_and_round_trips():
    proposal = load_proposal(SEED_FILE)
    assert proposal.proposal_id == "p-20260421-001" and proposal.version == 1
    assert [step.step for step in proposal.plan] == ["read", "patch", "test"]
    assert (proposal.approvals, proposal.rejections) == (2, 1)
    assert proposal.decision.fraction * 3 == 2
    assert proposal.model_dump(mode="json", exclude_unset=True) == SEED
    assert Proposal.model_validate_json(proposal.model_dump_json(exclude_unset=True)) == proposal


def test_seed_fixture_is_the_design_doc_example_byte_for_byte():
    design = Path(__file__).parents[2] / "shared" / "DESIGN.md"
    if not design.exists():
        pytest.skip("the design document is not beside this checkout")
    assert SEED_FILE.read_text(encoding="utf-8") in design.read_text(encoding="utf-8")


def test_models_are_frozen():
    proposal = load_proposal(SEED_FILE)
    with pytest.raises(ValueError):
        proposal.task_id = "t-other"  # type: ignore[misc]


def test_explicit_version_1_is_accepted():
    assert parse_proposal(json.dumps({**SEED, "version": 1})).version == 1


@pytest.mark.parametrize(("path", "value", "where"), BAD,
                         ids=[f"{where}={str(value)[:12]}" for _, value, where in BAD])
def test_bad_input_is_one_config_error_naming_the_field(tmp_path, path, value, where):
    file = tmp_path / "proposal.json"
    file.write_text(json.dumps(changed(path, value)), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_proposal(file)
    message = str(caught.value)
    assert message.startswith(f"{file}: {where}: "), message
    assert "\n" not in message


@pytest.mark.parametrize(("path", "value", "where"), BAD[::4],
                         ids=[f"{where}={str(value)[:12]}" for _, value, where in BAD[::4]])
def test_bad_input_through_the_cli_exits_2_with_one_line(tmp_path, capsys, path, value, where):
    file = tmp_path / "proposal.json"
    file.write_text(json.dumps(changed(path, value)), encoding="utf-8")
    code, out, err = run(capsys, "proposal", "validate", str(file), "--json")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines() == [err.strip()]
    assert err.startswith(f"bftd: error: {file}: {where}: "), err


@pytest.mark.parametrize(("content", "expect"), [
    (None, "no such file"),
    (b"{not json", "invalid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1, 2]", "a proposal is a JSON object"),
    (b"", "invalid JSON"),
    (b" " * (MAX_PROPOSAL_SIZE + 1), f"larger than {MAX_PROPOSAL_SIZE} bytes"),
])
def test_unreadable_files_exit_2_with_one_line(tmp_path, capsys, content, expect):
    file = tmp_path / "proposal.json"
    if content is not None:
        file.write_bytes(content)
    code, out, err = run(capsys, "proposal", "validate", str(file))
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines() == [f"bftd: error: {file}: " + err.split(f"{file}: ", 1)[1].strip()]
    assert expect in err


def test_a_directory_is_not_a_proposal(tmp_path, capsys):
    code, _, err = run(capsys, "proposal", "validate", str(tmp_path))
    assert code == 2 and err.strip() == f"bftd: error: {tmp_path}: is a directory, not a proposal"


def test_cli_validate_summary_and_json(capsys):
    code, out, err = run(capsys, "proposal", "validate", str(SEED_FILE))
    assert code == 0 and err == "" and len(out.strip().splitlines()) == 1
    assert "p-20260421-001" in out and "3 steps" in out and "3 votes" in out
    assert "approved" in out
    code, out, _ = run(capsys, "proposal", "validate", str(SEED_FILE), "--json")
    summary = json.loads(out)
    assert code == 0 and summary == {
        "file": str(SEED_FILE), "valid": True, "version": 1, "proposal_id": "p-20260421-001",
        "task_id": "t-xxx", "steps": 3, "votes": 3, "approvals": 2, "rejections": 1,
        "decision": {"threshold": "2/3", "result": "approved"}}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)
SEED_KEYS = st.sampled_from(sorted(SEED))


@given(st.one_of(
    JSON_VALUES,
    # The seed with one top-level field replaced, or one field of one step.
    st.tuples(SEED_KEYS, JSON_VALUES).map(lambda kv: {**SEED, kv[0]: kv[1]}),
    st.tuples(st.integers(0, 2), st.sampled_from(["step", "target", "patch_id", "cmd",
                                                  "timeout_ms"]), JSON_VALUES)
    .map(lambda t: changed(f"plan.{t[0]}.{t[1]}", t[2])),
))
def test_arbitrary_json_is_a_proposal_or_one_config_error(value):
    text = json.dumps(value)
    try:
        proposal = parse_proposal(text)
    except ConfigError as error:
        assert "\n" not in str(error) and str(error).startswith("proposal.json: ")
    else:
        assert Draft202012Validator(proposal_schema()).is_valid(value)
        assert isinstance(proposal, Proposal)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_in_a_file_are_a_config_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "proposal.json"
        path.write_bytes(data)
        with pytest.raises(ConfigError):
            load_proposal(path)


def test_schema_out_writes_valid_schemas_and_the_seed_validates(tmp_path, capsys):
    out = tmp_path / "new" / "schemas"
    code, stdout, err = run(capsys, "schema", "--out", str(out))
    assert code == 0 and err == ""
    files = [out / "proposal.schema.json", out / "ledger-operation.schema.json",
             out / "scenario.schema.json"]
    commit_files = [out / f"{name}.schema.json" for name in (
        "execution-intent", "step-attempt", "commit-result", "commit-record", "audit-event")]
    assert stdout.splitlines() == [str(file) for file in files + commit_files]
    schemas = [json.loads(file.read_text(encoding="utf-8")) for file in files]
    for schema in schemas:
        Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schemas[0])
    assert validator.is_valid(SEED)
    # Rules JSON Schema cannot say: one vote per agent, a threshold of at most 1.
    model_only = [("votes.1.agent", "A"), ("decision.threshold", "3/2")]
    for path, value, _ in BAD:
        if (path, value) not in model_only:
            assert not validator.is_valid(changed(path, value)), (path, value)
    # Generated files are replaced on a second run.
    (out / "proposal.schema.json").write_text("stale", encoding="utf-8")
    assert run(capsys, "schema", "--out", str(out))[0] == 0
    assert json.loads((out / "proposal.schema.json").read_text(encoding="utf-8")) == schemas[0]


def test_schema_out_refuses_a_file(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x", encoding="utf-8")
    for target in (file, file / "below"):
        code, out, err = run(capsys, "schema", "--out", str(target))
        assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"bftd: error: {target}")
    assert file.read_text(encoding="utf-8") == "x"
