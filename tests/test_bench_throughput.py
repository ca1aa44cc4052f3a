"""``bftd bench throughput`` / ``benchmarks.throughput``: one tiny point through the CLI with
real node and load-generator processes on 127.0.0.1 -- the JSON carries the documented fields,
requests complete, latency percentiles are ordered, everything stops. No speed assertions."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import throughput
from bftdeliberate.cli import main

REPORT_FIELDS = {"benchmark", "command", "n", "f", "batch_size", "clients", "duration_s",
                 "warmup_s", "loadgens", "backend", "signed_requests",
                 "verify_rate_per_core_per_s", "cpu_count", "verify_bound_ops_per_s", "python",
                 "reference", "goal", "definitions", "results", "failure", "ok", "logs",
                 "wall_seconds"}
POINT_FIELDS = {"clients", "loadgens", "duration_s", "warmup_s", "window_s", "batch_size", "ops",
                "ops_per_s", "committed_ops_per_s", "latency_ms", "latency_cdf_ms", "timeouts",
                "retransmissions",
                "per_client_ops", "mean_batch_size", "batches_per_s", "fsyncs_per_batch",
                "cpu_seconds_per_replica", "cpu_utilisation_per_replica",
                "cpu_seconds_loadgens", "cpu_ms_per_op", "machine_cpu_utilisation",
                "verifies_per_op", "verify_bound_ops_per_s", "verify_bound_measured_ops_per_s",
                "ops_over_verify_bound", "traffic", "reference_bftsmart",
                "ratio_vs_bftsmart_signed", "ratio_vs_bftsmart_unsigned", "meets_goal", "nodes",
                "loadgen_exit_codes", "node_exit_codes", "problems", "ok"}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_one_tiny_point_with_real_processes(capsys):
    code, out, err = run_cli(capsys, "bench", "throughput", "--n", "4", "--clients", "4",
                             "--duration", "1.5", "--warmup", "0.5", "--json")
    report = json.loads(out)
    assert code == 0, (report["failure"], err)
    assert set(report) == REPORT_FIELDS
    assert report["benchmark"] == "throughput" and report["ok"] and report["failure"] is None
    assert report["command"].startswith("bftd bench throughput --n 4 --clients 4 ")
    assert (report["n"], report["f"], report["clients"], report["batch_size"]) == (4, 1, [4], 100)
    assert report["logs"] is None  # removed after a good run
    cpus = os.cpu_count()
    assert report["verify_bound_ops_per_s"] == pytest.approx(
        report["verify_rate_per_core_per_s"] * cpus / 4, rel=1e-3)
    assert report["reference"]["signed"]["8"]["ops_per_s"] == 793
    (point,) = report["results"]
    assert set(point) == POINT_FIELDS
    cdf = point["latency_cdf_ms"]
    assert [q for q, _ in cdf][-2:] == [0.99, 1.0]
    assert [ms for _, ms in cdf] == sorted(ms for _, ms in cdf)  # a distribution
    assert point["clients"] == 4 and point["loadgens"] == 2
    assert point["ops"] > 0 and point["ops_per_s"] > 0 and point["timeouts"] == 0
    latency = point["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert point["mean_batch_size"] >= 1
    assert len(point["cpu_seconds_per_replica"]) == 4
    assert all(c is not None and c > 0 for c in point["cpu_seconds_per_replica"])
    assert point["verifies_per_op"]["per_replica"] >= 1  # every request's signature
    assert point["traffic"]["client_frames_per_op"] >= 1 + 2  # request + f+1 replies
    assert point["traffic"]["analytic_messages"]["reply"] == 4
    assert point["ratio_vs_bftsmart_signed"] is None  # no reference at 4 clients
    assert point["node_exit_codes"] == [0, 0, 0, 0]  # each stopped on SIGTERM
    assert point["loadgen_exit_codes"] == [0, 0]
    assert {node["member"] for node in point["nodes"]} == {0, 1, 2, 3}
    assert all(node["view"] == 0 and node["committed_ops"] >= point["ops"]
               for node in point["nodes"])


@pytest.mark.parametrize("argv", [
    ["--clients", "0"],
    ["--clients", "8,x"],
    ["--duration", "-1"],
    ["--n", "3"],
    ["--loadgens", "0"],
    ["--batch-size", "0"],
    ["--bogus"],
])
def test_bad_flags_exit_2_with_one_line(capsys, argv):
    code, out, err = run_cli(capsys, "bench", "throughput", *argv)
    assert code == 2 and out == ""
    assert err.startswith("bftd: error:") and err.count("\n") == 1


def test_the_reference_is_interpolated_between_measured_points_only():
    assert throughput.reference_at(8, "signed") == (793.0, False)
    assert throughput.reference_at(100, "signed") == (1615.0, False)
    value, interpolated = throughput.reference_at(32, "signed")
    assert interpolated and 793 < value < 1615
    assert throughput.reference_at(32, "unsigned") == (3965.0, False)
    assert throughput.reference_at(4, "signed") == (None, False)
    assert throughput.reference_at(200, "signed") == (None, False)
