"""The AI Image Processor: MQTT consumers that turn a claim check into stored renditions.

For each ``image.uploaded`` event a worker

1. checks the job's *finished marker* in Storage: a redelivered or duplicated event for a
   job that is already done (or failed) is acknowledged and nothing else happens;
2. fetches the original from Storage (the event holds only its key: a claim check);
3. runs :func:`helpers.capstone.images.process_image` in ``asyncio.to_thread`` (Pillow
   work is CPU-bound: on the event loop it would freeze every other service in the
   kernel), publishing ``job.progress`` after each step;
4. stores every rendition under a deterministic key (``results/{job_id}/{name}``), so
   doing the job twice overwrites the same objects instead of making a second set;
5. publishes ``job.done`` (with a fixed event id, ``{job_id}.done``), writes the marker,
   and only then lets the message be acknowledged.

If the worker dies anywhere before that acknowledgement, the broker delivers the event
again and the job is done again, to the same keys, with one ``job.done``. A transform
that keeps failing is tried ``attempts`` times, then the job ends as ``job.failed`` with
the reason, plus a dead-letter record: never silence, never a dead worker.

How the workers share the stream (``shared``):

* **shared subscription**: each worker is its own MQTT client in the group
  ``$share/processors/...``; the broker hands each event to one member, round robin.
  Members could live in separate processes. Round robin means a member busy with a slow
  image still gets its turn of new events, which then wait behind the slow one.
* **one subscription + a pool** (:func:`helpers.core.worker_pool.run_pool`): one client,
  N tasks; the next event goes to the next *free* worker, so a slow image holds up only
  its own worker.

``shared=None`` picks shared subscriptions on an external broker and the pool on the
embedded one: rumqttd 0.20 (the embedded broker) mishandles unacknowledged messages of
``$share`` members (see :data:`EMBEDDED_SHARED_PROBLEM`), and a crashed worker's image is
exactly such a message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiomqtt
from PIL import Image

from helpers.capstone import images
from helpers.capstone.jobs import (
    IMAGE_UPLOADED,
    JOB_DONE,
    JOB_FAILED,
    JOB_PROGRESS,
    Topics,
    done_event_id,
    failed_event_id,
)
from helpers.capstone.storage import StorageClient
from helpers.core import lifecycle
from helpers.core.broker import Broker
from helpers.core.messaging import Consumer, Event, EventHandler, dead_letter_payload, make_event, manual_ack, publish
from helpers.core.reconnect import reconnecting
from helpers.core.worker_pool import run_pool

SHARED = "shared subscription ($share)"
POOL = "one subscription + worker pool"

EMBEDDED_SHARED_PROBLEM = (
    "the embedded broker (rumqttd 0.20) mishandles unacknowledged messages of $share members with "
    "persistent sessions: the last member to disconnect while holding one crashes the broker "
    "('group must exists'), a crashed member's message is redelivered only when the next message "
    "arrives, and messages other members already acknowledged come again. Use shared=False (the pool) "
    "on the embedded broker, or set MQTT_URL to a Mosquitto to see shared subscriptions"
)
"""Why ``shared=True`` is refused on the embedded broker (measured with probes against rumqttd 0.20)."""

DEFAULT_ATTEMPTS = 3
DEFAULT_RETRY_DELAY_S = 0.05
"""First pause between attempts; it doubles each time (0.05, 0.1, ...)."""

WorkOf = Callable[[Mapping[str, Any]], float]
"""The job's event data -> ``work`` for :func:`helpers.capstone.images.process_image` (1.0 is a normal image)."""
FailOn = Callable[[Mapping[str, Any]], bool]
"""The job's event data -> True to make this job's caption model fail (a transform that always fails)."""


CaptionFn = Callable[[Image.Image], str]
"""A caption model: a Pillow image in, one sentence out (default: :func:`helpers.capstone.images.caption`)."""


@dataclass(frozen=True)
class ProcessorSettings:
    """How the AI Image Processor runs: declared once, passed through every layer that starts one.

    ``work`` (or ``work_of(job)`` per job) scales the CPU cost of each image; ``fail_on(job)``
    makes a job's transform fail every time; ``attempts`` tries per delivery before the job
    is failed and dead-lettered; ``caption_fn(image) -> str`` replaces the default caption
    (swap in a real model here). ``session`` fixes the members' client ids (``session``, or
    ``session-0``, ... for several workers), so a process restarted with the same ``session``
    resumes the persistent sessions (and the messages in flight) of the one that died;
    without it each start takes fresh ids (``name-<random>-i``).
    """

    workers: int = 4
    shared: bool | None = None
    """None: shared subscriptions on an external broker, the pool on the embedded one."""
    work: float = 1.0
    work_of: WorkOf | None = None
    fail_on: FailOn | None = None
    caption_fn: CaptionFn | None = None
    attempts: int = DEFAULT_ATTEMPTS
    retry_delay: float = DEFAULT_RETRY_DELAY_S
    name: str = "processor"
    session: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"the processor needs at least one worker, got {self.workers}")
        if self.attempts < 1:
            raise ValueError(f"attempts counts the first try too, so it is at least 1, got {self.attempts}")

    def with_(self, **changes: Any) -> ProcessorSettings:
        """These settings with some changed (``settings.with_(workers=2)``); unknown names raise TypeError."""
        return dataclasses.replace(self, **changes) if changes else self


class TransformFailed(RuntimeError):
    """A processing step failed (the lesson injects it with ``fail_on``: "the caption model crashed")."""


class Abandoned(RuntimeError):
    """Raised inside the worker thread of a worker that was killed, so the orphaned work stops at the next step."""


def result_key(job_id: str, name: str) -> str:
    """Where rendition ``name`` of ``job_id`` is stored: the same key every time the job is done."""
    return f"results/{job_id}/{name}"


def done_marker(job_id: str) -> str:
    """Written after ``job.done`` is published: a later copy of the job's event finds it and does nothing."""
    return f"results/{job_id}/_done.json"


def failed_marker(job_id: str) -> str:
    """Written after ``job.failed`` is published (the failure twin of :func:`done_marker`)."""
    return f"results/{job_id}/_failed.json"


@dataclass(frozen=True)
class ClaimCheck:
    """An ``image.uploaded`` event's data, checked: the job, its user, and where its original is stored."""

    job_id: str
    user: str
    key: str
    """The original's storage key (the claim check itself)."""
    etag: str | None
    data: Mapping[str, Any]
    """The event's data as sent: ``work_of`` and ``fail_on`` read it (``job["user"]``)."""


def job_of(event: Event) -> ClaimCheck:
    """The event's claim check if it is a well-formed ``image.uploaded`` event; else ValueError (dead-lettered)."""
    data = event.data
    if event.type != IMAGE_UPLOADED or not isinstance(data, dict):
        raise ValueError(f"expected an {IMAGE_UPLOADED} event with an object as data, got type {event.type!r}")
    original = data.get("original")
    job_id, user = data.get("job_id"), data.get("user")
    for name, value in (("job_id", job_id), ("user", user)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{IMAGE_UPLOADED} event {event.id} has no {name}")
    if not isinstance(original, dict) or not isinstance(original.get("key"), str):
        raise ValueError(f"{IMAGE_UPLOADED} event {event.id} has no original.key (the claim check)")
    etag = original.get("etag")
    return ClaimCheck(str(job_id), str(user), str(original["key"]), etag if isinstance(etag, str) else None, data)


RunOutcome = Literal["running", "succeeded", "failed", "abandoned"]
"""How a worker's run of a job ended: the job's words (``succeeded``, ``failed``), or ``abandoned`` (killed mid-job)."""


@dataclass(frozen=True)
class Processed:
    """What the attempts at one job came to: the stored renditions and the caption, or why it failed every time."""

    results: dict[str, str] = field(default_factory=dict)
    """Rendition name -> storage key."""
    caption: str = ""
    failure: str | None = None


@dataclass
class Run:
    """One time a worker took a job on: when, which worker, how it ended."""

    job_id: str
    member: int
    started: float
    """``time.perf_counter()`` when the worker began (after the finished-marker check)."""
    ended: float | None = None
    outcome: RunOutcome = "running"


@dataclass
class ProcessorStats:
    """What the processor did, per job, so a lesson can show redeliveries and duplicates."""

    runs: list[Run] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    """Transform attempts per job (retries and redeliveries included)."""
    skipped: Counter[str] = field(default_factory=Counter)
    """Events for jobs that were already finished: duplicates absorbed by the marker check."""
    finished_at: dict[str, float] = field(default_factory=dict)
    """``time.perf_counter()`` when ``job.done`` or ``job.failed`` was published."""
    processing_s: dict[str, float] = field(default_factory=dict)
    """Seconds of the run that finished the job: fetch, transform and store (retries included)."""
    published: Counter[str] = field(default_factory=Counter)
    """Events published, by type (``job.done`` once per job, however often the job ran)."""
    marker_errors: int = 0
    """Finished markers that could not be read or written (Storage trouble): the job went on regardless."""

    def starts(self, job_id: str) -> int:
        """How many times a worker took ``job_id`` on (2 after a redelivery)."""
        return sum(run.job_id == job_id for run in self.runs)


@dataclass
class Member:
    """One MQTT client of the processor: its client id (fixed, so a restart resumes its session) and its life."""

    index: int
    client_id: str
    topic: str
    pool: int
    life: lifecycle.Restartable = field(default_factory=lifecycle.Restartable)
    """Its task, and what it died of (a BaseException too: a worker's process that died)."""
    consumer: Consumer | None = None

    @property
    def alive(self) -> bool:
        return self.life.alive


class Processor:
    """The running AI Image Processor: its workers, what they did, and kill/restart for the lessons."""

    def __init__(
        self, broker: Broker, topics: Topics, storage_url: str, settings: ProcessorSettings | None = None, **changes: Any
    ) -> None:
        """``settings`` (the defaults when None), with ``changes`` applied (``workers=2``, ``work=0.5``, ...)."""
        settings = (settings or ProcessorSettings()).with_(**changes)
        workers, shared, session = settings.workers, settings.shared, settings.session
        use_shared = (broker.supports_shared_subscriptions and not broker.embedded) if shared is None else shared
        if use_shared and broker.embedded:
            raise ValueError(f"shared=True is refused: {EMBEDDED_SHARED_PROBLEM}")
        self.settings = settings
        self.broker, self.topics = broker, topics
        self.storage = StorageClient(storage_url)
        self.work, self.work_of, self.fail_on = settings.work, settings.work_of, settings.fail_on
        self.caption_fn = settings.caption_fn or images.caption
        self.attempts, self.retry_delay = settings.attempts, settings.retry_delay
        self.mode = SHARED if use_shared else POOL
        base = session or f"{settings.name}-{uuid.uuid4().hex[:6]}"
        if use_shared:
            topic = f"$share/processors/{topics.uploaded}"
            ids = [base] if session and workers == 1 else [f"{base}-{i}" for i in range(workers)]
            self.members = [Member(i, client_id, topic, 1) for i, client_id in enumerate(ids)]
        else:
            self.members = [Member(0, base, topics.uploaded, workers)]
        self.workers = workers
        self.stats = ProcessorStats()
        self.busy: dict[str, int] = {}
        """Job id -> the member working on it right now."""

    async def start(self) -> Processor:
        """Start every member; returns once each has subscribed."""
        for member in self.members:
            await self.restart(member.index)
        return self

    async def restart(self, member: int = 0) -> None:
        """(Re)start one member with its fixed client id: its persistent session, and what it holds, resume."""
        target = self.members[member]
        if target.alive:
            raise RuntimeError(f"processor member {member} is running; kill it first")
        await target.life.launch(reconnecting, self._serve, target)  # a lost connection: connect again

    async def kill(self, member: int = 0) -> Exception | None:
        """Kill one member mid-work, like a crashed process: its connection drops, its unacked event stays queued.

        Returns the error the member had died of before, if any (a healthy member: None).
        """
        return await self.members[member].life.kill()

    def crashed(self) -> dict[str, BaseException]:
        """Members whose task died with an error (a healthy member runs until it is killed or stopped)."""
        return {member.client_id: error for member in self.members if (error := member.life.crashed()) is not None}

    async def stop(self, *, forget: bool = True) -> dict[str, BaseException]:
        """Stop every member, then (``forget``) drop their sessions; returns what members had died of (name -> error).

        Dropping a session drops the messages it holds: Mosquitto does not hand a shared
        member's unacknowledged messages to the other members. ``forget=False`` keeps them
        for the next process with the same ``session`` (a worker slot restarted later).
        """
        try:
            for member in self.members:
                await self.kill(member.index)
            errors = self.crashed()
        finally:
            try:
                if forget:  # nothing lingers on the broker
                    await self.broker.end_sessions(*(member.client_id for member in self.members))
            finally:
                await self.storage.close()
        return errors

    # --- one member ----------------------------------------------------------------------

    async def _serve(self, member: Member, ready: asyncio.Event) -> None:
        """A member's life: connect with its persistent session, consume until killed."""
        client = manual_ack(self.broker.client(member.client_id, clean_session=False))
        async with client:
            client.pending_calls_threshold = 1000  # progress events of several jobs in flight: not a warning
            consumer = Consumer(client, member.topic, self._handler(member, client), dead_letter_topic=self.topics.dead_letter)
            member.consumer = consumer
            await run_pool(consumer, member.pool, ready)

    def _handler(self, member: Member, client: aiomqtt.Client) -> EventHandler:
        async def handle(event: Event) -> None:
            await self._handle(member, client, event, job_of(event))

        return handle

    async def _handle(self, member: Member, client: aiomqtt.Client, event: Event, job: ClaimCheck) -> None:
        """One ``image.uploaded`` event, start to finish (the ack follows when this returns)."""
        job_id = job.job_id
        if await self._finished(job_id):
            self.stats.skipped[job_id] += 1
            return
        run = Run(job_id, member.index, time.perf_counter())
        self.stats.runs.append(run)
        self.busy[job_id] = member.index
        try:
            result = await self._attempts(client, job)
            self.stats.processing_s[job_id] = time.perf_counter() - run.started  # before the news can reach anyone
            if result.failure is not None:
                await self._give_up(client, event, job, result.failure)
                run.outcome = "failed"
            else:
                await self._announce_done(client, job, result)
                run.outcome = "succeeded"
        finally:
            self.busy.pop(job_id, None)
            run.ended = time.perf_counter()
            if run.outcome == "running":  # it never got to the end: the worker was killed (or crashed)
                run.outcome = "abandoned"

    async def _attempts(self, client: aiomqtt.Client, job: ClaimCheck) -> Processed:
        """Up to ``attempts`` tries: the results, or the reason it failed every time."""
        reasons: list[str] = []
        for attempt in range(1, self.attempts + 1):
            self.stats.attempts[job.job_id] += 1
            try:
                return await self._attempt(client, job)
            except images.ImageRejected as exc:  # the stored bytes are not an image: no retry can fix that
                return Processed(failure=f"the stored original is not an acceptable image: {exc.detail}")
            except aiomqtt.MqttError:  # the connection is gone, not the transform: reconnect, and the event comes again
                raise
            except Exception as exc:  # noqa: BLE001 - a failed attempt is retried, then reported as job.failed
                reasons.append(f"{type(exc).__name__}: {exc}")
            if attempt < self.attempts:
                await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))  # backoff: the pause is the point
        return Processed(failure=f"failed {self.attempts} time(s); last error: {reasons[-1]}")

    async def _attempt(self, client: aiomqtt.Client, job: ClaimCheck) -> Processed:
        """Fetch, transform (in a thread), store every rendition."""
        job_id = job.job_id
        data, _, etag = await self.storage.get(job.key)
        if job.etag and etag != job.etag:
            raise RuntimeError(f"the original changed since upload (etag {etag}, expected {job.etag})")
        work = self.work_of(job.data) if self.work_of is not None else self.work
        caption_fn = _failing_caption if self.fail_on is not None and self.fail_on(job.data) else self.caption_fn
        progress = _Progress(self, client, job_id)
        try:
            renditions, caption = await asyncio.to_thread(
                images.process_image, data, work=work, caption_fn=caption_fn, on_step=progress.on_step
            )
        except Exception:
            progress.abandon()
            await progress.sent()  # the steps that did finish are still reported before the retry
            raise
        except BaseException:  # killed (cancelled): not swallowed, re-raised below
            progress.abandon()  # the orphaned thread stops at its next step instead of running on unseen
            progress.drop()
            raise
        progress.abandon()
        await progress.sent()
        results: dict[str, str] = {}
        for rendition in renditions:
            key = result_key(job_id, rendition.name)
            await self.storage.put(key, rendition.data, rendition.content_type)
            results[rendition.name] = key
        return Processed(results, caption)

    async def _finished(self, job_id: str) -> bool:
        """Whether a finished marker says ``job_id`` is done or failed already."""
        try:
            return await self.storage.exists(done_marker(job_id)) or await self.storage.exists(failed_marker(job_id))
        except Exception:  # noqa: BLE001 - an unreadable marker means "do the job": doing it twice is harmless
            self.stats.marker_errors += 1
            return False

    async def _mark(self, key: str, record: Mapping[str, Any]) -> None:
        """Write a finished marker; a failure is counted, not raised (the event is out already, ids dedupe the rest)."""
        try:
            await self.storage.put(key, json.dumps(record).encode(), "application/json")
        except Exception:  # noqa: BLE001 - the job is finished and announced; a missing marker costs a duplicate at most
            self.stats.marker_errors += 1

    async def _announce_done(self, client: aiomqtt.Client, job: ClaimCheck, processed: Processed) -> None:
        """Publish ``job.done`` unless the marker says it went out already, then write the marker."""
        job_id = job.job_id
        if await self._finished(job_id):  # another delivery of this job got here first
            self.stats.skipped[job_id] += 1
            return
        data = {"job_id": job_id, "user": job.user, "results": processed.results, "caption": processed.caption}
        self.stats.finished_at[job_id] = time.perf_counter()  # before publishing: a subscriber may see it before our PUBACK
        await publish(client, self.topics.done, make_event(JOB_DONE, data, source="/processor", id=done_event_id(job_id)))
        self.stats.published[JOB_DONE] += 1
        await self._mark(done_marker(job_id), data)

    async def _give_up(self, client: aiomqtt.Client, event: Event, job: ClaimCheck, reason: str) -> None:
        """Dead-letter the event with the reason and publish ``job.failed`` (once, like ``job.done``)."""
        job_id = job.job_id
        if await self._finished(job_id):
            self.stats.skipped[job_id] += 1
            return
        record = dead_letter_payload(self.topics.uploaded, event.to_bytes(), reason)
        await client.publish(self.topics.dead_letter, record, qos=1)
        data = {"job_id": job_id, "user": job.user, "reason": reason}
        self.stats.finished_at[job_id] = time.perf_counter()
        await publish(client, self.topics.failed, make_event(JOB_FAILED, data, source="/processor", id=failed_event_id(job_id)))
        self.stats.published[JOB_FAILED] += 1
        await self._mark(failed_marker(job_id), data)


def _failing_caption(img: Image.Image) -> str:
    """The caption step of a job ``fail_on`` picked: the model crashes, every time."""
    raise TransformFailed("the caption model crashed on this image (injected with fail_on)")


class _Progress:
    """Publishes ``job.progress`` for steps that finish in the worker thread, from the event loop, in order."""

    def __init__(self, processor: Processor, client: aiomqtt.Client, job_id: str) -> None:
        self.processor, self.client, self.job_id = processor, client, job_id
        self.loop = asyncio.get_running_loop()
        self.tasks: list[asyncio.Task[Any]] = []
        self._abandoned = threading.Event()

    def on_step(self, step: str, done: int, total: int) -> None:
        """Called in the worker thread after each step: hand the publish to the loop (never touch MQTT from here)."""
        if self._abandoned.is_set():
            raise Abandoned(f"job {self.job_id}: the worker was stopped, so its thread stops too")
        self.loop.call_soon_threadsafe(self._publish, step, done, total)

    def _publish(self, step: str, done: int, total: int) -> None:
        if self._abandoned.is_set():
            return
        data = {"job_id": self.job_id, "step": step, "done": done, "total": total}
        event = make_event(JOB_PROGRESS, data, source="/processor")
        self.tasks.append(asyncio.ensure_future(publish(self.client, self.processor.topics.progress, event)))
        self.processor.stats.published[JOB_PROGRESS] += 1

    def abandon(self) -> None:
        """The attempt is over (finished, failed or killed): later steps of its thread publish nothing."""
        self._abandoned.set()

    async def sent(self) -> None:
        """Wait for the progress publishes of this attempt, so ``job.done`` goes out after them."""
        if self.tasks:
            await asyncio.gather(*self.tasks)

    def drop(self) -> None:
        """The worker was killed: stop waiting for its progress publishes (their connection is going away)."""
        for task in self.tasks:
            task.cancel()
            task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a dropped publish's failure as seen: the connection it used was closed on purpose."""
    lifecycle.died_of(task)


async def start_processor(
    broker: Broker, topics: Topics, storage_url: str, settings: ProcessorSettings | None = None, **changes: Any
) -> Processor:
    """Start the AI Image Processor (see :class:`ProcessorSettings`); returns once every worker has subscribed."""
    processor = Processor(broker, topics, storage_url, settings, **changes)
    try:
        return await processor.start()
    except BaseException as exc:  # not swallowed: stop the members that did start, then re-raise
        for member, error in (await processor.stop()).items():
            exc.add_note(f"processor member {member!r} had failed too: {type(error).__name__}: {error}")
        raise
