"""Scale out by adding consumers: throughput with 1, 2, 4 consumers on I/O-bound work.

Two ways to have several consumers share one stream of work:

* **Shared subscription** (``$share/GROUP/topic``): several client connections join a
  group and the broker gives each message to *one* member. Consumers can live in
  separate processes or machines. The embedded rumqttd broker, Mosquitto, EMQX and
  HiveMQ support it.
* **One subscription + a worker pool** (:func:`helpers.core.worker_pool.run_pool`): one
  connection, N workers in the same process. Works on every broker, scales only as far
  as one process does.

:func:`consumer_throughput` uses a shared subscription when the broker supports it and
the pool otherwise, and says which in its result. Each "consumer" handles one message
at a time, so k consumers can have at most k messages in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass

from helpers.core.broker import Broker
from helpers.core.lifecycle import running
from helpers.core.messaging import Consumer, Event, EventHandler, make_event, manual_ack, publish
from helpers.core.waiting import until
from helpers.core.worker_pool import run_pool

SHARED = "shared subscription ($share)"
POOL = "one subscription + worker pool"


@dataclass(frozen=True)
class ScaleResult:
    """Throughput of one run, and how the work was spread."""

    consumers: int
    mode: str
    messages: int
    processed: int
    elapsed_s: float
    per_consumer: tuple[int, ...]

    @property
    def throughput(self) -> float:
        """Messages processed per second, first publish to last completion."""
        return self.processed / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    def as_row(self) -> dict[str, object]:
        """A row for a results table."""
        return {
            "consumers": self.consumers,
            "mode": self.mode,
            "processed": f"{self.processed}/{self.messages}",
            "seconds": round(self.elapsed_s, 2),
            "msg/s": round(self.throughput, 1),
            "per consumer": list(self.per_consumer),
        }


async def consumer_throughput(
    broker: Broker,
    topic: str,
    *,
    consumers: int,
    n: int = 60,
    work_s: float = 0.05,
    shared: bool | None = None,
    timeout: float = 30.0,
) -> ScaleResult:
    """Publish ``n`` events and time ``consumers`` consumers (``work_s`` each) processing all of them.

    ``shared=None`` picks shared subscriptions when ``broker.supports_shared_subscriptions``.
    """
    use_shared = broker.supports_shared_subscriptions if shared is None else shared
    run_id = uuid.uuid4().hex[:6]
    counts = [0] * consumers
    done: set[str] = set()

    def worker_for(index: int) -> EventHandler:
        async def work(event: Event) -> None:
            await asyncio.sleep(work_s)  # I/O-bound: waiting, not computing
            counts[index] += 1
            done.add(event.id)

        return work

    async with contextlib.AsyncExitStack() as stack:
        if use_shared:
            for i in range(consumers):
                client = await stack.enter_async_context(manual_ack(broker.client(f"scale-{run_id}-{i}")))
                consumer = Consumer(client, f"$share/workers-{run_id}/{topic}", worker_for(i))
                await stack.enter_async_context(running(consumer.run))
        else:  # one connection: every message goes through the pool's single subscription, counted as member 0
            client = await stack.enter_async_context(manual_ack(broker.client(f"scale-{run_id}")))
            await stack.enter_async_context(running(run_pool, Consumer(client, topic, worker_for(0)), consumers))
        publisher = await stack.enter_async_context(broker.client(f"scale-pub-{run_id}"))
        start = time.perf_counter()
        for i in range(n):
            await publish(publisher, topic, make_event("job.requested", {"i": i}, source="/scaling"), qos=1)
        await until(lambda: len(done) >= n, timeout - (time.perf_counter() - start), poll=0.005)
        elapsed = time.perf_counter() - start
    per_consumer = tuple(counts) if use_shared else (counts[0],)
    return ScaleResult(consumers, SHARED if use_shared else POOL, n, len(done), elapsed, per_consumer)
