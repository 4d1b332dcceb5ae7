"""Duplicates under at-least-once delivery, and the idempotent consumer that absorbs them.

"At least once" means a message can arrive twice. Two everyday causes:

* **A publisher retry.** The publisher sent the event but never saw the broker's ack
  (a timeout, a dropped connection), so it sends the same event again. The broker
  cannot know it is a repeat: both copies are delivered. Happens on every broker.
* **A consumer that dies after the work, before the ack.** The broker never learned the
  message was handled, so it resends it when the session resumes. MQTT requires this,
  and both brokers the course runs on do it (see :mod:`helpers.pubsub.probes`).

The effect here is a payment :class:`Ledger` kept in a file (a charge must survive a
restart, or the story is pointless). What a consumer does with each delivery is the
learner's function (:data:`Apply`), written in lesson 04: a naive one charges once per
*delivery*; an idempotent one remembers the event ids it applied in a
:class:`helpers.core.messaging.SeenIds` file and charges once per *event*. The two
scenarios here make the duplicates happen and count what the function charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import aiomqtt

from helpers.core import internals, lifecycle
from helpers.core.broker import Broker
from helpers.core.events import ORDER_PLACED
from helpers.core.lifecycle import running
from helpers.core.messaging import Consumer, Event, SeenIds, make_event, manual_ack, publish
from helpers.core.receive import collect, flush, subscribed_messages
from helpers.core.waiting import until, until_quiet


class Charge(TypedDict):
    """One line of the ledger: which event charged which order, and how much."""

    event_id: str
    order_id: str | None
    amount: float | None


class Ledger:
    """Charges written to a JSON-lines file, one line per charge (so they survive a restart)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def charge(self, event: Event) -> None:
        """Apply the effect: charge the order's amount (no questions asked)."""
        data = event.data or {}
        line: Charge = {"event_id": event.id, "order_id": data.get("order_id"), "amount": data.get("amount")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")

    def charges(self) -> list[Charge]:
        """Every charge made so far."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def per_order(self) -> Counter[str]:
        """How many times each order was charged (1 is right, 2 is a double charge)."""
        return Counter(str(c["order_id"]) for c in self.charges())

    def __len__(self) -> int:
        return len(self.charges())


def order_event(i: int, amount: float = 20.0) -> Event:
    """An ``order.placed`` event for order number ``i``."""
    return make_event(ORDER_PLACED, {"order_id": f"order-{i:03d}", "amount": amount}, source="/shop/orders")


Apply = Callable[[Event, Ledger, SeenIds], Awaitable[None]]
"""The learner's consumer logic: apply one delivered event to the ledger, with the seen-ids store at hand.

The notebook writes it (a naive one and an idempotent one); the scenarios below only
deliver events to it, so what they count is what the learner's function did."""


Cause = Literal["publisher retry", "died before ack"]
"""The two everyday causes of a duplicate delivery that the scenarios below stage."""


@dataclass(frozen=True)
class Outcome:
    """What one run did: deliveries the consumer saw vs charges it made."""

    consumer: str
    cause: Cause
    orders: int
    deliveries: int
    charges: int

    @property
    def skipped(self) -> int:
        """Deliveries that charged nothing (the repeats an idempotent consumer absorbed)."""
        return self.deliveries - self.charges

    @property
    def double_charged(self) -> int:
        """Charges beyond one per order."""
        return self.charges - self.orders

    def as_row(self) -> dict[str, object]:
        return {
            "consumer": self.consumer,
            "cause": self.cause,
            "orders": self.orders,
            "deliveries": self.deliveries,
            "charges": self.charges,
            "skipped": self.skipped,
        }


def _consumer(client: aiomqtt.Client, topic: str, apply: Apply, ledger: Ledger, seen: SeenIds) -> Consumer:
    """A consumer that hands every delivered event to ``apply`` (and acks after it returns)."""

    async def handle(event: Event) -> None:
        await apply(event, ledger, seen)

    return Consumer(client, topic, handle)


def _name(apply: Callable[..., object]) -> str:
    return getattr(apply, "__name__", type(apply).__name__)


async def publisher_retry(  # noqa: PLR0913  learner-facing: lesson 04 passes these knobs
    broker: Broker,
    topic: str,
    workdir: str | Path,
    apply: Apply,
    *,
    orders: int = 10,
    retried: tuple[int, ...] = (2, 5, 7),
) -> Outcome:
    """Publish ``orders`` events, sending those in ``retried`` twice (same id); count what ``apply`` charged.

    The second send stands for a publisher that saw no PUBACK in time (a timeout, a
    dropped connection) and sends the very same event again: the broker cannot tell it
    from a new one and delivers both.
    """
    folder = Path(workdir) / f"retry-{uuid.uuid4().hex[:8]}"
    ledger, seen = Ledger(folder / "ledger.jsonl"), SeenIds(folder / "seen.txt")
    async with manual_ack(broker.client()) as sub, broker.client() as pub:
        consumer = _consumer(sub, topic, apply, ledger, seen)
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
    _raise_dead_letters(consumer, apply)
    return Outcome(_name(apply), "publisher retry", orders, consumer.stats.received, len(ledger))


def _raise_dead_letters(consumer: Consumer, apply: Apply) -> None:
    """A learner's function that raised was dead-lettered by the consumer: say so instead of counting on."""
    if consumer.stats.dead_lettered:
        raise RuntimeError(
            f"{_name(apply)}() raised on {consumer.stats.dead_lettered} event(s) (the consumer dead-lettered them): "
            "look at the function for the error"
        )


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


async def crash_before_ack(broker: Broker, topic: str, workdir: str | Path, apply: Apply) -> tuple[Outcome, bool]:
    """One order; ``apply`` charges it, the process dies before the ack, then restarts with the same session.

    Each life opens the ledger and the seen-ids store from their files, as a new process
    would: whatever ``apply`` kept only in memory is gone after the crash. Returns the
    outcome and whether the broker delivered the order again after the restart.
    """
    folder = Path(workdir) / f"crash-{uuid.uuid4().hex[:8]}"
    ledger_file, seen_file = folder / "ledger.jsonl", folder / "seen.txt"
    ident = f"payments-{uuid.uuid4().hex[:8]}"
    # life 1: subscribe, receive the order, charge it, die before acking
    with contextlib.suppress(ProcessDied):
        async with die_before_ack(manual_ack(broker.client(ident, clean_session=False))) as sub:
            first = _consumer(sub, topic, apply, Ledger(ledger_file), SeenIds(seen_file))
            task = await lifecycle.start(first.run)
            async with broker.client() as pub:
                await publish(pub, topic, order_event(1), qos=1)
            await asyncio.wait_for(task, 5)  # ends with ProcessDied at the ack
    # life 2: the restarted process resumes the same persistent session
    async with manual_ack(broker.client(ident, clean_session=False)) as sub:
        second = _consumer(sub, topic, apply, Ledger(ledger_file), SeenIds(seen_file))
        for message in await collect(sub, idle=0.7, timeout=3):
            await second.handle(message)
    async with broker.client(ident, clean_session=True):
        pass  # drop the session
    for consumer in (first, second):
        _raise_dead_letters(consumer, apply)
    deliveries = first.stats.received + second.stats.received
    outcome = Outcome(_name(apply), "died before ack", 1, deliveries, len(Ledger(ledger_file)))
    return outcome, second.stats.received > 0


Work = Callable[[Event], Awaitable[None]]
ConsumeLoop = Callable[[aiomqtt.Client, AsyncIterator[aiomqtt.Message], Work], Awaitable[None]]
"""The learner's consumer loop: read each message from the iterator, do ``work`` on its event, ack it.

Where the loop calls :func:`helpers.core.messaging.ack` (before the work or after it) is
what :func:`crash_during_work` measures."""


@dataclass(frozen=True)
class AckTiming:
    """One consumer loop, a crash in the middle of one order's work: what was charged and what was lost."""

    consumer: str
    orders: int
    charged: int
    redelivered: int

    @property
    def lost(self) -> int:
        """Orders never charged, although the consumer was back and the broker still up."""
        return self.orders - self.charged

    def as_row(self) -> dict[str, object]:
        return {
            "consumer loop": self.consumer,
            "orders": self.orders,
            "charged": self.charged,
            "redelivered after restart": self.redelivered,
            "lost": self.lost,
        }


async def crash_during_work(  # noqa: PLR0913  learner-facing: lesson 04 passes these knobs
    broker: Broker, topic: str, workdir: str | Path, consume: ConsumeLoop, *, orders: int = 5, crash_at: int = 2
) -> AckTiming:
    """Run ``consume`` over ``orders`` orders; the process dies as order ``crash_at``'s work starts, then restarts.

    The mirror of :func:`crash_before_ack`: here the crash comes *before* the work is
    done. A loop that acked on receipt has already told the broker to forget that order
    (the dying work first waits until every ack sent so far has reached the broker, as a
    real process would have sent it in the meantime); a loop that acks after the work
    has not, so the broker resends it when the same persistent session resumes.
    Charges are counted per order in a ledger file, so a lost order shows as uncharged.
    """
    folder = Path(workdir) / f"ack-{uuid.uuid4().hex[:8]}"
    ledger = Ledger(folder / "ledger.jsonl")
    ident = f"payments-{uuid.uuid4().hex[:8]}"
    fatal = order_event(crash_at).id
    events = [order_event(i) if i != crash_at else _with_id(order_event(i), fatal) for i in range(orders)]

    def dying_work(client: aiomqtt.Client) -> Work:
        async def work(event: Event) -> None:
            if event.id == fatal:
                await flush(client)  # whatever the loop acked so far has reached the broker ...
                raise ProcessDied(f"process died while working on {event.data}")  # ... then the plug is pulled
            ledger.charge(event)

        return work

    # life 1: the orders arrive, the process dies as the work on order `crash_at` starts
    with contextlib.suppress(ProcessDied):
        async with manual_ack(broker.client(ident, clean_session=False)) as sub:
            task = await lifecycle.start(_run_loop, consume, sub, topic, dying_work(sub))
            async with broker.client() as pub:
                for event in events:
                    await publish(pub, topic, event, qos=1)
            await asyncio.wait_for(task, 5)  # ends with ProcessDied
        raise RuntimeError(f"{_name(consume)}() returned without handling order {crash_at}: it must loop over every message")
    # life 2: the restarted process resumes the same session; count what the broker hands back
    redelivered: list[str] = []

    async def work(event: Event) -> None:
        redelivered.append(event.id)
        ledger.charge(event)

    async with manual_ack(broker.client(ident, clean_session=False)) as sub:
        async with running(_run_loop, consume, sub, topic, work):
            await until_quiet(lambda: len(redelivered), idle=0.7, timeout=5)
    async with broker.client(ident, clean_session=True):
        pass  # drop the session
    charged = len({str(c["order_id"]) for c in ledger.charges()})
    return AckTiming(_name(consume), orders, charged, len(redelivered))


def _with_id(event: Event, event_id: str) -> Event:
    return Event(type=event.type, source=event.source, data=event.data, id=event_id)


async def _run_loop(consume: ConsumeLoop, client: aiomqtt.Client, topic: str, work: Work, *, ready: asyncio.Event) -> None:
    """The learner's loop over a subscription, with ``ready`` set once the broker confirmed it."""
    await consume(client, subscribed_messages(client, topic, qos=1, ready=ready), work)
