"""Several workers behind one subscription: how one consumer process does more at once.

A :class:`helpers.messaging.Consumer` handles one message at a time, which keeps
order but caps throughput at 1 / (time per message). For I/O-bound work (waiting on
a database, an HTTP API, a model) the usual fix inside one process is a small pool:
the subscription hands each message to the next free worker. That raises throughput,
and it is exactly what breaks ordering (lesson 04), because a quick message can
overtake a slow one that arrived earlier.

:func:`run_pool` is that pool. It still uses the consumer's own ``handle`` (decode,
dedupe, dead-letter, ack after the work), so nothing about the delivery guarantees
changes: only how many messages are in progress at once.
"""

from __future__ import annotations

import asyncio

from helpers.messaging import Consumer


async def run_pool(consumer: Consumer, workers: int, ready: asyncio.Event | None = None) -> None:
    """Subscribe, then handle up to ``workers`` messages concurrently, until cancelled."""
    if workers < 1:
        raise ValueError(f"a pool needs at least one worker, got {workers}")
    if workers == 1:
        await consumer.run(ready)
        return
    await consumer.client.subscribe(consumer.topic, qos=consumer.qos)
    if ready is not None:
        ready.set()
    slots = asyncio.Semaphore(workers)
    running: set[asyncio.Task[None]] = set()

    async def one(message: object) -> None:
        try:
            await consumer.handle(message)  # type: ignore[arg-type]
        finally:
            slots.release()

    try:
        async for message in consumer.client.messages:
            await slots.acquire()  # wait for a free worker before taking the next message
            task = asyncio.create_task(one(message))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
