"""PNG figures of the benchmarks' JSON reports (``--plot FILE.png``).

Plotting is an optional extra: ``pip install -e '.[plot]'`` (matplotlib). matplotlib is
imported here, lazily, inside the functions; without it ``require_matplotlib()`` raises
``PlotUnavailable``, a ``ConfigError`` whose one-line message the CLI prints before exiting
with code 2. Figures are drawn with matplotlib's object API on the Agg canvas: no pyplot, no
global backend switch, no display needed.

Each ``plot_*`` function takes the report exactly as the benchmark prints it with ``--json``
and writes one PNG.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bftdeliberate.errors import ConfigError

NEEDS_MATPLOTLIB = "--plot needs matplotlib: pip install -e '.[plot]'"
DPI = 120
#: Points of an analytic curve between the smallest and the largest n.
CURVE_POINTS = 200


class PlotUnavailable(ConfigError):
    """matplotlib is not installed (one line: how to install it)."""


def require_matplotlib() -> None:
    """Raise ``PlotUnavailable`` unless matplotlib can be imported (checked before a long
    benchmark runs, so a missing extra fails at once)."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise PlotUnavailable(NEEDS_MATPLOTLIB) from None


def prepare_plot(path: str | Path) -> Path:
    """Check, before a benchmark runs, that its plot can be drawn and written: matplotlib
    importable, the folder there. Raises ``PlotUnavailable`` or ``ConfigError``."""
    require_matplotlib()
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{path}: --plot writes a PNG file (FILE.png)")
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: no such directory {str(path.parent)!r} for the plot")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory")
    return path


def plot_option_error(path: str | Path) -> str | None:
    """``prepare_plot`` for the ``python -m benchmarks.X --plot`` entry points: the one-line
    reason the plot cannot be drawn, or None."""
    try:
        prepare_plot(path)
    except ConfigError as error:
        return str(error)
    return None


def add_plot_option(parser: argparse.ArgumentParser) -> None:
    """``--plot FILE.png`` for a ``python -m benchmarks.X`` entry point."""
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="also draw the report as a PNG (pip install -e '.[plot]')")


def refuse_plot(parser: argparse.ArgumentParser, path: str | Path | None) -> bool:
    """True after printing the one-line reason ``--plot path`` cannot be drawn (the entry
    point then exits 2 before measuring anything); False when it can, or without --plot."""
    error = plot_option_error(path) if path else None
    if error is not None:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
    return error is not None


def _figure(panels: int, width_per_panel: float = 5.2, height: float = 4.4):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_per_panel * panels, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    try:
        figure.savefig(path, dpi=DPI, format="png")
    except OSError as error:
        raise ConfigError(f"{path}: cannot write the plot ({error.strerror or error})") from None
    return path


def _curve_ns(ns: Sequence[int]) -> list[float]:
    low, high = min(ns), max(ns)
    if low == high:
        return [float(low)]
    step = math.log(high / low) / (CURVE_POINTS - 1)
    return [low * math.exp(step * i) for i in range(CURVE_POINTS)]


def _log_axes(axis: Any, ns: Sequence[int]) -> None:
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xticks(sorted(set(ns)))
    axis.set_xticklabels([str(n) for n in sorted(set(ns))])
    axis.set_xticks([], minor=True)
    axis.grid(True, which="major", alpha=0.3)
    axis.grid(True, which="minor", axis="y", alpha=0.1)
    axis.set_xlabel("committee size n")


def _plain_numbers(axis: Any) -> None:
    """Tick labels of a log axis as plain numbers (12, 20, 30), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    def minor(value: float, _: Any) -> str:
        # Label 2x and 5x only: every minor tick labelled crowds a wide range.
        leading = f"{value:.0e}"[0]
        return f"{value:g}" if leading in "25" else ""

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def _colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return [palette(i % 10) for i in range(count)]


# ------------------------------------------------------------------ complexity


def plot_complexity(report: dict[str, Any], path: str | Path) -> Path:
    """Log-log: messages per committed operation vs n, measured points over PBFT's curves
    (one per batch size); bytes per operation; messages per view change vs n."""
    from benchmarks.complexity import analytic_normal_total

    figure, (messages, sizes, view_change) = _figure(3)
    points = report["points"]
    ns = sorted({p["n"] for p in points})
    batches = sorted({p["batch"] for p in points})
    k = report["checkpoint_interval"]
    curve_ns = _curve_ns(ns)
    for color, batch in zip(_colors(len(batches)), batches):
        mine = sorted((p for p in points if p["batch"] == batch), key=lambda p: p["n"])
        requests = mine[0]["requests"]
        messages.plot(curve_ns, [analytic_normal_total(n, batch, requests, k) for n in curve_ns],
                      color=color, linewidth=1.2, alpha=0.8, label=f"PBFT, batch {batch}")
        messages.plot([p["n"] for p in mine], [p["messages_per_op"] for p in mine], "o",
                      color=color, markersize=6, markerfacecolor="none", markeredgewidth=1.6,
                      label=f"measured, batch {batch}")
        sizes.plot([p["n"] for p in mine], [p["bytes_per_op"] for p in mine], "o-",
                   color=color, markersize=5, label=f"batch {batch}")
    _log_axes(messages, ns)
    messages.set_ylabel("messages per committed operation")
    messages.set_title("normal case: measured (o) over PBFT (lines)")
    messages.legend(fontsize=7, ncols=2)
    _log_axes(sizes, ns)
    sizes.set_ylabel("bytes per committed operation (measured)")
    sizes.set_title("normal case: bytes on the network per operation")
    sizes.legend(fontsize=8)

    records = [r for r in report["records"] if r["phase"] == "view_change"
               and r["type"] in ("view-change", "new-view")]
    if records:
        first_batch = min(r["batch"] for r in records)
        formulas = {"view-change": (lambda n: (n - 1) * (n - 1), "(n-1)²"),
                    "new-view": (lambda n: n - 1, "n-1")}
        for color, kind in zip(_colors(2), ("view-change", "new-view")):
            formula, text = formulas[kind]
            view_change.plot(curve_ns, [formula(n) for n in curve_ns], color=color,
                             linewidth=1.2, alpha=0.8, label=f"PBFT {kind.upper()}: {text}")
            mine = sorted((r for r in records if r["type"] == kind and r["batch"] == first_batch),
                          key=lambda r: r["n"])
            view_change.plot([r["n"] for r in mine], [r["measured"] for r in mine], "o",
                             color=color, markersize=6, markerfacecolor="none",
                             markeredgewidth=1.6, label=f"measured {kind.upper()}")
            if any(r.get("duplicates") for r in mine):
                view_change.plot([r["n"] for r in mine],
                                 [r["measured"] - r["duplicates"] for r in mine], "x",
                                 color=color, markersize=6,
                                 label=f"measured {kind.upper()} less re-sent copies")
        _log_axes(view_change, ns)
        view_change.set_ylabel("messages per view change")
        view_change.set_title("view change after the primary crashed")
        view_change.legend(fontsize=8)
    else:
        view_change.set_axis_off()
        view_change.text(0.5, 0.5, "no view change measured", ha="center", va="center")
    figure.suptitle(f"bftd bench complexity: {report['link_delay_ms']:g} ms links, K = {k}, "
                    f"{report['seeds']} seed(s)", fontsize=11)
    return _save(figure, path)


# ------------------------------------------------------------------ throughput


def plot_throughput(report: dict[str, Any], path: str | Path) -> Path:
    """Throughput vs clients (with BFT-SMaRt's signed reference points), and the latency
    percentiles of each client count as points of its CDF."""
    figure, (throughput, latency) = _figure(2)
    results = [r for r in report.get("results", []) if r.get("ops")]
    clients = [r["clients"] for r in results]
    throughput.plot(clients, [r["ops_per_s"] for r in results], "o-", label="measured ops/s")
    reference = (report.get("reference") or {}).get("signed") or {}
    ref_points = sorted((int(c), v["ops_per_s"]) for c, v in reference.items())
    if ref_points:
        throughput.plot([c for c, _ in ref_points], [v for _, v in ref_points], "s--",
                        color="grey", label="BFT-SMaRt signed (reference)")
    throughput.set_xscale("log")
    ticks = sorted(set(clients) | {c for c, _ in ref_points})
    if ticks:
        throughput.set_xticks(ticks)
        throughput.set_xticklabels([str(c) for c in ticks])
        throughput.set_xticks([], minor=True)
    throughput.set_xlabel("closed-loop clients")
    throughput.set_ylabel("committed ops/s")
    throughput.set_ylim(bottom=0)
    throughput.grid(True, alpha=0.3)
    throughput.legend(fontsize=8)
    throughput.set_title(f"throughput, n={report.get('n')}, batch {report.get('batch_size')}")
    levels = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.00))
    whole = all(r.get("latency_cdf_ms") for r in results)
    for color, r in zip(_colors(len(results)), results):
        if whole:  # the distribution, every 2 %
            pairs = [(x, y) for y, x in r["latency_cdf_ms"] if x is not None]
        else:  # older reports: the percentiles only
            pairs = [(r["latency_ms"].get(key), level) for key, level in levels]
            pairs = [(x, y) for x, y in pairs if x is not None]
        if pairs:
            latency.step([x for x, _ in pairs], [y for _, y in pairs], where="post",
                         color=color, label=f"{r['clients']} clients")
    latency.set_xscale("log")
    _plain_numbers(latency.xaxis)
    latency.set_xlabel("latency ms (submit to f+1 replies)")
    latency.set_ylabel("fraction of requests")
    latency.set_ylim(0, 1.05)
    latency.grid(True, alpha=0.3)
    latency.legend(fontsize=8)
    latency.set_title("latency CDF" if whole else "latency CDF (p50, p90, p99, max)")
    return _save(figure, path)


# ------------------------------------------------------------------------ sim


def plot_sim(report: dict[str, Any], path: str | Path) -> Path:
    """Seed-runs per minute against the goal, and the wall time of one run."""
    figure, (rate, walls) = _figure(2, width_per_panel=4.6)
    names = ["measured", "a full core per job", "goal"]
    values = [report["seed_runs_per_min"], report["seed_runs_per_min_full_cores"],
              report["goal_seed_runs_per_min"]]
    bars = rate.bar(names, values, color=["tab:blue", "tab:cyan", "lightgrey"])
    rate.bar_label(bars, fmt="%.0f", fontsize=8)
    rate.set_ylabel("seed-runs per minute")
    rate.set_title(f"{report['scenario']} n={report['n']}, {report['requests']} requests, "
                   f"{report['jobs']} jobs")
    wall = report["run_wall_ms"]
    keys = ["p50", "mean", "p99", "max"]
    bars = walls.bar(keys, [wall[k] for k in keys], color="tab:orange")
    walls.bar_label(bars, fmt="%.1f", fontsize=8)
    walls.set_ylabel("wall ms per seed-run")
    walls.set_title(f"{report['seed_runs']} runs, {report['events_per_run']:.0f} events each")
    return _save(figure, path)


# ----------------------------------------------------------------- view change


def plot_viewchange(report: dict[str, Any], path: str | Path) -> Path:
    """View-change latency vs n (median and range over the seeds, against the goal), and its
    messages and bytes vs n (log-log)."""
    figure, (latency, messages, sizes) = _figure(3)
    results = [r for r in report["results"] if r["failure_to_commit_s"] is not None]
    ns = [r["n"] for r in results]
    medians = [r["failure_to_commit_s"] for r in results]
    low = [m - r["failure_to_commit_s_range"][0] for m, r in zip(medians, results)]
    high = [r["failure_to_commit_s_range"][1] - m for m, r in zip(medians, results)]
    latency.errorbar(ns, medians, yerr=[low, high], fmt="o-", capsize=4,
                     label=f"median, range over {report['seeds']} seeds")
    goal = report["base_timeout_s"] * (results[0]["goal_timeout_multiple"] if results else 3)
    latency.axhline(goal, color="red", linestyle="--", linewidth=1, label=f"goal {goal:g} s")
    latency.axhline(report["base_timeout_s"], color="grey", linestyle=":", linewidth=1,
                    label=f"T = {report['base_timeout_s']:g} s")
    latency.set_xlabel("committee size n")
    latency.set_ylabel("crash to first commit in the new view, s (simulated)")
    latency.set_ylim(bottom=0)
    latency.grid(True, alpha=0.3)
    latency.legend(fontsize=8)
    latency.set_title("view-change latency")
    if ns:
        curve = _curve_ns(ns)
        messages.plot(curve, [(n - 1) ** 2 + (n - 1) for n in curve], color="grey",
                      label="PBFT minimum (n-1)² + (n-1)")
        messages.plot(ns, [r["messages"]["view_change_and_new_view"] for r in results], "o",
                      label="VIEW-CHANGE + NEW-VIEW")
        messages.plot(ns, [r["messages"]["all"] for r in results], "s", markerfacecolor="none",
                      label="all messages of the episode")
        _log_axes(messages, ns)
        messages.set_ylabel("messages")
        messages.legend(fontsize=8)
        messages.set_title("messages per view change")
        vc_bytes = [r["bytes"]["view_change_and_new_view"] for r in results]
        sizes.plot(ns, vc_bytes, "o", label="VIEW-CHANGE + NEW-VIEW")
        sizes.plot(ns, [r["bytes"]["all"] for r in results], "s", markerfacecolor="none",
                   label="all bytes of the episode")
        scale = vc_bytes[-1] / ns[-1] ** 3 if vc_bytes[-1] else None
        if scale:
            sizes.plot(curve, [scale * n ** 3 for n in curve], color="grey", linestyle="--",
                       label="∝ n³")
        _log_axes(sizes, ns)
        sizes.set_ylabel("bytes")
        sizes.legend(fontsize=8)
        sizes.set_title("bytes per view change")
    return _save(figure, path)


# --------------------------------------------------------------------- debate


def plot_debate(report: dict[str, Any], path: str | Path) -> Path:
    """Round close latency on the TCP committee, and the simulator's messages per round and
    per operation vs n (log-log)."""
    figure, (latency, growth) = _figure(2)
    close = report.get("round_close_latency_ms")
    if close:
        keys = ["p50", "mean", "p90", "max"]
        bars = latency.bar(keys, [close[k] for k in keys], color="tab:green")
        latency.bar_label(bars, fmt="%.1f", fontsize=8)
        latency.set_ylabel("ms, last contribution to round closed everywhere")
        latency.set_title(f"debate round close, n={report.get('n')} over TCP, "
                          f"{report.get('rounds')} rounds")
    else:
        latency.set_axis_off()
        latency.text(0.5, 0.5, f"no TCP figures: {report.get('error')}", ha="center",
                     va="center", wrap=True)
    simulated = report.get("simulated") or {}
    results = [r for r in simulated.get("results", []) if r.get("messages_per_round")]
    if results:
        ns = [r["n"] for r in results]
        growth.plot(ns, [r["messages_per_round"] for r in results], "o-",
                    label="messages per round")
        growth.plot(ns, [r["messages_per_op"] for r in results], "s-",
                    label="messages per ordered operation")
        curve = _curve_ns(ns)
        first = results[0]
        growth.plot(curve, [first["messages_per_round"] * (n / ns[0]) ** 3 for n in curve],
                    color="grey", linestyle="--", linewidth=1, label="∝ n³")
        growth.plot(curve, [first["messages_per_op"] * (n / ns[0]) ** 2 for n in curve],
                    color="grey", linestyle=":", linewidth=1, label="∝ n²")
        _log_axes(growth, ns)
        growth.set_ylabel("messages (simulator)")
        growth.set_title(f"simulator: {simulated.get('scenario')}")
        growth.legend(fontsize=8)
    else:
        growth.set_axis_off()
        growth.text(0.5, 0.5, "no simulated figures", ha="center", va="center")
    return _save(figure, path)
