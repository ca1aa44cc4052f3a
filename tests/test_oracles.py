"""Each safety oracle fires on the violation it names (the oracles themselves can fail)."""

from __future__ import annotations

import dataclasses

from bftdeliberate import kv
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.pbft.effects import Execute
from bftdeliberate.wire.messages import Request, sign_message
from simulator.network import NetworkProfile
from simulator.world import World


def executed_world() -> tuple[World, list[tuple[int, Execute]]]:
    world = World(4, seed=3, clients=1, config=ReplicaConfig(batch_delay=0.0),
                  network=NetworkProfile(delay_ms=(1, 2)))
    seen: list[tuple[int, Execute]] = []
    world.execution_observers.append(lambda member, effect: seen.append((member, effect)))
    assert world.run_workload([kv.put("a", b"1"), kv.put("b", b"2")], max_time=10)
    assert world.violations == []
    return world, seen


def oracle_names(world: World) -> set[str]:
    return {violation.oracle for violation in world.violations}


def test_clean_run_has_no_violations_and_final_checks_pass():
    world, seen = executed_world()
    world.oracles.final_checks()
    assert world.violations == [] and len(seen) == 8  # 2 batches x 4 replicas


def test_agreement_fires_on_a_different_batch_at_an_executed_seq():
    world, seen = executed_world()
    member, effect = seen[0]
    other = dataclasses.replace(effect, digest=b"\x01" * 32)
    world.oracles.on_execute((member + 1) % 4, other)
    assert "agreement" in oracle_names(world)


def test_certificate_fires_below_quorum_and_on_a_digest_that_is_not_the_batch():
    world, seen = executed_world()
    member, effect = seen[0]
    short = dataclasses.replace(effect, certificate=effect.certificate[:2])
    world.oracles._check_certificate(member, short)
    assert [v.oracle for v in world.violations] == ["certificate"]
    assert "quorum" in world.violations[0].detail
    world2, seen2 = executed_world()
    member, effect = seen2[0]
    world2.oracles._check_certificate(member, dataclasses.replace(effect, seq=effect.seq + 50))
    assert "certificate" in oracle_names(world2)


def test_integrity_fires_when_a_request_executes_twice():
    world, seen = executed_world()
    member, effect = seen[0]
    world.oracles.on_execute(member, effect)  # the same execution reported again
    assert "integrity" in oracle_names(world)


def test_validity_fires_on_an_operation_no_client_signed():
    world, seen = executed_world()
    member, effect = seen[0]
    forged = sign_message(Request(client="client-0", timestamp=1, operation=b"x"),
                          world.member_keys[2], world.committee.digest)  # a member's key
    proposal = effect.proposal.message.model_copy(update={"batch": (forged.raw,)})
    fake = dataclasses.replace(effect.proposal, message=proposal)
    world.oracles._check_certificate(member, dataclasses.replace(effect, proposal=fake))
    assert "validity" in oracle_names(world)


def test_state_oracle_fires_on_diverging_digests_at_equal_progress():
    world, _ = executed_world()
    world.replicas[3].app.apply(kv.put("tampered", b"!"), None)  # type: ignore[arg-type]
    world.oracles.final_checks()
    assert [v.oracle for v in world.violations] == ["state"]


def test_monotonic_views_fires_when_a_view_goes_back():
    world, _ = executed_world()
    world.replicas[1].view = 3
    world.oracles.after_step(1)
    world.replicas[1].view = 2
    world.oracles.after_step(1)
    assert oracle_names(world) == {"monotonic-views"}
