"""Groupthink signals: pure functions of a task's closed rounds (DESIGN.md section 5).

Agreement among language models is weak evidence: unanimous answers can be "correlated
ignorance", and debaters flip to the majority without new evidence (sycophantic conformity;
see ``../shared/reference/mad-notes.md`` section 1.7). The ledger records three signals when a
round closes; a flagged task needs an ``audit`` member's approval before it may enter the
commit layer.

Positions compare as :func:`normal_position` does (case and whitespace do not count).

* ``blind_unanimity_thin_evidence`` — every position in the blind round 0 is the same and the
  round cites fewer distinct evidence references than it has contributors.
* ``flip_without_evidence`` — an agent changed its position from the previous round without
  citing any reference that was not already in the transcript.
* ``agreement_rising_evidence_flat`` — the share of the most common position rose from the
  previous round while the transcript's distinct evidence did not grow.

A round is a list of contribution maps with ``agent``, ``position`` (None: abstained) and
``evidence``; rounds are in order.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from typing import Any

Round = list[dict[str, Any]]
#: Fewest contributors for a unanimity to mean anything.
MIN_UNANIMITY_CONTRIBUTORS = 2


def normal_position(position: str) -> str:
    """A position as compared: case- and whitespace-insensitively ("Roll back" and
    "roll  back" are one position), as the ledger's ``positions_stable`` exit compares them."""
    return " ".join(position.casefold().split())


def _positions(round_: Round) -> dict[str, str]:
    # Normalised, so a respelling is neither a flip nor a disagreement (it was: "Ship" vs
    # "ship" counted as a flip without evidence and hid a blind-round unanimity).
    return {c["agent"]: normal_position(c["position"]) for c in round_
            if c["position"] is not None}


def _evidence(round_: Round) -> set[str]:
    return {ref for c in round_ if c["position"] is not None for ref in c["evidence"]}


def _agreement(positions: dict[str, str]) -> Fraction:
    if not positions:
        return Fraction(0)
    return Fraction(Counter(positions.values()).most_common(1)[0][1], len(positions))


def signals_at_close(rounds: list[Round], closed: int) -> list[dict[str, Any]]:
    """The signals raised by closing round ``closed`` (earlier rounds are already closed)."""
    found: list[dict[str, Any]] = []
    current = rounds[closed]
    positions = _positions(current)
    if closed == 0:
        if (len(positions) >= MIN_UNANIMITY_CONTRIBUTORS and len(set(positions.values())) == 1
                and len(_evidence(current)) < len(positions)):
            found.append({"kind": "blind_unanimity_thin_evidence", "round": 0})
        return found
    known_before: set[str] = set()
    for earlier in rounds[:closed]:
        known_before |= _evidence(earlier)
    previous = _positions(rounds[closed - 1])
    for contribution in current:
        agent = contribution["agent"]
        position = positions.get(agent)
        if position is None or agent not in previous or previous[agent] == position:
            continue
        if not set(contribution["evidence"]) - known_before:
            found.append({"kind": "flip_without_evidence", "round": closed, "agent": agent})
    # Agreement needs two positions on each side: a round where all abstained has none to
    # rise from, and a round cut short by a decision may hold a single position.
    if (len(previous) >= MIN_UNANIMITY_CONTRIBUTORS
            and len(positions) >= MIN_UNANIMITY_CONTRIBUTORS
            and _agreement(positions) > _agreement(previous)
            and len(known_before | _evidence(current)) <= len(known_before)):
        found.append({"kind": "agreement_rising_evidence_flat", "round": closed})
    return found
