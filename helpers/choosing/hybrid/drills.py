"""Lesson 06's outage drills: take a part of the hybrid down, and count what became of every job.

Each drill returns a :class:`Drill` with the same counts: jobs accepted (202), done
(succeeded), failed, duplicated (a job with a step that finished more than once) and lost
(accepted, but not finished by the end or no longer known to the status resource). A
durable system shows done = accepted, duplicated = 0 and lost = 0; the drills' timings say
how long recovery took.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from helpers.choosing.hybrid.agent import DONE_RUN
from helpers.choosing.hybrid.board import FAILED, SUCCEEDED
from helpers.choosing.hybrid.service import HybridSystem
from helpers.choosing.hybrid.task import submit
from helpers.core.jobkit.client import Answer, request, resolve
from helpers.core.waiting import until, until_quiet


@dataclass
class Drill:
    """What an outage did to the jobs it touched."""

    name: str
    accepted: int
    done: int
    failed: int
    duplicated: int
    lost: int
    recovery_s: float
    """From the end of the outage to the last job's end (seconds)."""
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def durable(self) -> bool:
        """Every accepted job finished, none twice, none lost."""
        return self.accepted > 0 and self.done + self.failed == self.accepted and self.duplicated == self.lost == 0

    def row(self) -> dict[str, object]:
        return {
            "drill": self.name,
            "accepted": self.accepted,
            "done": self.done,
            "failed": self.failed,
            "duplicated": self.duplicated,
            "lost": self.lost,
            "recovered in (s)": round(self.recovery_s, 2),
        }


async def _kick_off(system: HybridSystem, http: aiohttp.ClientSession, count: int, label: str) -> list[str]:
    return [(await submit(http, system.url, f"drill: {label} #{i}")).job_id() for i in range(count)]


async def _statuses(system: HybridSystem, http: aiohttp.ClientSession, ids: Sequence[str]) -> list[Answer]:
    """Each job's status resource, as a client reads it (303 for a job that succeeded)."""
    return [await request(http, "GET", resolve(system.url, f"/jobs/{job_id}")) for job_id in ids]


def _count(system: HybridSystem, name: str, ids: Sequence[str], answers: Sequence[Answer], recovery_s: float) -> Drill:
    states = [answer.state for answer in answers]
    finished = Counter((run.job_id, run.step) for run in system.agent.runs if run.outcome == DONE_RUN)
    duplicated = sum(any(finished[job_id, step] > 1 for step in system.agent.steps_names) for job_id in ids)
    lost = sum(answer.status == 404 or state not in (SUCCEEDED, FAILED) for answer, state in zip(answers, states, strict=True))
    return Drill(name, len(ids), states.count(SUCCEEDED), states.count(FAILED), duplicated, lost, recovery_s)


async def workers_down_during_kickoff(
    system: HybridSystem, http: aiohttp.ClientSession, count: int = 6, *, down_s: float = 1.0, timeout: float = 30.0
) -> Drill:
    """Stop every step worker, kick off ``count`` jobs, keep the workers down ``down_s`` s, start them again."""
    await system.stop_workers()
    ids = await _kick_off(system, http, count, "workers down")
    await asyncio.sleep(down_s)  # the outage itself: nothing can run, whatever the service does
    while_down = Counter(str(a.state) for a in await _statuses(system, http, ids))
    back = time.monotonic()
    await system.start_workers()
    await system.all_finished(ids, timeout)
    drill = _count(system, "workers down during kickoff", ids, await _statuses(system, http, ids), time.monotonic() - back)
    drill.notes = {"while down": dict(while_down), "worker starts": system.agent.starts}
    return drill


async def jobs_service_restarted(
    system: HybridSystem, http: aiohttp.ClientSession, count: int = 6, *, down_s: float = 1.0, timeout: float = 30.0
) -> Drill:
    """Kick off ``count`` jobs, restart the jobs service while they run (down ``down_s`` s), then read every job."""
    ids = await _kick_off(system, http, count, "service restarted")
    await until(lambda: any((job := system.board.get(i)) is not None and job.state == "running" for i in ids), timeout)
    before = Counter(str(job.state) for i in ids if (job := system.board.get(i)) is not None)
    went_down = time.monotonic()
    await system.restart_service(down_s)
    back = time.monotonic()
    last = system.agent.steps_names[-1]
    meanwhile = {r.job_id for r in system.agent.runs if r.job_id in ids and r.step == last and went_down <= r.ended <= back}
    right_after = await _statuses(system, http, ids)
    await system.all_finished(ids, timeout)
    drill = _count(system, "jobs service restarted", ids, await _statuses(system, http, ids), time.monotonic() - back)
    drill.notes = {
        "before the restart": dict(before),
        "status codes right after": dict(Counter(a.status for a in right_after)),
        "finished while the service was down": len(meanwhile),
        "events that waited for the service": system.listener.stats.received,
    }
    return drill


async def worker_died_mid_step(
    system: HybridSystem, http: aiohttp.ClientSession, *, step: str = "research", come_back: bool = True, timeout: float = 30.0
) -> Drill:
    """Hold one job in ``step``, stop every worker (the step dies unacknowledged), then either start them
    again (the broker delivers the step again) or leave them down until the job's deadline fails it."""
    system.faults.hold_step = step
    try:
        [job_id] = await _kick_off(system, http, 1, f"worker died in {step}")
        await until(lambda: system.agent.running_step(job_id) == step, timeout)
        await system.stop_workers()
    finally:
        system.faults.reset()
    died = time.monotonic()
    if come_back:
        await system.start_workers()
    job = await system.finished(job_id, timeout)
    ended_s = time.monotonic() - died
    if not come_back:  # they come back after all, late: the step delivered again must not revive a failed job
        await system.start_workers()
        await until_quiet(lambda: (len(system.agent.runs), system.agent.skipped, len(job.changes)), idle=0.5, timeout=timeout)
    drill = _count(system, "", [job_id], await _statuses(system, http, [job_id]), ended_s)
    drill.name = f"worker died in {step}, " + ("came back" if come_back else "never came back")
    drill.notes = {"attempts at " + step: system.agent.attempts[job_id, step], "state": str(job.state), "reason": job.reason}
    return drill
