"""The whole capstone system in one call, the naive synchronous design, and the lesson's experiments.

:func:`start_pipeline` starts the four services of lesson 07 on a per-run topic prefix:
Storage (HTTP), Upload (HTTP, answers 202), the AI Image Processor (MQTT workers) and
Notification (MQTT, persistent session). :class:`Pipeline` uploads like a client would
(over HTTP), waits for jobs, and reads inboxes, the e-mail outbox and dead letters.

:func:`start_sync_pipeline` is the design the lesson argues against: ``POST /images``
processes the image inside the request and answers ``200`` when the renditions are
stored. Same validation, same storage, same Pillow work, so the differences the
experiments measure come from the communication style alone.

The experiments (each returns a dataclass of measured numbers with ``as_row()`` for
:func:`helpers.core.tables.show`, and most have a plot):

1. :func:`upload_latency`: a burst of uploads, async vs sync: upload latency, processing
   time, and the sync design's client timeouts.
2. :func:`head_of_line`: one pathological image among normal ones, one worker vs a pool.
3. :func:`notifier_outage`: the Notification service is down while jobs finish.
4. :func:`worker_killed`: a worker dies mid-image; the image comes back, the user hears once.
5. :func:`failing_transform`: a transform that always fails ends the job as ``failed``.
6. :func:`upload_restarted`: the Upload service is stopped mid-burst and started again on
   its work folder and port: every job still answers its status, is done, and is notified once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
from aiohttp import web
from matplotlib.axes import Axes

from helpers.capstone import images
from helpers.capstone.jobs import DONE, JOB_DONE, Topics
from helpers.capstone.notifier import Notification, Notifier
from helpers.capstone.processor import CaptionFn, FailOn, Processor, WorkOf, result_key, start_processor
from helpers.capstone.storage import StorageClient, start_storage
from helpers.capstone.upload import USER_PATTERN, UploadService, end_session, original_key, read_image_body, start_upload
from helpers.core import lifecycle
from helpers.core.broker import Broker
from helpers.core.http import Service, start_service
from helpers.core.measure import LoadRun, Summary, open_loop, percentile
from helpers.core.messaging import Event, InvalidEvent, decode
from helpers.core.plots import COLORS, axes
from helpers.core.problems import PROBLEM_BASE, problem, problem_for, problems_everywhere
from helpers.core.receive import subscribed_messages
from helpers.core.reconnect import reconnecting
from helpers.core.waiting import until, until_quiet

SLOW_USER = "pathological"
"""The user whose image :func:`head_of_line` makes ``slow_work`` times as costly."""
FAILING_USER = "unlucky"
"""The user whose image :func:`failing_transform` makes fail in every attempt."""
QUIET_S = 0.3
""""And then nothing more arrives": how long a count must stay still before a harness trusts it."""


# --- talking to the Upload service like a client -------------------------------------------


@dataclass(frozen=True)
class UploadAnswer:
    """What a client got back from ``POST /images``: status, JSON body, headers, and how long it took."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]
    seconds: float

    @property
    def job_id(self) -> str | None:
        value = self.body.get("job_id")
        return value if isinstance(value, str) else None

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")

    @property
    def retry_after(self) -> str | None:
        return self.headers.get("Retry-After")


async def post_image(
    session: aiohttp.ClientSession,
    base_url: str,
    data: bytes,
    user: str,
    *,
    idempotency_key: str | None = None,
    timeout: float | None = None,
) -> UploadAnswer:
    """``POST {base_url}/images?user=USER`` with the bytes; raises ``TimeoutError`` after ``timeout`` seconds."""
    headers = {"Content-Type": "application/octet-stream"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    began = time.perf_counter()
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        async with session.post(
            f"{base_url}/images", params={"user": user}, data=data, headers=headers, timeout=client_timeout
        ) as response:
            body = await response.json(content_type=None)
            return UploadAnswer(response.status, body, dict(response.headers), time.perf_counter() - began)
    except aiohttp.ServerTimeoutError as exc:  # aiohttp's own timeout: the caller gave up waiting
        raise TimeoutError(f"no answer within {timeout} s") from exc


# --- the asynchronous system ------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One message seen on the run's topics: when (``time.perf_counter()``), where, what."""

    t: float
    topic: str
    payload: bytes

    def event(self) -> Event | None:
        """The payload as an event, or None (a dead-letter record is not an event)."""
        try:
            return decode(self.payload)
        except InvalidEvent:
            return None


class Recorder:
    """Subscribes to every topic of the run and keeps what passed, for counting and timelines."""

    def __init__(self, broker: Broker, client_id: str, topic: str) -> None:
        self.broker, self.client_id, self.topic = broker, client_id, topic
        self.records: list[Record] = []

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Connect, subscribe, record until cancelled (or until the connection is lost: run it with ``reconnecting``)."""
        async with self.broker.client(self.client_id) as client:
            async for message in subscribed_messages(client, self.topic, qos=1, ready=ready):
                payload = message.payload if isinstance(message.payload, bytes | bytearray) else str(message.payload).encode()
                self.records.append(Record(time.perf_counter(), str(message.topic), bytes(payload)))

    def events(self, kind: str | None = None, job_id: str | None = None) -> list[tuple[float, Event]]:
        """(arrival time, event) of every event of type ``kind`` (any if None), for ``job_id`` if given."""
        found = []
        for record in self.records:
            event = record.event()
            if event is None or (kind is not None and event.type != kind):
                continue
            if job_id is not None and (event.data or {}).get("job_id") != job_id:
                continue
            found.append((record.t, event))
        return found


@dataclass
class Pipeline:
    """The running system: the four services, a recorder on every topic, and an HTTP client."""

    broker: Broker
    topics: Topics
    workdir: Path
    storage: Service
    upload_service: UploadService
    processor: Processor
    notifier: Notifier
    recorder: Recorder
    session: aiohttp.ClientSession
    _stack: contextlib.AsyncExitStack
    _errors: dict[str, BaseException] = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)

    @property
    def url(self) -> str:
        """The Upload service's base URL (``POST /images``, ``GET /jobs/{id}``)."""
        return self.upload_service.url

    async def upload(
        self, data: bytes, user: str, idempotency_key: str | None = None, *, timeout: float | None = 10.0
    ) -> UploadAnswer:
        """Upload ``data`` as ``user`` over HTTP, as any client would; the answer is 202 or a problem."""
        return await post_image(self.session, self.url, data, user, idempotency_key=idempotency_key, timeout=timeout)

    async def job(self, job_id: str) -> tuple[int, dict[str, Any]]:
        """``GET /jobs/{job_id}`` over HTTP: (status, body)."""
        async with self.session.get(f"{self.url}/jobs/{job_id}") as response:
            return response.status, await response.json(content_type=None)

    def state(self, job_id: str) -> str | None:
        """The job's state in the Upload service's store (what ``GET /jobs/{id}`` would say now)."""
        job = self.upload_service.store.get(job_id)
        return job.state if job is not None else None

    async def wait_done(self, job_ids: Iterable[str], timeout: float = 60.0) -> bool:
        """Wait until every job is done or failed; False if ``timeout`` s passed first.

        A crashed worker or service cannot finish anything: its error is raised at once.
        """
        ids = list(job_ids)
        store = self.upload_service.store
        finished = await until(lambda: store.finished(ids) or bool(self.crashed()), timeout, poll=0.01)
        lifecycle.raise_crashed(self.crashed(), "the pipeline's service")
        return finished

    def crashed(self) -> dict[str, BaseException]:
        """Services and workers that died with an error (name -> error)."""
        errors = dict(self._errors)
        errors.update(self.processor.crashed())
        if (notifier_error := self.notifier.crashed()) is not None:
            errors["notifier"] = notifier_error
        if (upload_error := self.upload_service.crashed()) is not None:
            errors["upload job-event consumer"] = upload_error
        return errors

    def notifications(self) -> list[Notification]:
        """Every inbox entry the Notification service wrote, oldest first."""
        return self.notifier.notifications()

    def inbox(self, user: str) -> list[Notification]:
        """``user``'s in-app inbox."""
        return self.notifier.inbox(user)

    def outbox(self) -> list[dict[str, Any]]:
        """The "e-mails" the Notification service wrote (JSON lines, never sent)."""
        return self.notifier.outbox()

    def dead_letters(self) -> list[dict[str, Any]]:
        """The dead-letter records on ``{prefix}/dead-letter/images``: reason, topic and the original event."""
        return [json.loads(r.payload) for r in self.recorder.records if r.topic == self.topics.dead_letter]

    def since(self, t: float) -> float:
        """Seconds from this pipeline's start to the ``time.perf_counter()`` value ``t``."""
        return t - self.t0

    async def stop(self) -> None:
        """Stop every service and worker; then raise what any of them had died of (never swallowed)."""
        await self._stack.aclose()
        lifecycle.raise_crashed(self._errors, "the pipeline's service")


async def _end_session_quietly(broker: Broker, client_id: str) -> None:
    """End a persistent session at the end of a run (a broker that is gone already has nothing to end)."""
    with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
        await end_session(broker, client_id)


async def start_pipeline(
    broker: Broker,
    workdir: str | Path,
    *,
    workers: int = 4,
    shared: bool | None = None,
    work: float = 1.0,
    work_of: WorkOf | None = None,
    fail_on: FailOn | None = None,
    caption_fn: CaptionFn | None = None,
    attempts: int = 3,
    prefix: str = "capstone",
    name: str = "capstone",
) -> Pipeline:
    """Start Storage, Upload, the AI Image Processor (``workers`` workers) and Notification.

    Everything of the run lives under ``workdir/<run id>/`` and on topics under
    ``{prefix}/<run id>/``, so runs never see each other's files or messages.
    ``shared``, ``work``, ``work_of``, ``fail_on``, ``caption_fn`` and ``attempts`` go to
    :func:`helpers.capstone.processor.start_processor`.
    """
    topics = Topics.fresh(prefix)
    run_id = topics.prefix.rsplit("/", 1)[-1]
    folder = Path(workdir) / run_id
    stack = contextlib.AsyncExitStack()
    errors: dict[str, BaseException] = {}

    async def stopped(what: str, stop: Callable[[], Awaitable[Any]]) -> None:
        result = await stop()
        if isinstance(result, BaseException):
            errors[what] = result
        elif isinstance(result, dict):
            errors.update(result)

    try:
        storage = await start_storage(folder / "storage", name=f"{name}-storage-{run_id}")
        stack.push_async_callback(storage.stop)
        session = aiohttp.ClientSession()
        stack.push_async_callback(session.close)
        recorder = Recorder(broker, f"{name}-recorder-{run_id}", topics.everything)
        recorder_task = await lifecycle.start(reconnecting, recorder.run)
        stack.push_async_callback(stopped, "recorder", lambda: lifecycle.kill(recorder_task))
        upload = await start_upload(broker, topics, storage.url, name=f"{name}-upload", work_dir=folder / "upload")
        stack.push_async_callback(_end_session_quietly, broker, upload.client_id)  # last: nobody resumes it after the run
        stack.push_async_callback(stopped, "upload job-event consumer", upload.stop)
        notifier = Notifier(broker, topics, folder / "notifier", client_id=f"{name}-notifier-{run_id}", status_base=upload.url)
        await notifier.start()
        stack.push_async_callback(stopped, "notifier", notifier.stop)
        processor = await start_processor(
            broker,
            topics,
            storage.url,
            workers=workers,
            shared=shared,
            work=work,
            work_of=work_of,
            fail_on=fail_on,
            caption_fn=caption_fn,
            attempts=attempts,
            name=f"{name}-processor",
        )
        stack.push_async_callback(stopped, "processor", processor.stop)
        stack.push_async_callback(lambda: upload.service.stop())  # first out (the service of now, after any restart)
    except BaseException as exc:  # not swallowed: stop what did start, then re-raise
        await stack.aclose()
        for what, error in errors.items():
            exc.add_note(f"the pipeline's {what!r} had failed too: {type(error).__name__}: {error}")
        raise
    return Pipeline(broker, topics, folder, storage, upload, processor, notifier, recorder, session, stack, errors)


# --- the synchronous design -----------------------------------------------------------------


@dataclass
class SyncPipeline:
    """The naive design: ``POST /images`` does the processing and answers 200 when it is done."""

    storage: Service
    service: Service
    session: aiohttp.ClientSession
    storage_client: StorageClient
    processing_s: list[float] = field(default_factory=list)
    """Seconds each image took in the worker thread (what the caller waits for, plus queueing)."""
    done_at: list[float] = field(default_factory=list)
    """``time.perf_counter()`` when each upload's processing and storing ended (its caller may have left)."""

    @property
    def url(self) -> str:
        return self.service.url

    @property
    def in_flight(self) -> int:
        """Requests the service is still working on (including those whose caller gave up)."""
        return self.service.stats.in_flight

    async def upload(self, data: bytes, user: str, *, timeout: float | None = 10.0) -> UploadAnswer:
        """Upload and wait for the processing, like a client of this design must."""
        return await post_image(self.session, self.url, data, user, timeout=timeout)

    async def stop(self) -> None:
        """Stop the service, its storage and the clients."""
        try:
            await self.service.stop()
        finally:
            await self.session.close()
            await self.storage_client.close()
            await self.storage.stop()


async def start_sync_pipeline(
    workdir: str | Path, *, workers: int = 4, work: float = 1.0, name: str = "capstone-sync"
) -> SyncPipeline:
    """Start Storage and an upload endpoint that processes inside the request (at most ``workers`` at once)."""
    run_id = uuid.uuid4().hex[:8]
    storage = await start_storage(Path(workdir) / f"sync-{run_id}" / "storage", name=f"{name}-storage-{run_id}")
    client = StorageClient(storage.url)
    slots = asyncio.Semaphore(workers)
    timings: list[float] = []
    done_at: list[float] = []

    async def post(request: web.Request) -> web.Response:
        user = request.query.get("user", "")
        if not USER_PATTERN.fullmatch(user):
            return problem(400, "Missing or invalid user", "name the user as ?user=NAME", f"{PROBLEM_BASE}invalid-user")
        data = await read_image_body(request, images.MAX_UPLOAD_BYTES)
        if isinstance(data, web.Response):
            return data
        try:
            info = await asyncio.to_thread(images.inspect_upload, data)
        except images.ImageRejected as exc:
            return problem_for(exc)
        job_id = uuid.uuid4().hex
        await client.put(original_key(job_id), data, info.content_type)
        async with slots:  # the server's worker limit: requests beyond it queue here, their callers waiting
            began = time.perf_counter()
            renditions, caption = await asyncio.to_thread(images.process_image, data, work=work)
            timings.append(time.perf_counter() - began)
        results = {}
        for rendition in renditions:
            await client.put(result_key(job_id, rendition.name), rendition.data, rendition.content_type)
            results[rendition.name] = client.url(result_key(job_id, rendition.name))
        done_at.append(time.perf_counter())
        return web.json_response({"job_id": job_id, "state": DONE, "results": results, "caption": caption})

    app = web.Application(middlewares=[problems_everywhere])
    app.router.add_post("/images", post)
    try:
        service = await start_service(f"{name}-{run_id}", app)
    except BaseException:  # not swallowed: stop the storage that did start, then re-raise
        await client.close()
        await storage.stop()
        raise
    return SyncPipeline(storage, service, aiohttp.ClientSession(), client, timings, done_at)


# --- experiment helpers -----------------------------------------------------------------------


async def _burst(call: Callable[[int], Awaitable[UploadAnswer]], count: int, *, rate: float, timeout: float | None) -> LoadRun:
    """``count`` uploads at ``rate`` per second (open loop); a non-2xx answer counts as an error."""
    numbers = itertools.count()

    async def one() -> UploadAnswer:
        answer = await call(next(numbers))
        if not 200 <= answer.status < 300:
            raise RuntimeError(f"HTTP {answer.status}: {answer.body.get('detail', answer.body)}")
        return answer

    return await open_loop(one, rate=rate, count=count, timeout=timeout)


def _job_ids(run: LoadRun) -> list[str]:
    return [s.value.job_id for s in run.samples if s.ok and isinstance(s.value, UploadAnswer) and s.value.job_id]


def _seconds(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(round(v, 4) for v in values)


def _p(values: Sequence[float], q: float) -> float:
    return percentile(list(values), q)


def _shown(value: float, digits: int = 1) -> float | str:
    """A number rounded for a table, or "-" when there is none (NaN: e.g. every caller gave up)."""
    return "-" if math.isnan(value) else round(value, digits)


# --- 1. upload latency: async vs sync ---------------------------------------------------------


@dataclass(frozen=True)
class LatencyResult:
    """A burst of uploads against both designs: what the uploader waited, and what the work took."""

    uploads: int
    workers: int
    work: float
    client_timeout_s: float
    async_run: LoadRun
    sync_run: LoadRun
    processing_s: tuple[float, ...]
    """Async design: seconds each image took in the processor (fetch, transform, store)."""
    sync_processing_s: tuple[float, ...]
    """Sync design: seconds each image took in the request's worker thread."""
    async_all_done_s: float
    """Async design: seconds from the first upload until the last job was done."""
    sync_all_done_s: float
    """Sync design: seconds from the first upload until the server finished the last one (callers gone or not)."""
    async_done: int

    @property
    def async_summary(self) -> Summary:
        return self.async_run.summary()

    @property
    def sync_summary(self) -> Summary:
        """Latency percentiles of the sync uploads that were answered (NaN when every caller gave up)."""
        return self.sync_run.summary()

    @property
    def sync_timeouts(self) -> int:
        """Sync uploads whose caller gave up after ``client_timeout_s`` (the server went on working)."""
        return sum(s.error == "timeout" for s in self.sync_run.samples)

    @property
    def processing_p50_s(self) -> float:
        return _p(self.processing_s, 50)

    def _row(self, design: str, run: LoadRun, processing: Sequence[float], all_done_s: float) -> dict[str, object]:
        summary = run.summary()
        return {
            "design": design,
            "uploads": self.uploads,
            "answered": summary.count - summary.errors,
            "gave up": sum(x.error == "timeout" for x in run.samples),
            "upload p50 ms": _shown(summary.p50_ms),
            "upload p99 ms": summary.tail_cell(),  # the p99 of 8 uploads is the slowest: "max"
            "processing p50 s": _shown(_p(processing, 50), 2),
            "all processed after s": _shown(all_done_s, 2),
        }

    def as_rows(self) -> list[dict[str, object]]:
        """One row per design, for :func:`helpers.core.tables.show`."""
        return [
            self._row("async: 202, then events", self.async_run, self.processing_s, self.async_all_done_s),
            self._row("sync: 200 when processed", self.sync_run, self.sync_processing_s, self.sync_all_done_s),
        ]

    def as_row(self) -> dict[str, object]:
        """The headline numbers in one row."""
        return {
            "uploads": self.uploads,
            "async upload p99 ms": self.async_summary.tail_cell(),
            "sync upload p50 ms": _shown(self.sync_summary.p50_ms),
            "processing p50 s": _shown(self.processing_p50_s, 2),
            "sync callers gave up": self.sync_timeouts,
        }


async def upload_latency(
    broker: Broker,
    workdir: str | Path,
    *,
    uploads: int = 8,
    workers: int = 4,
    work: float = 1.0,
    client_timeout: float = 2.0,
    rate: float = 50.0,
    image: bytes | None = None,
    timeout: float = 60.0,
) -> LatencyResult:
    """A burst of ``uploads`` (at ``rate``/s) against the async design, then against the sync one.

    Both designs get the same image, the same ``work`` and ``workers``; the sync callers
    give up after ``client_timeout`` seconds, as a browser or a gateway would.
    """
    photo = image if image is not None else images.sample_photo()
    folder = Path(workdir)
    pipeline = await start_pipeline(broker, folder / "async", workers=workers, work=work)
    try:
        began = time.perf_counter()
        async_run = await _burst(
            lambda i: pipeline.upload(photo, f"user{i}", timeout=client_timeout), uploads, rate=rate, timeout=client_timeout
        )
        ids = _job_ids(async_run)
        if not await pipeline.wait_done(ids, timeout):
            states = pipeline.upload_service.store.states()
            raise TimeoutError(f"the async pipeline did not finish {len(ids)} jobs within {timeout:g} s: {states}")
        stats = pipeline.processor.stats
        processing = _seconds(stats.processing_s[j] for j in ids)
        all_done = max(stats.finished_at[j] for j in ids) - began if ids else 0.0
    finally:
        await pipeline.stop()
    sync = await start_sync_pipeline(folder / "sync", workers=workers, work=work)
    try:
        sync_began = time.perf_counter()
        sync_run = await _burst(
            lambda i: sync.upload(photo, f"user{i}", timeout=None), uploads, rate=rate, timeout=client_timeout
        )
        # the callers that gave up left work behind on the server: let it finish before the next experiment
        if not await until(lambda: sync.in_flight == 0, timeout):
            raise TimeoutError(f"the sync service still had {sync.in_flight} requests in flight after {timeout:g} s")
        sync_processing = _seconds(sync.processing_s)
        sync_all_done = max(sync.done_at, default=sync_began) - sync_began
    finally:
        await sync.stop()
    return LatencyResult(
        uploads,
        workers,
        work,
        client_timeout,
        async_run,
        sync_run,
        processing,
        sync_processing,
        all_done,
        sync_all_done,
        len(ids),
    )


def plot_upload_latency(result: LatencyResult, *, ax: Axes | None = None) -> Axes:
    """Each upload's latency in both designs (log scale), with the processing time and the client timeout."""
    ax = axes(ax, (8, 4))
    for label, run, marker, color in (
        ("async: 202 Accepted", result.async_run, "o", COLORS[0]),
        ("sync: 200 when processed", result.sync_run, "s", COLORS[1]),
    ):
        xs = [i + 1 for i, s in enumerate(run.samples) if s.ok]
        ys = [s.latency for s in run.samples if s.ok]
        ax.plot(xs, ys, marker, color=color, label=f"{label} (answered)")
        failed = [i + 1 for i, s in enumerate(run.samples) if not s.ok]
        if failed:
            ax.plot(failed, [result.client_timeout_s] * len(failed), "x", color=color, markersize=9, label=f"{label}: gave up")
    ax.axhline(
        result.processing_p50_s, color="gray", linestyle=":", label=f"processing one image (p50 {result.processing_p50_s:.2f} s)"
    )
    ax.axhline(
        result.client_timeout_s,
        color="black",
        linestyle="--",
        linewidth=0.8,
        label=f"client timeout ({result.client_timeout_s:g} s)",
    )
    ax.set_yscale("log")
    ax.set(
        xlabel="upload number (in the order sent)",
        ylabel="upload latency (s, log scale)",
        title=f"Upload latency under a burst of {result.uploads} uploads",
    )
    ax.set_xticks(range(1, result.uploads + 1))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # outside: points fill the plot
    ax.grid(alpha=0.3)
    return ax


# --- 2. head-of-line blocking ------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """One image in a head-of-line run: was it the slow one, when did work on it start and end (s since the burst)."""

    job_id: str
    slow: bool
    started_s: float
    done_s: float


@dataclass(frozen=True)
class DesignRun:
    """One design's run of :func:`head_of_line`."""

    design: str
    workers: int
    mode: str
    completions: tuple[Completion, ...]

    @property
    def slow_done_s(self) -> float:
        return max(c.done_s for c in self.completions if c.slow)

    @property
    def normal_done_s(self) -> tuple[float, ...]:
        return tuple(sorted(c.done_s for c in self.completions if not c.slow))

    @property
    def normal_before_slow(self) -> int:
        """Normal images finished before the pathological one."""
        return sum(t < self.slow_done_s for t in self.normal_done_s)

    def as_row(self) -> dict[str, object]:
        normal = self.normal_done_s
        return {
            "design": self.design,
            "normal images": len(normal),
            "done before the slow one": self.normal_before_slow,
            "first normal done s": round(normal[0], 2) if normal else "-",
            "last normal done s": round(normal[-1], 2) if normal else "-",
            "slow one done s": round(self.slow_done_s, 2),
        }


@dataclass(frozen=True)
class HeadOfLineResult:
    """Both designs of :func:`head_of_line`: the single worker first, then the pool."""

    normal: int
    work: float
    slow_work: float
    runs: tuple[DesignRun, ...]

    def as_rows(self) -> list[dict[str, object]]:
        return [run.as_row() for run in self.runs]

    def as_row(self) -> dict[str, object]:
        return {run.design: f"{run.normal_before_slow}/{self.normal} before the slow one" for run in self.runs}


async def _head_of_line_run(
    broker: Broker,
    workdir: Path,
    design: str,
    workers: int,
    *,
    normal: int,
    work: float,
    slow_work: float,
    image: bytes,
    timeout: float,
) -> DesignRun:
    def work_of(job: Mapping[str, Any]) -> float:
        return slow_work if job.get("user") == SLOW_USER else work

    pipeline = await start_pipeline(broker, workdir, workers=workers, shared=False, work_of=work_of)
    try:
        began = time.perf_counter()
        ids = []
        for i in range(normal + 1):  # the pathological image first, then the normal ones right behind it
            answer = await pipeline.upload(image, SLOW_USER if i == 0 else f"user{i}")
            if answer.status != 202 or answer.job_id is None:
                raise RuntimeError(f"upload {i} was refused: HTTP {answer.status} {answer.body}")
            ids.append(answer.job_id)
        if not await pipeline.wait_done(ids, timeout):
            raise TimeoutError(f"{design}: {pipeline.upload_service.store.states()} after {timeout:g} s")
        stats = pipeline.processor.stats
        first_start = {run.job_id: run.started for run in reversed(stats.runs)}
        completions = tuple(
            Completion(job_id, i == 0, first_start[job_id] - began, stats.finished_at[job_id] - began)
            for i, job_id in enumerate(ids)
        )
        mode = pipeline.processor.mode
    finally:
        await pipeline.stop()
    return DesignRun(design, workers, mode, completions)


async def head_of_line(
    broker: Broker,
    workdir: str | Path,
    *,
    normal: int = 6,
    work: float = 1.0,
    slow_work: float = 10.0,
    workers: int = 4,
    image: bytes | None = None,
    timeout: float = 120.0,
) -> HeadOfLineResult:
    """One pathological image (``slow_work``) then ``normal`` normal ones (``work``): one worker, then a pool.

    The pool is one subscription handing each event to the next *free* worker
    (``shared=False``): with shared subscriptions the broker deals events round robin,
    and the events dealt to the slow image's member would wait behind it.
    """
    photo = image if image is not None else images.sample_photo()
    folder = Path(workdir)
    runs = []
    for design, count in (("one worker", 1), (f"pool of {workers} workers", workers)):
        runs.append(
            await _head_of_line_run(
                broker,
                folder / f"hol-{count}",
                design,
                count,
                normal=normal,
                work=work,
                slow_work=slow_work,
                image=photo,
                timeout=timeout,
            )
        )
    return HeadOfLineResult(normal, work, slow_work, tuple(runs))


def plot_head_of_line(result: HeadOfLineResult, *, ax: Axes | None = None) -> Axes:
    """Images finished over time, one step line per design; an X marks when the pathological image finished."""
    ax = axes(ax, (8, 4))
    for i, run in enumerate(result.runs):
        color = COLORS[i % len(COLORS)]
        times = sorted(c.done_s for c in run.completions)
        ax.step([0.0, *times], range(len(times) + 1), where="post", color=color, label=f"{run.design}: images finished")
        slow_rank = times.index(run.slow_done_s) + 1
        ax.plot(
            [run.slow_done_s],
            [slow_rank],
            "X",
            color=color,
            markersize=11,
            markeredgecolor="black",
            label=f"{run.design}: the slow image done",
        )
    ax.set(
        xlabel="time since the first upload (s)",
        ylabel="images finished (count)",
        title=f"Head-of-line blocking: 1 image at {result.slow_work / result.work:g}x the work among {result.normal} normal ones"
        if result.work
        else f"Head-of-line blocking: 1 slow image among {result.normal} normal ones",
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(alpha=0.3)
    return ax


# --- 3. the Notification service is down ------------------------------------------------------


@dataclass(frozen=True)
class OutageResult:
    """Jobs finished while the Notification service was down; what reached the users, and when."""

    jobs: int
    down_s: float
    """When the service was killed (s since the run began)."""
    up_s: float
    """When it was started again (same client id, same session)."""
    done_s: tuple[float, ...]
    """When each job's ``job.done`` was published."""
    notified_s: tuple[float, ...]
    """When each notification was written (this process's clock, s since the run began)."""
    waits: tuple[tuple[float, float], ...]
    """(done, notified) per notified job, in seconds since the run began."""
    notifications: int
    """Inbox entries for the run's jobs (a duplicate would count twice)."""
    distinct: int
    """Jobs that got an inbox entry."""
    emails: int

    @property
    def lost(self) -> int:
        return self.jobs - self.distinct

    @property
    def duplicates(self) -> int:
        return self.notifications - self.distinct

    @property
    def during_outage(self) -> int:
        """Notifications written while the service was down (0: a dead service writes nothing)."""
        return sum(self.down_s <= t < self.up_s for t in self.notified_s)

    def as_row(self) -> dict[str, object]:
        return {
            "jobs": self.jobs,
            "done while down": sum(self.down_s <= t < self.up_s for t in self.done_s),
            "down for s": round(self.up_s - self.down_s, 2),
            "notified": self.distinct,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "last notified s after restart": round(max(self.notified_s, default=self.up_s) - self.up_s, 2),
        }


async def notifier_outage(
    broker: Broker,
    workdir: str | Path,
    *,
    jobs: int = 4,
    workers: int = 2,
    work: float = 0.5,
    outage_s: float = 3.0,
    image: bytes | None = None,
    timeout: float = 60.0,
) -> OutageResult:
    """Kill the Notification service, upload ``jobs`` images, let them finish, restart it, count what arrives.

    The service stays down at least ``outage_s`` seconds, and until every job is done.
    """
    photo = image if image is not None else images.sample_photo()
    pipeline = await start_pipeline(broker, workdir, workers=workers, work=work)
    try:
        began = time.perf_counter()
        await pipeline.notifier.kill()
        down = time.perf_counter() - began
        ids = []
        for i in range(jobs):
            answer = await pipeline.upload(photo, f"user{i}")
            if answer.job_id is None:
                raise RuntimeError(f"upload {i} was refused: HTTP {answer.status} {answer.body}")
            ids.append(answer.job_id)
        if not await pipeline.wait_done(ids, timeout):
            raise TimeoutError(f"jobs not finished within {timeout:g} s: {pipeline.upload_service.store.states()}")
        left = outage_s - (time.perf_counter() - began - down)
        if left > 0:
            await asyncio.sleep(left)  # the outage itself: a service that stays down this long is the experiment
        up = time.perf_counter() - began
        await pipeline.notifier.start()
        notifier = pipeline.notifier
        await until(lambda: all(j in notifier.delivered_at for j in ids), timeout)
        await until_quiet(lambda: len(notifier.notifications()), QUIET_S, timeout)  # and then no duplicate follows
        stats = pipeline.processor.stats
        notes = [n for n in notifier.notifications() if n.job_id in set(ids)]
        result = OutageResult(
            jobs,
            down,
            up,
            _seconds(stats.finished_at[j] - began for j in ids),
            _seconds(notifier.delivered_at[j] - began for j in ids if j in notifier.delivered_at),
            tuple(
                (round(stats.finished_at[j] - began, 4), round(notifier.delivered_at[j] - began, 4))
                for j in ids
                if j in notifier.delivered_at
            ),
            len(notes),
            len({n.job_id for n in notes}),
            sum(e["job_id"] in set(ids) for e in notifier.outbox()),
        )
    finally:
        await pipeline.stop()
    return result


def plot_notifier_outage(result: OutageResult, *, ax: Axes | None = None) -> Axes:
    """When jobs finished and when their users were notified, with the outage shaded."""
    ax = axes(ax, (8, 3.2))
    ax.axvspan(result.down_s, result.up_s, color="#f8d0d0", alpha=0.7, label="notification service down")
    for i, (done, notified) in enumerate(result.waits):  # one line per job: how long its user waited for the news
        ax.plot([done, notified], [1, 0], color="gray", linewidth=0.7, label="a job and its notification" if i == 0 else None)
    ax.plot(result.done_s, [1] * len(result.done_s), "o", color=COLORS[0], label="job done (job.done published)")
    ax.plot(result.notified_s, [0] * len(result.notified_s), "s", color=COLORS[2], label="user notified (inbox + e-mail)")
    if result.notified_s:
        ax.annotate(f" {result.distinct} notified", (max(result.notified_s), 0), va="center", fontsize=8)
    ax.set_yticks([0, 1], ["notification", "processor"])
    ax.set_ylim(-0.6, 1.6)
    ax.set(
        xlabel="time since the run began (s)",
        title=f"{result.jobs} jobs done while notifications were down: {result.lost} lost, {result.duplicates} duplicated",
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return ax


# --- 4. a worker killed mid-image -------------------------------------------------------------


@dataclass(frozen=True)
class KilledResult:
    """A worker killed while processing an image, then restarted with its session."""

    mode: str
    killed_mid_image: bool
    """True when the kill landed after the work began and before ``job.done`` went out."""
    steps_before_kill: int
    starts: int
    """Times a worker took the job on (2: once before the kill, once after the redelivery)."""
    state: str | None
    done_events: int
    """``job.done`` events for the job seen on the broker."""
    notifications: int
    """Inbox entries for the job (1: the user heard once)."""
    results: int
    """Renditions the finished job links to."""

    @property
    def redelivered(self) -> bool:
        return self.starts >= 2

    def as_row(self) -> dict[str, object]:
        return {
            "processor": self.mode,
            "killed mid-image": self.killed_mid_image,
            "times processed": self.starts,
            "final state": self.state,
            "job.done events": self.done_events,
            "notifications": self.notifications,
            "renditions": self.results,
        }


async def worker_killed(
    broker: Broker,
    workdir: str | Path,
    *,
    workers: int = 2,
    shared: bool | None = None,
    work: float = 1.0,
    image: bytes | None = None,
    timeout: float = 60.0,
) -> KilledResult:
    """Upload one image, kill the worker processing it after its first step, restart that worker, count.

    With shared subscriptions the killed worker is one member (one MQTT client); with the
    pool (the embedded broker's default) it is the pool's one client, so every image in
    progress there comes back. Either way the restart resumes the same persistent session.
    """
    photo = image if image is not None else images.sample_photo()
    pipeline = await start_pipeline(broker, workdir, workers=workers, shared=shared, work=work)
    try:
        answer = await pipeline.upload(photo, "kim")
        job_id = answer.job_id
        if job_id is None:
            raise RuntimeError(f"the upload was refused: HTTP {answer.status} {answer.body}")
        processor, store = pipeline.processor, pipeline.upload_service.store

        def working() -> bool:  # a worker holds the job and has reported a step (the thread is in the Pillow work)
            job = store.get(job_id)
            return processor.member_of(job_id) is not None and job is not None and job.done_steps >= 1

        if not await until(working, timeout):
            raise TimeoutError(f"no worker started on job {job_id} within {timeout:g} s")
        member = processor.member_of(job_id)
        job = store.get(job_id)
        steps = job.done_steps if job is not None else 0
        mid_image = member is not None and job_id not in processor.stats.finished_at
        await processor.kill(member or 0)
        await processor.restart(member or 0)
        if not await pipeline.wait_done([job_id], timeout):
            raise TimeoutError(f"job {job_id} not finished {timeout:g} s after the restart: {pipeline.state(job_id)}")
        await until(lambda: job_id in pipeline.notifier.delivered_at, timeout)
        await until_quiet(lambda: (len(pipeline.notifications()), len(pipeline.recorder.records)), QUIET_S, timeout)
        finished = store.get(job_id)
        result = KilledResult(
            processor.mode,
            mid_image,
            steps,
            processor.stats.starts(job_id),
            pipeline.state(job_id),
            len(pipeline.recorder.events(JOB_DONE, job_id)),
            sum(n.job_id == job_id for n in pipeline.notifications()),
            len(finished.results) if finished is not None else 0,
        )
    finally:
        await pipeline.stop()
    return result


# --- 5. a transform that always fails ---------------------------------------------------------


@dataclass(frozen=True)
class FailedResult:
    """A job whose transform fails every time, and a normal job uploaded after it."""

    attempts: int
    """Attempts the processor made (the configured number)."""
    state: str | None
    """What ``GET /jobs/{id}`` said (over HTTP)."""
    reason: str | None
    dead_letters: int
    dead_letter_reason: str | None
    notification: str | None
    """What the user's inbox says about the failed job."""
    next_job_state: str | None
    """The state of a normal job uploaded after the failing one: the worker lived on."""

    def as_row(self) -> dict[str, object]:
        return {
            "attempts": self.attempts,
            "state": self.state,
            "reason": self.reason,
            "dead letters": self.dead_letters,
            "user told": self.notification is not None,
            "next job": self.next_job_state,
        }


async def failing_transform(
    broker: Broker,
    workdir: str | Path,
    *,
    attempts: int = 3,
    workers: int = 1,
    work: float = 0.2,
    image: bytes | None = None,
    timeout: float = 60.0,
) -> FailedResult:
    """The caption model crashes on one user's image every time; after ``attempts`` tries the job is failed."""
    photo = image if image is not None else images.sample_photo()

    def fail_on(job: Mapping[str, Any]) -> bool:
        return job.get("user") == FAILING_USER

    pipeline = await start_pipeline(broker, workdir, workers=workers, work=work, fail_on=fail_on, attempts=attempts)
    try:
        bad = (await pipeline.upload(photo, FAILING_USER)).job_id
        good = (await pipeline.upload(photo, "lucky")).job_id
        if bad is None or good is None:
            raise RuntimeError("an upload was refused")
        if not await pipeline.wait_done([bad, good], timeout):
            raise TimeoutError(f"jobs not finished within {timeout:g} s: {pipeline.upload_service.store.states()}")
        await until(lambda: len(pipeline.dead_letters()) >= 1 and len(pipeline.notifications()) >= 2, timeout)
        _, body = await pipeline.job(bad)
        dead = pipeline.dead_letters()
        notes = pipeline.inbox(FAILING_USER)
        result = FailedResult(
            pipeline.processor.stats.attempts[bad],
            body.get("state"),
            body.get("reason"),
            len(dead),
            dead[0].get("reason") if dead else None,
            notes[0].text if notes else None,
            pipeline.state(good),
        )
    finally:
        await pipeline.stop()
    return result


# --- 6. the Upload service restarted mid-burst ----------------------------------------------


@dataclass(frozen=True)
class RestartResult:
    """A burst of uploads, the Upload service stopped while it was processed and started again on the same
    work folder and port; what each job's status, the store and the inboxes said afterwards."""

    jobs: int
    accepted: int
    """Uploads answered 202 before the stop."""
    unfinished_at_stop: int
    """Jobs not yet finished in the store when the service stopped (the drill needs some)."""
    events_while_down: int
    """Job events (progress, done) the processor published while the Upload service was down."""
    done_while_down: int
    """Jobs whose ``job.done`` was published while the Upload service was down (only its session can keep those)."""
    down_s: float
    """How long the service was down."""
    answered: int
    """Jobs whose ``GET /jobs/{id}`` answered after the restart (200 or 303, not 404)."""
    done: int
    """Jobs that succeeded (the status answered 303 to the result)."""
    notified: int
    """Jobs whose user has an inbox entry."""
    notifications: int
    """Inbox entries for the burst's jobs (a duplicate counts twice)."""

    @property
    def lost(self) -> int:
        """Accepted jobs that after the restart did not answer, did not succeed, or whose user was not notified."""
        return self.accepted - min(self.answered, self.done, self.notified)

    @property
    def duplicated(self) -> int:
        """Inbox entries beyond the first of each job."""
        return self.notifications - self.notified

    def as_row(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "unfinished at stop": self.unfinished_at_stop,
            "events while down": self.events_while_down,
            "done while down": self.done_while_down,
            "down for s": round(self.down_s, 2),
            "answered after restart": self.answered,
            "done": self.done,
            "notified": self.notified,
            "duplicated": self.duplicated,
            "lost": self.lost,
        }


async def _statuses(pipeline: Pipeline, job_ids: Sequence[str]) -> list[tuple[int, str | None]]:
    """(HTTP status, state) of each job's status resource, without following the 303."""
    found = []
    for job_id in job_ids:
        async with pipeline.session.get(f"{pipeline.url}/jobs/{job_id}", allow_redirects=False) as response:
            body = await response.json(content_type=None)
            found.append((response.status, body.get("state")))
    return found


async def upload_restarted(
    broker: Broker,
    workdir: str | Path,
    *,
    jobs: int = 6,
    workers: int = 2,
    work: float = 0.5,
    down_s: float = 1.0,
    image: bytes | None = None,
    timeout: float = 60.0,
) -> RestartResult:
    """Upload a burst, stop the Upload service while the processor works on it, start it again, count.

    The service stays down at least ``down_s`` seconds and until the processor finished a job
    meanwhile: that ``job.done`` reaches the restarted service only through its persistent session. It comes back on the
    same work folder (its SQLite job store) and the same port, so every Location handed out
    before the stop still answers.
    """
    photo = image if image is not None else images.sample_photo()
    pipeline = await start_pipeline(broker, workdir, workers=workers, work=work)
    try:
        answers = await asyncio.gather(*(pipeline.upload(photo, f"user{i}") for i in range(jobs)))
        ids = [a.job_id for a in answers if a.status == 202 and a.job_id is not None]
        jobs_topic = pipeline.topics.jobs.removesuffix("+")
        if not await until(lambda: any(r.topic.startswith(jobs_topic) for r in pipeline.recorder.records), timeout):
            raise TimeoutError(f"no job event within {timeout:g} s: the burst never started")
        store = pipeline.upload_service.store
        unfinished = sum(not (job := store.get(j)) or not job.final for j in ids)
        stopped = time.perf_counter()

        def done_since(t: float) -> list[str]:
            return [str((e.data or {}).get("job_id")) for at, e in pipeline.recorder.events(JOB_DONE) if at > t]

        async def while_down() -> None:  # a job must finish while the consumer is away: only its session keeps the news
            await until(lambda: bool(done_since(stopped)), timeout)

        await pipeline.upload_service.restart(down_s, while_down=while_down)
        started = time.perf_counter()
        events_while_down = sum(stopped < r.t < started and r.topic.startswith(jobs_topic) for r in pipeline.recorder.records)
        done_while_down = len(set(done_since(stopped)) - set(done_since(started)))
        if not await pipeline.wait_done(ids, timeout):
            raise TimeoutError(f"jobs not finished {timeout:g} s after the restart: {pipeline.upload_service.store.states()}")
        await until(lambda: {n.job_id for n in pipeline.notifications()} >= set(ids), timeout)
        await until_quiet(lambda: len(pipeline.notifications()), QUIET_S, timeout)  # and then no duplicate follows
        statuses = await _statuses(pipeline, ids)
        notes = [n for n in pipeline.notifications() if n.job_id in set(ids)]
        result = RestartResult(
            jobs,
            len(ids),
            unfinished,
            events_while_down,
            done_while_down,
            started - stopped,
            sum(status in (200, 303) for status, _ in statuses),
            sum(status == 303 and state == "succeeded" for status, state in statuses),
            len({n.job_id for n in notes}),
            len(notes),
        )
    finally:
        await pipeline.stop()
    return result
