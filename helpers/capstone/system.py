"""One capstone system behind one interface, so a drill is written once and runs on every build of it.

:class:`CapstoneSystem` is what a drill (:mod:`helpers.capstone.drills`) may touch: upload
like a client (:meth:`~CapstoneSystem.post`), read a job's status resource, wait until jobs
finished or their users were notified, kill and restart the processor and the notifier
(:class:`ServiceHandle`, the interface of :class:`helpers.core.lifecycle.Restartable`), and
the evidence seen from outside: every message on the run's topics, every Storage request
per caller, the users' inbox. Adapters:

* :class:`helpers.capstone.pipeline.ReferenceSystem`: the lesson's reference services (lesson 07);
* :class:`helpers.capstone.assembly.LearnerSystem`: the learner's three services (lab 07);
* :class:`helpers.capstone.sync_design.SyncSystem`: the naive synchronous design (request side only);
* :class:`helpers.capstone.scaleout.Front`: Storage and Upload in the kernel, workers as processes (appendix 08).

:class:`WatchedSystem` is the shared half of the first two: everything that is judged from
outside, so the reference and the learner's code are measured by the same lines.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import aiohttp

from helpers.capstone.jobs import JOB_DONE, JOB_FAILED, Topics
from helpers.capstone.notifier import Inbox
from helpers.capstone.wire import PostsImages, Recorder, RecordingStorage, UploadAnswer
from helpers.core import lifecycle
from helpers.core.messaging import Event
from helpers.core.waiting import until, until_quiet

QUIET_S = 0.3
""""And then nothing more arrives": how long a count must stay still before a drill trusts it."""


@runtime_checkable
class ServiceHandle(Protocol):
    """A service a drill kills and starts again like a process (the interface of ``lifecycle.Restartable``)."""

    @property
    def alive(self) -> bool: ...

    async def start(self) -> object:
        """Start it (again), with the same client id: its persistent session resumes."""
        ...

    async def kill(self) -> Exception | None:
        """Kill it mid-work; returns what it had died of before, if anything."""
        ...

    def crashed(self) -> BaseException | None:
        """What it died of by itself (a healthy service runs until it is killed)."""
        ...


@runtime_checkable
class Uploads(Protocol):
    """The request side every design has, the naive synchronous one included."""

    @property
    def url(self) -> str: ...

    async def post(
        self, data: bytes, user: str, *, idempotency_key: str | None = None, timeout: float | None = 10.0
    ) -> UploadAnswer: ...

    async def stop(self) -> None: ...


@runtime_checkable
class CapstoneSystem(Uploads, Protocol):
    """A running capstone: upload, status, waits, the two restartable services, and what was seen from outside."""

    topics: Topics
    storage: RecordingStorage
    recorder: Recorder
    inbox: Inbox

    @property
    def processor(self) -> ServiceHandle: ...

    @property
    def notifier(self) -> ServiceHandle: ...

    async def status(self, job_id: str) -> tuple[int, dict[str, Any]]: ...

    def events(self, kind: str | None = None, job_id: str | None = None) -> list[tuple[float, Event]]: ...

    def finished(self, job_ids: Iterable[str]) -> bool: ...

    def dead_letters(self) -> list[dict[str, Any]]: ...

    async def wait_finished(self, job_ids: Iterable[str], timeout: float = 30.0) -> bool: ...

    async def wait_notified(self, job_ids: Iterable[str], timeout: float = 30.0) -> bool: ...

    def crashed(self) -> dict[str, BaseException]: ...

    def raise_crashed(self) -> None: ...

    async def settle(self, idle: float = QUIET_S, timeout: float = 5.0) -> None: ...


@dataclass(kw_only=True)
class WatchedSystem(PostsImages):
    """What every watched adapter shares: an HTTP client, a recorder on every topic, Storage per caller, the inbox.

    Subclasses give :attr:`url`; what a system did is judged only
    from here (the wire, Storage's requests, the inbox file, HTTP answers), never from the
    inside of one implementation.
    """

    broker: Any
    topics: Topics
    workdir: Path
    storage: RecordingStorage
    recorder: Recorder
    inbox: Inbox
    processor: ServiceHandle
    notifier: ServiceHandle
    session: aiohttp.ClientSession
    _stack: contextlib.AsyncExitStack
    _errors: dict[str, BaseException] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The Upload service's base URL (``POST /images``, ``GET /jobs/{id}``)."""
        raise NotImplementedError

    async def status(self, job_id: str, *, follow: bool = False) -> tuple[int, dict[str, Any]]:
        """``GET /jobs/{job_id}`` over HTTP: (status, body); a finished job answers 303 unless ``follow``."""
        async with self.session.get(f"{self.url}/jobs/{job_id}", allow_redirects=follow) as response:
            return response.status, await response.json(content_type=None)

    def events(self, kind: str | None = None, job_id: str | None = None) -> list[tuple[float, Event]]:
        """(arrival time, event) of the events seen on the run's topics."""
        return self.recorder.events(kind, job_id)

    def finished(self, job_ids: Iterable[str]) -> bool:
        """True when each job's ``job.done`` or ``job.failed`` was seen on the wire."""
        ended = {e.data.get("job_id") for _, e in self.events() if e.type in (JOB_DONE, JOB_FAILED) and isinstance(e.data, dict)}
        return set(job_ids) <= ended

    def dead_letters(self) -> list[dict[str, Any]]:
        """The dead-letter records on ``{prefix}/dead-letter/images``: reason, topic and the original event."""
        return [json.loads(r.payload) for r in self.recorder.on(self.topics.dead_letter)]

    def crashed(self) -> dict[str, BaseException]:
        """Services that died by themselves (name -> error)."""
        errors = dict(self._errors)
        for label, handle in (("processor", self.processor), ("notifier", self.notifier)):
            if (error := handle.crashed()) is not None:
                errors[label] = error
        return errors

    def raise_crashed(self) -> None:
        """Raise the error a service died of, naming the service (never swallowed)."""
        lifecycle.raise_crashed(self.crashed(), "the system's service")

    async def _wait(self, condition: Any, timeout: float) -> bool:
        """Wait for ``condition()``; a crashed service cannot make it true, so its error is raised at once."""
        done = await until(lambda: condition() or bool(self.crashed()), timeout, poll=0.01)
        self.raise_crashed()
        return done and bool(condition())

    async def wait_finished(self, job_ids: Iterable[str], timeout: float = 30.0) -> bool:
        """Wait until every job finished on the wire; False after ``timeout``."""
        ids = list(job_ids)
        return await self._wait(lambda: self.finished(ids), timeout)

    async def wait_notified(self, job_ids: Iterable[str], timeout: float = 30.0) -> bool:
        """Wait until every job has a notification in the inbox; False after ``timeout``."""
        ids = set(job_ids)
        return await self._wait(lambda: ids <= set(self.inbox.per_job()), timeout)

    async def settle(self, idle: float = QUIET_S, timeout: float = 5.0) -> None:
        """Wait until nothing more moves: no message, no Storage call, no notification for ``idle`` s."""
        await until_quiet(lambda: (len(self.recorder.records), len(self.storage.calls), len(self.inbox)), idle, timeout)

    async def stop(self) -> None:
        """Stop every service and client; then raise what any of them had died of (never swallowed)."""
        await self._stack.aclose()
        lifecycle.raise_crashed(self._errors, "the system's service")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()
