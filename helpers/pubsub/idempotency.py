"""Duplicates under at-least-once delivery, and the idempotent consumer that absorbs them.

"At least once" means a message can arrive twice. Two everyday causes:

* **A publisher retry.** The publisher sent the event but never saw the broker's ack
  (a timeout, a dropped connection), so it sends the same event again. The broker
  cannot know it is a repeat: both copies are delivered. Happens on every broker.
* **A consumer that dies after the work, before the ack.** The broker never learned the
  message was handled, so it resends it when the session resumes. MQTT requires this,
  and both brokers the course runs on do it (see :mod:`helpers.pubsub.probes`).

The effect here is a payment :class:`Ledger` kept in a file (a charge must survive a
restart, or the story is pointless). A naive consumer charges once per *delivery*; an
idempotent one remembers the event ids it applied in a :class:`helpers.core.messaging.SeenIds`
file and charges once per *event*.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from helpers.core import internals, lifecycle
from helpers.core.broker import Broker
from helpers.core.events import ORDER_PLACED
from helpers.core.lifecycle import running
from helpers.core.messaging import Consumer, Event, EventHandler, SeenIds, make_event, manual_ack, publish
from helpers.core.receive import collect
from helpers.core.waiting import until


class Ledger:
    """Charges written to a JSON-lines file, one line per charge (so they survive a restart)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def charge(self, event: Event) -> None:
        """Apply the effect: charge the order's amount (no questions asked)."""
        data = event.data or {}
        line = {"event_id": event.id, "order_id": data.get("order_id"), "amount": data.get("amount")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")

    def charges(self) -> list[dict[str, Any]]:
        """Every charge made so far."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def per_order(self) -> Counter[str]:
        """How many times each order was charged (1 is right, 2 is a double charge)."""
        return Counter(str(c["order_id"]) for c in self.charges())

    def __len__(self) -> int:
        return len(self.charges())


def charging(ledger: Ledger) -> EventHandler:
    """The consumer's handler: charge the order in the event."""

    async def handle(event: Event) -> None:
        ledger.charge(event)

    return handle


def order_event(i: int, amount: float = 20.0) -> Event:
    """An ``order.placed`` event for order number ``i``."""
    return make_event(ORDER_PLACED, {"order_id": f"order-{i:03d}", "amount": amount}, source="/shop/orders")


@dataclass(frozen=True)
class Outcome:
    """What one run did: deliveries the consumer saw vs charges it made."""

    consumer: str
    cause: str
    orders: int
    deliveries: int
    charges: int
    skipped: int

    @property
    def double_charged(self) -> int:
        return self.charges - self.orders

    def as_row(self) -> dict[str, object]:
        return {
            "consumer": self.consumer,
            "cause": self.cause,
            "orders": self.orders,
            "deliveries": self.deliveries,
            "charges": self.charges,
            "duplicates skipped": self.skipped,
        }


def _consumer(client: aiomqtt.Client, topic: str, ledger: Ledger, seen: Path | None) -> Consumer:
    return Consumer(client, topic, charging(ledger), dedupe=SeenIds(seen) if seen else None)


async def publisher_retry(
    broker: Broker,
    topic: str,
    workdir: str | Path,
    *,
    orders: int = 10,
    retried: tuple[int, ...] = (2, 5, 7),
    idempotent: bool,
) -> Outcome:
    """Publish ``orders`` events, sending those in ``retried`` twice (same id); count charges."""
    folder = Path(workdir) / f"retry-{'idem' if idempotent else 'naive'}-{uuid.uuid4().hex[:6]}"
    ledger = Ledger(folder / "ledger.jsonl")
    async with manual_ack(broker.client()) as sub, broker.client() as pub:
        consumer = _consumer(sub, topic, ledger, folder / "seen.txt" if idempotent else None)
        async with running(consumer.run):
            deliveries = 0
            for i in range(orders):
                event = order_event(i)
                await publish(pub, topic, event, qos=1)
                deliveries += 1
                if i in retried:  # "no ack came back in time": the publisher sends the very same event again
                    await publish(pub, topic, event, qos=1)
                    deliveries += 1
            await until(lambda: consumer.stats.received >= deliveries, timeout=5)
    name = "idempotent (dedupe on event id)" if idempotent else "naive"
    return Outcome(name, "publisher retry", orders, consumer.stats.received, len(ledger), consumer.stats.duplicates)


class ProcessDied(BaseException):
    """Stands for the consumer's process dying (kill -9, power loss).

    A BaseException, so the consumer's "dead-letter any handler error" logic does not
    catch it: nothing after this point runs, exactly like a real crash.
    """


def die_before_ack(client: aiomqtt.Client) -> aiomqtt.Client:
    """Make the first acknowledgement ``client`` would send kill the process instead.

    The work is done and recorded, the PUBACK is never sent: the moment at-least-once
    delivery is about.
    """

    def plug_pulled(mid: int, qos: int) -> Any:
        raise ProcessDied(f"process died before acknowledging message {mid}")

    internals.replace_ack(client, plug_pulled)
    return client


async def crash_before_ack(broker: Broker, topic: str, workdir: str | Path, *, idempotent: bool) -> tuple[Outcome, bool]:
    """One order; the consumer charges it, dies before the ack, restarts with the same session.

    Returns the outcome and whether the broker delivered the order again after the restart.
    """
    folder = Path(workdir) / f"crash-{'idem' if idempotent else 'naive'}-{uuid.uuid4().hex[:6]}"
    ledger, seen = Ledger(folder / "ledger.jsonl"), folder / "seen.txt" if idempotent else None
    ident = f"payments-{uuid.uuid4().hex[:6]}"
    deliveries = skipped = 0
    # life 1: subscribe, receive the order, charge it, die before acking
    with contextlib.suppress(ProcessDied):
        async with die_before_ack(manual_ack(broker.client(ident, clean_session=False))) as sub:
            consumer = _consumer(sub, topic, ledger, seen)
            task = await lifecycle.start(consumer.run)
            async with broker.client() as pub:
                await publish(pub, topic, order_event(1), qos=1)
            try:
                await asyncio.wait_for(task, 5)
            finally:
                deliveries += consumer.stats.received
    # life 2: the restarted process resumes the same persistent session
    async with manual_ack(broker.client(ident, clean_session=False)) as sub:
        consumer = _consumer(sub, topic, ledger, seen)
        for message in await collect(sub, idle=0.7, timeout=3):
            await consumer.handle(message)
        deliveries += consumer.stats.received
        skipped += consumer.stats.duplicates
        redelivered = consumer.stats.received > 0
    async with broker.client(ident, clean_session=True):
        pass  # drop the session
    name = "idempotent (dedupe on event id)" if idempotent else "naive"
    return Outcome(name, "died before ack", 1, deliveries, len(ledger), skipped), redelivered
