"""The plots of lesson 07's drills and comparisons, one per result (each returns its ``Axes``)."""

from __future__ import annotations

from matplotlib.axes import Axes

from helpers.capstone.drills import OutageDrill
from helpers.capstone.experiments import HeadOfLineResult, LatencyResult
from helpers.core.plots import COLORS, axes


def plot_upload_latency(result: LatencyResult, *, ax: Axes | None = None) -> Axes:
    """Each upload's latency in both designs (log scale), with the processing time and the client timeout."""
    ax = axes(ax, (8, 4))
    for label, run, marker, color in (
        ("async: 202 Accepted", result.async_run, "o", COLORS[0]),
        ("sync: 200 when processed", result.sync_run, "s", COLORS[1]),
    ):
        xs = [i + 1 for i, s in enumerate(run.samples) if s.ok]
        ys = [s.latency for s in run.samples if s.ok]
        ax.plot(xs, ys, marker, color=color, label=f"{label} (answered)")
        failed = [i + 1 for i, s in enumerate(run.samples) if not s.ok]
        if failed:
            ax.plot(failed, [result.client_timeout_s] * len(failed), "x", color=color, markersize=9, label=f"{label}: gave up")
    ax.axhline(
        result.processing_p50_s, color="gray", linestyle=":", label=f"processing one image (p50 {result.processing_p50_s:.2f} s)"
    )
    ax.axhline(
        result.client_timeout_s,
        color="black",
        linestyle="--",
        linewidth=0.8,
        label=f"client timeout ({result.client_timeout_s:g} s)",
    )
    ax.set_yscale("log")
    ax.set(
        xlabel="upload number (in the order sent)",
        ylabel="upload latency (s, log scale)",
        title=f"Upload latency under a burst of {result.uploads} uploads",
    )
    ax.set_xticks(range(1, result.uploads + 1))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # outside: points fill the plot
    ax.grid(alpha=0.3)
    return ax


def plot_head_of_line(result: HeadOfLineResult, *, ax: Axes | None = None) -> Axes:
    """Images finished over time, one step line per design; an X marks when the pathological image finished."""
    ax = axes(ax, (8, 4))
    for i, run in enumerate(result.runs):
        color = COLORS[i % len(COLORS)]
        times = sorted(c.done_s for c in run.completions)
        ax.step([0.0, *times], range(len(times) + 1), where="post", color=color, label=f"{run.design}: images finished")
        slow_rank = times.index(run.slow_done_s) + 1
        ax.plot(
            [run.slow_done_s],
            [slow_rank],
            "X",
            color=color,
            markersize=11,
            markeredgecolor="black",
            label=f"{run.design}: the slow image done",
        )
    ax.set(
        xlabel="time since the first upload (s)",
        ylabel="images finished (count)",
        title=f"Head-of-line blocking: 1 image at {result.slow_work / result.work:g}x the work among {result.normal} normal ones"
        if result.work
        else f"Head-of-line blocking: 1 slow image among {result.normal} normal ones",
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_notifier_outage(result: OutageDrill, *, ax: Axes | None = None) -> Axes:
    """When jobs finished and when their users were notified, with the outage shaded."""
    ax = axes(ax, (8, 3.2))
    ax.axvspan(result.down_s, result.up_s, color="#f8d0d0", alpha=0.7, label="notification service down")
    for i, (done, notified) in enumerate(result.waits):  # one line per job: how long its user waited for the news
        ax.plot([done, notified], [1, 0], color="gray", linewidth=0.7, label="a job and its notification" if i == 0 else None)
    ax.plot(result.done_s, [1] * len(result.done_s), "o", color=COLORS[0], label="job done (job.done published)")
    ax.plot(result.notified_s, [0] * len(result.notified_s), "s", color=COLORS[2], label="user notified (inbox + e-mail)")
    if result.notified_s:
        ax.annotate(f" {result.distinct} notified", (max(result.notified_s), 0), va="center", fontsize=8)
    ax.set_yticks([0, 1], ["notification", "processor"])
    ax.set_ylim(-0.6, 1.6)
    ax.set(
        xlabel="time since the run began (s)",
        title=f"{result.jobs} jobs done while notifications were down: {result.lost} lost, {result.duplicates} duplicated",
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return ax
