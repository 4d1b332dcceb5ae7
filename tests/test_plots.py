"""helpers.core.plots: every plot returns its Axes with a title, labelled axes (with units) and a legend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display needed, whatever ran before

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from helpers.core import plots
from helpers.core.measure import summarize
from helpers.core.tracing import SpanRow


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def legend_labels(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None, "every plot needs a legend"
    return [text.get_text() for text in legend.get_texts()]


def xs(line: Line2D) -> list[float]:
    """A line's x values as plain floats (matplotlib types them as any array-like)."""
    return [float(v) for v in np.asarray(line.get_xdata(), dtype=float)]


def ys(line: Line2D) -> list[float]:
    """A line's y values as plain floats."""
    return [float(v) for v in np.asarray(line.get_ydata(), dtype=float)]


def bars(ax: Axes) -> list[Rectangle]:
    """The bars of a bar chart or histogram: every patch these plots draw is one."""
    found = [patch for patch in ax.patches if isinstance(patch, Rectangle)]
    assert len(found) == len(ax.patches), "a patch that is not a bar"
    return found


def assert_labelled(ax: Axes, *, x_unit: str | None, y_unit: str | None) -> None:
    assert isinstance(ax, Axes)
    assert ax.get_title(), "missing title"
    if x_unit is not None:
        assert ax.get_xlabel(), "no x label"
        assert x_unit in ax.get_xlabel(), f"x label {ax.get_xlabel()!r} lacks {x_unit!r}"
    if y_unit is not None:
        assert ax.get_ylabel(), "no y label"
        assert y_unit in ax.get_ylabel(), f"y label {ax.get_ylabel()!r} lacks {y_unit!r}"


def test_latency_vs_hops() -> None:
    ax = plots.latency_vs_hops([1, 2, 3], [51, 102, 153], [60, 120, 190], per_hop_ms=50)
    assert_labelled(ax, x_unit="hops", y_unit="(ms)")
    assert legend_labels(ax) == ["p50 measured", "p99 measured", "n × 50 ms (work alone)"]
    ideal = ax.get_lines()[2]
    assert ys(ideal) == [50, 100, 150]
    assert list(ax.get_xticks()) == [1, 2, 3]


def test_percentile_bars_heights_match_summaries() -> None:
    fast = summarize([0.001 * i for i in range(1, 101)])
    slow = summarize([0.01 * i for i in range(1, 101)])
    ax = plots.percentile_bars({"fast": fast, "slow": slow}, title="Two services")
    assert_labelled(ax, x_unit=None, y_unit="(ms)")
    assert ax.get_title() == "Two services"
    assert legend_labels(ax) == ["p50", "p90", "p99"]
    heights = [patch.get_height() for patch in bars(ax)]
    assert heights == pytest.approx([50, 500, 90, 900, 99, 990])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fast", "slow"]


def test_cdf_reaches_one_and_draws_on_a_given_axes() -> None:
    _, given = plt.subplots()
    ax = plots.cdf({"open loop": [3, 1, 2], "closed loop": [1, 1, 1, 1]}, ax=given, unit="s")
    assert ax is given
    assert_labelled(ax, x_unit="(s)", y_unit="fraction")
    assert legend_labels(ax) == ["open loop", "closed loop"]
    first = ax.get_lines()[0]
    assert xs(first) == [1, 2, 3]
    assert ys(first)[-1] == pytest.approx(1.0)


def test_timeline_shades_states_once_per_label() -> None:
    t = np.linspace(0, 10, 11)
    ax = plots.timeline(  # numpy arrays, as lessons pass them (plots' hints say Sequence[float])
        t,  # type: ignore[arg-type]
        {"queue depth": t * 2},  # type: ignore[dict-item]
        ylabel="messages waiting",
        title="Queue depth",
        states=[(0, 3, "closed"), (3, 6, "open"), (6, 7, "half-open"), (7, 10, "closed")],
    )
    assert_labelled(ax, x_unit="(s)", y_unit="messages")
    assert legend_labels(ax) == ["queue depth", "closed", "open", "half-open"]


def test_waterfall_from_span_rows() -> None:
    rows = [
        SpanRow("gateway", "GET /order", 0.0, 120.0, 0, "t" * 32, "a" * 16, None),
        SpanRow("orders", "load", 10.0, 100.0, 1, "t" * 32, "b" * 16, "a" * 16),
        SpanRow("stock", "reserve", 20.0, 80.0, 2, "t" * 32, "c" * 16, "b" * 16),
    ]
    ax = plots.waterfall(rows)
    assert_labelled(ax, x_unit="(ms)", y_unit=None)
    assert legend_labels(ax) == ["gateway", "orders", "stock"]
    assert [b.get_width() for b in bars(ax)] == pytest.approx([120, 90, 60])
    assert [b.get_x() for b in bars(ax)] == pytest.approx([0, 10, 20])
    labels = [t.get_text().rstrip() for t in ax.get_yticklabels()]
    assert labels == ["gateway: GET /order", "└ orders: load", "  └ stock: reserve"], "a tree prefix shows depth"


def test_waterfall_nesting_renders_and_client_and_server_read_apart() -> None:
    """Right-aligned tick labels hide leading spaces unless every label has one width in a
    monospace font: then each level's text starts further right. A grey line joins each
    child's bar to its parent's, and the two ends of one call say which end they are."""
    rows = [
        SpanRow("user", "request", 0.0, 120.0, 0, "t" * 32, "a" * 16, None),
        SpanRow("user", "GET /stock/42", 1.0, 119.0, 1, "t" * 32, "b" * 16, "a" * 16, "client"),
        SpanRow("stock", "GET /stock/{item}", 2.0, 118.0, 2, "t" * 32, "c" * 16, "b" * 16, "server"),
    ]
    ax = plots.waterfall(rows)
    ax.figure.canvas.draw()
    ticks = ax.get_yticklabels()
    assert len({len(t.get_text()) for t in ticks}) == 1, "one width, so right alignment keeps the left edges"
    assert {t.get_fontfamily()[0] for t in ticks} == {"monospace"}
    words = [t.get_text().strip(" └") for t in ticks]
    assert words == ["user: request", "user: GET /stock/42 (client)", "stock: GET /stock/{item} (server)"]
    canvas = ax.figure.canvas
    assert isinstance(canvas, FigureCanvasAgg), "matplotlib.use('Agg') above"
    renderer = canvas.get_renderer()
    char_w = ticks[0].get_window_extent(renderer).width / len(ticks[0].get_text())
    starts = [t.get_window_extent(renderer).x0 + char_w * (len(t.get_text()) - len(t.get_text().lstrip(" └"))) for t in ticks]
    assert starts[0] < starts[1] < starts[2], "deeper spans start further right on screen"
    links = [line for line in ax.get_lines() if len(set(xs(line))) == 1]
    assert sorted(xs(line)[0] for line in links) == [1.0, 2.0], "one parent-child line per child, at its start"


def test_waterfall_duration_labels_stay_inside_the_axes() -> None:
    """Every duration label lies within the x range, so neither the frame nor the legend (outside) clips it."""
    rows = [
        SpanRow("user", "request", 0.0, 262.0, 0, "t" * 32, "a" * 16, None),
        SpanRow("hop1", "GET /work", 1.0, 261.0, 1, "t" * 32, "b" * 16, "a" * 16),
        SpanRow("hop2", "GET /work", 210.0, 261.0, 2, "t" * 32, "c" * 16, "b" * 16),
        SpanRow("hop3", "GET /work", 259.0, 260.5, 3, "t" * 32, "d" * 16, "c" * 16),
    ]
    ax = plots.waterfall(rows)
    ax.figure.canvas.draw()
    frame = ax.get_window_extent()
    shown = ax.get_legend()
    assert shown is not None
    legend = shown.get_window_extent()
    labels = [t for t in ax.texts if t.get_text().endswith(" ms")]
    assert [t.get_text() for t in labels] == ["262 ms", "260 ms", "51 ms", "2 ms"]
    for text in labels:
        box = text.get_window_extent()
        assert frame.x0 <= box.x0, f"{text.get_text()!r} sticks out of the axes on the left"
        assert box.x1 <= frame.x1, f"{text.get_text()!r} sticks out of the axes on the right"
        assert not box.overlaps(legend), f"{text.get_text()!r} is under the legend"
    assert plots.waterfall(rows, legend=False).get_legend() is None


def test_small_multiples_share_bins_and_scales() -> None:
    bins = np.arange(0, 1.02, 0.02)
    panels = plots.small_multiples(
        {"a": [0.01] * 30, "b": [0.5, 0.51], "c": []},
        bins=bins,  # type: ignore[arg-type]  # a numpy array, as lessons pass it (the hint says Sequence[float])
        xlabel="arrival (s)",
        ylabel="requests per 20 ms",
        title="Three",
    )
    assert len(panels) == 3
    assert {p.get_ylim() for p in panels} == {panels[0].get_ylim()}, "one y scale"
    assert panels[0].get_ylim()[1] >= 30, "the shared y scale fits the tallest bar"
    assert all("per 20 ms" in p.get_ylabel() for p in panels)
    assert "(s)" in panels[-1].get_xlabel()
    assert [legend_labels(p) for p in panels[:2]] == [["a"], ["b"]]
    assert panels[0].figure.get_suptitle() == "Three"
    assert sum(p.get_height() for p in bars(panels[0])) == 30


def test_histogram_shares_bins() -> None:
    rng = np.random.default_rng(1)
    ax = plots.histogram(  # numpy arrays, as lessons pass them (plots' hints say Sequence[float])
        {"no jitter": rng.normal(1, 0.01, 200), "full jitter": rng.uniform(0, 2, 200)},  # type: ignore[dict-item]
        xlabel="retry time (s)",
        title="Retries",
        bins=20,
    )
    assert_labelled(ax, x_unit="(s)", y_unit="count")
    assert legend_labels(ax) == ["no jitter", "full jitter"]
    assert sum(p.get_height() for p in bars(ax)) == 400


def test_plots_render_to_png(tmp_path: Path) -> None:
    ax = plots.latency_vs_hops([1, 2], [50, 100], [55, 110])
    out = tmp_path / "plot.png"
    figure = ax.figure
    assert isinstance(figure, Figure), "a plot of its own, not a subfigure"
    figure.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
