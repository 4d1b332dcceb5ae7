"""Lesson 06's hybrid: answer ``202 Accepted`` at once, run the long steps over MQTT, let the client poll or be told.

The asynchronous request-reply pattern, by the HTTP spec (RFC 9110), for a multi-step AI
agent task (plan, research, draft, review):

* ``POST /jobs`` validates first (a bad request gets ``400`` problem+json at once and
  leaves no job), publishes the first step at QoS 1, and answers ``202 Accepted`` with
  ``Location: /jobs/{id}`` (the status resource), ``Retry-After`` in seconds and a body
  with the job id and state. A repeated ``Idempotency-Key`` returns the same job.
* ``GET /jobs/{id}`` is the status resource: ``state`` (``accepted``, ``running``,
  ``succeeded``, ``failed``, ``cancelled``), ``created``/``updated`` and ``progress``,
  with ``Retry-After`` while the job is unfinished. Once it succeeded it answers
  ``303 See Other`` with ``Location: /jobs/{id}/result``; a failed job stays readable here
  as problem+json (RFC 9457). An unknown id is a ``404``.
* ``DELETE /jobs/{id}`` cancels: the state becomes ``cancelled`` and the workers stop the
  step that is running.
* ``GET /jobs/{id}/events`` pushes the same status documents as server-sent events
  (``text/event-stream``), from the start of the job (or after ``Last-Event-ID``) to its end;
  the workers' ``job.succeeded`` / ``job.failed`` events are a push of their own, on MQTT.

The service's handlers are the learner's code (the lesson writes the 202 handler on
screen; the lab writes the kickoff, the status resource, the cancel and the function that
applies the workers' events), passed to :func:`start_hybrid`. This module holds everything
around them: the job board (store, idempotency keys, change log, SSE fan-out), the agent's
step workers (one pool per step behind its own subscription, plus a listener for
cancellations), the slow synchronous version of the same task, the clients (a poller that
honors ``Retry-After``, an SSE reader), the measurements and the plot. Reference versions of
the status, cancel and apply functions are here too (:func:`job_status`,
:func:`cancel_job`, :func:`apply_event`): the lesson uses them as they are.

Times are ``time.monotonic()`` seconds (the clock asyncio's loop uses), on every side.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
import uuid
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import aiomqtt
from aiohttp import web
from yarl import URL

from helpers.core import lifecycle
from helpers.core.broker import Broker
from helpers.core.events import iso
from helpers.core.http import Service, start_service
from helpers.core.measure import Summary, summarize
from helpers.core.messaging import Consumer, Event, decode, make_event, manual_ack, publish
from helpers.core.problems import PROBLEM_BASE, PROBLEM_JSON, problem, problems_everywhere
from helpers.core.waiting import until
from helpers.core.worker_pool import run_pool

if TYPE_CHECKING:
    from matplotlib.axes import Axes

RETRY_AFTER_S = 1
"""What the 202 (and an unfinished job's status) tells the client: ask again in this many seconds.
HTTP's ``Retry-After`` counts whole seconds."""
HEARTBEAT_S = 10.0
"""An event stream with nothing to say sends a comment this often, so proxies do not close it as idle."""
MAX_TASK_CHARS = 500

ACCEPTED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "accepted", "running", "succeeded", "failed", "cancelled"
STATES = (ACCEPTED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
"""A job in one of these states never changes again."""

STEP_ORDER = "agent.step"
"""A work order for one step (data: ``job_id``, ``task``, ``steps``, ``index``, ``outputs``): the job carries its own route."""
STEP_STARTED = "job.step_started"
"""A worker began a step (data: ``job_id``, ``step``, ``index``, ``total``)."""
STEP_DONE = "job.step_done"
"""A worker finished a step (data: ``job_id``, ``step``, ``done`` steps so far, ``total``)."""
JOB_SUCCEEDED = "job.succeeded"
"""The last step finished: the completion event (data: ``job_id``, ``result``)."""
JOB_FAILED = "job.failed"
"""A step failed and the job stops there (data: ``job_id``, ``step``, ``reason``)."""
JOB_CANCEL = "job.cancel"
"""The service asks the workers to stop a job (data: ``job_id``)."""

STEP_EVENT_TOPICS = {STEP_STARTED: "started", STEP_DONE: "progress", JOB_SUCCEEDED: "succeeded", JOB_FAILED: "failed"}
"""Which sub-topic of ``PREFIX/jobs/`` each worker event goes to."""


# --------------------------------------------------------------------------- the task and its steps


@dataclass(frozen=True)
class Step:
    """One step of the agent's task: a name, how long its work takes, and what it stands for."""

    name: str
    work_s: float
    does: str = ""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or "+" in self.name or "#" in self.name:
            raise ValueError(f"a step name is a plain word (it becomes a topic level), got {self.name!r}")
        if self.work_s < 0:
            raise ValueError(f"work_s is seconds >= 0, got {self.work_s} for step {self.name!r}")


STEPS: tuple[Step, ...] = (
    Step("plan", 0.2, "split the task into questions (one model call)"),
    Step("research", 0.7, "look each question up (search API calls)"),
    Step("draft", 0.6, "write the report (a long model call)"),
    Step("review", 0.3, "check the draft against the notes (one more model call)"),
)
"""The lesson's agent: about 1.8 s of work in four steps, each done by its own worker."""


def quick_steps(scale: float = 0.25) -> tuple[Step, ...]:
    """:data:`STEPS` with every work time multiplied by ``scale`` (checks and tests need short jobs)."""
    return tuple(Step(s.name, round(s.work_s * scale, 4), s.does) for s in STEPS)


class StepFailed(RuntimeError):
    """A step could not do its work (the simulated model answered with an error)."""


def step_output(step: str, task: str, outputs: Mapping[str, Any]) -> str:
    """What a step produces (simulated, deterministic): enough to see the steps build on each other."""
    words = len(task.split())
    if step == "plan":
        return f"{2 + words % 3} questions about {task!r}"
    if step == "research":
        return f"notes from {3 + words % 4} sources"
    if step == "draft":
        return f"a {150 + 25 * words}-word draft built on {outputs.get('research', 'no notes')}"
    if step == "review":
        return "approved with 2 small edits"
    return f"{step} done"


def compose_result(task: str, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The job's result: the task, and what each step produced."""
    return {"task": task, "report": f"Report on {task!r}", "steps": dict(outputs)}


async def read_task(request: web.Request) -> dict[str, str] | None:
    """The request's task, ``{"task": "..."}``, or None when the body is not a valid task.

    Valid: a JSON object whose ``task`` is a non-empty string of at most 500 characters.
    """
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    task = body.get("task")
    if not isinstance(task, str) or not task.strip() or len(task) > MAX_TASK_CHARS:
        return None
    return {"task": task.strip()}


# --------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class Topics:
    """Every topic of one run, under one prefix (runs on a shared broker never mix)."""

    prefix: str

    @classmethod
    def fresh(cls, base: str = "agent") -> Topics:
        """Topics under ``base/<random id>``."""
        return cls(f"{base}/{uuid.uuid4().hex[:8]}")

    def step(self, name: str) -> str:
        """Work orders for the worker of step ``name``."""
        return f"{self.prefix}/steps/{name}"

    def job(self, kind: str) -> str:
        """Worker events of one kind: ``started``, ``progress``, ``succeeded`` or ``failed``."""
        return f"{self.prefix}/jobs/{kind}"

    @property
    def events(self) -> str:
        """A filter for every worker event (what the service's status keeper reads)."""
        return f"{self.prefix}/jobs/+"

    @property
    def cancel(self) -> str:
        """Where the service asks the workers to stop a job."""
        return f"{self.prefix}/control/cancel"

    def dead_letter(self, who: str) -> str:
        return f"{self.prefix}/dead-letter/{who}"


# --------------------------------------------------------------------------- jobs


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Change:
    """One change of a job, as its status resource and its event stream show it."""

    seq: int
    """1, 2, 3, ... per job: the event stream's ``id``."""
    at: float
    """``time.monotonic()`` when the service recorded it."""
    document: dict[str, Any]
    """The status document right after the change (what ``GET /jobs/{id}`` answered then)."""

    @property
    def state(self) -> str:
        return str(self.document.get("state"))

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass(eq=False)
class Job:
    """One job as the service knows it. The status keeper (``apply``) changes ``state``,
    ``step``, ``done``, ``result``, ``failed_step`` and ``reason``; the board does the rest."""

    job_id: str
    task: dict[str, Any]
    steps: tuple[str, ...]
    key: str | None = None
    state: str = ACCEPTED
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
        """The status document. For a failed job it is a problem details object (RFC 9457) with the job's fields.

        It has no ``status`` member: RFC 9457 wants that member to equal the HTTP status of
        the response, and reading the status of a failed job is itself a success (200).
        """
        body: dict[str, Any] = {
            "job_id": self.job_id,
            "state": self.state,
            "progress": {"done": self.done, "total": self.total, "step": self.step},
            "created": iso(self.created),
            "updated": iso(self.updated),
            "links": {"self": self.path, "events": self.events_path},
        }
        if self.state == SUCCEEDED:
            body["links"]["result"] = self.result_path
        if self.state == FAILED:
            return {
                "type": f"{PROBLEM_BASE}job-failed",
                "title": "Job failed",
                "detail": f"step {self.failed_step!r} failed: {self.reason}",
                "instance": self.path,
                **body,
                "failed_step": self.failed_step,
            }
        return body

    def history(self) -> list[str]:
        """The states the job went through, each once, in order (what a watcher should have seen)."""
        return distinct(change.state for change in self.changes)

    def snapshot(self) -> tuple[Any, ...]:
        """What the status keeper may change, to tell whether an event changed anything."""
        return (self.state, self.step, self.done, self.failed_step, self.reason, json.dumps(self.result, default=str))


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
    """The service's jobs: the store behind every route, with idempotency keys and a change log per job.

    One kernel, one event loop: methods that check and then change the store do so without
    an ``await`` in between. The board does not enforce idempotency by itself: the kickoff
    handler looks a key up (:meth:`by_key`) before it creates a job.
    """

    def __init__(
        self,
        topics: Topics,
        steps: Sequence[Step],
        publisher: aiomqtt.Client | None = None,
        apply: ApplyFn = apply_event,
        *,
        retry_after_s: int = RETRY_AFTER_S,
    ) -> None:
        if not isinstance(retry_after_s, int) or retry_after_s < 1:
            raise ValueError(f"Retry-After is a whole number of seconds >= 1, got {retry_after_s!r}")
        self.retry_after_s = retry_after_s
        """What the 202 and an unfinished job's status tell the client: ask again in this many seconds."""
        self.topics = topics
        self.steps = tuple(steps)
        self.publisher = publisher
        self.apply = apply
        self._jobs: dict[str, Job] = {}
        self._keys: dict[str, str] = {}
        self.errors: list[Exception] = []
        """What the status keeper raised (the event is then dead-lettered)."""
        self.ignored = 0
        """Worker events for jobs this board does not know."""

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs.values()))

    def get(self, job_id: str) -> Job | None:
        """The job ``job_id``, or None."""
        return self._jobs.get(job_id)

    def by_key(self, key: str) -> Job | None:
        """The job created with Idempotency-Key ``key``, or None."""
        job_id = self._keys.get(key)
        return self._jobs.get(job_id) if job_id else None

    def create(self, task: Mapping[str, Any], key: str | None = None) -> Job:
        """A new job for ``task`` in state ``accepted`` (bound to ``key`` when one is given)."""
        job = Job(uuid.uuid4().hex, dict(task), tuple(s.name for s in self.steps), key)
        job.accepted = {
            "job_id": job.job_id,
            "state": job.state,
            "created": iso(job.created),
            "links": {"status": job.path, "events": job.events_path},
        }
        self._jobs[job.job_id] = job
        if key:
            self._keys[key] = job.job_id
        self._record(job)
        return job

    async def start(self, job: Job) -> None:
        """Publish the job's first step (QoS 1: returns once the broker has it).

        If the broker cannot take it, the job is forgotten (nothing was queued, a retry
        starts afresh) and the request gets a ``503`` problem with ``Retry-After``.
        """
        if self.publisher is None:
            raise RuntimeError("this board has no MQTT publisher: start it with start_hybrid()")
        order = {"job_id": job.job_id, "task": job.task["task"], "steps": list(job.steps), "index": 0, "outputs": {}}
        try:
            await publish(self.publisher, self.topics.step(job.steps[0]), make_event(STEP_ORDER, order, source="/jobs"))
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            self._forget(job)
            raise web.HTTPServiceUnavailable(
                reason="Job could not be queued",
                text=f"the job could not be queued ({type(exc).__name__}: {exc}); try again",
                headers={"Retry-After": str(self.retry_after_s)},
            ) from None

    async def cancel(self, job: Job) -> None:
        """Mark ``job`` cancelled and tell the workers to stop it (a running step is interrupted).

        A job that already succeeded or failed is left as it is; one already marked cancelled
        is announced again (the workers drop a repeat).
        """
        if job.state in (SUCCEEDED, FAILED):
            return
        job.state = CANCELLED
        if not job.changes or job.changes[-1].state != CANCELLED:  # (the caller may have set the state itself)
            self._record(job)
        if self.publisher is not None:
            await publish(self.publisher, self.topics.cancel, make_event(JOB_CANCEL, {"job_id": job.job_id}, source="/jobs"))

    async def on_event(self, event: Event) -> None:
        """Apply one worker event with the status keeper; record a change when the job changed."""
        data = event.data if isinstance(event.data, dict) else {}
        job = self._jobs.get(str(data.get("job_id")))
        if job is None:
            self.ignored += 1
            return
        before = job.snapshot()
        try:
            outcome = self.apply(job, event)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception as exc:  # recorded for whoever watches, then re-raised: the consumer dead-letters it
            self.errors.append(exc)
            raise
        if job.snapshot() != before:
            self._record(job)

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

    def _record(self, job: Job) -> None:
        job.updated = _now()
        job.changes.append(Change(len(job.changes) + 1, time.monotonic(), job.to_json()))
        signal, job.signal = job.signal, asyncio.Event()
        signal.set()

    def _forget(self, job: Job) -> None:
        self._jobs.pop(job.job_id, None)
        if job.key and self._keys.get(job.key) == job.job_id:
            del self._keys[job.key]


# --------------------------------------------------------------------------- reference handlers


def unknown_job(job_id: str) -> web.Response:
    """The 404 for a job id the board does not know."""
    return problem(
        404,
        "Unknown job",
        f"there is no job {job_id!r}; a job's address comes from the Location header of POST /jobs",
        f"{PROBLEM_BASE}unknown-job",
    )


async def job_status(request: web.Request, jobs: JobBoard) -> web.Response:
    """The reference status resource: 404, 303 to the result, a failure as problem+json, else the status."""
    job = jobs.get(request.match_info["job_id"])
    if job is None:
        return unknown_job(request.match_info["job_id"])
    if job.state == SUCCEEDED:  # 303: "GET the result over there" (302 would leave the method to the client)
        return web.json_response(job.to_json(), status=303, headers={"Location": job.result_path})
    if job.state == FAILED:
        return web.json_response(job.to_json(), content_type=PROBLEM_JSON)
    headers = {} if job.final else {"Retry-After": str(jobs.retry_after_s)}
    return web.json_response(job.to_json(), headers=headers)


async def cancel_job(request: web.Request, jobs: JobBoard) -> web.Response:
    """The reference cancel: 404 for an unknown job, 409 for a finished one, else cancel it and answer its status."""
    job = jobs.get(request.match_info["job_id"])
    if job is None:
        return unknown_job(request.match_info["job_id"])
    if job.final:
        return problem(
            409,
            "Job already finished",
            f"job {job.job_id} is {job.state}; only an unfinished job can be cancelled",
            f"{PROBLEM_BASE}job-finished",
        )
    await jobs.cancel(job)
    return web.json_response(job.to_json())


async def job_result(request: web.Request, jobs: JobBoard) -> web.Response:
    """``GET /jobs/{id}/result``: the result of a job that succeeded, else a 404 problem saying why."""
    job = jobs.get(request.match_info["job_id"])
    if job is None:
        return unknown_job(request.match_info["job_id"])
    if job.state != SUCCEEDED:
        response = problem(
            404,
            "No result",
            f"job {job.job_id} is {job.state}: only a job that succeeded has a result; its status is at {job.path}",
            f"{PROBLEM_BASE}no-result",
        )
        if not job.final:
            response.headers["Retry-After"] = str(jobs.retry_after_s)
        return response
    return web.json_response({"job_id": job.job_id, "result": job.result})


def sse_frame(change: Change) -> bytes:
    """One server-sent event: ``id`` (the change number), ``event: status`` and the status document."""
    return f"id: {change.seq}\nevent: status\ndata: {json.dumps(change.document, separators=(',', ':'))}\n\n".encode()


async def job_events(request: web.Request, jobs: JobBoard) -> web.StreamResponse:
    """``GET /jobs/{id}/events``: the job's changes as ``text/event-stream``, from the start (or after
    ``Last-Event-ID``) until the job ends; then the stream closes."""
    job = jobs.get(request.match_info["job_id"])
    if job is None:
        return unknown_job(request.match_info["job_id"])
    after = request.headers.get("Last-Event-ID", "0")
    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await stream.prepare(request)
    await stream.write(f"retry: {jobs.retry_after_s * 1000}\n\n".encode())  # how long a reconnecting client waits
    try:
        async with contextlib.aclosing(jobs.follow(job, int(after) if after.isdigit() else 0)) as changes:
            async for change in changes:
                await stream.write(b": keep-alive\n\n" if change is None else sse_frame(change))
        await stream.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass  # the client went away: nothing to send it any more
    return stream


# --------------------------------------------------------------------------- the agent's workers

DONE_RUN, FAILED_RUN, INTERRUPTED_RUN = "done", "failed", "interrupted"


@dataclass(frozen=True)
class StepRun:
    """One step of one job, as the worker did it."""

    job_id: str
    step: str
    started: float
    ended: float
    outcome: str
    """``done``, ``failed`` or ``interrupted`` (the job was cancelled while the step ran)."""

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class AgentFaults:
    """Knobs a lesson turns while the agent runs; read on every step."""

    fail_step: str | None = None
    """Every job fails at this step (after the step's work time), until reset."""
    reason: str = "the model answered with an error"
    hold_step: str | None = None
    """Every job waits at the start of this step until :meth:`Agent.release`: a job that is surely running."""

    def reset(self) -> None:
        self.fail_step = self.hold_step = None


class Agent:
    """The agent's workers: for each step a pool of workers behind one subscription, plus a cancel listener.

    A worker takes a work order, announces the step (``job.step_started``), does the work,
    announces it done (``job.step_done``) and passes the job on: a work order for the next
    step, or ``job.succeeded`` with the result after the last one. A step whose work raises
    ends the job with ``job.failed`` (step and reason): reported, never silently lost. A
    ``job.cancel`` interrupts the step that is running and drops the job's later orders.
    """

    def __init__(self, broker: Broker, topics: Topics, steps: Sequence[Step] = STEPS, *, concurrency: int = 16) -> None:
        if not steps:
            raise ValueError("an agent needs at least one step")
        if concurrency < 1:
            raise ValueError(f"concurrency is at least 1, got {concurrency}")
        self.broker, self.topics, self.steps, self.concurrency = broker, topics, tuple(steps), concurrency
        self.faults = AgentFaults()
        self.runs: list[StepRun] = []
        self.cancelled: set[str] = set()
        self.skipped = 0
        """Work orders dropped because their job was cancelled."""
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._running_step: dict[str, str] = {}
        self._gate = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._names: list[str] = []
        self._stack = contextlib.AsyncExitStack()

    async def start(self) -> Agent:
        """Connect every worker and the cancel listener; return once all are subscribed."""
        run = uuid.uuid4().hex[:6]
        try:
            for index, step in enumerate(self.steps):
                client = await self._client(f"agent-{step.name}-{run}")
                consumer = Consumer(client, self.topics.step(step.name), self._worker(index, client), qos=1)
                consumer.dead_letter_topic = self.topics.dead_letter(step.name)
                self._tasks.append(await lifecycle.start(run_pool, consumer, self.concurrency))
                self._names.append(f"{step.name} worker")
            listener = await self._client(f"agent-cancel-{run}")
            consumer = Consumer(
                listener, self.topics.cancel, self._on_cancel, dead_letter_topic=self.topics.dead_letter("cancel")
            )
            self._tasks.append(await lifecycle.start(consumer.run))
            self._names.append("cancel listener")
        except BaseException:  # not swallowed: close what did open, then re-raise
            await self.halt()
            raise
        return self

    async def _client(self, name: str) -> aiomqtt.Client:
        client = await self._stack.enter_async_context(manual_ack(self.broker.client(name)))
        client.pending_calls_threshold = 1000  # many jobs at once means many publishes in flight: not a warning
        return client

    async def halt(self) -> dict[str, Exception]:
        """Stop every worker and close their connections; return what each worker had died of, by name."""
        errors: dict[str, Exception] = {}
        try:
            for name, task in reversed(list(zip(self._names, self._tasks, strict=True))):
                error = await lifecycle.kill(task)
                if error is not None:
                    errors[name] = error
        finally:
            self._tasks.clear()
            self._names.clear()
            for work in list(self._running.values()):
                work.cancel()
            await self._stack.aclose()
        return errors

    async def stop(self) -> None:
        """Stop every worker; raise what any of them had died of (a worker never dies quietly)."""
        lifecycle.raise_crashed(await self.halt(), "the agent's workers")

    def crashed(self) -> BaseException | None:
        """The error a worker died of, if one did."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return task.exception()
        return None

    def release(self) -> None:
        """Let every job held at ``faults.hold_step`` go on (later jobs are held again while the knob is set)."""
        gate, self._gate = self._gate, asyncio.Event()
        gate.set()

    def runs_of(self, job_id: str) -> list[StepRun]:
        """The steps the workers ran for ``job_id``, in the order they ended."""
        return [r for r in self.runs if r.job_id == job_id]

    def running(self, job_id: str) -> bool:
        """True while a step of ``job_id`` is being worked on."""
        return job_id in self._running

    def running_step(self, job_id: str) -> str | None:
        """The step of ``job_id`` a worker is on right now, if any."""
        return self._running_step.get(job_id) if job_id in self._running else None

    async def _emit(self, client: aiomqtt.Client, kind: str, data: dict[str, Any]) -> None:
        await publish(client, self.topics.job(STEP_EVENT_TOPICS[kind]), make_event(kind, data, source="/agent"))

    def _worker(self, index: int, client: aiomqtt.Client) -> Callable[[Event], Awaitable[None]]:
        step = self.steps[index]

        async def handle(event: Event) -> None:
            order = event.data if isinstance(event.data, dict) else {}
            job_id, steps = str(order.get("job_id", "")), list(order.get("steps") or [])
            if order.get("index") != index or steps[index : index + 1] != [step.name]:
                raise ValueError(
                    f"work order for {steps[order.get('index', 0)] if steps else '?'} sent to the {step.name} worker"
                )
            if job_id in self.cancelled:
                self.skipped += 1
                return
            total = len(steps)
            await self._emit(client, STEP_STARTED, {"job_id": job_id, "step": step.name, "index": index, "total": total})
            started = time.monotonic()
            work = asyncio.ensure_future(self._work(step, str(order.get("task", "")), dict(order.get("outputs") or {})))
            self._running[job_id], self._running_step[job_id] = work, step.name
            if job_id in self.cancelled:  # the cancel arrived while we announced the step
                work.cancel()
            try:
                await asyncio.wait({work})
            finally:
                if self._running.get(job_id) is work:
                    del self._running[job_id], self._running_step[job_id]
                if not work.done():  # this worker is being stopped: stop its work too
                    work.cancel()
            if work.cancelled():
                self.runs.append(StepRun(job_id, step.name, started, time.monotonic(), INTERRUPTED_RUN))
                return
            error = work.exception()
            if error is not None:
                self.runs.append(StepRun(job_id, step.name, started, time.monotonic(), FAILED_RUN))
                reason = str(error) if isinstance(error, StepFailed) else f"{type(error).__name__}: {error}"
                await self._emit(client, JOB_FAILED, {"job_id": job_id, "step": step.name, "reason": reason})
                return
            outputs = {**dict(order.get("outputs") or {}), step.name: work.result()}
            self.runs.append(StepRun(job_id, step.name, started, time.monotonic(), DONE_RUN))
            await self._emit(client, STEP_DONE, {"job_id": job_id, "step": step.name, "done": index + 1, "total": total})
            if job_id in self.cancelled:
                return
            if index + 1 == total:
                result = compose_result(str(order.get("task", "")), outputs)
                await self._emit(client, JOB_SUCCEEDED, {"job_id": job_id, "result": result})
            else:
                following = {**order, "index": index + 1, "outputs": outputs}
                await publish(client, self.topics.step(steps[index + 1]), make_event(STEP_ORDER, following, source="/agent"))

        return handle

    async def _work(self, step: Step, task: str, outputs: dict[str, Any]) -> str:
        if self.faults.hold_step == step.name:
            await self._gate.wait()
        await asyncio.sleep(step.work_s)  # the model and API calls this step waits on (simulated I/O)
        if self.faults.fail_step == step.name:
            raise StepFailed(self.faults.reason)
        return step_output(step.name, task, outputs)

    async def _on_cancel(self, event: Event) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        job_id = str(data.get("job_id", ""))
        self.cancelled.add(job_id)
        work = self._running.get(job_id)
        if work is not None:
            work.cancel()


# --------------------------------------------------------------------------- the service


JobHandler = Callable[[web.Request, JobBoard], Awaitable[web.StreamResponse]]
"""A route of the jobs service: ``(request, jobs)``, where ``jobs`` is the :class:`JobBoard`."""


@dataclass(frozen=True)
class HandlerError:
    """A handler raised instead of answering: the client got a 500 problem, and this is kept for whoever watches."""

    handler: str
    error: Exception


def build_app(
    board: JobBoard, kickoff: JobHandler, status: JobHandler, cancel: JobHandler, errors: list[HandlerError]
) -> web.Application:
    """The jobs service's routes; every error, the handlers' own crashes included, answers problem+json."""

    def route(handler: JobHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def call(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request, board)
            except web.HTTPException:
                raise
            except Exception as exc:  # noqa: BLE001 - a handler's bug becomes a readable 500 and is recorded, not a bare traceback
                name = getattr(handler, "__name__", "the handler")
                errors.append(HandlerError(name, exc))
                return problem(
                    500, "Handler failed", f"{name}() raised {type(exc).__name__}: {exc}", f"{PROBLEM_BASE}handler-failed"
                )

        return call

    @web.middleware
    async def no_store(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if not response.prepared and "Cache-Control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"  # a status must never come from a cache
        return response

    app = web.Application(middlewares=[no_store, problems_everywhere])
    app.router.add_post("/jobs", route(kickoff))
    app.router.add_get("/jobs/{job_id}", route(status))
    app.router.add_delete("/jobs/{job_id}", route(cancel))
    app.router.add_get("/jobs/{job_id}/result", route(job_result))
    app.router.add_get("/jobs/{job_id}/events", route(job_events))
    return app


@dataclass
class HybridSystem:
    """The running hybrid: the jobs service (HTTP), its board and status keeper, and the agent's workers."""

    broker: Broker
    topics: Topics
    service: Service
    board: JobBoard
    agent: Agent
    listener: Consumer
    errors: list[HandlerError]
    _task: asyncio.Task[None]
    _stack: contextlib.AsyncExitStack
    name: str = "jobs"
    _stopped: bool = False

    @property
    def url(self) -> str:
        """The jobs service's base URL, e.g. http://127.0.0.1:41234"""
        return self.service.url

    @property
    def faults(self) -> AgentFaults:
        """The agent's knobs (a step that fails, a step that holds)."""
        return self.agent.faults

    def crashed(self) -> BaseException | None:
        """What the status keeper's consumer or a worker died of, if anything did."""
        task = self._task
        if task.done() and not task.cancelled() and task.exception() is not None:
            return task.exception()
        return self.agent.crashed()

    async def finished(self, job_id: str, timeout: float = 10.0) -> Job:
        """The job, once it is final (or once ``timeout`` passed: then in whatever state it is)."""
        await until(lambda: (job := self.board.get(job_id)) is not None and job.final, timeout)
        job = self.board.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id!r} on this board")
        return job

    async def stop(self) -> None:
        """Stop answering, then the status keeper and the workers; raise what any of them had died of. Safe twice."""
        if self._stopped:
            return
        self._stopped = True
        if _systems.get(self.name) is self:
            del _systems[self.name]
        errors: dict[str, Exception] = {}
        try:
            await self.service.stop()
            error = await lifecycle.kill(self._task)
            if error is not None:
                errors["status keeper"] = error
        finally:
            try:
                errors.update(await self.agent.halt())
            finally:
                await self._stack.aclose()
        lifecycle.raise_crashed(errors, "the hybrid's consumers")


async def start_hybrid(
    broker: Broker,
    kickoff: JobHandler,
    *,
    status: JobHandler = job_status,
    cancel: JobHandler = cancel_job,
    apply: ApplyFn = apply_event,
    steps: Sequence[Step] = STEPS,
    concurrency: int = 16,
    retry_after_s: int = RETRY_AFTER_S,
    name: str = "jobs",
    topics: Topics | None = None,
) -> HybridSystem:
    """Start the agent's workers, the status keeper and the jobs service (HTTP on a free 127.0.0.1 port).

    ``kickoff`` answers ``POST /jobs``; ``status``, ``cancel`` and ``apply`` default to the
    reference versions in this module.
    Like :func:`helpers.core.http.start_service`, a second start under the same ``name``
    (a cell run again) stops the first system.
    """
    old = _systems.pop(name, None)
    if old is not None:
        await _replace(old)
    topics = topics or Topics.fresh()
    run = uuid.uuid4().hex[:6]
    agent = Agent(broker, topics, steps, concurrency=concurrency)
    stack = contextlib.AsyncExitStack()
    await agent.start()
    try:
        publisher = await stack.enter_async_context(broker.client(f"{name}-pub-{run}"))
        publisher.pending_calls_threshold = 1000
        board = JobBoard(topics, steps, publisher, apply, retry_after_s=retry_after_s)
        listener_client = await stack.enter_async_context(manual_ack(broker.client(f"{name}-status-{run}")))
        listener = Consumer(listener_client, topics.events, board.on_event, dead_letter_topic=topics.dead_letter("status"))
        task = await lifecycle.start(listener.run)
        stack.push_async_callback(lifecycle.kill, task)
        errors: list[HandlerError] = []
        service = await start_service(f"{name}-{run}", build_app(board, kickoff, status, cancel, errors))
    except BaseException:  # not swallowed: close what did open, then re-raise
        await stack.aclose()
        await agent.halt()
        raise
    system = HybridSystem(broker, topics, service, board, agent, listener, errors, task, stack, name)
    _systems[name] = system
    return system


_systems: dict[str, HybridSystem] = {}
"""The running systems by name: starting one under a name in use replaces the old one."""


async def _replace(old: HybridSystem) -> None:
    """Stop a system that a new start replaces; what its consumers had died of becomes a warning, not the new start's error."""
    try:
        await old.stop()
    except Exception as exc:  # noqa: BLE001 - reported as a warning: the new system must still start
        warnings.warn(f"the hybrid {old.name!r} being replaced had crashed: {exc!r}", RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------- the slow synchronous version


def sync_agent_app(steps: Sequence[Step] = STEPS) -> web.Application:
    """``POST /agent``: the same task done inline; the caller waits for every step, then gets 200 and the result."""

    async def run_agent(request: web.Request) -> web.Response:
        task = await read_task(request)
        if task is None:
            return problem(
                400, "Invalid task", 'send JSON like {"task": "compare three vector databases"}', f"{PROBLEM_BASE}invalid-task"
            )
        outputs: dict[str, Any] = {}
        for step in steps:
            await asyncio.sleep(step.work_s)  # the step's model and API calls (simulated I/O), while the caller waits
            outputs[step.name] = step_output(step.name, task["task"], outputs)
        return web.json_response({"result": compose_result(task["task"], outputs)})

    app = web.Application()
    app.router.add_post("/agent", run_agent)
    return app


async def start_sync_agent(steps: Sequence[Step] = STEPS, *, name: str = "agent-sync") -> Service:
    """Start the slow synchronous version of the agent task (``POST /agent``)."""
    return await start_service(name, sync_agent_app(steps))


# --------------------------------------------------------------------------- clients


def distinct(states: Iterable[str | None]) -> list[str]:
    """``states`` with repeats in a row removed: the state *changes* a watcher saw."""
    seen: list[str] = []
    for state in states:
        if state is not None and (not seen or seen[-1] != state):
            seen.append(state)
    return seen


@dataclass(frozen=True)
class Answer:
    """One HTTP exchange as the client saw it (redirects are never followed for it)."""

    method: str
    url: str
    status: int
    headers: dict[str, str]
    body: Any
    """The JSON body (problem+json included), or the text when it is not JSON."""
    sent: float
    at: float

    @property
    def seconds(self) -> float:
        return self.at - self.sent

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()

    @property
    def state(self) -> str | None:
        """The job state the body reports (a 303 from the status resource means ``succeeded``)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("state"), str):
            return str(self.body["state"])
        return SUCCEEDED if self.status == 303 else None

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")

    def retry_after(self, default: float = RETRY_AFTER_S) -> float:
        """``Retry-After`` in seconds (delay-seconds form), or ``default``."""
        value = self.headers.get("Retry-After", "")
        return float(value) if value.isdigit() else default


def resolve(base_url: str, reference: str) -> str:
    """A Location (absolute, or relative to the service) as an absolute URL."""
    return str(URL(base_url).join(URL(reference)))


async def request(http: aiohttp.ClientSession, method: str, url: str, *, timeout: float = 10.0, **kwargs: Any) -> Answer:
    """One HTTP request, read in full; redirects are not followed (the caller sees the 303 itself)."""
    sent = time.monotonic()
    async with http.request(
        method, url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout), **kwargs
    ) as response:
        text = await response.text()
        at = time.monotonic()
        body: Any = text
        if text and response.content_type in ("application/json", PROBLEM_JSON):
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        return Answer(method, url, response.status, dict(response.headers), body, sent, at)


async def submit(http: aiohttp.ClientSession, base_url: str, task: str | Mapping[str, Any], *, key: str | None = None) -> Answer:
    """``POST /jobs`` with ``{"task": task}`` (and an ``Idempotency-Key`` when given)."""
    body = {"task": task} if isinstance(task, str) else dict(task)
    headers = {"Idempotency-Key": key} if key else {}
    return await request(http, "POST", f"{base_url}/jobs", json=body, headers=headers)


class PollError(RuntimeError):
    """The status resource answered something a poller cannot go on with."""


@dataclass
class Polled:
    """What one polling client did and learned, from the 202 to the job's end."""

    answers: list[Answer]
    """Every request after the 202, in order: status GETs, then the result GET."""
    states: list[str]
    """The state changes it saw, the 202's ``accepted`` first."""
    outcome: str
    result: Any
    learned_at: float
    """When it knew the outcome (``time.monotonic()``)."""

    @property
    def requests(self) -> int:
        return len(self.answers)


async def poll_job(
    http: aiohttp.ClientSession, base_url: str, accepted: Answer, *, every_s: float | None = None, timeout: float = 60.0
) -> Polled:
    """Follow a job from its 202 to its end: GET the status at the Location, wait as ``Retry-After`` says
    (or every ``every_s`` seconds, ignoring it), and on a ``303`` GET the result it points to."""
    location = accepted.location
    if accepted.status != 202 or not location:
        raise PollError(f"expected a 202 with a Location, got {accepted.status} (Location: {location!r})")
    status_url = resolve(base_url, location)
    answers: list[Answer] = []
    seen: list[str | None] = [accepted.state]
    deadline = time.monotonic() + timeout
    wait = accepted.retry_after() if every_s is None else every_s
    while time.monotonic() < deadline:
        await asyncio.sleep(wait)  # the protocol's own clock: the server said when to ask again
        answer = await request(http, "GET", status_url)
        answers.append(answer)
        seen.append(answer.state)
        if answer.status == 303 and answer.location:
            result = await request(http, "GET", resolve(status_url, answer.location))
            answers.append(result)
            body = result.body if isinstance(result.body, dict) else {}
            return Polled(answers, distinct(seen), SUCCEEDED, body.get("result"), answer.at)
        if answer.status != 200:
            raise PollError(f"GET {status_url} answered {answer.status}: {str(answer.body)[:120]}")
        if answer.state in FINAL:
            return Polled(answers, distinct(seen), str(answer.state), None, answer.at)
        wait = answer.retry_after() if every_s is None else every_s
    raise PollError(f"the job at {status_url} did not end within {timeout:g} s")


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event as the client parsed it."""

    id: str | None
    event: str
    data: str
    at: float

    def json(self) -> Any:
        return json.loads(self.data)


async def read_events(
    http: aiohttp.ClientSession, url: str, *, last_event_id: str | None = None, timeout: float = 60.0
) -> list[SseEvent]:
    """Read a ``text/event-stream`` until the server closes it (the job ended); parse it as the SSE spec says."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    events: list[SseEvent] = []
    async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as stream:
        if stream.status != 200 or stream.content_type != "text/event-stream":
            raise PollError(f"GET {url} answered {stream.status} {stream.content_type}, not an event stream")
        data: list[str] = []
        kind, last_id = "message", last_event_id
        async for raw in stream.content:
            line = raw.decode().rstrip("\n").rstrip("\r")
            if not line:  # a blank line ends an event
                if data:
                    events.append(SseEvent(last_id, kind, "\n".join(data), time.monotonic()))
                data, kind = [], "message"
                continue
            if line.startswith(":"):  # a comment (keep-alive)
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                kind = value
            elif name == "id":
                last_id = value
    return events


# --------------------------------------------------------------------------- measurements


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
        counts: dict[str, int] = {}
        for job in self.jobs:
            counts[job.state] = counts.get(job.state, 0) + 1
        return counts

    def rows(self, sync_seconds: Sequence[float] = ()) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for label, summary in (("POST /jobs: the 202", self.kickoff), ("the job: POST to its last step", self.job)):
            rows.append(
                {
                    "what the caller waits for": label,
                    "count": summary.count,
                    "p50 ms": round(summary.p50_ms, 1),
                    "p99 ms": round(summary.p99_ms, 1),
                }
            )
        if sync_seconds:
            sync = summarize(list(sync_seconds))
            rows.append(
                {
                    "what the caller waits for": "POST /agent: the sync version",
                    "count": sync.count,
                    "p50 ms": round(sync.p50_ms, 1),
                    "p99 ms": round(sync.p99_ms, 1),
                }
            )
        return rows


async def measure_kickoffs(system: HybridSystem, count: int = 16, *, timeout: float = 30.0) -> KickoffRun:
    """Kick off ``count`` jobs one after another (a patient client), then wait for every job to end."""
    answers: list[Answer] = []
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            answer = await submit(http, system.url, f"kickoff {i}: compare {2 + i % 4} message brokers")
            if answer.status != 202 or not isinstance(answer.body, dict):
                raise PollError(f"kickoff {i} answered {answer.status}: {str(answer.body)[:120]}")
            answers.append(answer)
    ids = [str(a.body["job_id"]) for a in answers]
    await until(lambda: all((job := system.board.get(i)) is not None and job.final for i in ids), timeout)
    jobs = [job for i in ids if (job := system.board.get(i)) is not None]
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
        if accepted.status != 202 or not isinstance(accepted.body, dict):
            raise PollError(f"the kickoff answered {accepted.status}: {str(accepted.body)[:120]}")
        job_id = str(accepted.body["job_id"])
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


STATE_COLORS = {ACCEPTED: "#9e9e9e", RUNNING: "#1f77b4", SUCCEEDED: "#2ca02c", FAILED: "#d62728", CANCELLED: "#ff7f0e"}


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
