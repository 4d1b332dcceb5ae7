"""The Upload service: accept an image, answer ``202 Accepted`` at once, let the processor do the rest.

``POST /images?user=NAME`` (body: the image bytes, or a ``multipart/form-data`` form with
one file part, as a browser sends it) does only what must happen before the user hears
back, in this order:

1. **Read and validate** the bytes (:func:`read_upload`, then
   :func:`helpers.capstone.images.inspect_upload`, two at a time in threads): an empty,
   oversized, stalled (408), undecodable (400), non-image, decompression-bomb, extremely
   shaped or truncated upload is refused here with a problem+json answer and its own
   status, and leaves no trace (no job, no event).
2. **Store** the original in Storage (over HTTP) under a key of its own.
3. **Publish** ``image.uploaded`` at QoS 1 carrying a *claim check*: the storage key and
   etag, never the bytes (the broker's payload limit is 1 MiB, and queues are not a
   blob store).
4. **Answer** ``202 Accepted`` with ``Location: /jobs/{id}`` and ``Retry-After: 1``.

``GET /jobs/{id}`` reads the job store, which the service's own MQTT consumer keeps up
to date from the processor's ``job.*`` events (eventually consistent; the body says so).

An ``Idempotency-Key`` header makes a retried upload safe: the same key (per user) with
the same bytes returns the same job and the same 202 body; with other bytes it is a
``422``; while the first request with that key is still being stored, a ``409``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import aiomqtt
from aiohttp import BodyPartReader, hdrs, web

from helpers.capstone import images
from helpers.capstone.jobs import IMAGE_UPLOADED, IdempotencyConflict, Job, JobStore, Topics
from helpers.capstone.storage import StorageClient, StorageError
from helpers.core import lifecycle
from helpers.core.broker import Broker
from helpers.core.http import (
    BodyClock,
    BodyRefused,
    BodyTooLarge,
    Service,
    body_problem,
    read_body,
    read_chunks,
    start_service,
)
from helpers.core.messaging import Consumer, Event, make_event, manual_ack
from helpers.core.problems import PROBLEM_BASE, problem, problem_for, problems_everywhere
from helpers.core.reconnect import Publisher, reconnecting

USER_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""User names: they end up in events, inboxes and e-mail addresses, so only plain characters."""
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
"""Idempotency keys: printable ASCII without spaces, at most 255 characters (what clients send: UUIDs)."""
RETRY_AFTER_S = 1
"""What the 202 (and an unfinished job's status) tells the client: ask again in about a second."""
FORM_OVERHEAD = 64 * 1024
"""Room for a form's boundaries, part headers and small text fields on top of the image's byte limit."""


def original_key(job_id: str) -> str:
    """Where the original of ``job_id`` is stored."""
    return f"originals/{job_id}"


@dataclass
class UploadService:
    """The running Upload service: its HTTP side, its job store and the consumer that feeds it."""

    service: Service
    store: JobStore
    topics: Topics
    storage: StorageClient
    consumers: list[Consumer]
    """The job-event consumer of the current connection (a new one after each reconnection)."""
    publisher: Publisher
    task: asyncio.Task[None]
    counters: Counters
    _stack: contextlib.AsyncExitStack

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:41234"""
        return self.service.url

    @property
    def published(self) -> int:
        """``image.uploaded`` events this service published (a refused upload publishes none)."""
        return self.counters.published

    @property
    def consumer(self) -> Consumer:
        """The job-event consumer of the current connection."""
        return self.consumers[-1]

    def crashed(self) -> BaseException | None:
        """The error the job-event consumer or the publisher died of, if one died (a lost connection is not: it reconnects)."""
        task = self.task
        return task.exception() if task.done() and not task.cancelled() else self.publisher.crashed()

    async def stop(self) -> Exception | None:
        """Stop answering, then stop the job-event consumer; returns what the consumer had died of, if anything."""
        try:
            await self.service.stop()
            error = await lifecycle.kill(self.task)
        finally:
            await self._stack.aclose()
        return error


@dataclass
class Counters:
    """What the Upload service did, for tests and tables."""

    published: int = 0
    """``image.uploaded`` events published."""


def problem_unknown_job(job_id: str) -> web.Response:
    """The 404 for a job id the store does not know (never created, or from another run)."""
    return problem(
        404,
        "Unknown job",
        f"there is no job {job_id!r}; a job id comes from the Location header of POST /images",
        f"{PROBLEM_BASE}unknown-job",
    )


async def read_upload(request: web.Request, limit: int) -> bytes:
    """The uploaded bytes: the raw body, or the one file part of a ``multipart/form-data`` body (a browser form).

    Either way nothing is buffered past ``limit`` bytes and a stalled client is not waited
    for: :class:`helpers.core.http.BodyRefused` (413, 408 or 400) says what went wrong.
    """
    clock = BodyClock()
    if request.content_type == "multipart/form-data":
        return await _one_file_part(request, limit, clock)
    if request.content_type.startswith("multipart/"):
        raise _not_one_file(f"a {request.content_type} body is not a form")
    if request.content_type == "application/x-www-form-urlencoded":
        raise _not_one_file("a url-encoded form carries no file")
    return await read_body(request, limit, clock)


async def _one_file_part(request: web.Request, limit: int, clock: BodyClock) -> bytes:
    """The bytes of the form's only file part (a part with a file name, or any non-text part); text fields are skipped."""
    if request.content_length is not None and request.content_length > limit + FORM_OVERHEAD:
        raise BodyTooLarge(limit)
    files: list[bytes] = []
    seen = 0
    try:
        reader = await request.multipart()
        while (part := await clock.wait(reader.next())) is not None:
            if not isinstance(part, BodyPartReader):
                raise _not_one_file("it has a nested multipart part")
            data = await read_chunks(part.read_chunk, limit - seen, clock)
            seen += len(data)
            if part.filename is not None or not part.headers.get(hdrs.CONTENT_TYPE, "text/plain").startswith("text/"):
                files.append(data)
    except (ValueError, RuntimeError, AssertionError) as exc:  # what aiohttp's multipart reader raises for a broken form
        raise _not_one_file(f"the form could not be read ({exc})") from None
    if len(files) != 1:
        raise _not_one_file(f"it has {len(files)} file parts")
    return files[0]


def _not_one_file(reason: str) -> BodyRefused:
    """The 400 for a body that is neither raw image bytes nor a form with exactly one file; says what to send."""
    return BodyRefused(
        400,
        "Send one image",
        f"The upload was refused: {reason}. Send the image's bytes as the body (any Content-Type), or a "
        "multipart/form-data form with exactly one file part, e.g. curl -F image=@photo.jpg.",
        "one-image-per-upload",
    )


async def read_image_body(request: web.Request, max_bytes: int) -> bytes | web.Response:
    """The uploaded bytes, or the problem+json answer that refuses them (413, 408, 400)."""
    try:
        return await read_upload(request, max_bytes)
    except BodyTooLarge:
        return problem(
            413,
            "Upload too large",
            f"the upload is larger than {max_bytes} bytes; send a smaller image",
            f"{PROBLEM_BASE}too-large",
        )
    except BodyRefused as exc:
        return body_problem(exc)


def accepted(job: Job) -> web.Response:
    """The 202 for ``job``: the body it was first answered with, a Location and a Retry-After."""
    return web.json_response(
        job.accepted_body,
        status=202,
        headers={"Location": f"/jobs/{job.job_id}", "Retry-After": str(RETRY_AFTER_S)},
    )


def build_app(
    publisher: Publisher,
    topics: Topics,
    storage: StorageClient,
    store: JobStore,
    counters: Counters,
    *,
    max_bytes: int,
    steps: Sequence[str],
) -> web.Application:
    """The Upload service's routes: ``POST /images`` and ``GET /jobs/{job_id}``."""
    routes = web.RouteTableDef()
    decoding = asyncio.Semaphore(images.IMAGE_WORK_SLOTS)

    @routes.post("/images")
    async def post_image(request: web.Request) -> web.Response:
        user = request.query.get("user", "")
        if not USER_PATTERN.fullmatch(user):
            return problem(
                400,
                "Missing or invalid user",
                "name the user as ?user=NAME: 1-64 letters, digits, '.', '_' or '-'",
                f"{PROBLEM_BASE}invalid-user",
            )
        key = request.headers.get("Idempotency-Key")
        if key is not None and not KEY_PATTERN.fullmatch(key):
            return problem(
                400,
                "Invalid Idempotency-Key",
                "an Idempotency-Key is 1-255 printable ASCII characters without spaces, e.g. a UUID",
                f"{PROBLEM_BASE}invalid-idempotency-key",
            )
        data = await read_image_body(request, max_bytes)
        if isinstance(data, web.Response):
            return data
        digest = hashlib.sha256(data).hexdigest()
        if key is not None and (repeat := _repeat(store, user, key, digest)) is not None:
            return repeat  # a retry answers before any validation work: it was validated the first time
        try:  # decoding is CPU work: off the event loop, and a few at a time, so memory stays bounded under a burst
            async with decoding:
                info = await asyncio.to_thread(images.inspect_upload, data, max_bytes=max_bytes)
        except images.ImageRejected as exc:
            return problem_for(exc)
        try:
            job, created = store.create(user, digest, len(steps), idempotency_key=key)
        except IdempotencyConflict as exc:
            return _conflict(exc.job)
        if not created:  # the same key arrived twice at once; the other request creates the job
            return _repeat(store, user, key or "", digest) or accepted(job)
        job.accepted_body = {
            "job_id": job.job_id,
            "state": job.state,
            "status_url": str(request.url.with_path(f"/jobs/{job.job_id}").with_query(None)),
        }
        content_type = info.content_type  # sniffed from the bytes, never the client's header
        try:
            etag = await storage.put(original_key(job.job_id), data, content_type)
            event = make_event(
                IMAGE_UPLOADED,
                {
                    "job_id": job.job_id,
                    "user": user,
                    "original": {"key": original_key(job.job_id), "etag": etag, "content_type": content_type},
                    "image": {"format": info.format, "width": info.width, "height": info.height},
                    "steps": list(steps),
                },
                source="/upload",
            )
            await publisher.publish(topics.uploaded, event, qos=1)
        except (StorageError, aiohttp.ClientError, aiomqtt.MqttError, OSError, TimeoutError) as exc:
            store.discard(job.job_id)  # nothing was queued: a retry (same key or not) starts afresh
            response = problem(
                503,
                "Upload could not be queued",
                f"the image could not be stored or queued ({type(exc).__name__}: {exc}); try again",
                f"{PROBLEM_BASE}not-queued",
            )
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            return response
        job.queued = True
        counters.published += 1
        return accepted(job)

    @routes.get("/jobs/{job_id}")
    async def get_job(request: web.Request) -> web.Response:
        job = store.get(request.match_info["job_id"])
        if job is None:
            return problem_unknown_job(request.match_info["job_id"])
        headers = {"Cache-Control": "no-store"}
        if not job.final:
            headers["Retry-After"] = str(RETRY_AFTER_S)
        return web.json_response(job.to_json(storage.url), headers=headers)

    app = web.Application(middlewares=[problems_everywhere])
    app.add_routes(routes)
    return app


def _repeat(store: JobStore, user: str, key: str, digest: str) -> web.Response | None:
    """The answer to a request whose Idempotency-Key was seen before, or None if it is new."""
    job = store.by_key(user, key)
    if job is None:
        return None
    if job.digest != digest:
        return _conflict(job)
    if not job.queued:
        response = problem(
            409,
            "Same request in progress",
            f"the first request with Idempotency-Key {key!r} is still being stored; ask again in a moment",
            f"{PROBLEM_BASE}idempotency-in-progress",
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response
    response = accepted(job)
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _conflict(job: Job) -> web.Response:
    return problem(
        422,
        "Idempotency-Key reused",
        f"Idempotency-Key {job.idempotency_key!r} was already used for other bytes (job {job.job_id}); "
        "use a new key for a new upload",
        f"{PROBLEM_BASE}idempotency-key-reused",
    )


async def start_upload(
    broker: Broker,
    topics: Topics,
    storage_url: str,
    *,
    name: str = "upload",
    max_bytes: int = images.MAX_UPLOAD_BYTES,
    steps: Sequence[str] = images.STEPS,
) -> UploadService:
    """Start the Upload service (HTTP on a free 127.0.0.1 port) and its job-event consumer."""
    run_id = uuid.uuid4().hex[:6]
    store = JobStore()
    counters = Counters()
    stack = contextlib.AsyncExitStack()
    try:
        storage = StorageClient(storage_url)
        stack.push_async_callback(storage.close)
        publisher = await Publisher(broker, f"{name}-pub-{run_id}").start()  # connects again after a lost connection
        stack.push_async_callback(publisher.stop)
        consumers: list[Consumer] = []

        async def apply(event: Event) -> None:
            store.apply(event)

        async def listen(ready: asyncio.Event) -> None:
            async with manual_ack(broker.client(f"{name}-jobs-{run_id}")) as listener:
                consumer = Consumer(listener, topics.jobs, apply, dead_letter_topic=f"{topics.prefix}/dead-letter/upload")
                consumers[:] = [consumer]
                await consumer.run(ready)

        task = await lifecycle.start(reconnecting, listen)
        stack.push_async_callback(_stopped, task)
        app = build_app(publisher, topics, storage, store, counters, max_bytes=max_bytes, steps=steps)
        service = await start_service(f"{name}-{run_id}", app)
    except BaseException:  # not swallowed: close what did open, then re-raise
        await stack.aclose()
        raise
    return UploadService(service, store, topics, storage, consumers, publisher, task, counters, stack)


async def _stopped(task: asyncio.Task[None]) -> None:
    """Cancel the job-event consumer on the way out of a failed start (its own error is not the start's)."""
    await lifecycle.kill(task)
