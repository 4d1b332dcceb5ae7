"""Consumer.run resumes a persistent session that has queued messages (regression test).

With manual acks, some brokers (amqtt 0.12, the course's first embedded broker) answer a
SUBSCRIBE only after the queued messages they sent on connect are acked; a consumer that
subscribed before reading hung until a timeout. Both helpers.core.messaging.Consumer.run and
helpers.core.receive.subscribed_messages read while subscribing.
"""

from __future__ import annotations

import asyncio

from helpers.core.broker import Broker
from helpers.core.lifecycle import kill
from helpers.core.messaging import Consumer, Event, ack, make_event, manual_ack, publish
from helpers.core.receive import subscribed_messages


async def _publish(broker: Broker, topic: str, n: int) -> None:
    async with broker.client() as pub:
        for i in range(n):
            await publish(pub, topic, make_event("t", {"i": i}), qos=1)


async def test_consumer_run_resumes_session_with_queued_messages(broker: Broker, topic: str) -> None:
    name = topic.replace("/", "-") + "-c"
    seen: list[int] = []

    async def handler(event: Event) -> None:
        seen.append(event.data["i"])

    async def life() -> asyncio.Task[None]:
        client = manual_ack(broker.client(name, clean_session=False))
        await client.__aenter__()
        ready = asyncio.Event()
        task = asyncio.create_task(Consumer(client, topic, handler).run(ready))
        await asyncio.wait_for(ready.wait(), 3)  # hung here before the fix, on the embedded broker
        task.add_done_callback(lambda _: asyncio.ensure_future(client.__aexit__(None, None, None)))
        return task

    task = await life()
    await _publish(broker, topic, 1)
    for _ in range(300):
        if seen:
            break
        await asyncio.sleep(0.01)
    await kill(task)
    await asyncio.sleep(0.05)
    await _publish(broker, topic, 3)  # queued for the offline session
    task = await life()
    for _ in range(300):
        if len(seen) >= 4:
            break
        await asyncio.sleep(0.01)
    await kill(task)
    async with broker.client(name, clean_session=True):
        pass
    assert sorted(seen) == [0, 0, 1, 2]


async def test_subscribed_messages_resumes_session_with_queued_messages(broker: Broker, topic: str) -> None:
    name = topic.replace("/", "-") + "-g"
    async with manual_ack(broker.client(name, clean_session=False)) as client:
        await client.subscribe(topic, qos=1)
    await _publish(broker, topic, 3)
    got = []
    async with manual_ack(broker.client(name, clean_session=False)) as client:
        ready = asyncio.Event()

        async def read() -> None:
            async for message in subscribed_messages(client, topic, qos=1, ready=ready):
                got.append(message)
                ack(client, message)
                if len(got) == 4:
                    return

        reader = asyncio.create_task(read())
        await asyncio.wait_for(ready.wait(), 3)
        await _publish(broker, topic, 1)  # and one more after the subscription is confirmed
        await asyncio.wait_for(reader, 5)
    async with broker.client(name, clean_session=True):
        pass
    assert len(got) == 4
