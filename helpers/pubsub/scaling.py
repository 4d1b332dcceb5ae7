"""Scale out by adding consumers: throughput with 1, 2, 4 consumers on I/O-bound work.

Two ways to have several consumers share one stream of work:

* **Shared subscription** (``$share/GROUP/topic``): several client connections join a
  group and the broker gives each message to *one* member. Each member is an
  independent consumer (its own connection, its own subscription) that could live in
  another process or on another machine. The embedded rumqttd broker, Mosquitto, EMQX
  and HiveMQ support it.
* **One subscription + a worker pool** (:func:`helpers.core.worker_pool.run_pool`): one
  connection, k workers in the same process. Works on every broker, scales only as far
  as one process does. These are *workers*, not consumers: the broker sees one client.

:func:`consumer_throughput` runs the learner's own consumer loop (``consume``) once per
member on a shared subscription, or the course's pool when the broker has no shared
subscriptions, and counts what each member or worker really handled: a member by its
connection, a pool worker by the worker slot it held while it worked. Each member or
worker handles one message at a time, so k of them have at most k messages in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import aiomqtt
from matplotlib.axes import Axes

from helpers.core.broker import Broker
from helpers.core.lifecycle import running
from helpers.core.messaging import Consumer, Event, EventHandler, make_event, manual_ack, publish
from helpers.core.plots import axes
from helpers.core.waiting import until
from helpers.core.worker_pool import run_pool

Mode = Literal["shared subscription ($share)", "one subscription + worker pool"]
"""How k consumers share the work: k members of a shared subscription, or k workers behind one subscription."""
SHARED: Final = "shared subscription ($share)"
POOL: Final = "one subscription + worker pool"

ConsumeLoop = Callable[..., Awaitable[None]]
"""``consume(client, topic, handle, ready=None)``: subscribe, set ``ready``, then ``await handle(event)`` per message."""


@dataclass(frozen=True)
class ScaleResult:
    """Throughput of one run, and how the work was really spread over members or workers."""

    consumers: int
    mode: Mode
    messages: int
    processed: int
    elapsed_s: float
    per_consumer: tuple[int, ...]
    """Messages each member (shared) or worker (pool) finished, measured, in member order."""

    @property
    def throughput(self) -> float:
        """Messages processed per second, first publish to last completion."""
        return self.processed / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    @property
    def unit(self) -> str:
        """What one of the k is: an independent consumer, or a worker behind one subscription."""
        return "consumer" if self.mode == SHARED else "worker"

    def as_row(self) -> dict[str, object]:
        """A row for a results table."""
        return {
            "k": self.consumers,
            "design": f"{self.mode}: {self.unit}s",
            "processed": f"{self.processed}/{self.messages}",
            "seconds": round(self.elapsed_s, 2),
            "msg/s": round(self.throughput, 1),
            "each one handled (measured)": ", ".join(map(str, self.per_consumer)),
        }


class WorkerSlots:
    """Names the k workers of a pool: a message's work holds one free slot number while it runs.

    ``run_pool`` never runs more than k handlers at once, so a slot is always free; a
    worker that finishes sooner frees its slot sooner and is the one that takes the next
    message. Counting per slot is therefore counting per worker.
    """

    def __init__(self, k: int) -> None:
        self.free: asyncio.Queue[int] = asyncio.Queue()
        for slot in range(k):
            self.free.put_nowait(slot)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[int]:
        slot = await self.free.get()
        try:
            yield slot
        finally:
            self.free.put_nowait(slot)


def _seconds_for(work_s: float | Sequence[float], k: int) -> list[float]:
    """One work time per member/worker: a single number for all, or one each (some are slower)."""
    times = [float(work_s)] * k if isinstance(work_s, (int, float)) else [float(s) for s in work_s]
    if len(times) != k:
        raise ValueError(f"work_s has {len(times)} times for {k} consumers: give one number, or one per consumer")
    return times


async def _run_course_consumer(
    client: aiomqtt.Client, topic: str, handle: EventHandler, ready: asyncio.Event | None = None
) -> None:
    """The course's consumer (ack after the work), with the learner's signature: the default ``consume``."""
    await Consumer(client, topic, handle).run(ready)


def _shared_filter(group: str, topic: str) -> str:
    """The MQTT 5 shared-subscription filter (many brokers accept it from 3.1.1 clients too)."""
    return f"$share/{group}/{topic}"


async def consumer_throughput(  # noqa: PLR0913  learner-facing: lesson 03 passes these knobs
    broker: Broker,
    topic: str,
    *,
    consumers: int,
    n: int = 60,
    work_s: float | Sequence[float] = 0.05,
    shared: bool | None = None,
    consume: ConsumeLoop | None = None,
    subscription: Callable[[str, str], str] | None = None,
    work: Callable[[float], Awaitable[None]] = asyncio.sleep,
    timeout: float = 30.0,
) -> ScaleResult:
    """Publish ``n`` events and time ``consumers`` members or workers processing all of them.

    ``shared=None`` picks shared subscriptions when ``broker.supports_shared_subscriptions``.
    ``consume`` is the consumer loop each shared member runs (the lesson's own; default:
    the course's :class:`Consumer`). ``subscription(group, topic)`` returns the topic filter
    every member of ``group`` subscribes to (the lesson's own; default ``$share/{group}/{topic}``):
    a filter that is not a shared one gives every member every message, which shows as
    per-member counts that add up to more than ``n``. ``work(seconds)`` is one message's work (default
    ``asyncio.sleep``: waiting on I/O); ``work_s`` its seconds, one number or one per member/worker.
    """
    seconds = _seconds_for(work_s, consumers)
    use_shared = broker.supports_shared_subscriptions if shared is None else shared
    run_id = uuid.uuid4().hex[:6]
    counts = [0] * consumers
    done: set[str] = set()

    def member(index: int) -> EventHandler:
        async def handle(event: Event) -> None:
            await work(seconds[index])  # by default I/O-bound: waiting, not computing
            counts[index] += 1
            done.add(event.id)

        return handle

    slots = WorkerSlots(consumers)

    async def pooled(event: Event) -> None:
        async with slots.hold() as slot:
            await member(slot)(event)

    async with contextlib.AsyncExitStack() as stack:
        if use_shared:
            loop = consume or _run_course_consumer
            group = (subscription or _shared_filter)(f"workers-{run_id}", topic)
            for i in range(consumers):
                client = broker.client(f"scale-{run_id}-{i}")
                if consume is None:
                    manual_ack(client)
                await stack.enter_async_context(client)
                await stack.enter_async_context(running(loop, client, group, member(i)))
        else:  # one connection, one subscription: the k are workers inside this process
            client = await stack.enter_async_context(manual_ack(broker.client(f"scale-{run_id}")))
            await stack.enter_async_context(running(run_pool, Consumer(client, topic, pooled), consumers))
        publisher = await stack.enter_async_context(broker.client(f"scale-pub-{run_id}"))
        start = time.perf_counter()
        for i in range(n):
            await publish(publisher, topic, make_event("job.requested", {"i": i}, source="/scaling"), qos=1)
        await until(lambda: len(done) >= n, timeout - (time.perf_counter() - start), poll=0.005)
        elapsed = time.perf_counter() - start
    return ScaleResult(consumers, SHARED if use_shared else POOL, n, len(done), elapsed, tuple(counts))


def plot_scaling(results: Sequence[ScaleResult], *, ax: Axes | None = None) -> Axes:
    """Measured throughput per k on a numeric axis, next to k x the one-consumer throughput."""
    ax = axes(ax, (6.5, 3.8))
    ks = [r.consumers for r in results]
    base = results[0].throughput / results[0].consumers
    width = 0.35 * min((b - a for a, b in zip(ks, ks[1:], strict=False)), default=1)
    ax.bar(ks, [r.throughput for r in results], width=width, color="tab:blue", label="measured")
    for r in results:
        # inside the bar's top: the ideal line passes just above a bar that scales well
        ax.annotate(
            f"{r.throughput:.0f}",
            (r.consumers, r.throughput),
            xytext=(0, -4),
            textcoords="offset points",
            ha="center",
            va="top",
            color="white",
            fontsize=9,
            fontweight="bold",
        )
    line = [0, *ks]
    ax.plot(line, [k * base for k in line], "k:", label=f"ideal: k × {base:.1f} msg/s")
    unit = results[0].unit
    ax.set_xticks(ks)
    ax.set(
        xlabel=f"{unit}s (k)",
        ylabel="throughput (messages/s)",
        title=f"Adding {unit}s ({results[0].mode})",
        xlim=(0, max(ks) + 0.6),
        ylim=(0, max(max(ks) * base, max(r.throughput for r in results)) * 1.15),
    )
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return ax
