"""Probes a check runs *beside* the learner's code: what the code did to the event loop.

One home for the event-loop lag probe that several labs' checks use. The classic asyncio
mistake is a blocking call inside ``async def`` code (``time.sleep``, ``requests.get``,
CPU-heavy work): the code still "works", and a check that only looks at results or
durations passes it, but every other coroutine in the kernel (services, consumers, the
check's own fakes) stands still meanwhile. A ticker task that wakes every few
milliseconds sees that directly: the gap between two of its ticks is time the loop
could not run anything.

    async with LoopLag() as lag:
        await learners_code()
    if lag.longest > 0.2: ...            # or lag.blocked_fraction(...)

:func:`helpers.grading.checks.outcome` runs one around every call of the learner's code,
so a call that never gives control back is reported as blocking, not as "too slow".
The ticker itself lives in :mod:`helpers.core.loop_lag` (appendix 08 uses it too); this
module adds the words every check uses about it.

The other probe, :class:`WireWatch`, stands between the learner's code and a broker: every
MQTT client the code makes through it is watched on the wire (its id and session setting,
each message it receives at which QoS, and each PUBACK it sends, when, and what the
check's ``snapshot()`` said at that moment). That shows an acknowledgement sent before
the work was done on *any* broker, whether or not the broker would resend.

    watch = WireWatch(broker, snapshot=lambda: charged_ids())
    await learners_consumer(watch, ...)           # it calls watch.client(...) as it would broker.client(...)
    early = [d for d in watch.acked() if event_of(d) not in d.seen_at_ack]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from helpers.core import internals
from helpers.core.loop_lag import NOISE_S, TICK_S, LoopLag

__all__ = ["BLOCKING_ADVICE", "NOISE_S", "TICK_S", "Delivery", "LoopLag", "WatchedClient", "WireWatch", "blocking_message"]

BLOCKING_ADVICE = (
    "a blocking call in async code (time.sleep(), requests, a long CPU loop) stops the event loop and every "
    "coroutine in the kernel with it: use await asyncio.sleep(), an async client, or await asyncio.to_thread(...)"
)
"""What to do about it, in the words every check uses."""


def blocking_message(label: str, stood_still_s: float) -> str:
    """The one message for learner code that blocked the event loop, naming the usual culprits."""
    return f"{label} blocked the event loop for {stood_still_s:.2f} s: {BLOCKING_ADVICE}"


@dataclass
class Delivery:
    """One message a watched client received, and when (if ever) it sent the PUBACK."""

    client_id: str
    topic: str
    payload: bytes
    qos: int
    received: float = field(default_factory=time.perf_counter)
    acked: float | None = None
    """``time.perf_counter()`` when the PUBACK left (None: not acknowledged, or QoS 0)."""
    seen_at_ack: Any = None
    """What the watch's ``snapshot()`` returned when the PUBACK left: the work done by then."""
    out_of_order: bool = False
    """Acknowledged while an earlier message (in arrival order, same client) was still unacknowledged."""


@dataclass
class WatchedClient:
    """A client the learner's code made: its id, its session setting, the client itself."""

    client_id: str
    clean_session: bool
    client: Any


class WireWatch:
    """The broker as the learner's code sees it: every client made through it is watched on the wire.

    Pass it wherever the learner's code expects the broker; everything but ``client`` is
    the broker's own. ``snapshot`` (optional) is called as each PUBACK leaves, and its
    answer kept on the :class:`Delivery`: give it "what is charged / stored / notified
    now" and an acknowledgement sent before the work shows, on any broker.
    """

    def __init__(self, broker: Any, snapshot: Callable[[], Any] | None = None) -> None:
        self._broker, self._snapshot = broker, snapshot
        self.clients: list[WatchedClient] = []
        self.deliveries: list[Delivery] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def client(self, name: str | None = None, *, clean_session: bool = True, **kwargs: Any) -> Any:
        """``broker.client(...)``, watched: what it receives and acknowledges is recorded."""
        client = self._broker.client(name, clean_session=clean_session, **kwargs)
        seen = WatchedClient(str(client.identifier), clean_session, client)
        in_flight: dict[int, Delivery] = {}  # mid -> the delivery waiting for its PUBACK, in arrival order

        def received(message: Any) -> None:
            delivery = Delivery(seen.client_id, str(message.topic), bytes(message.payload), int(message.qos))
            self.deliveries.append(delivery)
            if delivery.qos > 0:
                in_flight[message.mid] = delivery

        def acked(mid: int) -> None:
            oldest = next(iter(in_flight), None)
            delivery = in_flight.pop(mid, None)
            if delivery is None:
                return
            delivery.out_of_order = oldest != mid
            delivery.seen_at_ack = self._snapshot() if self._snapshot is not None else None
            delivery.acked = time.perf_counter()

        internals.on_receive(client, received)
        internals.on_puback(client, acked)
        self.clients.append(seen)
        return client

    def on(self, topic: str) -> list[Delivery]:
        """The deliveries of messages on ``topic``, in arrival order."""
        return [d for d in self.deliveries if d.topic == topic]

    def acked(self) -> list[Delivery]:
        """The deliveries acknowledged so far, in the order their PUBACKs left."""
        return sorted((d for d in self.deliveries if d.acked is not None), key=lambda d: d.acked or 0.0)

    def receivers(self) -> list[WatchedClient]:
        """The watched clients that received at least one message."""
        ids = {d.client_id for d in self.deliveries}
        return [c for c in self.clients if c.client_id in ids]

    def auto_acking(self) -> bool:
        """True when a client that received messages acknowledges them on receipt (no manual_ack)."""
        return any(not internals.acks_manually(c.client) for c in self.receivers())
