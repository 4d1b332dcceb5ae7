"""helpers.core.internals: every reach into a third-party private name still works on the pinned versions.

When aiomqtt or paho-mqtt change an internal, these tests fail here, naming the
function, instead of a lesson misbehaving somewhere else.
"""

from __future__ import annotations

import asyncio
import socket

import paho.mqtt.client as paho_mqtt
import pytest

from helpers.core import internals
from helpers.core.broker import Broker
from helpers.core.receive import collect

pytestmark = pytest.mark.broker


async def test_paho_of_is_the_paho_client_and_manual_ack_switches(broker: Broker) -> None:
    client = broker.client()
    assert isinstance(internals.paho_of(client), paho_mqtt.Client)
    assert not internals.acks_manually(client)
    internals.set_manual_ack(client)
    assert internals.acks_manually(client)


async def test_replace_ack_intercepts_the_puback_and_send_ack_sends_it(broker: Broker, topic: str) -> None:
    seen: list[tuple[int, int]] = []
    consumer = broker.client()
    internals.set_manual_ack(consumer)
    original_ack = internals.paho_of(consumer).ack
    async with consumer, broker.client() as producer:
        internals.replace_ack(consumer, lambda mid, qos: seen.append((mid, qos)))
        await consumer.subscribe(topic, qos=1)
        await producer.publish(topic, b"x", qos=1)
        [message] = await collect(consumer, expected=1)
        internals.paho_of(consumer).ack(message.mid, message.qos)
        assert seen == [(message.mid, 1)], "the replacement ack was not the one paho called"
        internals.replace_ack(consumer, original_ack)
        internals.send_ack(consumer, message.mid, message.qos)  # the real PUBACK: must not raise


async def test_on_socket_open_runs_the_callback_with_the_tcp_socket(broker: Broker) -> None:
    sockets: list[object] = []
    client = broker.client()
    internals.on_socket_open(client, lambda c, userdata, sock: sockets.append(sock))
    async with client:
        assert len(sockets) == 1
        assert isinstance(sockets[0], socket.socket)
        assert sockets[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), "broker.client() also set TCP_NODELAY"


async def test_close_socket_is_safe_on_an_open_and_a_closed_client(broker: Broker) -> None:
    client = broker.client()
    internals.close_socket(client)  # never connected: no socket, no error
    async with client:
        pass
    internals.close_socket(client)  # already closed: still no error


async def test_request_reply_over_the_broker_takes_no_delayed_ack_stall(broker: Broker, topic: str) -> None:
    """Without quick acks a request/reply round trip sat 40 ms on the client's delayed TCP ACK."""
    import statistics
    import time

    async with broker.client(cid := f"{topic.replace('/', '-')}-a") as responder, broker.client(f"{cid}-b") as caller:
        await responder.subscribe(f"{topic}/req", qos=1)
        await caller.subscribe(f"{topic}/rep", qos=1)

        async def echo() -> None:
            async for message in responder.messages:
                await responder.publish(f"{topic}/rep", message.payload, qos=1)

        task = asyncio.create_task(echo())
        took = []
        try:
            for _ in range(15):
                began = time.perf_counter()
                await caller.publish(f"{topic}/req", b"x", qos=1)
                await asyncio.wait_for(caller.messages.__anext__(), 5)
                took.append(time.perf_counter() - began)
        finally:
            task.cancel()
    assert statistics.median(took) < 0.02, f"median round trip {statistics.median(took) * 1000:.1f} ms: a 40 ms ACK stall is back"
