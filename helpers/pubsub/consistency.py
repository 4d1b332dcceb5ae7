"""Eventual consistency: the read side catches up *after* the write, and you can measure by how much.

The setup is the usual CQRS-style split. A writer publishes ``order.status_changed``
events; a *projection* consumer applies them to a read model (after some work: a
database write, an index update); a query service answers ``GET /orders/{id}`` from
that read model. Right after the writer publishes, the query service may still
return the old status: that is a **stale read**, and the time until it returns the
new one is the **staleness window**.

**Read-your-own-writes** fixes the writer's own view without making the system
synchronous: the writer's session remembers what it wrote (with a version number)
and, when the read model answers with an older version, shows its own write instead.
Other readers still see the old value until the projection catches up; that is fine,
they did not just click "save". The session is the learner's (:class:`Session`, written
in lesson 04); :func:`own_reads_after_write` measures whose reads it keeps fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
import aiomqtt
from aiohttp import web
from matplotlib.axes import Axes

from helpers.core.broker import Broker
from helpers.core.http import Service, start_service
from helpers.core.lifecycle import running
from helpers.core.messaging import Consumer, Event, make_event, manual_ack, publish
from helpers.core.plots import histogram
from helpers.core.waiting import until

STATUS_CHANGED = "order.status_changed"


@dataclass(frozen=True)
class View:
    """What a read returned: the status, its version, and where it came from."""

    status: str | None
    version: int
    source: str = "read model"


@dataclass
class StatusSystem:
    """Writer + broker + projection + query service, running."""

    topic: str
    query: Service
    read_model: dict[str, View]
    _publisher: aiomqtt.Client
    _session: aiohttp.ClientSession
    _stack: contextlib.AsyncExitStack
    """The clients and the projection, closed together (the projection first)."""
    versions: dict[str, int] = field(default_factory=dict)

    async def write(self, order_id: str, status: str) -> int:
        """Publish a status change; returns its version. Returns as soon as the broker has it."""
        version = self.versions.get(order_id, 0) + 1
        self.versions[order_id] = version
        event = make_event(STATUS_CHANGED, {"order_id": order_id, "status": status, "version": version}, source="/orders")
        await publish(self._publisher, self.topic, event, qos=1)
        return version

    async def read(self, order_id: str) -> View:
        """Ask the query service (HTTP), like any other client would."""
        async with self._session.get(f"{self.query.url}/orders/{order_id}") as response:
            body = await response.json()
        return View(body.get("status"), int(body.get("version", 0)))

    async def stop(self) -> None:
        """Stop the projection, its clients and the query service (raises the projection's crash, if any)."""
        try:
            await self._stack.aclose()
        finally:
            await self._session.close()
            await self.query.stop()


async def start_status_system(
    broker: Broker, topic: str = "orders/status", *, delay_s: tuple[float, float] = (0.005, 0.04), seed: int = 3
) -> StatusSystem:
    """Start the projection (taking ``delay_s`` = (min, max) seconds per event, seeded) and the query service."""
    rng = random.Random(seed)
    read_model: dict[str, View] = {}

    async def project(event: Event) -> None:
        await asyncio.sleep(rng.uniform(*delay_s))  # the projection's own work (DB write, index update)
        data = event.data
        current = read_model.get(data["order_id"])
        if current is None or data["version"] > current.version:  # ignore anything older than what we have
            read_model[data["order_id"]] = View(data["status"], data["version"])

    async def get_order(request: web.Request) -> web.Response:
        view = read_model.get(request.match_info["order_id"], View(None, 0))
        return web.json_response({"status": view.status, "version": view.version})

    routes = web.RouteTableDef()
    routes.get("/orders/{order_id}")(get_order)
    run_id = uuid.uuid4().hex[:6]
    async with contextlib.AsyncExitStack() as stack:  # closed here only if something below fails
        sub = await stack.enter_async_context(manual_ack(broker.client(f"projection-{run_id}")))
        pub = await stack.enter_async_context(broker.client(f"writer-{run_id}"))
        await stack.enter_async_context(running(Consumer(sub, topic, project).run))
        query = await start_service(f"order-query-{run_id}", routes)
        return StatusSystem(topic, query, read_model, pub, aiohttp.ClientSession(), stack.pop_all())


class Session(Protocol):
    """What the learner's writer session offers: write through the system, read with its own view."""

    async def write(self, order_id: str, status: str) -> int: ...

    async def read(self, order_id: str) -> View: ...


def _applied(system: StatusSystem, order_id: str, version: int) -> bool:
    """Whether the read model holds ``version`` (or newer) of ``order_id``."""
    view = system.read_model.get(order_id)
    return view is not None and view.version >= version


@dataclass(frozen=True)
class Trial:
    """One write followed by reads: was the first read stale, and how long until it was fresh."""

    stale_first_read: bool
    window_ms: float


async def staleness_trials(system: StatusSystem, trials: int = 40, *, poll_s: float = 0.002, timeout: float = 2.0) -> list[Trial]:
    """Write a new status, read at once, then poll until the read model shows it; per trial."""
    results = []
    for i in range(trials):
        order_id = f"o-{uuid.uuid4().hex[:6]}-{i}"
        await system.write(order_id, "placed")
        if not await until(functools.partial(_applied, system, order_id, 1), timeout, poll_s):  # start from a settled order
            raise TimeoutError(f"the projection did not apply {order_id!r} within {timeout:g} s")
        began = time.perf_counter()
        version = await system.write(order_id, "paid")
        first = await system.read(order_id)
        view = first
        while view.version < version and time.perf_counter() - began < timeout:
            await asyncio.sleep(poll_s)
            view = await system.read(order_id)
        results.append(Trial(first.version < version, (time.perf_counter() - began) * 1000))
    return results


async def own_reads_after_write(system: StatusSystem, session: Session, trials: int = 40) -> tuple[list[bool], list[bool]]:
    """Write through ``session`` then read at once: (was its read stale, was another reader's read stale), per trial.

    "Another reader" asks the query service directly at the same moment, like any other user.
    """
    own, other = [], []
    for i in range(trials):
        order_id = f"r-{uuid.uuid4().hex[:6]}-{i}"
        version = await session.write(order_id, "paid")
        own.append((await session.read(order_id)).version < version)
        other.append((await system.read(order_id)).version < version)
    return own, other


def plot_staleness(windows_ms: list[float], *, ax: Axes | None = None) -> Axes:
    """The staleness windows as a histogram, with the median marked (one series: no legend to cover bars)."""
    ax = histogram({"staleness window": windows_ms}, xlabel="staleness window (ms)", title="", bins=15, ax=ax)
    legend = ax.get_legend()
    if legend is not None:
        legend.remove()
    median = statistics.median(windows_ms)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.15)  # headroom: the median's label sits above the tallest bar
    ax.axvline(median, color="black", linestyle="--", linewidth=1)
    ax.annotate(f" median {median:.0f} ms", (median, 1), xycoords=("data", "axes fraction"), va="top", fontsize=9)
    ax.set(
        ylabel="trials (count)",
        title=f"How long a read stays stale after a write ({len(windows_ms)} trials)",
    )
    return ax
