"""Lab 07's kit: the learner's three services wired into one running :class:`~helpers.capstone.system.CapstoneSystem`.

In lab 07 the learner writes the heart of three services of the capstone:

* ``make_upload_handler(storage, mqtt, topics, jobs)`` returns the ``POST /images`` handler
  (validate, store the original, publish a claim check, answer ``202 Accepted``);
* ``run_processor(broker, topics, storage_url, name, *, work, ready)`` is the AI Image
  Processor's consumer loop (fetch, transform in a thread, store, ``job.done``, then ack);
* ``run_notifier(broker, topics, workdir, name, *, ready)`` is the Notification service's
  consumer loop (persistent session, once per job, into an :class:`~helpers.capstone.notifier.Inbox`).

This module runs them the way the lesson's reference system runs its own services
(:mod:`helpers.capstone.pipeline`), watched by the same instruments
(:mod:`helpers.capstone.wire`), so the lab's checks run the lesson's drills
(:mod:`helpers.capstone.drills`) and judge behavior, never source text:

* :func:`serve_upload` mounts the learner's handler with the status resource and a job store;
* :class:`Worker` starts, kills and restarts a consumer loop like a process, with the same client id every time;
* :func:`start_system` composes everything into a :class:`LearnerSystem`.
"""

from __future__ import annotations

import contextlib
import inspect
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from helpers.capstone import images

# The names lab 07's first cell imported from here before the drills were written once: a
# learner's notebook started from that lab still runs (its first cell is never regenerated).
from helpers.capstone.drills import notifier_outage as notifier_outage
from helpers.capstone.drills import upload_burst as upload_burst
from helpers.capstone.drills import worker_killed as worker_killed
from helpers.capstone.jobs import STORE_FILE, Job, Topics, UploadJobs
from helpers.capstone.notifier import Inbox as Inbox
from helpers.capstone.system import WatchedSystem
from helpers.capstone.upload import (
    accepted,
    accepted_body,
    add_status_routes,
    consume_job_events,
    end_session,
    end_session_quietly,
)
from helpers.capstone.wire import RecordingStorage as RecordingStorage
from helpers.capstone.wire import start_recorder as start_recorder
from helpers.core import lifecycle
from helpers.core.http import Service, start_service
from helpers.core.jobkit import http as jobhttp
from helpers.core.jobkit.store import KeyInUse
from helpers.core.problems import problem, problems_everywhere
from helpers.core.reconnect import reconnecting

UPLOAD_BODY_LIMIT = images.MAX_UPLOAD_BYTES + 2**20
"""The largest body the upload server reads: above the image limit, so an oversized upload
reaches the learner's handler and ``inspect_upload`` refuses it (413) as problem+json."""

UploadFactory = Callable[..., Any]
"""``make_upload_handler(storage, mqtt, topics)``: returns ``async def post_image(request)``."""
ServiceLoop = Callable[..., Awaitable[Any]]
"""``run_processor(...)`` or ``run_notifier(...)``: runs until canceled, sets ``ready`` once subscribed."""


# --- the learner's upload handler as a service ----------------------------------------------------


class UploadJobsDesk:
    """The lab's job store for the Upload service: the capstone's SQLite store (the async-job kit), with the
    three calls a handler needs. The status resource behind every ``Location`` reads the same store.

    Idempotency is the handler's to write: :meth:`find` looks a key up *for one user*, and the
    job it returns carries the ``fingerprint`` (SHA-256 of the bytes) of the request that made it.
    """

    def __init__(self, store: UploadJobs, steps: int = len(images.STEPS)) -> None:
        self.store, self.steps = store, steps

    def find(self, user: str, key: str) -> Job | None:
        """The job ``user`` made with Idempotency-Key ``key``, or None (another user's same key is another key)."""
        return self.store.by_key(user, key)

    def new(self, user: str, key: str | None, fingerprint: str) -> Job:
        """A new job in state ``accepted`` for ``user``, stored with its key and fingerprint; its id is ``job.job_id``.

        Raises :class:`~helpers.core.jobkit.store.KeyInUse` when a concurrent request with the same
        user and key stored its job first (the server answers that with 409 and Retry-After).
        """
        job = Job(uuid.uuid4().hex, user, self.steps, fingerprint, key)
        job.accepted_body = accepted_body(job)
        self.store.create(job, [])
        self.store.answered(job)
        return job

    def accepted(self, job: Job, *, replayed: bool = False) -> web.Response:
        """The 202 for ``job`` (lesson 06's body, ``Location: /jobs/{id}``, ``Retry-After``); the same every time."""
        return accepted(job, replayed=replayed)

    def __len__(self) -> int:
        return len(self.store)


@dataclass
class UploadServer:
    """The learner's ``POST /images`` handler, running with the status resource: its URL, its jobs, what it raised."""

    service: Service
    jobs: UploadJobsDesk
    errors: list[str] = field(default_factory=list)
    """Exceptions the handler raised (each was answered with a problem+json 500)."""

    @property
    def url(self) -> str:
        return self.service.url

    async def stop(self) -> None:
        """Stop answering, then close the handler's MQTT and Storage clients, the job-event consumer and the store."""
        await self.service.stop()


def _handler_errors(errors: list[str]) -> Any:
    @web.middleware
    async def catch(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPException:
            raise
        except KeyInUse as exc:  # two requests with one key at once: the second is told to retry shortly
            return jobhttp.key_in_flight(exc.key)
        except Exception as exc:  # noqa: BLE001 - the learner's bug becomes a readable 500 and a note for the checks
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            errors.append(what)
            return problem(500, "The upload handler raised an exception", what)

    return catch


async def serve_upload(  # noqa: PLR0913  learner-facing: lab 07's notebook serves its handler with these
    make_handler: UploadFactory, broker: Any, topics: Topics, storage_url: str, *, name: str, work_dir: str | Path | None = None
) -> UploadServer:
    """Start an upload service (127.0.0.1, free port) around ``make_handler(storage, mqtt, topics, jobs)``.

    The server gives the handler a :class:`~helpers.capstone.storage.StorageClient` for
    ``storage_url``, a connected MQTT client of its own and the :class:`UploadJobsDesk`
    (a SQLite job store in ``work_dir``, a temporary folder when None), reads bodies up to
    :data:`UPLOAD_BODY_LIMIT`, serves the status resource (``GET /jobs/{id}``, lesson 06's
    convention) from the same store, kept up to date by a job-event consumer with a fixed
    client id and a persistent session, and closes all of it when it stops. Re-running a
    cell with the same ``name`` replaces the old server.
    """
    from helpers.capstone.storage import StorageClient

    stack = contextlib.AsyncExitStack()
    folder = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix=f"{name}-"))
    if work_dir is None:
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
    try:
        store = UploadJobs(folder / STORE_FILE)
        stack.callback(store.close)
        storage = StorageClient(storage_url)
        stack.push_async_callback(storage.close)
        consumer_id = topics.client_id(f"{name}-jobs")
        if work_dir is None:  # nobody resumes this session after the server stops
            stack.push_async_callback(end_session_quietly, broker, consumer_id)
        consumer = await lifecycle.start(reconnecting, consume_job_events, broker, topics, consumer_id, store)
        stack.push_async_callback(lifecycle.kill, consumer)
        mqtt = await stack.enter_async_context(broker.client(f"{name}-pub-{uuid.uuid4().hex[:6]}"))
        mqtt.pending_calls_threshold = 1000  # a burst of uploads means many publishes in flight: not a warning
        jobs = UploadJobsDesk(store)
        handler = make_handler(storage, mqtt, topics, jobs)
        if inspect.isawaitable(handler):
            handler = await handler
        if not callable(handler):
            raise TypeError(f"make_upload_handler() should return the handler (async def post_image(request)), got {handler!r}")
        errors: list[str] = []
        middlewares = [jobhttp.no_store, problems_everywhere, _handler_errors(errors)]
        app = web.Application(client_max_size=UPLOAD_BODY_LIMIT, middlewares=middlewares)
        app.router.add_post("/images", handler)
        add_status_routes(app, store, storage.url)

        async def close(_app: web.Application) -> None:
            await stack.aclose()

        app.on_cleanup.append(close)
        service = await start_service(name, app)
    except BaseException:  # not swallowed: close what did open, then re-raise
        await stack.aclose()
        raise
    return UploadServer(service, jobs, errors)


# --- a consumer loop, run like a process ------------------------------------------------------------


@dataclass
class Worker:
    """One of the learner's consumer loops: started, killed and restarted with the same client id.

    ``run(*args, ready=event, **kwargs)`` runs until canceled; ``name`` (its client id)
    is in ``args`` and never changes, so a restart resumes the persistent session.
    """

    label: str
    run: ServiceLoop
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    name: str
    life: lifecycle.Restartable = field(default_factory=lifecycle.Restartable)
    starts: int = 0

    @property
    def alive(self) -> bool:
        return self.life.alive

    async def start(self, timeout: float = 5.0) -> None:
        """Start (or restart) it; returns once it set ``ready`` (subscribed), else raises its error."""
        if self.alive:
            raise RuntimeError(f"the {self.label} is running; kill it first")
        await self.life.launch(self.run, *self.args, timeout=timeout, **self.kwargs)
        self.starts += 1

    async def kill(self) -> Exception | None:
        """Kill it mid-work, like a crashed process; returns the error it had died of before, if any."""
        return await self.life.kill()

    def crashed(self) -> BaseException | None:
        """The error it died of, if it died by itself (a healthy loop runs until it is killed)."""
        return self.life.crashed()


# --- the whole system ---------------------------------------------------------------------------------


@dataclass(kw_only=True)
class LearnerSystem(WatchedSystem):
    """The learner's upload, processor and notifier, composed: Storage per caller, a broker, a recorder on every topic."""

    upload: UploadServer
    processor: Worker
    notifier: Worker

    @property
    def url(self) -> str:
        """The upload service's base URL (``POST /images``)."""
        return self.upload.url


async def start_system(  # noqa: PLR0913  learner-facing: lab 07 passes its three services and work as knobs
    broker: Any,
    workdir: str | Path,
    *,
    upload: UploadFactory,
    processor: ServiceLoop,
    notifier: ServiceLoop,
    work: float = 1.0,
    prefix: str = "lab07",
    name: str = "lab07",
) -> LearnerSystem:
    """Start Storage, the upload service around ``upload``, and the ``processor`` and ``notifier`` loops.

    Topics live under ``{prefix}/<run id>/`` and files under ``workdir/<run id>/``, so runs
    never see each other. ``work`` goes to the processor (1.0: a normal photo's cost, see ``images.process_image``).
    """
    topics = Topics.fresh(prefix)
    run_id = topics.prefix.rsplit("/", 1)[-1]
    folder = Path(workdir) / run_id
    stack = contextlib.AsyncExitStack()
    try:
        storage = RecordingStorage(folder / "storage", name=f"{name}-storage")
        stack.push_async_callback(storage.stop)
        session = aiohttp.ClientSession()
        stack.push_async_callback(session.close)
        wire = await start_recorder(broker, topics, name=f"{name}-recorder-{run_id}")
        stack.push_async_callback(wire.stop)
        upload_url, processor_url = await storage.url("upload"), await storage.url("processor")
        server = await serve_upload(upload, broker, topics, upload_url, name=f"{name}-upload-{run_id}")
        stack.push_async_callback(server.stop)
        notify_name, process_name = f"{name}-notifier-{run_id}", f"{name}-processor-{run_id}"
        notifying = Worker("notifier", notifier, (broker, topics, folder / "notifier", notify_name), {}, notify_name)
        stack.push_async_callback(end_session, broker, notify_name)  # last: after the loop is gone
        stack.push_async_callback(notifying.kill)
        await notifying.start()
        processing = Worker("processor", processor, (broker, topics, processor_url, process_name), {"work": work}, process_name)
        stack.push_async_callback(end_session, broker, process_name)
        stack.push_async_callback(processing.kill)
        await processing.start()
    except BaseException:  # not swallowed: stop what did start, then re-raise
        await stack.aclose()
        raise
    return LearnerSystem(
        broker=broker,
        topics=topics,
        workdir=folder,
        storage=storage,
        recorder=wire.recorder,
        inbox=Inbox(folder / "notifier"),
        processor=processing,
        notifier=notifying,
        session=session,
        _stack=stack,
        upload=server,
    )
