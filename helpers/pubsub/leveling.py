"""Load leveling: a queue absorbs a burst that a synchronous service would have to refuse.

Both experiments give the same burst (``n`` requests at ``rate`` per second) to the
same capacity (``workers`` at a time, ``work_s`` seconds each, so ``workers / work_s``
per second). The async side publishes to a topic and lets a consumer pool drain it;
the queue (in the broker and the consumer's buffer) grows, then shrinks to zero, and
every message is processed. The sync side sends HTTP requests whose callers give up
after ``timeout`` seconds; everyone past the first few ``timeout x capacity`` requests
waits too long.

The queue is not free or infinite: it holds work in memory (Mosquitto's default
``max_queued_messages`` is 1000 per client, beyond which it drops new messages), and
the last message still waits ``n / capacity`` seconds. Leveling buys *acceptance now,
work later*, which is only useful when "later" is acceptable.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import aiohttp
import matplotlib.pyplot as plt
from aiohttp import web
from matplotlib.axes import Axes

from helpers.core.broker import Broker
from helpers.core.http import start_service
from helpers.core.lifecycle import running
from helpers.core.measure import LoadRun, open_loop
from helpers.core.messaging import Consumer, Event, make_event, manual_ack, publish
from helpers.core.waiting import until, until_quiet
from helpers.core.worker_pool import run_pool
from helpers.pubsub.scaling import ConsumeLoop


@contextlib.contextmanager
def no_gc_pauses() -> Iterator[None]:
    """Collect garbage now and not during the burst, then switch the collector back on.

    A kernel that has run a whole lesson holds many objects, and a full collection there
    took 120-200 ms (measured in lesson 03): landing inside a 0.4 s burst, it froze the
    senders and the consumers alike and drew a flat step in the backlog that was the
    collector, not the broker. A burst lasts seconds, so skipping collection is safe.
    """
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class BurstResult:
    """What the queued side saw: when each message was sent and when each was processed."""

    sent_at: list[float] = field(default_factory=list)
    """Seconds since the burst began, per published message."""
    done_at: list[float] = field(default_factory=list)
    """Seconds since the burst began, per processed message."""
    ids: set[str] = field(default_factory=set)
    publish: LoadRun | None = None
    peak_in_progress: int = 0
    """The most messages whose work ran at the same time (a bounded pool keeps it at its size)."""

    @property
    def sent(self) -> int:
        return len(self.sent_at)

    @property
    def processed(self) -> int:
        """Distinct events processed (a redelivered duplicate does not count twice)."""
        return len(self.ids)

    @property
    def lost(self) -> int:
        return self.sent - self.processed

    @property
    def drain_s(self) -> float:
        """Seconds from the first send until the queue was empty again."""
        return max(self.done_at, default=0.0)

    def depth(self, step: float = 0.02) -> tuple[list[float], list[int]]:
        """Queue depth (sent minus processed) sampled every ``step`` seconds."""
        return backlog(self.sent_at, self.done_at, step)


def backlog(arrived: Sequence[float], done: Sequence[float], step: float = 0.02) -> tuple[list[float], list[int]]:
    """How many had arrived but were not done yet, every ``step`` seconds (times in seconds since the burst began)."""
    end = max(max(done, default=0.0), max(arrived, default=0.0)) + 3 * step
    times = [i * step for i in range(int(end / step) + 1)]
    arrived_sorted, done_sorted = sorted(arrived), sorted(done)
    return times, [bisect.bisect_right(arrived_sorted, t) - bisect.bisect_right(done_sorted, t) for t in times]


def cumulative(times: Sequence[float], events: Sequence[float]) -> list[int]:
    """How many ``events`` (seconds) happened at or before each of ``times``."""
    ordered = sorted(events)
    return [bisect.bisect_right(ordered, t) for t in times]


async def queued_burst(  # noqa: PLR0913  learner-facing: lesson 03 passes these knobs
    broker: Broker,
    topic: str,
    *,
    n: int,
    rate: float,
    workers: int,
    work_s: float,
    timeout: float = 20.0,
    consume: ConsumeLoop | None = None,
) -> BurstResult:
    """Publish ``n`` events at ``rate``/s to a pool of ``workers`` consumers; wait until all are done.

    ``consume`` is the consumer loop that drains the burst (lesson 03's own bounded pool,
    which must keep at most ``workers`` messages in progress; it runs with aiomqtt's acks
    on receipt). Without it, the course's :class:`Consumer` runs in a pool of ``workers``
    and acks after the work. The result counts the work actually done either way; the
    most messages in progress at once is in ``BurstResult.peak_in_progress``.
    """
    result = BurstResult()
    start = [0.0]

    in_progress = [0]

    async def work(event: Event) -> None:
        in_progress[0] += 1
        result.peak_in_progress = max(result.peak_in_progress, in_progress[0])
        try:
            await asyncio.sleep(work_s)
        finally:
            in_progress[0] -= 1
        result.done_at.append(time.perf_counter() - start[0])
        result.ids.add(event.id)

    run_id = uuid.uuid4().hex[:6]
    consumer = broker.client(f"leveling-consumer-{run_id}")
    async with (
        consumer if consume is not None else manual_ack(consumer) as sub,
        broker.client(f"leveling-producer-{run_id}") as pub,
    ):
        if consume is not None:  # the lesson's own pool (aiomqtt's acks on receipt)
            drain = running(consume, sub, topic, work)
        else:  # the course's pool: acks after the work, in arrival order
            drain = running(run_pool, Consumer(sub, topic, work), workers)
        async with drain:
            pub.pending_calls_threshold = n + 1  # a burst means many publishes in flight at once: not a warning here

            async def send() -> None:
                event = make_event("job.requested", {"n": len(result.sent_at)}, source="/burst")
                result.sent_at.append(time.perf_counter() - start[0])
                await publish(pub, topic, event, qos=1)

            with no_gc_pauses():
                start[0] = time.perf_counter()  # after the collection: its time is not the burst's
                result.publish = await open_loop(send, rate=rate, count=n, timeout=10)
                await until(lambda: len(result.ids) >= n, timeout, poll=0.02)
    return result


@dataclass
class SyncBurst:
    """What the synchronous side saw: the callers' run and the work the service did.

    All times are seconds since the burst began (the first request's intended send time).
    """

    run: LoadRun
    served: int
    """Requests the service finished, including those whose caller had already given up."""
    arrived_at: list[float] = field(default_factory=list)
    """When each request reached the service (its handler started)."""
    served_at: list[float] = field(default_factory=list)
    """When the service finished each request, whether or not its caller still waited."""

    @property
    def answered(self) -> int:
        return sum(s.ok for s in self.run.samples)

    @property
    def timed_out(self) -> int:
        return sum(s.error == "timeout" for s in self.run.samples)

    @property
    def origin(self) -> float:
        """The burst's start on the load generator's clock."""
        return min((s.intended for s in self.run.samples), default=0.0)

    @property
    def over_s(self) -> float:
        """Seconds from the first request until the last caller had an answer or gave up."""
        samples = self.run.samples
        return max(s.done for s in samples) - self.origin if samples else 0.0

    @property
    def done_s(self) -> float:
        """Seconds from the first request until the service finished its last piece of work."""
        return max(self.served_at, default=0.0)

    @property
    def first_timeout_s(self) -> float | None:
        """When the first caller gave up (None if nobody did): where timeouts really start."""
        late = [s.done - self.origin for s in self.run.samples if s.error == "timeout"]
        return min(late, default=None)

    def waiting(self, step: float = 0.02) -> tuple[list[float], list[int]]:
        """Callers waiting for an answer, sampled every ``step`` seconds since the burst began."""
        samples = self.run.samples
        if not samples:
            return [], []
        return backlog([s.intended - self.origin for s in samples], [s.done - self.origin for s in samples], step)

    def in_service(self, step: float = 0.02) -> tuple[list[float], list[int]]:
        """Requests inside the service (arrived, not yet finished), every ``step`` seconds."""
        return backlog(self.arrived_at, self.served_at, step)

    def outcomes(self, step: float = 0.02) -> tuple[list[float], list[int], list[int]]:
        """Cumulative (answered, timed out) callers every ``step`` seconds since the burst began."""
        samples = self.run.samples
        if not samples:
            return [], [], []
        end = max(self.over_s, self.done_s) + 3 * step
        times = [i * step for i in range(int(end / step) + 1)]
        ok = [s.done - self.origin for s in samples if s.ok]
        late = [s.done - self.origin for s in samples if s.error == "timeout"]
        return times, cumulative(times, ok), cumulative(times, late)


def plot_burst(queued: BurstResult, sync: SyncBurst, *, timeout: float) -> Sequence[Axes]:
    """Left: what is waiting, over time. Right: cumulative work done and caller outcomes, both designs.

    The sync service's own work is drawn too: it keeps working after its callers gave up,
    so "all work done" is compared with "all work done", not with the last caller leaving.
    """
    _, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    t_q, depth = queued.depth()
    t_w, waiting = sync.waiting()
    t_i, inside = sync.in_service()
    left.plot(t_q, depth, color="tab:blue", label="messages queued (async)")
    left.plot(t_i, inside, color="tab:orange", label="requests inside the service (sync)")
    left.plot(t_w, waiting, color="tab:orange", linestyle="--", label="callers still waiting (sync)")
    left.set(xlabel="time since the burst began (s)", ylabel="backlog (messages or requests)", title="What is waiting")
    t_o, answered, gave_up = sync.outcomes()
    right.plot(t_q, cumulative(t_q, queued.done_at), color="tab:blue", label="work done (async)")
    right.plot(t_o, cumulative(t_o, sync.served_at), color="tab:orange", label="work done (sync service)")
    right.plot(t_o, answered, color="tab:green", linestyle="--", label="callers answered in time (sync)")
    right.plot(t_o, gave_up, color="tab:red", linestyle="--", label="callers timed out (sync)")
    right.set(xlabel="time since the burst began (s)", ylabel="requests (cumulative)", title="Work done and callers served")
    first = sync.first_timeout_s
    for ax in (left, right):
        if first is not None:
            ax.axvline(
                first, color="tab:red", linestyle=":", label=f"first caller gives up ({first:.2f} s; timeout {timeout:g} s)"
            )
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.18), ncol=2, frameon=False)  # below: no data hidden
    return left, right


async def sync_burst(*, n: int, rate: float, workers: int, work_s: float, timeout: float) -> SyncBurst:
    """Send the same burst as HTTP requests to a service that serves ``workers`` at a time."""
    slots = asyncio.Semaphore(workers)
    loop = asyncio.get_running_loop()
    arrived: list[float] = []
    served: list[float] = []  # the load generator's clock (loop.time()), turned into burst time below

    async def handle(_: web.Request) -> web.Response:
        arrived.append(loop.time())
        async with slots:
            await asyncio.sleep(work_s)
            served.append(loop.time())
        return web.json_response({"ok": True})

    service = await start_service(f"leveling-sync-{uuid.uuid4().hex[:4]}", handle)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def call() -> None:
                async with session.post(f"{service.url}/jobs") as response:
                    response.raise_for_status()

            with no_gc_pauses():
                run = await open_loop(call, rate=rate, count=n, timeout=timeout)
                # let the service finish what reached it, so its count is complete (callers are gone);
                # a request can still get in after its caller gave up, so wait for a quiet moment too
                deadline = n * work_s / workers + 1
                await until(lambda: len(served) >= len(arrived), timeout=deadline, poll=0.02)
                await until_quiet(lambda: (len(arrived), len(served)), idle=0.1, timeout=deadline)
    finally:
        await service.stop()
    origin = min((s.intended for s in run.samples), default=0.0)
    return SyncBurst(run, len(served), [t - origin for t in arrived], [t - origin for t in served])
