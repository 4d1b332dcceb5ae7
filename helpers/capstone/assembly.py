"""Lab 07's kit: the learner's three services wired into one running system, watched from outside.

In lab 07 the learner writes the heart of three services of the capstone:

* ``make_upload_handler(storage, mqtt, topics)`` returns the ``POST /images`` handler
  (validate, store the original, publish a claim check, answer ``202 Accepted``);
* ``run_processor(broker, topics, storage_url, name, *, work, ready)`` is the AI Image
  Processor's consumer loop (fetch, transform in a thread, store, ``job.done``, then ack);
* ``run_notifier(broker, topics, workdir, name, *, ready)`` is the Notification service's
  consumer loop (persistent session, once per job, into an :class:`Inbox`).

This module runs them the way the lesson's reference system runs its own services
(:mod:`helpers.capstone.pipeline`), and sees what they do from the outside, so the
notebook's experiments and the lab's checks judge behavior, never source text:

* :class:`RecordingStorage` is one Storage folder served on one port *per caller*, so
  every request says who made it (the upload or the processor), which object, and when;
* :func:`serve_upload` mounts the learner's handler; :class:`Worker` starts, kills and
  restarts a consumer loop like a process, with the same client id every time;
* :func:`start_system` composes everything with a recorder on every topic of the run;
  :func:`upload_burst`, :func:`worker_killed` and :func:`notifier_outage` are the three
  fault drills of the lab's last question.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import shutil
import statistics
import tempfile
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
from aiohttp import web

from helpers.capstone import images
from helpers.capstone.jobs import IMAGE_UPLOADED, JOB_DONE, JOB_FAILED, STORE_FILE, Job, Topics, UploadJobs, now
from helpers.capstone.notifier import Notification
from helpers.capstone.pipeline import QUIET_S, Record, Recorder, UploadAnswer, post_image
from helpers.capstone.storage import LOCKS, STORE, ObjectStore, StoredObject, storage_app
from helpers.capstone.upload import accepted, accepted_body, add_status_routes, end_session
from helpers.core import lifecycle
from helpers.core.http import Service, start_service
from helpers.core.jobkit import http as jobhttp
from helpers.core.jobkit.store import KeyInUse
from helpers.core.messaging import Consumer, Event, manual_ack
from helpers.core.problems import problem, problems_everywhere
from helpers.core.reconnect import reconnecting
from helpers.core.timestamps import iso
from helpers.core.waiting import until, until_quiet

UPLOAD_BODY_LIMIT = images.MAX_UPLOAD_BYTES + 2**20
"""The largest body the upload server reads: above the image limit, so an oversized upload
reaches the learner's handler and ``inspect_upload`` refuses it (413) as problem+json."""

UploadFactory = Callable[..., Any]
"""``make_upload_handler(storage, mqtt, topics)``: returns ``async def post_image(request)``."""
ServiceLoop = Callable[..., Awaitable[Any]]
"""``run_processor(...)`` or ``run_notifier(...)``: runs until canceled, sets ``ready`` once subscribed."""


# --- Storage that says who called it ------------------------------------------------------------


@dataclass(frozen=True)
class StorageCall:
    """One request Storage served: who sent it (the port it came in on), what, and when."""

    caller: str
    method: str
    key: str
    status: int
    size: int
    """Bytes in the request body (a PUT's object size)."""
    started: float
    """``time.perf_counter()`` when the request reached the service."""
    ended: float
    """``time.perf_counter()`` when its answer was ready (the caller reads it just after)."""


class RecordingStorage:
    """One Storage folder, served on a port of its own for each caller, recording every request.

    ``await storage.url("upload")`` is the base URL the upload service gets,
    ``await storage.url("processor")`` the processor's: the same objects behind both, so
    ``calls`` tells an HTTP call of the upload from one of the processor.
    """

    def __init__(self, root: str | Path, name: str = "storage") -> None:
        self.root = Path(root)
        self.name = f"{name}-{uuid.uuid4().hex[:6]}"
        self._store = ObjectStore(self.root)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._services: dict[str, Service] = {}
        self.calls: list[StorageCall] = []

    async def url(self, caller: str) -> str:
        """The base URL for ``caller`` (started on first use; the same URL after that)."""
        if caller not in self._services:
            app = storage_app(self.root)
            app[STORE] = self._store  # one folder, one per-key lock table, whichever port a request used
            app[LOCKS] = self._locks
            app.middlewares.insert(0, self._recorder(caller))
            self._services[caller] = await start_service(f"{self.name}-{caller}", app)
        return self._services[caller].url

    def _recorder(self, caller: str) -> Any:
        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            started, status = time.perf_counter(), 500
            try:
                response: web.StreamResponse = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                key = request.match_info.get("key", request.path)
                size = request.content_length or 0
                self.calls.append(StorageCall(caller, request.method, key, status, size, started, time.perf_counter()))

        return record

    def requests(
        self, caller: str | None = None, method: str | None = None, *, key: str | None = None, prefix: str | None = None
    ) -> list[StorageCall]:
        """The recorded calls, filtered (None matches anything), oldest first."""
        return [
            c
            for c in self.calls
            if (caller is None or c.caller == caller)
            and (method is None or c.method == method)
            and (key is None or c.key == key)
            and (prefix is None or c.key.startswith(prefix))
        ]

    def stored(self, caller: str | None = None) -> set[str]:
        """Keys of the objects PUT successfully (by ``caller``, if given) so far."""
        return {c.key for c in self.requests(caller, "PUT") if c.status in (200, 201)}

    def head(self, key: str) -> StoredObject | None:
        """An object's metadata, straight from the folder (no request, nothing recorded)."""
        return self._store.head(key)

    def read(self, key: str) -> bytes | None:
        """An object's bytes, straight from the folder (no request, nothing recorded)."""
        found = self._store.get(key)
        return None if found is None else found[1]

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        """Store an object straight into the folder (not recorded); returns its ETag."""
        meta, _ = await asyncio.to_thread(self._store.put, key, data, content_type)
        return meta.etag

    async def stop(self) -> None:
        """Stop every port (the folder stays; its owner removes it)."""
        for service in self._services.values():
            await service.stop()
        self._services.clear()


# --- the Notification service's output ------------------------------------------------------------


def notification_text(state: str) -> str:
    """What a user reads for a job that ended in ``state``."""
    return "Sorry, your image could not be processed." if state == "failed" else "Your image is ready."


class Inbox:
    """The users' in-app inbox: one JSON line per notification in ``workdir/inbox.jsonl``.

    It lives in a file, so what a notifier wrote before it was killed is still there
    when it comes back, and the checks read the same file.
    """

    FILE = "inbox.jsonl"

    def __init__(self, workdir: str | Path) -> None:
        self.path = Path(workdir) / self.FILE

    def notify(self, user: str, job_id: str, state: str, text: str = "") -> Notification:
        """Tell ``user`` that ``job_id`` ended in ``state`` ("done" or "failed"); written and flushed at once."""
        note = Notification(str(user), str(job_id), str(state), text or notification_text(state), iso(now()))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(note.__dict__) + "\n")
        return note

    def entries(self) -> list[Notification]:
        """Every notification, oldest first (a line cut off by a crash is skipped)."""
        if not self.path.exists():
            return []
        found = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                found.append(Notification(**json.loads(line)))
            except (ValueError, TypeError):
                continue
        return found

    def per_job(self) -> Counter[str]:
        """Notifications per job id (2 means the user heard twice)."""
        return Counter(note.job_id for note in self.entries())

    def __len__(self) -> int:
        return len(self.entries())


# --- every message of a run -------------------------------------------------------------------------


@dataclass
class Wire:
    """Every message on a run's topics since it started (a :class:`~helpers.capstone.pipeline.Recorder` that runs)."""

    recorder: Recorder
    _stack: contextlib.AsyncExitStack

    @property
    def records(self) -> list[Record]:
        """(time, topic, payload) of each message, oldest first."""
        return self.recorder.records

    def events(self, kind: str | None = None, job_id: str | None = None) -> list[tuple[float, Event]]:
        """(arrival time, event) of the events of type ``kind`` (any if None), for ``job_id`` if given."""
        return self.recorder.events(kind, job_id)

    async def stop(self) -> None:
        await self._stack.aclose()


async def start_recorder(broker: Any, topics: Topics, *, name: str | None = None) -> Wire:
    """Subscribe to every topic of the run (``topics.everything``); returns once subscribed."""
    stack = contextlib.AsyncExitStack()
    try:
        recorder = Recorder(broker, name or f"recorder-{uuid.uuid4().hex[:8]}", topics.everything)
        task = await lifecycle.start(recorder.run)
        stack.push_async_callback(lifecycle.kill, task)
    except BaseException:  # not swallowed: close what did open, then re-raise
        await stack.aclose()
        raise
    return Wire(recorder, stack)


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


async def _job_events(broker: Any, topics: Topics, client_id: str, store: UploadJobs, *, ready: asyncio.Event) -> None:
    """The Upload service's job-event consumer: the processor's ``job.*`` events, applied to the store."""

    async def apply(event: Event) -> None:
        store.apply(event)

    async with manual_ack(broker.client(client_id, clean_session=False)) as client:
        await Consumer(client, topics.jobs, apply, dead_letter_topic=f"{topics.prefix}/dead-letter/upload").run(ready)


async def serve_upload(
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
            stack.push_async_callback(_end_session, broker, consumer_id)
        consumer = await lifecycle.start(reconnecting, _job_events, broker, topics, consumer_id, store)
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


async def _end_session(broker: Any, client_id: str) -> None:
    with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
        await end_session(broker, client_id)


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

    def crashed(self) -> Exception | None:
        """The error it died of, if it died by itself (a healthy loop runs until it is killed)."""
        return self.life.crashed()


# --- the whole system ---------------------------------------------------------------------------------


@dataclass
class System:
    """The learner's upload, processor and notifier, composed: Storage, a broker, a recorder on every topic."""

    broker: Any
    topics: Topics
    workdir: Path
    storage: RecordingStorage
    upload: UploadServer
    processor: Worker
    notifier: Worker
    inbox: Inbox
    recorder: Recorder
    session: aiohttp.ClientSession
    _stack: contextlib.AsyncExitStack

    @property
    def url(self) -> str:
        """The upload service's base URL (``POST /images``)."""
        return self.upload.url

    async def post(self, data: bytes, user: str, *, idempotency_key: str | None = None, timeout: float = 10.0) -> UploadAnswer:
        """Upload like a client would: ``POST /images?user=USER`` over HTTP."""
        return await post_image(self.session, self.url, data, user, idempotency_key=idempotency_key, timeout=timeout)

    def events(self, kind: str | None = None, job_id: str | None = None) -> list[tuple[float, Event]]:
        """(arrival time, event) of the events seen on the run's topics."""
        return self.recorder.events(kind, job_id)

    def finished(self, job_ids: Iterable[str]) -> bool:
        """True when each job's ``job.done`` or ``job.failed`` was seen on the wire."""
        ended = {e.data.get("job_id") for _, e in self.events() if e.type in (JOB_DONE, JOB_FAILED) and isinstance(e.data, dict)}
        return set(job_ids) <= ended

    def crashed(self) -> dict[str, Exception]:
        """Loops that died by themselves (label -> error)."""
        return {w.label: error for w in (self.processor, self.notifier) if (error := w.crashed()) is not None}

    async def wait_finished(self, job_ids: Iterable[str], timeout: float = 30.0) -> bool:
        """Wait until every job finished on the wire; False after ``timeout``. A crashed loop raises its error."""
        ids = list(job_ids)
        done = await until(lambda: self.finished(ids) or bool(self.crashed()), timeout)
        self.raise_crashed()
        return done and self.finished(ids)

    async def wait_notified(self, job_ids: Iterable[str], timeout: float = 30.0) -> bool:
        """Wait until every job has a notification in the inbox; False after ``timeout``."""
        ids = set(job_ids)
        done = await until(lambda: ids <= set(self.inbox.per_job()) or bool(self.crashed()), timeout)
        self.raise_crashed()
        return done and ids <= set(self.inbox.per_job())

    def raise_crashed(self) -> None:
        """Raise the error a loop died of, naming the loop (never swallowed)."""
        lifecycle.raise_crashed(self.crashed(), "your service")

    async def settle(self, idle: float = QUIET_S, timeout: float = 5.0) -> None:
        """Wait until nothing more moves: no message, no Storage call, no notification for ``idle`` s."""
        await until_quiet(lambda: (len(self.recorder.records), len(self.storage.calls), len(self.inbox)), idle, timeout)

    async def stop(self) -> None:
        """Stop everything, forget the loops' persistent sessions, close the clients."""
        await self._stack.aclose()


async def _forget_session(broker: Any, name: str) -> None:
    """A clean connect drops the persistent session ``name`` left on the broker."""
    async with broker.client(name, clean_session=True):
        pass


async def start_system(
    broker: Any,
    workdir: str | Path,
    *,
    upload: UploadFactory,
    processor: ServiceLoop,
    notifier: ServiceLoop,
    work: float = 1.0,
    prefix: str = "lab07",
    name: str = "lab07",
) -> System:
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
        stack.push_async_callback(_forget_session, broker, notify_name)  # last: after the loop is gone
        stack.push_async_callback(notifying.kill)
        await notifying.start()
        processing = Worker("processor", processor, (broker, topics, processor_url, process_name), {"work": work}, process_name)
        stack.push_async_callback(_forget_session, broker, process_name)
        stack.push_async_callback(processing.kill)
        await processing.start()
    except BaseException:  # not swallowed: stop what did start, then re-raise
        await stack.aclose()
        raise
    inbox = Inbox(folder / "notifier")
    return System(broker, topics, folder, storage, server, processing, notifying, inbox, wire.recorder, session, stack)


# --- the fault drills -------------------------------------------------------------------------------


def _job_id(answer: UploadAnswer) -> str:
    if answer.status != 202 or answer.job_id is None:
        raise RuntimeError(f"the upload was not accepted: HTTP {answer.status} {answer.body}")
    return answer.job_id


@dataclass(frozen=True)
class BurstDrill:
    """A burst of uploads at once: how long the users waited for the 202, and for the whole burst's work."""

    uploads: int
    slowest_upload_s: float
    median_upload_s: float
    all_done_s: float
    """From the first POST to the last ``job.done`` (or ``job.failed``) on the wire."""
    notified: int
    """Jobs whose user got a notification."""
    duplicates: int
    """Notifications beyond one per job."""

    def as_row(self) -> dict[str, object]:
        return {
            "uploads": self.uploads,
            "slowest 202 (s)": round(self.slowest_upload_s, 3),
            "median 202 (s)": round(self.median_upload_s, 3),
            "all processed after (s)": round(self.all_done_s, 2),
            "users notified": self.notified,
            "duplicates": self.duplicates,
        }


class AnswersTooSlow(TimeoutError):
    """The burst's uploads were not all answered in time: the upload waits for something slow."""


async def upload_burst(
    system: System, photos: Sequence[bytes], users: Sequence[str], *, timeout: float = 60.0, answer_within: float | None = None
) -> BurstDrill:
    """Upload every photo at once (one user each), wait until all are processed and notified.

    ``answer_within``: raise :class:`AnswersTooSlow` when the uploads' answers take longer
    than that, before waiting for any processing (a check names the cause, whatever the load).
    """
    began = time.perf_counter()
    posts = asyncio.gather(*(system.post(photo, user) for photo, user in zip(photos, users, strict=True)))
    try:
        answers = await asyncio.wait_for(posts, answer_within)
    except TimeoutError:
        raise AnswersTooSlow(f"the {len(photos)} uploads were not all answered within {answer_within:g} s") from None
    ids = [_job_id(answer) for answer in answers]
    if not await system.wait_finished(ids, timeout):
        raise TimeoutError(f"the burst's {len(ids)} jobs were not all processed within {timeout:g} s")
    ended = max(t for t, e in system.events() if e.type in (JOB_DONE, JOB_FAILED) and (e.data or {}).get("job_id") in ids)
    await system.wait_notified(ids, timeout)
    await system.settle()
    counts = system.inbox.per_job()
    seconds = [answer.seconds for answer in answers]
    return BurstDrill(
        len(ids),
        max(seconds),
        statistics.median(seconds),
        ended - began,
        sum(counts[j] > 0 for j in ids),
        sum(max(0, counts[j] - 1) for j in ids),
    )


@dataclass(frozen=True)
class KillDrill:
    """The processor killed while it works on an image, then restarted with its session."""

    killed_mid_image: bool
    """True when the kill came after the processor fetched the original and before ``job.done``."""
    fetched: int
    """Times the processor fetched the original from Storage (2: it processed the image again)."""
    done_events: int
    """``job.done`` events for the job on the wire."""
    notifications: int

    def as_row(self) -> dict[str, object]:
        return {
            "killed mid-image": self.killed_mid_image,
            "times processed": self.fetched,
            "job.done events": self.done_events,
            "notifications": self.notifications,
        }


def original_of(system: System, job_id: str) -> str | None:
    """The storage key the job's ``image.uploaded`` event refers to (None until it was seen)."""
    for _, event in system.events(IMAGE_UPLOADED, job_id):
        original = (event.data or {}).get("original")
        if isinstance(original, dict) and isinstance(original.get("key"), str):
            return str(original["key"])
    return None


async def worker_killed(system: System, photo: bytes, user: str, *, timeout: float = 30.0) -> KillDrill:
    """Upload one image, kill the processor once it has fetched the original, restart it, count."""
    job_id = _job_id(await system.post(photo, user))
    if not await until(lambda: original_of(system, job_id) is not None, timeout):
        raise TimeoutError(f"no image.uploaded event with an original.key for job {job_id} within {timeout:g} s")
    key = str(original_of(system, job_id))

    def fetched() -> int:
        return len(system.storage.requests("processor", "GET", key=key))

    if not await until(lambda: fetched() >= 1 or bool(system.crashed()), timeout):
        raise TimeoutError(f"the processor did not fetch {key!r} from Storage within {timeout:g} s")
    system.raise_crashed()
    mid_image = not system.finished([job_id])
    await system.processor.kill()
    await system.processor.start()
    if not await system.wait_finished([job_id], timeout):
        raise TimeoutError(f"job {job_id} was not processed within {timeout:g} s of the restart")
    await system.wait_notified([job_id], timeout)
    await system.settle()
    return KillDrill(mid_image, fetched(), len(system.events(JOB_DONE, job_id)), system.inbox.per_job()[job_id])


@dataclass(frozen=True)
class OutageDrill:
    """Jobs finished while the Notification service was down; what reached the users after its restart."""

    jobs: int
    done_while_down: int
    notified: int
    duplicates: int

    @property
    def lost(self) -> int:
        return self.jobs - self.notified

    def as_row(self) -> dict[str, object]:
        return {
            "jobs": self.jobs,
            "done while notifier down": self.done_while_down,
            "notified after restart": self.notified,
            "lost": self.lost,
            "duplicates": self.duplicates,
        }


async def notifier_outage(system: System, photos: Sequence[bytes], users: Sequence[str], *, timeout: float = 30.0) -> OutageDrill:
    """Kill the notifier, upload, let every job finish, restart the notifier, count the notifications."""
    await system.notifier.kill()
    ids = [_job_id(await system.post(photo, user)) for photo, user in zip(photos, users, strict=True)]
    if not await system.wait_finished(ids, timeout):
        raise TimeoutError(f"jobs not processed within {timeout:g} s while the notifier was down")
    done_while_down = sum(system.finished([j]) for j in ids)
    await system.notifier.start()
    await system.wait_notified(ids, min(timeout, 5.0))  # whatever is not there by then was lost
    await system.settle()
    counts = system.inbox.per_job()
    return OutageDrill(len(ids), done_while_down, sum(counts[j] > 0 for j in ids), sum(max(0, counts[j] - 1) for j in ids))
