"""Lesson 05's two designs of "place an order": the Order service in front, three downstream services behind it.

* **sync** (:func:`start_sync`): the downstream services are HTTP services and the Order
  service calls each one, waiting for its answer, before it answers its caller.
* **async** (:func:`start_async`): the Order service publishes one ``order.placed`` event
  and answers ``202`` at once; the downstream services are MQTT consumers with persistent
  sessions, each a :class:`helpers.core.lifecycle.Restartable` that a fault kills and restarts.

:class:`Design` is the interface a scenario drives (``url``, ``faults``, ``take_down``,
``bring_back``, ``crashed``, ``stop``); the capstone's systems follow the same model.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import ClassVar, Literal

import aiohttp
import aiomqtt
from aiohttp import web

from helpers.choosing.head_to_head.effects import DEFAULT_WORK, Effects
from helpers.core import lifecycle
from helpers.core.broker import Broker
from helpers.core.http import Faults, Handler, Service, start_service
from helpers.core.messaging import Consumer, Event, SeenIds, manual_ack
from helpers.core.waiting import until
from helpers.core.worker_pool import run_pool

PATHS: dict[str, str] = {"inventory": "/reserve", "payment": "/charge", "notification": "/send"}
"""The HTTP path of each downstream service in the sync design (any other service: ``/<name>``)."""

DesignKind = Literal["sync", "async"]

SyncHandler = Callable[[web.Request, aiohttp.ClientSession, Mapping[str, str]], Awaitable[web.StreamResponse]]
"""The sync Order service's handler: ``(request, http, urls)``, where ``urls`` maps each
downstream service's name to the URL to POST the order to, in the order to call them."""

AsyncHandler = Callable[[web.Request, aiomqtt.Client, str], Awaitable[web.StreamResponse]]
"""The async Order service's handler: ``(request, mqtt, topic)``: publish on ``mqtt`` to ``topic``."""


def _effect_handler(effects: Effects, service: str) -> Handler:
    """The HTTP face of one downstream service: apply the effect, then answer 200."""

    async def handle(request: web.Request) -> web.Response:
        order = await request.json()
        await effects.apply(service, order)
        return web.json_response({"service": service, "order_id": order.get("order_id"), "ok": True})

    return handle


def _front(handler: Callable[[web.Request], Awaitable[web.StreamResponse]], received: dict[str, float]) -> Handler:
    """Wrap the learner's Order handler: note when each order arrived, then let it answer.

    aiohttp keeps the body it read, so the handler can still ``await request.json()``.
    """

    async def place(request: web.Request) -> web.StreamResponse:
        arrived = asyncio.get_running_loop().time()
        with contextlib.suppress(ValueError):  # not JSON: the handler answers that itself
            body = await request.json()
            if isinstance(body, dict) and "order_id" in body:
                received.setdefault(str(body["order_id"]), arrived)
        return await handler(request)

    return place


class Design:
    """A running design: the Order service in front, the downstream services behind it.

    ``faults`` holds one :class:`helpers.core.http.Faults` per downstream service; its
    ``latency`` slows that service in either design. Taking a service down is design
    specific (:meth:`take_down`, :meth:`bring_back`).
    """

    kind: ClassVar[DesignKind]

    def __init__(self, effects: Effects, name: str) -> None:
        self.effects = effects
        self.name = name
        self.in_progress_at_kill = 0
        """Events the service taken down was working on when it died (only a consumer dies mid-work)."""
        self.faults = {service: Faults() for service in effects.services}
        self.received: dict[str, float] = {}
        """When each order reached the Order service (loop time), by order id."""
        self.order_service: Service | None = None
        self._stack = contextlib.AsyncExitStack()

    @property
    def redelivered(self) -> int:
        """Deliveries beyond the first per event and consumer (only a design with consumers has any)."""
        return 0

    @property
    def url(self) -> str:
        """Where orders go in: ``POST {url}/orders``."""
        if self.order_service is None:
            raise RuntimeError("the design is not started")
        return self.order_service.url

    async def _open_front(self, call: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        """Start the Order service around the learner's handler; it stops first when the design stops."""
        self.order_service = await start_service(f"{self.name}-{self.kind}-orders", _front(call, self.received))
        self._stack.push_async_callback(self.order_service.stop)

    async def take_down(self, service: str) -> None:
        raise NotImplementedError

    async def bring_back(self, service: str) -> None:
        raise NotImplementedError

    def crashed(self) -> dict[str, BaseException]:
        """Downstream services that died of an error of their own (none for HTTP services)."""
        return {}

    def raise_crashed(self) -> None:
        """Raise what a downstream service died of, naming it."""
        lifecycle.raise_crashed(self.crashed(), f"the {self.kind} design's consumer")

    async def stop(self) -> None:
        """Stop the Order service, the downstream services and every connection."""
        await self._stack.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} services={self.effects.services}>"


class SyncDesign(Design):
    """The Order service calls each downstream HTTP service and waits for it."""

    kind = "sync"

    def __init__(self, effects: Effects, name: str) -> None:
        super().__init__(effects, name)
        self.urls: dict[str, str] = {}

    async def open_services(self, handler: SyncHandler) -> None:
        """Start the downstream HTTP services, then the Order service that calls them through ``handler``."""
        http = await self._stack.enter_async_context(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        for service in self.effects.services:
            handle = _effect_handler(self.effects, service)
            svc = await start_service(f"{self.name}-sync-{service}", handle, faults=self.faults[service])
            self._stack.push_async_callback(svc.stop)
            self.urls[service] = svc.url + PATHS.get(service, f"/{service}")

        async def call(request: web.Request) -> web.StreamResponse:
            return await handler(request, http, dict(self.urls))

        await self._open_front(call)

    async def take_down(self, service: str) -> None:
        """The service answers 503 at once to everything, as a sick instance behind a proxy does."""
        self.faults[service].down = True

    async def bring_back(self, service: str) -> None:
        self.faults[service].down = False


class AsyncDesign(Design):
    """The Order service publishes an event; each downstream service is an MQTT consumer.

    Each consumer is a small "process" (a :class:`~helpers.core.lifecycle.Restartable`):
    a task that opens its own connection with a persistent session (fixed client id,
    ``clean_session=False``), subscribes with QoS 1 and handles up to ``workers`` events at
    once (acks leave in arrival order). Taking it down kills the task, which closes the
    connection; the broker keeps the session and queues what arrives meanwhile. Bringing
    it back reconnects with the same client id and the queued events are delivered. An
    event that was being worked on when the consumer died is delivered again; the ids
    already applied (:class:`SeenIds`, kept across restarts as a database would) make that harmless.
    """

    kind = "async"

    def __init__(self, effects: Effects, name: str, *, broker: Broker, topic: str, workers: int) -> None:
        super().__init__(effects, name)
        self.broker, self.topic, self.workers = broker, topic, workers
        self.run_id = uuid.uuid4().hex[:6]
        self.client_ids = {service: f"h2h-{service}-{self.run_id}" for service in effects.services}
        self.seen = {service: SeenIds() for service in effects.services}
        self.consumers = {service: lifecycle.Restartable() for service in effects.services}
        self.lives: list[Consumer] = []
        """Every consumer life so far (a restart is a new life), for delivery counts."""
        self.in_progress = dict.fromkeys(effects.services, 0)
        """Events each consumer is working on right now (started, not finished)."""
        self.cut_short = dict.fromkeys(effects.services, 0)
        """Events a kill interrupted in each consumer's handler (started, cancelled before the end)."""

    async def open_services(self, handler: AsyncHandler) -> None:
        """Start the Order service that publishes through ``handler``, then one consumer per downstream service."""
        publisher = await self._stack.enter_async_context(self.broker.client(f"{self.name}-orders-{self.run_id}"))

        async def call(request: web.Request) -> web.StreamResponse:
            return await handler(request, publisher, self.topic)

        # closed in reverse: the Order service, then the consumers, then their sessions, then the publisher
        self._stack.push_async_callback(self.broker.end_sessions, *self.client_ids.values())
        self._stack.push_async_callback(self.kill_consumers)
        await self._open_front(call)
        for service in self.effects.services:
            await self.start_consumer(service)

    def _handler(self, service: str) -> Callable[[Event], Awaitable[None]]:
        faults = self.faults[service]

        async def handle(event: Event) -> None:
            self.in_progress[service] += 1
            try:
                delay = faults.delay()
                if delay:
                    await asyncio.sleep(delay)  # the same latency knob the HTTP version's middleware reads
                await self.effects.apply(service, event.data or {})
            except asyncio.CancelledError:
                self.cut_short[service] += 1  # killed in the middle of this event: never acknowledged
                raise
            finally:
                self.in_progress[service] -= 1

        return handle

    async def _life(self, service: str, ready: asyncio.Event) -> None:
        """One life of the consumer: connect (resuming the session), subscribe, handle events until killed."""
        async with manual_ack(self.broker.client(self.client_ids[service], clean_session=False)) as client:
            consumer = Consumer(client, self.topic, self._handler(service), dedupe=self.seen[service])
            self.lives.append(consumer)
            await run_pool(consumer, self.workers, ready=ready)

    async def start_consumer(self, service: str) -> None:
        """Start (or restart) one consumer; return once it is subscribed."""
        await self.consumers[service].launch(self._life, service)

    async def take_down(self, service: str, *, busy_within: float = 2.0) -> None:
        """Kill the consumer while it works: its connection closes, its session (and what arrives for it) stays on the broker.

        A consumer killed while idle has nothing in progress, so nothing can come again; a
        crash usually strikes a busy process. The kill waits (up to ``busy_within`` seconds)
        until the consumer has an event in progress, and records how many the kill interrupted.
        """
        await until(lambda: self.in_progress[service] > 0, busy_within)
        before = self.cut_short[service]
        error = await self.consumers[service].kill()
        # counted as the kill lands, not just before it: an event that finished (and was acked) in between is not in progress
        self.in_progress_at_kill = self.cut_short[service] - before
        self.faults[service].down = True
        if error is not None:
            error.add_note(f"the {service!r} consumer had failed before it was taken down")
            raise error

    async def bring_back(self, service: str) -> None:
        """Restart the consumer with the same client id: the broker delivers what it kept."""
        await self.start_consumer(service)
        self.faults[service].down = False

    def crashed(self) -> dict[str, BaseException]:
        return {name: error for name, life in self.consumers.items() if (error := life.crashed()) is not None}

    @property
    def redelivered(self) -> int:
        """Deliveries beyond the first per event and consumer: events that were in progress (or
        done but not yet acknowledged) when a consumer died, delivered again after its restart."""
        received = sum(c.stats.received for c in self.lives)
        return received - sum(len(seen) for seen in self.seen.values())

    async def kill_consumers(self) -> None:
        """Kill every consumer; raise what any of them had died of."""
        errors = {name: error for name, life in self.consumers.items() if (error := await life.kill()) is not None}
        lifecycle.raise_crashed(errors, "the async design's consumer")


async def _started(design: Design, start: Awaitable[None]) -> None:
    """Await ``start``; if it fails, stop what did start, then re-raise."""
    try:
        await start
    except BaseException:  # not swallowed: stop what did start, then re-raise
        await design.stop()
        raise


async def start_sync(handler: SyncHandler, *, work: Mapping[str, float] | None = None, name: str = "h2h") -> SyncDesign:
    """Start one HTTP service per entry of ``work`` and an Order service answered by ``handler``.

    The handler gets ``(request, http, urls)``: an aiohttp session with no connection
    limit, and each downstream service's URL in the order the business needs them.
    """
    design = SyncDesign(Effects(DEFAULT_WORK if work is None else work), name)
    await _started(design, design.open_services(handler))
    return design


async def start_async(  # noqa: PLR0913  lesson 05 passes these knobs by keyword
    broker: Broker,
    handler: AsyncHandler,
    topic: str,
    *,
    work: Mapping[str, float] | None = None,
    workers: int = 16,
    name: str = "h2h",
) -> AsyncDesign:
    """Start one consumer per entry of ``work`` on ``topic`` and an Order service answered by ``handler``.

    The handler gets ``(request, mqtt, topic)``: the Order service's own MQTT client and
    the topic its consumers listen on. ``workers`` events are handled at once per consumer
    (HTTP services serve concurrently too, so both designs have room for the load).
    """
    effects = Effects(DEFAULT_WORK if work is None else work)
    design = AsyncDesign(effects, name, broker=broker, topic=topic, workers=workers)
    await _started(design, design.open_services(handler))
    return design
