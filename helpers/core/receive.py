"""Receive "everything that is going to arrive" from an MQTT subscription, without guessing.

Async experiments end with a question like "how many of the N messages arrived?".
Waiting a fixed time either wastes seconds or cuts off a slow broker, so
:func:`collect` stops as soon as the expected count arrived, or when the subscription
has been quiet for ``idle`` seconds, with ``timeout`` as the hard upper bound.

QoS 0 publishes return before the bytes leave the client; :func:`flush` makes sure
they reached the broker (a QoS 1 marker behind them is acknowledged only after the
broker read everything sent before it on the same connection).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt

from helpers.core.lifecycle import died_of


async def collect(
    client: aiomqtt.Client, *, expected: int | None = None, idle: float = 0.3, timeout: float = 5.0
) -> list[aiomqtt.Message]:
    """Messages from ``client`` until ``expected`` arrived, ``idle`` s of quiet, or ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    received: list[aiomqtt.Message] = []
    iterator = client.messages.__aiter__()
    while expected is None or len(received) < expected:
        wait = min(idle, deadline - loop.time())
        if wait <= 0:
            break
        try:
            received.append(await asyncio.wait_for(iterator.__anext__(), wait))
        except TimeoutError:
            break
    return received


async def flush(client: aiomqtt.Client) -> None:
    """Return once the broker has read every message this client published before the call."""
    await client.publish(f"helpers/flush/{uuid.uuid4().hex}", b"", qos=1)


def payloads(messages: list[aiomqtt.Message]) -> list[str]:
    """The payloads as text, for quick printing."""
    return [
        bytes(m.payload).decode(errors="replace") if isinstance(m.payload, (bytes, bytearray)) else str(m.payload)
        for m in messages
    ]


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a background future's failure as seen (no "exception was never retrieved" noise)."""
    died_of(future)


async def subscribed_messages(
    client: aiomqtt.Client, topic: str, *, qos: int = 1, ready: asyncio.Event | None = None
) -> AsyncIterator[aiomqtt.Message]:
    """Subscribe to ``topic`` and yield its messages, reading *while* the subscription is made.

    Why not ``await client.subscribe(...)`` and then read? A client resuming a persistent
    session gets its queued messages straight after connecting, before the broker
    answers the SUBSCRIBE. With manual acks some brokers (amqtt 0.12, the course's first
    embedded broker) wait for those messages' acks before they answer, and the acks only
    come once we read: subscribe first, read later deadlocks until a timeout. Reading
    concurrently has no such trap on any broker. ``ready`` is set once the broker confirmed the subscription.
    """
    subscribing = asyncio.ensure_future(client.subscribe(topic, qos=qos))
    subscribing.add_done_callback(_retrieve)
    if ready is not None:
        subscribing.add_done_callback(lambda f: ready.set() if not f.cancelled() and died_of(f) is None else None)
    iterator = client.messages.__aiter__()
    pending: asyncio.Future[aiomqtt.Message] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            waiting: set[asyncio.Future[Any]] = {pending} if subscribing.done() else {pending, subscribing}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if (error := died_of(subscribing)) is not None:
                raise error
            if pending.done():
                message, pending = pending.result(), None
                yield message
    finally:
        for future in (pending, subscribing):
            if future is not None and not future.done():
                future.cancel()
                future.add_done_callback(_retrieve)
