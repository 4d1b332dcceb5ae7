"""Several workers behind one subscription: how one consumer process does more at once.

A :class:`helpers.core.messaging.Consumer` handles one message at a time, which keeps
order but caps throughput at 1 / (time per message). For I/O-bound work (waiting on
a database, an HTTP API, a model) the usual fix inside one process is a small pool:
the subscription hands each message to the next free worker. That raises throughput,
and it is exactly what breaks ordering (lesson 04), because a quick message can
overtake a slow one that arrived earlier.

:func:`run_pool` is that pool. It still uses the consumer's own ``handle`` (decode,
dedupe, dead-letter, ack after the work), so nothing about the delivery guarantees
changes: only how many messages are in progress at once. Acknowledgements still leave
in arrival order (:class:`helpers.core.messaging.InOrderAcks`). It reads while subscribing,
like :meth:`Consumer.run`, and a worker that crashes stops the pool with its error
instead of vanishing.
"""

from __future__ import annotations

import asyncio

import aiomqtt

from helpers.core.lifecycle import cancel_and_wait, died_of
from helpers.core.messaging import Consumer
from helpers.core.receive import subscribed_messages


async def run_pool(consumer: Consumer, workers: int, ready: asyncio.Event | None = None) -> None:
    """Subscribe, then handle up to ``workers`` messages concurrently, until cancelled.

    ``Consumer.handle`` already dead-letters what a handler raises; anything that still
    escapes a worker (a bug in the pool's own path, a lost connection) is re-raised here.
    """
    if workers < 1:
        raise ValueError(f"a pool needs at least one worker, got {workers}")
    if workers == 1:
        await consumer.run(ready)
        return
    slots = asyncio.Semaphore(workers)
    running: set[asyncio.Task[None]] = set()
    crashed: list[BaseException] = []

    async def one(message: aiomqtt.Message) -> None:
        try:
            await consumer.handle(message)
        finally:
            slots.release()

    def finished(task: asyncio.Task[None]) -> None:
        running.discard(task)
        if (error := died_of(task)) is not None:
            crashed.append(error)

    try:
        async for message in subscribed_messages(consumer.client, consumer.topic, qos=consumer.qos, ready=ready):
            consumer.acks.received(message)  # acks leave in this order, whatever order the work ends in
            await slots.acquire()  # wait for a free worker before taking the next message
            if crashed:
                raise crashed[0]
            task = asyncio.create_task(one(message))
            running.add(task)
            task.add_done_callback(finished)
    finally:
        if running:
            await cancel_and_wait(running)
