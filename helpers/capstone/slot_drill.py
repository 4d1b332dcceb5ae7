"""Appendix 08's kill -9 drill: a worker *process* killed while a batch runs, its slot restarted (or left dead).

The workers are other processes (:class:`helpers.capstone.scaleout.WorkerProcesses`), so the
drill watches from the kernel: the Upload service's job store and a recorder of its own
(:mod:`helpers.capstone.wire`). :mod:`helpers.capstone.scaleout` re-exports :func:`kill_drill`.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from helpers.capstone import images
from helpers.capstone.jobs import DONE, FAILED, JOB_DONE, JOB_PROGRESS
from helpers.capstone.scaleout import Front, WorkerProcesses
from helpers.capstone.wire import Recorder, start_recorder
from helpers.core.messaging import Event
from helpers.core.waiting import until, until_quiet


@dataclass(frozen=True)
class JobEvents:
    """The job events of the run, counted per job, as a recorder of the kernel's own heard them (not Upload's consumer)."""

    recorder: Recorder

    def done(self, job_id: str) -> int:
        """``job.done`` messages for the job: more than one is a job announced twice."""
        return len(self.recorder.events(JOB_DONE, job_id))

    def started(self, job_id: str) -> int:
        """Progress events for the job's first step: 2 means a worker started the job over (a redelivery)."""
        return len(self._first_steps(job_id))

    def slowest_job_s(self) -> float:
        """The longest a finished job took from its first step to its ``job.done`` (0 before any finished):
        how long "no progress" must last to mean stuck."""
        ended: dict[str, float] = {}
        for t, event in self.recorder.events(JOB_DONE):
            ended.setdefault(str((event.data or {}).get("job_id")), t)
        return max((t - began[0][0] for job, t in ended.items() if (began := self._first_steps(job))), default=0.0)

    def _first_steps(self, job_id: str) -> list[tuple[float, Event]]:
        return [(t, e) for t, e in self.recorder.events(JOB_PROGRESS, job_id) if (e.data or {}).get("done") == 1]


@contextlib.asynccontextmanager
async def job_events(front: Front) -> AsyncIterator[JobEvents]:
    """Record every message of the run for the length of the block."""
    wire = await start_recorder(front.broker, front.topics, name=f"drill-{uuid.uuid4().hex[:6]}")
    try:
        yield JobEvents(wire.recorder)
    finally:
        await wire.stop()


@dataclass(frozen=True)
class SlotKillDrill:
    """One "kill -9 a worker process while a batch runs" drill, counted."""

    slot: str
    how: str
    """How the process was stopped: "kill -9" (SIGKILL) or "SIGTERM" (a clean stop)."""
    accepted: int
    """Jobs answered 202: the batch, plus the ones uploaded while the slot was dead."""
    held_in_flight: int
    """Jobs of the batch still unfinished once the other workers had gone quiet: the dead slot's session holds them."""
    held_new: int
    """Of the jobs uploaded while the slot was dead, those the broker still handed to it (its turn in the group)."""
    while_away: int
    away_s: float
    """How long the slot was dead (kill to restart, or to the end of the drill)."""
    restarted: bool
    done: int
    failed: int
    duplicated: int
    """Jobs announced done more than once (``job.done`` messages beyond one per job)."""
    started_over: int
    """Jobs a worker began again: the killed process's job in progress, done once more after the restart."""
    finish_after_restart_s: float | None

    @property
    def held(self) -> int:
        return self.held_in_flight + self.held_new

    @property
    def lost(self) -> int:
        """Accepted jobs that never finished (with the slot left dead: the ``held`` ones)."""
        return self.accepted - self.done - self.failed

    def as_row(self) -> dict[str, object]:
        return {
            "slot": self.slot,
            "stopped by": self.how,
            "restarted": "yes" if self.restarted else "no",
            "jobs accepted": self.accepted,
            "held: in flight": self.held_in_flight,
            f"held: of {self.while_away} new": self.held_new,
            "done": self.done,
            "started over": self.started_over,
            "duplicated": self.duplicated,
            "lost": self.lost,
        }


async def kill_drill(  # noqa: PLR0913  learner-facing: appendix 08 passes slot, while_away and restart
    front: Front,
    workers: WorkerProcesses,
    jobs: int,
    *,
    slot: str = "processor-1",
    restart: bool = True,
    graceful: bool = False,
    while_away: int = 0,
    quiet: float = 4.0,
    timeout: float = 120.0,
    photo: bytes | None = None,
) -> SlotKillDrill:
    """Upload ``jobs`` photos, ``kill -9`` the slot's process mid-batch, upload ``while_away`` more, then restart the slot.

    The kill comes once as many jobs have begun as there are workers. Then the
    drill waits until no job has finished for ``quiet`` seconds, or three times the
    slowest job so far if that is longer (a busy machine works slower, and a slow job is
    not a stuck one): the live workers have done all they can, and what is left waits
    for the dead slot's client id (``held``).
    With ``restart=False`` the slot stays dead, and those jobs are the ``lost`` ones.
    ``graceful`` stops the process with SIGTERM instead of SIGKILL.
    """
    photo = photo if photo is not None else images.sample_photo()
    store = front.upload_service.store

    async def upload(users: range) -> list[str]:
        answers = [await front.post(photo, f"drill-user-{i}") for i in users]
        return [a.job_id for a in answers if a.status == 202 and a.job_id]

    def unfinished(ids: list[str]) -> int:
        return sum(not (job := store.get(job_id)) or not job.final for job_id in ids)

    async with job_events(front) as events:
        batch = await upload(range(jobs))
        busy = min(len(workers.pids), len(batch))  # as many jobs begun as workers: each one is mid-image, most likely
        await until(lambda: sum(events.started(job_id) > 0 for job_id in batch) >= busy, timeout)
        await (workers.terminate(slot) if graceful else workers.kill(slot))
        killed = time.perf_counter()
        new = await upload(range(jobs, jobs + while_away))
        ids = batch + new
        await until(lambda: unfinished(ids) < len(ids), timeout)  # a live worker finished one: its pace is known
        await until_quiet(lambda: unfinished(ids), idle=max(quiet, 3 * events.slowest_job_s()), timeout=timeout)
        held_in_flight, held_new, away = unfinished(batch), unfinished(new), time.perf_counter() - killed
        finish_s = None
        if restart:
            await workers.restart(slot)
            began = time.perf_counter()
            if await front.wait_finished(ids, timeout):
                finish_s = time.perf_counter() - began
        await until_quiet(lambda: len(events.recorder.events(JOB_DONE)), idle=1.0, timeout=timeout)  # a late duplicate would show
    states = [job.state for job_id in ids if (job := store.get(job_id))]
    return SlotKillDrill(
        slot,
        "SIGTERM" if graceful else "kill -9",
        len(ids),
        held_in_flight,
        held_new,
        while_away,
        away,
        restart,
        states.count(DONE),
        states.count(FAILED),
        sum(events.done(job_id) > 1 for job_id in ids),
        sum(events.started(job_id) > 1 for job_id in ids),
        finish_s,
    )
