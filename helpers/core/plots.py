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


def timeline(  # noqa: PLR0913  a plot's labels and options, by keyword
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


def span_labels(rows: Sequence[SpanRow]) -> list[str]:
    """Tick labels for :func:`waterfall`: a tree prefix per depth and the span's kind.

    ``gateway: GET /order`` at depth 0, ``└ orders: load`` at depth 1, ``  └ ...`` at
    depth 2; all padded to one length, so that in a monospace font the right-aligned
    labels keep their left edges and the steps of the tree show.
    """
    texts = []
    for r in rows:
        prefix = "  " * (r.depth - 1) + "└ " if r.depth else ""
        kind = f" ({r.kind})" if r.kind in ("client", "server", "producer", "consumer") else ""
        texts.append(f"{prefix}{r.service}: {r.name}{kind}")
    width = max((len(t) for t in texts), default=0)
    return [t.ljust(width) for t in texts]


def waterfall(rows: Sequence[SpanRow], *, ax: Axes | None = None, title: str = "Trace waterfall", legend: bool = True) -> Axes:
    """Spans as horizontal bars, one row each, nested by depth: nesting shows blocking.

    Nesting is drawn twice, so it survives matplotlib's right-aligned tick labels: each
    label starts with a tree prefix (``└`` under its parent, one step further right per
    level, in a monospace font padded to one width so the steps line up), and a thin grey
    line drops from each parent bar to its children's bars. Client and server spans of
    one call get "(client)" and "(server)" in their labels, so the two ends read apart.

    Each bar carries its duration. The label sits inside the bar's right end when the bar
    is wide enough, else just right of it, and the x axis leaves room for it, so no label
    runs into the frame or the legend (which sits outside the plotting area, since the
    deepest span ends at the lower right). ``legend=False`` drops the service legend: the
    tick labels already name each span's service.
    """
    ax = axes(ax, (8, 0.5 * max(len(rows), 3) + 1))
    services = list(dict.fromkeys(r.service for r in rows))
    end = max((r.end_ms for r in rows), default=1.0) or 1.0
    for i, row in enumerate(rows):
        color = COLORS[services.index(row.service) % len(COLORS)]
        ax.barh(i, row.duration_ms, left=row.start_ms, color=color, edgecolor="black", linewidth=0.5)
        label = f"{row.duration_ms:.0f} ms"
        if row.duration_ms >= 0.12 * end:  # room inside the bar for "1234 ms"
            ax.text(row.end_ms - 0.01 * end, i, label, va="center", ha="right", fontsize=8, color="white", fontweight="bold")
        else:
            ax.text(row.end_ms + 0.01 * end, i, label, va="center", ha="left", fontsize=8)
    ax.set_xlim(min((r.start_ms for r in rows), default=0.0), end * 1.14)  # room for a label after the last bar
    row_of = {r.span_id: i for i, r in enumerate(rows)}
    for i, row in enumerate(rows):
        if row.parent_id in row_of:  # a parent-child line: from the parent's bar down to the child's
            ax.plot([row.start_ms] * 2, [row_of[row.parent_id] + 0.4, i - 0.4], color="0.45", linewidth=0.8, zorder=0)
    labels = span_labels(rows)
    ax.set_yticks(range(len(rows)), labels, fontfamily="monospace")
    ax.invert_yaxis()
    if legend:
        handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[i % len(COLORS)]) for i in range(len(services))]
        ax.legend(handles, services, title="service", loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set(xlabel="time since the trace began (ms)", title=title)
    ax.grid(axis="x", alpha=0.3)
    return ax


def histogram(  # noqa: PLR0913  a plot's labels and options, by keyword
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    title: str,
    bins: int | Sequence[float] = 30,
    ax: Axes | None = None,
    ylabel: str = "count",
) -> Axes:
    """Overlaid histograms on shared bins (e.g. retry arrival times with and without jitter).

    ``bins`` is a number of bins or their edges; ``ylabel`` should say what one bar counts
    ("requests per 20 ms").
    """
    ax = axes(ax)
    values = [np.asarray(v, dtype=float) for v in series.values() if len(v)]
    if values:
        edges = np.histogram_bin_edges(np.concatenate(values), bins=bins)
        for name, v in series.items():
            ax.hist(v, bins=list(edges), alpha=0.55, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def small_multiples(  # noqa: PLR0913  a plot's labels and options, by keyword
    series: Mapping[str, Sequence[float]],
    *,
    bins: Sequence[float],
    xlabel: str,
    ylabel: str,
    title: str,
    size: tuple[float, float] | None = None,
) -> list[Axes]:
    """One histogram per series, stacked, on the same bins and the same x and y scales.

    Overlaid histograms hide each other; small multiples with shared axes let the eye
    compare heights and spreads directly (the retry storm's three policies, say).
    Each panel's legend (outside it, on the right) names its series; the figure title says what all show.
    """
    n = len(series)
    figsize = size or (9, 1.9 * n + 0.9)
    fig, grid = plt.subplots(n, 1, figsize=figsize, sharex=True, sharey=True, layout="constrained", squeeze=False)
    panels = list(grid[:, 0])
    for i, (ax, (name, values)) in enumerate(zip(panels, series.items(), strict=True)):
        ax.hist(np.asarray(values, dtype=float), bins=list(bins), color=COLORS[i % len(COLORS)], label=name)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)  # outside: never over a bar
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    panels[-1].set_xlabel(xlabel)
    fig.suptitle(title)
    return panels
