"""A handful of matplotlib plots with one look: titles, units on the axes, legends.

Each function draws on an ``ax`` you pass (or a new figure) and returns the Axes, so
a notebook cell stays one call long and a learner can still tweak the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from helpers.core.measure import Summary
from helpers.core.tracing import SpanRow

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def axes(ax: Axes | None, size: tuple[float, float] = (7, 4)) -> Axes:
    """``ax`` if the caller gave one (to draw into a grid of plots), else a new figure's axes."""
    if ax is not None:
        return ax
    _, new = plt.subplots(figsize=size, layout="constrained")
    return new


def latency_vs_hops(
    hops: Sequence[int], p50_ms: Sequence[float], p99_ms: Sequence[float], *, per_hop_ms: float = 50, ax: Axes | None = None
) -> Axes:
    """Measured p50/p99 per chain length next to the ideal n x per_hop_ms line."""
    ax = axes(ax)
    ax.plot(hops, p50_ms, "o-", label="p50 measured")
    ax.plot(hops, p99_ms, "s--", label="p99 measured")
    ax.plot(hops, [h * per_hop_ms for h in hops], ":", color="gray", label=f"n × {per_hop_ms:g} ms (work alone)")
    ax.set(xlabel="services in the chain (hops)", ylabel="end-to-end latency (ms)", title="Latency adds up hop by hop")
    ax.set_xticks(list(hops))
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def percentile_bars(summaries: Mapping[str, Summary], *, ax: Axes | None = None, title: str = "Latency percentiles") -> Axes:
    """Grouped p50/p90/p99 bars, one group per experiment."""
    ax = axes(ax)
    names = list(summaries)
    x = np.arange(len(names))
    for i, (label, attr) in enumerate((("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"))):
        ax.bar(x + (i - 1) * 0.27, [getattr(summaries[n], attr) for n in names], 0.27, label=label)
    ax.set_xticks(x, names)
    ax.set(ylabel="latency (ms)", title=title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return ax


def cdf(series: Mapping[str, Sequence[float]], *, ax: Axes | None = None, title: str = "Latency CDF", unit: str = "ms") -> Axes:
    """Empirical CDFs, one line per series: read off any percentile by eye."""
    ax = axes(ax)
    for name, values in series.items():
        ordered = np.sort(np.asarray(values, dtype=float))
        if ordered.size:
            ax.step(ordered, np.arange(1, ordered.size + 1) / ordered.size, where="post", label=name)
    ax.set(xlabel=f"latency ({unit})", ylabel="fraction of requests ≤ x", title=title, ylim=(0, 1.02))
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def timeline(
    t_s: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    ylabel: str,
    title: str,
    states: Sequence[tuple[float, float, str]] = (),
    ax: Axes | None = None,
) -> Axes:
    """Values over time; ``states`` shades (start_s, end_s, label) spans, e.g. breaker states."""
    ax = axes(ax, (8, 4))
    for name, values in series.items():
        ax.plot(t_s, values, label=name)
    shade = {"closed": "#d9f2d9", "open": "#f8d0d0", "half-open": "#fff0c0"}
    seen: set[str] = set()
    for start, end, label in states:
        ax.axvspan(start, end, color=shade.get(label, "#e0e0e0"), alpha=0.6, label=None if label in seen else label)
        seen.add(label)
    ax.set(xlabel="time (s)", ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def waterfall(rows: Sequence[SpanRow], *, ax: Axes | None = None, title: str = "Trace waterfall") -> Axes:
    """Spans as horizontal bars, one row each, indented by depth: nesting shows blocking."""
    ax = axes(ax, (8, 0.5 * max(len(rows), 3) + 1))
    services = list(dict.fromkeys(r.service for r in rows))
    for i, row in enumerate(rows):
        color = COLORS[services.index(row.service) % len(COLORS)]
        ax.barh(i, row.duration_ms, left=row.start_ms, color=color, edgecolor="black", linewidth=0.5)
        ax.text(row.end_ms, i, f" {row.duration_ms:.0f} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), ["  " * r.depth + f"{r.service}: {r.name}" for r in rows])
    ax.invert_yaxis()
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[i % len(COLORS)]) for i in range(len(services))]
    # outside the axes: the deepest (last) span ends at the lower right, where a legend would hide it
    ax.legend(handles, services, title="service", loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set(xlabel="time since the trace began (ms)", title=title)
    ax.grid(axis="x", alpha=0.3)
    return ax


def histogram(series: Mapping[str, Sequence[float]], *, xlabel: str, title: str, bins: int = 30, ax: Axes | None = None) -> Axes:
    """Overlaid histograms on shared bins (e.g. retry arrival times with and without jitter)."""
    ax = axes(ax)
    values = [np.asarray(v, dtype=float) for v in series.values() if len(v)]
    if values:
        edges = np.histogram_bin_edges(np.concatenate(values), bins=bins)
        for name, v in series.items():
            ax.hist(v, bins=list(edges), alpha=0.55, label=name)
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax
