"""Connection pools, the waiting nobody sees, and how bounded async concurrency fixes it.

An HTTP client keeps a pool of connections. When all are busy, the next request waits
in the pool's queue *before* it is even sent. In front of a slow service a small pool
fills up, the queue grows, and every caller sharing the pool waits, including calls to
perfectly healthy services. With blocking I/O the same thing happens with threads:
each waiting call holds a thread, and a pool of N threads allows N waits at once.

The fix has two halves:

* **async I/O**: a waiting call is a suspended coroutine (about a kilobyte), not a blocked
  thread (a stack of MBs), so a process can afford hundreds of waits at once;
* **bounded concurrency**: decide the bound yourself, per dependency, with an
  ``asyncio.Semaphore`` (a *bulkhead*), size it from Little's law (calls in flight =
  arrival rate x latency) plus headroom, and refuse at once when it is full instead of
  queueing without limit. One slow dependency then cannot drown the others.

:class:`PooledClient` records how long each call waited for a connection and whether
it ever got one, using aiohttp's trace hooks (queued, connection created or reused).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypedDict, TypeVar

import aiohttp
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from helpers.core.measure import LoadRun, open_loop, percentile

T = TypeVar("T")


class BulkheadFull(Exception):
    """The bulkhead refused the call: already ``limit`` calls in flight to that dependency."""


class Bulkhead:
    """At most ``limit`` calls in flight to one dependency; beyond that, fail at once.

    ``max_wait_s`` > 0 lets a call wait that long for a free slot (a short, *bounded*
    queue) before giving up. The default 0 sheds immediately.
    """

    def __init__(self, limit: int, *, max_wait_s: float = 0.0) -> None:
        if limit < 1:
            raise ValueError(f"a bulkhead needs a limit of at least 1, got {limit}")
        self.limit, self.max_wait_s = limit, max_wait_s
        self._slots = asyncio.Semaphore(limit)
        self.in_flight = self.max_in_flight = self.rejected = 0

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` in a free slot, or raise :class:`BulkheadFull`."""
        try:
            if self._slots.locked() and self.max_wait_s <= 0:
                raise BulkheadFull(f"{self.limit} calls already in flight")
            await asyncio.wait_for(self._slots.acquire(), self.max_wait_s or None)
        except (TimeoutError, BulkheadFull):
            self.rejected += 1
            raise BulkheadFull(f"{self.limit} calls already in flight") from None
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await fn()
        finally:
            self.in_flight -= 1
            self._slots.release()


PoolReport = TypedDict(
    "PoolReport",
    {
        "pool size": int,
        "calls": int,
        "failed": int,
        "failed before getting a connection": int,
        "failed after getting a connection": int,
        "pool wait p50 ms": float,
        "pool wait p99 ms": float,
    },
)
"""What :meth:`PooledClient.report` says of a run (the keys are the table's column headings)."""


@dataclass
class PoolRecord:
    """One call: how it ended, whether and how long it queued for a connection, how long in all."""

    started: float
    """``time.perf_counter()`` when the call began."""
    ok: bool
    pool_wait_s: float
    """From joining the pool's queue to holding a connection (0 if one was free at once)."""
    total_s: float
    error: str | None = None
    connected: bool = True
    """Whether the call ever held a connection: False means it ended in the pool's queue,
    so the service never saw it. Known from aiohttp's connection hooks, not guessed."""


class PooledClient:
    """One aiohttp session with a pool of ``limit`` connections that records pool waits.

    aiohttp's trace hooks tell us when a call joins the pool's queue
    (``on_connection_queued_start``) and when it holds a connection (a new one,
    ``on_connection_create_end``, or a reused one, ``on_connection_reuseconn``). A failed
    call without the second event timed out in the queue: it never reached the service.
    """

    def __init__(self, limit: int, *, timeout_s: float = 1.0) -> None:
        self.limit, self.timeout_s = limit, timeout_s
        self.records: list[PoolRecord] = []
        hooks = aiohttp.TraceConfig()
        hooks.on_connection_queued_start.append(self._queued)
        hooks.on_connection_create_end.append(self._connected)
        hooks.on_connection_reuseconn.append(self._connected)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit), trace_configs=[hooks])

    @staticmethod
    async def _queued(_: Any, ctx: SimpleNamespace, __: Any) -> None:
        # setdefault: aiohttp may queue a call twice (it lost a race for a freed slot); the wait began the first time
        ctx.trace_request_ctx.setdefault("queued", time.perf_counter())

    @staticmethod
    async def _connected(_: Any, ctx: SimpleNamespace, __: Any) -> None:
        ctx.trace_request_ctx.setdefault("connected", time.perf_counter())

    async def get(self, url: str) -> Any:
        """GET ``url`` within the client's timeout (pool wait included); raise on failure."""
        info: dict[str, float] = {}
        start = time.perf_counter()
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with self.session.get(url, timeout=timeout, trace_request_ctx=info) as response:
                response.raise_for_status()
                body = await response.json()
        except Exception as exc:
            self._record(False, info, start, type(exc).__name__)
            raise
        self._record(True, info, start)
        return body

    def _record(self, ok: bool, info: dict[str, float], start: float, error: str | None = None) -> None:
        now = time.perf_counter()
        connected = "connected" in info
        waited = (info["connected"] if connected else now) - info["queued"] if "queued" in info else 0.0
        self.records.append(PoolRecord(start, ok, waited, now - start, error, connected))

    @property
    def never_connected(self) -> int:
        """Failed calls that timed out in the pool's queue, before holding a connection."""
        return sum(not r.ok and not r.connected for r in self.records)

    def report(self) -> PoolReport:
        """Calls, failures (split by whether they ever got a connection), pool waits (ms)."""
        waits = [r.pool_wait_s * 1000 for r in self.records]
        failed = sum(not r.ok for r in self.records)
        return {
            "pool size": self.limit,
            "calls": len(self.records),
            "failed": failed,
            "failed before getting a connection": self.never_connected,
            "failed after getting a connection": failed - self.never_connected,
            "pool wait p50 ms": round(percentile(waits, 50), 1),
            "pool wait p99 ms": round(percentile(waits, 99), 1),
        }

    async def aclose(self) -> None:
        await self.session.close()

    def plot(self, title: str, ax: Axes | None = None) -> Axes:
        """Each call at the time it began: its pool wait and its total time; failures marked by whether they were ever sent."""
        if ax is None:
            _, ax = plt.subplots(figsize=(9, 3.8), layout="constrained")
        t0 = min(r.started for r in self.records)
        t = [r.started - t0 for r in self.records]
        ax.scatter(t, [r.total_s * 1000 for r in self.records], s=14, label="whole call", color="tab:blue")
        ax.scatter(
            t, [r.pool_wait_s * 1000 for r in self.records], s=14, label="of which: waiting for a connection", color="tab:orange"
        )
        for connected, marker, label in (
            (True, "x", "failed after getting a connection"),
            (False, "^", "failed in the pool's queue (never sent)"),
        ):
            failed = [
                (ti, r.total_s * 1000) for ti, r in zip(t, self.records, strict=True) if not r.ok and r.connected is connected
            ]
            if failed:
                failed_t, failed_ms = zip(*failed, strict=True)
                ax.scatter(failed_t, failed_ms, s=40, marker=marker, color="tab:red", label=label)
        ax.axhline(self.timeout_s * 1000, color="gray", linestyle=":", label=f"timeout {self.timeout_s:g} s")
        ax.set(xlabel="time the call began (s)", ylabel="time spent on the call (ms)", title=title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
        ax.grid(alpha=0.3)
        return ax


@dataclass
class Timing:
    """How long a batch of calls took."""

    label: str
    calls: int
    seconds: float


def _blocking_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


async def blocking_batch(url: str, calls: int, threads: int) -> Timing:
    """``calls`` blocking GETs on a pool of ``threads`` threads: each wait holds a thread."""
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, _blocking_get, url) for _ in range(calls)))
    return Timing(f"blocking I/O, {threads} threads", calls, time.perf_counter() - start)


async def async_batch(url: str, calls: int, bound: int) -> Timing:
    """``calls`` async GETs, at most ``bound`` in flight (a semaphore), on one thread."""
    slots = asyncio.Semaphore(bound)
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=bound)) as session:

        async def one() -> None:
            async with slots, session.get(url) as response:
                await response.read()

        await asyncio.gather(*(one() for _ in range(calls)))
    return Timing(f"async I/O, at most {bound} in flight", calls, time.perf_counter() - start)


async def pool_load(
    client: PooledClient, url: str, *, rate: float = 40, duration: float = 2.0, bulkhead: Bulkhead | None = None
) -> LoadRun:
    """Open-loop calls to ``url`` through ``client``'s pool; with ``bulkhead`` each call
    must get a slot first (the fix). The client's own timeout ends every call."""

    def one() -> Awaitable[Any]:
        return bulkhead.call(lambda: client.get(url)) if bulkhead else client.get(url)

    return await open_loop(one, rate=rate, duration=duration)
