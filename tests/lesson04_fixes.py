"""Lesson 04's fixes, as the notebook writes them (the learner-visible versions).

The lesson's harnesses take the learner's functions as parameters; these are the
notebook's correct versions, shared by the tests that run those harnesses
(``test_async_claims.py``) and the tests of the pieces (``test_async_helpers.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from collections.abc import AsyncIterator

import aiomqtt
from opentelemetry import propagate
from opentelemetry.context import Context

from helpers.core.messaging import Event, EventHandler, InvalidEvent, SeenIds, ack, dead_letter_payload, decode
from helpers.pubsub.consistency import StatusSystem, View
from helpers.pubsub.idempotency import Ledger


async def charge_naively(event: Event, ledger: Ledger, seen: SeenIds) -> None:
    ledger.charge(event)


async def charge_once(event: Event, ledger: Ledger, seen: SeenIds) -> None:
    if event.id in seen:
        return
    ledger.charge(event)
    seen.add(event.id)


def partition_for(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions


class ReadYourWrites:
    def __init__(self, system: StatusSystem) -> None:
        self.system = system
        self.mine: dict[str, View] = {}

    async def write(self, order_id: str, status: str) -> int:
        version = await self.system.write(order_id, status)
        self.mine[order_id] = View(status, version, "own write")
        return version

    async def read(self, order_id: str) -> View:
        seen = await self.system.read(order_id)
        own = self.mine.get(order_id)
        return own if own is not None and own.version > seen.version else seen


def with_trace_context(event: Event) -> Event:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return dataclasses.replace(event, traceparent=carrier.get("traceparent"))


def trace_context_of(event: Event) -> Context:
    return propagate.extract({"traceparent": event.traceparent} if event.traceparent else {})


async def ack_on_receipt(client: aiomqtt.Client, messages: AsyncIterator[aiomqtt.Message], work: EventHandler) -> None:
    async for message in messages:
        ack(client, message)
        await work(decode(message.payload))


async def ack_after_work(client: aiomqtt.Client, messages: AsyncIterator[aiomqtt.Message], work: EventHandler) -> None:
    async for message in messages:
        await work(decode(message.payload))
        ack(client, message)


MAX_ATTEMPTS = 3


async def work_or_dead_letter(client: aiomqtt.Client, message: aiomqtt.Message, work: EventHandler, dead_letters: str) -> int:
    payload = bytes(message.payload)  # type: ignore[arg-type]
    try:
        event = decode(payload)
    except InvalidEvent as exc:
        await client.publish(dead_letters, dead_letter_payload(str(message.topic), payload, f"malformed: {exc}"), qos=1)
        return 0
    reason = ""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            await work(event)
            return attempt
        except Exception as exc:  # noqa: BLE001 - the lesson's rule: any failure is retried, then dead-lettered
            reason = f"failed {attempt} of {MAX_ATTEMPTS} tries: {type(exc).__name__}: {exc}"
            if attempt < MAX_ATTEMPTS:
                await asyncio.sleep(0.01 * 2**attempt)
    await client.publish(dead_letters, dead_letter_payload(str(message.topic), payload, reason), qos=1)
    return MAX_ATTEMPTS
