"""Ask the broker in use what it really does, instead of trusting a table in a README.

Brokers differ in the corners of the MQTT spec, and the lessons run on two of them
(the embedded rumqttd and Mosquitto). Each probe below is a tiny experiment with real
clients; :func:`guarantee_table` runs them all and lines the result up with what
MQTT 3.1.1 says, so a notebook shows *this* broker's behavior, measured now. Most
probes check a promise the broker makes; :func:`out_of_order_acks_tolerated` checks the
other direction, what the broker does when a *client* breaks a rule of the spec.

Every probe returns plain values (bool / int / str) so lessons can branch on them:
e.g. use ``$share`` subscriptions only when :func:`shared_subscriptions` saw them work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass

import aiomqtt

from helpers.core import internals
from helpers.core.broker import Broker
from helpers.core.messaging import ack, make_event, manual_ack, publish
from helpers.core.receive import collect, flush
from helpers.pubsub.delivery import MOSQUITTO_MAX_QUEUED, distinct_ids, offline_messages

_EXPECTED_HANG_UP = logging.getLogger("helpers.probes.ack-order")
"""The ack-order probe's client logs here: on a strict broker its "failed to receive on socket"
is the result being measured, not an error for the learner's screen."""
_EXPECTED_HANG_UP.setLevel(logging.CRITICAL)


def _topic(prefix: str) -> str:
    return f"probe/{prefix}/{uuid.uuid4().hex[:8]}"


async def persistent_queueing(broker: Broker, n: int = 5) -> tuple[int, bool]:
    """QoS 1 events sent while a persistent-session subscriber is offline: (how many arrived, any flagged retained)."""
    messages = await offline_messages(broker, _topic("queue"), n=n, qos=1, persistent=True)
    return len(distinct_ids(messages)), any(m.retain for m in messages)


async def qos0_queued(broker: Broker, n: int = 5) -> int:
    """QoS 0 events sent while a persistent-session QoS 0 subscriber is offline: how many arrived."""
    return len(distinct_ids(await offline_messages(broker, _topic("qos0"), n=n, qos=0, persistent=True)))


async def delivered_qos(broker: Broker) -> int:
    """Publish at QoS 0 to a QoS 1 subscription: the QoS the subscriber receives (spec: min = 0)."""
    topic = _topic("dqos")
    async with broker.client() as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, make_event("probe", source="/probe").to_bytes(), qos=0)
        messages = await collect(client, expected=1, idle=1.0)
    return messages[0].qos if messages else -1


async def redelivers_unacked(broker: Broker) -> bool:
    """A QoS 1 message received but never acknowledged: is it sent again when the session resumes?"""
    topic, ident = _topic("redeliver"), f"probe-{uuid.uuid4().hex[:8]}"
    async with manual_ack(broker.client(ident, clean_session=False)) as consumer:
        await consumer.subscribe(topic, qos=1)
        async with broker.client() as producer:
            await publish(producer, topic, make_event("probe", source="/probe"), qos=1)
        first = await collect(consumer, expected=1, idle=1.0)  # received, deliberately not acked
    client = manual_ack(broker.client(ident, clean_session=False))
    async with client as consumer:
        again = await collect(consumer, expected=1, idle=0.5)
        for message in again:
            ack(consumer, message)
    async with broker.client(ident, clean_session=True):
        pass  # drop the session
    return bool(first) and bool(again)


async def out_of_order_acks_tolerated(broker: Broker) -> bool:
    """Three QoS 1 messages acknowledged 3rd, 1st, 2nd: is the client still served afterwards?

    MQTT 3.1.1 (section 4.6) tells a client to send PUBACKs in the order the PUBLISH
    packets arrived. A strict broker disconnects a client that breaks the rule (False:
    the 4th message never arrives); a lenient one carries on (True). The client uses a
    clean session, so the broker keeps nothing once it is gone.
    """
    topic = _topic("ackorder")
    consumer = manual_ack(broker.client(f"probe-{uuid.uuid4().hex[:8]}", logger=_EXPECTED_HANG_UP))
    after: list[aiomqtt.Message] = []
    try:
        async with consumer, broker.client() as producer:
            await consumer.subscribe(topic, qos=1)
            for i in range(3):
                await publish(producer, topic, make_event("probe", {"i": i}, source="/probe"), qos=1)
            first = await collect(consumer, expected=3, idle=1.0)
            if len(first) < 3:
                raise RuntimeError(f"the probe expected 3 messages, the broker delivered {len(first)}")
            for message in (first[2], first[0], first[1]):  # against the rule: not in arrival order
                internals.send_ack(consumer, message.mid, message.qos)
            await publish(producer, topic, make_event("probe", {"i": 3}, source="/probe"), qos=1)
            after = await collect(consumer, expected=1, idle=2.0)  # a disconnect ends this at once
    except aiomqtt.MqttError:
        pass  # the broker hung up: "Disconnected during message iteration", or on the way out
    # A hang-up that raced the end of the block is still stored in the client; reading once
    # more raises and so consumes it (no "Future exception was never retrieved" later).
    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
        await asyncio.wait_for(consumer.messages.__anext__(), 0.05)
    return len(after) == 1


async def shared_subscriptions(broker: Broker, n: int = 10) -> bool:
    """Two members of one ``$share`` group: does each message reach exactly one of them?"""
    topic = _topic("share")
    group = f"$share/probe-{uuid.uuid4().hex[:6]}/{topic}"
    async with broker.client() as a, broker.client() as b:
        await a.subscribe(group, qos=1)
        await b.subscribe(group, qos=1)
        async with broker.client() as producer:
            for i in range(n):
                await publish(producer, topic, make_event("probe", {"i": i}, source="/probe"), qos=1)
            await flush(producer)
        got_a, got_b = await asyncio.gather(collect(a, idle=0.4), collect(b, idle=0.4))
    ids_a, ids_b = distinct_ids(got_a), distinct_ids(got_b)
    return len(ids_a | ids_b) == n and not (ids_a & ids_b) and bool(ids_a) and bool(ids_b)


async def offline_queue_limit(broker: Broker, n: int = MOSQUITTO_MAX_QUEUED + 100) -> int:
    """Send ``n`` QoS 1 events to one offline persistent subscriber: how many does the broker keep?"""
    return len(distinct_ids(await offline_messages(broker, _topic("bound"), n=n, qos=1, persistent=True)))


@dataclass(frozen=True)
class Finding:
    """One row of the guarantees table."""

    behavior: str
    spec: str
    observed: str
    as_spec: bool | None
    """True/False when the spec is definite; None where the spec leaves it to the broker."""

    def as_row(self) -> dict[str, str]:
        verdict = {True: "as spec", False: "DIFFERS", None: "broker's choice"}[self.as_spec]
        return {"behavior": self.behavior, "MQTT 3.1.1 says": self.spec, "this broker did": self.observed, "verdict": verdict}


async def guarantee_table(broker: Broker, *, with_queue_limit: bool = True) -> list[Finding]:
    """Run every probe against ``broker``; one :class:`Finding` per behavior."""
    n = 5
    queued, flagged = await persistent_queueing(broker, n)
    q0 = await qos0_queued(broker, n)
    dqos = await delivered_qos(broker)
    redelivered = await redelivers_unacked(broker)
    tolerated = await out_of_order_acks_tolerated(broker)
    shared = await shared_subscriptions(broker)
    rows = [
        Finding(
            "QoS 1 kept for an offline persistent session",
            "must keep and deliver on reconnect",
            f"{queued} of {n} delivered",
            queued == n,
        ),
        Finding("QoS 0 kept for an offline persistent session", "may keep or drop", f"{q0} of {n} delivered", None),
        Finding(
            "QoS delivered for a QoS 0 publish to a QoS 1 subscription",
            "min(publish, subscription) = 0",
            f"QoS {dqos}" if dqos >= 0 else "nothing arrived",
            dqos == 0,
        ),
        Finding(
            "retain flag on messages queued while offline",
            "0 (they are not retained messages)",
            "1 (flagged retained)" if flagged else "0",
            not flagged,
        ),
        Finding(
            "un-acked QoS 1 message resent when the session resumes",
            "must resend (DUP=1)",
            "resent" if redelivered else "not resent",
            redelivered,
        ),
        Finding(
            "PUBACKs sent out of arrival order",
            "a client must send them in arrival order (4.6)",
            "tolerated" if tolerated else "client disconnected",
            None,
        ),
        Finding(
            "shared subscriptions ($share/group/topic)",
            "not in 3.1.1 (an MQTT 5 feature, common extension)",
            "each message to one member" if shared else "not supported (members got nothing)",
            None,
        ),
    ]
    if with_queue_limit:
        limit_n = MOSQUITTO_MAX_QUEUED + 100
        kept = await offline_queue_limit(broker, limit_n)
        rows.append(
            Finding(
                "messages kept for one offline client",
                "no limit set by the spec (a broker setting)",
                f"{kept} of {limit_n} kept" + ("" if kept == limit_n else f" ({limit_n - kept} dropped)"),
                None,
            )
        )
    return rows
