"""One business operation, "place an order", built both ways and measured under the same load.

An order needs three things from three services: Inventory reserves the items, Payment
charges the card, Notification sends the confirmation. The three services, their work
per order and their fault knobs are the same in both designs; only the way the Order
service reaches them differs:

* **sync** (:func:`start_sync`): Inventory, Payment and Notification are HTTP services and
  the Order service calls them, waiting for each answer, before it answers its caller.
* **async** (:func:`start_async`): the Order service publishes one ``order.placed`` event
  (QoS 1) and answers ``202 Accepted`` at once; Inventory, Payment and Notification are
  MQTT consumers (:class:`helpers.core.messaging.Consumer`, persistent sessions) that each
  apply their effect when the event reaches them.

The Order service's handler is the learner's code: the notebook writes both handlers and
passes them in. This module holds everything around them: the downstream services, the
open-loop load (:func:`helpers.core.measure.open_loop`), the faults (a downstream made
slow, or taken down and brought back), the measurements, the summary table and the plots.

What is measured, per order, for both designs:

* what the caller waits for: from the intended send time to the Order service's answer;
* when the work is really done: from the intended send time until all three effects were
  applied (:class:`Effects` records every effect, whichever design applied it);
* what a fault costs: errors the caller saw, orders never done, orders left half done
  (some effects applied, not all), and how long after a dead service returns the work
  has caught up again.

Timestamps are the event loop's clock (``loop.time()``), the one
:func:`helpers.core.measure.open_loop` stamps its samples with.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiomqtt
import matplotlib.pyplot as plt
import numpy as np
from aiohttp import web
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from helpers.core import lifecycle
from helpers.core.broker import Broker
from helpers.core.http import Faults, Handler, Service, start_service
from helpers.core.measure import LoadRun, Summary, open_loop, percentile, summarize
from helpers.core.messaging import Consumer, Event, SeenIds, manual_ack
from helpers.core.plots import COLORS, axes, timeline
from helpers.core.waiting import until
from helpers.core.worker_pool import run_pool

DEFAULT_WORK: dict[str, float] = {"inventory": 0.02, "payment": 0.04, "notification": 0.01}
"""Seconds of (simulated, I/O-bound) work per order in each downstream service."""

PATHS: dict[str, str] = {"inventory": "/reserve", "payment": "/charge", "notification": "/send"}
"""The HTTP path of each downstream service in the sync design (any other service: ``/<name>``)."""

ITEMS: dict[str, float] = {"espresso cup": 9.5, "teapot": 24.0, "coffee grinder": 59.0, "milk jug": 14.0}
"""What the generated orders buy, and the unit price."""

SyncHandler = Callable[[web.Request, aiohttp.ClientSession, Mapping[str, str]], Awaitable[web.StreamResponse]]
"""The sync Order service's handler: ``(request, http, urls)``, where ``urls`` maps each
downstream service's name to the URL to POST the order to, in the order to call them."""

AsyncHandler = Callable[[web.Request, aiomqtt.Client, str], Awaitable[web.StreamResponse]]
"""The async Order service's handler: ``(request, mqtt, topic)``: publish on ``mqtt`` to ``topic``."""


# --- the three downstream services' effects: the one truth both designs are judged by ------


@dataclass(frozen=True)
class Applied:
    """One effect applied to one order; times are the event loop's clock (seconds)."""

    service: str
    order_id: str
    started: float
    finished: float


class Effects:
    """Every effect the downstream services applied, per service and order.

    The work is an ``asyncio.sleep`` standing in for I/O (the stock database, the payment
    provider, the mail server). An effect is recorded once per order and service; a
    second application of the same one (which the async design's dedupe should prevent)
    is counted in :attr:`repeats` instead of overwriting the first.
    """

    def __init__(self, work: Mapping[str, float]) -> None:
        self.work = dict(work)
        self.applied: dict[str, dict[str, Applied]] = {service: {} for service in self.work}
        self.repeats = 0

    @property
    def services(self) -> list[str]:
        return list(self.work)

    async def apply(self, service: str, order: Mapping[str, Any]) -> None:
        """Do ``service``'s work on ``order`` and record it."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(self.work[service])
        order_id = str(order.get("order_id"))
        if order_id in self.applied[service]:
            self.repeats += 1
            return
        self.applied[service][order_id] = Applied(service, order_id, started, loop.time())

    def done_at(self, order_id: str) -> float | None:
        """When the last of the order's effects finished, or None while one is missing."""
        applied = [self.applied[s].get(order_id) for s in self.work]
        return max(a.finished for a in applied if a is not None) if all(applied) else None

    def steps_done(self, order_id: str) -> int:
        """How many of the services have applied their effect to this order."""
        return sum(order_id in self.applied[s] for s in self.work)

    def first_started(self, order_id: str) -> float | None:
        """When the first downstream service started on the order (None: none has yet)."""
        starts = [self.applied[s][order_id].started for s in self.work if order_id in self.applied[s]]
        return min(starts, default=None)


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


# --- the two designs --------------------------------------------------------------------


class Design:
    """A running design: the Order service in front, the downstream services behind it.

    ``faults`` holds one :class:`helpers.core.http.Faults` per downstream service; its
    ``latency`` slows that service in either design. Taking a service down is design
    specific (:meth:`take_down`, :meth:`bring_back`).
    """

    kind = "?"

    def __init__(
        self, order_service: Service, effects: Effects, faults: dict[str, Faults], stack: contextlib.AsyncExitStack
    ) -> None:
        self.order_service = order_service
        self.effects = effects
        self.faults = faults
        self.received: dict[str, float] = {}
        self._stack = stack

    @property
    def url(self) -> str:
        """Where orders go in: ``POST {url}/orders``."""
        return self.order_service.url

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

    def __init__(
        self, order_service: Service, effects: Effects, faults: dict[str, Faults], stack: contextlib.AsyncExitStack
    ) -> None:
        super().__init__(order_service, effects, faults, stack)
        self.urls: dict[str, str] = {}

    async def take_down(self, service: str) -> None:
        """The service answers 503 at once to everything, as a sick instance behind a proxy does."""
        self.faults[service].down = True

    async def bring_back(self, service: str) -> None:
        self.faults[service].down = False


async def start_sync(handler: SyncHandler, *, work: Mapping[str, float] | None = None, name: str = "h2h") -> SyncDesign:
    """Start one HTTP service per entry of ``work`` and an Order service answered by ``handler``.

    The handler gets ``(request, http, urls)``: an aiohttp session with no connection
    limit, and each downstream service's URL in the order the business needs them.
    """
    effects = Effects(DEFAULT_WORK if work is None else work)
    faults = {service: Faults() for service in effects.services}
    stack = contextlib.AsyncExitStack()
    try:
        http = await stack.enter_async_context(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        urls = {}
        for service in effects.services:
            svc = await start_service(f"{name}-sync-{service}", _effect_handler(effects, service), faults=faults[service])
            stack.push_async_callback(svc.stop)
            urls[service] = svc.url + PATHS.get(service, f"/{service}")
        received: dict[str, float] = {}

        async def call(request: web.Request) -> web.StreamResponse:
            return await handler(request, http, dict(urls))

        order_service = await start_service(f"{name}-sync-orders", _front(call, received))
        stack.push_async_callback(order_service.stop)
    except BaseException:  # not swallowed: stop what did start, then re-raise
        await stack.aclose()
        raise
    design = SyncDesign(order_service, effects, faults, stack)
    design.urls, design.received = urls, received
    return design


class AsyncDesign(Design):
    """The Order service publishes an event; each downstream service is an MQTT consumer.

    Each consumer is a small "process": a task that opens its own connection with a
    persistent session (fixed client id, ``clean_session=False``), subscribes with QoS 1
    and handles up to ``workers`` events at once (acks leave in arrival order). Taking it
    down cancels the task, which closes the connection; the broker keeps the session and
    queues what arrives meanwhile. Bringing it back reconnects with the same client id
    and the queued events are delivered. An event that was being worked on when the
    consumer died is delivered again; the ids already applied (:class:`SeenIds`, kept
    across restarts as a database would) make that harmless.
    """

    kind = "async"

    def __init__(
        self,
        order_service: Service,
        effects: Effects,
        faults: dict[str, Faults],
        stack: contextlib.AsyncExitStack,
        *,
        broker: Broker,
        topic: str,
        workers: int,
        run_id: str,
    ) -> None:
        super().__init__(order_service, effects, faults, stack)
        self.broker, self.topic, self.workers = broker, topic, workers
        self.client_ids = {service: f"h2h-{service}-{run_id}" for service in effects.services}
        self.seen = {service: SeenIds() for service in effects.services}
        self.lives: list[Consumer] = []
        """Every consumer life so far (a restart is a new life), for delivery counts."""
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.in_progress = dict.fromkeys(effects.services, 0)
        """Events each consumer is working on right now (started, not finished)."""
        self.in_progress_at_kill = 0
        """Events the consumer taken down was working on when it died (they were never acknowledged)."""

    def _handler(self, service: str) -> Callable[[Event], Awaitable[None]]:
        faults = self.faults[service]

        async def handle(event: Event) -> None:
            self.in_progress[service] += 1
            try:
                delay = faults.delay()
                if delay:
                    await asyncio.sleep(delay)  # the same latency knob the HTTP version's middleware reads
                await self.effects.apply(service, event.data or {})
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
        self.tasks[service] = await lifecycle.start(self._life, service)

    async def take_down(self, service: str, *, busy_within: float = 2.0) -> None:
        """Kill the consumer while it works: its connection closes, its session (and what arrives for it) stays on the broker.

        A consumer killed while idle has nothing in progress, so nothing can come again; a
        crash usually strikes a busy process. The kill waits (up to ``busy_within`` seconds)
        until the consumer has an event in progress, and records how many it had.
        """
        await until(lambda: self.in_progress[service] > 0, busy_within)
        self.in_progress_at_kill = self.in_progress[service]
        task = self.tasks.pop(service)
        error = await lifecycle.kill(task)
        self.faults[service].down = True
        if error is not None:
            error.add_note(f"the {service!r} consumer had failed before it was taken down")
            raise error

    async def bring_back(self, service: str) -> None:
        """Restart the consumer with the same client id: the broker delivers what it kept."""
        await self.start_consumer(service)
        self.faults[service].down = False

    def crashed(self) -> dict[str, BaseException]:
        return {
            name: error
            for name, task in self.tasks.items()
            if task.done() and not task.cancelled() and (error := task.exception()) is not None
        }

    @property
    def redelivered(self) -> int:
        """Deliveries beyond the first per event and consumer: events that were in progress (or
        done but not yet acknowledged) when a consumer died, delivered again after its restart."""
        received = sum(c.stats.received for c in self.lives)
        return received - sum(len(seen) for seen in self.seen.values())

    async def kill_consumers(self) -> None:
        """Kill every consumer; raise what any of them had died of."""
        errors: dict[str, BaseException] = {}
        for name, task in list(self.tasks.items()):
            error = await lifecycle.kill(task)
            if error is not None:
                errors[name] = error
        self.tasks.clear()
        lifecycle.raise_crashed(errors, "the async design's consumer")

    async def forget_sessions(self) -> None:
        """Connect once with a clean session per client id: the broker drops the stored sessions."""
        for client_id in self.client_ids.values():
            async with self.broker.client(client_id, clean_session=True):
                pass


async def start_async(
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
    faults = {service: Faults() for service in effects.services}
    stack = contextlib.AsyncExitStack()
    run_id = uuid.uuid4().hex[:6]
    try:
        publisher = await stack.enter_async_context(broker.client(f"{name}-orders-{run_id}"))
        received: dict[str, float] = {}

        async def call(request: web.Request) -> web.StreamResponse:
            return await handler(request, publisher, topic)

        order_service = await start_service(f"{name}-async-orders", _front(call, received))
        design = AsyncDesign(order_service, effects, faults, stack, broker=broker, topic=topic, workers=workers, run_id=run_id)
        design.received = received
        # closed in reverse: the Order service, then the consumers, then their sessions, then the publisher
        stack.push_async_callback(design.forget_sessions)
        stack.push_async_callback(design.kill_consumers)
        stack.push_async_callback(order_service.stop)
        for service in effects.services:
            await design.start_consumer(service)
    except BaseException:  # not swallowed: stop what did start, then re-raise
        await stack.aclose()
        raise
    return design


# --- the workload: the same orders, the same schedule, for both designs ----------------


@dataclass(frozen=True)
class Workload:
    """An open-loop load: ``count`` orders at ``rate`` per second, contents drawn from ``seed``."""

    rate: float = 20.0
    count: int = 40
    seed: int = 5
    timeout_s: float = 2.0
    """A caller gives up on an answer after this long (counted as an error)."""

    def orders(self) -> list[dict[str, Any]]:
        """The orders, identical on every call with the same seed."""
        rng = random.Random(self.seed)
        orders = []
        for i in range(self.count):
            item = rng.choice(sorted(ITEMS))
            qty = rng.randint(1, 3)
            orders.append({"order_id": f"order-{i:03d}", "item": item, "qty": qty, "amount": round(ITEMS[item] * qty, 2)})
        return orders

    @property
    def duration_s(self) -> float:
        """How long the orders take to send."""
        return self.count / self.rate


class OrderRefused(RuntimeError):
    """The Order service answered with an error status; the message has the status and why."""


async def _post(session: aiohttp.ClientSession, url: str, order: Mapping[str, Any]) -> Any:
    async with session.post(f"{url}/orders", json=order) as answer:
        text = await answer.text()
        if answer.status >= 300:
            raise OrderRefused(f"HTTP {answer.status}: {text[:120]}")
        return await answer.json(content_type=None) if text else None


async def place_orders(url: str, workload: Workload) -> tuple[LoadRun, list[str]]:
    """POST the workload's orders to ``url``/orders on its open-loop schedule.

    Returns the run (one sample per order, in send order) and the order ids in the same order.
    """
    pending = iter(workload.orders())
    ids: list[str] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        def call() -> Awaitable[Any]:
            order = next(pending)  # taken when open_loop makes the call, so ids[i] is sample i's order
            ids.append(order["order_id"])
            return _post(session, url, order)

        run = await open_loop(call, rate=workload.rate, count=workload.count, timeout=workload.timeout_s)
    for sample, order_id in zip(run.samples, ids, strict=True):
        answered = sample.value.get("order_id") if sample.ok and isinstance(sample.value, dict) else None
        if answered is not None and answered != order_id:
            raise RuntimeError(f"sample for {order_id} was answered for {answered}: the pairing of samples and orders broke")
    return run, ids


# --- scenarios and results ---------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """What goes wrong during the run: one service slower, or one service down for a while."""

    name: str
    slow: str | None = None
    """This service takes ``slow_by_s`` longer for every order."""
    slow_by_s: float = 0.3
    down: str | None = None
    """This service is down from ``down_at_s`` after the first order, for ``down_for_s``."""
    down_at_s: float = 1.0
    down_for_s: float = 3.0


HEALTHY = Scenario("healthy")
SLOW_PAYMENT = Scenario("payment slow", slow="payment", slow_by_s=0.3)
SLOW_THEN_DOWN = Scenario("payment slow, then down", slow="payment", slow_by_s=0.3, down="payment", down_at_s=1.0, down_for_s=3.0)
"""A payment provider that is slow (+300 ms per charge) and then dies for 3 s: it dies with charges in progress."""


@dataclass
class Result:
    """One design under one scenario: the caller's samples and every effect applied."""

    design: str
    scenario: Scenario
    workload: Workload
    run: LoadRun
    order_ids: list[str]
    effects: Effects
    received: dict[str, float]
    down_window: tuple[float, float] | None = None
    """Loop times when the service went down and came back (None: no outage)."""
    redelivered: int = 0
    """Deliveries beyond the first per event and consumer, after a consumer restart (async only)."""
    in_progress_at_kill: int = 0
    """Events the killed consumer was working on when it died (async only; they come again)."""

    @property
    def t0(self) -> float:
        """The first order's intended send time: time zero of the plots."""
        return self.run.samples[0].intended

    @property
    def caller(self) -> Summary:
        """What the caller saw: answer latency from the intended send time, errors, answers per second."""
        return self.run.summary()

    @property
    def errors(self) -> int:
        return sum(not s.ok for s in self.run.samples)

    def completions(self) -> list[tuple[str, float, float]]:
        """(order id, intended send time, done time) of every order whose three effects were applied."""
        pairs = zip(self.order_ids, self.run.samples, strict=True)
        return [(oid, s.intended, d) for oid, s in pairs if (d := self.effects.done_at(oid)) is not None]

    @property
    def done(self) -> int:
        """Orders with every effect applied."""
        return len(self.completions())

    @property
    def not_done(self) -> int:
        """Orders that never got all their effects (lost work, or work handed back to the caller as an error)."""
        return len(self.order_ids) - self.done

    @property
    def half_done(self) -> int:
        """Orders with some effects applied and not all: stock reserved and nobody charged, say."""
        total = len(self.effects.services)
        return sum(0 < self.effects.steps_done(oid) < total for oid in self.order_ids)

    def half_done_at(self, when: float) -> int:
        """Orders that were half done at loop time ``when``: some effects finished by then, not all."""
        total = len(self.effects.services)
        count = 0
        for oid in self.order_ids:
            finished = sum(
                1 for s in self.effects.services if (a := self.effects.applied[s].get(oid)) is not None and a.finished <= when
            )
            count += 0 < finished < total
        return count

    def finished_before(self, first: str, then: str) -> int:
        """Orders whose ``first`` effect finished before their ``then`` effect (e.g. notified before paid)."""
        applied_first, applied_then = self.effects.applied[first], self.effects.applied[then]
        both = [oid for oid in self.order_ids if oid in applied_first and oid in applied_then]
        return sum(applied_first[oid].finished < applied_then[oid].finished for oid in both)

    @property
    def done_s(self) -> list[float]:
        """Per done order, seconds from its intended send time until its last effect."""
        return [done - intended for _, intended, done in self.completions()]

    @property
    def done_summary(self) -> Summary:
        """Percentiles of :attr:`done_s` (in ms, like the caller's)."""
        return summarize(self.done_s)

    @property
    def done_per_s(self) -> float:
        """Orders completed per second, from the first intended send to the last completion."""
        done = self.completions()
        if not done:
            return 0.0
        span = max(d for _, _, d in done) - self.t0
        return len(done) / span if span > 0 else math.nan

    @property
    def handoff_ms(self) -> float:
        """p50 time from the Order service receiving an order until a downstream service starts on it.

        The cost of handing the work over: an HTTP call in the sync design, a publish, the
        broker and a delivery in the async one (the downstream's own work is not in it).
        """
        gaps = [
            (started - self.received[oid]) * 1000
            for oid in self.order_ids
            if oid in self.received and (started := self.effects.first_started(oid)) is not None
        ]
        return percentile(gaps, 50)

    @property
    def waiting_at_return(self) -> list[tuple[str, float, float]]:
        """After an outage: the orders accepted before the service returned and not done yet at
        that moment, as (order id, intended send time, done time or NaN)."""
        if self.down_window is None:
            return []
        back = self.down_window[1]
        waiting = []
        for oid, sample in zip(self.order_ids, self.run.samples, strict=True):
            done = self.effects.done_at(oid)
            if sample.ok and sample.intended < back and (done is None or done > back):
                waiting.append((oid, sample.intended, math.nan if done is None else done))
        return waiting

    @property
    def caught_up_s(self) -> float | None:
        """After an outage: seconds from the service's return until every order that was waiting
        then was done (0.0: nothing was waiting; NaN: one never got done). None without an outage."""
        if self.down_window is None:
            return None
        back = self.down_window[1]
        gaps = [done - back for _, _, done in self.waiting_at_return]
        return math.nan if any(math.isnan(g) for g in gaps) else max(gaps, default=0.0)

    def as_row(self) -> dict[str, object]:
        """One row of the summary table; latencies (caller, done, hand-off) in ms.

        Every percentile stands beside the count it is over and the count it leaves out:
        caller latencies are over the answered orders (``errors`` beside them), done
        latencies over the orders done (``not done`` beside them). A tail over fewer than
        :data:`helpers.core.measure.P99_MIN_SAMPLES` values says "max", not p99.
        """
        caller, done = self.caller, self.done_summary
        caught_up = self.caught_up_s
        return {
            "design": self.design,
            "scenario": self.scenario.name,
            "answered": caller.answered,
            "errors": self.errors,
            "caller p50": _ms(caller.p50_ms),
            "caller p99": caller.tail_cell(),
            "done": self.done,
            "not done": self.not_done,
            "done p50": _ms(done.p50_ms),
            "done p99": done.tail_cell(),
            "half done": self.half_done,
            "done/s": _ms(self.done_per_s),
            "catch-up s": "" if caught_up is None else _ms(caught_up, 2),
            "hand-off": _ms(self.handoff_ms, 2),
        }

    def caller_line(self) -> str:
        """The caller's side in one line: how many answered, p50 and p99 (or max), and the errors beside them."""
        caller = self.caller
        label, tail = caller.tail()
        return (
            f"{caller.answered} answered, caller p50 {_ms(caller.p50_ms)} ms, {label} {_ms(tail)} ms; "
            f"{self.errors} error(s), not in those figures"
        )

    def done_line(self) -> str:
        """The work's side in one line: how many done, p50 and p99 (or max) until done, and the orders not done."""
        done = self.done_summary
        label, tail = done.tail()
        return (
            f"{self.done} done, done p50 {_ms(done.p50_ms)} ms, {label} {_ms(tail)} ms; "
            f"{self.not_done} not done, not in those figures"
        )


def _ms(value: float, digits: int = 1) -> float | str:
    """A number rounded for a table, or "-" when there is none (NaN: nothing was answered or done)."""
    return "-" if math.isnan(value) else round(value, digits)


async def run_design(design: Design, scenario: Scenario, workload: Workload, *, done_timeout: float = 15.0) -> Result:
    """Send the workload to ``design`` while ``scenario`` happens; wait until the accepted work is done.

    Every order the Order service accepted is waited for (up to ``done_timeout`` seconds
    after the last send); an order still not done then counts as not done.
    """
    loop = asyncio.get_running_loop()
    window: list[float] = []
    if scenario.slow is not None:
        design.faults[scenario.slow].latency = scenario.slow_by_s

    async def outage(service: str) -> None:
        await asyncio.sleep(scenario.down_at_s)  # a scripted clock: the outage starts at a set time...
        await design.take_down(service)
        window.append(loop.time())
        await asyncio.sleep(scenario.down_for_s)  # ...and lasts a set time
        await design.bring_back(service)
        window.append(loop.time())

    try:
        async with asyncio.TaskGroup() as group:
            if scenario.down is not None:
                group.create_task(outage(scenario.down))
            loading = group.create_task(place_orders(design.url, workload))
        run, ids = loading.result()
        accepted = [oid for oid, s in zip(ids, run.samples, strict=True) if s.ok]
        await until(lambda: all(design.effects.done_at(o) is not None for o in accepted) or bool(design.crashed()), done_timeout)
        design.raise_crashed()
    finally:
        for faults in design.faults.values():
            faults.reset()
    redelivered, in_progress = (design.redelivered, design.in_progress_at_kill) if isinstance(design, AsyncDesign) else (0, 0)
    down = (window[0], window[1]) if len(window) == 2 else None
    received = dict(design.received)
    return Result(design.kind, scenario, workload, run, ids, design.effects, received, down, redelivered, in_progress)


async def compare(
    broker: Broker,
    sync_handler: SyncHandler,
    async_handler: AsyncHandler,
    scenario: Scenario,
    workload: Workload,
    *,
    work: Mapping[str, float] | None = None,
    workers: int = 16,
    topic: str = "h2h",
) -> dict[str, Result]:
    """Run ``scenario`` on a fresh sync design, then on a fresh async design, with the same workload.

    Returns ``{"sync": result, "async": result}``; each design is stopped after its run.
    """
    results: dict[str, Result] = {}
    sync = await start_sync(sync_handler, work=work)
    try:
        results["sync"] = await run_design(sync, scenario, workload)
    finally:
        await sync.stop()
    design = await start_async(broker, async_handler, f"{topic}/{uuid.uuid4().hex[:8]}/orders", work=work, workers=workers)
    try:
        results["async"] = await run_design(design, scenario, workload)
    finally:
        await design.stop()
    return results


def _flatten(results: Iterable[Result | Mapping[str, Result]]) -> list[Result]:
    flat: list[Result] = []
    for item in results:
        flat.extend(item.values() if isinstance(item, Mapping) else [item])
    return flat


def summary_rows(results: Iterable[Result | Mapping[str, Result]]) -> list[dict[str, object]]:
    """The summary table, one row per design and scenario, computed from the results (for ``show``)."""
    return [r.as_row() for r in _flatten(results)]


# --- plots ---------------------------------------------------------------------------------

DESIGN_COLORS = {"sync": COLORS[0], "async": COLORS[1]}


def _log_ms(ax: Axes) -> None:
    """A log scale labelled in plain numbers (1, 2, 5, 10, 20, ...), not powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def percentile_panel(
    results: Iterable[Result | Mapping[str, Result]], which: str = "caller", *, ax: Axes | None = None, title: str | None = None
) -> Axes:
    """p50 (plain) and p99 (hatched) bars per scenario, sync and async side by side, on a log scale.

    ``which`` is ``"caller"`` (until the Order service answered) or ``"done"`` (until all
    three effects were applied). Caller percentiles count only the answered orders and done
    percentiles only the orders done, so a bar says above it how many it leaves out (errors,
    or orders never done); a hatched bar over fewer than 200 values is the max and says "max".
    """
    if which not in ("caller", "done"):
        raise ValueError(f"which must be 'caller' or 'done', got {which!r}")
    flat = _flatten(results)
    ax = axes(ax)
    scenarios = list(dict.fromkeys(r.scenario.name for r in flat))
    x = np.arange(len(scenarios))
    width = 0.2
    for k, (design, pct) in enumerate((("sync", "p50"), ("sync", "p99"), ("async", "p50"), ("async", "p99"))):
        values = []
        for i, name in enumerate(scenarios):
            match = [r for r in flat if r.design == design and r.scenario.name == name]
            summary = (match[0].caller if which == "caller" else match[0].done_summary) if match else None
            if summary is None:
                values.append(math.nan)
                continue
            label, tail = summary.tail()
            values.append(summary.p50_ms if pct == "p50" else tail)
            if pct == "p99":
                _note_bar(ax, x[i] + (k - 1.5) * width, values[-1], _bar_note(match[0], which, label))
        ax.bar(
            x + (k - 1.5) * width,
            values,
            width,
            color=DESIGN_COLORS[design],
            hatch="//" if pct == "p99" else None,
            edgecolor="black",
            linewidth=0.5,
            label=f"{design} {pct}",
        )
    ax.set_xticks(x, [name.replace(", ", ",\n") for name in scenarios])  # "payment slow, then down" on two lines
    _log_ms(ax)
    default = "Caller: until the Order service answers" if which == "caller" else "Work: until all three effects are applied"
    ax.set(xlabel="scenario", ylabel="milliseconds (log scale)", title=title or default)
    ax.grid(axis="y", alpha=0.3, which="both")
    return ax


def _bar_note(result: Result, which: str, tail_label: str) -> str:
    """What a p99 bar leaves out: the errors (caller) or the orders never done (done); and "max" for a short run."""
    left_out = result.errors if which == "caller" else result.not_done
    lines = ["max"] if tail_label == "max" else []
    if left_out:
        lines.append(f"{left_out}/{len(result.order_ids)}\n{'errors' if which == 'caller' else 'never done'}")
    return "\n".join(lines)


def _note_bar(ax: Axes, x: float, top: float, note: str) -> None:
    if note:
        ax.annotate(
            note,
            (x, top if math.isfinite(top) else 1.0),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
            color="tab:red",
        )


def plot_latencies(results: Iterable[Result | Mapping[str, Result]], *, title: str | None = None) -> Figure:
    """Side by side: what the caller waited for, and how long until the work was done (p50, p99)."""
    flat = _flatten(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained", sharey=True)
    percentile_panel(flat, "caller", ax=left)
    percentile_panel(flat, "done", ax=right)
    right.tick_params(labelleft=True)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="design, percentile")
    if title:
        fig.suptitle(title)
    return fig


def _pair(pair: Mapping[str, Result]) -> list[Result]:
    results = [pair[k] for k in ("sync", "async") if k in pair]
    if not results:
        raise ValueError("expected the results of compare(): {'sync': ..., 'async': ...}")
    return results


def _outage_span(results: Sequence[Result]) -> tuple[float, float, str] | None:
    """The outage in seconds since each run's first order (the union over the runs), and its label."""
    windows = [(r.down_window[0] - r.t0, r.down_window[1] - r.t0) for r in results if r.down_window]
    if not windows:
        return None
    return min(w[0] for w in windows), max(w[1] for w in windows), f"{results[0].scenario.down or 'service'} down"


def _cumulative(times: Sequence[float], grid: np.ndarray) -> list[float]:
    return [float(n) for n in np.searchsorted(np.sort(np.asarray(times, dtype=float)), grid, side="right")]


def completion_timeline(pair: Mapping[str, Result], *, ax: Axes | None = None, step: float = 0.02) -> Axes:
    """Cumulative orders placed, done (per design) and refused (callers' errors), the outage shaded."""
    results = _pair(pair)
    ends = [s.done - r.t0 for r in results for s in r.run.samples]
    ends += [done - r.t0 for r in results for _, _, done in r.completions()]
    grid = np.arange(0.0, max(ends) + 0.3, step)
    first = results[0]
    series: dict[str, Sequence[float]] = {"orders placed": _cumulative([s.intended - first.t0 for s in first.run.samples], grid)}
    for r in results:
        series[f"{r.design}: done (all three effects)"] = _cumulative([d - r.t0 for _, _, d in r.completions()], grid)
    for r in results:
        refused = [s.done - r.t0 for s in r.run.samples if not s.ok]
        if refused:
            series[f"{r.design}: refused (caller got an error)"] = _cumulative(refused, grid)
    span = _outage_span(results)
    ax = timeline(
        list(grid),
        series,
        ylabel="orders (cumulative)",
        title="Orders done over time",
        states=[span] if span else [],
        ax=axes(ax, (7, 4)),
    )
    styles = {"orders placed": ("black", ":")}
    styles.update({f"{d}: done (all three effects)": (c, "-") for d, c in DESIGN_COLORS.items()})
    styles.update({f"{d}: refused (caller got an error)": ("tab:red", "--") for d in DESIGN_COLORS})
    for line in ax.get_lines():  # the same color for a design in every plot of the lesson
        color, style = styles.get(str(line.get_label()), (None, None))
        if color is not None:
            line.set(color=color, linestyle=style)
    ax.set_xlabel("time since the first order (s)")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def caller_waits(pair: Mapping[str, Result], *, ax: Axes | None = None) -> Axes:
    """Each order's answer latency (log scale) by when it was sent; error answers as red crosses."""
    results = _pair(pair)
    ax = axes(ax, (7, 4))
    for r in results:
        ok = [(s.intended - r.t0, s.latency * 1000) for s in r.run.samples if s.ok]
        bad = [(s.intended - r.t0, s.latency * 1000) for s in r.run.samples if not s.ok]
        if ok:
            ax.plot(
                *zip(*ok, strict=True), "o", ms=3.5, color=DESIGN_COLORS.get(r.design, "gray"), label=f"{r.design}: answered OK"
            )
        if bad:
            ax.plot(*zip(*bad, strict=True), "x", ms=5, color="tab:red", label=f"{r.design}: error answer")
    span = _outage_span(results)
    if span:
        ax.axvspan(span[0], span[1], color="#e0e0e0", alpha=0.6, label=span[2])
    _log_ms(ax)
    ax.set(
        xlabel="order sent at (s since the first order)",
        ylabel="caller's wait (ms, log scale)",
        title="What each caller waited for",
    )
    # below the axes: the dots fill the whole plot, so any place inside would hide some
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return ax


def plot_outage(pair: Mapping[str, Result], *, title: str | None = None) -> Figure:
    """Side by side for an outage run of both designs: :func:`completion_timeline` and :func:`caller_waits`."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    completion_timeline(pair, ax=left)
    caller_waits(pair, ax=right)
    if title:
        fig.suptitle(title)
    return fig
