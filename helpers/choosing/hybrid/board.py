"""Lesson 06's job board: the jobs service's view of its jobs, kept in the kit's SQLite store.

A :class:`Job` is the object the learner's code reads and changes (``job.state``,
``job.step``, ...); the :class:`JobBoard` loads it from the store, and saves it after every
change together with its new status document and the messages the change must send (the
outbox), in one transaction. So a restart of the jobs service loses nothing: every job
still answers its status, its event stream still replays from the first change, and a
work order that was stored but not yet published is published after the restart.
The reference handlers of the status resource, the cancel, the result and the event
stream are here too; the lesson and the lab use them, or write their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt
from aiohttp import web

from helpers.choosing.hybrid.task import JOB_CANCEL, JOB_FAILED, JOB_SUCCEEDED, STEP_DONE, STEP_STARTED, Step, Topics, WorkOrder
from helpers.core.jobkit import http as jobhttp
from helpers.core.jobkit.client import distinct
from helpers.core.jobkit.store import (
    FINAL,
    Admission,
    Change,
    JobRecord,
    JobState,
    JobStore,
    KeyInUse,
    StateMovedBack,
    relay_outbox,
)
from helpers.core.messaging import Event, make_event
from helpers.core.timestamps import iso

ACCEPTED, RUNNING, SUCCEEDED = JobState.ACCEPTED, JobState.RUNNING, JobState.SUCCEEDED
FAILED, CANCELLED = JobState.FAILED, JobState.CANCELLED
STATES = tuple(JobState)
RETRY_AFTER_S = jobhttp.RETRY_AFTER_S
HEARTBEAT_S = 10.0
"""An event stream with nothing to say sends a comment this often, so proxies do not close it as idle."""
DEADLINE_S = 120.0
"""An unfinished job is failed this many seconds after it was accepted: never "running" forever."""

CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default=jobhttp.ANONYMOUS)
"""Whose request the handler is answering (set by the service for each request): idempotency keys are per caller."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class Job:
    """One job as the service knows it. The status keeper (``apply``) changes ``state``,
    ``step``, ``done``, ``result``, ``failed_step`` and ``reason``; the board does the rest."""

    job_id: str
    task: dict[str, Any]
    steps: tuple[str, ...]
    key: str | None = None
    state: JobState = ACCEPTED
    """Set by the status keeper (a plain string such as ``"running"`` is read as the same state)."""
    step: str | None = None
    """The step running now (or the last one that ran)."""
    done: int = 0
    """Steps finished."""
    result: Any = None
    failed_step: str | None = None
    reason: str | None = None
    created: datetime = field(default_factory=_now)
    updated: datetime = field(default_factory=_now)
    accepted: dict[str, Any] = field(default_factory=dict)
    """The 202 body this job was first answered with: a repeated request gets exactly this."""
    caller: str = jobhttp.ANONYMOUS
    deadline: float | None = None
    """Wall-clock seconds after which the job, if unfinished, is failed."""
    changes: list[Change] = field(default_factory=list, repr=False)
    signal: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    """Set (and replaced) on every change: what the event streams wait on."""

    @property
    def total(self) -> int:
        return len(self.steps)

    @property
    def final(self) -> bool:
        return self.state in FINAL

    @property
    def path(self) -> str:
        """The status resource: ``/jobs/{id}``."""
        return f"/jobs/{self.job_id}"

    @property
    def result_path(self) -> str:
        return f"{self.path}/result"

    @property
    def events_path(self) -> str:
        return f"{self.path}/events"

    def to_json(self) -> dict[str, Any]:
        """The status document; for a failed job, problem details with the job's fields (the kit's ``failed_document``)."""
        body: dict[str, Any] = {
            "job_id": self.job_id,
            "state": str(self.state),
            "progress": {"done": self.done, "total": self.total, "step": self.step},
            "created": iso(self.created),
            "updated": iso(self.updated),
            "links": {"self": self.path, "events": self.events_path},
        }
        if self.state == SUCCEEDED:
            body["links"]["result"] = self.result_path
        if self.state == FAILED:
            return jobhttp.failed_document(body, f"step {self.failed_step!r} failed: {self.reason}", failed_step=self.failed_step)
        return body

    def history(self) -> list[str]:
        """The states the job went through, each once, in order (what a watcher should have seen)."""
        return distinct(change.state for change in self.changes)

    def snapshot(self) -> tuple[Any, ...]:
        """What the status keeper may change, to tell whether an event changed anything."""
        return (self.state, self.step, self.done, self.failed_step, self.reason, json.dumps(self.result, default=str))

    def record(self) -> JobRecord:
        """The job as the store keeps it."""
        data = {"steps": list(self.steps), "step": self.step, "done": self.done, "failed_step": self.failed_step}
        return JobRecord(
            self.job_id, dict(self.task), self.caller, self.key, "", JobState(self.state), {**data, "accepted": self.accepted},
            self.result, self.reason, self.created.timestamp(), self.updated.timestamp(), self.deadline,
        )  # fmt: skip

    @classmethod
    def of(cls, record: JobRecord, changes: Sequence[Change] = ()) -> Job:
        """The job a stored record describes (after a restart, or for a job not yet in memory)."""
        data = record.data
        return cls(
            record.job_id, record.request, tuple(data.get("steps", ())), record.key, record.state, data.get("step"),
            int(data.get("done", 0)), record.result, data.get("failed_step"), record.reason,
            datetime.fromtimestamp(record.created, UTC), datetime.fromtimestamp(record.updated, UTC),
            dict(data.get("accepted", {})), record.caller, record.deadline, list(changes),
        )  # fmt: skip


ApplyFn = Callable[[Job, Event], Any]
"""The status keeper: change ``job`` by one worker event (sync or async; its return value is ignored)."""


def apply_event(job: Job, event: Event) -> None:
    """The reference status keeper: apply one worker event to its job, never moving a finished job."""
    if job.final:  # succeeded, failed or cancelled: a late or repeated event changes nothing
        return
    data = event.data if isinstance(event.data, dict) else {}
    if event.type == STEP_STARTED:
        job.state, job.step = RUNNING, str(data.get("step"))
    elif event.type == STEP_DONE:
        job.state, job.done = RUNNING, max(job.done, int(data.get("done", 0)))  # at-least-once: a repeat is no new step
    elif event.type == JOB_SUCCEEDED:
        job.state, job.done, job.result = SUCCEEDED, job.total, data.get("result")
    elif event.type == JOB_FAILED:
        job.state, job.failed_step, job.reason = FAILED, str(data.get("step")), str(data.get("reason"))


class JobBoard:
    """The service's jobs, in a :class:`~helpers.core.jobkit.store.JobStore`, with a change log per job.

    One kernel, one event loop: methods that check and then change the store do so without
    an ``await`` in between. The board does not enforce idempotency by itself: the kickoff
    handler looks a key up (:meth:`by_key`) before it creates a job.
    """

    def __init__(  # noqa: PLR0913  one argument per part of the board it wires together
        self,
        store: JobStore,
        topics: Topics,
        steps: Sequence[Step],
        publisher: aiomqtt.Client | None = None,
        apply: ApplyFn = apply_event,
        *,
        retry_after_s: int = RETRY_AFTER_S,
        deadline_s: float = DEADLINE_S,
    ) -> None:
        if not isinstance(retry_after_s, int) or retry_after_s < 1:
            raise ValueError(f"Retry-After is a whole number of seconds >= 1, got {retry_after_s!r}")
        if deadline_s <= 0:
            raise ValueError(f"deadline_s is seconds > 0, got {deadline_s!r}")
        self.retry_after_s = retry_after_s
        """What the 202 and an unfinished job's status tell the client: ask again in this many seconds."""
        self.deadline_s = deadline_s
        self.store, self.topics, self.steps = store, topics, tuple(steps)
        self.publisher = publisher
        self.apply = apply
        self._jobs: dict[str, Job] = {}
        self._relaying = asyncio.Lock()
        self.errors: list[Exception] = []
        """What the status keeper raised (the event is then dead-lettered)."""
        self.ignored = 0
        """Worker events for jobs this board does not know."""
        self.expired = 0
        """Jobs this board failed because they passed their deadline."""

    def __len__(self) -> int:
        return len(self.store)

    def __iter__(self) -> Iterator[Job]:
        return iter([job for job_id in self.store.job_ids() if (job := self.get(job_id)) is not None])

    def get(self, job_id: str) -> Job | None:
        """The job ``job_id``, or None (read from the store the first time: it may be older than this process)."""
        job = self._jobs.get(job_id)
        if job is None and (record := self.store.get(job_id)) is not None:
            job = self._jobs[job_id] = Job.of(record, self.store.changes(job_id))
        return job

    def by_key(self, key: str, caller: str | None = None) -> Job | None:
        """The job this caller's Idempotency-Key ``key`` created, or None.

        Keys are per caller (the request's, unless ``caller`` is given). A key whose first
        request is still being answered raises :class:`KeyInUse`, which the service answers
        with ``409`` and ``Retry-After``.
        """
        caller = CALLER.get() if caller is None else caller
        record = self.store.by_key(caller, key)
        if record is None:
            return None
        if self.store.admit(caller, key, record.fingerprint).outcome == Admission.IN_FLIGHT:
            raise KeyInUse(key, caller)
        return self.get(record.job_id)

    def create(self, task: Mapping[str, Any], key: str | None = None, caller: str | None = None) -> Job:
        """A new job for ``task`` in state ``accepted``, stored with its key and its first work order (one transaction).

        The work order goes out when :meth:`start` runs (or, if the broker is away, as soon as it is back).
        """
        job = Job(uuid.uuid4().hex, dict(task), tuple(s.name for s in self.steps), key)
        job.caller = CALLER.get() if caller is None else caller
        job.deadline = time.time() + self.deadline_s
        job.accepted = {
            "job_id": job.job_id,
            "state": str(job.state),
            "created": iso(job.created),
            "links": {"status": job.path, "events": job.events_path},
        }
        order = WorkOrder(job.job_id, str(job.task.get("task")), job.steps)
        message = (self.topics.step(job.steps[0]), order.event("/jobs").to_bytes())
        self.store.accept(job.record(), job.to_json(), [message])
        self._jobs[job.job_id] = job
        self._changed(job)
        return job

    async def start(self, job: Job) -> None:
        """Hand the job's first work order to the broker (QoS 1: returns once the broker has it).

        The order was stored with the job, so a broker that is away loses nothing: the
        order stays in the outbox and goes out when the broker is back (:meth:`relay`).
        """
        if self.publisher is None:
            raise RuntimeError("this board has no MQTT publisher: start it with start_hybrid()")
        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
            await asyncio.wait_for(self.relay(), self.retry_after_s)
        self.store.answered(job.caller, job.key)

    async def relay(self) -> int:
        """Publish whatever the outbox holds (in order, once each); return how many went out."""
        if self.publisher is None:
            return 0
        async with self._relaying:
            return await relay_outbox(self.store, self.publisher)

    async def cancel(self, job: Job) -> None:
        """Mark ``job`` cancelled and tell the workers to stop it (a running step is interrupted).

        A job that already succeeded or failed is left as it is; one already marked cancelled
        is announced again (the workers drop a repeat).
        """
        if job.state in (SUCCEEDED, FAILED):
            return
        again = bool(job.changes) and job.changes[-1].state == CANCELLED  # announced before: no new change
        job.state = CANCELLED
        self._save(job, [self._cancel_message(job)], record=not again)
        await self.relay()

    def expire(self) -> list[Job]:
        """Fail every unfinished job past its deadline, with the reason, and tell the workers to drop it."""
        expired: list[Job] = []
        for record in self.store.overdue():
            job = self.get(record.job_id)
            if job is None or job.final:
                continue
            where = f"at step {job.step!r}" if job.step else "before its first step"
            job.state, job.failed_step = FAILED, job.step
            job.reason = f"no worker finished it within its deadline of {self.deadline_s:g} s (it was {where})"
            self._save(job, [self._cancel_message(job)])
            expired.append(job)
        self.expired += len(expired)
        return expired

    async def on_event(self, event: Event) -> None:
        """Apply one worker event with the status keeper; save (and record) the job when it changed."""
        data = event.data if isinstance(event.data, dict) else {}
        job = self.get(str(data.get("job_id")))
        if job is None:
            self.ignored += 1
            return
        before = job.snapshot()
        try:
            outcome = self.apply(job, event)
            if inspect.isawaitable(outcome):
                await outcome
            if job.snapshot() != before:
                self._save(job)
        except Exception as exc:  # recorded for whoever watches, then re-raised: the consumer dead-letters it
            self.errors.append(exc)
            raise

    async def follow(self, job: Job, after: int = 0, heartbeat: float = HEARTBEAT_S) -> AsyncGenerator[Change | None, None]:
        """Every change of ``job`` after number ``after``, then the new ones as they happen, until a final one.

        Yields None when ``heartbeat`` seconds passed without a change (time for a keep-alive).
        """
        seen = max(0, after)
        while True:
            while seen < len(job.changes):  # its last check and taking the signal below have no await between them
                change = job.changes[seen]
                seen += 1
                yield change
                if change.final:
                    return
            if job.final:
                return
            signal = job.signal
            try:
                await asyncio.wait_for(signal.wait(), heartbeat)
            except TimeoutError:
                yield None

    def _cancel_message(self, job: Job) -> tuple[str, bytes]:
        return self.topics.cancel, make_event(JOB_CANCEL, {"job_id": job.job_id}, source="/jobs").to_bytes()

    def _save(self, job: Job, outbox: Sequence[tuple[str, bytes]] = (), *, record: bool = True) -> None:
        """Store the job's change (forward only) with its outbox messages; on a refused move, reload what was stored."""
        job.updated = _now()
        try:
            self.store.update(job.record(), job.to_json() if record else None, outbox)
        except StateMovedBack:
            self._jobs.pop(job.job_id, None)
            stored = self.get(job.job_id)
            if stored is not None:
                vars(job).update({k: v for k, v in vars(stored).items() if k not in ("changes", "signal")})
                self._jobs[job.job_id] = job
            raise
        if record:
            self._changed(job)

    def _changed(self, job: Job) -> None:
        job.changes.append(Change(len(job.changes) + 1, time.monotonic(), job.to_json()))
        signal, job.signal = job.signal, asyncio.Event()
        signal.set()


# --------------------------------------------------------------------------- reference handlers


unknown_job = jobhttp.unknown_job

JobHandler = Callable[[web.Request, JobBoard], Awaitable[web.StreamResponse]]
"""A route of the jobs service: ``(request, jobs)``, where ``jobs`` is the :class:`JobBoard`."""


def _of_a_job(handle: Callable[[web.Request, JobBoard, Job], Awaitable[web.StreamResponse]]) -> JobHandler:
    """A reference handler of ``/jobs/{job_id}...`` taking ``(request, jobs)``: an unknown job is a 404 before ``handle`` runs."""

    async def call(request: web.Request, jobs: JobBoard) -> web.StreamResponse:
        job = jobs.get(request.match_info["job_id"])
        return unknown_job(request.match_info["job_id"]) if job is None else await handle(request, jobs, job)

    call.__name__, call.__qualname__, call.__doc__ = handle.__name__, handle.__qualname__, handle.__doc__
    return call


@_of_a_job
async def job_status(request: web.Request, jobs: JobBoard, job: Job) -> web.Response:
    """The reference status resource: 404, 303 to the result, a failure as problem+json, else the status."""
    return jobhttp.status(job.to_json(), job.state, job.result_path, jobs.retry_after_s)


@_of_a_job
async def cancel_job(request: web.Request, jobs: JobBoard, job: Job) -> web.Response:
    """The reference cancel: 404 for an unknown job, 409 for a finished one, else cancel it and answer its status."""
    if job.final:
        return jobhttp.job_finished(job.job_id, job.state)
    await jobs.cancel(job)
    return web.json_response(job.to_json())


@_of_a_job
async def job_result(request: web.Request, jobs: JobBoard, job: Job) -> web.Response:
    """``GET /jobs/{id}/result``: the result of a job that succeeded, else a 404 problem saying why."""
    if job.state != SUCCEEDED:
        return jobhttp.no_result(job.job_id, job.state, job.path, jobs.retry_after_s)
    return web.json_response({"job_id": job.job_id, "result": job.result})


sse_frame = jobhttp.sse_frame


@_of_a_job
async def job_events(request: web.Request, jobs: JobBoard, job: Job) -> web.StreamResponse:
    """``GET /jobs/{id}/events``: the job's changes as ``text/event-stream``, from the start (or after
    ``Last-Event-ID``) until the job ends; then the stream closes."""
    return await jobhttp.event_stream(request, jobs.follow(job, jobhttp.last_event_id(request)), jobs.retry_after_s)
