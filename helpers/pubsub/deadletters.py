"""Dead letters: what a consumer does with a message it cannot handle.

Two kinds of bad message reach every real consumer sooner or later:

* **malformed**: not an event at all (not JSON, or JSON without the CloudEvents
  attributes). No retry will ever fix it.
* **poison**: a well-formed event the handler cannot process (here: an order with a
  negative amount). Retrying it forever would block everything behind it.

A third kind is not bad at all: a **transient** failure (the payment service timed out)
passes on a later try. Only the number of failed tries tells it from poison, so a
consumer retries a failure a few times and dead-letters it only when every try failed.

Dropping either silently loses data; crashing on it stops the consumer, and at-least-once
delivery brings the same message back, so it crashes again. The usual answer: publish
it, with the reason, to a *dead-letter topic* for a human or a repair job, acknowledge
it, and carry on. Lesson 04 writes that step (:data:`DeliverOne`);
:class:`helpers.core.messaging.Consumer` does the same with ``attempts=``. This module
supplies the test messages, a strict handler, a flaky payment service, the drill that
runs either, and a way to read the dead letters.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypedDict

import aiomqtt
from paho.mqtt.client import topic_matches_sub

from helpers.core.broker import Broker
from helpers.core.events import ORDER_PLACED
from helpers.core.lifecycle import Restartable
from helpers.core.messaging import Consumer, Event, EventHandler, InvalidEvent, ack, decode, make_event, manual_ack
from helpers.core.receive import collect, subscribed_messages
from helpers.core.waiting import until
from helpers.pubsub.idempotency import Ledger, order_event

#: Order ids whose charge fails transiently, and how many times before it passes.
FLAKY = {"order-002": 2}


def sample_messages() -> list[tuple[str, bytes]]:
    """(label, payload) pairs: good orders, a malformed one, an incomplete one, a poison one, a good one."""
    return [
        ("good order", order_event(1).to_bytes()),
        ("good order", order_event(2).to_bytes()),
        ("not JSON", b"order 3, 20 EUR, thanks"),
        ("JSON, not an event", json.dumps({"order_id": "order-004", "amount": 20}).encode()),
        (
            "poison: negative amount",
            make_event(ORDER_PLACED, {"order_id": "order-005", "amount": -20}, source="/shop/orders").to_bytes(),
        ),
        ("good order (after the bad ones)", order_event(6).to_bytes()),
    ]


def strict_charging(ledger: Ledger) -> EventHandler:
    """Charge the order, but refuse amounts that make no sense (raise, do not guess)."""

    async def handle(event: Event) -> None:
        amount = (event.data or {}).get("amount")
        if not isinstance(amount, (int, float)) or amount <= 0:
            raise ValueError(f"amount must be a positive number, got {amount!r}")
        ledger.charge(event)

    return handle


Ended = Literal["charged", "dead letter", "LOST"]
"""Where a sample message ended: its order charged, parked on the dead-letter topic, or nowhere."""

DrillRow = TypedDict("DrillRow", {"message": str, "tries of the work": int, "ended as": Ended})
"""One sample message in the drill's table (the keys are the table's column headings)."""

DeadLetterRow = TypedDict("DeadLetterRow", {"reason": str, "original message": str})
"""One dead-letter record in a table: why it was parked and a stable summary of the original."""


def dead_letter_rows(messages: list[aiomqtt.Message], width: int = 64) -> list[DeadLetterRow]:
    """The dead-letter records as table rows: the reason and what the original message was."""
    rows: list[DeadLetterRow] = []
    for message in messages:
        record = json.loads(bytes(message.payload))
        original = str(record.get("payload", ""))
        try:  # a well-formed event: show its type and data (its id and time differ on every run)
            event = decode(original)
            original = f"{event.type} event, data={json.dumps(event.data)}"
        except InvalidEvent:
            pass
        rows.append(
            {
                "reason": record.get("reason", "?"),
                "original message": original if len(original) <= width else original[: width - 3] + "...",
            }
        )
    return rows


def flaky(work: EventHandler, fails: dict[str, int] | None = None) -> tuple[EventHandler, Counter[str]]:
    """``work`` behind a payment service that times out the first few tries for some orders.

    Returns the wrapped handler and a counter of tries per order id (what the drill reports).
    """
    left = Counter(FLAKY if fails is None else fails)
    tries: Counter[str] = Counter()

    async def handle(event: Event) -> None:
        order_id = str((event.data or {}).get("order_id"))
        tries[order_id] += 1
        if left[order_id] > 0:
            left[order_id] -= 1
            raise TimeoutError(f"payment service timed out on {order_id}")
        await work(event)

    return handle, tries


DeliverOne = Callable[[aiomqtt.Client, aiomqtt.Message, EventHandler, str], Awaitable[int]]
"""The learner's step for one message: ``deliver(client, message, work, dead_letter_topic)``.

It runs ``work`` on the message's event, retrying a failure, and publishes what cannot be
handled to ``dead_letter_topic``; it returns the number of attempts. The drill acks after it returns."""


@dataclass(frozen=True)
class DrillResult:
    """What happened to each sample message, and whether the consumer survived the bad ones."""

    rows: list[DrillRow]
    dead: list[aiomqtt.Message]
    charged: int
    still_running: bool

    @property
    def dead_lettered(self) -> int:
        return len(self.dead)


def check_dead_letter_topic(topic: str, dead_letter_topic: str) -> None:
    """Refuse a dead-letter topic that a consumer of the orders' tree would read back."""
    tree = topic.rsplit("/", 1)[0] + "/#" if "/" in topic else topic
    for consumed in (topic, tree):
        if topic_matches_sub(consumed, dead_letter_topic):
            raise ValueError(
                f"dead-letter topic {dead_letter_topic!r} matches {consumed!r}: a consumer of {consumed} would read its "
                "own dead letters and dead-letter them again; put it outside, e.g. 'dead-letter/...'"
            )


async def dead_letter_drill(  # noqa: PLR0913  learner-facing: lesson 04 passes its topics and the learner's step
    broker: Broker, topic: str, dead_letter_topic: str, ledger: Ledger, deliver: DeliverOne | None = None, *, attempts: int = 3
) -> DrillResult:
    """Send :func:`sample_messages` to ``topic``; a consumer charges them through a flaky payment service.

    With ``deliver`` (the learner's step) the consumer is a plain loop: ``deliver`` each
    message, then ack. Without it, the course's :class:`Consumer` with ``attempts`` runs.
    Waits are bounded: until every message was handled (10 s at most), then until the
    dead letters that must exist have arrived.
    """
    check_dead_letter_topic(topic, dead_letter_topic)
    messages = sample_messages()
    work, tries = flaky(strict_charging(ledger))
    handled: list[int] = []
    async with manual_ack(broker.client()) as sub, broker.client() as pub, broker.client() as watcher:
        await watcher.subscribe(dead_letter_topic, qos=1)
        consumer = Consumer(sub, topic, work, dead_letter_topic=dead_letter_topic, attempts=attempts)
        loop = Restartable()
        await loop.launch(_loop, consumer, deliver, dead_letter_topic, handled)
        for _, payload in messages:
            await pub.publish(topic, payload, qos=1)
        done = await until(lambda: len(handled) == len(messages) or not loop.alive, timeout=10)
        still_running = loop.alive
        if (error := await loop.kill()) is not None:
            raise error
        if not done:
            raise TimeoutError(f"{len(handled)} of {len(messages)} messages handled within 10 s")
        dead = await collect(watcher, expected=len(messages) - len(ledger), timeout=5)
    return DrillResult(_rows(messages, tries, ledger, dead), dead, len(ledger), still_running)


async def _loop(
    consumer: Consumer, deliver: DeliverOne | None, dead_letter_topic: str, handled: list[int], ready: asyncio.Event
) -> None:
    """Deliver each message of ``consumer``'s subscription with the learner's step (then ack), or with ``consumer`` itself.

    The learner's step gets ``consumer``'s client and work, and ``dead_letter_topic``.
    """
    client = consumer.client
    async for message in subscribed_messages(client, consumer.topic, qos=1, ready=ready):
        if deliver is None:
            await consumer.handle(message)
            handled.append(0)
        else:
            handled.append(await deliver(client, message, consumer.handler, dead_letter_topic))
            ack(client, message)


def _rows(messages: list[tuple[str, bytes]], tries: Counter[str], ledger: Ledger, dead: list[aiomqtt.Message]) -> list[DrillRow]:
    """One row per sample message: how many tries its work got, and where it ended."""
    charged = ledger.per_order()
    parked = {str(json.loads(bytes(m.payload)).get("payload")) for m in dead}
    rows: list[DrillRow] = []
    for label, payload in messages:
        try:
            order_id = str((decode(payload).data or {}).get("order_id"))
        except InvalidEvent:
            order_id = ""
        where: Ended = (
            "charged" if charged.get(order_id) else "dead letter" if payload.decode(errors="replace") in parked else "LOST"
        )
        if order_id in FLAKY and where == "charged":
            label = f"{label}, payment service timed out {FLAKY[order_id]}x"
        rows.append({"message": label, "tries of the work": tries.get(order_id, 0), "ended as": where})
    return rows
