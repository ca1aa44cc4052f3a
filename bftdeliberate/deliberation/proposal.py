"""``proposal.json``: the discussion layer's output (DESIGN.md sections 5 and 7).

A proposal is a plan of steps, its risks and stop conditions, the members' votes and the
decision. The models are strict, frozen pydantic v2 models that forbid unknown fields; the seed
example of DESIGN.md section 7 validates verbatim (``tests/fixtures/proposal-seed.json``).

Versioning: the format is version 1. ``version`` may be left out (the seed has none) and then
means 1; any other version is refused with a one-line error rather than half-read.

Every limit is a named constant below; :func:`load_proposal` turns any problem into one
:class:`ConfigError` line ``"FILE: field.path: message"``.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from bftdeliberate.committee import _one_line
from bftdeliberate.errors import ConfigError
from bftdeliberate.wire.limits import MAX_ID_LENGTH

PROPOSAL_VERSION = 1
PROPOSAL_SCHEMA_ID = "https://bftdeliberate.dev/schemas/proposal-v1.json"
#: Largest proposal file read.
MAX_PROPOSAL_SIZE = 1024 * 1024
MAX_PLAN_STEPS = 64
#: Longest resource target (``file:src/foo.ts``).
MAX_TARGET_LENGTH = 1024
MAX_CMD_LENGTH = 4096
#: Largest per-step timeout: one day.
MAX_STEP_TIMEOUT_MS = 24 * 60 * 60 * 1000
#: Longest risk or stop-condition tag, and how many of each a proposal lists.
MAX_TAG_LENGTH = 64
MAX_RISKS = 64
MAX_STOP_CONDITIONS = 64
MAX_VOTES = 256
MAX_NOTES_LENGTH = 2048
#: Digits of the numerator and of the denominator of a threshold fraction.
MAX_THRESHOLD_DIGITS = 6

# Ids end up in file names, log lines and CLI output: printable, no whitespace (as committee).
ID_PATTERN = r"^[!-~\u00a1-\U0010ffff]+$"
#: Risks and stop conditions are short tags such as ``budget_exceeded``.
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: ``scheme:rest`` (``file:src/foo.ts``), no control characters.
TARGET_PATTERN = r"^[a-z][a-z0-9_-]*:[^\x00-\x1f\x7f]+$"
#: One command line: no control characters (no newlines).
CMD_PATTERN = r"^[^\x00-\x1f\x7f]+$"
THRESHOLD_PATTERN = (
    rf"^[1-9][0-9]{{0,{MAX_THRESHOLD_DIGITS - 1}}}/[1-9][0-9]{{0,{MAX_THRESHOLD_DIGITS - 1}}}$"
)
_THRESHOLD = re.compile(THRESHOLD_PATTERN)
_UNION_MEMBER = re.compile(r"constrained-[a-z]+|none")
_PATTERN_RULES = {
    ID_PATTERN: "must be printable with no whitespace",
    TAG_PATTERN: "must be a tag of letters, digits, '_', '.' and '-' (like 'budget_exceeded')",
    TARGET_PATTERN: "must be 'scheme:resource' (like 'file:src/foo.ts') without control "
                    "characters",
    CMD_PATTERN: "must be one command line without control characters",
}

StepKind = Literal["read", "patch", "test", "command"]
#: Fields each step kind needs, and the optional fields it may carry; any other is refused.
STEP_REQUIRED: dict[str, tuple[str, ...]] = {
    "read": ("target",),
    "patch": ("target", "patch_id"),
    "test": ("cmd",),
    "command": ("cmd",),
}
STEP_OPTIONAL: dict[str, tuple[str, ...]] = {
    "read": ("timeout_ms",),
    "patch": ("timeout_ms",),
    "test": ("target", "timeout_ms"),
    "command": ("target", "timeout_ms"),
}
_STEP_FIELDS = ("target", "patch_id", "cmd", "timeout_ms")


Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]
#: A risk or stop-condition tag.
Tag = Annotated[str, Field(min_length=1, max_length=MAX_TAG_LENGTH, pattern=TAG_PATTERN)]
Target = Annotated[str, Field(min_length=1, max_length=MAX_TARGET_LENGTH, pattern=TARGET_PATTERN)]
Command = Annotated[str, Field(min_length=1, max_length=MAX_CMD_LENGTH, pattern=CMD_PATTERN)]
TimeoutMs = Annotated[int, Field(ge=1, le=MAX_STEP_TIMEOUT_MS)]


def _field_error(where: str, why: str) -> PydanticCustomError:
    """An error at ``where`` below the validated model (a model validator has no location of
    its own); :func:`describe` appends ``where`` to pydantic's location."""
    return PydanticCustomError("proposal_field", "{where}: {why}", {"where": where, "why": why})


def _path(location: tuple[int | str, ...]) -> str:
    # An optional step field is ``X | None``: pydantic names the union member it tried
    # ("constrained-str", "none") in the location; the user's path has no such part.
    return ".".join(str(part) for part in location if not _UNION_MEMBER.fullmatch(str(part)))


def describe(error: ValidationError) -> str:
    """The first error as ``field.path: message`` on one line."""
    first = error.errors(include_url=False)[0]
    where = _path(first["loc"])
    if first["type"] == "proposal_field":
        where = ".".join(part for part in (where, first["ctx"]["where"]) if part)
        return " ".join(f"{where}: {first['ctx']['why']}".split())
    if first["type"] == "string_pattern_mismatch" and first["ctx"]["pattern"] in _PATTERN_RULES:
        return f"{where}: {_PATTERN_RULES[first['ctx']['pattern']]}"
    if first["type"] == "model_type" and not first["loc"]:
        return "a proposal is a JSON object"
    if first["loc"] == ("version",) and first["type"] == "literal_error":
        return (f"version: proposal version {first['input']!r} is not supported (this build "
                f"reads version {PROPOSAL_VERSION})")
    text = _one_line(error)
    raw = ".".join(str(part) for part in first["loc"])
    return where + text[len(raw):] if raw and text.startswith(raw + ": ") else text


def _step_kind_schema() -> dict[str, Any]:
    """Per-kind rules of a plan step in JSON Schema (``if step is K then ...``)."""
    rules = []
    for kind, required in STEP_REQUIRED.items():
        allowed = {"step", *required, *STEP_OPTIONAL[kind]}
        forbidden = {name: False for name in _STEP_FIELDS if name not in allowed}
        rules.append({"if": {"properties": {"step": {"const": kind}}},
                      "then": {"required": list(required), "properties": forbidden}})
    return {"allOf": rules}


def _unique(values: tuple[str, ...], what: str) -> tuple[str, ...]:
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            raise _field_error(str(index), f"{what} {value!r} is listed twice")
        seen.add(value)
    return values


class _ProposalModel(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class PlanStep(_ProposalModel):
    """One step of the plan. ``step`` names its kind; each kind has its required fields."""

    model_config = ConfigDict(json_schema_extra=_step_kind_schema())

    step: StepKind
    target: Target | SkipJsonSchema[None] = None
    patch_id: Id | SkipJsonSchema[None] = None
    cmd: Command | SkipJsonSchema[None] = None
    timeout_ms: TimeoutMs | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _fields_fit_the_kind(self) -> Self:
        required = STEP_REQUIRED[self.step]
        allowed = set(required) | set(STEP_OPTIONAL[self.step])
        for name in _STEP_FIELDS:
            present = getattr(self, name) is not None
            if not present and name in self.model_fields_set:
                raise _field_error(name, "leave the field out instead of null")
            if name in required and not present:
                raise _field_error(name, f"required by step {self.step!r}")
            if present and name not in allowed:
                raise _field_error(name, f"not used by step {self.step!r}")
        return self




class Vote(_ProposalModel):
    """One member's vote on the proposal."""

    agent: Id
    decision: Literal["approve", "reject"]
    notes: str = Field("", max_length=MAX_NOTES_LENGTH)


class Decision(_ProposalModel):
    """The outcome: ``threshold`` is the approving fraction needed, as ``"N/D"`` in (0, 1]."""

    threshold: str = Field(max_length=2 * MAX_THRESHOLD_DIGITS + 1,
                           description="'N/D' with 0 < N <= D, like '2/3'",
                           json_schema_extra={"pattern": THRESHOLD_PATTERN})
    result: Literal["approved", "rejected", "escalated"]

    @field_validator("threshold")
    @classmethod
    def _threshold_is_a_fraction(cls, value: str) -> str:
        match = _THRESHOLD.fullmatch(value)
        if match is None or Fraction(*map(int, value.split("/"))) > 1:
            raise ValueError(f"must be a fraction 'N/D' in (0, 1] like '2/3', got {value!r}")
        return value

    @property
    def fraction(self) -> Fraction:
        numerator, denominator = self.threshold.split("/")
        return Fraction(int(numerator), int(denominator))


class Proposal(_ProposalModel):
    """``proposal.json`` version 1."""

    model_config = ConfigDict(title="proposal.json", json_schema_extra={
        "description": "A deliberation proposal: plan, risks, stop conditions, votes and the "
                       "decision (bftdeliberate DESIGN.md section 7)."})

    version: Literal[1] = PROPOSAL_VERSION
    proposal_id: Id
    task_id: Id
    plan: tuple[PlanStep, ...] = Field(min_length=1, max_length=MAX_PLAN_STEPS)
    risks: tuple[Tag, ...] = Field(max_length=MAX_RISKS, json_schema_extra={"uniqueItems": True})
    stop_conditions: tuple[Tag, ...] = Field(max_length=MAX_STOP_CONDITIONS,
                                             json_schema_extra={"uniqueItems": True})
    votes: tuple[Vote, ...] = Field(max_length=MAX_VOTES)
    decision: Decision

    @field_validator("risks")
    @classmethod
    def _risks_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(value, "risk")

    @field_validator("stop_conditions")
    @classmethod
    def _stop_conditions_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(value, "stop condition")

    @model_validator(mode="after")
    def _one_vote_per_agent(self) -> Self:
        voted: dict[str, int] = {}
        for index, vote in enumerate(self.votes):
            if vote.agent in voted:
                raise _field_error(f"votes.{index}.agent", f"agent {vote.agent!r} already voted "
                                                           f"(votes.{voted[vote.agent]})")
            voted[vote.agent] = index
        return self

    def to_json(self, *, indent: int | None = 2) -> str:
        """``proposal.json`` text; absent optional step fields are left out (an explicit
        null would not validate again)."""
        return self.model_dump_json(indent=indent, exclude_none=True)

    @property
    def approvals(self) -> int:
        return sum(vote.decision == "approve" for vote in self.votes)

    @property
    def rejections(self) -> int:
        return sum(vote.decision == "reject" for vote in self.votes)


def parse_proposal(text: str | bytes, source: str = "proposal.json") -> Proposal:
    """Validate JSON text as a proposal; any problem is a one-line ``"SOURCE: ..."`` error."""
    try:
        return Proposal.model_validate_json(text)
    except ValidationError as error:
        raise ConfigError(f"{source}: {describe(error)}") from None


def proposal_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``proposal.json``, for ``bftd schema --out``."""
    schema = TypeAdapter(Proposal).json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": PROPOSAL_SCHEMA_ID, **schema}
