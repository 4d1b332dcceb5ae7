"""Lesson 06's agent: the task's four steps, the run's topics, and the step workers that do them over MQTT.

Each step has its own worker: a pool behind one subscription. A worker takes a work order,
announces the step (``job.step_started``), does the work, announces it done
(``job.step_done``) and passes the job on: a work order for the next step, or
``job.succeeded`` with the result after the last one. A step whose work raises ends the job
with ``job.failed`` (step and reason). A ``job.cancel`` interrupts the running step.

Durable by default: every worker (and the cancel listener) has a fixed client id and a
persistent session (``clean_session=False``, QoS 1, acks after the work, in arrival order).
Work orders sent while the workers are down wait in their sessions on the broker; an
order whose worker stopped mid-step was never acknowledged, so the broker delivers it
again when the worker comes back (at least once). A worker remembers the orders it
finished (a file under the work folder), so an order delivered twice runs once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TypedDict

import aiohttp
import aiomqtt
from aiohttp import web

from helpers.core import lifecycle
from helpers.core.broker import Broker
from helpers.core.jobkit.client import Answer, request
from helpers.core.messaging import Consumer, Event, SeenIds, make_event, manual_ack, publish
from helpers.core.worker_pool import run_pool

MAX_TASK_CHARS = 500

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


@dataclass(frozen=True)
class WorkOrder:
    """The data of a :data:`STEP_ORDER`: the job carries its own route (``steps``) and what the steps before produced."""

    job_id: str
    task: str
    steps: tuple[str, ...]
    index: int = 0
    """The step this order is for."""
    outputs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> str | None:
        return self.steps[self.index] if 0 <= self.index < len(self.steps) else None

    @property
    def last(self) -> bool:
        return self.index + 1 == len(self.steps)

    def then(self, output: str) -> WorkOrder:
        """The order for the next step, carrying this step's output."""
        return replace(self, index=self.index + 1, outputs={**self.outputs, str(self.step): output})

    def event(self, source: str) -> Event:
        data = {"job_id": self.job_id, "task": self.task, "steps": list(self.steps), "index": self.index}
        return make_event(STEP_ORDER, {**data, "outputs": dict(self.outputs)}, source=source)

    @classmethod
    def read(cls, event: Event) -> WorkOrder:
        """The order an event carries (missing fields read as empty: the worker then refuses it)."""
        data = event.data if isinstance(event.data, dict) else {}
        index = data.get("index")
        steps = tuple(str(s) for s in data.get("steps") or ())
        outputs = dict(data.get("outputs") or {})
        return cls(
            str(data.get("job_id", "")), str(data.get("task", "")), steps, index if isinstance(index, int) else -1, outputs
        )


class Task(TypedDict):
    """A valid task, as :func:`read_task` gives it: what a job is created for."""

    task: str


async def read_task(request: web.Request) -> Task | None:
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
    return Task(task=task.strip())


async def submit(http: aiohttp.ClientSession, base_url: str, task: str | Mapping[str, Any], *, key: str | None = None) -> Answer:
    """``POST /jobs`` with ``{"task": task}`` (and an ``Idempotency-Key`` when given)."""
    body = {"task": task} if isinstance(task, str) else dict(task)
    headers = {"Idempotency-Key": key} if key else {}
    return await request(http, "POST", f"{base_url}/jobs", json=body, headers=headers)


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

    def client_id(self, who: str) -> str:
        """A fixed MQTT client id for ``who`` in this run: the same id resumes the same persistent session."""
        return f"{self.prefix.replace('/', '-')}-{who}"


# --------------------------------------------------------------------------- the agent's workers


async def kill_all(lives: Mapping[str, lifecycle.Restartable]) -> dict[str, Exception]:
    """Kill every loop, the last started first; return what each had died of by itself, by name."""
    errors: dict[str, Exception] = {}
    for name, life in reversed(list(lives.items())):
        if (error := await life.kill()) is not None:
            errors[name] = error
    return errors


def first_crash(lives: Mapping[str, lifecycle.Restartable]) -> Exception | None:
    """What the first of ``lives`` to die by itself died of, if one did."""
    return next((error for life in lives.values() if (error := life.crashed()) is not None), None)


class RunOutcome(StrEnum):
    """How a worker's step ended."""

    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    """The job was cancelled while the step ran."""


DONE_RUN, FAILED_RUN, INTERRUPTED_RUN = RunOutcome.DONE, RunOutcome.FAILED, RunOutcome.INTERRUPTED
"""The outcomes under their older names."""


@dataclass(frozen=True)
class StepRun:
    """One step of one job, as the worker did it."""

    job_id: str
    step: str
    started: float
    ended: float
    outcome: RunOutcome

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

    def __init__(
        self,
        broker: Broker,
        topics: Topics,
        steps: Sequence[Step] = STEPS,
        *,
        concurrency: int = 16,
        work_dir: str | Path | None = None,
    ) -> None:
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
        self.attempts: Counter[tuple[str, str]] = Counter()
        """How many times each ``(job_id, step)`` was started: more than once means it was delivered again."""
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._running_step: dict[str, str] = {}
        self._gate = asyncio.Event()
        self._lives: dict[str, lifecycle.Restartable] = {}
        """The workers and the cancel listener by name, in start order."""
        self._stack = contextlib.AsyncExitStack()
        self.work_dir = Path(work_dir) if work_dir is not None else None
        """Where each worker keeps the ids of the orders it finished (None: in memory, forgotten on a restart)."""
        self.starts = 0
        """How many times the workers were started (a restart after :meth:`halt` counts again)."""

    async def start(self) -> Agent:
        """Connect every worker and the cancel listener (resuming their sessions); return once all are subscribed."""
        if self._lives:
            raise RuntimeError("the agent's workers are running already: halt() them first")
        self._stack = contextlib.AsyncExitStack()
        try:
            for index, step in enumerate(self.steps):
                client = await self._client(step.name)
                consumer = Consumer(client, self.topics.step(step.name), self._worker(index, client), qos=1)
                consumer.dead_letter_topic = self.topics.dead_letter(step.name)
                consumer.dedupe = SeenIds(self.work_dir / f"seen-{step.name}.txt" if self.work_dir else None)
                await self._launch(f"{step.name} worker", run_pool, consumer, self.concurrency)
            listener = await self._client("cancel")
            consumer = Consumer(
                listener, self.topics.cancel, self._on_cancel, dead_letter_topic=self.topics.dead_letter("cancel")
            )
            await self._launch("cancel listener", consumer.run)
        except BaseException:  # not swallowed: close what did open, then re-raise
            await self.halt()
            raise
        self.starts += 1
        return self

    def client_ids(self) -> list[str]:
        """The fixed client ids of the workers and the cancel listener (their sessions live on the broker)."""
        return [self.topics.client_id(f"agent-{who}") for who in [*self.steps_names, "cancel"]]

    async def _client(self, who: str) -> aiomqtt.Client:
        """A connected client with a fixed id and a persistent session: what arrives while it is down waits for it."""
        client = self.broker.client(self.topics.client_id(f"agent-{who}"), clean_session=False)
        client = await self._stack.enter_async_context(manual_ack(client))
        client.pending_calls_threshold = 1000  # many jobs at once means many publishes in flight: not a warning
        return client

    async def halt(self) -> dict[str, Exception]:
        """Stop every worker and close their connections; return what each worker had died of, by name.

        Like a crash for the broker: a step in progress is not acknowledged, so its order is
        delivered again when the workers come back (:meth:`start`).
        """
        try:
            errors = await kill_all(self._lives)
        finally:
            self._lives = {}
            for work in list(self._running.values()):
                work.cancel()
            await self._stack.aclose()
        return errors

    async def stop(self) -> None:
        """Stop every worker; raise what any of them had died of (a worker never dies quietly)."""
        lifecycle.raise_crashed(await self.halt(), "the agent's workers")

    def crashed(self) -> Exception | None:
        """The error a worker died of, if one did."""
        return first_crash(self._lives)

    async def _launch(self, name: str, run: Callable[..., Awaitable[Any]], *args: Any) -> None:
        life = self._lives[name] = lifecycle.Restartable()
        await life.launch(run, *args)

    def release(self) -> None:
        """Let every job held at ``faults.hold_step`` go on (later jobs are held again while the knob is set)."""
        gate, self._gate = self._gate, asyncio.Event()
        gate.set()

    @property
    def steps_names(self) -> list[str]:
        return [step.name for step in self.steps]

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
            order = WorkOrder.read(event)
            if order.index != index or order.steps[index : index + 1] != (step.name,):
                raise ValueError(f"work order for {order.step or '?'} sent to the {step.name} worker")
            if order.job_id in self.cancelled:
                self.skipped += 1
                return
            output = await self._run(order, step, client)
            if output is None or order.job_id in self.cancelled:
                return
            if order.last:
                result = compose_result(order.task, {**order.outputs, step.name: output})
                await self._emit(client, JOB_SUCCEEDED, {"job_id": order.job_id, "result": result})
            else:
                following = order.then(output)
                await publish(client, self.topics.step(str(following.step)), following.event("/agent"))

        return handle

    async def _run(self, order: WorkOrder, step: Step, client: aiomqtt.Client) -> str | None:
        """Do one step of the order, announced before and after; its output, or None when it failed or was interrupted."""
        job_id, total = order.job_id, len(order.steps)
        self.attempts[job_id, step.name] += 1
        await self._emit(client, STEP_STARTED, {"job_id": job_id, "step": step.name, "index": order.index, "total": total})
        started = time.monotonic()
        work = asyncio.ensure_future(self._work(step, order.task, dict(order.outputs)))
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
        error = None if work.cancelled() else work.exception()
        outcome = RunOutcome.INTERRUPTED if work.cancelled() else RunOutcome.FAILED if error else RunOutcome.DONE
        self.runs.append(StepRun(job_id, step.name, started, time.monotonic(), outcome))
        if outcome is RunOutcome.FAILED:
            reason = str(error) if isinstance(error, StepFailed) else f"{type(error).__name__}: {error}"
            await self._emit(client, JOB_FAILED, {"job_id": job_id, "step": step.name, "reason": reason})
        if outcome is not RunOutcome.DONE:
            return None
        await self._emit(client, STEP_DONE, {"job_id": job_id, "step": step.name, "done": order.index + 1, "total": total})
        return str(work.result())

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
