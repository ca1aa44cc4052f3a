"""Byzantine members and clients (simulator/byzantine.py) against the production replicas.

Each behaviour runs on one member of n=4 (f=1) in the deterministic world: the oracles must
stay silent, the honest replicas must show that they saw and refused the attack (drop
counters, evidence), and wherever liveness does not need a view change (a Byzantine backup,
or a primary whose attack leaves its honest messages in place) the workload completes.
The negative control -- two twins at n=4, f+1 Byzantine -- must be caught by the oracles.
"""

from __future__ import annotations

from collections import Counter

import pytest

from bftdeliberate import kv
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.pbft.effects import Broadcast
from bftdeliberate.wire.limits import MAX_MESSAGE_SIZE
from bftdeliberate.wire.messages import (
    MAX_COUNTER,
    Checkpoint,
    Prepare,
    decode_envelope,
    sign_message,
)
from simulator.byzantine import (
    BAD_CLIENT_PARAMS,
    BEHAVIOURS,
    MAX_FAKE_VIEW_CHANGES_REMEMBERED,
    MAX_HELD_VIEW_CHANGES,
    MAX_RECORDED_MESSAGE_BYTES,
    MAX_TAMPERED_NEW_VIEWS_REMEMBERED,
    NEW_VIEW_MODES,
    BehaviourSpec,
    ByzantineClient,
    ByzantineReplica,
    describe_behaviour,
    make_bad_client,
    make_byzantine,
    make_twin,
    validate_bad_client,
    validate_behaviour,
)
from simulator.network import NetworkProfile
from simulator.world import World

CONFIG = ReplicaConfig(batch_delay=0.002)
# Checkpoints every 4 seqs so a 30-request run makes several stable.
SMALL_LOG = ReplicaConfig(batch_delay=0.002, checkpoint_interval=4, log_window=8)
NETWORK = NetworkProfile(delay_ms=(1, 5))
PRIMARY, BACKUP = 0, 1
REQUESTS = 30
#: Simulated seconds for runs that complete (they take well under one).
MAX_TIME = 30.0
#: Simulated seconds for runs whose liveness needs a view change (they stall).
STALL_TIME = 3.0


def make_world(seed: int = 1, config: ReplicaConfig = CONFIG, clients: int = 2) -> World:
    return World(4, seed=seed, clients=clients, config=config, network=NETWORK)


def byzantine_world(member: int, *specs: BehaviourSpec, **kwargs) -> World:
    world = make_world(**kwargs)
    make_byzantine(world, member, list(specs))
    return world


def spec(name: str, from_ms: float = 0.0, **params) -> BehaviourSpec:
    return BehaviourSpec(name, params, from_ms)


def run(world: World, requests: int = REQUESTS, max_time: float = MAX_TIME) -> bool:
    operations = (kv.put(f"key-{i % 7}", i.to_bytes(4, "big")) for i in range(requests))
    return world.run_workload(operations, max_time=max_time)


def assert_safe(world: World) -> None:
    world.oracles.final_checks()
    assert world.violations == []


def assert_all_executed(world: World, requests: int = REQUESTS) -> None:
    """Every honest replica that caught up executed each request exactly once."""
    executed = {i: world.replicas[i].stats.executed_requests for i in world.honest}
    assert max(executed.values()) == requests, executed


def honest_drops(world: World) -> Counter:
    total: Counter = Counter()
    for member in world.honest:
        total.update(world.replicas[member].stats.dropped)
    return total


def honest_evidence(world: World) -> Counter:
    return Counter(evidence.kind for node, evidence in world.evidence if node in world.honest)


def record_sends(world: World, member: int) -> list[tuple[float, object, str, int]]:
    """(time, receiver, type, size) of every message ``member`` puts on the network."""
    sent: list[tuple[float, object, str, int]] = []

    def watch(sender, receiver, data, message_type):
        if sender == member:
            sent.append((world.now, receiver, message_type, len(data)))
        return data

    world.link_filters.append(watch)
    return sent


def counts(world: World, member: int) -> dict:
    node = world.nodes[member]
    assert isinstance(node, ByzantineReplica)
    return node.counts()


# ------------------------------------------------------------------ parameters


def test_every_behaviour_validates_with_default_params_and_installs():
    for name in BEHAVIOURS:
        validate_behaviour(name, {})
        world = make_world()
        make_byzantine(world, BACKUP, [BehaviourSpec(name, {})])
        assert BACKUP in world.byzantine and world.nodes[BACKUP].replica is world.replicas[BACKUP]
    assert {"silent", "crash", "equivocate", "replay", "forge-signature", "spoof-sender",
            "wrong-digest", "seq-abuse", "duplicate-votes", "fake-checkpoint", "flood",
            "selective", "slow", "fake-prepared-certificate",
            "malicious-new-view"} == set(BEHAVIOURS)
    validate_bad_client({})
    flood = describe_behaviour("flood")
    assert flood["params"]["rate"]["default"] == 3 and flood["summary"].startswith("Every")
    assert set(BAD_CLIENT_PARAMS) == {"corrupt_for", "conflicting", "conflict_to", "broadcast"}


@pytest.mark.parametrize(("name", "params", "expected"), [
    ("nonsense", {}, "unknown behaviour 'nonsense' (known: crash, duplicate-votes"),
    ("flood", {"rat": 2}, "behaviour 'flood': unknown param 'rat' (known: rate,"),
    ("flood", {"rate": 0}, "behaviour 'flood': param 'rate' must be an integer in 1..100"),
    ("flood", {"rate": True}, "param 'rate' must be an integer"),
    ("flood", {"rate": 2.5}, "param 'rate' must be an integer"),
    ("flood", {"max_bytes": MAX_MESSAGE_SIZE + 1}, "param 'max_bytes'"),
    ("equivocate", {"mode": "both"}, "param 'mode' must be one of digest, seq, got 'both'"),
    ("selective", {"drop_to": [-1]}, "param 'drop_to'"),
    ("selective", {"drop_to": 2}, "param 'drop_to'"),
    ("slow", {"delay_ms": float("nan")}, "param 'delay_ms' must be a number"),
    ("slow", {"delay_ms": -1}, "param 'delay_ms'"),
    ("seq-abuse", {"targets": ["huge"]}, "param 'targets' must be a list of above-window"),
    ("replay", {"every_ms": 0}, "param 'every_ms'"),
    ("fake-prepared-certificate", {"variants": ["lie"]},
     "param 'variants' must be a list of hide, few-prepares"),
    ("fake-prepared-certificate", {"valid_after_ms": -1}, "param 'valid_after_ms'"),
    ("malicious-new-view", {"modes": "omit-entry"}, "param 'modes' must be a list of omit-entry"),
    ("duplicate-votes", {"copies": 1000}, "param 'copies'"),
    ("silent", {"anything": 1}, "behaviour 'silent': unknown param 'anything' (known: none)"),
    ("crash", ["not", "a", "dict"], "behaviour 'crash': params must be an object"),
])
def test_bad_params_are_one_line_value_errors(name, params, expected):
    with pytest.raises(ValueError) as error:
        validate_behaviour(name, params)
    message = str(error.value)
    assert expected in message and "\n" not in message


def test_installation_errors_name_the_problem():
    world = make_world()
    with pytest.raises(ValueError, match="member 4 does not exist"):
        make_byzantine(world, 4, [spec("silent")])
    with pytest.raises(ValueError, match="'drop_to': member 9 does not exist"):
        make_byzantine(world, BACKUP, [spec("selective", drop_to=[9])])
    with pytest.raises(ValueError, match="'drop_to': no client 'client-7'"):
        make_byzantine(world, BACKUP, [spec("selective", drop_to=["client-7"])])
    with pytest.raises(ValueError, match="from_ms must be a number >= 0"):
        make_byzantine(world, BACKUP, [spec("silent", from_ms=-5)])
    make_byzantine(world, BACKUP, [spec("silent")])
    with pytest.raises(ValueError, match="already has a Byzantine wrapper"):
        make_byzantine(world, BACKUP, [spec("crash")])
    with pytest.raises(ValueError, match="already has a Byzantine wrapper or twin"):
        make_twin(world, BACKUP, ([0], [2, 3]))
    with pytest.raises(ValueError, match="neither a member nor a client"):
        make_twin(world, 2, ([0, "client-9"], [3]))
    with pytest.raises(ValueError, match="member 7 does not exist"):
        make_twin(world, 2, ([0, 7], [3]))
    with pytest.raises(ValueError, match="no client 'client-9'"):
        make_bad_client(world, "client-9", {})
    with pytest.raises(ValueError, match="bad-client: unknown param 'corrupt'"):
        make_bad_client(world, "client-0", {"corrupt": [1]})
    with pytest.raises(ValueError, match="bad-client: param 'corrupt_for': member 4"):
        make_bad_client(world, "client-0", {"corrupt_for": [4]})


# ------------------------------------------------------------------ silence and crashes


def test_silent_backup_sends_nothing_and_the_others_complete():
    world = byzantine_world(BACKUP, spec("silent"))
    sent = record_sends(world, BACKUP)
    assert run(world)
    assert_safe(world)
    assert sent == []
    assert counts(world, BACKUP)["silent"]["dropped"] > 0
    assert_all_executed(world)


def test_silent_primary_costs_one_view_change():
    world = byzantine_world(PRIMARY, spec("silent"))
    assert run(world)
    assert_safe(world)
    assert_all_executed(world)
    assert {world.replicas[i].view for i in world.honest} == {1}
    # Nothing committed in view 0, so the first commit waited for the request timer.
    timeout = world.config.view_change_timeout
    assert world.completed[0].completed_at > timeout


def test_crash_from_a_given_time_stops_receiving_and_sending():
    crash_ms = 100.0
    world = byzantine_world(BACKUP, spec("crash", from_ms=crash_ms))
    sent = record_sends(world, BACKUP)
    assert run(world)
    assert_safe(world)
    assert sent and all(at * 1000 < crash_ms for at, *_ in sent)
    assert world.completed[-1].completed_at * 1000 > crash_ms  # the others went on
    crashed = world.replicas[BACKUP].last_executed
    assert 0 < crashed < min(world.replicas[i].last_executed for i in world.honest)
    assert world.nodes[BACKUP].next_deadline() is None


# ------------------------------------------------------------------ equivocation


@pytest.mark.parametrize("mode", ["digest", "seq"])
def test_equivocating_primary_is_caught_and_nothing_diverges(mode):
    world = byzantine_world(PRIMARY, spec("equivocate", mode=mode))
    assert run(world)  # no quorum on either version until a view change replaces it
    assert_safe(world)
    assert all(world.replicas[i].view >= 1 for i in world.honest)
    assert counts(world, PRIMARY)["equivocate"]["equivocated"] > 0
    # Retransmissions reveal the other version: honest backups hold both signed proposals
    # (those that see a retransmission before the view change replaces the primary).
    convicted = {node for node, evidence in world.evidence
                 if node in world.honest and evidence.kind == "equivocation"}
    assert convicted and convicted <= {1, 2, 3}
    assert all(evidence.culprit == PRIMARY for _, evidence in world.evidence)
    assert honest_drops(world)["conflicting-pre-prepare"] > 0


def test_equivocation_to_a_minority_without_reveal_commits_the_majority_version():
    # Backups 1 and 2 get the honest version: with the primary that is a quorum. Backup 3
    # holds the other version at every seq and lags (state transfer: next issue).
    world = byzantine_world(PRIMARY, spec("equivocate", reveal=False, split=[3]))
    assert run(world)
    assert_safe(world)
    assert honest_evidence(world)["equivocation"] == 0
    replicas = world.replicas
    assert replicas[3].last_executed == 0 < replicas[1].last_executed
    assert replicas[1]._log[1].digest == replicas[2]._log[1].digest != replicas[3]._log[1].digest
    assert_all_executed(world)


def test_equivocate_on_a_backup_is_harmless():
    world = byzantine_world(BACKUP, spec("equivocate"))
    assert run(world)
    assert_safe(world)
    assert counts(world, BACKUP)["equivocate"] == {}
    assert not world.evidence


# ------------------------------------------------------------------ replays, forgeries


def test_replay_re_sends_old_messages_that_change_nothing():
    world = byzantine_world(BACKUP, spec("replay", every_ms=10, count=5))
    assert run(world)
    assert_safe(world)
    assert counts(world, BACKUP)["replay"]["replayed"] >= 50
    drops = honest_drops(world)
    assert drops["sender-mismatch"] > 0 and drops["duplicate"] > 0
    assert_all_executed(world)


def test_replay_goes_quiet_when_the_world_is_idle():
    world = byzantine_world(BACKUP, spec("replay", every_ms=10))
    assert run(world, requests=5)
    idle_from = world.events_processed
    world.run(max_time=world.now + 60.0)
    assert world.events_processed - idle_from < 2_000  # paused, not ticking for a minute


@pytest.mark.parametrize("member", [PRIMARY, BACKUP])
def test_forged_signatures_are_refused_before_any_state_change(member):
    world = byzantine_world(member, spec("forge-signature"))
    assert run(world)
    assert_safe(world)  # validity: no forged client request ever executed
    done = counts(world, member)["forge-signature"]
    assert done["flipped"] and done["wrong-committee"] and done["impersonated"]
    assert done["forged-request"] > 0
    drops = honest_drops(world)
    assert drops["bad-signature"] > done["forged-request"]  # flipped and wrong-domain too
    assert drops["sender-mismatch"] > 0
    assert_all_executed(world)
    assert not any(key.startswith("forged") for i in world.honest
                   for key in world.replicas[i].app._data)


@pytest.mark.parametrize("member", [PRIMARY, BACKUP])
def test_spoofed_sender_is_dropped_as_sender_mismatch(member):
    world = byzantine_world(member, spec("spoof-sender"))
    assert run(world)
    assert_safe(world)
    spoofed = counts(world, member)["spoof-sender"]["spoofed"]
    drops = honest_drops(world)
    at_clients = sum(c.stats.dropped["sender-mismatch"] for c in world.clients.values())
    # A PRE-PREPARE may come relayed by any member (its signature says who proposed it), so
    # one naming a backup is refused as not-primary; spoofed replies reach the clients.
    refused = drops["sender-mismatch"] + drops["not-primary"] + at_clients
    assert spoofed > 0 and refused >= spoofed
    assert_all_executed(world)


def test_spoofed_only_backup_counts_for_nobody():
    world = byzantine_world(BACKUP, spec("spoof-sender", keep_honest=False, victims=[2]))
    assert run(world)
    assert_safe(world)
    for i in world.honest:  # none of its votes was accepted, neither as 1 nor as victim 2
        for slot in world.replicas[i]._log.values():
            assert BACKUP not in slot.prepares and BACKUP not in slot.commits
            assert all(vote.message.replica == 2 for vote in
                       [slot.prepares.get(2), slot.commits.get(2)] if vote is not None)
    assert honest_drops(world)["sender-mismatch"] > 0
    assert_all_executed(world)


# ------------------------------------------------------------------ digests and seqs


def test_wrong_digest_primary_is_convicted_and_its_honest_proposals_go_through():
    world = byzantine_world(PRIMARY, spec("wrong-digest"))
    assert run(world)
    assert_safe(world)
    assert honest_drops(world)["digest-mismatch"] > 0
    assert honest_evidence(world)["bad-digest"] > 0
    assert_all_executed(world)


def test_wrong_digest_only_primary_is_replaced():
    world = byzantine_world(PRIMARY, spec("wrong-digest", keep_honest=False))
    assert run(world)
    assert_safe(world)
    assert honest_drops(world)["digest-mismatch"] > 0
    assert honest_evidence(world)["bad-digest"] > 0
    assert all(world.replicas[i].view >= 1 for i in world.honest)
    assert_all_executed(world)


def test_wrong_digest_backup_votes_conflict_and_never_count():
    world = byzantine_world(BACKUP, spec("wrong-digest"))
    assert run(world)
    assert_safe(world)
    drops = honest_drops(world)
    assert drops["conflicting-prepare"] > 0 and drops["conflicting-commit"] > 0
    assert honest_evidence(world)["conflicting-prepare"] > 0
    assert_all_executed(world)


@pytest.mark.parametrize("member", [PRIMARY, BACKUP])
def test_seq_abuse_is_out_of_window_and_allocates_nothing(member):
    world = byzantine_world(member, spec("seq-abuse"))
    assert run(world)
    assert_safe(world)
    done = counts(world, member)["seq-abuse"]
    assert done["above-window"] and done["max-seq"] and done["gap-votes"]
    assert honest_drops(world)["out-of-window"] > 0
    for i in world.honest:
        replica = world.replicas[i]
        assert max(replica._log, default=0) <= replica.low_watermark + CONFIG.log_window
        assert MAX_COUNTER not in replica._log
    assert_all_executed(world)


def test_same_request_at_two_seqs_executes_once():
    # The primary proposes each batch again `gap` seqs later (the pbft-java bug class).
    world = byzantine_world(PRIMARY, spec("seq-abuse", targets=["gap-proposal"], gap=1))
    ordered_again: Counter = Counter()

    def watch(member, effect):
        ordered_again[member] += effect.executed.count(False)

    world.execution_observers.append(watch)
    run(world, max_time=STALL_TIME)  # the later honest proposals conflict: view change
    assert_safe(world)  # integrity: never executed twice
    assert counts(world, PRIMARY)["seq-abuse"]["gap-proposal"] > 0
    # Honest replicas did commit a request at a second seq, and skipped it there.
    assert all(ordered_again[i] > 0 for i in world.honest)


# ------------------------------------------------------------------ votes and checkpoints


@pytest.mark.parametrize("member", [PRIMARY, BACKUP])
def test_duplicate_votes_count_once_and_conflicts_are_evidence(member):
    world = byzantine_world(member, spec("duplicate-votes", copies=4))
    assert run(world)
    assert_safe(world)
    drops = honest_drops(world)
    assert drops["duplicate"] > 0 and drops["conflicting-commit"] > 0
    assert honest_evidence(world)["conflicting-commit"] > 0
    assert all(evidence.culprit == member for _, evidence in world.evidence)
    assert_all_executed(world)


def test_fake_checkpoints_never_become_stable():
    world = byzantine_world(BACKUP, spec("fake-checkpoint"), config=SMALL_LOG)
    assert run(world)
    assert_safe(world)
    assert counts(world, BACKUP)["fake-checkpoint"]["faked"] > 0
    for i in world.honest:
        replica = world.replicas[i]
        assert replica.low_watermark >= SMALL_LOG.checkpoint_interval
        assert all(vote.message.replica != BACKUP for vote in replica.stable_proof)
        assert all(vote.message.state_digest == replica.stable_digest
                   for vote in replica.stable_proof)
    assert_all_executed(world)


def test_fake_and_real_checkpoint_from_one_member_is_a_conflict():
    world = byzantine_world(BACKUP, spec("fake-checkpoint", keep_honest=True), config=SMALL_LOG)
    assert run(world)
    assert_safe(world)
    assert honest_drops(world)["conflicting-checkpoint"] > 0
    assert honest_evidence(world)["conflicting-checkpoint"] > 0


# ------------------------------------------------------------------ flood, omissions, delay


@pytest.mark.parametrize("member", [PRIMARY, BACKUP])
def test_flood_of_copies_and_junk_is_refused_and_bounded(member):
    world = byzantine_world(member, spec("flood", rate=5, junk_frames=2))
    assert run(world)
    assert_safe(world)
    done = counts(world, member)["flood"]
    assert done["copies"] > 0 and done["junk"] > 0
    drops = honest_drops(world)
    # Every junk frame that arrived was refused (the last ones may still be in flight).
    assert done["junk"] - 5 <= drops["malformed"] <= done["junk"] and drops["duplicate"] > 0
    assert world.events_processed < 20_000
    assert_all_executed(world)


def test_oversized_junk_frames_are_refused():
    world = byzantine_world(BACKUP, spec("flood", rate=1, junk_frames=4, max_bytes=256,
                                         oversized=True))
    sent = record_sends(world, BACKUP)
    assert run(world, requests=10)
    assert_safe(world)
    assert counts(world, BACKUP)["flood"]["oversized"] > 0
    assert any(size > MAX_MESSAGE_SIZE for *_, size in sent)
    junk = counts(world, BACKUP)["flood"]["junk"]
    assert junk - 8 <= honest_drops(world)["malformed"] <= junk


def test_selective_primary_starves_one_backup_without_harm():
    world = byzantine_world(PRIMARY, spec("selective", drop_to=[3]))
    sent = record_sends(world, PRIMARY)
    assert run(world)
    assert_safe(world)
    assert sent and all(receiver != 3 for _, receiver, *_ in sent)
    # 3 never sees a pre-prepare: it lags (state transfer is the next issue's job).
    assert world.replicas[3].last_executed < world.replicas[1].last_executed
    assert_all_executed(world)


def test_selective_backup_default_drops_to_the_next_member():
    world = byzantine_world(BACKUP, spec("selective"))
    sent = record_sends(world, BACKUP)
    assert run(world)
    assert_safe(world)
    assert sent and all(receiver != 2 for _, receiver, *_ in sent)
    assert_all_executed(world)


def test_slow_primary_delays_every_message_it_sends():
    baseline = make_world()
    assert run(baseline)
    world = byzantine_world(PRIMARY, spec("slow", delay_ms=50))
    assert run(world)
    assert_safe(world)
    assert counts(world, PRIMARY)["slow"]["delayed"] > 0
    # Each request waits for at least one delayed pre-prepare.
    assert world.now > baseline.now + REQUESTS / 2 * 0.050
    assert_all_executed(world)


# ------------------------------------------------------------------ view change

#: The honest primary 0 is cut off from CUT on (never healed in these runs): the others
#: change to view 1, whose primary is member 1.
CUT = 0.2
#: A lying member's invalid view-changes and how honest members name what is wrong.
INVALID_VIEW_CHANGE_REASONS = {
    "few-prepares": "prepares < 2f",
    "duplicate-prepare": "not a distinct backup",
    "forged-prepare": "bad prepare signature",
    "other-digest": "bad pre-prepare signature",
    "wrong-primary": "pre-prepare not from the primary",
}


def cut_primary_world(member: int, *specs: BehaviourSpec, cut: float = CUT,
                      **kwargs) -> World:
    """``member`` Byzantine; the honest primary 0 partitioned away from ``cut`` on."""
    world = byzantine_world(member, *specs, **kwargs)
    others = [m for m in range(world.committee.n) if m != PRIMARY]
    world.at(cut, lambda: world.network.partition([[PRIMARY], others]), "cut primary")
    return world


def sent_messages(world: World, member: int, message_type: str) -> list:
    """Decoded envelopes of type ``message_type`` that ``member`` puts on the network (one per
    distinct envelope)."""
    seen: dict[bytes, object] = {}

    def watch(sender, receiver, data, kind):
        if sender == member and kind == message_type and data not in seen:
            seen[data] = decode_envelope(data)
        return data

    world.link_filters.append(watch)
    return seen  # type: ignore[return-value]


def drop_details(world: World, reason: str, sender: int) -> dict[int, list[str]]:
    return {i: [d.detail for d in world.replicas[i].recent_drops
                if d.reason == reason and d.sender == sender] for i in world.honest}


@pytest.mark.parametrize("seed", [1, 2])
def test_fake_prepared_certificates_are_refused_as_a_whole(seed):
    liar = 2
    world = cut_primary_world(liar, spec("fake-prepared-certificate"), seed=seed)
    assert run(world)
    assert_safe(world)
    assert_all_executed(world)
    done = counts(world, liar)["fake-prepared-certificate"]
    assert set(done) >= {"hide", *INVALID_VIEW_CHANGE_REASONS}
    receivers = [1, 3]  # the honest members that changed view (0 is cut off)
    assert all(world.replicas[i].view >= 1 for i in receivers)
    convicted = Counter(node for node, evidence in world.evidence
                        if evidence.kind == "bad-view-change" and evidence.culprit == liar)
    assert all(convicted[i] >= len(INVALID_VIEW_CHANGE_REASONS) for i in receivers), convicted
    assert not any(e.kind == "bad-view-change" and e.culprit != liar for _, e in world.evidence)
    details = drop_details(world, "bad-view-change", liar)
    for i in receivers:
        for variant, reason in INVALID_VIEW_CHANGE_REASONS.items():
            assert any(reason in detail for detail in details[i]), (i, variant, details[i])


def test_invalid_view_changes_leave_first_and_are_re_signed_by_the_liar():
    liar = 2
    world = cut_primary_world(liar, spec("fake-prepared-certificate"))
    view_changes = sent_messages(world, liar, "view-change")
    assert run(world)
    bodies = list(view_changes.values())
    assert len(bodies) >= 1 + 1 + len(INVALID_VIEW_CHANGE_REASONS)  # genuine, hide, lies
    for signed in bodies:  # every variant is a validly signed VIEW-CHANGE of the liar's
        assert signed.message.replica == liar and world.replicas[1]._verify(signed)
    hidden = [s for s in bodies if not s.message.prepared]
    assert len(hidden) == 1 and any(s.message.prepared for s in bodies)


def test_an_empty_prepared_set_cannot_hide_a_committed_request():
    liar = 2
    world = cut_primary_world(liar, spec("fake-prepared-certificate", variants=["hide"],
                                         keep_honest=False))
    committed: dict[int, bytes] = {}

    def note(member, effect):
        if member in (1, 3) and effect.view == 0:
            committed[effect.seq] = effect.digest

    world.execution_observers.append(note)
    new_views = sent_messages(world, 1, "new-view")
    view_changes = sent_messages(world, liar, "view-change")
    assert run(world)
    assert_safe(world)
    assert_all_executed(world)
    assert counts(world, liar)["fake-prepared-certificate"]["hide"] >= 1
    assert view_changes and all(not s.message.prepared for s in view_changes.values())
    assert committed  # view 0 committed something before the cut
    first = next(s for s in new_views.values() if s.message.view == 1)
    # n=4 with 0 cut off: the NEW-VIEW needs the liar's (empty) VIEW-CHANGE ...
    members = {decode_envelope(raw).message.replica for raw in first.message.view_changes}
    assert members == {1, 2, 3}
    # ... and still re-proposes every committed batch at its seq.
    proposed = {p.message.seq: p.message.digest
                for p in map(decode_envelope, first.message.pre_prepares)}
    for seq, digest in committed.items():
        assert proposed.get(seq) == digest, seq


def test_without_a_valid_view_change_the_liar_counts_for_nobody():
    # Only invalid variants: the view change needs every other member (n=4, 0 cut off),
    # so it waits until the primary is back; then it completes without the liar.
    liar = 2
    world = cut_primary_world(liar, spec("fake-prepared-certificate", keep_honest=False,
                                         variants=["few-prepares", "wrong-primary"]))
    world.at(4.0, world.network.heal, "heal")
    new_views = sent_messages(world, 1, "new-view")
    assert run(world)
    assert_safe(world)
    assert_all_executed(world)
    assert honest_evidence(world)["bad-view-change"] > 0
    for signed in new_views.values():
        members = {decode_envelope(raw).message.replica for raw in signed.message.view_changes}
        assert liar not in members
    assert new_views


@pytest.mark.parametrize("mode", NEW_VIEW_MODES)
def test_malicious_new_view_is_refused_and_the_next_primary_takes_over(mode):
    malicious = 1  # the primary of view 1
    world = cut_primary_world(malicious, spec("malicious-new-view", modes=[mode]))
    assert run(world)
    assert_safe(world)
    assert_all_executed(world)
    assert counts(world, malicious)["malicious-new-view"][mode] >= 1
    backups = [2, 3]
    convicted = {node for node, evidence in world.evidence
                 if evidence.kind == "bad-new-view" and evidence.culprit == malicious}
    assert convicted == set(backups)
    views = [world.replicas[i].view for i in backups]
    assert min(views) >= 2 and all(view % world.committee.n != malicious for view in views)
    assert world.replicas[malicious].view >= 2  # its inner replica followed them


def test_malicious_new_view_with_an_empty_o_set_adds_an_entry():
    # Cut off before anything is proposed: nothing prepared, so O is empty.
    malicious = 1
    world = cut_primary_world(malicious, spec("malicious-new-view", modes=["omit-entry"]),
                              cut=0.0)
    assert run(world)
    assert_safe(world)
    assert_all_executed(world)
    assert counts(world, malicious)["malicious-new-view"] == {"added-entry": 1}
    assert honest_evidence(world)["bad-new-view"] == 2
    assert any("O set has 1 entries, recomputed 0" in detail
               for details in drop_details(world, "bad-new-view", malicious).values()
               for detail in details)


def test_malicious_new_view_tampers_the_re_sent_new_view_the_same_way():
    malicious = 1
    world = cut_primary_world(malicious, spec("malicious-new-view"))
    new_views = sent_messages(world, malicious, "new-view")
    assert run(world)
    assert_safe(world)
    per_view = Counter(s.message.view for s in new_views.values())
    assert per_view and all(count == 1 for count in per_view.values())  # one version a view
    node = world.nodes[malicious]
    (behaviour,) = node.behaviours
    assert len(behaviour._tampered) <= MAX_TAMPERED_NEW_VIEWS_REMEMBERED


@pytest.mark.parametrize("name", ["fake-prepared-certificate", "malicious-new-view"])
def test_view_change_behaviours_change_nothing_without_a_view_change(name):
    world = byzantine_world(PRIMARY, spec(name))
    baseline = make_world()
    assert run(world) and run(baseline)
    assert_safe(world)
    assert counts(world, PRIMARY) == {name: {}}
    assert world.trace_digest() == baseline.trace_digest()


def test_lying_view_changes_are_remembered_for_a_few_views_only():
    liar = 2
    world = cut_primary_world(liar, spec("fake-prepared-certificate"))
    assert run(world)
    node = world.nodes[liar]
    (behaviour,) = node.behaviours
    genuine = decode_envelope(behaviour._variants[1][0])  # view 1's genuine VIEW-CHANGE
    assert genuine.message.prepared
    now = world.local_time(liar)
    for view in range(2, 40):  # retransmissions and later views of a long outage
        change = node.sign(genuine.message.model_copy(update={"view": view}))
        for _ in range(3):
            out = behaviour.outgoing([Broadcast(change)], now)
            assert len(out) == len(INVALID_VIEW_CHANGE_REASONS)  # the valid ones wait
    assert len(behaviour._variants) <= MAX_FAKE_VIEW_CHANGES_REMEMBERED
    assert len(behaviour._held) <= MAX_HELD_VIEW_CHANGES
    assert behaviour.counts["held-overflow"] > 0
    released = behaviour.tick(now + 3600.0)
    assert len(released) == MAX_HELD_VIEW_CHANGES and not behaviour._held


# ------------------------------------------------------------------ composition


def test_behaviours_compose_equivocation_with_vote_stuffing():
    world = byzantine_world(PRIMARY, spec("equivocate"), spec("duplicate-votes"))
    run(world, max_time=STALL_TIME)
    assert_safe(world)
    evidence = honest_evidence(world)
    assert evidence["equivocation"] > 0
    assert counts(world, PRIMARY)["equivocate"]["equivocated"] > 0


def test_composition_order_never_hides_messages_from_crafting_behaviours():
    # Listed first, slow still delays the equivocated proposals (it runs after equivocate).
    world = byzantine_world(PRIMARY, spec("slow", delay_ms=20), spec("equivocate"))
    assert [b.name for b in world.nodes[PRIMARY].behaviours] == ["equivocate", "slow"]
    run(world, max_time=STALL_TIME)
    assert_safe(world)
    assert honest_evidence(world)["equivocation"] > 0
    assert counts(world, PRIMARY)["slow"]["delayed"] > 0


def test_behaviours_compose_on_a_backup_and_start_at_their_time():
    start_ms = 150.0
    world = byzantine_world(BACKUP, spec("forge-signature"), spec("duplicate-votes"),
                            spec("silent", from_ms=start_ms))
    sent = record_sends(world, BACKUP)
    assert run(world)
    assert_safe(world)
    assert sent and all(at * 1000 < start_ms for at, *_ in sent)
    assert honest_drops(world)["bad-signature"] > 0
    assert_all_executed(world)


def test_same_seed_same_trace():
    def trace(seed: int) -> str:
        world = byzantine_world(BACKUP, spec("replay", every_ms=20), spec("flood"),
                                spec("forge-signature"), seed=seed)
        assert run(world)
        return world.trace_digest()

    assert trace(3) == trace(3)
    assert trace(3) != trace(4)


def test_wrapper_survives_any_input():
    world = byzantine_world(BACKUP, *(BehaviourSpec(name, {}) for name in BEHAVIOURS
                                      if name != "crash"))
    node = world.nodes[BACKUP]
    g_key = world.member_keys[2]
    impostor = sign_message(Prepare(view=0, seq=1, digest=bytes(32), replica=2), g_key,
                            world.committee.digest)
    checkpoint = sign_message(Checkpoint(seq=10**6, state_digest=bytes(32), replica=3),
                              world.member_keys[3], world.committee.digest)
    now = world.local_time(BACKUP)
    for sender, data in [(2, b""), (2, b"\x00" * 10), (3, bytes(range(256)) * 300),
                         (0, impostor.raw), (2, impostor.raw), (3, checkpoint.raw),
                         ("client-0", impostor.raw), ("stranger", b"junk"),
                         (2, b"\xa2" * (MAX_RECORDED_MESSAGE_BYTES + 1))]:
        assert isinstance(node.receive(sender, data, now), list)
    assert isinstance(node.handle_timer(now + 10.0), list)
    (replay,) = [b for b in node.behaviours if b.name == "replay"]
    assert 0 < len(replay._recorded) and all(
        len(raw) <= MAX_RECORDED_MESSAGE_BYTES for raw in replay._recorded)


# ------------------------------------------------------------------ twins


def test_one_twin_primary_at_n4_stays_safe():
    world = make_world()
    make_twin(world, PRIMARY, ([1], [2, 3]))
    assert run(world)
    assert_safe(world)
    assert PRIMARY in world.byzantine
    assert_all_executed(world)


def test_one_twin_backup_at_n4_stays_safe():
    world = make_world()
    make_twin(world, BACKUP, ([0, 2], [3]))
    assert run(world)
    assert_safe(world)
    assert_all_executed(world)


def test_twin_primary_seeing_different_clients_equivocates_without_attack_code():
    world = make_world()
    make_twin(world, PRIMARY, ([1, "client-0"], [2, 3, "client-1"]), isolate=False)
    run(world, max_time=STALL_TIME)
    assert_safe(world)
    assert honest_evidence(world)["equivocation"] > 0


def test_negative_control_two_twins_at_n4_diverge_and_the_oracle_says_so():
    """f+1 = 2 Byzantine members (twins of 0 and 1): side A (0a, 1a, 2, client-0) and side B
    (0b, 1b, 3, client-1) are each a quorum and commit different batches at one seq."""
    caught = []
    for seed in range(3):
        world = make_world(seed=seed)
        groups = ([2, "client-0"], [3, "client-1"])
        make_twin(world, 0, groups)
        make_twin(world, 1, groups)
        world.network.one_way([2], [3])
        world.network.one_way([3], [2])
        run(world, max_time=10.0)
        world.oracles.final_checks()
        oracles = {violation.oracle for violation in world.violations}
        caught.append("agreement" in oracles)
        if "agreement" in oracles:
            first = next(v for v in world.violations if v.oracle == "agreement")
            assert set(first.members) == {2, 3} and first.seq is not None
    assert any(caught)


# ------------------------------------------------------------------ Byzantine client


def test_bad_client_valid_for_some_replicas_only_and_conflicting_requests():
    world = make_world()
    make_bad_client(world, "client-0", {})
    bad = world.clients["client-0"]
    assert isinstance(bad, ByzantineClient) and world.nodes["client-0"] is bad
    assert run(world)
    assert_safe(world)
    assert bad.counts["corrupted"] > 0 and bad.counts["conflicting"] > 0
    assert bad.stats.completed > 0 and bad.id == "client-0"
    # The primary refuses the corrupted copy; the conflicting request relayed by backups 2
    # and 3 finds the timestamp taken: one operation per timestamp, everywhere.
    primary = world.replicas[PRIMARY].stats.dropped
    assert primary["bad-signature"] > 0
    assert primary["duplicate-request"] + primary["stale-request"] > 0
    assert_all_executed(world)
    assert len({world.replicas[i].state_digest() for i in world.honest}) == 1
    assert not world.byzantine  # a Byzantine client does not make any member Byzantine


def test_bad_client_corrupting_for_every_backup_still_completes():
    world = make_world()
    make_bad_client(world, "client-1", {"corrupt_for": [1, 2, 3], "conflicting": False})
    assert run(world)
    assert_safe(world)
    assert all(world.replicas[i].stats.dropped["bad-signature"] > 0 for i in (1, 2, 3))
    assert_all_executed(world)
