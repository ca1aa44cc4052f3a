"""Core benchmark: the production replicas and clients in one process, no network.

Every message is really encoded, signed, decoded and verified; only the sockets are missing.
For each (n, batch) it reports throughput, wall-clock latency, signatures and verifications
per operation, messages per batch by type next to PBFT's analytic counts, bytes per
operation, and the crypto ceiling measured in the same run:
``verify_bound_ops_per_s = verify_rate / (n x verifies_per_op)`` -- in one process every
replica's verifications share one core, so that is the most the protocol could do.

Run on its own: ``python -m benchmarks.core --n 4,7 --batch 1,10,100 --json``
(the same as ``bftd bench core``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from bftdeliberate import kv
from bftdeliberate.crypto import PrivateKey, available_backends, get_backend, signing_payload
from bftdeliberate.pbft.config import ReplicaConfig
from simulator.network import NetworkProfile
from simulator.world import CompletedRequest, World

DEFAULT_NS = (4, 7, 10, 13, 16)
DEFAULT_BATCHES = (1, 10, 100)
DEFAULT_REQUESTS = 2000
#: Clients per batch slot: two full batches are always waiting, so every batch is full.
CLIENTS_PER_BATCH = 2
#: Verifications per timed round, and rounds (the best round counts: the other core may be
#: busy, and the best round is the conservative, i.e. highest, ceiling).
VERIFY_RATE_SAMPLES = 1000
VERIFY_RATE_ROUNDS = 5
CHECKPOINT_INTERVAL = 64
LOG_WINDOW = 256
MESSAGE_TYPES = ("request", "pre-prepare", "prepare", "commit", "reply", "checkpoint")


def analytic_messages_per_batch(n: int, batch: int, checkpoint_interval: int) -> dict[str, float]:
    """PBFT's normal-case message counts for one batch (a member never sends to itself)."""
    return {
        "request": batch,
        "pre-prepare": n - 1,
        "prepare": (n - 1) ** 2,
        "commit": n * (n - 1),
        "reply": n * batch,
        "checkpoint": n * (n - 1) / checkpoint_interval,
    }


def measure_verify_rate(backend_name: str | None, samples: int = VERIFY_RATE_SAMPLES) -> float:
    """Ed25519 verifications per second on this core, straight to the backend (no cache)."""
    backend = get_backend(backend_name)
    key = PrivateKey(bytes(range(32)), backend)
    committee_digest = b"c" * 32
    payloads = [signing_payload(committee_digest, "prepare", os.urandom(160)) for _ in range(64)]
    signed = [(key.sign_raw(payload), payload) for payload in payloads]
    best = float("inf")
    for _ in range(VERIFY_RATE_ROUNDS):
        started = time.perf_counter()
        for i in range(samples):
            signature, payload = signed[i % len(signed)]
            backend.verify(key.public_key, signature, payload)
        best = min(best, time.perf_counter() - started)
    return samples / best


def measure_sign_rate(backend_name: str | None, samples: int = VERIFY_RATE_SAMPLES) -> float:
    """Ed25519 signatures per second on this core."""
    backend = get_backend(backend_name)
    seed = bytes(range(32))
    payload = signing_payload(b"c" * 32, "prepare", os.urandom(160))
    best = float("inf")
    for _ in range(VERIFY_RATE_ROUNDS):
        started = time.perf_counter()
        for _ in range(samples):
            backend.sign(seed, payload)
        best = min(best, time.perf_counter() - started)
    return samples / best


def backend_rates() -> dict[str, dict[str, float]]:
    """Verify and sign rates of every installed backend, measured now (the choice's basis)."""
    return {
        name: {"verify_per_s": round(measure_verify_rate(name), 1),
               "sign_per_s": round(measure_sign_rate(name), 1)}
        for name in sorted(available_backends())
    }


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def run_one(n: int, batch: int, requests: int, backend_name: str | None, seed: int,
            verify_rate: float) -> dict[str, Any]:
    requests = max(batch, requests - requests % batch)  # whole batches only
    # Cost per op at a fixed batch size: no in-flight cap (it sizes batches adaptively in a
    # live peer and would cut batches smaller than ``batch`` here).
    config = ReplicaConfig(batch_size=batch, batch_delay=0.001,
                           checkpoint_interval=CHECKPOINT_INTERVAL, log_window=LOG_WINDOW,
                           max_in_flight_batches=LOG_WINDOW)
    clients = max(1, CLIENTS_PER_BATCH * batch)
    cluster = World(n, seed=seed, clients=clients, config=config,
                    network=NetworkProfile(delay_ms=(0.0, 0.0)),
                    backend=get_backend(backend_name), cpu_clock=time.perf_counter)
    last_done: dict[str, float] = {}
    latencies: list[float] = []
    started = time.perf_counter()

    def on_completed(done: CompletedRequest) -> None:
        # Closed loop: a client submits its next request the moment the previous completes.
        now = time.perf_counter()
        latencies.append(now - last_done.get(done.client, started))
        last_done[done.client] = now

    operations = (kv.put(f"k{i % 1000}", b"v" * 16) for i in range(requests))
    if not cluster.run_workload(operations, on_completed=on_completed):
        raise RuntimeError(f"benchmark run n={n} batch={batch} did not complete")
    elapsed = time.perf_counter() - started

    replicas = cluster.replicas
    batches = replicas[0].stats.executed_batches
    replica_verifies = sum(r.verifier.verifications for r in replicas)
    replica_signs = sum(r.stats.signatures for r in replicas)
    client_verifies = sum(c.verifier.verifications for c in cluster.clients.values())
    traffic = cluster.traffic
    analytic = analytic_messages_per_batch(n, batch, CHECKPOINT_INTERVAL)
    measured = {t: traffic.messages[t] / batches for t in MESSAGE_TYPES}
    verifies_per_op = replica_verifies / (n * requests)
    verify_bound = verify_rate / (n * verifies_per_op)
    # The n replicas' own work, as if they shared one core with nothing else; clients and the
    # event loop are reported separately (on a real deployment they are other processes).
    ops_per_s = requests / cluster.cpu_seconds["replicas"]
    latencies.sort()
    key = lambda t: t.replace("-", "_")
    return {
        "n": n,
        "f": cluster.committee.f,
        "batch": batch,
        "requests": requests,
        "clients": clients,
        "batches": batches,
        "ops_per_s": round(ops_per_s, 1),
        "end_to_end_ops_per_s": round(requests / elapsed, 1),
        "cpu_seconds": {"replicas": round(cluster.cpu_seconds["replicas"], 4),
                        "clients": round(cluster.cpu_seconds["clients"], 4),
                        "total_wall": round(elapsed, 4)},
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50) * 1000, 3),
            "p90": round(percentile(latencies, 0.90) * 1000, 3),
            "p99": round(percentile(latencies, 0.99) * 1000, 3),
            "mean": round(statistics.fmean(latencies) * 1000, 3),
        },
        "signs_per_op": round(replica_signs / (n * requests), 4),
        "verifies_per_op": round(verifies_per_op, 4),
        "client_verifies_per_op": round(client_verifies / requests, 4),
        "messages_per_batch": {key(t): round(v, 4) for t, v in measured.items()},
        "analytic_messages_per_batch": {key(t): round(v, 4) for t, v in analytic.items()},
        "messages_match_analytic": all(
            abs(measured[t] - analytic[t]) < 1e-9 for t in MESSAGE_TYPES if t != "checkpoint"
        ),
        "bytes_per_op": round(sum(traffic.bytes.values()) / requests, 1),
        "bytes_per_op_by_type": {key(t): round(traffic.bytes[t] / requests, 1)
                                 for t in MESSAGE_TYPES},
        "verify_bound_ops_per_s": round(verify_bound, 1),
        "ops_over_verify_bound": round(ops_per_s / verify_bound, 3),
        "state_digests_equal": len(set(cluster.state_digests())) == 1,
        "evidence": len(cluster.evidence),
    }


def run(ns: list[int], batches: list[int], requests: int, backend_name: str | None = None,
        seed: int = 1, command: str = "") -> dict[str, Any]:
    backend = get_backend(backend_name)
    rates = backend_rates()
    verify_rate = rates[backend.name]["verify_per_s"]
    results = [run_one(n, b, requests, backend.name, seed, verify_rate)
               for n in ns for b in batches]
    return {
        "benchmark": "core",
        "command": command,
        "backend": backend.name,
        "verify_rate_per_s": round(verify_rate, 1),
        "backends": rates,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "notes": "ops_per_s: requests / seconds spent inside the n replicas (all on one core); "
                 "end_to_end_ops_per_s also pays the clients (sign requests, verify f+1 "
                 "replies) and the event loop; signs_per_op and verifies_per_op are per "
                 "replica; messages count only what crosses the network; latency is wall "
                 "clock in the closed loop",
        "results": results,
    }


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=parse_int_list, default=list(DEFAULT_NS))
    parser.add_argument("--batch", type=parse_int_list, default=list(DEFAULT_BATCHES))
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    parser.add_argument("--backend", choices=["pynacl", "cryptography"], default=None)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    report = run(args.n, args.batch, args.requests, args.backend, args.seed,
                 command="python -m benchmarks.core " + " ".join(argv or sys.argv[1:]))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
