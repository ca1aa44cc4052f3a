"""Byzantine members and clients for the simulated world (DESIGN.md section 8, issue 3).

A Byzantine member is a wrapper node around the member's *honest* ``Replica``: the honest code
keeps running underneath and the behaviours transform what goes in and what comes out. A
behaviour signs only with the member's own key (``world.member_keys[member]``); anything
claiming another principal must fail verification at honest receivers, which is the point.

Public API (the scenario runner calls exactly this):

* ``BehaviourSpec(name, params, from_ms)`` and ``BEHAVIOURS`` (name -> class);
* ``validate_behaviour(name, params)`` -- ``ValueError`` with one line naming the behaviour
  and the bad or unknown parameter;
* ``make_byzantine(world, member, specs)`` -- one wrapper node applying every spec, each from
  its ``from_ms`` (global world time). Outgoing traffic passes the behaviours in stage order
  -- message-crafting ones (in spec order), then ``flood``, ``selective``, ``slow``,
  ``silent`` -- so each sees what the earlier ones produced and the order of a spec list
  never hides messages from a crafting behaviour (``slow`` before ``equivocate`` would);
* ``make_twin(world, member, groups)`` -- two honest instances under one key (Twins);
* ``make_bad_client(world, client_id, params)`` -- a Byzantine client.

Behaviours (parameters and defaults in each class's ``PARAMS``):

==========================  ============================================================
silent                      drops everything it would send
crash                       from ``from_ms`` on neither receives nor sends (nor fires timers)
equivocate                  as primary: one batch to some backups, another (``mode: digest``)
                            or the same batch at another seq (``mode: seq``) to the others
replay                      re-sends recorded old messages (its own and others') now and then
forge-signature             copies with flipped signature bits, signed for another committee,
                            naming another member, and client requests it signed itself
spoof-sender                copies whose body names another member (signed with its own key)
wrong-digest                pre-prepares whose digest is not the batch's; votes for a digest
                            that matches nothing
seq-abuse                   messages above the window, at 2**63-1, at/below the low watermark,
                            at gaps ahead
duplicate-votes             every prepare/commit several times plus a conflicting one
fake-checkpoint             checkpoints with a wrong state digest
flood                       every message ``rate`` times plus junk (optionally oversized) frames
selective                   never sends to ``drop_to``
slow                        delays everything it sends by ``delay_ms``
fake-prepared-certificate   with its VIEW-CHANGE, variants whose P set lies (hidden, too few,
                            duplicated or forged prepares, another digest, a wrong primary)
malicious-new-view          as a new view's primary: a NEW-VIEW that omits or replaces an O-set
                            entry, or has too few or a duplicated VIEW-CHANGE
==========================  ============================================================

Determinism: every random choice comes from ``world.rng(f"byzantine/{member}/{i}/{name}")``
(one generator per behaviour, so adding one never shifts another). Memory: everything a
behaviour remembers is capped by a named constant. Robustness: incoming bytes are never
decoded by the wrapper except for replay's type label (inside ``try``); the honest replica
handles whatever arrives. ``Persist``/``Execute``/``Evidence``/``CheckpointStable`` effects
always pass through untouched, so the inner replica's invariants (persist before send) hold.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from bftdeliberate import kv
from bftdeliberate.errors import DecodeError, LocalError
from bftdeliberate.pbft.effects import Broadcast, Reply, Send
from bftdeliberate.pbft.replica import batch_digest
from bftdeliberate.pbft.viewchange import NULL_TIMESTAMP
from bftdeliberate.wire.limits import MAX_MESSAGE_SIZE
from bftdeliberate.wire.messages import (
    MAX_COUNTER,
    SIGNATURE_SIZE,
    Checkpoint,
    Commit,
    NewView,
    Prepare,
    PrePrepare,
    Request,
    SignedMessage,
    ViewChange,
    decode_envelope,
    encode_envelope,
    sign_message,
)
from simulator.world import Delayed

if TYPE_CHECKING:
    from bftdeliberate.pbft.client import Client
    from bftdeliberate.pbft.replica import Replica
    from simulator.world import Node, World

# ------------------------------------------------------------------ named limits

#: Equivocating proposals remembered (so retransmissions re-send the same two versions).
MAX_EQUIVOCATIONS_REMEMBERED = 1024
#: Messages a replay behaviour may remember (its ``capacity`` parameter is capped here).
MAX_REPLAY_CAPACITY = 4096
#: Replay rounds in a row without a newly recorded message before replay pauses (it resumes
#: with the next new message), so that an idle world goes quiet.
REPLAY_IDLE_ROUNDS_BEFORE_PAUSE = 10
#: Larger messages (junk frames from a flooding peer) are not recorded for replay.
MAX_RECORDED_MESSAGE_BYTES = 256 * 1024
MAX_REPLAYS_PER_ROUND = 100
#: Shortest tick of any timed behaviour (a smaller one would dominate the event budget).
MIN_TICK_MS = 1.0
#: Longest delay / interval a parameter may ask for (one simulated minute).
MAX_INTERVAL_MS = 60_000.0
MAX_DUPLICATE_COPIES = 32
MAX_FLOOD_RATE = 100
MAX_JUNK_FRAMES_PER_STEP = 64
#: Extra copies flood adds in one step (one received message or timer) at most.
MAX_FLOOD_COPIES_PER_STEP = 256
DEFAULT_JUNK_BYTES = 64 * 1024
#: With ``oversized``, one junk frame in this many exceeds the message limit by up to the
#: margin (rare: each costs megabytes of simulated traffic).
OVERSIZED_JUNK_EVERY = 32
OVERSIZED_JUNK_MARGIN = 1024
#: Largest seq distance of a gap.
MAX_GAP = 1 << 20
#: Largest "every k-th message" divisor.
MAX_EVERY = 1_000_000
#: Outgoing pipeline stages: craft messages, multiply them, choose receivers, delay, drop all.
STAGE_CRAFT, STAGE_AMPLIFY, STAGE_ROUTE, STAGE_DELAY, STAGE_DROP = range(5)
#: Twin-to-twin deliveries remembered (which instance sent which bytes to which twin).
MAX_TWIN_ROUTES_REMEMBERED = 65_536
#: Views whose lying VIEW-CHANGEs / tampered NEW-VIEW are kept for re-sends (each can be
#: large: a P set of up to a window of certificates).
MAX_FAKE_VIEW_CHANGES_REMEMBERED = 2
MAX_TAMPERED_NEW_VIEWS_REMEMBERED = 4
#: Valid view-changes held back behind the invalid ones at most (retransmissions add more).
MAX_HELD_VIEW_CHANGES = 64

# ------------------------------------------------------------------ parameters


@dataclass(frozen=True, slots=True)
class Param:
    """One behaviour parameter: its default, its kind and its bounds.

    Kinds: ``int``, ``number`` (int or float), ``bool``, ``choice`` (one of ``choices``),
    ``subset`` (a list of ``choices``), ``members`` (a list of member ids, or None for the
    behaviour's default), ``nodes`` (member ids or client ids, or None).
    """

    default: Any
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    doc: str = ""


def _describe(param: Param) -> str:
    if param.kind == "int":
        return f"an integer in {param.low:g}..{param.high:g}"
    if param.kind == "number":
        return f"a number in {param.low:g}..{param.high:g}"
    if param.kind == "bool":
        return "true or false"
    if param.kind == "choice":
        return f"one of {', '.join(param.choices)}"
    if param.kind == "subset":
        return f"a list of {', '.join(param.choices)}"
    if param.kind == "members":
        return "a list of member ids (non-negative integers) or null"
    return "a list of member ids or client ids, or null"


def _valid_value(param: Param, value: Any) -> bool:
    kind = param.kind
    if kind == "bool":
        return type(value) is bool
    if kind in ("int", "number"):
        if type(value) is bool or not isinstance(value, (int, float)):
            return False
        if kind == "int" and type(value) is not int:
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return param.low <= value <= param.high  # type: ignore[operator]
    if kind == "choice":
        return isinstance(value, str) and value in param.choices
    if kind == "subset":
        return isinstance(value, (list, tuple)) and all(
            isinstance(item, str) and item in param.choices for item in value)
    if value is None:
        return True
    if not isinstance(value, (list, tuple)):
        return False
    if kind == "members":
        return all(type(item) is int and item >= 0 for item in value)
    return all((type(item) is int and item >= 0) or (isinstance(item, str) and item)
               for item in value)


def resolve_params(owner: str, table: dict[str, Param], params: Any) -> dict[str, Any]:
    """Defaults merged with ``params``, each checked; ``ValueError`` names the first problem."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        # ValueError like every other bad parameter: the spec loader reports those by field.
        raise ValueError(f"{owner}: params must be an object, "  # noqa: TRY004
                         f"got {type(params).__name__}")
    for name in params:
        if name not in table:
            known = ", ".join(table) or "none"
            raise ValueError(f"{owner}: unknown param {name!r} (known: {known})")
    resolved = {}
    for name, param in table.items():
        value = params.get(name, param.default)
        if name in params and not _valid_value(param, value):
            raise ValueError(f"{owner}: param {name!r} must be {_describe(param)}, got {value!r}")
        resolved[name] = list(value) if isinstance(value, (list, tuple)) else value
    return resolved


# ------------------------------------------------------------------ effects helpers


@dataclass(frozen=True, slots=True)
class RawSend:
    """Send arbitrary bytes to ``to`` (junk frames, replayed bytes). Only Byzantine wrappers
    produce it; the wrapper hands it to ``world.transmit`` (the World does not know it)."""

    to: Any
    data: bytes
    message_type: str


_TRANSMISSIONS = (Send, Broadcast, Reply, RawSend, Delayed)


def _signed(effect: Any) -> SignedMessage | None:
    """The signed message a Send/Broadcast/Reply carries, else None."""
    if isinstance(effect, (Send, Broadcast, Reply)):
        return effect.message
    return None


def _same_route(effect: Send | Broadcast | Reply, message: SignedMessage) -> Any:
    """An effect sending ``message`` where ``effect`` sends its own."""
    if isinstance(effect, Send):
        return Send(effect.to, message)
    if isinstance(effect, Reply):
        return Reply(effect.client, message)
    return Broadcast(message)


def _other_digest(digest: bytes, salt: bytes) -> bytes:
    """A digest that matches nothing, derived deterministically (retransmissions repeat it)."""
    return hashlib.sha256(salt + digest).digest()


def _rebuild(message: Any, **changes: Any) -> Any:
    """The same message model with some fields changed (validated again)."""
    return type(message)(**{**message.__dict__, **changes})


# ------------------------------------------------------------------ behaviours


class Behaviour:
    """Base class: a named, parameterised transformation of one member's traffic.

    Hooks (all optional): ``incoming(sender, data, now) -> data | None`` (None drops it),
    ``outgoing(effects, now) -> effects``, ``tick(now) -> effects`` at ``deadline()`` (local
    clock of the member). ``halts``: while active, the member neither receives nor sends.
    ``counts`` says what the behaviour did (for tests and reports).
    """

    name: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, Param]] = {}
    halts: ClassVar[bool] = False
    #: Position in the outgoing pipeline (see ``STAGE_*``); equal stages keep spec order.
    stage: ClassVar[int] = 0

    def __init__(self, host: ByzantineReplica, params: dict[str, Any], from_ms: float,
                 index: int) -> None:
        self.host = host
        self.world = host.world
        self.member = host.member
        self.p = resolve_params(f"behaviour {self.name!r}", self.PARAMS, params)
        self.from_ms = from_ms
        self.rng = self.world.rng(f"byzantine/{self.member}/{index}/{self.name}")
        self.counts: Counter[str] = Counter()

    def active(self) -> bool:
        return self.world.now * 1000.0 >= self.from_ms

    def incoming(self, sender: Node, data: bytes, now: float) -> bytes | None:
        return data

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        return effects

    def tick(self, now: float) -> list[Any]:
        return []

    def deadline(self) -> float | None:
        return None

    # Helpers for subclasses.
    def own(self, effect: Any, *types: type) -> SignedMessage | None:
        """The message of a Send/Broadcast this member signed, if of one of ``types``."""
        if not isinstance(effect, (Send, Broadcast)):
            return None
        message = effect.message.message
        if isinstance(message, types) and getattr(message, "replica", None) == self.member:
            return effect.message
        return None

    def first_tick(self, interval_ms: float) -> float:
        """Local time of the first tick: ``interval_ms`` after the behaviour starts."""
        start = max(self.world.now, self.from_ms / 1000.0)
        return self.world.local_time(self.member, start) + interval_ms / 1000.0


class Silent(Behaviour):
    """Drops everything it would send (it still receives, executes and persists)."""

    name = "silent"
    stage = STAGE_DROP

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        kept = [e for e in effects if not isinstance(e, _TRANSMISSIONS)]
        self.counts["dropped"] += len(effects) - len(kept)
        return kept


class Crash(Behaviour):
    """Crash-stop from ``from_ms``: neither receives nor sends, timers stop. A wrapper state
    (the World still sees the member up); effects already delayed by ``slow`` still leave."""

    name = "crash"
    halts = True


class Equivocate(Behaviour):
    """As primary, every PRE-PREPARE it broadcasts goes in two versions: the honest one to
    the backups outside ``split`` and an alternative, validly signed with its own key, to the
    backups in ``split`` (default: the upper half of the other members).

    * ``mode: digest`` -- another batch for the same (view, seq) with its correct digest: the
      batch reversed (2+ requests), emptied (1 request) or re-timestamped (empty batch);
    * ``mode: seq`` -- the same batch at seq + ``shift`` (the pbft-java agreement bug: the
      same request at two sequence numbers).

    ``reveal``: retransmissions swap the versions, so honest backups end up holding both
    signed proposals (``Evidence``). Harmless when the member is not primary (it proposes
    nothing). Liveness then needs a view change (next issue).
    """

    name = "equivocate"
    PARAMS: ClassVar[dict[str, Param]] = {
        "mode": Param("digest", "choice", choices=("digest", "seq"),
                      doc="digest: another batch; seq: the same batch at another seq"),
        "split": Param(None, "members", doc="backups that get the alternative version"),
        "shift": Param(1, "int", 1, MAX_GAP, doc="seq mode: seq distance of the copy"),
        "reveal": Param(True, "bool", doc="retransmissions swap the two versions"),
    }

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        others = self.host.others
        split = self.p["split"]
        self.split = set(others[len(others) // 2:] if split is None else split)
        # (view, seq) -> [alternative or None, broadcasts so far]
        self._versions: OrderedDict[tuple[int, int], list[Any]] = OrderedDict()

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        for effect in effects:
            signed = self.own(effect, PrePrepare)
            if signed is None:
                out.append(effect)
                continue
            entry = self._version(signed)
            alternative = entry[0]
            if alternative is None:
                out.append(effect)
                continue
            swap = False
            if isinstance(effect, Broadcast):
                swap = self.p["reveal"] and entry[1] > 0
                entry[1] += 1
                targets: Iterable[int] = self.host.others
            else:
                targets = (effect.to,)
            for to in targets:
                out.append(Send(to, alternative if (to in self.split) != swap else signed))
            self.counts["equivocated"] += 1
        return out

    def _version(self, signed: SignedMessage) -> list[Any]:
        proposal: PrePrepare = signed.message  # type: ignore[assignment]
        key = (proposal.view, proposal.seq)
        entry = self._versions.get(key)
        if entry is None:
            entry = self._versions[key] = [self._alternative(proposal), 0]
            if len(self._versions) > MAX_EQUIVOCATIONS_REMEMBERED:
                self._versions.popitem(last=False)
        return entry

    def _alternative(self, proposal: PrePrepare) -> SignedMessage | None:
        if self.p["mode"] == "seq":
            seq = proposal.seq + self.p["shift"]
            return self.host.sign(_rebuild(proposal, seq=seq)) if seq <= MAX_COUNTER else None
        batch, timestamp = _other_batch(proposal.batch, proposal.timestamp)
        return self.host.sign(_rebuild(proposal, batch=batch, timestamp=timestamp,
                                       digest=batch_digest(timestamp, batch,
                                                           proposal.origin_view)))


class Replay(Behaviour):
    """Records the messages it receives and sends (at most ``capacity``, oldest forgotten) and
    every ``every_ms`` re-sends ``count`` of them picked at random: its own to their original
    destination, others' (and junk) to a random member -- with its own transport identity, so
    honest receivers see duplicates, stale or out-of-window messages and sender mismatches.
    Pauses after ``REPLAY_IDLE_ROUNDS_BEFORE_PAUSE`` rounds with nothing new recorded; never
    records messages above ``MAX_RECORDED_MESSAGE_BYTES`` (memory stays bounded)."""

    name = "replay"
    PARAMS: ClassVar[dict[str, Param]] = {
        "every_ms": Param(100.0, "number", MIN_TICK_MS, MAX_INTERVAL_MS,
                          doc="interval between replay rounds"),
        "count": Param(3, "int", 1, MAX_REPLAYS_PER_ROUND, doc="messages re-sent per round"),
        "capacity": Param(256, "int", 1, MAX_REPLAY_CAPACITY, doc="messages remembered"),
    }

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # raw bytes -> the effect that sent it (own messages) or None (received)
        self._recorded: OrderedDict[bytes, Any] = OrderedDict()
        self._next: float | None = self.first_tick(self.p["every_ms"])
        self._idle_rounds = 0

    def incoming(self, sender: Node, data: bytes, now: float) -> bytes | None:
        self._record(data, None, now)
        return data

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        for effect in effects:
            signed = _signed(effect)
            if signed is not None:
                self._record(signed.raw, effect, now)
        return effects

    def _record(self, raw: bytes, effect: Any, now: float) -> None:
        if len(raw) > MAX_RECORDED_MESSAGE_BYTES or raw in self._recorded:
            return
        self._recorded[raw] = effect
        if len(self._recorded) > self.p["capacity"]:
            self._recorded.popitem(last=False)
        self._idle_rounds = 0
        if self._next is None:
            self._next = now + self.p["every_ms"] / 1000.0

    def deadline(self) -> float | None:
        return self._next

    def tick(self, now: float) -> list[Any]:
        self._next = now + self.p["every_ms"] / 1000.0
        if not self.active():
            return []
        if not self._recorded:
            self._next = None  # nothing to replay yet: the first recorded message re-arms
            return []
        self._idle_rounds += 1
        if self._idle_rounds > REPLAY_IDLE_ROUNDS_BEFORE_PAUSE:
            self._next = None
            return []
        keys = list(self._recorded)
        effects: list[Any] = []
        for _ in range(self.p["count"]):
            raw = self.rng.choice(keys)
            effect = self._recorded[raw]
            if effect is None:
                to = self.rng.choice(self.host.others)
                effects.append(RawSend(to, raw, _message_type(raw)))
            else:
                effects.append(effect)
            self.counts["replayed"] += 1
        return effects


def _message_type(data: bytes) -> str:
    try:
        return decode_envelope(data).type
    except DecodeError:
        return "junk"


class ForgeSignature(Behaviour):
    """Before every ``every``-th message it sends, forged copies: ``flip_bits`` distinct bits
    of the signature flipped (bad-signature), the body signed with its own key under another
    committee's domain (``wrong_committee``: bad-signature), the body naming another member
    and signed with its own key (``impersonate``: sender-mismatch). ``forge_requests``: a
    client request it signed itself, relayed to every member (bad-signature; the validity
    oracle checks none ever executes)."""

    name = "forge-signature"
    PARAMS: ClassVar[dict[str, Param]] = {
        "flip_bits": Param(1, "int", 1, SIGNATURE_SIZE * 8, doc="signature bits flipped"),
        "wrong_committee": Param(True, "bool", doc="copies signed for another committee"),
        "impersonate": Param(True, "bool", doc="copies naming another member"),
        "forge_requests": Param(True, "bool", doc="client requests it signed itself"),
        "every": Param(1, "int", 1, MAX_EVERY, doc="forge around every k-th message"),
    }

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._seen = 0
        self._other_committee = _other_digest(self.world.committee.digest, b"other-committee")

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        forged_any = False
        for effect in effects:
            signed = _signed(effect)
            if signed is not None:
                self._seen += 1
                if self._seen % self.p["every"] == 0:
                    out.extend(_same_route(effect, copy) for copy in self._forgeries(signed))
                    forged_any = True
            out.append(effect)
        if forged_any and self.p["forge_requests"] and self.world.committee.clients:
            out.append(Broadcast(self._forged_request(now)))
            self.counts["forged-request"] += 1
        return out

    def _forgeries(self, signed: SignedMessage) -> list[SignedMessage]:
        copies = [_flip_signature(signed, self.rng, self.p["flip_bits"])]
        self.counts["flipped"] += 1
        message = signed.message
        if self.p["wrong_committee"]:
            copies.append(sign_message(message, self.host.key, self._other_committee))
            self.counts["wrong-committee"] += 1
        if self.p["impersonate"] and getattr(message, "replica", None) == self.member:
            victim = self.rng.choice(self.host.others)
            copies.append(self.host.sign(_rebuild(message, replica=victim)))
            self.counts["impersonated"] += 1
        return copies

    def _forged_request(self, now: float) -> SignedMessage:
        client = self.rng.choice(self.world.committee.clients).id
        request = Request(client=client, timestamp=self.rng.randrange(1, MAX_COUNTER),
                          operation=kv.put(f"forged-by-{self.member}", b"\x00"))
        return self.host.sign(request)


def _flip_signature(signed: SignedMessage, rng: Any, bits: int) -> SignedMessage:
    flipped = bytearray(signed.signature)
    for bit in rng.sample(range(len(flipped) * 8), bits):
        flipped[bit // 8] ^= 1 << (bit % 8)
    signature = bytes(flipped)
    return SignedMessage(signed.body, signature, signed.message,
                         raw=encode_envelope(signed.body, signature))


class SpoofSender(Behaviour):
    """Before every ``every``-th message it sends, a copy whose body names another member
    (one of ``victims``, default every other member), signed with its own key: honest
    receivers must drop it as sender-mismatch (the transport identity is the truth).
    ``keep_honest: false`` sends only the spoofed copies."""

    name = "spoof-sender"
    PARAMS: ClassVar[dict[str, Param]] = {
        "victims": Param(None, "members", doc="members it claims to be"),
        "keep_honest": Param(True, "bool", doc="also send the genuine message"),
        "every": Param(1, "int", 1, MAX_EVERY, doc="spoof every k-th message"),
    }

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        victims = self.p["victims"]
        self.victims = [v for v in (self.host.others if victims is None else victims)
                        if v != self.member] or list(self.host.others)
        self._seen = 0

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        for effect in effects:
            signed = _signed(effect)
            message = signed.message if signed is not None else None
            if message is None or getattr(message, "replica", None) != self.member:
                out.append(effect)
                continue
            self._seen += 1
            if self._seen % self.p["every"] == 0:
                victim = self.rng.choice(self.victims)
                out.append(_same_route(effect, self.host.sign(_rebuild(message, replica=victim))))
                self.counts["spoofed"] += 1
                if not self.p["keep_honest"]:
                    continue
            out.append(effect)
        return out


class WrongDigest(Behaviour):
    """Before each of its PRE-PREPAREs, one with the same batch and a digest that does not
    hash from it (honest backups: digest-mismatch, or a conflicting pre-prepare and
    ``Evidence`` when the honest one came first); before each of its PREPAREs/COMMITs, one for
    a digest that matches nothing (conflicting votes). ``keep_honest: false`` sends only the
    wrong ones (a primary then needs a view change)."""

    name = "wrong-digest"
    PARAMS: ClassVar[dict[str, Param]] = {
        "keep_honest": Param(True, "bool", doc="also send the genuine message after"),
    }

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        for effect in effects:
            signed = self.own(effect, PrePrepare, Prepare, Commit)
            if signed is None:
                out.append(effect)
                continue
            message = signed.message
            wrong = _other_digest(message.digest, b"wrong-digest")  # type: ignore[union-attr]
            out.append(_same_route(effect, self.host.sign(_rebuild(message, digest=wrong))))
            self.counts[f"wrong-{message.type}"] += 1
            if self.p["keep_honest"]:
                out.append(effect)
        return out


SEQ_TARGETS = ("above-window", "max-seq", "at-low-watermark", "below-low-watermark",
               "gap-votes", "gap-proposal")


class SeqAbuse(Behaviour):
    """Alongside every ``every``-th PRE-PREPARE/PREPARE/COMMIT it broadcasts, copies at abusive
    sequence numbers (``targets``): h+L+1 (``above-window``), 2**63-1 (``max-seq``), h
    (``at-low-watermark``), h-1 (``below-low-watermark``) -- all out-of-window for honest
    replicas; ``gap-votes``: votes for a digest that matches nothing at seq + ``gap`` (inside
    the window: honest replicas hold them, then see its real vote there as conflicting);
    ``gap-proposal`` (primary, not default): the same batch again at seq + ``gap`` -- the same
    request at two seqs; liveness then needs a view change."""

    name = "seq-abuse"
    PARAMS: ClassVar[dict[str, Param]] = {
        "targets": Param(list(SEQ_TARGETS[:-1]), "subset", choices=SEQ_TARGETS,
                         doc="which abuses (gap-proposal is opt-in)"),
        "gap": Param(3, "int", 1, MAX_GAP, doc="seq distance of the gap targets"),
        "every": Param(1, "int", 1, MAX_EVERY, doc="abuse around every k-th message"),
    }

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._seen = 0

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        for effect in effects:
            signed = self.own(effect, PrePrepare, Prepare, Commit)
            if signed is not None and isinstance(effect, Broadcast):
                self._seen += 1
                if self._seen % self.p["every"] == 0:
                    out.extend(Broadcast(abuse) for abuse in self._abuses(signed.message))
            out.append(effect)
        return out

    def _abuses(self, message: Any) -> list[SignedMessage]:
        inner = self.host.replica
        low = inner.low_watermark
        seqs = {"above-window": low + inner.config.log_window + 1, "max-seq": MAX_COUNTER,
                "at-low-watermark": low, "below-low-watermark": max(low - 1, 0)}
        abuses: list[SignedMessage] = []
        done: set[int] = set()
        for target in self.p["targets"]:
            changes: dict[str, Any] | None = None
            gap_seq = message.seq + self.p["gap"]
            if target in seqs and seqs[target] not in done:
                changes = {"seq": seqs[target]}
                done.add(seqs[target])
            elif target == "gap-votes" and not isinstance(message, PrePrepare):
                changes = {"seq": gap_seq, "digest": _other_digest(message.digest, b"gap")}
            elif target == "gap-proposal" and isinstance(message, PrePrepare):
                changes = {"seq": gap_seq}
            if changes is None or changes["seq"] > MAX_COUNTER:
                continue
            abuses.append(self.host.sign(_rebuild(message, **changes)))
            self.counts[target] += 1
        return abuses


class DuplicateVotes(Behaviour):
    """Every PREPARE/COMMIT it sends goes ``copies`` times, then (``conflicting``) a vote of
    the same kind for another digest: honest replicas count distinct signers only, drop the
    duplicates and keep the conflicting pair as ``Evidence``."""

    name = "duplicate-votes"
    PARAMS: ClassVar[dict[str, Param]] = {
        "copies": Param(3, "int", 1, MAX_DUPLICATE_COPIES, doc="sends of each vote"),
        "conflicting": Param(True, "bool", doc="plus a vote for another digest"),
    }

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        for effect in effects:
            signed = self.own(effect, Prepare, Commit)
            if signed is None:
                out.append(effect)
                continue
            out.extend([effect] * self.p["copies"])
            self.counts["duplicated"] += self.p["copies"] - 1
            if self.p["conflicting"]:
                message = signed.message
                other = _other_digest(message.digest, b"conflicting-vote")  # type: ignore[union-attr]
                out.append(_same_route(effect, self.host.sign(_rebuild(message, digest=other))))
                self.counts["conflicting"] += 1
        return out


class FakeCheckpoint(Behaviour):
    """Its CHECKPOINTs carry a wrong state digest (``keep_honest: true``: the fake one, then
    the real one -- a conflicting pair). With at most f such members a checkpoint still needs
    2f+1 matching honest votes to become stable."""

    name = "fake-checkpoint"
    PARAMS: ClassVar[dict[str, Param]] = {
        "keep_honest": Param(False, "bool", doc="also send the genuine checkpoint after"),
    }

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        for effect in effects:
            signed = self.own(effect, Checkpoint)
            if signed is None:
                out.append(effect)
                continue
            message: Checkpoint = signed.message  # type: ignore[assignment]
            fake = _other_digest(message.state_digest, b"fake-checkpoint")
            out.append(_same_route(effect, self.host.sign(_rebuild(message, state_digest=fake))))
            self.counts["faked"] += 1
            if self.p["keep_honest"]:
                out.append(effect)
        return out


class Flood(Behaviour):
    """Every message it sends goes ``rate`` times, and each step that sends anything adds
    ``junk_frames`` frames of 1..``max_bytes`` bytes to random members: random bytes, or a
    well-formed envelope around a random body. ``oversized``: every
    ``OVERSIZED_JUNK_EVERY``-th junk frame is larger than the message limit (4 MiB + up to
    ``OVERSIZED_JUNK_MARGIN``). Bounded per step by ``MAX_FLOOD_COPIES_PER_STEP`` and
    ``MAX_JUNK_FRAMES_PER_STEP``, so the defaults keep a 50-request n=4 run fast."""

    name = "flood"
    stage = STAGE_AMPLIFY
    PARAMS: ClassVar[dict[str, Param]] = {
        "rate": Param(3, "int", 1, MAX_FLOOD_RATE, doc="sends of each message"),
        "junk_frames": Param(1, "int", 0, MAX_JUNK_FRAMES_PER_STEP,
                             doc="junk frames per step that sends"),
        "max_bytes": Param(DEFAULT_JUNK_BYTES, "int", 1, MAX_MESSAGE_SIZE,
                           doc="largest ordinary junk frame"),
        "oversized": Param(False, "bool", doc="some junk frames above the message limit"),
    }

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        extra_budget = MAX_FLOOD_COPIES_PER_STEP
        sent = False
        for effect in effects:
            out.append(effect)
            if not isinstance(effect, _TRANSMISSIONS):
                continue
            sent = True
            extra = min(self.p["rate"] - 1, extra_budget)
            extra_budget -= extra
            out.extend([effect] * extra)
            self.counts["copies"] += extra
        if sent:
            out.extend(self._junk() for _ in range(self.p["junk_frames"]))
        return out

    def _junk(self) -> RawSend:
        self.counts["junk"] += 1
        if self.p["oversized"] and self.counts["junk"] % OVERSIZED_JUNK_EVERY == 0:
            # Content is irrelevant (the size alone is refused): cheap repeated bytes.
            size = MAX_MESSAGE_SIZE + self.rng.randint(1, OVERSIZED_JUNK_MARGIN)
            data = (self.rng.randbytes(64) * (size // 64 + 1))[:size]
            self.counts["oversized"] += 1
        else:
            size = self.rng.randint(1, self.p["max_bytes"])
            if self.rng.random() < 0.5 or size <= SIGNATURE_SIZE + 16:
                data = self.rng.randbytes(size)
            else:
                data = encode_envelope(self.rng.randbytes(size - SIGNATURE_SIZE - 16),
                                       self.rng.randbytes(SIGNATURE_SIZE))
        self.counts["junk-bytes"] += len(data)
        return RawSend(self.rng.choice(self.host.others), data, "junk")


class Selective(Behaviour):
    """Never sends anything to the members (or client ids) in ``drop_to`` (default: the next
    member, ``(member + 1) % n``)."""

    name = "selective"
    stage = STAGE_ROUTE
    PARAMS: ClassVar[dict[str, Param]] = {
        "drop_to": Param(None, "nodes", doc="members / client ids it never sends to"),
    }

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        drop_to = self.p["drop_to"]
        self.drop_to = set([(self.member + 1) % self.host.n] if drop_to is None else drop_to)

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        for effect in effects:
            if isinstance(effect, Broadcast):
                kept = [m for m in self.host.others if m not in self.drop_to]
                self.counts["dropped"] += len(self.host.others) - len(kept)
                out.extend(Send(m, effect.message) for m in kept)
            elif self._dropped(effect):
                self.counts["dropped"] += 1
            else:
                out.append(effect)
        return out

    def _dropped(self, effect: Any) -> bool:
        if isinstance(effect, (Send, RawSend)):
            return effect.to in self.drop_to
        return isinstance(effect, Reply) and effect.client in self.drop_to


class Slow(Behaviour):
    """Everything it sends leaves ``delay_ms`` (+ uniform 0..``jitter_ms``) later (``Delayed``);
    persisting is not delayed, nor are raw frames (``flood`` junk, others' messages
    replayed by ``replay``)."""

    name = "slow"
    stage = STAGE_DELAY
    PARAMS: ClassVar[dict[str, Param]] = {
        "delay_ms": Param(100.0, "number", 0.0, MAX_INTERVAL_MS, doc="added delay"),
        "jitter_ms": Param(0.0, "number", 0.0, MAX_INTERVAL_MS, doc="plus uniform 0..jitter"),
    }

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        for effect in effects:
            if isinstance(effect, (Send, Broadcast, Reply, Delayed)):
                delay = self.p["delay_ms"] + self.rng.uniform(0.0, self.p["jitter_ms"])
                out.append(Delayed(effect, delay / 1000.0))
                self.counts["delayed"] += 1
            else:
                out.append(effect)
        return out


#: The lies a ``fake-prepared-certificate`` VIEW-CHANGE tells (see the class).
VIEW_CHANGE_VARIANTS = ("hide", "few-prepares", "duplicate-prepare", "forged-prepare",
                        "other-digest", "wrong-primary")


class FakePreparedCertificate(Behaviour):
    """With every VIEW-CHANGE it sends, lying copies re-signed with its own key: an empty P
    set, or a prepared certificate with too few, duplicated or forged prepares, another
    digest, or a pre-prepare not from the primary (B10).

    Each of ``variants`` is a whole VIEW-CHANGE (sent again with each retransmission) whose P
    set lies about one certificate (the one at the lowest seq, most likely committed):

    * ``hide`` -- an empty P set hiding what it prepared (*valid*: honest members cannot tell;
      another honest member in any 2f+1 reports each committed request, so O keeps it);
    * ``few-prepares`` -- the certificate cut to 2f-1 prepares;
    * ``duplicate-prepare`` -- one prepare twice;
    * ``forged-prepare`` -- another backup's prepare re-signed with its own key;
    * ``other-digest`` -- another batch (with its correct digest) claimed at that seq in the
      view just below the new one (it would win O), the pre-prepare and prepares re-signed
      with its own key;
    * ``wrong-primary`` -- the pre-prepare naming (and signed by) a member that is not that
      view's primary.

    The invalid variants leave at once; the valid ones (``hide``, then the genuine VIEW-CHANGE
    if ``keep_honest``) ``valid_after_ms`` later each, so honest members check the invalid ones
    first and refuse each as a whole (``Evidence`` ``bad-view-change``) -- once a valid one from
    this member is in, the others are a conflicting pair instead. With nothing prepared above
    the checkpoint only ``hide`` has nothing to hide and the certificate variants have nothing
    to tamper with (counted as ``nothing-prepared``). ``keep_honest: false`` without ``hide``
    leaves the member with no valid VIEW-CHANGE at all."""

    name = "fake-prepared-certificate"
    PARAMS: ClassVar[dict[str, Param]] = {
        "variants": Param(list(VIEW_CHANGE_VARIANTS), "subset", choices=VIEW_CHANGE_VARIANTS,
                          doc="the lying view-changes it sends"),
        "keep_honest": Param(True, "bool", doc="also send the genuine view-change, last"),
        "valid_after_ms": Param(30.0, "number", 0.0, MAX_INTERVAL_MS,
                                doc="delay between the invalid and each valid view-change"),
    }

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # view -> (genuine raw, invalid variants, valid variants) for retransmissions.
        self._variants: OrderedDict[int, tuple[bytes, list[SignedMessage], list[SignedMessage]]] = (
            OrderedDict())
        # Valid view-changes waiting for their time: (local due time, effect).
        self._held: deque[tuple[float, Any]] = deque()
        # Effects a tick releases (ids, only for the _send call right after the tick).
        self._released: set[int] = set()

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        for effect in effects:
            if id(effect) in self._released:
                out.append(effect)
                continue
            signed = self.own(effect, ViewChange)
            if signed is None:
                out.append(effect)
                continue
            _, invalid, valid = self._variants_of(signed)
            out.extend(_same_route(effect, lie) for lie in invalid)
            held = [_same_route(effect, lie) for lie in valid]
            if self.p["keep_honest"]:
                held.append(effect)
            if self.p["valid_after_ms"] == 0.0 or (not invalid and not valid):
                out.extend(held)
                continue
            due = now
            for message in held:
                due += self.p["valid_after_ms"] / 1000.0
                if len(self._held) < MAX_HELD_VIEW_CHANGES:
                    self._held.append((due, message))
                else:
                    self.counts["held-overflow"] += 1
        self._released = set()
        return out

    def deadline(self) -> float | None:
        return self._held[0][0] if self._held else None

    def tick(self, now: float) -> list[Any]:
        due = []
        while self._held and self._held[0][0] <= now:
            due.append(self._held.popleft()[1])
        self._released = {id(effect) for effect in due}
        return due

    def _variants_of(self, signed: SignedMessage
                     ) -> tuple[bytes, list[SignedMessage], list[SignedMessage]]:
        change: ViewChange = signed.message  # type: ignore[assignment]
        cached = self._variants.get(change.view)
        if cached is not None and cached[0] == signed.raw:
            return cached
        invalid: list[SignedMessage] = []
        valid: list[SignedMessage] = []
        for variant in self.p["variants"]:
            prepared = self._lie(variant, change)
            if prepared is None:
                self.counts["nothing-prepared"] += 1
                continue
            try:
                lie = self.host.sign(_rebuild(change, prepared=prepared))
            except (LocalError, ValueError):  # larger than one message: skip this lie
                self.counts["too-large"] += 1
                continue
            (valid if variant == "hide" else invalid).append(lie)
            self.counts[variant] += 1
        entry = (signed.raw, invalid, valid)
        self._variants[change.view] = entry
        if len(self._variants) > MAX_FAKE_VIEW_CHANGES_REMEMBERED:
            self._variants.popitem(last=False)
        return entry

    def _lie(self, variant: str, change: ViewChange) -> tuple[tuple[bytes, ...], ...] | None:
        """The P set of one variant, or None if there is nothing to lie about."""
        certificates = list(change.prepared)
        if not certificates:
            return None
        if variant == "hide":
            return ()
        # The certificate at the lowest seq (the honest replica lists them in seq order).
        pre_prepare_raw, *prepare_raws = certificates[0]
        pre_prepare = decode_envelope(pre_prepare_raw)
        proposal: PrePrepare = pre_prepare.message  # type: ignore[assignment]
        prepares = [decode_envelope(raw) for raw in prepare_raws]
        f = self.world.committee.f
        if variant == "few-prepares":
            forged = (pre_prepare_raw, *prepare_raws[: max(2 * f - 1, 0)])
        elif variant == "duplicate-prepare":
            forged = (pre_prepare_raw, *prepare_raws, prepare_raws[0])
        elif variant == "forged-prepare":
            victim = next((i for i, p in enumerate(prepares)
                           if p.message.replica != self.member), None)  # type: ignore[union-attr]
            if victim is None:
                return None
            copied = list(prepare_raws)
            copied[victim] = self.host.sign(prepares[victim].message).raw
            forged = (pre_prepare_raw, *copied)
        elif variant == "other-digest":
            view = max(proposal.view, change.view - 1)
            batch, timestamp = _other_batch(proposal.batch, proposal.timestamp)
            digest = batch_digest(timestamp, batch, view)
            lying = _rebuild(proposal, view=view, replica=view % self.host.n, batch=batch,
                             timestamp=timestamp, origin_view=view, digest=digest)
            forged = (self.host.sign(lying).raw,
                      *(self.host.sign(_rebuild(p.message, view=view, digest=digest)).raw
                        for p in prepares))
        else:  # wrong-primary
            primary = proposal.view % self.host.n
            impostor = self.member if self.member != primary else (primary + 1) % self.host.n
            forged = (self.host.sign(_rebuild(proposal, replica=impostor)).raw, *prepare_raws)
        return (forged, *certificates[1:])


def _other_batch(batch: tuple[bytes, ...], timestamp: int) -> tuple[tuple[bytes, ...], int]:
    """Another batch for the same slot: reversed (2+ requests), emptied (1), re-timestamped
    (none)."""
    if len(batch) >= 2:
        return tuple(reversed(batch)), timestamp
    if batch:
        return (), timestamp
    return (), min(timestamp + 1, MAX_COUNTER)


#: The ways a ``malicious-new-view`` NEW-VIEW is tampered with (see the class).
NEW_VIEW_MODES = ("omit-entry", "replace-batch", "drop-view-change", "duplicate-view-change")


class MaliciousNewView(Behaviour):
    """As the primary of a new view, a tampered NEW-VIEW re-signed with its own key instead of
    the genuine one: an O-set entry omitted or replaced, too few or a duplicated VIEW-CHANGE
    (B11).

    Every NEW-VIEW it sends (and re-sends) is replaced, by one of ``modes`` drawn per view:

    * ``omit-entry`` -- one O-set PRE-PREPARE left out;
    * ``replace-batch`` -- one re-proposed batch replaced (a batch by a null request, a null
      request by another, re-timestamped one), its PRE-PREPARE validly signed;
    * ``drop-view-change`` -- only 2f of the VIEW-CHANGEs (fewer than 2f+1);
    * ``duplicate-view-change`` -- one VIEW-CHANGE in place of another (one member twice).

    With an empty O set, ``omit-entry`` and ``replace-batch`` add a null PRE-PREPARE above the
    checkpoint instead (an O set that still differs from the recomputed one). Backups recompute
    O and refuse it (``Evidence`` ``bad-new-view``), then move on to the next view; its inner
    replica follows them there. ``modes: []`` sends the genuine NEW-VIEW."""

    name = "malicious-new-view"
    PARAMS: ClassVar[dict[str, Param]] = {
        "modes": Param(list(NEW_VIEW_MODES), "subset", choices=NEW_VIEW_MODES,
                       doc="the tamperings it draws from (one per view)"),
    }

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # view -> (genuine raw, the tampered NEW-VIEW) so re-sends repeat the same one.
        self._tampered: OrderedDict[int, tuple[bytes, SignedMessage]] = OrderedDict()

    def outgoing(self, effects: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        for effect in effects:
            signed = self.own(effect, NewView)
            if signed is None or not self.p["modes"]:
                out.append(effect)
                continue
            tampered = self._tamper(signed)
            out.append(effect if tampered is None else _same_route(effect, tampered))
        return out

    def _tamper(self, signed: SignedMessage) -> SignedMessage | None:
        new_view: NewView = signed.message  # type: ignore[assignment]
        cached = self._tampered.get(new_view.view)
        if cached is not None and cached[0] == signed.raw:
            return cached[1]
        mode = self.rng.choice(self.p["modes"])
        changes = list(new_view.view_changes)
        entries = list(new_view.pre_prepares)
        quorum = 2 * self.world.committee.f + 1
        if mode in ("omit-entry", "replace-batch") and not entries:
            entries = [self._null_entry(new_view.view)]
            mode = "added-entry"
        elif mode == "omit-entry":
            del entries[self.rng.randrange(len(entries))]
        elif mode == "replace-batch":
            at = self.rng.randrange(len(entries))
            proposal: PrePrepare = decode_envelope(entries[at]).message  # type: ignore[assignment]
            if proposal.batch:
                batch, timestamp = (), NULL_TIMESTAMP
            else:
                batch, timestamp = (), min(proposal.timestamp + 1, MAX_COUNTER)
            entries[at] = self.host.sign(_rebuild(
                proposal, batch=batch, timestamp=timestamp,
                digest=batch_digest(timestamp, batch, proposal.origin_view))).raw
        elif mode == "drop-view-change":
            changes = changes[: quorum - 1]
        else:  # duplicate-view-change (a NEW-VIEW holds 2f+1 >= 3 of them)
            changes[-1] = changes[0]
        try:
            tampered = self.host.sign(_rebuild(new_view, view_changes=tuple(changes),
                                               pre_prepares=tuple(entries)))
        except (LocalError, ValueError):
            self.counts["too-large"] += 1
            return None
        self.counts[mode] += 1
        self._tampered[new_view.view] = (signed.raw, tampered)
        if len(self._tampered) > MAX_TAMPERED_NEW_VIEWS_REMEMBERED:
            self._tampered.popitem(last=False)
        return tampered

    def _null_entry(self, view: int) -> bytes:
        seq = min(self.host.replica.low_watermark + 1, MAX_COUNTER)
        return self.host.sign(PrePrepare(view=view, seq=seq, timestamp=NULL_TIMESTAMP,
                                         origin_view=view, replica=self.member, batch=(),
                                         digest=batch_digest(NULL_TIMESTAMP, (), view))).raw


BEHAVIOURS: dict[str, type[Behaviour]] = {
    cls.name: cls
    for cls in (Silent, Crash, Equivocate, Replay, ForgeSignature, SpoofSender, WrongDigest,
                SeqAbuse, DuplicateVotes, FakeCheckpoint, Flood, Selective, Slow,
                FakePreparedCertificate, MaliciousNewView)
}


# ------------------------------------------------------------------ the wrapper node


@dataclass(frozen=True)
class BehaviourSpec:
    name: str
    params: dict = field(default_factory=dict)
    from_ms: float = 0.0


def validate_behaviour(name: str, params: dict) -> None:
    """Raise ``ValueError`` (one line) if ``name`` is unknown or ``params`` are not valid."""
    cls = BEHAVIOURS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown behaviour {name!r} (known: {', '.join(sorted(BEHAVIOURS))})")
    resolve_params(f"behaviour {name!r}", cls.PARAMS, params)


def describe_behaviour(name: str) -> dict[str, Any]:
    """A behaviour's one-line summary and its parameters (default, kind, bounds, meaning)."""
    validate_behaviour(name, {})
    cls = BEHAVIOURS[name]
    summary = " ".join((cls.__doc__ or "").split("\n\n")[0].split())
    params = {
        param_name: {"default": param.default, "kind": _describe(param), "doc": param.doc}
        for param_name, param in cls.PARAMS.items()
    }
    return {"name": name, "summary": summary, "params": params}


def _check_members(owner: str, param: str, nodes: Any, world: World) -> None:
    """Member ids must exist in the committee, client ids among the world's clients."""
    n = world.committee.n
    for node in nodes or ():
        if type(node) is int and not 0 <= node < n:
            raise ValueError(f"{owner}: param {param!r}: member {node} does not exist "
                             f"(n={n}, members are 0..{n - 1})")
        if isinstance(node, str) and node not in world.clients:
            raise ValueError(f"{owner}: param {param!r}: no client {node!r} in this world")


class ByzantineReplica:
    """The node that handles a Byzantine member's traffic: its honest replica (``replica``)
    plus the behaviours (in stage order, then spec order), each applied while active."""

    def __init__(self, world: World, member: int, specs: list[BehaviourSpec]) -> None:
        self.world = world
        self.member = member
        self.replica: Replica = world.replicas[member]
        self.key = world.member_keys[member]
        self.n = world.committee.n
        self.others: tuple[int, ...] = tuple(m for m in range(self.n) if m != member)
        self._committee_digest = world.committee.digest
        self.behaviours: list[Behaviour] = []
        for index, spec in enumerate(specs):
            validate_behaviour(spec.name, spec.params)
            if (type(spec.from_ms) is bool or not isinstance(spec.from_ms, (int, float))
                    or not 0.0 <= spec.from_ms < math.inf):
                raise ValueError(f"behaviour {spec.name!r}: from_ms must be a number >= 0, "
                                 f"got {spec.from_ms!r}")
            cls = BEHAVIOURS[spec.name]
            for name, param in cls.PARAMS.items():
                if param.kind in ("members", "nodes"):
                    _check_members(f"behaviour {spec.name!r}", name,
                                   (spec.params or {}).get(name), world)
            self.behaviours.append(cls(self, dict(spec.params or {}), float(spec.from_ms), index))
        self.behaviours.sort(key=lambda behaviour: behaviour.stage)  # stable: spec order kept

    def sign(self, message: Any) -> SignedMessage:
        """Sign with this member's own key (the only key a Byzantine member holds)."""
        return sign_message(message, self.key, self._committee_digest)

    def counts(self) -> dict[str, dict[str, int]]:
        """What each behaviour did, by behaviour name."""
        totals: dict[str, Counter[str]] = {}
        for behaviour in self.behaviours:
            totals.setdefault(behaviour.name, Counter()).update(behaviour.counts)
        return {name: dict(counter) for name, counter in totals.items()}

    # The node interface the World drives.

    def receive(self, sender: Node, data: bytes, now: float) -> list[Any]:
        active = self._active()
        if active is None:
            return []
        for behaviour in active:
            data = behaviour.incoming(sender, data, now)  # type: ignore[assignment]
            if data is None:
                return []
        return self._send(active, self.replica.receive(sender, data, now), now)

    def handle_timer(self, now: float) -> list[Any]:
        active = self._active()
        if active is None:
            return []
        effects: list[Any] = []
        due = self.replica.next_deadline()
        if due is not None and now >= due:
            effects += self.replica.handle_timer(now)
        for behaviour in self.behaviours:
            deadline = behaviour.deadline()
            if deadline is not None and now >= deadline:
                # Inactive behaviours only move their deadline on (tick checks active()).
                effects += behaviour.tick(now)
        return self._send(active, effects, now)

    def next_deadline(self) -> float | None:
        if self._active() is None:
            return None
        deadlines = [self.replica.next_deadline(), *(b.deadline() for b in self.behaviours)]
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None

    def _active(self) -> list[Behaviour] | None:
        """The active behaviours, or None while a halting one (crash) is active."""
        active = [b for b in self.behaviours if b.active()]
        return None if any(b.halts for b in active) else active

    def _send(self, active: list[Behaviour], effects: list[Any], now: float) -> list[Any]:
        for behaviour in active:
            effects = behaviour.outgoing(effects, now)
        kept = []
        for effect in effects:
            if isinstance(effect, RawSend):
                self.world.transmit(self.member, effect.to, effect.data, effect.message_type)
            else:
                kept.append(effect)
        return kept


def make_byzantine(world: World, member: int, specs: list[BehaviourSpec]) -> None:
    """Make ``member`` Byzantine: one wrapper node applying all ``specs`` (in stage order, then
    spec order; see the module docstring)."""
    if type(member) is not int or not 0 <= member < world.committee.n:
        raise ValueError(f"member {member!r} does not exist (n={world.committee.n})")
    if world.nodes.get(member) is not world.replicas[member]:
        raise ValueError(f"member {member} already has a Byzantine wrapper or twin")
    world.set_node(member, ByzantineReplica(world, member, list(specs)))


# ------------------------------------------------------------------ twins


class _TwinRoutes:
    """Which twin instance sent which bytes to another twin, so that the receiving twin hands
    them to its instance on the same side (the transport sender id cannot tell them apart)."""

    def __init__(self) -> None:
        self.twins: dict[int, TwinReplica] = {}
        # (sender, receiver, fingerprint) -> [pending sides, last side]
        self._routes: OrderedDict[tuple[int, int, bytes], list[Any]] = OrderedDict()

    @staticmethod
    def _key(sender: int, receiver: int, data: bytes) -> tuple[int, int, bytes]:
        return sender, receiver, hashlib.blake2b(data, digest_size=16).digest()

    def note(self, sender: int, receiver: int, data: bytes, side: int) -> None:
        key = self._key(sender, receiver, data)
        entry = self._routes.get(key)
        if entry is None:
            entry = self._routes[key] = [deque(), side]
            if len(self._routes) > MAX_TWIN_ROUTES_REMEMBERED:
                self._routes.popitem(last=False)
        entry[0].append(side)
        entry[1] = side

    def side(self, sender: int, receiver: int, data: bytes) -> int | None:
        entry = self._routes.get(self._key(sender, receiver, data))
        if entry is None:
            return None
        return entry[0].popleft() if entry[0] else entry[1]  # network duplicates: last side


_TWIN_ROUTES: weakref.WeakKeyDictionary[Any, _TwinRoutes] = weakref.WeakKeyDictionary()


class TwinReplica:
    """Two honest instances of one member under one key (Twins): instance A
    (``world.replicas[member]``) talks with ``groups[0]``, instance B (a fresh replica) with
    everyone else. Input: from a member or client in ``groups[0]`` -> A; a client in
    ``groups[1]`` or a member outside ``groups[0]`` -> B; a client in neither group -> both.
    Output (``isolate``, default): A sends only to members of ``groups[0]``, B only to the
    others; replies go to the clients on the instance's side (clients in neither group get
    both). Traffic between two twins goes instance A to instance A and B to B. The member's
    own id in a group is ignored. ``isolate=False``: both instances send to everyone."""

    def __init__(self, world: World, member: int, groups: tuple[list, list],
                 isolate: bool = True) -> None:
        self.world = world
        self.member = member
        self.instances: tuple[Replica, Replica] = (world.replicas[member],
                                                   world.make_replica(member))
        self.groups = (frozenset(groups[0]) - {member}, frozenset(groups[1]) - {member})
        self.isolate = isolate
        self.others = tuple(m for m in range(world.committee.n) if m != member)
        self.routes = _TWIN_ROUTES.setdefault(world, _TwinRoutes())
        self.routes.twins[member] = self

    def _sides(self, sender: Node, data: bytes) -> tuple[int, ...]:
        if type(sender) is int:
            if sender in self.routes.twins:
                side = self.routes.side(sender, self.member, data)
                if side is not None:
                    return (side,)
            return (0,) if sender in self.groups[0] else (1,)
        if sender in self.groups[0]:
            return (0,)
        return (1,) if sender in self.groups[1] else (0, 1)

    def _reaches(self, side: int, to: Node) -> bool:
        if not self.isolate or (type(to) is int and to in self.routes.twins):
            return True
        if type(to) is int:
            return (to in self.groups[0]) == (side == 0)
        return to in self.groups[side] or (to not in self.groups[0] and to not in self.groups[1])

    def _route(self, side: int, effects: list[Any]) -> list[Any]:
        out: list[Any] = []
        for effect in effects:
            if isinstance(effect, (Send, Broadcast)):
                targets = self.others if isinstance(effect, Broadcast) else (effect.to,)
                for to in targets:
                    if self._reaches(side, to):
                        if to in self.routes.twins:
                            self.routes.note(self.member, to, effect.message.raw, side)
                        out.append(Send(to, effect.message))
            elif isinstance(effect, Reply):
                if self._reaches(side, effect.client):
                    out.append(effect)
            else:
                out.append(effect)
        return out

    def receive(self, sender: Node, data: bytes, now: float) -> list[Any]:
        effects: list[Any] = []
        for side in self._sides(sender, data):
            effects += self._route(side, self.instances[side].receive(sender, data, now))
        return effects

    def handle_timer(self, now: float) -> list[Any]:
        effects: list[Any] = []
        for side, instance in enumerate(self.instances):
            due = instance.next_deadline()
            if due is not None and now >= due:
                effects += self._route(side, instance.handle_timer(now))
        return effects

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (i.next_deadline() for i in self.instances) if d is not None]
        return min(deadlines) if deadlines else None


def make_twin(world: World, member: int, groups: tuple[list, list], *,
              isolate: bool = True) -> None:
    """Run ``member`` as two honest instances under its key (see ``TwinReplica``)."""
    n = world.committee.n
    if type(member) is not int or not 0 <= member < n:
        raise ValueError(f"twin: member {member!r} does not exist (n={n})")
    if world.nodes.get(member) is not world.replicas[member]:
        raise ValueError(f"twin: member {member} already has a Byzantine wrapper or twin")
    if not isinstance(groups, (tuple, list)) or len(groups) != 2:
        raise ValueError("twin: groups must be two lists")
    for side, group in enumerate(groups):
        if not isinstance(group, (list, tuple, set, frozenset)):
            raise ValueError(f"twin: groups[{side}] must be a list")  # noqa: TRY004
        for node in group:
            if type(node) is int:
                if not 0 <= node < n:
                    raise ValueError(f"twin: groups[{side}]: member {node} does not exist "
                                     f"(n={n})")
            elif node not in world.clients:
                raise ValueError(f"twin: groups[{side}]: {node!r} is neither a member nor a "
                                 "client of this world")
    world.set_node(member, TwinReplica(world, member, (list(groups[0]), list(groups[1])),
                                       isolate))


# ------------------------------------------------------------------ Byzantine client

BAD_CLIENT_PARAMS: dict[str, Param] = {
    "corrupt_for": Param([0], "members", doc="members that get a corrupted signature"),
    "conflicting": Param(True, "bool", doc="also sign another operation with the timestamp"),
    "conflict_to": Param(None, "members",
                         doc="members that get the conflicting request (default: upper half)"),
    "broadcast": Param(True, "bool", doc="send each request to every member, not the primary"),
}


def validate_bad_client(params: dict) -> None:
    resolve_params("bad-client", BAD_CLIENT_PARAMS, params)


class ByzantineClient:
    """A ``Client``-compatible node around the real client: its requests are validly signed
    but reach the members in ``corrupt_for`` with a corrupted signature (the Aardvark MAC
    attack: valid for some replicas only), and (``conflicting``) the members in
    ``conflict_to`` get a different operation signed with the same timestamp. Honest replicas
    must all classify each copy the same way and execute one operation per timestamp."""

    def __init__(self, world: World, client_id: str, params: dict) -> None:
        self.client: Client = world.clients[client_id]
        self.p = resolve_params("bad-client", BAD_CLIENT_PARAMS, params)
        n = world.committee.n
        for name in ("corrupt_for", "conflict_to"):
            _check_members("bad-client", name, self.p[name], world)
        self.n = n
        self.corrupt_for = set(self.p["corrupt_for"] or ())
        conflict_to = self.p["conflict_to"]
        self.conflict_to = set(range(n // 2, n) if conflict_to is None else conflict_to)
        self._key = world.client_keys[client_id]
        self._committee_digest = world.committee.digest
        self.rng = world.rng(f"byzantine/{client_id}")
        self.counts: Counter[str] = Counter()
        self._variants: tuple[int, SignedMessage, SignedMessage] | None = None

    # Client interface used by the World and workloads.
    @property
    def busy(self) -> bool:
        return self.client.busy

    @property
    def last_timestamp(self) -> int:
        return self.client.last_timestamp

    def __getattr__(self, name: str) -> Any:  # id, stats, view, committee, ...
        if name == "client":  # not yet set (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.client, name)

    def request(self, operation: bytes, now: float) -> list[Any]:
        return self._tamper(self.client.request(operation, now))

    def receive(self, sender: Node, data: bytes, now: float) -> list[Any]:
        return self.client.receive(sender, data, now)  # type: ignore[arg-type]

    def handle_timer(self, now: float) -> list[Any]:
        return self._tamper(self.client.handle_timer(now))

    def next_deadline(self) -> float | None:
        return self.client.next_deadline()

    def _tamper(self, effects: list[Any]) -> list[Any]:
        out: list[Any] = []
        for effect in effects:
            signed = _signed(effect)
            if signed is None or not isinstance(signed.message, Request):
                out.append(effect)
                continue
            corrupted, conflicting = self._variants_of(signed)
            if isinstance(effect, Broadcast) or self.p["broadcast"]:
                targets: Iterable[int] = range(self.n)
            else:
                targets = (effect.to,)
            for member in targets:
                if member in self.corrupt_for:
                    out.append(Send(member, corrupted))
                    self.counts["corrupted"] += 1
                elif self.p["conflicting"] and member in self.conflict_to:
                    out.append(Send(member, conflicting))
                    self.counts["conflicting"] += 1
                else:
                    out.append(Send(member, signed))
        return out

    def _variants_of(self, signed: SignedMessage) -> tuple[SignedMessage, SignedMessage]:
        request: Request = signed.message  # type: ignore[assignment]
        if self._variants is None or self._variants[0] != request.timestamp:
            corrupted = _flip_signature(signed, self.rng, 1)
            other = kv.put(f"conflict/{request.client}", request.timestamp.to_bytes(8, "big"))
            conflicting = sign_message(_rebuild(request, operation=other), self._key,
                                       self._committee_digest)
            self._variants = (request.timestamp, corrupted, conflicting)
        return self._variants[1], self._variants[2]


def make_bad_client(world: World, client_id: str, params: dict) -> None:
    """Replace ``client_id`` (its node and its ``world.clients`` entry) by a Byzantine client."""
    if client_id not in world.clients:
        raise ValueError(f"bad-client: no client {client_id!r} in this world")
    if isinstance(world.clients[client_id], ByzantineClient):
        raise ValueError(f"bad-client: {client_id!r} is already Byzantine")  # noqa: TRY004
    bad = ByzantineClient(world, client_id, params)
    world.clients[client_id] = bad  # type: ignore[assignment]
    world.set_node(client_id, bad, byzantine=False)
