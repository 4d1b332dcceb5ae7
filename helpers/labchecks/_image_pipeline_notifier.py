"""Lab 07's question 4, the notifier: a part of :mod:`helpers.labchecks.image_pipeline`.

The lab's checks module includes these checks in place (``checks.include(part)``). Each
check runs the learner's ``run_notifier()`` like a process, its MQTT clients watched on the wire.
"""

from __future__ import annotations

import uuid
from typing import Any

from helpers.capstone.jobs import JOB_DONE, JOB_FAILED, JOB_PROGRESS, Topics, done_event_id, failed_event_id
from helpers.capstone.notifier import Inbox
from helpers.core.messaging import Event, make_event, publish
from helpers.core.waiting import until, until_quiet
from helpers.grading.checks import CheckFailed, Checks, Context, expect
from helpers.grading.probes import WireWatch
from helpers.labchecks._image_pipeline_harness import (
    QUIET_S,
    Loop,
    a_user,
    job_of,
    session_problem,
)

part = Checks("07_image_pipeline")

# --------------------------------------------------------------------------- q4: the notifier


class _NotifierRig:
    """The learner's run_notifier under test: started, killed and restarted like a process, watched on the wire."""

    processor: Any
    """The check's own MQTT client, publishing job.done and job.failed as the processor would."""

    def __init__(self, ctx: Context, broker: Any) -> None:
        self.ctx, self.broker = ctx, broker
        self.topics = Topics.fresh("check07")
        self.folder = ctx.tmp_path("check07-")
        self.inbox = Inbox(self.folder)
        self.watch = WireWatch(broker, snapshot=lambda: set(self.inbox.per_job()))
        self.name = f"notifier-{uuid.uuid4().hex[:8]}"
        self.loop = Loop(ctx, "run_notifier")
        self.stack = ctx.exit_stack()
        ctx.forget_session(broker, self.name)
        ctx.on_cleanup(self.stop)

    @classmethod
    async def started(cls, ctx: Context) -> _NotifierRig:
        rig = cls(ctx, await ctx.broker())
        rig.processor = await rig.stack.enter_async_context(rig.broker.client(f"check-processor-{uuid.uuid4().hex[:8]}"))
        await rig.start()
        return rig

    async def start(self) -> None:
        await self.loop.launch(self.watch, self.topics, self.folder, self.name)

    async def stop(self) -> None:
        await self.loop.stop()

    def crashed(self) -> BaseException | None:
        return self.loop.crashed()

    def jobs(self, count: int, state: str = "done") -> list[tuple[str, str, str]]:
        return [(uuid.uuid4().hex, a_user(self.ctx), state) for _ in range(count)]

    @staticmethod
    def event(job: tuple[str, str, str]) -> Event:
        job_id, user, state = job
        if state == "done":
            data = {"job_id": job_id, "user": user, "results": {"thumb-128": f"results/{job_id}/thumb-128"}, "caption": "a photo"}
            return make_event(JOB_DONE, data, source="/processor", id=done_event_id(job_id))
        return make_event(
            JOB_FAILED,
            {"job_id": job_id, "user": user, "reason": "the caption model crashed"},
            source="/processor",
            id=failed_event_id(job_id),
        )

    async def finish(self, *jobs: tuple[str, str, str]) -> None:
        """Publish each job's job.done (or job.failed), as the processor would."""
        for job in jobs:
            await publish(self.processor, self.topics.done if job[2] == "done" else self.topics.failed, self.event(job), qos=1)

    async def wait_notified(self, job_ids: list[str], timeout: float = 3.0) -> None:
        await until(lambda: set(job_ids) <= set(self.inbox.per_job()) or self.crashed() is not None, timeout)
        error = self.crashed()
        if error is not None:
            raise CheckFailed(f"run_notifier() crashed: {type(error).__name__}: {error}")
        await until_quiet(lambda: (len(self.inbox), len(self.watch.deliveries)), QUIET_S, 2.0)  # a late duplicate shows up


def _once_each(inbox: Inbox, jobs: list[tuple[str, str, str]], label: str) -> None:
    counts = inbox.per_job()
    missing = [j for j, _, _ in jobs if counts[j] == 0]
    doubled = [j for j, _, _ in jobs if counts[j] > 1]
    failed = {j for j, _, state in jobs if state != "done"}
    if missing and set(missing) <= failed and len(missing) < len(jobs):  # the done ones were notified: the cause is known
        raise CheckFailed(
            f"{label}: the {len(missing)} failed job(s) were never notified, the done ones were: job.failed must notify "
            "too (subscribe to topics.jobs, which carries job.done and job.failed, and handle JOB_FAILED)"
        )
    expect(not missing, f"{label}: {len(missing)} of {len(jobs)} finished jobs were never notified")
    expect(not doubled, f"{label}: {len(doubled)} job(s) were notified more than once: remember the notified job ids")


@part.check(
    "q4",
    hint="one notification per finished job (done or failed), to the job's user; progress is not news",
    code_hint='if event.type in (JOB_DONE, JOB_FAILED): Inbox(workdir).notify(event.data["user"], job_id, "done" or "failed")',
)
async def notifies_each_user_once(ctx: Context) -> str:
    """Each finished job's user is notified once, with the job's state, even when its event comes twice."""
    rig = await _NotifierRig.started(ctx)
    jobs = rig.jobs(ctx.rng.randint(2, 4)) + rig.jobs(1, "failed")
    await rig.finish(*jobs)
    await rig.finish(jobs[0])  # a redelivered job.done
    progress = make_event(
        JOB_PROGRESS, {"job_id": uuid.uuid4().hex, "step": "thumbnails", "done": 2, "total": 4}, source="/processor"
    )
    await publish(rig.processor, rig.topics.progress, progress, qos=1)
    await rig.wait_notified([j for j, _, _ in jobs])
    _once_each(rig.inbox, jobs, "while running")
    by_job = {note.job_id: note for note in rig.inbox.entries()}
    for job_id, user, state in jobs:
        note = by_job[job_id]
        expect(note.user == user, f"job {job_id[:8]}'s notification went to {note.user!r}, not its user {user!r}")
        expect(note.state == state, f"job {job_id[:8]} ended {state!r}, its notification says {note.state!r}")
    extra = set(by_job) - {j for j, _, _ in jobs}
    expect(not extra, "a job.progress event became a notification: notify only job.done and job.failed")
    return f"{len(jobs)} jobs, {len(jobs)} notifications"


@part.check(
    "q4",
    points=2,
    timeout=15,
    hint="the same client id every time, a session that outlives the connection, an acknowledged QoS: the broker keeps it all",
    code_hint="manual_ack(broker.client(name, clean_session=False)); "
    "subscribed_messages(client, topics.jobs, qos=1, ready=ready)",
)
async def keeps_what_arrives_while_down(ctx: Context) -> str:
    """Jobs that finish while the notifier is down are notified once it is back, each once."""
    rig = await _NotifierRig.started(ctx)
    await rig.stop()  # killed
    jobs = rig.jobs(ctx.rng.randint(3, 5))
    await rig.finish(*jobs)
    await rig.start()  # back, with the same name
    await rig.wait_notified([j for j, _, _ in jobs])
    counts = rig.inbox.per_job()
    lost = [j for j, _, _ in jobs if counts[j] == 0]
    if lost:
        why = session_problem(rig.watch, rig.name) or "use a persistent session (clean_session=False, the given name) and QoS 1"
        raise CheckFailed(f"{len(lost)} of {len(jobs)} jobs that finished while the notifier was down were never notified: {why}")
    _once_each(rig.inbox, jobs, "after the restart")
    return f"{len(jobs)} jobs finished while it was down, {len(jobs)} users notified once"


@part.check(
    "q4",
    timeout=15,
    hint="write the notification first, acknowledge second",
    code_hint="inbox.notify(...); notified.add(job_id); then ack(client, message), with manual_ack(broker.client(...))",
)
async def acks_after_notifying(ctx: Context) -> None:
    """Each job.done is acknowledged only after its notification is written."""
    rig = await _NotifierRig.started(ctx)
    jobs = rig.jobs(ctx.rng.randint(2, 4))
    await rig.finish(*jobs)
    await rig.wait_notified([j for j, _, _ in jobs])
    early = []
    for job_id, _, _ in jobs:
        deliveries = [d for d in rig.watch.on(rig.topics.done) if job_of(d.payload) == job_id]
        if deliveries and deliveries[0].acked is not None and job_id not in (deliveries[0].seen_at_ack or set()):
            early.append(job_id)
    how = " (the client acknowledges on receipt: wrap it with manual_ack(...))" if rig.watch.auto_acking() else ""
    expect(
        not early,
        f"ack before notifying: {len(early)} of {len(jobs)} job.done events were acknowledged before the user was told{how}",
    )


@part.check(
    "q4",
    timeout=15,
    hint="keep the notified job ids in a file in workdir (SeenIds), not in memory",
    code_hint='notified = SeenIds(Path(workdir) / "notified-jobs.txt"); skip a job id already in it',
)
async def remembers_across_a_restart(ctx: Context) -> None:
    """A job notified before a restart is not notified again when its job.done comes again after it."""
    rig = await _NotifierRig.started(ctx)
    first, later = rig.jobs(1)[0], rig.jobs(1)[0]
    await rig.finish(first)
    await rig.wait_notified([first[0]])
    await rig.stop()
    await rig.start()
    await rig.finish(first, later)  # the processor republished first's job.done (say, after its own crash)
    await rig.wait_notified([first[0], later[0]])
    count = rig.inbox.per_job()[first[0]]
    expect(count == 1, f"after a restart a job's user was notified again ({count} notifications): keep the notified ids on disk")
