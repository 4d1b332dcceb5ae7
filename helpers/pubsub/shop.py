"""The toy shop of lessons 03-04: an Order service and the services that react to its orders.

Async version (:func:`start_event_shop`): the Order service is an HTTP service whose
``POST /orders`` publishes one ``order.placed`` event and answers ``202 Accepted`` at
once. Fulfillment, Notification and an AI Fraud-check agent each subscribe to the
orders topic and handle every event at their own pace (the agent is deliberately
slow). Nobody calls anybody: the broker in the middle is the only thing they share.

Sync version (:func:`start_sync_shop`): the same three services as HTTP endpoints,
and an Order service that calls all three and answers only when they have. Same
work, same machine, so the latency difference is the communication style alone.

Lesson 03 writes the two halves of the async shop on screen and hands them in:
``publish`` (the Order service's job: one event to the broker) and ``consume`` (a
consumer's subscribe-and-read loop). Without them the shop runs the course's own
:class:`Consumer`, which also acknowledges after the work and can run a pool.

Every handled event is recorded (:class:`Handled`) so a notebook can count and plot
who did what when.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiomqtt
from aiohttp import web
from matplotlib.axes import Axes

from helpers.core import lifecycle
from helpers.core.broker import Broker
from helpers.core.events import ORDER_PLACED
from helpers.core.http import Faults, Service, start_service
from helpers.core.measure import LoadRun, Summary, open_loop
from helpers.core.messaging import Consumer, Event, make_event, manual_ack, publish
from helpers.core.plots import COLORS, axes
from helpers.core.waiting import until
from helpers.core.worker_pool import run_pool
from helpers.pubsub.leveling import no_gc_pauses

DEFAULT_WORK: dict[str, float] = {"fulfillment": 0.1, "notification": 0.05, "fraud-agent": 0.5}
"""Seconds of (simulated, I/O-bound) work per order for each consuming service."""

PublishOrder = Callable[[aiomqtt.Client, str, dict[str, Any]], Awaitable[Any]]
"""``publish_order(client, topic, order)``: the Order service's job, written in lesson 03."""

ConsumeLoop = Callable[..., Awaitable[None]]
"""``consume(client, topic, handle, ready=None)``: subscribe, set ``ready``, then ``await handle(event)`` per message."""


async def publish_event(client: aiomqtt.Client, topic: str, order: dict[str, Any]) -> Event:
    """The default ``publish_order``: one ``order.placed`` event at QoS 1."""
    return await publish(client, topic, make_event(ORDER_PLACED, order, source="/shop/orders"), qos=1)


@dataclass(frozen=True)
class Handled:
    """One event handled by one service; times are ``time.perf_counter()`` seconds."""

    service: str
    order_id: str
    started: float
    finished: float


@dataclass
class Worker:
    """One consuming service: its name, its work per order and how many it handles at once."""

    name: str
    work_s: float
    concurrency: int = 1
    handled: list[Handled] = field(default_factory=list)
    consumer: Consumer | None = None
    life: lifecycle.Restartable = field(default_factory=lifecycle.Restartable)
    """Its consumer loop, supervised: what it died of is kept, never dropped."""

    async def handle(self, event: Event) -> None:
        """The service's work: here an ``asyncio.sleep`` standing in for I/O (DB, API, model)."""
        started = time.perf_counter()
        await asyncio.sleep(self.work_s)
        self.handled.append(Handled(self.name, str((event.data or {}).get("order_id")), started, time.perf_counter()))


@dataclass
class EventShop:
    """A running async shop: the Order service, the workers, and what happened.

    (The request/response shop of lessons 01-02 is :class:`helpers.sync.chain.HttpShop`.)
    """

    broker: Broker
    topic: str
    order_service: Service
    workers: dict[str, Worker]
    publish_s: list[float] = field(default_factory=list)
    """How long each ``publish`` took inside the Order service (until the broker's ack)."""
    published_at: list[float] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def reset(self) -> None:
        """Forget what was recorded and restart the clock (start of an experiment)."""
        self.publish_s.clear()
        self.published_at.clear()
        for worker in self.workers.values():
            worker.handled.clear()
        self.t0 = time.perf_counter()

    def peak_in_progress(self) -> dict[str, int]:
        """The most orders each service worked on at the same time (measured from the handling times)."""
        peaks: dict[str, int] = {}
        for name, worker in self.workers.items():
            edges = sorted([(h.started, 1) for h in worker.handled] + [(h.finished, -1) for h in worker.handled])
            level = peak = 0
            for _, step in edges:  # an end sorts before a start at the same instant
                level += step
                peak = max(peak, level)
            peaks[name] = peak
        return peaks

    def counts(self) -> dict[str, int]:
        """How many orders each service has handled so far."""
        return {name: len(w.handled) for name, w in self.workers.items()}

    def crashed(self) -> dict[str, BaseException]:
        """The workers whose consumer died with an error (a healthy worker runs until stopped)."""
        return {name: error for name, w in self.workers.items() if (error := w.life.crashed()) is not None}

    async def wait_handled(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until every service handled ``n`` orders; False if ``timeout`` s passed first.

        A worker that crashed will never catch up: its error is raised at once.
        """
        done = await until(lambda: all(count >= n for count in self.counts().values()) or bool(self.crashed()), timeout)
        lifecycle.raise_crashed(self.crashed(), "the shop's worker")
        return done

    async def stop(self) -> None:
        """Stop the workers, their connections and the Order service; then raise what a worker died of, if any."""
        try:
            errors = await _stop_workers(self.workers, self._stack)
        finally:
            await self.order_service.stop()
        lifecycle.raise_crashed(errors, "the shop's worker")


async def _stop_workers(workers: Mapping[str, Worker], stack: contextlib.AsyncExitStack) -> dict[str, BaseException]:
    """Kill every worker and close the connections; return what the workers that crashed died of."""
    errors: dict[str, BaseException] = {}
    try:
        for name, worker in workers.items():
            if (error := await worker.life.kill()) is not None:
                errors[name] = error
    finally:
        await stack.aclose()
    return errors


async def start_event_shop(  # noqa: PLR0913  learner-facing: lesson 03 passes these knobs
    broker: Broker,
    topic: str = "shop/orders",
    *,
    work: Mapping[str, float] | None = None,
    concurrency: int = 1,
    name: str = "orders",
    publish_order: PublishOrder = publish_event,
    consume: ConsumeLoop | None = None,
) -> EventShop:
    """Start the Order service and one consumer per entry of ``work`` (name -> seconds).

    ``publish_order`` is what ``POST /orders`` does with the order; ``consume`` is the loop
    each consuming service runs on its own connection (default: the course's consumer,
    ``concurrency`` orders at a time; a ``consume`` of your own decides that itself).
    """
    if consume is not None and concurrency != 1:
        raise ValueError("concurrency applies to the course's consumer; your own consume loop sets its own")
    work = dict(DEFAULT_WORK if work is None else work)
    stack = contextlib.AsyncExitStack()
    run_id = uuid.uuid4().hex[:6]
    workers: dict[str, Worker] = {}
    shop_ref: list[EventShop] = []
    try:
        publisher = await stack.enter_async_context(broker.client(f"{name}-{run_id}"))
        for worker_name, seconds in work.items():
            worker = workers[worker_name] = Worker(worker_name, seconds, concurrency)
            client = broker.client(f"{worker_name}-{run_id}")
            if consume is None:  # the course's consumer acks after the work; a lesson's own loop keeps aiomqtt's acks
                worker.consumer = Consumer(manual_ack(client), topic, worker.handle)
            await stack.enter_async_context(client)
            if worker.consumer is not None:
                await worker.life.launch(run_pool, worker.consumer, concurrency)
            else:
                await worker.life.launch(consume, client, topic, worker.handle)  # type: ignore[arg-type]

        routes = web.RouteTableDef()

        @routes.post("/orders")
        async def place(request: web.Request) -> web.Response:
            body: dict[str, Any] = await request.json() if request.can_read_body else {}
            order_id = uuid.uuid4().hex[:8]
            began = time.perf_counter()
            await publish_order(publisher, topic, {"order_id": order_id, **body})
            shop = shop_ref[0]
            shop.publish_s.append(time.perf_counter() - began)
            shop.published_at.append(began)
            return web.json_response({"order_id": order_id, "status": "received"}, status=202)

        order_service = await start_service(name, routes)
    except BaseException as exc:  # not swallowed: stop what did start, then re-raise
        for crashed, error in (await _stop_workers(workers, stack)).items():
            exc.add_note(f"the shop's {crashed!r} worker had failed too: {type(error).__name__}: {error}")
        raise
    shop = EventShop(broker, topic, order_service, workers, _stack=stack)
    shop_ref.append(shop)
    return shop


@dataclass
class SyncShop:
    """The blocking version: an Order service that calls every downstream service and waits."""

    order_service: Service
    downstream: dict[str, Service]
    session: aiohttp.ClientSession

    async def stop(self) -> None:
        """Stop the Order service, its HTTP client and the downstream services."""
        await self.order_service.stop()
        await self.session.close()
        for service in self.downstream.values():
            await service.stop()


async def start_sync_shop(*, work: Mapping[str, float] | None = None, name: str = "sync-orders") -> SyncShop:
    """Start one HTTP service per entry of ``work`` and an Order service that calls them all."""
    work = dict(DEFAULT_WORK if work is None else work)

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    downstream = {svc: await start_service(f"sync-{svc}", ok, faults=Faults(latency=s)) for svc, s in work.items()}
    urls = [f"{svc.url}/orders" for svc in downstream.values()]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def call(url: str, body: Any) -> int:
        async with session.post(url, json=body) as response:
            return response.status

    async def place(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        statuses = await asyncio.gather(*(call(u, body) for u in urls))  # in parallel: the kindest sync design
        ok_all = all(s == 200 for s in statuses)
        return web.json_response({"status": "done" if ok_all else "failed"}, status=200 if ok_all else 502)

    order_service = await start_service(name, place)
    return SyncShop(order_service, downstream, session)


async def place_orders(url: str, *, count: int, rate: float, timeout: float = 5.0) -> LoadRun:
    """POST ``count`` orders to ``url``/orders at ``rate`` per second (open loop); returns the run.

    No garbage collection runs while the orders are sent: in a kernel that has run a
    lesson a full collection took 120-200 ms (measured), and it would land on whichever
    order is in flight, for the async and the sync shop alike; that is the kernel's pause,
    not the design's latency.
    """
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def call() -> Any:
            async with session.post(f"{url}/orders", json={"item": "book", "qty": 1}) as response:
                if response.status >= 300:
                    raise RuntimeError(f"HTTP {response.status}")
                return await response.json()

        with no_gc_pauses():
            return await open_loop(call, rate=rate, count=count, timeout=timeout)


def plot_handling(shop: EventShop, *, ax: Axes | None = None, title: str = "Who handled which order, when") -> Axes:
    """One row per service, one bar per handled order (start to finish); ticks mark publishes."""
    ax = axes(ax, (8, 3.2))
    names = list(shop.workers)
    for row, name in enumerate(names):
        spans = [(h.started - shop.t0, h.finished - h.started) for h in shop.workers[name].handled]
        ax.broken_barh(spans, (row - 0.35, 0.7), facecolors=COLORS[row % len(COLORS)], edgecolor="black", linewidth=0.4)
    ax.vlines(
        [t - shop.t0 for t in shop.published_at], len(names) - 0.5, len(names) + 0.3, color="black", label="order published"
    )
    ax.broken_barh([], (0, 0), facecolors="lightgray", edgecolor="black", linewidth=0.4, label="one order handled (start to end)")
    ax.set_yticks(range(len(names) + 1), [*names, "order service"])
    ax.set(xlabel="time since the first order (s)", ylabel="service", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # outside: every row has bars up to the right
    ax.grid(axis="x", alpha=0.3)
    return ax


PERCENTILES = (("p50", "p50_ms", "o"), ("p90", "p90_ms", "s"), ("p99", "p99_ms", "^"))


def percentile_dots(
    summaries: Mapping[str, Summary],
    *,
    reference_ms: float | None = None,
    reference_label: str = "",
    ax: Axes | None = None,
    title: str = "Latency percentiles",
) -> Axes:
    """One row per experiment: p50/p90/p99 as dots on a log axis, with their values written out.

    Dots, not bars: on a log scale a bar's length depends on where the axis starts, so
    it means nothing; a dot's position and its printed value do.
    """
    ax = axes(ax, (10, 0.7 * len(summaries) + 2.2))
    names = list(summaries)
    for row, name in enumerate(names):
        values = [getattr(summaries[name], attr) for _, attr, _ in PERCENTILES]
        for (label, _, marker), value, color in zip(PERCENTILES, values, COLORS[: len(PERCENTILES)], strict=True):
            ax.plot(value, row, marker, color=color, markersize=8, label=label if row == 0 else None)
        text = "  ".join(f"{label} {_ms(v)}" for (label, _, _), v in zip(PERCENTILES, values, strict=True))
        # the values in a column right of the axes: never on top of a dot or the reference line
        ax.annotate(text, (1, row), xycoords=("axes fraction", "data"), xytext=(8, 0), textcoords="offset points", va="center")
    if reference_ms is not None:
        ax.axvline(reference_ms, color="gray", linestyle=":", label=reference_label or f"{reference_ms:g} ms")
    ax.set_xscale("log")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first experiment on top, as in the table
    low = min(summaries[n].p50_ms for n in names)
    high = max([summaries[n].p99_ms for n in names] + ([reference_ms] if reference_ms else []))
    ax.set_xlim(low / 2, high * 2)
    ax.set(xlabel="latency seen by the caller (ms, log scale)", title=title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=4, fontsize=8, frameon=False)  # below the axis label
    ax.grid(axis="x", which="both", alpha=0.3)
    return ax


def _ms(value: float) -> str:
    """A latency with about three significant digits: 0.804, 3.41, 503."""
    return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"
