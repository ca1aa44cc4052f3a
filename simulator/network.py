"""The simulated network: delays, loss, duplication, reordering, partitions, clogs.

Every decision draws from the network's own seeded ``random.Random``, so a run is a pure
function of its seed. Times are global virtual seconds.

* Delay of one message: uniform in ``delay_ms``; with ``reorder`` off a link is FIFO (a
  message never arrives before one sent earlier on the same link).
* ``loss``/``duplicate``: probabilities per message (a duplicate gets its own delay).
* Partitions: members split into groups; links between groups drop everything. One-way
  blocks drop a direction only (a member that can send but not receive).
* Clogs: a member's links hold every message until the clog ends (then deliver it).
* ``stabilize()`` (GST): loss and duplication stop, partitions and clogs heal; delays stay.

Clients are never partitioned (they sit outside the committee's network), but loss,
duplication and delays apply to their links too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

Node = int | str


@dataclass(frozen=True, slots=True)
class NetworkProfile:
    delay_ms: tuple[float, float] = (1.0, 20.0)
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: bool = True


@dataclass(slots=True)
class Network:
    profile: NetworkProfile
    rng: random.Random
    #: member -> group index while partitioned (members of no group are cut off from all).
    groups: dict[int, int] | None = None
    one_way_blocked: set[tuple[int, int]] = field(default_factory=set)
    clogged_until: dict[int, float] = field(default_factory=dict)
    stable: bool = False
    _last_arrival: dict[tuple[Node, Node], float] = field(default_factory=dict)

    # ----------------------------------------------------------------- faults

    def partition(self, groups: list[list[int]]) -> None:
        self.groups = {member: index for index, group in enumerate(groups) for member in group}

    def one_way(self, senders: list[int], receivers: list[int]) -> None:
        self.one_way_blocked |= {(s, r) for s in senders for r in receivers if s != r}

    def clog(self, members: list[int], until: float) -> None:
        for member in members:
            self.clogged_until[member] = max(until, self.clogged_until.get(member, 0.0))

    def heal(self) -> None:
        self.groups = None
        self.one_way_blocked.clear()
        self.clogged_until.clear()

    def stabilize(self) -> None:
        """Global stabilisation time: from now on only delays remain."""
        self.heal()
        self.stable = True

    # --------------------------------------------------------------- delivery

    def _calm(self, profile: NetworkProfile) -> bool:
        """No fault can touch this message: only a delay is drawn (the common case)."""
        return (profile.reorder and self.groups is None and not self.one_way_blocked
                and not self.clogged_until
                and (self.stable or (not profile.loss and not profile.duplicate)))

    def blocked(self, sender: Node, receiver: Node) -> bool:
        if type(sender) is not int or type(receiver) is not int:
            return False
        if self.groups is not None and (
            self.groups.get(sender, -1) != self.groups.get(receiver, -2)
        ):
            return True
        return (sender, receiver) in self.one_way_blocked

    def arrivals(self, sender: Node, receiver: Node, now: float) -> list[float]:
        """Arrival times of one message sent now ([] if lost or blocked)."""
        profile = self.profile
        if self._calm(profile):
            low, high = profile.delay_ms
            return [now + (low + (high - low) * self.rng.random()) / 1000.0]
        if self.blocked(sender, receiver):
            return []
        if not self.stable and profile.loss and self.rng.random() < profile.loss:
            return []
        copies = 2 if (not self.stable and profile.duplicate
                       and self.rng.random() < profile.duplicate) else 1
        low, high = profile.delay_ms
        times = []
        for _ in range(copies):
            arrival = now + (low + (high - low) * self.rng.random()) / 1000.0
            for end in (self.clogged_until.get(sender), self.clogged_until.get(receiver)):  # type: ignore[arg-type]
                if end is not None and end > now:
                    arrival = max(arrival, end + low / 1000.0)
            if not profile.reorder:
                link = (sender, receiver)
                arrival = max(arrival, self._last_arrival.get(link, 0.0))
                self._last_arrival[link] = arrival
            times.append(arrival)
        return times
