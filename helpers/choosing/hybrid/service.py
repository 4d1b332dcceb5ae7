"""Lesson 06's hybrid, assembled: the jobs service (HTTP, job store, status keeper, outbox relay,
deadline sweeper) and the agent's step workers, on one broker; and the slow synchronous version.

Durable by default. The job store is a SQLite file in the system's work folder; the status
keeper has a fixed client id and a persistent session, so the workers' events that arrive
while the service is down wait for it; every message a change must send is written to the
outbox with the change and published after the commit (again after a restart: consumers
dedupe); an unfinished job is failed once its deadline passes. So:

* a job accepted while every worker is down is done once they come back (:meth:`HybridSystem.stop_workers`);
* a restart of the jobs service keeps every job answering its status (:meth:`HybridSystem.restart_service`);
* a job whose worker never comes back fails with its reason, never "running" forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from helpers.choosing.hybrid.agent import Agent, AgentFaults, first_crash, kill_all
from helpers.choosing.hybrid.board import (
    CALLER,
    DEADLINE_S,
    RETRY_AFTER_S,
    ApplyFn,
    Job,
    JobBoard,
    JobHandler,
    apply_event,
    cancel_job,
    job_events,
    job_result,
    job_status,
)
from helpers.choosing.hybrid.task import STEPS, Step, Topics, compose_result, read_task, step_output
from helpers.core import lifecycle
from helpers.core.broker import Broker
from helpers.core.http import Service, start_service
from helpers.core.jobkit import http as jobhttp
from helpers.core.jobkit.store import JobStore, KeyInUse, housekeeping
from helpers.core.messaging import Consumer, manual_ack
from helpers.core.problems import PROBLEM_BASE, problem, problems_everywhere
from helpers.core.waiting import until

STORE_FILE = "jobs.sqlite3"


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
            CALLER.set(jobhttp.caller_of(request))  # idempotency keys belong to this caller
            try:
                return await handler(request, board)
            except web.HTTPException:
                raise
            except KeyInUse as exc:  # the key's first request is still being answered
                return jobhttp.key_in_flight(exc.key, board.retry_after_s)
            except Exception as exc:  # noqa: BLE001 - a handler's bug becomes a readable 500 and is recorded, not a bare traceback
                name = getattr(handler, "__name__", "the handler")
                errors.append(HandlerError(name, exc))
                return problem(
                    500, "Handler failed", f"{name}() raised {type(exc).__name__}: {exc}", f"{PROBLEM_BASE}handler-failed"
                )

        return call

    app = web.Application(middlewares=[jobhttp.no_store, problems_everywhere])
    app.router.add_post("/jobs", route(kickoff))
    app.router.add_get("/jobs/{job_id}", route(status))
    app.router.add_delete("/jobs/{job_id}", route(cancel))
    app.router.add_post("/jobs/{job_id}/cancel", route(cancel))  # the same cancel, for clients that prefer an action
    app.router.add_get("/jobs/{job_id}/result", route(job_result))
    app.router.add_get("/jobs/{job_id}/events", route(job_events))
    return app


@dataclass(frozen=True)
class _Config:
    kickoff: JobHandler
    status: JobHandler
    cancel: JobHandler
    apply: ApplyFn
    steps: tuple[Step, ...]
    retry_after_s: int
    deadline_s: float
    name: str
    topics: Topics
    work_dir: Path


@dataclass
class _Front:
    """The jobs service's own parts: what :meth:`HybridSystem.restart_service` stops and starts again."""

    store: JobStore
    board: JobBoard
    service: Service
    listener: Consumer
    lives: dict[str, lifecycle.Restartable]
    stack: contextlib.AsyncExitStack

    async def stop(self) -> dict[str, Exception]:
        """Stop answering, then the status keeper and the housekeeping; return what either had died of."""
        try:
            await self.service.stop()
            errors = await kill_all(self.lives)
        finally:
            await self.stack.aclose()
            self.store.close()
        return errors


async def _start_front(broker: Broker, config: _Config, errors: list[HandlerError], port: int = 0) -> _Front:
    """Open the job store and start the status keeper, the housekeeping and the HTTP service (on ``port``; 0: a free one)."""
    topics = config.topics
    store = JobStore(config.work_dir / STORE_FILE)
    stack = contextlib.AsyncExitStack()
    lives = {"status keeper": lifecycle.Restartable(), "housekeeping": lifecycle.Restartable()}
    try:
        publisher = await stack.enter_async_context(broker.client(topics.client_id(f"{config.name}-outbox")))
        publisher.pending_calls_threshold = 1000
        board = JobBoard(
            store, topics, config.steps, publisher, config.apply, retry_after_s=config.retry_after_s, deadline_s=config.deadline_s
        )
        keeper = broker.client(topics.client_id(f"{config.name}-status"), clean_session=False)  # events wait while it is down
        keeper = await stack.enter_async_context(manual_ack(keeper))
        listener = Consumer(keeper, topics.events, board.on_event, dead_letter_topic=topics.dead_letter("status"))
        await lives["status keeper"].launch(listener.run)
        await lives["housekeeping"].launch(housekeeping, board.expire, board.relay)
        app = build_app(board, config.kickoff, config.status, config.cancel, errors)
        service = await start_service(config.name, app, port=port)
    except BaseException:  # not swallowed: close what did open, then re-raise
        await kill_all(lives)
        await stack.aclose()
        store.close()
        raise
    return _Front(store, board, service, listener, lives, stack)


@dataclass
class HybridSystem:
    """The running hybrid: the jobs service (HTTP, store, status keeper), and the agent's workers."""

    broker: Broker
    agent: Agent
    errors: list[HandlerError]
    _config: _Config
    _front: _Front
    temporary: bool = False
    """The work folder was made for this system: :meth:`stop` removes it and ends its broker sessions."""
    restarts: int = 0
    _stopped: bool = False
    _service_down: bool = field(default=False, repr=False)

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def topics(self) -> Topics:
        return self._config.topics

    @property
    def work_dir(self) -> Path:
        """Where the job store (and the workers' finished-order files) live."""
        return self._config.work_dir

    @property
    def service(self) -> Service:
        return self._front.service

    @property
    def board(self) -> JobBoard:
        return self._front.board

    @property
    def listener(self) -> Consumer:
        return self._front.listener

    @property
    def url(self) -> str:
        """The jobs service's base URL, e.g. http://127.0.0.1:41234 (it keeps its port across a restart)."""
        return self.service.url

    @property
    def faults(self) -> AgentFaults:
        """The agent's knobs (a step that fails, a step that holds)."""
        return self.agent.faults

    def crashed(self) -> BaseException | None:
        """What the status keeper's consumer, the housekeeping or a worker died of, if anything did."""
        return first_crash(self._front.lives) or self.agent.crashed()

    async def finished(self, job_id: str, timeout: float = 10.0) -> Job:
        """The job, once it is final (or once ``timeout`` passed: then in whatever state it is)."""
        [job] = await self.all_finished([job_id], timeout)
        return job

    async def all_finished(self, job_ids: Sequence[str], timeout: float = 10.0) -> list[Job]:
        """The jobs, once every one is final (or once ``timeout`` passed: then as they are); an unknown id is a KeyError."""
        await until(lambda: all((job := self.board.get(i)) is not None and job.final for i in job_ids), timeout)
        return [self._job(job_id) for job_id in job_ids]

    def _job(self, job_id: str) -> Job:
        job = self.board.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id!r} on this board")
        return job

    async def stop_workers(self) -> None:
        """Stop every step worker, as if their machines went down (a step in progress is not acknowledged)."""
        lifecycle.raise_crashed(await self.agent.halt(), "the agent's workers")

    async def start_workers(self) -> None:
        """Start the workers again: they resume their sessions and get what was sent while they were down."""
        await self.agent.start()

    async def restart_service(self, down_s: float = 0.0) -> None:
        """Stop the jobs service (HTTP, store, status keeper, outbox relay), wait ``down_s`` seconds, and
        start it again from the same work folder, on the same port. The workers keep working meanwhile."""
        port = self.service.port
        errors = await self._front.stop()
        lifecycle.raise_crashed(errors, "the jobs service")
        self._service_down = True
        await asyncio.sleep(down_s)
        self._front = await _start_front(self.broker, self._config, self.errors, port)
        self._service_down = False
        self.restarts += 1

    async def stop(self) -> None:
        """Stop answering, then the status keeper and the workers; raise what any of them had died of. Safe twice."""
        if self._stopped:
            return
        self._stopped = True
        if _systems.get(self.name) is self:
            del _systems[self.name]
        errors: dict[str, Exception] = {}
        try:
            if not self._service_down:
                errors.update(await self._front.stop())
        finally:
            errors.update(await self.agent.halt())
            if self.temporary:  # nobody can resume these sessions: do not leave them queueing on the broker
                await self.broker.end_sessions(
                    *self.agent.client_ids(), self.topics.client_id(f"{self.name}-status"), quietly=True
                )
                shutil.rmtree(self.work_dir, ignore_errors=True)
        lifecycle.raise_crashed(errors, "the hybrid's consumers")


async def start_hybrid(  # noqa: PLR0913  lesson 06 and lab 06 pass these knobs by keyword
    broker: Broker,
    kickoff: JobHandler,
    *,
    status: JobHandler = job_status,
    cancel: JobHandler = cancel_job,
    apply: ApplyFn = apply_event,
    steps: Sequence[Step] = STEPS,
    concurrency: int = 16,
    retry_after_s: int = RETRY_AFTER_S,
    deadline_s: float = DEADLINE_S,
    name: str = "jobs",
    topics: Topics | None = None,
    work_dir: str | Path | None = None,
) -> HybridSystem:
    """Start the agent's workers, the status keeper and the jobs service (HTTP on a free 127.0.0.1 port).

    ``kickoff`` answers ``POST /jobs``; ``status``, ``cancel`` and ``apply`` default to the
    reference versions. ``work_dir`` holds the job store; when None, a temporary folder that
    :meth:`HybridSystem.stop` removes. A system started on the work folder of an earlier one
    takes over its jobs and topics (and its workers' and status keeper's broker sessions).
    Like :func:`helpers.core.http.start_service`, a second start under the same ``name``
    (a cell run again) stops the first system.
    """
    old = _systems.pop(name, None)
    if old is not None:
        await _replace(old)
    folder = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix=f"hybrid-{name}-"))
    topics = topics or _topics_of(folder)
    config = _Config(kickoff, status, cancel, apply, tuple(steps), retry_after_s, deadline_s, name, topics, folder)
    agent = Agent(broker, topics, steps, concurrency=concurrency, work_dir=folder)
    await agent.start()
    errors: list[HandlerError] = []
    try:
        front = await _start_front(broker, config, errors)
    except BaseException:  # not swallowed: stop the workers that did start, then re-raise
        await agent.halt()
        raise
    system = HybridSystem(broker, agent, errors, config, front, temporary=work_dir is None)
    _systems[name] = system
    return system


def _topics_of(folder: Path) -> Topics:
    """The topics of the system whose store is in ``folder`` (new ones for a new folder), kept in the store."""
    store = JobStore(folder / STORE_FILE)
    try:
        prefix = store.meta("topics")
        if prefix is None:
            prefix = Topics.fresh().prefix
            store.set_meta("topics", prefix)
        return Topics(prefix)
    finally:
        store.close()


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
