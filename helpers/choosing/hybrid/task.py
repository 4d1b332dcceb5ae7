"""Lesson 06's agent task, as it travels: the four steps, the events and work orders on the wire, the topics.

What the jobs service (:mod:`.board`) and the step workers (:mod:`.agent`) agree on: the
event types and their data, a :class:`WorkOrder` that carries the job's route and the
steps' outputs from worker to worker, the :class:`Topics` of one run, and the task a
client sends (``{"task": "..."}``: :func:`read_task` on the server, :func:`submit` on the client).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

import aiohttp
from aiohttp import web

from helpers.core.jobkit.client import Answer, request
from helpers.core.messaging import Event, make_event

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
        """The order as an event whose id names the job and the step, never a random one.

        Delivery is at least once: a step whose worker died before its ack runs again and
        publishes the next order again. With the same id, the next step's dedupe (``SeenIds``)
        drops the copy, so only the interrupted step runs twice, not the rest of the job.
        """
        data = {"job_id": self.job_id, "task": self.task, "steps": list(self.steps), "index": self.index}
        return make_event(STEP_ORDER, {**data, "outputs": dict(self.outputs)}, source=source, id=self.event_id)

    @property
    def event_id(self) -> str:
        return f"{self.job_id}.step-{self.index}"

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
