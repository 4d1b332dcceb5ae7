"""What reaches a consumer that was offline: QoS, sessions, and the broker's queue bound.

An MQTT broker keeps a *session* per client id. A persistent session
(``clean_session=False``) holds the client's subscriptions *and* the QoS 1/2 messages
that matched them while the client was away; a clean session is thrown away on
disconnect, so nothing is kept for it. QoS 0 means "at most once": the spec lets a
broker drop such messages for an offline client (Mosquitto does by default).

:func:`offline_messages` runs the experiment once: subscribe, go offline, have someone
publish N events, come back with the same client id, return what arrived. Lesson 03
writes that experiment on screen (``away_and_back``) and hands it to
:func:`durability_matrix`, which runs it for the four combinations of QoS and session,
and to :func:`queue_bound`, which sends more than a broker is willing to hold for one
client. Both count distinct event ids and delete the stored session afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiomqtt

from helpers.core.broker import Broker
from helpers.core.messaging import InvalidEvent, decode, make_event, publish
from helpers.core.receive import collect, flush

MOSQUITTO_MAX_QUEUED = 1000
"""Mosquitto 2.0's default ``max_queued_messages``: per client, beyond it new messages are dropped."""

AwayAndBack = Callable[..., Awaitable[list[aiomqtt.Message]]]
"""``away_and_back(topic, *, client_id, clean_session, qos, n)``: subscribe, disconnect while
``n`` events are published, reconnect with the same client id; return the messages that came."""

SETTINGS: tuple[tuple[int, bool], ...] = ((1, False), (1, True), (0, False), (0, True))
"""The (qos, clean_session) pairs of the durability matrix, the durable one first."""


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


async def offline_messages(  # noqa: PLR0913  one keyword per MQTT setting the experiments vary
    broker: Broker,
    topic: str,
    *,
    n: int = 20,
    qos: int = 1,
    persistent: bool = True,
    sub_qos: int | None = None,
    client_id: str | None = None,
) -> list[aiomqtt.Message]:
    """Subscribe, disconnect, let N events be published, reconnect with the same id; return what came.

    ``sub_qos`` (default: ``qos``) is the subscription's QoS, ``qos`` the publisher's.
    """
    consumer_id = client_id or f"offline-{uuid.uuid4().hex[:8]}"
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


@dataclass(frozen=True)
class Trial:
    """The settings of one run of an ``away_and_back`` experiment: the keywords it is called with."""

    client_id: str
    qos: int
    clean_session: bool
    n: int


async def offline_trial(broker: Broker, experiment: AwayAndBack, topic: str, trial: Trial) -> OfflineResult:
    """Run ``experiment`` once with ``trial``'s settings, count distinct events, then delete the stored session."""
    try:
        messages = await experiment(topic, client_id=trial.client_id, clean_session=trial.clean_session, qos=trial.qos, n=trial.n)
    finally:
        if not trial.clean_session:  # a clean connect deletes the session, so the broker does not keep it for a run that is over
            async with broker.client(trial.client_id, clean_session=True):
                pass
    return OfflineResult(trial.qos, not trial.clean_session, trial.n, len(distinct_ids(messages)))


def _course_experiment(broker: Broker) -> AwayAndBack:
    """The course's own ``away_and_back``, for tests and scripts that bring none."""

    async def away_and_back(topic: str, *, client_id: str, clean_session: bool, qos: int, n: int) -> list[aiomqtt.Message]:
        return await offline_messages(broker, topic, n=n, qos=qos, persistent=not clean_session, client_id=client_id)

    return away_and_back


async def durability_matrix(
    broker: Broker, topic: str, *, n: int = 20, experiment: AwayAndBack | None = None, client_id: str | None = None
) -> list[OfflineResult]:
    """Run ``experiment`` for the four combinations of QoS 0/1 and clean/persistent session.

    Each combination gets its own topic and its own client id (``client_id`` plus a
    suffix), so one run's stored session can never feed another's count.
    """
    run = experiment or _course_experiment(broker)
    base = client_id or f"offline-{uuid.uuid4().hex[:8]}"
    results = []
    for qos, clean in SETTINGS:
        tag = f"q{qos}{'c' if clean else 'p'}"
        settings = Trial(client_id=f"{base}-{tag}", qos=qos, clean_session=clean, n=n)
        results.append(await offline_trial(broker, run, f"{topic}/{tag}", settings))
    return results


async def queue_bound(  # noqa: PLR0913  learner-facing: lesson 03 passes these knobs
    broker: Broker,
    topic: str,
    *,
    n: int = MOSQUITTO_MAX_QUEUED + 100,
    experiment: AwayAndBack | None = None,
    client_id: str | None = None,
    clean_session: bool = False,
    qos: int = 1,
) -> OfflineResult:
    """Send ``n`` events to one offline consumer (durable settings by default): does the broker keep them all?"""
    run = experiment or _course_experiment(broker)
    cid = f"{client_id or 'offline'}-{uuid.uuid4().hex[:6]}-bound"
    return await offline_trial(broker, run, topic, Trial(client_id=cid, qos=qos, clean_session=clean_session, n=n))
