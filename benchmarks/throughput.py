"""Throughput benchmark: a real committee of ``bftd node run`` processes on 127.0.0.1, driven
by closed-loop load-generator processes, measured from outside.

For each client count: a fresh keystore (free member ports checked), n node processes
(fresh data directories, Prometheus metrics on a free port each, stdout/stderr to
``node-I.log``), then ``loadgens`` load-generator processes (``python -m
benchmarks.throughput loadgen``) that split the clients between them. Every client is a
``CommitteeClient`` with one outstanding signed ``kv.put`` at a time (the next one as soon
as f+1 matching signed replies arrived); the clients of one process share one ``Verifier``
(replies are batch-signed, so the cache saves verifications). The load runs ``warmup``
seconds, then the ``duration``-second measurement window, then stops.

Per point, over the measurement window only:

* ``ops_per_s``: requests whose f+1 matching replies arrived inside the window / duration;
  ``latency_ms``: those requests' latencies (submit to f+1 matching replies), percentiles;
* ``mean_batch_size``: committed ops / committed batches (the nodes' metrics, window delta);
* ``cpu_seconds_per_replica``: utime+stime of each node process (``/proc/PID/stat``),
  window delta; the load generators' the same way;
* ``verify_bound_ops_per_s`` = verify_rate_per_core x os.cpu_count() / n: the Ed25519
  verify rate measured (one core, ``benchmarks.core.measure_verify_rate``) in the same run
  before the first point, spread over every core of the machine, divided over the n replicas
  that each verify every request at least once; ``verify_bound_measured_ops_per_s`` divides
  the same machine-wide rate by every verification the replicas and clients did per op;
* traffic: client-side frames and bytes per op (the load generators' transports), the
  loopback interface's bytes and packets per op (``/proc/net/dev``: every process on the
  machine, TCP/IP headers included), and PBFT's analytic messages per op at the measured
  batch size (the nodes' metrics do not export their transport's frame and byte counters);
* the reference: BFT-SMaRt on this machine (see ``BFTSMART``), ``ratio_vs_bftsmart_signed``
  (log-interpolated between measured reference points, flagged ``interpolated``).

Run on its own: ``python -m benchmarks.throughput --n 4 --clients 8,32,100 --duration 10``
(the same as ``bftd bench throughput --json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.core import measure_verify_rate, parse_int_list, percentile
from benchmarks.plots import add_plot_option, refuse_plot
from bftdeliberate.node import PROFILE_ENV
from bftdeliberate.pbft.config import DEFAULT_BATCH_SIZE

DEFAULT_CLIENTS = (8, 32, 100)
#: Points of the latency CDF in each point's report: every 2 % and the 99th percentile.
CDF_FRACTIONS = (*(step / 50 for step in range(1, 50)), 0.99, 1.0)
DEFAULT_DURATION = 10.0
DEFAULT_WARMUP = 2.0
DEFAULT_LOADGENS = 2
#: Seconds for the nodes to listen, serve metrics and connect to each other.
NODE_START_TIMEOUT = 30.0
#: Seconds for a load generator to connect all its clients and say ``ready``.
LOADGEN_READY_TIMEOUT = 60.0
#: Seconds one request may wait for f+1 matching replies before it counts as a timeout.
CALL_TIMEOUT = 10.0
#: Seconds a load generator may take after the window to finish its last calls and report.
LOADGEN_EXIT_GRACE = CALL_TIMEOUT + 20.0
#: Seconds a node gets to stop after SIGTERM before SIGKILL.
STOP_TIMEOUT = 10.0
#: Size of each put's value; each client cycles through ``KEYS_PER_CLIENT`` keys of its own.
VALUE_SIZE = 16
KEYS_PER_CLIENT = 64
#: The reference: BFT-SMaRt (Java), 4 replicas on 127.0.0.1 on this same 2-core machine,
#: closed-loop clients, ops/s and p50 latency by client count.
BFTSMART = {
    "system": "BFT-SMaRt (Java), 4 replicas on 127.0.0.1, same 2-core machine, closed loop",
    "signed": {"8": {"ops_per_s": 793, "p50_ms": 9.8}, "100": {"ops_per_s": 1615}},
    "unsigned": {"8": {"ops_per_s": 1836, "p50_ms": 4.3}, "32": {"ops_per_s": 3965},
                 "100": {"ops_per_s": 5000}},
}
GOAL = {"signed_ops_per_s_at_100_clients": 6000, "p50_ms_at_8_clients": 4.3}
DEFINITIONS = {
    "ops_per_s": "requests completed (f+1 matching signed replies) inside the measurement "
                 "window / window seconds; every request is signed by its client",
    "latency_ms": "per request, submit to f+1 matching replies, requests completed inside "
                  "the window; nearest-rank percentiles",
    "mean_batch_size": "window delta of committed_ops / committed_batches, mean over nodes",
    "cpu_seconds_per_replica": "utime+stime of each node process in the window "
                               "(/proc/PID/stat)",
    "verify_bound_ops_per_s": "verify_rate_per_core x os.cpu_count() / n: one core's "
                              "Ed25519 verify rate (measured in this run), on every core, "
                              "shared by n replicas that verify each request at least once",
    "verify_bound_measured_ops_per_s": "verify_rate_per_core x os.cpu_count() / (all "
                                       "signature verifications per op: n replicas + clients, "
                                       "from their counters)",
    "ratio_vs_bftsmart_signed": "ops_per_s / BFT-SMaRt's signed ops/s at this client count "
                                "(log-interpolated between its measured points; null outside "
                                "them)",
    "traffic": "client side: the load generators' transport frames/bytes per op (sent + "
               "received); loopback: /proc/net/dev 'lo' bytes/packets per op (the whole "
               "machine, TCP/IP headers included); analytic: PBFT's messages per op at the "
               "measured batch size (request + reply x n per op, pre-prepare n-1 + prepare "
               "(n-1)^2 + commit n(n-1) per batch)",
}


class BenchmarkFailure(Exception):
    """A point could not be measured (a process died or stalled); the logs say why."""


# ------------------------------------------------------------------------ helpers


def free_base_port(count: int, rng: random.Random | None = None) -> int:
    """A base port such that base..base+count-1 are free on 127.0.0.1, below the ephemeral
    range (outgoing connections cannot take them meanwhile)."""
    rng = rng or random.Random()
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        base = rng.randrange(10000, max(10001, low - count))
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise BenchmarkFailure(f"no {count} consecutive free ports on 127.0.0.1")


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def loopback_counters() -> tuple[int, int] | None:
    """(bytes, packets) received on the loopback interface so far."""
    try:
        for line in Path("/proc/net/dev").read_text().splitlines():
            name, _, counters = line.partition(":")
            if name.strip() == "lo":
                values = counters.split()
                return int(values[0]), int(values[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def scrape(port: int, timeout: float = 5.0) -> dict[str, float]:
    """A node's metrics as {sample name{sorted labels}: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as answer:
        text = answer.read().decode("utf-8")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())
                              if k != "member")  # one node per endpoint: member is implied
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def labelled(samples: dict[str, float], name: str) -> dict[str, float]:
    """The non-zero samples of a family with one label, by label value."""
    prefix = name + "{"
    return {key[len(prefix):-1].partition("=")[2]: value for key, value in samples.items()
            if key.startswith(prefix) and value}


def reference_at(clients: int, kind: str) -> tuple[float | None, bool]:
    """BFT-SMaRt's ops/s at ``clients`` (log-interpolated), and whether it was interpolated."""
    points = sorted((int(c), v["ops_per_s"]) for c, v in BFTSMART[kind].items())
    for c, ops in points:
        if c == clients:
            return float(ops), False
    for (c0, ops0), (c1, ops1) in itertools.pairwise(points):
        if c0 < clients < c1:
            frac = math.log(clients / c0) / math.log(c1 / c0)
            return ops0 + frac * (ops1 - ops0), True
    return None, False


def _wait_process(process: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _stop(processes: Sequence[subprocess.Popen[bytes]], timeout: float = STOP_TIMEOUT
          ) -> list[int | None]:
    """SIGTERM every live process, SIGKILL what is left after ``timeout``; the exit codes
    (None: it had exited before it was asked)."""
    asked: list[bool] = []
    for process in processes:
        asked.append(process.poll() is None)
        if asked[-1]:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        _wait_process(process, max(0.0, deadline - time.monotonic()))
    return [process.returncode if was_asked else None for process, was_asked
            in zip(processes, asked)]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -------------------------------------------------------------------------- nodes


@dataclass
class _Node:
    member: int
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int | None = None


@dataclass
class _Loadgen:
    index: int
    clients: list[str]
    process: subprocess.Popen[bytes]
    out_path: Path
    log_path: Path
    connected: int = 0


@dataclass
class _Snapshot:
    at: float
    node_cpu: list[float | None]
    loadgen_cpu: list[float | None]
    metrics: list[dict[str, float]]
    loopback: tuple[int, int] | None
    profile: list[Any] = field(default_factory=list)


def _start_nodes(directory: Path, n: int, batch_size: int | None,
                 profile: bool = False) -> list[_Node]:
    from bftdeliberate.committee import MANIFEST_FILE_NAME

    nodes: list[_Node] = []
    for member in range(n):
        argv = [sys.executable, "-m", "bftdeliberate.cli", "node", "run", "--id", str(member),
                "--committee", str(directory / MANIFEST_FILE_NAME),
                "--key", str(directory / f"agent-{member}.key"),
                "--data", str(directory / f"data-{member}"), "--metrics-port", "0",
                "--log-level", "info"]
        if batch_size is not None:
            argv += ["--batch-size", str(batch_size)]
        log_path = directory / f"node-{member}.log"
        env = dict(os.environ)
        if profile:
            env[PROFILE_ENV] = str(directory / "cprofile")  # written as cprofile.<member>
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       env=env)
        nodes.append(_Node(member, process, log_path))
    return nodes


def _wait_nodes_up(nodes: list[_Node], n: int, timeout: float = NODE_START_TIMEOUT) -> None:
    """Every node printed its ``listening`` line, answers on its metrics port and has links
    to the n-1 others."""
    deadline = time.monotonic() + timeout
    while True:
        for node in nodes:
            code = node.process.poll()
            if code is not None:
                raise BenchmarkFailure(f"node {node.member} exited with code {code} while "
                                       f"starting (log {node.log_path}):\n{_tail(node.log_path)}")
            if node.metrics_port is None:
                for line in node.log_path.read_text(errors="replace").splitlines():
                    if line.startswith("{") and '"listening"' in line:
                        try:
                            node.metrics_port = int(json.loads(line)["metrics_port"])
                        except (ValueError, KeyError, TypeError):
                            continue
        ready = 0
        for node in nodes:
            if node.metrics_port is None:
                continue
            try:
                samples = scrape(node.metrics_port, timeout=1.0)
            except OSError:
                continue
            ready += samples.get("bftd_connections", 0) >= n - 1
        if ready == len(nodes):
            return
        if time.monotonic() > deadline:
            raise BenchmarkFailure(f"the nodes were not up and connected within {timeout:g} s "
                                   f"({ready}/{len(nodes)} ready; logs "
                                   f"{nodes[0].log_path.parent})")
        time.sleep(0.1)


# ---------------------------------------------------------------------- loadgens


def _start_loadgens(directory: Path, client_ids: list[str], count: int) -> list[_Loadgen]:
    from bftdeliberate.committee import MANIFEST_FILE_NAME

    groups = [client_ids[i::count] for i in range(min(count, len(client_ids)))]
    loadgens = []
    for index, group in enumerate(groups):
        out_path = directory / f"loadgen-{index}.json"
        log_path = directory / f"loadgen-{index}.log"
        argv = [sys.executable, "-m", "benchmarks.throughput", "loadgen",
                "--committee", str(directory / MANIFEST_FILE_NAME), "--keys", str(directory),
                "--clients", ",".join(group), "--out", str(out_path)]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=log, start_new_session=True)
        loadgens.append(_Loadgen(index, group, process, out_path, log_path))
    return loadgens


def _wait_loadgens_ready(loadgens: list[_Loadgen], timeout: float = LOADGEN_READY_TIMEOUT
                         ) -> None:
    deadline = time.monotonic() + timeout
    for loadgen in loadgens:
        stdout = loadgen.process.stdout
        assert stdout is not None
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([stdout], [], [], max(0.0, remaining))
        line = stdout.readline().decode(errors="replace").split() if readable else []
        if not line or line[0] != "ready":
            code = loadgen.process.poll()
            state = f"exited with code {code}" if code is not None else \
                f"not ready within {timeout:g} s"
            raise BenchmarkFailure(f"load generator {loadgen.index} {state} (log "
                                   f"{loadgen.log_path}):\n{_tail(loadgen.log_path)}")
        loadgen.connected = int(line[1])
        if loadgen.connected < len(loadgen.clients):
            raise BenchmarkFailure(f"load generator {loadgen.index}: only {loadgen.connected}"
                                   f"/{len(loadgen.clients)} clients reached every member")


def _go(loadgens: list[_Loadgen], start: float, end: float) -> None:
    for loadgen in loadgens:
        stdin = loadgen.process.stdin
        assert stdin is not None
        stdin.write(f"go {start!r} {end!r}\n".encode())
        stdin.close()


# --------------------------------------------------------------------- one point


def _snapshot(nodes: list[_Node], loadgens: list[_Loadgen]) -> _Snapshot:
    at = time.time()
    node_cpu = [cpu_seconds(node.process.pid) for node in nodes]
    loadgen_cpu = [cpu_seconds(loadgen.process.pid) for loadgen in loadgens]
    loopback = loopback_counters()
    metrics = []
    for node in nodes:
        try:
            metrics.append(scrape(node.metrics_port or 0))
        except OSError:
            metrics.append({})
    return _Snapshot(at, node_cpu, loadgen_cpu, metrics, loopback)


def _sleep_until(moment: float) -> None:
    while (left := moment - time.time()) > 0:
        time.sleep(min(left, 0.5))


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def run_point(directory: Path, n: int, clients: int, *, duration: float, warmup: float,
              loadgens: int, batch_size: int | None, verify_rate: float,
              profile: bool = False) -> dict[str, Any]:
    """Measure one client count in ``directory`` (keystore, data, logs); raises
    ``BenchmarkFailure`` if a process dies or stalls."""
    from bftdeliberate.committee import init_keystore

    committee = init_keystore(directory, n, clients=clients, base_port=free_base_port(n))
    client_ids = [client.id for client in committee.clients][:clients]
    nodes: list[_Node] = []
    gens: list[_Loadgen] = []
    try:
        nodes = _start_nodes(directory, n, batch_size, profile)
        _wait_nodes_up(nodes, n)
        gens = _start_loadgens(directory, client_ids, loadgens)
        _wait_loadgens_ready(gens)
        start = time.time() + warmup
        end = start + duration
        _go(gens, start, end)
        _sleep_until(start)
        before = _snapshot(nodes, gens)
        _sleep_until(end)
        after = _snapshot(nodes, gens)
        for index, gen in enumerate(gens):
            code = _wait_process(gen.process, LOADGEN_EXIT_GRACE)
            if code != 0:
                raise BenchmarkFailure(f"load generator {index} exited with code {code} (log "
                                       f"{gen.log_path}):\n{_tail(gen.log_path)}")
        crashed = [node for node in nodes if node.process.poll() is not None]
        if crashed:
            node = crashed[0]
            raise BenchmarkFailure(f"node {node.member} exited with code "
                                   f"{node.process.returncode} during the run (log "
                                   f"{node.log_path}):\n{_tail(node.log_path)}")
        try:
            final = [scrape(node.metrics_port or 0) for node in nodes]
        except OSError as error:
            raise BenchmarkFailure(f"a node stopped answering on its metrics port: {error} "
                                   f"(logs {directory})") from None
    finally:
        for gen in gens:
            if gen.process.poll() is None:
                gen.process.kill()
                gen.process.wait()
        exit_codes = _stop([node.process for node in nodes])
    outputs = [json.loads(gen.out_path.read_text()) for gen in gens]
    report = _point_report(n, clients, duration, warmup, batch_size, verify_rate, before, after,
                           final, outputs, [gen.process.returncode for gen in gens])
    report["node_exit_codes"] = exit_codes
    if profile:
        report["profiles"] = {str(node.member): summarise_profile(
            directory / f"cprofile.{node.member}") for node in nodes}
    return report


#: Functions listed per profile summary.
PROFILE_TOP = 15
#: Where a node's time goes, by the function cProfile charges it to (first match wins).
PROFILE_CATEGORIES = (
    ("idle (waiting in epoll)", lambda file, fn: "'poll' of 'select.epoll'" in fn),
    ("fsync", lambda file, fn: fn == "<built-in method posix.fsync>"),
    ("ed25519 verify", lambda file, fn: "crypto_sign_open" in fn),
    ("ed25519 sign", lambda file, fn: fn == "<built-in method _sodium.crypto_sign>"),
    ("write syscalls (sockets, log)", lambda file, fn: fn == "<built-in method posix.write>"),
    ("socket send/recv", lambda file, fn: "'recv' of" in fn or "'send' of" in fn),
    ("cbor codec", lambda file, fn: "cbor" in file or "cbor2" in fn),
    ("pydantic validation", lambda file, fn: "pydantic" in file or "pydantic" in fn),
    ("trio scheduler and io", lambda file, fn: "/trio/" in file or "outcome" in file),
    ("pbft core (replica, replies, messages, kv)",
     lambda file, fn: any(part in file for part in ("pbft/", "kv.py", "messages.py",
                                                    "crypto.py"))),
    ("peer, transport, storage", lambda file, fn: any(part in file for part in (
        "peer.py", "net/", "storage.py", "framing.py"))),
)


def summarise_profile(path: Path, top: int = PROFILE_TOP) -> dict[str, Any]:
    """A node's cProfile (``BFTD_PROFILE``; the whole run, start-up included) as shares of
    its wall time by category, and the functions with the most own time. cProfile slows
    Python code down, so Python-level shares are inflated next to C calls and waiting."""
    import pstats

    try:
        stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    except (OSError, TypeError, ValueError) as error:
        return {"error": f"no profile at {path}: {error}"}
    total = sum(entry[2] for entry in stats.values()) or 1.0
    categories: dict[str, float] = {}
    functions: list[tuple[float, str]] = []
    for (file, line, function), (_cc, _nc, own, _cum, _callers) in stats.items():
        name = next((label for label, match in PROFILE_CATEGORIES if match(file, function)),
                    "other")
        categories[name] = categories.get(name, 0.0) + own
        functions.append((own, f"{function} ({Path(file).name}:{line})"))
    functions.sort(reverse=True)
    return {
        "wall_seconds": round(total, 2),
        "share_by_category": {name: round(value / total, 3) for name, value in
                              sorted(categories.items(), key=lambda item: -item[1])},
        "top_own_time": [[name, round(own / total, 3)] for own, name in functions[:top]],
    }


def _point_report(n: int, clients: int, duration: float, warmup: float,
                  batch_size: int | None, verify_rate: float, before: _Snapshot,
                  after: _Snapshot, final: list[dict[str, float]], outputs: list[dict[str, Any]],
                  loadgen_codes: list[int | None]) -> dict[str, Any]:
    window = after.at - before.at
    latencies = sorted(x for out in outputs for x in out["latencies_ms"])
    ops = len(latencies)
    ops_per_s = ops / duration

    def metric_delta(name: str) -> list[float]:
        return [a.get(name, 0.0) - b.get(name, 0.0)
                for a, b in zip(after.metrics, before.metrics)]

    committed_ops = metric_delta("bftd_committed_ops_total")
    committed_batches = metric_delta("bftd_committed_batches_total")
    verifications = metric_delta("bftd_signature_verifications_total")
    fsyncs = metric_delta("bftd_fsyncs_total")
    replica_messages = sum(metric_delta("bftd_messages_sent_total"))
    replica_bytes = sum(metric_delta("bftd_bytes_sent_total"))
    batch_sizes = [o / b for o, b in zip(committed_ops, committed_batches) if b > 0]
    mean_batch = statistics.fmean(batch_sizes) if batch_sizes else None
    node_cpu = [_delta(a, b) for a, b in zip(after.node_cpu, before.node_cpu)]
    gen_cpu = [_delta(a, b) for a, b in zip(after.loadgen_cpu, before.loadgen_cpu)]
    replica_cpu = sum(c for c in node_cpu if c is not None)
    gen_cpu_total = sum(c for c in gen_cpu if c is not None)
    cpu_count = os.cpu_count() or 1
    verify_bound = verify_rate * cpu_count / n
    replica_verifies_per_op = (statistics.fmean(v / o for v, o in zip(verifications,
                                                                      committed_ops) if o)
                               if any(committed_ops) else None)
    client_verifies = sum(out["verifications"] for out in outputs)
    client_ops_total = sum(out["completed_total"] for out in outputs)
    client_verifies_per_op = client_verifies / client_ops_total if client_ops_total else None
    measured_bound = None
    if replica_verifies_per_op and client_verifies_per_op is not None:
        per_op = n * replica_verifies_per_op + client_verifies_per_op
        measured_bound = verify_rate * cpu_count / per_op
    signed_ref, signed_interp = reference_at(clients, "signed")
    unsigned_ref, unsigned_interp = reference_at(clients, "unsigned")
    frames = sum(out["frames_sent"] + out["frames_received"] for out in outputs)
    client_bytes = sum(out["bytes_sent"] + out["bytes_received"] for out in outputs)
    loopback = None
    if before.loopback and after.loopback and ops:
        loopback = {"bytes_per_op": round((after.loopback[0] - before.loopback[0]) / ops, 1),
                    "packets_per_op": round((after.loopback[1] - before.loopback[1]) / ops, 3)}
    analytic = None
    if mean_batch:
        per_batch = (n - 1) + (n - 1) ** 2 + n * (n - 1)
        analytic = {"per_op": round(1 + n + per_batch / mean_batch, 3),
                    "request": 1, "reply": n, "pre_prepare": round((n - 1) / mean_batch, 4),
                    "prepare": round((n - 1) ** 2 / mean_batch, 4),
                    "commit": round(n * (n - 1) / mean_batch, 4)}
    meets_goal: dict[str, bool] = {}
    p50 = percentile(latencies, 0.50) if latencies else None
    if clients == 100:
        meets_goal["signed_ops_per_s_at_100_clients"] = ops_per_s >= \
            GOAL["signed_ops_per_s_at_100_clients"]
    if clients == 8 and p50 is not None:
        meets_goal["p50_ms_at_8_clients"] = p50 <= GOAL["p50_ms_at_8_clients"]
    per_client = [count for out in outputs for count in out["per_client_ops"]]
    timeouts = sum(out["timeouts"] for out in outputs)
    nodes = []
    for member, samples in enumerate(final):
        nodes.append({
            "member": member, "view": samples.get("bftd_view"),
            "last_executed": samples.get("bftd_last_executed_seq"),
            "view_changes": samples.get("bftd_view_changes_total"),
            "committed_ops": samples.get("bftd_committed_ops_total"),
            "rejected": labelled(samples, "bftd_rejected_messages_total"),
            "send_dropped": labelled(samples, "bftd_send_dropped_total"),
            "cpu_seconds_window": _round(node_cpu[member]),
            "cpu_seconds_total": _round(after.node_cpu[member]),
        })
    problems = []
    if not ops:
        problems.append("no request completed inside the window")
    if timeouts:
        problems.append(f"{timeouts} requests timed out ({CALL_TIMEOUT:g} s)")
    if any(node["view_changes"] for node in nodes):
        problems.append("a view change happened during the run")
    return {
        "clients": clients,
        "loadgens": len(outputs),
        "duration_s": duration,
        "warmup_s": warmup,
        "window_s": round(window, 3),
        "batch_size": batch_size or DEFAULT_BATCH_SIZE,
        "ops": ops,
        "ops_per_s": round(ops_per_s, 1),
        "committed_ops_per_s": round(statistics.fmean(committed_ops) / window, 1),
        "latency_ms": {
            "p50": _round(p50),
            "p90": _round(percentile(latencies, 0.90)) if latencies else None,
            "p99": _round(percentile(latencies, 0.99)) if latencies else None,
            "mean": _round(statistics.fmean(latencies)) if latencies else None,
            "max": _round(latencies[-1]) if latencies else None,
        },
        # The whole distribution for a CDF: nearest-rank latency at each of CDF_FRACTIONS.
        "latency_cdf_ms": [[round(q, 3), _round(percentile(latencies, q))]
                           for q in CDF_FRACTIONS] if latencies else [],
        "timeouts": timeouts,
        "retransmissions": sum(out["retransmissions"] for out in outputs),
        "per_client_ops": {"min": min(per_client, default=0), "max": max(per_client, default=0)},
        "mean_batch_size": _round(mean_batch, 2),
        "batches_per_s": round(statistics.fmean(committed_batches) / window, 1),
        "fsyncs_per_batch": (round(statistics.fmean(fsyncs) / statistics.fmean(committed_batches),
                                   3) if any(committed_batches) else None),
        "cpu_seconds_per_replica": [_round(c) for c in node_cpu],
        "cpu_utilisation_per_replica": [_round(c / window) if c is not None else None
                                        for c in node_cpu],
        "cpu_seconds_loadgens": [_round(c) for c in gen_cpu],
        "cpu_ms_per_op": {"replicas": _round(1000 * replica_cpu / ops) if ops else None,
                          "loadgens": _round(1000 * gen_cpu_total / ops) if ops else None},
        "machine_cpu_utilisation": round((replica_cpu + gen_cpu_total) / (window * cpu_count),
                                         3),
        "verifies_per_op": {"per_replica": _round(replica_verifies_per_op, 4),
                            "clients": _round(client_verifies_per_op, 4)},
        "verify_bound_ops_per_s": round(verify_bound, 1),
        "verify_bound_measured_ops_per_s": _round(measured_bound, 1),
        "ops_over_verify_bound": round(ops_per_s / verify_bound, 3),
        "traffic": {
            "client_frames_per_op": round(frames / client_ops_total, 3)
            if client_ops_total else None,
            "client_bytes_per_op": round(client_bytes / client_ops_total, 1)
            if client_ops_total else None,
            "loopback": loopback,
            "analytic_messages": analytic,
            # Everything the n replicas wrote (to each other and to clients), per op.
            "replica_messages_per_op": round(replica_messages / ops, 3) if ops else None,
            "replica_bytes_per_op": round(replica_bytes / ops, 1) if ops else None,
        },
        "reference_bftsmart": {"signed_ops_per_s": _round(signed_ref, 0),
                               "signed_interpolated": signed_interp,
                               "unsigned_ops_per_s": _round(unsigned_ref, 0),
                               "unsigned_interpolated": unsigned_interp},
        "ratio_vs_bftsmart_signed": round(ops_per_s / signed_ref, 3) if signed_ref else None,
        "ratio_vs_bftsmart_unsigned": round(ops_per_s / unsigned_ref, 3) if unsigned_ref
        else None,
        "meets_goal": meets_goal or None,
        "nodes": nodes,
        "loadgen_exit_codes": loadgen_codes,
        "problems": problems,
        "ok": bool(ops),
    }


# ------------------------------------------------------------------------- a run


def run(n: int, clients: Sequence[int], *, duration: float = DEFAULT_DURATION,
        warmup: float = DEFAULT_WARMUP, loadgens: int = DEFAULT_LOADGENS,
        batch_size: int | None = None, profile: bool = False, keep: bool = False,
        command: str = "", echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every client count in turn, each on a fresh cluster; the report (``ok`` False and
    ``logs`` set if a point failed: its directory is kept)."""
    from bftdeliberate.crypto import get_backend

    backend = get_backend(None)
    verify_rate = measure_verify_rate(backend.name)
    root = Path(tempfile.mkdtemp(prefix="bftd-bench-throughput-"))
    results: list[dict[str, Any]] = []
    failure: dict[str, Any] | None = None
    started = time.monotonic()
    for count in clients:
        directory = root / f"clients-{count}"
        if echo is not None:
            echo(f"clients={count}: starting {n} nodes and "
                 f"{min(loadgens, count)} load generators in {directory}")
        try:
            results.append(run_point(directory, n, count, duration=duration, warmup=warmup,
                                     loadgens=loadgens, batch_size=batch_size,
                                     verify_rate=verify_rate, profile=profile))
        except BenchmarkFailure as error:
            failure = {"clients": count, "error": str(error), "directory": str(directory)}
            break
    ok = failure is None and all(r["ok"] for r in results)
    keep = keep or not ok or profile
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "benchmark": "throughput",
        "command": command,
        "n": n,
        "f": (n - 1) // 3,
        "batch_size": batch_size or DEFAULT_BATCH_SIZE,
        "clients": list(clients),
        "duration_s": duration,
        "warmup_s": warmup,
        "loadgens": loadgens,
        "backend": backend.name,
        "signed_requests": True,
        "verify_rate_per_core_per_s": round(verify_rate, 1),
        "cpu_count": os.cpu_count(),
        "verify_bound_ops_per_s": round(verify_rate * (os.cpu_count() or 1) / n, 1),
        "python": sys.version.split()[0],
        "reference": BFTSMART,
        "goal": GOAL,
        "definitions": DEFINITIONS,
        "results": results,
        "failure": failure,
        "ok": ok,
        "logs": str(root) if keep else None,
        "wall_seconds": round(time.monotonic() - started, 1),
    }


# ------------------------------------------------------------------ load generator


def loadgen_main(committee_path: Path, keys: Path, client_ids: list[str], out: Path,
                 call_timeout: float = CALL_TIMEOUT) -> int:
    """One load-generator process: connect its clients, say ``ready N`` on stdout, wait for
    ``go START END`` (wall clock) on stdin, loop puts until END, write the results to ``out``.
    """
    import trio

    from bftdeliberate import kv
    from bftdeliberate.committee import load_committee
    from bftdeliberate.crypto import Verifier, load_private_key
    from bftdeliberate.peer import ClientTimeout, open_client

    committee = load_committee(committee_path)
    private_keys = {cid: load_private_key(keys / f"{cid}.key") for cid in client_ids}
    verifier = Verifier(next(iter(private_keys.values())).backend)
    latencies: list[float] = []
    per_client: dict[str, int] = {}
    totals = {"completed_total": 0, "timeouts": 0}
    value = b"v" * VALUE_SIZE

    async def drive(client: Any, start: float, end: float) -> None:
        count = 0
        in_window = 0
        while time.time() < end:
            operation = kv.put(f"{client.id}-{count % KEYS_PER_CLIENT}", value)
            sent = time.perf_counter()
            try:
                await client.call(operation, timeout=call_timeout)
            except ClientTimeout:
                totals["timeouts"] += 1
                continue
            elapsed = time.perf_counter() - sent
            done = time.time()
            count += 1
            totals["completed_total"] += 1
            if start <= done <= end:
                latencies.append(elapsed * 1000)
                in_window += 1
        per_client[client.id] = in_window

    async def main() -> None:
        from contextlib import AsyncExitStack

        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(
                open_client(committee, cid, private_keys[cid], verifier=verifier))
                for cid in client_ids]
            connected = sum(
                all(c.transport.connected(m) for m in range(committee.n)) for c in clients)
            print(f"ready {connected}", flush=True)
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            parts = line.split()
            if len(parts) != 3 or parts[0] != "go":
                raise SystemExit(f"expected 'go START END' on stdin, got {line!r}")
            start, end = float(parts[1]), float(parts[2])
            async with trio.open_nursery() as nursery:
                for client in clients:
                    nursery.start_soon(drive, client, start, end)
            stats = [c.transport.stats for c in clients]
            result = {
                "clients": client_ids,
                "latencies_ms": [round(x, 4) for x in latencies],
                "per_client_ops": [per_client.get(cid, 0) for cid in client_ids],
                **totals,
                "retransmissions": sum(c.core.stats.retransmissions for c in clients),
                "verifications": verifier.verifications,
                "verify_cache_hits": verifier.cache_hits,
                "frames_sent": sum(s.frames_sent for s in stats),
                "frames_received": sum(s.frames_received for s in stats),
                "bytes_sent": sum(s.bytes_sent for s in stats),
                "bytes_received": sum(s.bytes_received for s in stats),
            }
            out.write_text(json.dumps(result))

    trio.run(main)
    return 0


# ------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["loadgen"]:
        parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput loadgen")
        parser.add_argument("--committee", type=Path, required=True)
        parser.add_argument("--keys", type=Path, required=True)
        parser.add_argument("--clients", required=True, help="comma-separated client ids")
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--call-timeout", type=float, default=CALL_TIMEOUT)
        args = parser.parse_args(argv[1:])
        return loadgen_main(args.committee, args.keys,
                            [c for c in args.clients.split(",") if c], args.out,
                            args.call_timeout)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--clients", type=parse_int_list, default=list(DEFAULT_CLIENTS))
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION)
    parser.add_argument("--warmup", type=float, default=DEFAULT_WARMUP)
    parser.add_argument("--loadgens", type=int, default=DEFAULT_LOADGENS)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--keep", action="store_true")
    add_plot_option(parser)
    args = parser.parse_args(argv)
    from benchmarks.plots import plot_throughput

    if refuse_plot(parser, args.plot):
        return 2
    report = run(args.n, args.clients, duration=args.duration, warmup=args.warmup,
                 loadgens=args.loadgens, batch_size=args.batch_size, profile=args.profile,
                 keep=args.keep, command="python -m benchmarks.throughput " + " ".join(argv))
    print(json.dumps(report, indent=2))
    if args.plot:
        plot_throughput(report, args.plot)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
