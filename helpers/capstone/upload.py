"""The Upload service: accept an image, answer ``202 Accepted`` at once, let the processor do the rest.

``POST /images?user=NAME`` (body: the image bytes, or a ``multipart/form-data`` form with
one file part, as a browser sends it) does only what must happen before the user hears
back, in this order:

1. **Read and validate** the bytes (:func:`helpers.capstone.intake.read_upload`, then
   :func:`helpers.capstone.images.inspect_upload`, two at a time in threads): an empty,
   oversized, stalled (408), undecodable (400), non-image, decompression-bomb, extremely
   shaped or truncated upload is refused here with a problem+json answer and its own
   status, and leaves no trace (no job, no event).
2. **Store** the original in Storage (over HTTP) under a key of its own.
3. **Record** the job and its ``image.uploaded`` event in the job store, in one SQLite
   transaction (the kit's *outbox*: :mod:`helpers.core.jobkit.store`). The event carries a
   *claim check*: the storage key and etag, never the bytes (the broker's payload limit
   is 1 MiB, and queues are not a blob store).
4. **Publish** what the outbox holds at QoS 1, after the commit. "Store, then publish" is
   a dual write: a crash or a broker outage between the two would leave a job nobody
   processes. With the outbox the job and its event are stored together, and an event not
   yet published goes out later (every :data:`~helpers.core.jobkit.store.HOUSEKEEPING_S`, and after a restart); it
   may then go out twice, which the processor absorbs (its done marker).
5. **Answer** ``202 Accepted`` with ``Location: /jobs/{id}`` and ``Retry-After: 1``.

The status resource follows lesson 06's convention (:mod:`helpers.core.jobkit.http`):
``GET /jobs/{id}`` answers 200 with the job's state (and ``Retry-After`` while it is
unfinished), ``303 See Other`` to ``/jobs/{id}/result`` once it succeeded, 200
problem+json once it failed, 404 problem+json for an unknown id. The store is a SQLite
file in the service's work folder, kept up to date by the service's own MQTT consumer
from the processor's ``job.*`` events (eventually consistent; the body says so). That
consumer has a fixed client id and a persistent session, so events published while the
Upload service is down wait for it on the broker: a restart loses no job and no event.

An ``Idempotency-Key`` header makes a retried upload safe: keys are per user, and the
fingerprint of a request is the SHA-256 of its bytes. The same key with the same bytes
returns the same job and the same 202 body; with other bytes it is a ``422``; while the
first request with that key is still being answered, a ``409``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import aiomqtt
from aiohttp import web

from helpers.capstone import images
from helpers.capstone.intake import DECODE_QUEUE as DECODE_QUEUE  # re-exported: lesson 07 states it
from helpers.capstone.intake import LARGE_IMAGE_PIXELS as LARGE_IMAGE_PIXELS
from helpers.capstone.intake import MAX_FORM_PARTS as MAX_FORM_PARTS
from helpers.capstone.intake import Busy, DecodeSlots, busy_answer
from helpers.capstone.intake import read_image_body as read_image_body  # re-exported: lab 07's Upload reads the same way
from helpers.capstone.intake import read_upload as read_upload
from helpers.capstone.jobs import IMAGE_UPLOADED, STORE_FILE, Job, Topics, UploadJobs
from helpers.capstone.storage import StorageClient, StorageError
from helpers.core import lifecycle
from helpers.core.broker import Broker
from helpers.core.http import (
    DECODES_ITSELF,
    Service,
    start_service,
)
from helpers.core.jobkit import http as jobhttp
from helpers.core.jobkit.store import Admission, Admitted, KeyInUse, housekeeping, relay_outbox
from helpers.core.messaging import Consumer, Event, make_event, manual_ack
from helpers.core.problems import PROBLEM_BASE, expect_continue, problem, problem_for, problems_everywhere
from helpers.core.reconnect import Publisher, reconnecting
from helpers.core.timestamps import iso

USER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""User names: they end up in events, inboxes and e-mail addresses, so only plain characters, the first a letter or
a digit (``.``, ``..`` and ``-`` are no one's name)."""
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
"""Idempotency keys: printable ASCII without spaces, at most 255 characters (what clients send: UUIDs)."""
RETRY_AFTER_S = jobhttp.RETRY_AFTER_S
"""What the 202 (and an unfinished job's status) tells the client: ask again in about a second."""


def original_key(job_id: str) -> str:
    """Where the original of ``job_id`` is stored."""
    return f"originals/{job_id}"


@dataclass
class Counters:
    """What the Upload service did, for tests and tables."""

    published: int = 0
    """``image.uploaded`` events published from the outbox (a refused upload publishes none)."""


@dataclass(frozen=True)
class Options:
    """How the Upload service was started: what a restart starts it with again."""

    name: str
    max_bytes: int
    steps: tuple[str, ...]
    counters: Counters
    consumers: list[Consumer]
    """The job-event consumer of the current connection (a new one after each reconnection)."""

    def client_id(self, topics: Topics) -> str:
        """The job-event consumer's fixed client id: the same for every start on these topics."""
        return topics.client_id(f"{self.name}-jobs")


@dataclass
class _Running:
    """What one start of the Upload service opened: what :meth:`UploadService.restart` stops and starts again."""

    service: Service
    store: UploadJobs
    publisher: Publisher
    tasks: dict[str, asyncio.Task[None]]
    stack: contextlib.AsyncExitStack

    async def stop(self) -> Exception | None:
        """Stop answering, then the consumer and the housekeeping; returns what one of them had died of."""
        error: Exception | None = None
        try:
            await self.service.stop()
            for task in self.tasks.values():
                error = await lifecycle.kill(task) or error
        finally:
            await self.stack.aclose()
            self.store.close()
        return error


@dataclass
class UploadService:
    """The running Upload service: its HTTP side, its job store and the consumer that feeds it."""

    broker: Broker
    topics: Topics
    storage: StorageClient
    work_dir: Path
    options: Options
    _running: _Running
    temporary: bool = False
    """The work folder was made for this service: :meth:`stop` removes it and ends its broker session."""
    restarts: int = 0
    _down: bool = field(default=False, repr=False)

    @property
    def service(self) -> Service:
        return self._running.service

    @property
    def store(self) -> UploadJobs:
        return self._running.store

    @property
    def publisher(self) -> Publisher:
        return self._running.publisher

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:41234 (it keeps its port across a restart)."""
        return self.service.url

    @property
    def counters(self) -> Counters:
        return self.options.counters

    @property
    def published(self) -> int:
        """``image.uploaded`` events this service published (a refused upload publishes none)."""
        return self.counters.published

    @property
    def consumers(self) -> list[Consumer]:
        return self.options.consumers

    @property
    def consumer(self) -> Consumer:
        """The job-event consumer of the current connection."""
        return self.consumers[-1]

    @property
    def client_id(self) -> str:
        """The job-event consumer's fixed MQTT client id (its persistent session outlives a restart)."""
        return self.options.client_id(self.topics)

    def crashed(self) -> BaseException | None:
        """The error the job-event consumer, the housekeeping or the publisher died of (a lost connection is not one)."""
        for task in self._running.tasks.values():
            if (error := lifecycle.died_of(task)) is not None:
                return error
        return self.publisher.crashed()

    async def restart(self, down_s: float = 0.0, *, while_down: Callable[[], Awaitable[object]] | None = None) -> None:
        """Stop the service (HTTP, store, job-event consumer), stay down ``down_s`` seconds (and while
        ``while_down()`` runs), and start it again on the same work folder and port. The rest of the
        system keeps working meanwhile; the broker keeps the job events for the consumer's session."""
        port = self.service.port
        lifecycle.raise_crashed({"upload": e} if (e := await self._running.stop()) else {}, "the Upload service")
        self._down = True
        await asyncio.sleep(down_s)
        if while_down is not None:
            await while_down()
        self._running = await _start_running(self.broker, self.topics, self.storage, self.work_dir, self.options, port)
        self._down = False
        self.restarts += 1

    async def stop(self) -> Exception | None:
        """Stop answering, then stop the job-event consumer; returns what the consumer had died of, if anything."""
        error = None if self._down else await self._running.stop()
        self._down = True
        await self.storage.close()
        if self.temporary:
            await self.broker.end_sessions(self.client_id, quietly=True)
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return error


def problem_unknown_job(job_id: str) -> web.Response:
    """The 404 for a job id the store does not know (never created, or from another run)."""
    return jobhttp.unknown_job(job_id)


def accepted(job: Job, *, replayed: bool = False) -> web.Response:
    """The 202 for ``job``: the body it was first answered with, a Location and a Retry-After.

    A replay also says ``Idempotent-Replayed: true``, a header some payment APIs (Stripe's) send; it is a
    convention of theirs, not a standard, shown here so a client can tell a replay from a new job.
    """
    response = jobhttp.accepted(job.accepted_body, job.path)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def accepted_body(job: Job) -> dict[str, object]:
    """The 202 body, shaped like lesson 06's: the job, its state, when, and where its status lives (a relative link)."""
    return {"job_id": job.job_id, "state": str(job.state), "created": iso(job.created), "links": {"status": job.path}}


def answer_for(admitted: Admitted, key: str) -> web.Response | None:
    """The answer to an upload whose Idempotency-Key was seen before (replay, 422, 409), or None if it is new."""
    job = Job.of(admitted.job) if admitted.job is not None else None
    if admitted.outcome == Admission.MISMATCH:
        return jobhttp.key_reused(key)
    if admitted.outcome == Admission.IN_FLIGHT:
        return jobhttp.key_in_flight(key)
    if admitted.outcome == Admission.REPLAY and job is not None:
        return accepted(job, replayed=True)
    return None


def _invalid_user() -> web.Response:
    return problem(
        400,
        "Missing or invalid user",
        "name the user as ?user=NAME: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        f"{PROBLEM_BASE}invalid-user",
    )


def _invalid_key() -> web.Response:
    return problem(
        400,
        "Invalid Idempotency-Key",
        "an Idempotency-Key is 1-255 printable ASCII characters without spaces, e.g. a UUID",
        f"{PROBLEM_BASE}invalid-idempotency-key",
    )


def _not_stored(exc: BaseException) -> web.Response:
    response = problem(
        503,
        "Upload could not be stored",
        f"the image could not be stored ({type(exc).__name__}: {exc}); try again",
        f"{PROBLEM_BASE}not-stored",
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


@dataclass
class _Front:
    """What the routes work with: the store, the outbox relay, Storage, the topics and the limits."""

    store: UploadJobs
    relay: Callable[[], Awaitable[int]]
    topics: Topics
    storage: StorageClient
    max_bytes: int
    steps: tuple[str, ...]

    async def queue(self, job: Job, event: Event) -> None:
        """Store the job with its ``image.uploaded`` event, then publish it (:func:`queue_job`)."""
        await queue_job(self.store, self.relay, job, self.topics.uploaded, event)


async def queue_job(store: UploadJobs, relay: Callable[[], Awaitable[int]], job: Job, topic: str, event: Event) -> None:
    """Store the job and its event together (the outbox), then publish after the commit, briefly.

    A broker that is away costs nothing here: the event stays in the outbox and the
    housekeeping publishes it once the broker is back. The job is accepted either way.
    """
    store.create(job, [(topic, event.to_bytes())])
    try:
        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
            await asyncio.wait_for(relay(), RETRY_AFTER_S)
    finally:
        store.answered(job)


def build_app(front: _Front) -> web.Application:
    """The Upload service's routes: ``POST /images`` and the status routes (:func:`add_status_routes`)."""
    routes = web.RouteTableDef()
    decoding = DecodeSlots(images.IMAGE_WORK_SLOTS, DECODE_QUEUE)
    store = front.store

    @routes.post("/images", expect_handler=expect_continue)
    async def post_image(request: web.Request) -> web.Response:
        user = request.query.get("user", "")
        if not USER_PATTERN.fullmatch(user):
            return _invalid_user()
        key = request.headers.get("Idempotency-Key")
        if key is not None and not KEY_PATTERN.fullmatch(key):
            return _invalid_key()
        data = await read_image_body(request, front.max_bytes)
        if isinstance(data, web.Response):
            return data
        digest = hashlib.sha256(data).hexdigest()  # the request's fingerprint
        if key is not None and (repeat := answer_for(store.admit(user, key, digest), key)) is not None:
            return repeat  # a retry answers before any validation work: it was validated the first time
        job = Job(uuid.uuid4().hex, user, len(front.steps), digest, key)
        if key is None:
            return await accept_new(job, data)
        store.store.reserve(user, key, digest, job.job_id)  # no await since admit: the key is still free
        try:  # a retry meanwhile is told 409 (in flight) instead of decoding and storing the same image again
            return await accept_new(job, data)
        finally:
            store.store.release(user, key, job.job_id)  # only if no job was stored: a failed first try frees its key

    async def accept_new(job: Job, data: bytes) -> web.Response:
        try:  # decoding is CPU work: off the event loop, and a few at a time, so memory stays bounded under a burst
            info = await decoding.inspect(data, front.max_bytes)
        except images.ImageRejected as exc:
            return problem_for(exc)
        except Busy:
            return busy_answer()  # load shedding: a fast 503 beats an answer after seconds in a queue
        user, key, digest = job.user, job.idempotency_key, job.digest
        job.accepted_body = accepted_body(job)
        try:
            etag = await front.storage.put(original_key(job.job_id), data, info.content_type)  # sniffed, never the header
        except (StorageError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            return _not_stored(exc)  # nothing was recorded: a retry (same key or not) starts afresh
        claim = {"key": original_key(job.job_id), "etag": etag, "content_type": info.content_type}
        image = {"format": info.format, "width": info.width, "height": info.height}
        data_ = {"job_id": job.job_id, "user": user, "original": claim, "image": image, "steps": list(front.steps)}
        try:
            await front.queue(job, make_event(IMAGE_UPLOADED, data_, source="/upload"))
        except KeyInUse:  # the same key came twice at once, and the other request recorded its job first
            return answer_for(store.admit(user, key, digest), key or "") or jobhttp.key_in_flight(key or "")
        return accepted(job)

    # DECODES_ITSELF: read_body decodes gzip/deflate under the byte limit and answers br, zstd, ... 415 problem+json
    app = web.Application(middlewares=[jobhttp.no_store, problems_everywhere], handler_args=DECODES_ITSELF)
    app.add_routes(routes)
    add_status_routes(app, store, front.storage.url)
    return app


def add_status_routes(app: web.Application, store: UploadJobs, url_of: Callable[[str], str]) -> None:
    """``GET /jobs/{job_id}`` (the status resource, lesson 06's convention) and ``GET /jobs/{job_id}/result``.

    ``url_of`` turns a rendition's storage key into a URL that serves it. Add
    :func:`helpers.core.jobkit.http.no_store` to the app's middlewares: a status must never come from a cache.
    """

    async def get_job(request: web.Request) -> web.Response:
        job = store.get(request.match_info["job_id"])
        if job is None:
            return jobhttp.unknown_job(request.match_info["job_id"])
        return jobhttp.status(job.to_json(), job.state, job.result_path)

    async def get_result(request: web.Request) -> web.Response:
        job = store.get(request.match_info["job_id"])
        if job is None:
            return jobhttp.unknown_job(request.match_info["job_id"])
        if job.state != "succeeded":
            return jobhttp.no_result(job.job_id, job.state, job.path)
        return web.json_response(job.result_json(url_of))

    app.router.add_get("/jobs/{job_id}", get_job)
    app.router.add_get("/jobs/{job_id}/result", get_result)


def outbox_relay(store: UploadJobs, publisher: Publisher, counters: Counters) -> Callable[[], Awaitable[int]]:
    """What publishes the store's outbox through ``publisher``: one relay at a time (the housekeeping and a
    request's :func:`queue_job` would otherwise send the same message twice), counting what it sent."""
    relaying = asyncio.Lock()

    async def relay() -> int:
        async with relaying:
            sent = await relay_outbox(store.store, publisher)
        counters.published += sent
        return sent

    return relay


async def consume_job_events(  # noqa: PLR0913  one argument per part the consumer ties together (broker, run, session, store)
    broker: Broker,
    topics: Topics,
    client_id: str,
    store: UploadJobs,
    consumers: list[Consumer] | None = None,
    *,
    ready: asyncio.Event,
) -> None:
    """The Upload service's job-event consumer: the processor's ``job.*`` events, applied to the job store.

    A fixed ``client_id`` with a persistent session, so events wait on the broker while it is
    down. ``consumers`` (if given) holds the consumer of the current connection.
    """

    async def apply(event: Event) -> None:
        store.apply(event)

    async with manual_ack(broker.client(client_id, clean_session=False)) as client:
        consumer = Consumer(client, topics.jobs, apply, dead_letter_topic=f"{topics.prefix}/dead-letter/upload")
        if consumers is not None:
            consumers[:] = [consumer]
        await consumer.run(ready)


async def _start_running(  # noqa: PLR0913  a restart rewires each of these parts, on the same port
    broker: Broker, topics: Topics, storage: StorageClient, work_dir: Path, options: Options, port: int = 0
) -> _Running:
    """Open the store in the work folder, connect the publisher and the job-event consumer, serve HTTP."""
    store = UploadJobs(work_dir / STORE_FILE)
    stack = contextlib.AsyncExitStack()
    tasks: dict[str, asyncio.Task[None]] = {}
    try:
        publisher = await Publisher(broker, topics.client_id(f"{options.name}-pub")).start()  # reconnects by itself
        stack.push_async_callback(publisher.stop)
        relay = outbox_relay(store, publisher, options.counters)
        consume = (consume_job_events, broker, topics, options.client_id(topics), store, options.consumers)
        tasks["job-event consumer"] = await lifecycle.start(reconnecting, *consume)
        tasks["housekeeping"] = asyncio.create_task(housekeeping(store.expire, relay))
        front = _Front(store, relay, topics, storage, options.max_bytes, options.steps)
        service = await start_service(f"{options.name}-{topics.prefix.rsplit('/', 1)[-1]}", build_app(front), port=port)
    except BaseException:  # not swallowed: close what did open, then re-raise
        for task in tasks.values():
            await lifecycle.kill(task)
        await stack.aclose()
        store.close()
        raise
    return _Running(service, store, publisher, tasks, stack)


async def start_upload(  # noqa: PLR0913  lesson 07, appendix 08 and the command line pass these by keyword
    broker: Broker,
    topics: Topics,
    storage_url: str,
    *,
    name: str = "upload",
    max_bytes: int = images.MAX_UPLOAD_BYTES,
    steps: Sequence[str] = images.STEPS,
    work_dir: str | Path | None = None,
) -> UploadService:
    """Start the Upload service (HTTP on a free 127.0.0.1 port) and its job-event consumer.

    ``work_dir`` holds the job store (``jobs.sqlite3``); when None, a temporary folder that
    :meth:`UploadService.stop` removes, with the consumer's broker session.
    """
    folder = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix=f"{name}-"))
    storage = StorageClient(storage_url)
    options = Options(name, max_bytes, tuple(steps), Counters(), [])
    try:
        running = await _start_running(broker, topics, storage, folder, options)
    except BaseException:  # not swallowed: close what did open, then re-raise
        await storage.close()
        if work_dir is None:
            await broker.end_sessions(options.client_id(topics), quietly=True)
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return UploadService(broker, topics, storage, folder, options, running, temporary=work_dir is None)
