"""Lesson 05's plots: percentiles side by side, and an outage run as a timeline and as each caller's wait."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from helpers.choosing.head_to_head.drills import flatten
from helpers.choosing.head_to_head.results import Result
from helpers.core.plots import COLORS, axes, timeline

DESIGN_COLORS = {"sync": COLORS[0], "async": COLORS[1]}


def _log_ms(ax: Axes) -> None:
    """A log scale labelled in plain numbers (1, 2, 5, 10, 20, ...), not powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def percentile_panel(
    results: Iterable[Result | Mapping[str, Result]], which: str = "caller", *, ax: Axes | None = None, title: str | None = None
) -> Axes:
    """p50 (plain) and p99 (hatched) bars per scenario, sync and async side by side, on a log scale.

    ``which`` is ``"caller"`` (until the Order service answered) or ``"done"`` (until all
    three effects were applied). Caller percentiles count only the answered orders and done
    percentiles only the orders done, so a bar says above it how many it leaves out (errors,
    or orders never done); a hatched bar over fewer than 200 values is the max and says "max".
    """
    if which not in ("caller", "done"):
        raise ValueError(f"which must be 'caller' or 'done', got {which!r}")
    flat = flatten(results)
    ax = axes(ax)
    scenarios = list(dict.fromkeys(r.scenario.name for r in flat))
    x = np.arange(len(scenarios))
    width = 0.2
    for k, (design, pct) in enumerate((("sync", "p50"), ("sync", "p99"), ("async", "p50"), ("async", "p99"))):
        values = []
        for i, name in enumerate(scenarios):
            match = [r for r in flat if r.design == design and r.scenario.name == name]
            summary = (match[0].caller if which == "caller" else match[0].done_summary) if match else None
            if summary is None:
                values.append(math.nan)
                continue
            label, tail = summary.tail()
            values.append(summary.p50_ms if pct == "p50" else tail)
            if pct == "p99":
                _note_bar(ax, x[i] + (k - 1.5) * width, values[-1], _bar_note(match[0], which, label))
        ax.bar(
            x + (k - 1.5) * width,
            values,
            width,
            color=DESIGN_COLORS[design],
            hatch="//" if pct == "p99" else None,
            edgecolor="black",
            linewidth=0.5,
            label=f"{design} {pct}",
        )
    ax.set_xticks(x, [name.replace(", ", ",\n") for name in scenarios])  # "payment slow, then down" on two lines
    _log_ms(ax)
    default = "Caller: until the Order service answers" if which == "caller" else "Work: until all three effects are applied"
    ax.set(xlabel="scenario", ylabel="milliseconds (log scale)", title=title or default)
    ax.grid(axis="y", alpha=0.3, which="both")
    return ax


def _bar_note(result: Result, which: str, tail_label: str) -> str:
    """What a p99 bar leaves out: the errors (caller) or the orders never done (done); and "max" for a short run."""
    left_out = result.errors if which == "caller" else result.not_done
    lines = ["max"] if tail_label == "max" else []
    if left_out:
        lines.append(f"{left_out}/{len(result.order_ids)}\n{'errors' if which == 'caller' else 'never done'}")
    return "\n".join(lines)


def _note_bar(ax: Axes, x: float, top: float, note: str) -> None:
    if note:
        ax.annotate(
            note,
            (x, top if math.isfinite(top) else 1.0),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
            color="tab:red",
        )


def plot_latencies(results: Iterable[Result | Mapping[str, Result]], *, title: str | None = None) -> Figure:
    """Side by side: what the caller waited for, and how long until the work was done (p50, p99)."""
    flat = flatten(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained", sharey=True)
    percentile_panel(flat, "caller", ax=left)
    percentile_panel(flat, "done", ax=right)
    right.tick_params(labelleft=True)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="design, percentile")
    if title:
        fig.suptitle(title)
    return fig


def _pair(pair: Mapping[str, Result]) -> list[Result]:
    results = [pair[k] for k in ("sync", "async") if k in pair]
    if not results:
        raise ValueError("expected the results of compare(): {'sync': ..., 'async': ...}")
    return results


def _outage_span(results: Sequence[Result]) -> tuple[float, float, str] | None:
    """The outage in seconds since each run's first order (the union over the runs), and its label."""
    windows = [(r.down_window[0] - r.t0, r.down_window[1] - r.t0) for r in results if r.down_window]
    if not windows:
        return None
    return min(w[0] for w in windows), max(w[1] for w in windows), f"{results[0].scenario.down or 'service'} down"


def _cumulative(times: Sequence[float], grid: np.ndarray) -> list[float]:
    return [float(n) for n in np.searchsorted(np.sort(np.asarray(times, dtype=float)), grid, side="right")]


def completion_timeline(pair: Mapping[str, Result], *, ax: Axes | None = None, step: float = 0.02) -> Axes:
    """Cumulative orders placed, done (per design) and refused (callers' errors), the outage shaded."""
    results = _pair(pair)
    ends = [s.done - r.t0 for r in results for s in r.run.samples]
    ends += [done - r.t0 for r in results for _, _, done in r.completions()]
    grid = np.arange(0.0, max(ends) + 0.3, step)
    first = results[0]
    series: dict[str, Sequence[float]] = {"orders placed": _cumulative([s.intended - first.t0 for s in first.run.samples], grid)}
    for r in results:
        series[f"{r.design}: done (all three effects)"] = _cumulative([d - r.t0 for _, _, d in r.completions()], grid)
    for r in results:
        refused = [s.done - r.t0 for s in r.run.samples if not s.ok]
        if refused:
            series[f"{r.design}: refused (caller got an error)"] = _cumulative(refused, grid)
    span = _outage_span(results)
    ax = timeline(
        list(grid),
        series,
        ylabel="orders (cumulative)",
        title="Orders done over time",
        states=[span] if span else [],
        ax=axes(ax, (7, 4)),
    )
    styles = {"orders placed": ("black", ":")}
    styles.update({f"{d}: done (all three effects)": (c, "-") for d, c in DESIGN_COLORS.items()})
    styles.update({f"{d}: refused (caller got an error)": ("tab:red", "--") for d in DESIGN_COLORS})
    for line in ax.get_lines():  # the same color for a design in every plot of the lesson
        color, style = styles.get(str(line.get_label()), (None, None))
        if color is not None:
            line.set(color=color, linestyle=style)
    ax.set_xlabel("time since the first order (s)")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def caller_waits(pair: Mapping[str, Result], *, ax: Axes | None = None) -> Axes:
    """Each order's answer latency (log scale) by when it was sent; error answers as red crosses."""
    results = _pair(pair)
    ax = axes(ax, (7, 4))
    for r in results:
        ok = [(s.intended - r.t0, s.latency * 1000) for s in r.run.samples if s.ok]
        bad = [(s.intended - r.t0, s.latency * 1000) for s in r.run.samples if not s.ok]
        if ok:
            ax.plot(
                *zip(*ok, strict=True), "o", ms=3.5, color=DESIGN_COLORS.get(r.design, "gray"), label=f"{r.design}: answered OK"
            )
        if bad:
            ax.plot(*zip(*bad, strict=True), "x", ms=5, color="tab:red", label=f"{r.design}: error answer")
    span = _outage_span(results)
    if span:
        ax.axvspan(span[0], span[1], color="#e0e0e0", alpha=0.6, label=span[2])
    _log_ms(ax)
    ax.set(
        xlabel="order sent at (s since the first order)",
        ylabel="caller's wait (ms, log scale)",
        title="What each caller waited for",
    )
    # below the axes: the dots fill the whole plot, so any place inside would hide some
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return ax


def plot_outage(pair: Mapping[str, Result], *, title: str | None = None) -> Figure:
    """Side by side for an outage run of both designs: :func:`completion_timeline` and :func:`caller_waits`."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    completion_timeline(pair, ax=left)
    caller_waits(pair, ax=right)
    if title:
        fig.suptitle(title)
    return fig
