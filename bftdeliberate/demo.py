"""``bftd demo``: a self-contained run of the protocol for a first look.

This version runs an in-process committee of n replicas (production sans-IO code, every
message really signed and verified, virtual time): a client commits a handful of key-value
operations while a Byzantine member sends a forged PREPARE and the network replays a PRE-PREPARE,
which the replicas count and drop. Later issues grow it into the full TCP + debate + commit
demo (DESIGN.md section 9).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bftdeliberate import kv
from bftdeliberate.crypto import get_backend
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.wire import cbor
from bftdeliberate.wire.messages import Prepare, sign_message
from simulator.network import NetworkProfile
from simulator.world import World

DEMO_OPERATIONS = (
    ("put", "task/t-001/status", b"open"),
    ("put", "task/t-001/owner", b"agent-2"),
    ("get", "task/t-001/status", None),
    ("put", "task/t-001/status", b"approved"),
    ("delete", "task/t-001/owner", None),
    ("get", "task/t-001/status", None),
)
#: Virtual seconds the demo may take before it is declared failed.
DEMO_TIME_LIMIT = 60.0


@dataclass(frozen=True)
class DemoResult:
    report: dict[str, Any]

    @property
    def ok(self) -> bool:
        return bool(self.report["state_digests_equal"] and self.report["all_completed"])


def _encode(op: str, key: str, value: bytes | None) -> bytes:
    if op == "put":
        return kv.put(key, value or b"")
    return kv.get(key) if op == "get" else kv.delete(key)


def _show(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: _show(v) for k, v in value.items()}
    return value


def run_demo(n: int = 4, seed: int = 7) -> DemoResult:
    # Real Ed25519 here (the simulator's fast MAC signatures are for sweeps, not for show).
    cluster = World(n, seed=seed, clients=1, config=ReplicaConfig(batch_delay=0.002),
                    network=NetworkProfile(delay_ms=(0.5, 1.0)), backend=get_backend())
    # A Byzantine member (the last one) sends a PREPARE for seq 1 that claims to be member
    # 1's; later the network replays the primary's first PRE-PREPARE. Both are dropped.
    byzantine = n - 1
    forged = sign_message(
        Prepare(view=0, seq=1, digest=b"\x66" * 32, replica=1),
        cluster.member_keys[byzantine],
        cluster.committee.digest,
    )
    for member in range(n - 1):
        cluster.inject(member, byzantine, forged.raw, delay=0.001)

    operations = [_encode(*op) for op in DEMO_OPERATIONS]
    rows: list[dict[str, Any]] = []

    def on_completed(done) -> None:
        index = len(rows)
        op, key, value = DEMO_OPERATIONS[index]
        rows.append({
            "client": done.client,
            "operation": op,
            "key": key,
            "value": _show(value),
            "result": _show(cbor.decode(done.result)),
            "latency_ms": round((done.completed_at - done.submitted_at) * 1000, 3),
        })
        if index == 1:
            first_proposal = cluster.disks[0][0].message
            for member in range(1, n):
                cluster.inject(member, 0, first_proposal.raw)

    completed = cluster.run_workload(operations, on_completed=on_completed,
                                     max_time=DEMO_TIME_LIMIT)
    replicas = [
        {
            "id": r.id,
            "role": "primary" if r.is_primary else "backup",
            "view": r.view,
            "last_executed": r.last_executed,
            "stable_checkpoint": r.low_watermark,
            "state_digest": r.state_digest().hex(),
            "dropped": dict(sorted(r.stats.dropped.items())),
        }
        for r in cluster.replicas
    ]
    report = {
        "n": n,
        "f": cluster.committee.f,
        "seed": seed,
        "committee_digest": cluster.committee.digest.hex(),
        "byzantine_member": byzantine,
        "operations": rows,
        "all_completed": completed and len(rows) == len(operations),
        "replicas": replicas,
        "messages": {t: {"count": c, "bytes": cluster.traffic.bytes[t]}
                     for t, c in sorted(cluster.traffic.messages.items())},
        "state_digests_equal": len(set(cluster.state_digests())) == 1,
        "virtual_seconds": round(cluster.now, 6),
        "trace_digest": cluster.trace_digest(),
    }
    return DemoResult(report)
