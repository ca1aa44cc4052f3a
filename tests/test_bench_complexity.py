"""``bftd bench complexity`` / ``benchmarks.complexity``: in the simulator, the normal case
sends exactly PBFT's messages per committed operation and a view change after the primary's
crash exactly its VIEW-CHANGEs and NEW-VIEWs (plus the re-sent copies the record names); the
JSON has one record per (n, batch, type, phase); ``--plot`` draws a PNG with matplotlib and
fails in one line (exit 2) without it. Seeded, virtual time, no wall-clock assertions."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import complexity, debate_cluster, plots, sim, throughput, viewchange
from bftdeliberate.cli import main

#: Small and quick: K = 4, so the default run length (K x batch requests) holds a checkpoint.
K = 4
NS = [4, 7]
BATCHES = [1, 10]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NEEDS_MATPLOTLIB = "bftd: error: --plot needs matplotlib: pip install -e '.[plot]'"
RECORD_FIELDS = {"n", "f", "batch", "phase", "type", "unit", "measured", "analytic",
                 "measured_over_analytic", "bytes", "bytes_per_message", "seeds_agree",
                 "formula"}
HEADER_FIELDS = {"benchmark", "command", "n", "batch", "seeds", "requests",
                 "requests_per_point", "checkpoint_interval", "link_delay_ms",
                 "view_change_timeout_s", "client_retransmit_s", "jobs", "python", "cpu_count",
                 "wall_seconds", "ok", "formulas", "notes", "points", "records"}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def report() -> dict:
    return complexity.run(NS, BATCHES, checkpoint_interval=K, command="test")


def records(report: dict, phase: str) -> dict[tuple[int, int, str], dict]:
    return {(r["n"], r["batch"], r["type"]): r for r in report["records"] if r["phase"] == phase}


def test_the_normal_case_sends_exactly_pbfts_messages(report):
    assert report["ok"]
    normal = records(report, "normal")
    for n in NS:
        for batch in BATCHES:
            requests = K * batch  # the default: one checkpoint interval of full batches
            expected = {"request": 1, "pre-prepare": (n - 1) / batch,
                        "prepare": (n - 1) ** 2 / batch, "commit": n * (n - 1) / batch,
                        "reply": n, "checkpoint": n * (n - 1) / requests, "status": 0}
            for message_type, per_op in expected.items():
                record = normal[(n, batch, message_type)]
                assert record["measured"] == pytest.approx(per_op, abs=1e-9), record
                assert record["analytic"] == pytest.approx(per_op, abs=1e-9), record
                assert record["measured_over_analytic"] == 1.0, record
                assert record["seeds_agree"]
            total = normal[(n, batch, "all")]
            assert total["measured_over_analytic"] == 1.0
            assert total["measured"] == pytest.approx(sum(expected.values()))
            assert normal[(n, batch, "prepare")]["bytes"] > 0
    # n=4, batch 1: 1 request + 3 pre-prepares + 9 prepares + 12 commits + 4 replies + 12
    # checkpoints / 4 ops.
    assert normal[(4, 1, "all")]["measured"] == 32.0
    for point in report["points"]:
        assert point["full_batches"] and point["state_digests_equal"]
        assert point["safety_violations"] == 0 and point["normal_matches_analytic"]
        assert point["batches"] == K and point["requests"] == K * point["batch"]


def test_the_view_change_sends_pbfts_view_changes_and_new_views(report):
    vc = records(report, "view_change")
    for n in NS:
        f = (n - 1) // 3
        for batch in BATCHES:
            view_changes = vc[(n, batch, "view-change")]
            assert view_changes["measured"] == (n - 1) * (n - 1) == view_changes["analytic"]
            assert view_changes["measured_over_analytic"] == 1.0
            assert view_changes["duplicates"] == 0
            new_views = vc[(n, batch, "new-view")]
            assert new_views["analytic"] == n - 1
            # The new primary re-sends NEW-VIEW to the n-2-2f live backups whose VIEW-CHANGE
            # came after its 2f+1st: counted, named, not folded into the formula.
            assert new_views["duplicates"] == n - 2 - 2 * f
            assert new_views["measured"] == (n - 1) + (n - 2 - 2 * f)
            assert new_views["first_copies_over_analytic"] == 1.0
            assert (new_views["measured_over_analytic"] == 1.0) == (n - 2 - 2 * f == 0)
            if n - 2 - 2 * f:
                assert "_on_view_change" in new_views["note"]
            # The pending request's batch in the new view, one member down.
            for message_type, count in {"pre-prepare": n - 1, "prepare": (n - 2) * (n - 1),
                                        "commit": (n - 1) ** 2, "reply": n - 1}.items():
                assert vc[(n, batch, message_type)]["measured"] == count
                assert vc[(n, batch, message_type)]["measured_over_analytic"] == 1.0
            assert vc[(n, batch, "request")]["analytic"] is None
    for point in report["points"]:
        episode = point["view_change"]
        assert episode["completed"] and episode["matches_analytic"] and episode["view"] == 1
        assert episode["prepared_certs_per_view_change"] == 0  # the run ended on a checkpoint
        assert episode["checkpoint_proof_size"] == 2 * ((point["n"] - 1) // 3) + 1
        # Client timeout 0.5 s, then the request timer T = 1 s, then a few 1 ms hops.
        assert 1.5 < episode["failure_to_commit_s"] < 1.52


def test_prepared_batches_are_re_proposed_by_the_new_view():
    # 6 batches with K = 4: stable checkpoint at 4, P = 2 prepared batches above it.
    result = complexity.run([4], [1], requests=6, checkpoint_interval=K)
    assert result["ok"]
    vc = records(result, "view_change")
    assert result["points"][0]["view_change"]["prepared_certs_per_view_change"] == 2
    assert vc[(4, 1, "prepare")]["measured"] == 2 * 3 * 3
    assert vc[(4, 1, "commit")]["measured"] == 3 * 3 * 3
    checkpoint = records(result, "normal")[(4, 1, "checkpoint")]
    assert checkpoint["measured"] == pytest.approx(12 / 6) and \
        checkpoint["measured_over_analytic"] == 1.0


def test_runs_are_deterministic():
    first = complexity.run([4], [10], checkpoint_interval=K)
    second = complexity.run([4], [10], checkpoint_interval=K)
    assert first["records"] == second["records"]


def test_cli_json_has_one_record_per_n_batch_type_and_phase(capsys):
    code, out, err = run_cli(capsys, "bench", "complexity", "--n", "4,7", "--batch", "1,10",
                             "--checkpoint-interval", str(K), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert HEADER_FIELDS <= set(report)
    assert report["benchmark"] == "complexity" and report["n"] == [4, 7]
    assert report["batch"] == [1, 10] and report["seeds"] == 1
    assert report["command"].startswith("bftd bench complexity --n 4,7 --batch 1,10")
    keys = [(r["n"], r["batch"], r["type"], r["phase"]) for r in report["records"]]
    assert len(keys) == len(set(keys))
    for record in report["records"]:
        assert RECORD_FIELDS <= set(record)
    normal_types = {t for _, _, t, phase in keys if phase == "normal"}
    assert normal_types == {*complexity.NORMAL_TYPES, "all"}
    for n in (4, 7):
        for batch in (1, 10):
            assert {(n, batch, t, "normal") for t in normal_types} <= set(keys)
            assert {(n, batch, t, "view_change") for t in ("view-change", "new-view")} <= set(keys)
    point = report["points"][0]
    assert {"ops_per_s_virtual", "ops_per_s_wall", "latency_ms_virtual", "messages_per_op",
            "bytes_per_op", "view_change"} <= set(point)
    assert set(point["latency_ms_virtual"]) == {"p50", "p90", "p99", "mean", "max"}
    # Lock step on 1 ms links: client -> primary, PRE-PREPARE, PREPARE, COMMIT, REPLY.
    assert point["latency_ms_virtual"]["p50"] == pytest.approx(5.0)


def test_cli_table(capsys):
    code, out, err = run_cli(capsys, "bench", "complexity", "--n", "4", "--batch", "1",
                             "--checkpoint-interval", str(K))
    assert code == 0, err
    assert "normal case" in out and "VIEW-CHANGE" in out and "1.000" in out


def test_module_entry_point(capsys):
    code = complexity.main(["--n", "4", "--batch", "1", "--checkpoint-interval", str(K),
                            "--json"])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)["benchmark"] == "complexity"


@pytest.mark.parametrize("argv", [
    ["--n", "3"], ["--n", "4,x"], ["--batch", "0"], ["--requests", "0"], ["--seeds", "0"],
    ["--plot", "/nonexistent-dir/complexity.png"],
])
def test_bad_usage_is_one_line_exit_2(capsys, argv):
    code, out, err = run_cli(capsys, "bench", "complexity", *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("bftd: error:")


def test_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "complexity.png"
    code, out, err = run_cli(capsys, "bench", "complexity", "--n", "4,7", "--batch", "1,10",
                             "--checkpoint-interval", str(K), "--plot", str(path))
    assert code == 0, err
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000
    assert f"plot: {path}" in out


def test_the_other_benchmarks_plot_their_reports(tmp_path):
    pytest.importorskip("matplotlib")
    vc_report = viewchange.run([4], seeds=1, command="test")
    plots.plot_viewchange(vc_report, tmp_path / "vc.png")
    latency = {"p50": 9.0, "p90": 12.0, "p99": 15.0, "mean": 10.0, "max": 19.0}
    throughput = {"n": 4, "batch_size": 100, "reference": {"signed": {
        "8": {"ops_per_s": 793, "p50_ms": 9.8}, "100": {"ops_per_s": 1615}}},
        "results": [{"clients": c, "ops": 100, "ops_per_s": 40.0 * c, "latency_ms": latency}
                    for c in (8, 32, 100)]}
    plots.plot_throughput(throughput, tmp_path / "tp.png")
    sim = {"scenario": "chaos", "n": 4, "requests": 50, "jobs": 2, "seed_runs": 10,
           "seed_runs_per_min": 1800.0, "seed_runs_per_min_full_cores": 1850.0,
           "goal_seed_runs_per_min": 2000, "events_per_run": 2600.0,
           "run_wall_ms": {"mean": 60.0, "p50": 58.0, "p99": 200.0, "max": 210.0}}
    plots.plot_sim(sim, tmp_path / "sim.png")
    debate = {"n": 4, "rounds": 3, "round_close_latency_ms": latency, "simulated": {
        "scenario": "debate-honest", "results": [
            {"n": n, "messages_per_round": 2.5 * n ** 3, "messages_per_op": 1.8 * n ** 2}
            for n in (4, 7)]}}
    plots.plot_debate(debate, tmp_path / "debate.png")
    for name in ("vc", "tp", "sim", "debate"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("argv", [
    ["bench", "complexity", "--n", "4", "--batch", "1"],
    ["bench", "viewchange", "--n", "4", "--seeds", "1"],
    ["bench", "sim", "--seconds", "1"],
    ["bench", "throughput", "--clients", "1", "--duration", "1"],
    ["bench", "debate", "--rounds", "1"],
])
def test_without_matplotlib_plot_fails_in_one_line_before_running(tmp_path, capsys,
                                                                   monkeypatch, argv):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    for module in (complexity, viewchange, sim, throughput, debate_cluster):
        monkeypatch.setattr(module, "run", _must_not_run)
    path = tmp_path / "plot.png"
    code, out, err = run_cli(capsys, *argv, "--plot", str(path))
    assert code == 2 and out == ""
    assert err.strip() == NEEDS_MATPLOTLIB
    assert not path.exists()


def test_without_matplotlib_nothing_else_changes(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run_cli(capsys, "bench", "complexity", "--n", "4", "--batch", "1",
                             "--checkpoint-interval", str(K), "--json")
    assert code == 0, err
    assert json.loads(out)["ok"]


def test_module_entry_point_without_matplotlib(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = complexity.main(["--n", "4", "--plot", str(tmp_path / "c.png")])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.strip() == ("python -m benchmarks.complexity: error: --plot needs matplotlib: "
                           "pip install -e '.[plot]'")


def _must_not_run(*args, **kwargs):
    raise AssertionError("the benchmark ran although --plot cannot be drawn")
