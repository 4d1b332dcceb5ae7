"""The design lesson 07 argues against: ``POST /images`` processes the image inside the request.

It answers ``200`` when the renditions are stored. Same validation, same storage, same
Pillow work as the reference system (:mod:`helpers.capstone.pipeline`), so the differences
the lesson measures come from the communication style alone. It has only the request side
of :class:`helpers.capstone.system.CapstoneSystem` (:class:`~helpers.capstone.system.Uploads`):
no events, no notifications, nothing to kill.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from helpers.capstone import images
from helpers.capstone.jobs import DONE
from helpers.capstone.processor import result_key
from helpers.capstone.storage import StorageClient, start_storage
from helpers.capstone.upload import USER_PATTERN, original_key, read_image_body
from helpers.capstone.wire import PostsImages
from helpers.core.http import Service, start_service
from helpers.core.problems import PROBLEM_BASE, problem, problem_for, problems_everywhere


@dataclass
class SyncSystem(PostsImages):
    """The naive design: ``POST /images`` does the processing and answers 200 when it is done (no idempotency keys)."""

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
) -> SyncSystem:
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
    return SyncSystem(storage, service, aiohttp.ClientSession(), client, timings, done_at)
