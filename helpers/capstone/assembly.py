"""Lab 07's kit: the learner's three services wired into one running :class:`~helpers.capstone.system.CapstoneSystem`.

In lab 07 the learner writes the heart of three services of the capstone:

* ``make_upload_handler(storage, mqtt, topics, jobs)`` returns the ``POST /images`` handler
  (validate, store the original, queue the job with its claim check, answer ``202 Accepted``);
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

import asyncio
import contextlib
import contextvars
import inspect
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
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
    Counters,
    accepted,
    accepted_body,
    add_status_routes,
    consume_job_events,
    outbox_relay,
    queue_job,
)
from helpers.capstone.wire import RecordingStorage as RecordingStorage
from helpers.capstone.wire import start_recorder as start_recorder
from helpers.core import lifecycle
from helpers.core.http import Service, start_service
from helpers.core.jobkit import http as jobhttp
from helpers.core.jobkit.store import KeyInUse, housekeeping
from helpers.core.messaging import Event
from helpers.core.problems import problem, problems_everywhere
from helpers.core.reconnect import Publisher, reconnecting

UPLOAD_BODY_LIMIT = images.MAX_UPLOAD_BYTES + 2**20
"""The largest body the upload server reads: above the image limit, so an oversized upload
reaches the learner's handler and ``inspect_upload`` refuses it (413) as problem+json."""

UploadFactory = Callable[..., Any]
"""``make_upload_handler(storage, mqtt, topics)``: returns ``async def post_image(request)``."""
ServiceLoop = Callable[..., Awaitable[Any]]
"""``run_processor(...)`` or ``run_notifier(...)``: runs until canceled, sets ``ready`` once subscribed."""


# --- the learner's upload handler as a service ----------------------------------------------------


_RESERVED: contextvars.ContextVar[list[Job] | None] = contextvars.ContextVar("lab07_reserved", default=None)
"""The jobs whose keys the current request reserved (:meth:`UploadJobsDesk.new`), for :meth:`UploadJobsDesk.request`."""


class UploadJobsDesk:
    """The lab's job store for the Upload service: the capstone's SQLite store (the async-job kit), with the
    calls a handler needs. The status resource behind every ``Location`` reads the same store.

    Idempotency is the handler's to write: :meth:`find` looks a key up *for one user*, and the
    job it returns carries the ``fingerprint`` (SHA-256 of the bytes) of the request that made it.

    Storing a job and publishing its event are two writes to two systems (the job store, the broker):
    done one after the other, a failure between them leaves a job nobody processes, or an event for a
    job nobody knows. So :meth:`new` only reserves the key, and :meth:`queue` stores the job with its
    event in one transaction (the kit's outbox), publishing after the commit; what the broker could
    not take then, ``serve_upload``'s housekeeping publishes once it is back.
    """

    def __init__(
        self, store: UploadJobs, steps: int = len(images.STEPS), *, relay: Callable[[], Awaitable[int]] | None = None
    ) -> None:
        self.store, self.steps = store, steps
        self.relay = relay
        """Publishes what the outbox holds (None: nothing publishes it, the events wait in the store)."""

    def find(self, user: str, key: str) -> Job | None:
        """The job ``user`` queued with Idempotency-Key ``key``, or None (another user's same key is another key)."""
        return self.store.by_key(user, key)

    def new(self, user: str, key: str | None, fingerprint: str) -> Job:
        """A new job for ``user`` (state ``accepted``, its id ``job.job_id``), not stored yet: :meth:`queue` stores it.

        With a key, the key is reserved for this job, so a concurrent request with it is told 409 instead
        of storing the same image twice; a request that ends without queueing the job gives the key up
        again (:meth:`request`), so the client's retry starts afresh. Raises
        :class:`~helpers.core.jobkit.store.KeyInUse` when the key is reserved or used already (409 with Retry-After).
        """
        job = Job(uuid.uuid4().hex, user, self.steps, fingerprint, key)
        job.accepted_body = accepted_body(job)
        if key is not None:
            self.store.store.reserve(user, key, fingerprint, job.job_id)
            if (reserved := _RESERVED.get()) is not None:
                reserved.append(job)
        return job

    async def queue(self, job: Job, topic: str, event: Event) -> None:
        """Store ``job`` and the event to publish on ``topic`` in one transaction (the outbox), then publish it.

        Once this returns the work is queued, whether the broker took the event at once or is
        away (the event waits in the store and goes out when the broker is back; a copy sent twice
        carries the same event id, for the processor's dedupe). If it raises, nothing was stored.
        """
        await queue_job(self.store, self.relay or _nothing_to_relay, job, topic, event)

    def accepted(self, job: Job, *, replayed: bool = False) -> web.Response:
        """The 202 for ``job`` (lesson 06's body, ``Location: /jobs/{id}``, ``Retry-After``); the same every time.

        A job never handed to :meth:`queue` (a handler written for this lab's first version, which
        published the event itself) is stored here, after that publish: the dual write the outbox avoids.
        """
        if self.store.get(job.job_id) is None:
            self.store.create(job, [])
            self.store.answered(job)
        return accepted(job, replayed=replayed)

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Around one request: the keys it reserved for jobs it never queued are free again afterwards.

        The handler may have raised (Storage down) or answered an error itself; either way no job was
        stored, and a retry with the same key must not be told "in flight" or replayed a job that
        does not exist. (:meth:`~helpers.core.jobkit.store.JobStore.release` keeps a key whose job was stored.)
        """
        reserved: list[Job] = []
        token = _RESERVED.set(reserved)
        try:
            yield
        finally:
            _RESERVED.reset(token)
            for job in reserved:
                self.store.store.release(job.user, job.idempotency_key or "", job.job_id)

    def __len__(self) -> int:
        return len(self.store)


async def _nothing_to_relay() -> int:
    return 0


@dataclass
class UploadServer:
    """The learner's ``POST /images`` handler, running with the status resource: its URL, its jobs, what it raised."""

    service: Service
    jobs: UploadJobsDesk
    errors: list[str] = field(default_factory=list)
    """Exceptions the handler raised (each was answered with a problem+json 500)."""
    mqtt: Any = None
    """The MQTT client the handler was given."""
    publisher: Publisher | None = None
    """The connection the outbox is published through."""

    @property
    def url(self) -> str:
        return self.service.url

    async def stop(self) -> None:
        """Stop answering, then close the handler's MQTT and Storage clients, the job-event consumer and the store."""
        await self.service.stop()

    @contextlib.asynccontextmanager
    async def broker_away(self) -> AsyncIterator[None]:
        """While inside, every publish of this Upload service fails as if the broker were away (``aiomqtt.MqttError``):
        the handler's ``mqtt`` client's and the outbox's. The rest of the run (a recorder, the processor) is not affected."""

        async def away(*_args: object, **_kwargs: object) -> None:
            raise aiomqtt.MqttError("the MQTT broker is away (a drill cut the Upload service off)")

        clients = [c for c in (self.mqtt, self.publisher) if c is not None]
        patched = [(c, name) for c in clients for name in ("publish", "publish_raw") if hasattr(c, name)]
        for client, name in patched:
            setattr(client, name, away)  # an instance attribute: the class's method is back once it is deleted
        try:
            yield
        finally:
            for client, name in patched:
                delattr(client, name)


def _handler_errors(errors: list[str], jobs: UploadJobsDesk) -> Any:
    @web.middleware
    async def catch(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            with jobs.request():  # a key reserved for a job that was never queued is free again
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

    The store's outbox (what ``jobs.queue`` stored) is published through a connection that
    reconnects by itself, right after each commit and by the reference Upload's housekeeping
    (:func:`helpers.core.jobkit.store.housekeeping`): every few tenths of a second, and after a
    restart on the same ``work_dir``. The ``mqtt`` client the handler gets is not needed for that;
    it stays so that a handler written for the lab's first version (it published itself) still runs.
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
            stack.push_async_callback(broker.end_sessions, consumer_id, quietly=True)
        consumer = await lifecycle.start(reconnecting, consume_job_events, broker, topics, consumer_id, store)
        stack.push_async_callback(lifecycle.kill, consumer)
        mqtt = await stack.enter_async_context(broker.client(f"{name}-pub-{uuid.uuid4().hex[:6]}"))
        mqtt.pending_calls_threshold = 1000  # a burst of uploads means many publishes in flight: not a warning
        publisher = await Publisher(broker, f"{name}-relay-{uuid.uuid4().hex[:6]}").start()  # reconnects by itself
        stack.push_async_callback(publisher.stop)
        relay = outbox_relay(store, publisher, Counters())
        keeping = asyncio.create_task(housekeeping(store.expire, relay))
        stack.push_async_callback(lifecycle.kill, keeping)
        jobs = UploadJobsDesk(store, relay=relay)
        handler = make_handler(storage, mqtt, topics, jobs)
        if inspect.isawaitable(handler):
            handler = await handler
        if not callable(handler):
            raise TypeError(f"make_upload_handler() should return the handler (async def post_image(request)), got {handler!r}")
        errors: list[str] = []
        middlewares = [jobhttp.no_store, problems_everywhere, _handler_errors(errors, jobs)]
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
    return UploadServer(service, jobs, errors, mqtt, publisher)


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
        stack.push_async_callback(broker.end_sessions, notify_name)  # last: after the loop is gone
        stack.push_async_callback(notifying.kill)
        await notifying.start()
        processing = Worker("processor", processor, (broker, topics, processor_url, process_name), {"work": work}, process_name)
        stack.push_async_callback(broker.end_sessions, process_name)
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
