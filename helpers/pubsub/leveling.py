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
import time
import uuid
from collections.abc import Sequence
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
from helpers.core.waiting import until
from helpers.core.worker_pool import run_pool


@dataclass
class BurstResult:
    """What the queued side saw: when each message was sent and when each was processed."""

    sent_at: list[float] = field(default_factory=list)
    """Seconds since the burst began, per published message."""
    done_at: list[float] = field(default_factory=list)
    """Seconds since the burst began, per processed message."""
    ids: set[str] = field(default_factory=set)
    publish: LoadRun | None = None

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
        end = max(self.drain_s, max(self.sent_at, default=0.0)) + 3 * step
        times = [i * step for i in range(int(end / step) + 1)]
        sent, done = sorted(self.sent_at), sorted(self.done_at)
        depth, s, d = [], 0, 0
        for t in times:
            while s < len(sent) and sent[s] <= t:
                s += 1
            while d < len(done) and done[d] <= t:
                d += 1
            depth.append(s - d)
        return times, depth


async def queued_burst(
    broker: Broker, topic: str, *, n: int, rate: float, workers: int, work_s: float, timeout: float = 20.0
) -> BurstResult:
    """Publish ``n`` events at ``rate``/s to a pool of ``workers`` consumers; wait until all are done."""
    result = BurstResult()
    start = [0.0]

    async def work(event: Event) -> None:
        await asyncio.sleep(work_s)
        result.done_at.append(time.perf_counter() - start[0])
        result.ids.add(event.id)

    run_id = uuid.uuid4().hex[:6]
    async with (
        manual_ack(broker.client(f"leveling-consumer-{run_id}")) as sub,
        broker.client(f"leveling-producer-{run_id}") as pub,
    ):
        async with running(run_pool, Consumer(sub, topic, work), workers):
            pub.pending_calls_threshold = n + 1  # a burst means many publishes in flight at once: not a warning here
            start[0] = time.perf_counter()

            async def send() -> None:
                event = make_event("job.requested", {"n": len(result.sent_at)}, source="/burst")
                result.sent_at.append(time.perf_counter() - start[0])
                await publish(pub, topic, event, qos=1)

            result.publish = await open_loop(send, rate=rate, count=n, timeout=10)
            await until(lambda: len(result.ids) >= n, timeout, poll=0.02)
    return result


@dataclass
class SyncBurst:
    """What the synchronous side saw: the callers' run and the work the service did."""

    run: LoadRun
    served: int
    """Requests the service finished, including those whose caller had already given up."""

    @property
    def answered(self) -> int:
        return sum(s.ok for s in self.run.samples)

    @property
    def timed_out(self) -> int:
        return sum(s.error == "timeout" for s in self.run.samples)

    @property
    def over_s(self) -> float:
        """Seconds from the first request until the last caller had an answer or gave up."""
        samples = self.run.samples
        return max(s.done for s in samples) - min(s.intended for s in samples) if samples else 0.0

    def waiting(self, step: float = 0.02) -> tuple[list[float], list[int]]:
        """Callers waiting for an answer, sampled every ``step`` seconds since the burst began."""
        samples = self.run.samples
        if not samples:
            return [], []
        origin = min(s.intended for s in samples)
        spans = [(s.intended - origin, s.done - origin) for s in samples]
        end = max(e for _, e in spans) + 3 * step
        times = [i * step for i in range(int(end / step) + 1)]
        return times, [sum(a <= t < b for a, b in spans) for t in times]

    def outcomes(self, step: float = 0.02) -> tuple[list[float], list[int], list[int]]:
        """Cumulative (answered, timed out) callers every ``step`` seconds since the burst began."""
        samples = self.run.samples
        if not samples:
            return [], [], []
        origin = min(s.intended for s in samples)
        end = max(s.done for s in samples) - origin + 3 * step
        times = [i * step for i in range(int(end / step) + 1)]
        ok = sorted(s.done - origin for s in samples if s.ok)
        late = sorted(s.done - origin for s in samples if s.error == "timeout")
        return times, [sum(x <= t for x in ok) for t in times], [sum(x <= t for x in late) for t in times]


def plot_burst(queued: BurstResult, sync: SyncBurst, *, timeout: float) -> Sequence[Axes]:
    """Left: backlog over time for both styles. Right: cumulative outcomes (done vs gave up)."""
    _, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    t_q, depth = queued.depth()
    t_s, waiting = sync.waiting()
    left.plot(t_q, depth, label="messages queued (async)")
    left.plot(t_s, waiting, label="callers waiting (sync)")
    left.set(xlabel="time since the burst began (s)", ylabel="backlog (messages or callers)", title="Backlog")
    done = sorted(queued.done_at)
    right.plot(t_q, [bisect.bisect_right(done, t) for t in t_q], label="processed (async)")
    t_o, answered, gave_up = sync.outcomes()
    right.plot(t_o, answered, label="answered in time (sync)")
    right.plot(t_o, gave_up, label="timed out (sync)", color="tab:red")
    right.set(xlabel="time since the burst began (s)", ylabel="requests (cumulative)", title="Outcomes")
    for ax in (left, right):
        ax.axvline(timeout, color="gray", linestyle=":", label=f"caller timeout ({timeout:g} s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return left, right


async def sync_burst(*, n: int, rate: float, workers: int, work_s: float, timeout: float) -> SyncBurst:
    """Send the same burst as HTTP requests to a service that serves ``workers`` at a time."""
    slots = asyncio.Semaphore(workers)
    served = [0]

    async def handle(_: web.Request) -> web.Response:
        async with slots:
            await asyncio.sleep(work_s)
            served[0] += 1
        return web.json_response({"ok": True})

    service = await start_service(f"leveling-sync-{uuid.uuid4().hex[:4]}", handle)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def call() -> None:
                async with session.post(f"{service.url}/jobs") as response:
                    response.raise_for_status()

            run = await open_loop(call, rate=rate, count=n, timeout=timeout)
        # let the service finish what it accepted, so its count is complete (callers are gone)
        await until(lambda: served[0] >= n, timeout=n * work_s / workers + 1, poll=0.02)
    finally:
        await service.stop()
    return SyncBurst(run, served[0])
