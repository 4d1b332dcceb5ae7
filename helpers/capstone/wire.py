"""Watching a running capstone system from outside: its HTTP answers, its messages, its Storage calls.

Every adapter of :class:`helpers.capstone.system.CapstoneSystem` (the lesson's reference
services, the learner's code in lab 07) is watched with the same three instruments, so a
drill judges both by the same evidence:

* :func:`post_image` / :class:`UploadAnswer`: ``POST /images`` as any HTTP client sends it;
* :class:`Recorder` / :func:`start_recorder`: every message on the run's topics, with its arrival time;
* :class:`RecordingStorage`: one Storage folder served on a port *per caller*, so each
  request says who made it (the upload or the processor), which object, and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from helpers.capstone.jobs import Topics
from helpers.capstone.storage import LOCKS, STORE, ObjectStore, StoredObject, storage_app
from helpers.core import lifecycle
from helpers.core.broker import Broker
from helpers.core.http import Faults, Service, start_service
from helpers.core.messaging import Event, InvalidEvent, decode
from helpers.core.receive import subscribed_messages
from helpers.core.reconnect import reconnecting

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


class UploadTarget(Protocol):
    """What :func:`post_image` posts through: an HTTP session and the upload service's base URL."""

    @property
    def session(self) -> aiohttp.ClientSession: ...

    @property
    def url(self) -> str: ...


async def post_image(
    target: UploadTarget, data: bytes, user: str, *, idempotency_key: str | None = None, timeout: float | None = None
) -> UploadAnswer:
    """``POST {target.url}/images?user=USER`` with the bytes; raises ``TimeoutError`` after ``timeout`` seconds."""
    session, base_url = target.session, target.url
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


class PostsImages:
    """``post`` for every design's request side (an :class:`UploadTarget`): the same HTTP call whatever serves it."""

    async def post(
        self: UploadTarget, data: bytes, user: str, *, idempotency_key: str | None = None, timeout: float | None = 10.0
    ) -> UploadAnswer:
        """Upload like a client would: ``POST /images?user=USER`` over HTTP; the answer is 202 (or 200 from the
        synchronous design, after the processing) or a problem."""
        return await post_image(self, data, user, idempotency_key=idempotency_key, timeout=timeout)


# --- every message of a run -------------------------------------------------------------------


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
        self._events: list[tuple[float, Event]] = []
        """The records that are events, decoded once as they arrive (drills poll them every few ms)."""

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Connect, subscribe, record until cancelled (or until the connection is lost: run it with ``reconnecting``)."""
        async with self.broker.client(self.client_id) as client:
            async for message in subscribed_messages(client, self.topic, qos=1, ready=ready):
                payload = message.payload if isinstance(message.payload, bytes | bytearray) else str(message.payload).encode()
                record = Record(time.perf_counter(), str(message.topic), bytes(payload))
                self.records.append(record)
                if (event := record.event()) is not None:
                    self._events.append((record.t, event))

    def events(self, kind: str | None = None, job_id: str | None = None) -> list[tuple[float, Event]]:
        """(arrival time, event) of every event of type ``kind`` (any if None), for ``job_id`` if given."""
        return [
            (t, event)
            for t, event in self._events
            if (kind is None or event.type == kind) and (job_id is None or (event.data or {}).get("job_id") == job_id)
        ]

    def on(self, topic: str) -> list[Record]:
        """The records of one topic, oldest first."""
        return [r for r in self.records if r.topic == topic]


@dataclass
class Wire:
    """Every message on a run's topics since it started (a :class:`Recorder` that runs)."""

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
    """Subscribe to every topic of the run (``topics.everything``); returns once subscribed.

    A lost connection is made again (``reconnecting``): a run on a real broker keeps its record.
    """
    stack = contextlib.AsyncExitStack()
    try:
        recorder = Recorder(broker, name or f"recorder-{uuid.uuid4().hex[:8]}", topics.everything)
        task = await lifecycle.start(reconnecting, recorder.run)
        stack.push_async_callback(lifecycle.kill, task)
    except BaseException:  # not swallowed: close what did open, then re-raise
        await stack.aclose()
        raise
    return Wire(recorder, stack)


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
        self.faults = Faults()
        """One set of fault knobs for every port (``storage.faults.down = True``: Storage is down for everyone)."""
        self._held: dict[tuple[str, str, str], asyncio.Event] = {}

    async def url(self, caller: str) -> str:
        """The base URL for ``caller`` (started on first use; the same URL after that)."""
        if caller not in self._services:
            app = storage_app(self.root)
            app[STORE] = self._store  # one folder, one per-key lock table, whichever port a request used
            app[LOCKS] = self._locks
            app.middlewares.insert(0, self._recorder(caller))
            self._services[caller] = await start_service(f"{self.name}-{caller}", app, faults=self.faults)
        return self._services[caller].url

    def _recorder(self, caller: str) -> Any:
        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            started, status = time.perf_counter(), 500
            try:
                response: web.StreamResponse = await handler(request)
                status = response.status
                if (gate := self._held.pop((caller, request.method, request.match_info.get("key", "")), None)) is not None:
                    await gate.wait()  # done, but the caller hears nothing yet: it can be killed right after its write
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                key = request.match_info.get("key", request.path)
                size = request.content_length or 0
                self.calls.append(StorageCall(caller, request.method, key, status, size, started, time.perf_counter()))

        return record

    def hold(self, caller: str, method: str, key: str) -> asyncio.Event:
        """Do ``caller``'s next ``method`` of ``key``, then hold its answer until the returned event is set.

        The write lands (``head(key)`` sees it) and the caller waits: a check can kill it
        between that step and its next one. Set the event when done (a clean-up does).
        """
        gate = asyncio.Event()
        self._held[(caller, method, key)] = gate
        return gate

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
