"""Lesson 06's agent: the step workers that do the task's steps over MQTT (the task itself is :mod:`.task`).

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
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiomqtt

from helpers.choosing.hybrid.task import (
    JOB_FAILED,
    JOB_SUCCEEDED,
    STEP_DONE,
    STEP_EVENT_TOPICS,
    STEP_STARTED,
    STEPS,
    Step,
    StepFailed,
    Topics,
    WorkOrder,
    compose_result,
    step_output,
)
from helpers.core import lifecycle
from helpers.core.broker import Broker
from helpers.core.messaging import Consumer, Event, SeenIds, make_event, manual_ack, publish
from helpers.core.worker_pool import run_pool


async def kill_all(lives: Mapping[str, lifecycle.Restartable]) -> dict[str, Exception]:
    """Kill every loop, the last started first; return what each had died of by itself, by name."""
    errors: dict[str, Exception] = {}
    for name, life in reversed(list(lives.items())):
        if (error := await life.kill()) is not None:
            errors[name] = error
    return errors


def first_crash(lives: Mapping[str, lifecycle.Restartable]) -> BaseException | None:
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

    def crashed(self) -> BaseException | None:
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
