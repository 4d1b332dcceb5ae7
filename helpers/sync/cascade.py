"""Cascading failure, replayed on a schedule and drawn as a timeline.

A downstream service gets sick on a script (healthy -> slow -> down -> healthy) while an
open-loop load keeps arriving at the gateway. We record every request (when it was
meant to go, how long it took, whether it failed) and how many requests the gateway
is holding open at each moment. Without guards, the gateway's latency copies the sick
service's and its open requests pile up; with a timeout and a circuit breaker it
answers fast (with an error) and recovers by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from helpers.core.http import Service
from helpers.core.lifecycle import died_of
from helpers.core.measure import Call, LoadRun, Summary, open_loop, summarize
from helpers.core.plots import timeline
from helpers.core.resilience import CircuitBreaker


@dataclass(frozen=True)
class Phase:
    """A stretch of time during which the sick service behaves one way."""

    name: str
    duration_s: float
    latency_s: float = 0.0
    down: bool = False


SICK_SCRIPT: tuple[Phase, ...] = (
    Phase("healthy", 1.0),
    Phase("slow 2 s", 2.5, latency_s=2.0),
    Phase("down", 1.0, down=True),
    Phase("healed", 1.5),
)
"""The script of lesson 02: slow is the nasty case (callers wait), down is the easy one."""


class PhaseSpan(NamedTuple):
    """When one phase of the script ran, in seconds from the replay's start."""

    start: float
    end: float
    name: str


@dataclass
class CascadeRun:
    """One replay: the load's samples, phase boundaries and the gateway's open requests."""

    run: LoadRun
    start: float
    phases: list[PhaseSpan]
    in_flight: list[tuple[float, int]] = field(default_factory=list)
    breaker: CircuitBreaker | None = None

    def window(self, names: Sequence[str]) -> Summary:
        """Summary of the requests *sent* during the named phases. Failed requests count
        in the latency too: a fast error is what a guarded caller gets, and its speed is
        the point."""
        spans = [(a, b) for a, b, n in self.phases if n in names]
        picked = [s for s in self.run.samples if any(a <= s.intended - self.start < b for a, b in spans)]
        every_answer = summarize([s.latency for s in picked])
        return replace(every_answer, errors=sum(not s.ok for s in picked))


async def _play(service: Service, phases: Sequence[Phase]) -> None:
    for phase in phases:
        service.faults.latency, service.faults.down = phase.latency_s, phase.down
        await asyncio.sleep(phase.duration_s)
    service.faults.reset()


async def _sample_in_flight(watched: Service, out: list[tuple[float, int]], start: float, every_s: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        out.append((loop.time() - start, watched.stats.in_flight))
        await asyncio.sleep(every_s)


async def replay(  # noqa: PLR0913  learner-facing: lesson 02 passes these knobs
    call: Call,
    sick: Service,
    watched: Service,
    *,
    phases: Sequence[Phase] = SICK_SCRIPT,
    rate: float = 20,
    timeout: float = 3.0,
    breaker: CircuitBreaker | None = None,
) -> CascadeRun:
    """Drive ``call`` open-loop at ``rate``/s while ``sick`` follows ``phases``.

    ``watched`` (usually the gateway) has its open requests sampled every 50 ms.
    ``timeout`` is the *user's* patience, so the run always ends.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    bounds: list[PhaseSpan] = []
    t = 0.0
    for p in phases:
        bounds.append(PhaseSpan(t, t + p.duration_s, p.name))
        t += p.duration_s
    in_flight: list[tuple[float, int]] = []
    player = asyncio.ensure_future(_play(sick, phases))
    sampler = asyncio.ensure_future(_sample_in_flight(watched, in_flight, start, 0.05))
    try:
        run = await open_loop(call, rate=rate, duration=t, timeout=timeout)
        await player
    finally:
        player.cancel()
        sampler.cancel()
        sick.faults.reset()
    if (error := died_of(sampler)) is not None:  # a sampler that crashed would leave the plot's lower half empty
        raise error
    return CascadeRun(run, start, bounds, in_flight, breaker)


def plot_replay(result: CascadeRun, title: str) -> Figure:
    """Top: each request's latency at its send time (x = failed). Bottom: requests the
    gateway holds open. Breaker states (if any) are shaded; phases are marked."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, layout="constrained")
    end = max(s.done for s in result.run.samples)
    states = result.breaker.spans(result.start, end) if result.breaker else []
    ok = [(s.intended - result.start, s.latency * 1000) for s in result.run.samples if s.ok]
    bad = [(s.intended - result.start, s.latency * 1000) for s in result.run.samples if not s.ok]
    if ok:
        ok_t, ok_ms = zip(*ok, strict=True)
        top.scatter(ok_t, ok_ms, s=12, color="tab:blue", label="answered OK", zorder=3)
    if bad:
        bad_t, bad_ms = zip(*bad, strict=True)
        top.scatter(bad_t, bad_ms, s=18, marker="x", color="tab:red", label="answered with an error", zorder=3)
    timeline([], {}, ylabel="latency (ms)", title=title, states=states, ax=top)
    top.set_ylim(0, max(lat for _, lat in ok + bad) * 1.35)  # room for the phase labels
    t, n = zip(*result.in_flight, strict=True) if result.in_flight else ((), ())
    timeline(list(t), {"requests open at the gateway": list(n)}, ylabel="open requests", title="", states=states, ax=bottom)
    for ax in (top, bottom):
        for start, stop, name in result.phases:
            ax.axvline(start, color="gray", linestyle="--", linewidth=0.8)
            if ax is top:
                ax.text(
                    (start + stop) / 2,
                    0.97,
                    f"inventory\n{name}",
                    transform=ax.get_xaxis_transform(),
                    fontsize=8,
                    ha="center",
                    va="top",
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
                )
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    top.set_xlabel("")
    bottom.set_xlabel("time since the run began (s)")
    return fig
