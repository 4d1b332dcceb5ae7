"""The lesson's reference system: the four services of lesson 07 as one :class:`~helpers.capstone.system.CapstoneSystem`.

:func:`start_pipeline` starts them on a per-run topic prefix: Storage (HTTP, one port per
caller so a drill sees who asked, :class:`~helpers.capstone.wire.RecordingStorage`), Upload
(HTTP, answers 202), the AI Image Processor (MQTT workers, :class:`ProcessorSettings`) and
Notification (MQTT, persistent session). :class:`ReferenceSystem` is watched from outside
like the learner's system of lab 07 (:class:`~helpers.capstone.system.WatchedSystem`), so
the drills of :mod:`helpers.capstone.drills` measure both by the same code; it also gives
the lesson the inside view it shows (the Upload service's store, the processor's stats, the outbox).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from helpers.capstone.jobs import Topics
from helpers.capstone.notifier import Notifier
from helpers.capstone.processor import Member, Processor, ProcessorSettings, ProcessorStats, start_processor
from helpers.capstone.system import WatchedSystem
from helpers.capstone.upload import UploadService, start_upload
from helpers.capstone.wire import RecordingStorage, start_recorder
from helpers.core.broker import Broker


@dataclass
class ProcessorHandle:
    """The reference processor as one restartable service (:class:`~helpers.capstone.system.ServiceHandle`).

    :meth:`kill` kills the workers holding a job right now (all of them when none does),
    like the crash of the process an image was in; :meth:`start` brings every dead worker
    back with its client id, so its persistent session, and the image it held, resume.
    """

    service: Processor

    @property
    def alive(self) -> bool:
        return any(member.alive for member in self.service.members)

    @property
    def mode(self) -> str:
        return self.service.mode

    @property
    def workers(self) -> int:
        return self.service.workers

    @property
    def stats(self) -> ProcessorStats:
        return self.service.stats

    @property
    def members(self) -> list[Member]:
        return self.service.members

    async def start(self) -> None:
        for member in self.service.members:
            if not member.alive:
                await self.service.restart(member.index)

    async def kill(self) -> Exception | None:
        busy = sorted(set(self.service.busy.values())) or [member.index for member in self.service.members]
        errors = [await self.service.kill(index) for index in busy]
        return next((error for error in errors if error is not None), None)

    def crashed(self) -> BaseException | None:
        return next(iter(self.service.crashed().values()), None)


@dataclass(kw_only=True)
class ReferenceSystem(WatchedSystem):
    """The running reference system: the four services, watched from outside, and the lesson's inside view."""

    upload_service: UploadService
    notifier: Notifier
    processor: ProcessorHandle
    storage_url: str
    """Storage's base URL for the lesson's own requests (recorded as the caller "client")."""

    @property
    def url(self) -> str:
        return self.upload_service.url

    def state(self, job_id: str) -> str | None:
        """The job's state in the Upload service's store (what ``GET /jobs/{id}`` would say now)."""
        job = self.upload_service.store.get(job_id)
        return job.state if job is not None else None

    def outbox(self) -> list[dict[str, Any]]:
        """The "e-mails" the Notification service wrote (JSON lines, never sent)."""
        return self.notifier.outbox()

    async def restart_upload(self, down_s: float = 0.0, *, while_down: Callable[[], Awaitable[object]] | None = None) -> None:
        """Stop the Upload service and start it again on its work folder and port (see ``UploadService.restart``)."""
        await self.upload_service.restart(down_s, while_down=while_down)

    def crashed(self) -> dict[str, BaseException]:
        errors = super().crashed()
        if (upload_error := self.upload_service.crashed()) is not None:
            errors["upload job-event consumer"] = upload_error
        return errors


def _collect(errors: dict[str, BaseException]) -> Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[None]]:
    """A stop that keeps what a service had died of (its return value) in ``errors`` instead of dropping it."""

    async def stopped(what: str, stop: Callable[[], Awaitable[Any]]) -> None:
        result = await stop()
        if isinstance(result, BaseException):
            errors[what] = result
        elif isinstance(result, dict):
            errors.update(result)

    return stopped


async def start_pipeline(
    broker: Broker,
    workdir: str | Path,
    settings: ProcessorSettings | None = None,
    *,
    prefix: str = "capstone",
    name: str = "capstone",
    **changes: Any,
) -> ReferenceSystem:
    """Start Storage, Upload, the AI Image Processor and Notification; returns once all are subscribed.

    Everything of the run lives under ``workdir/<run id>/`` and on topics under
    ``{prefix}/<run id>/``, so runs never see each other's files or messages. The processor
    runs with ``settings`` (:class:`ProcessorSettings`) and ``changes`` to them (``workers=2``).
    """
    topics = Topics.fresh(prefix)
    run_id = topics.prefix.rsplit("/", 1)[-1]
    folder = Path(workdir) / run_id
    settings = (settings or ProcessorSettings()).with_(**changes)
    stack = contextlib.AsyncExitStack()
    errors: dict[str, BaseException] = {}
    stopped = _collect(errors)
    try:
        storage = RecordingStorage(folder / "storage", name=f"{name}-storage-{run_id}")
        stack.push_async_callback(storage.stop)
        session = aiohttp.ClientSession()
        stack.push_async_callback(session.close)
        wire = await start_recorder(broker, topics, name=f"{name}-recorder-{run_id}")
        stack.push_async_callback(stopped, "recorder", wire.stop)
        upload = await start_upload(
            broker, topics, await storage.url("upload"), name=f"{name}-upload", work_dir=folder / "upload"
        )
        stack.push_async_callback(broker.end_sessions, upload.client_id, quietly=True)  # last: nobody resumes it
        stack.push_async_callback(stopped, "upload job-event consumer", upload.stop)
        notifier = Notifier(broker, topics, folder / "notifier", client_id=f"{name}-notifier-{run_id}", status_base=upload.url)
        await notifier.start()
        stack.push_async_callback(stopped, "notifier", notifier.stop)
        processor_settings = settings.with_(name=f"{name}-processor")
        processor = await start_processor(broker, topics, await storage.url("processor"), processor_settings)
        stack.push_async_callback(stopped, "processor", processor.stop)
        stack.push_async_callback(lambda: upload.service.stop())  # first out (the service of now, after any restart)
        client_url = await storage.url("client")
    except BaseException as exc:  # not swallowed: stop what did start, then re-raise
        await stack.aclose()
        for what, error in errors.items():
            exc.add_note(f"the pipeline's {what!r} had failed too: {type(error).__name__}: {error}")
        raise
    return ReferenceSystem(
        broker=broker,
        topics=topics,
        workdir=folder,
        storage=storage,
        recorder=wire.recorder,
        inbox=notifier.inbox,
        processor=ProcessorHandle(processor),
        notifier=notifier,
        session=session,
        _stack=stack,
        _errors=errors,
        upload_service=upload,
        storage_url=client_url,
    )


@contextlib.asynccontextmanager
async def reference_system(
    broker: Broker, workdir: str | Path, settings: ProcessorSettings | None = None, **changes: Any
) -> AsyncIterator[ReferenceSystem]:
    """The reference system for the length of an ``async with`` block (a drill's run); stopped after it."""
    system = await start_pipeline(broker, workdir, settings, **changes)
    async with system:
        yield system
