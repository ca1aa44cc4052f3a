"""Ledger operations: the models, their canonical CBOR encoding, the one-line errors that name
the field, the JSON input of the CLI and the exported JSON Schema."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from bftdeliberate.deliberation.ops import (
    MAX_EVIDENCE_REFS,
    MAX_ROUNDS,
    OPS_SCHEMA_ID,
    REJECTION_REASONS,
    Abstain,
    CastVote,
    Contribute,
    MalformedOperation,
    OpenTask,
    ProposalDraft,
    Resolve,
    Status,
    Tick,
    decode_op,
    encode_op,
    ops_schema,
    parse_op_json,
    validate_op,
)
from bftdeliberate.errors import ConfigError
from bftdeliberate.wire import cbor
from bftdeliberate.wire.limits import MAX_OPERATION_SIZE

# -- strategies: valid operations --------------------------------------------------------------

LINE = st.characters(exclude_categories=("Cc", "Cs"))  # no control characters, valid UTF-8
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,30}", fullmatch=True)
tags = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
texts = st.text(max_size=60)
lines = st.text(LINE, min_size=1, max_size=60)
targets = st.from_regex(r"[a-z][a-z0-9_-]{0,6}:[A-Za-z0-9/._ -]{1,20}", fullmatch=True)
timeouts = st.none() | st.integers(1, 24 * 60 * 60 * 1000)
evidence = st.lists(lines, max_size=4).map(tuple)
durations = st.integers(10, 7 * 24 * 60 * 60_000)


def _step(kind: str, **fields: Any) -> dict[str, Any]:
    return {"step": kind, **{k: v for k, v in fields.items() if v is not None}}


steps = st.one_of(
    st.builds(lambda t, ms: _step("read", target=t, timeout_ms=ms), targets, timeouts),
    st.builds(lambda t, p, ms: _step("patch", target=t, patch_id=p, timeout_ms=ms),
              targets, ids, timeouts),
    st.builds(lambda c, t, ms: _step("test", cmd=c, target=t, timeout_ms=ms),
              lines, st.none() | targets, timeouts),
    st.builds(lambda c, ms: _step("command", cmd=c, timeout_ms=ms), lines, timeouts),
)
drafts = st.builds(ProposalDraft, plan=st.lists(steps, min_size=1, max_size=4).map(tuple),
                   risks=st.lists(tags, max_size=3, unique=True).map(tuple),
                   stop_conditions=st.lists(tags, max_size=3, unique=True).map(tuple))
operations = st.one_of(
    st.builds(OpenTask, question=st.text(min_size=1, max_size=80), context=texts,
              evidence=evidence, max_rounds=st.integers(1, MAX_ROUNDS), round_ms=durations,
              vote_ms=durations, deadline_ms=durations, token_budget=st.integers(1, 10**12),
              agent_token_budget=st.none() | st.integers(1, 10**12),
              threshold=st.none() | st.integers(1, 10**6), judge=st.none() | ids,
              require_audit=st.booleans()),
    st.builds(Contribute, task_id=ids, round=st.integers(0, MAX_ROUNDS), position=lines,
              argument=texts, evidence=evidence, confidence=st.integers(0, 100),
              tokens=st.integers(0, 10**9), proposal=st.none() | drafts,
              stop=st.none() | tags),
    st.builds(Abstain, task_id=ids, round=st.integers(0, MAX_ROUNDS), reason=texts,
              tokens=st.integers(0, 10**9)),
    st.builds(CastVote, task_id=ids, proposal_id=ids,
              decision=st.sampled_from(("approve", "reject")), notes=texts),
    st.builds(Resolve, task_id=ids, decision=st.sampled_from(("approve", "reject")),
              proposal_id=st.none() | ids, notes=texts),
    st.just(Tick()),
    st.builds(Status, task_id=ids, round=st.none() | st.integers(0, MAX_ROUNDS)),
)


def plain(op: BaseModel) -> dict[str, Any]:
    """The operation as the wire carries it (a decoded CBOR map)."""
    return cbor.decode(encode_op(op))


# -- encoding ------------------------------------------------------------------------------------


@given(operations)
def test_encode_decode_round_trip(op):
    data = encode_op(op)
    assert decode_op(data) == op
    assert cbor.encode(cbor.decode(data)) == data  # canonical
    assert plain(op)["op"] == op.op
    # The CLI's JSON input reads the same operation.
    assert parse_op_json(json.dumps(plain(op))) == op


def test_encoding_leaves_defaults_out_but_always_names_the_op():
    assert plain(Tick()) == {"op": "tick"}
    assert plain(Contribute(task_id="t-1-0", round=0, position="ship")) == {
        "op": "contribute", "task_id": "t-1-0", "round": 0, "position": "ship"}
    assert decode_op(cbor.encode({"op": "tick"})) == Tick()


def test_an_operation_over_the_size_limit_is_refused_before_sending():
    huge = OpenTask(question="q", context="c" * 16_000,
                    evidence=tuple("e" * 500 + str(i) for i in range(MAX_EVIDENCE_REFS)))
    assert len(encode_op(huge)) <= MAX_OPERATION_SIZE
    too_big = Contribute(task_id="t", round=0, position="p", argument="a" * 4000,
                         evidence=tuple("e" * 500 + str(i) for i in range(MAX_EVIDENCE_REFS)),
                         proposal=ProposalDraft(plan=tuple(
                             {"step": "command", "cmd": "x" * 4000} for _ in range(64))))
    with pytest.raises(ConfigError, match="bytes; the limit is"):
        encode_op(too_big)
    with pytest.raises(MalformedOperation, match="not canonical CBOR"):
        decode_op(cbor.encode({"op": "open_task", "question": "q" * MAX_OPERATION_SIZE}))


# -- errors name the field -------------------------------------------------------------------


@pytest.mark.parametrize("fields, message", [
    ({"op": "contribute", "task_id": "t", "round": -1, "position": "x"},
     "round: Input should be greater than or equal to 0"),
    ({"op": "contribute", "task_id": "t", "round": MAX_ROUNDS + 1, "position": "x"},
     f"round: Input should be less than or equal to {MAX_ROUNDS}"),
    ({"op": "contribute", "task_id": "t", "round": 0, "position": "x",
      "proposal": {"plan": [{"step": "patch", "target": "file:a"}]}},
     "proposal.plan.0.patch_id: required by step 'patch'"),
    ({"op": "contribute", "task_id": "t", "round": 0, "position": "x",
      "proposal": {"plan": [{"step": "read", "target": "file:a"}], "risks": ["a", "a"]}},
     "proposal.risks.1: risk 'a' is listed twice"),
    ({"op": "contribute", "round": 0, "position": "x"}, "task_id: Field required"),
    ({"op": "contribute", "task_id": "t", "round": 0, "position": "two\nlines"},
     "position: must be"),  # (proposal.describe's wording for this pattern)
    ({"op": "contribute", "task_id": "t", "round": "0", "position": "x"},
     "round: Input should be a valid integer"),
    ({"op": "vote", "task_id": "t", "proposal_id": "p", "decision": "maybe"},
     "decision: Input should be 'approve' or 'reject'"),
    ({"op": "open_task", "question": "q", "roles": ["human"]},
     "roles: Extra inputs are not permitted"),
    ({"op": "open_task", "question": "q", "judge": "two words"},
     "judge: must be printable with no whitespace"),
    ({"op": "dance"}, ("op: unknown operation 'dance' (known: open_task, contribute, "
                      "abstain, vote, resolve, commit_intent, commit_result, tick, status)")),
    ({"op": 7}, "op: unknown operation '7'"),
    ({"task_id": "t"}, "op: required"),
])
def test_validate_op_names_the_field(fields, message):
    with pytest.raises(MalformedOperation) as error:
        validate_op(fields)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_validate_op_wants_a_map():
    for value in ([("op", "tick")], "tick", None, 3):
        with pytest.raises(MalformedOperation, match="an operation is a map"):
            validate_op(value)


@pytest.mark.parametrize("text, message", [
    ('{"op": "contribute", "task_id": "t", "round": -1, "position": "x"}',
     "round: Input should be greater than or equal to 0"),
    (('{"op": "contribute", "task_id": "t", "round": 0, "position": "x", "proposal": '
     '{"plan": [{"step": "patch", "target": "file:a"}]}}'),
     "proposal.plan.0.patch_id: required by step 'patch'"),
    ('{"op": "contribute", "round": 0, "position": "x"}', "task_id: Field required"),
    ('{"op": "dance"}', "op: unknown operation 'dance'"),
    ('{"question": "q"}', "op: required"),
    ('[1, 2]', "an operation is a JSON object"),
    ('{"op": "tick", "agent": "agent-1"}', "agent: Extra inputs are not permitted"),
    ('{"op": "status", "task_id": "t", "round": 1.0}', "round: Input should be a valid integer"),
    ('{"op": ', "invalid JSON"),
])
def test_parse_op_json_is_one_line_naming_the_field(text, message):
    with pytest.raises(ConfigError) as error:
        parse_op_json(text)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_parse_op_json_reads_cli_input():
    assert parse_op_json('{"op": "vote", "task_id": "t-1-0", "proposal_id": "t-1-0.agent-0.r0",'
                         ' "decision": "approve", "notes": "risk ok"}') == CastVote(
        task_id="t-1-0", proposal_id="t-1-0.agent-0.r0", decision="approve", notes="risk ok")
    assert parse_op_json(b'{"op": "tick"}') == Tick()


def test_rejection_reasons_are_distinct_names():
    assert len(set(REJECTION_REASONS)) == len(REJECTION_REASONS)
    assert all(reason.isidentifier() for reason in REJECTION_REASONS)


# -- JSON Schema ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = ops_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == OPS_SCHEMA_ID
    return Draft202012Validator(schema)


@given(op=operations)
def test_the_schema_accepts_the_encoding_of_every_valid_operation(validator, op):
    validator.validate(plain(op))


def test_the_schema_is_valid_and_rejects_what_the_ledger_rejects(validator):
    assert validator.is_valid({"op": "contribute", "task_id": "t", "round": 0, "position": "x"})
    rejected = [
        {"op": "contribute", "round": 0, "position": "x"},             # no task_id
        {},                                                            # no op: not a tick
        {"question": "q"},                                             # no op: not an open_task
        {"op": "dance"},
        {"op": "tick", "agent": "agent-1"},
        {"op": "open_task", "question": "q", "roles": ["human"]},
        {"op": "contribute", "task_id": "t", "round": 0, "position": "x",
         "proposal": {"plan": [{"step": "read", "target": "file:a"}], "risks": ["a", "a"]}},
        {"op": "contribute", "task_id": "t", "round": 0, "position": "x",
         "proposal": {"plan": [{"step": "patch", "target": "file:a"}]}},
    ]
    for instance in rejected:
        assert not validator.is_valid(instance), instance
        with pytest.raises(MalformedOperation):
            validate_op(instance)
