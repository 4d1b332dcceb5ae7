"""Lesson 06's measurements: kickoffs against whole jobs, and one job followed four ways at once (with its plot)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import aiomqtt

from helpers.choosing.hybrid.agent import StepRun
from helpers.choosing.hybrid.board import ACCEPTED, CANCELLED, FAILED, RUNNING, SUCCEEDED, Job
from helpers.choosing.hybrid.service import HybridSystem
from helpers.choosing.hybrid.task import JOB_SUCCEEDED, submit
from helpers.core.jobkit.client import Answer, Polled, PollError, SseEvent, distinct, poll_job, read_events, resolve
from helpers.core.measure import Summary, summarize
from helpers.core.messaging import Event, decode

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


@dataclass
class KickoffRun:
    """``count`` kickoffs, one after another, and how long their jobs then took."""

    kickoffs: list[Answer]
    jobs: list[Job]
    job_seconds: list[float]
    """From each POST's send time to its job's final change."""

    @property
    def kickoff(self) -> Summary:
        return summarize([a.seconds for a in self.kickoffs])

    @property
    def job(self) -> Summary:
        return summarize(self.job_seconds)

    @property
    def ratio(self) -> float:
        """A typical job's duration over the slowest kickoffs (p50 job / p99 kickoff)."""
        return self.job.p50_ms / self.kickoff.p99_ms

    def outcomes(self) -> dict[str, int]:
        """How many jobs ended in each state."""
        return dict(Counter(str(job.state) for job in self.jobs))

    def rows(self, sync_seconds: Sequence[float] = ()) -> list[dict[str, object]]:
        """What the caller waits for: the 202, the whole job, and (given its timings) the synchronous version."""
        measured = [("POST /jobs: the 202", self.kickoff), ("the job: POST to its last step", self.job)]
        if sync_seconds:
            measured.append(("POST /agent: the sync version", summarize(list(sync_seconds))))
        return [
            {"what the caller waits for": label, "count": s.count, "p50 ms": round(s.p50_ms, 1), "p99 ms": round(s.p99_ms, 1)}
            for label, s in measured
        ]


async def measure_kickoffs(system: HybridSystem, count: int = 16, *, timeout: float = 30.0) -> KickoffRun:
    """Kick off ``count`` jobs one after another (a patient client), then wait for every job to end."""
    answers: list[Answer] = []
    ids: list[str] = []
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            answers.append(await submit(http, system.url, f"kickoff {i}: compare {2 + i % 4} message brokers"))
            ids.append(answers[-1].job_id())  # a kickoff that was not a 202 stops the run here
    jobs = await system.all_finished(ids, timeout)
    seconds = [job.changes[-1].at - answer.sent for job, answer in zip(jobs, answers, strict=True)]
    return KickoffRun(answers, jobs, seconds)


@dataclass
class Watch:
    """One job followed four ways at once: two pollers, the event stream and the completion event."""

    accepted: Answer
    job: Job
    polite: Polled
    """Honors ``Retry-After``."""
    eager: Polled
    """Asks every ``every_s`` seconds, whatever ``Retry-After`` says."""
    every_s: float
    stream: list[SseEvent]
    pushed: tuple[float, Event] | None
    """When the completion event (``job.succeeded`` / ``job.failed``) arrived on MQTT, and the event."""
    runs: list[StepRun]

    @property
    def started(self) -> float:
        return self.accepted.sent

    @property
    def ended(self) -> float:
        """When the job's last step ended (the workers' clock): the moment there was something to learn."""
        return max(r.ended for r in self.runs) if self.runs else self.job.changes[-1].at

    @property
    def stream_states(self) -> list[str]:
        return distinct(str(e.json().get("state")) for e in self.stream if e.event == "status")

    def rows(self) -> list[dict[str, object]]:
        def row(client: str, requests: int, learned: float | None, states: Sequence[str]) -> dict[str, object]:
            late = "never" if learned is None else f"{_ms(learned - self.ended):,.1f}"
            return {
                "client": client,
                "HTTP requests": requests,
                "learned it, ms after the last step": late,
                "states seen": " > ".join(states),
            }

        pushed_at, pushed = self.pushed if self.pushed is not None else (None, None)
        return [
            row(
                f"poll, honoring Retry-After ({self.accepted.retry_after():g} s)",
                self.polite.requests,
                self.polite.learned_at,
                self.polite.states,
            ),
            row(f"poll every {self.every_s * 1000:g} ms", self.eager.requests, self.eager.learned_at, self.eager.states),
            row("event stream (SSE), one GET", 1, self.stream[-1].at if self.stream else None, self.stream_states),
            row("completion event (MQTT)", 0, pushed_at, [SUCCEEDED if pushed and pushed.type == JOB_SUCCEEDED else FAILED]),
        ]


async def _completion(client: aiomqtt.Client, job_id: str) -> tuple[float, Event]:
    async for message in client.messages:
        event = decode(bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else b"")
        if isinstance(event.data, dict) and event.data.get("job_id") == job_id:
            return time.monotonic(), event
    raise PollError("the completion subscription ended before the job did")


async def watch_job(system: HybridSystem, task: str, *, every_s: float = 0.05, timeout: float = 30.0) -> Watch:
    """Kick off one job and follow it four ways at once; see :class:`Watch`."""
    async with system.broker.client() as watcher, aiohttp.ClientSession() as http:
        for kind in ("succeeded", "failed"):
            await watcher.subscribe(system.topics.job(kind), qos=1)
        accepted = await submit(http, system.url, task)
        job_id = accepted.job_id()
        polite, eager, stream, pushed = await asyncio.wait_for(
            asyncio.gather(
                poll_job(http, system.url, accepted, timeout=timeout),
                poll_job(http, system.url, accepted, every_s=every_s, timeout=timeout),
                read_events(http, resolve(system.url, f"/jobs/{job_id}/events"), timeout=timeout),
                _completion(watcher, job_id),
            ),
            timeout,
        )
    job = await system.finished(job_id, timeout)
    return Watch(accepted, job, polite, eager, every_s, stream, pushed, system.agent.runs_of(job_id))


STATE_COLORS: dict[str, str] = {
    ACCEPTED: "#9e9e9e",
    RUNNING: "#1f77b4",
    SUCCEEDED: "#2ca02c",
    FAILED: "#d62728",
    CANCELLED: "#ff7f0e",
}


def plot_watch(watch: Watch, *, ax: Axes | None = None, title: str | None = None) -> Axes:
    """A timeline: the workers' steps as bars, and below them every moment each client heard about the job."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from helpers.core.plots import COLORS, axes

    ax = axes(ax, (10, 4.2))
    t0 = watch.started
    lanes = [
        "workers (steps)",
        "poll, honors Retry-After",
        f"poll every {watch.every_s * 1000:g} ms",
        "event stream (SSE)",
        "completion event (MQTT)",
    ]
    for i, run in enumerate(watch.runs):
        ax.barh(0, run.seconds, left=run.started - t0, height=0.5, color=COLORS[i % len(COLORS)], edgecolor="black", lw=0.5)
        ax.text(run.started - t0 + run.seconds / 2, 0, run.step, ha="center", va="center", fontsize=8, color="white")

    def marks(lane: int, points: Iterable[tuple[float, str | None]], size: float) -> None:
        for at, state in points:
            ax.plot(at - t0, lane, "o", ms=size, color=STATE_COLORS.get(state or "", "black"), mec="black", mew=0.4)

    for lane, polled, size in ((1, watch.polite, 8), (2, watch.eager, 4)):
        status_answers = [a for a in polled.answers if a.url.rstrip("/").endswith(watch.job.path)]
        marks(lane, [(watch.accepted.at, watch.accepted.state), *((a.at, a.state) for a in status_answers)], size)
        for answer in status_answers:
            if answer.status == 303:  # the client follows it to the result at once
                ax.annotate("303 \u2192 result", (answer.at - t0, lane), xytext=(0, 7), textcoords="offset points", ha="center",
                            fontsize=7)  # fmt: skip
    marks(3, [(e.at, str(e.json().get("state"))) for e in watch.stream], 7)
    if watch.pushed is not None:
        at, event = watch.pushed
        marks(4, [(at, SUCCEEDED if event.type == JOB_SUCCEEDED else FAILED)], 9)
    ax.axvline(watch.accepted.at - t0, color="black", lw=0.8, ls=":")
    ax.text(watch.accepted.at - t0, -0.55, " 202 Accepted", fontsize=8, va="bottom")
    ax.axvline(watch.ended - t0, color="gray", lw=1, ls="--")
    ax.text(watch.ended - t0, -0.55, "last step ended ", fontsize=8, va="bottom", ha="right", color="gray")
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_ylim(4.6, -0.7)
    ax.set(xlabel="seconds since POST /jobs", title=title or "One job, four ways to hear about it")
    handles = [
        Line2D([], [], marker="o", ls="", color=c, mec="black", mew=0.4, label=s)
        for s, c in STATE_COLORS.items()
        if s in (ACCEPTED, RUNNING, SUCCEEDED)
    ]
    ax.legend(handles=handles, title="state seen", loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    plt.setp(ax.get_yticklabels(), fontsize=9)
    return ax
