"""What reaches a consumer that was offline: QoS, sessions, and the broker's queue bound.

An MQTT broker keeps a *session* per client id. A persistent session
(``clean_session=False``) holds the client's subscriptions *and* the QoS 1/2 messages
that matched them while the client was away; a clean session is thrown away on
disconnect, so nothing is kept for it. QoS 0 means "at most once": the spec lets a
broker drop such messages for an offline client (Mosquitto does by default).

:func:`offline_delivery` runs the experiment once: subscribe, go offline, have
someone publish N events, come back with the same client id, count distinct event ids
received. :func:`durability_matrix` runs it for the four combinations, and
:func:`queue_bound` sends more than a broker is willing to hold for one client.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import aiomqtt

from helpers.core.broker import Broker
from helpers.core.messaging import InvalidEvent, decode, make_event, publish
from helpers.core.receive import collect, flush

MOSQUITTO_MAX_QUEUED = 1000
"""Mosquitto 2.0's default ``max_queued_messages``: per client, beyond it new messages are dropped."""


@dataclass(frozen=True)
class OfflineResult:
    """How many of ``sent`` events a consumer got after coming back online."""

    qos: int
    persistent: bool
    sent: int
    received: int

    @property
    def lost(self) -> int:
        """Events that never reached the consumer."""
        return self.sent - self.received

    @property
    def setup(self) -> str:
        return f"QoS {self.qos} + {'persistent' if self.persistent else 'clean'} session"

    def as_row(self) -> dict[str, object]:
        """A row for a results table."""
        return {
            "setup": self.setup,
            "sent while offline": self.sent,
            "received after reconnect": self.received,
            "lost": self.lost,
        }


async def offline_messages(
    broker: Broker, topic: str, *, n: int = 20, qos: int = 1, persistent: bool = True, sub_qos: int | None = None
) -> list[aiomqtt.Message]:
    """Subscribe, disconnect, let N events be published, reconnect with the same id; return what came.

    ``sub_qos`` (default: ``qos``) is the subscription's QoS, ``qos`` the publisher's.
    """
    consumer_id = f"offline-{uuid.uuid4().hex[:8]}"
    async with broker.client(consumer_id, clean_session=not persistent) as consumer:
        await consumer.subscribe(topic, qos=qos if sub_qos is None else sub_qos)
    # The consumer is gone. Only the broker can keep anything for it now.
    async with broker.client() as producer:
        for i in range(n):
            await publish(producer, topic, make_event("reading.taken", {"i": i}, source="/sensor"), qos=qos)
        await flush(producer)
    async with broker.client(consumer_id, clean_session=not persistent) as consumer:
        messages = await collect(consumer, expected=n, idle=0.5, timeout=max(5.0, n / 200))
    if persistent:  # tidy up: a clean connect deletes the stored session on the broker
        async with broker.client(consumer_id, clean_session=True):
            pass
    return messages


def distinct_ids(messages: list[aiomqtt.Message]) -> set[str]:
    """Event ids among ``messages`` (payloads that are not events are ignored)."""
    ids = set()
    for message in messages:
        try:
            ids.add(decode(bytes(message.payload)).id)
        except InvalidEvent:
            continue
    return ids


async def offline_delivery(broker: Broker, topic: str, *, n: int = 20, qos: int = 1, persistent: bool = True) -> OfflineResult:
    """Run :func:`offline_messages` and count the distinct events that arrived."""
    messages = await offline_messages(broker, topic, n=n, qos=qos, persistent=persistent)
    return OfflineResult(qos, persistent, n, len(distinct_ids(messages)))


async def durability_matrix(broker: Broker, topic: str, *, n: int = 20) -> list[OfflineResult]:
    """The four combinations of QoS 0/1 and clean/persistent session, N events each."""
    results = []
    for qos, persistent in ((1, True), (1, False), (0, True), (0, False)):
        results.append(
            await offline_delivery(broker, f"{topic}/q{qos}{'p' if persistent else 'c'}", n=n, qos=qos, persistent=persistent)
        )
    return results


async def queue_bound(broker: Broker, topic: str, *, n: int = MOSQUITTO_MAX_QUEUED + 100) -> OfflineResult:
    """Send ``n`` QoS 1 events to one offline persistent consumer: does the broker keep them all?"""
    return await offline_delivery(broker, topic, n=n, qos=1, persistent=True)
