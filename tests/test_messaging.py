"""helpers.core.messaging: the CloudEvents envelope, decode errors, SeenIds, and the Consumer on a real broker."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from helpers.core.broker import Broker
from helpers.core.lifecycle import kill
from helpers.core.messaging import (
    SPEC_VERSION,
    Consumer,
    ConsumerStats,
    Event,
    InvalidEvent,
    SeenIds,
    ack,
    dead_letter_payload,
    decode,
    make_event,
    manual_ack,
    publish,
)
from helpers.core.waiting import until

WAIT_S = 5.0

# --- the envelope ------------------------------------------------------------------------------


def test_event_round_trip_keeps_every_attribute() -> None:
    event = make_event(
        "order.placed",
        {"order": 7, "items": ["a", "b"], "total": 12.5},
        source="/shop",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    assert decode(event.to_bytes()) == event
    assert decode(event.to_bytes().decode()) == event, "text payloads decode too"


def test_event_wire_format_is_cloudevents_structured_json() -> None:
    event = make_event("order.placed", None)
    wire = json.loads(event.to_bytes())
    assert wire["specversion"] == SPEC_VERSION == "1.0"
    assert set(wire) == {"specversion", "id", "source", "type", "time", "datacontenttype", "data"}
    assert wire["source"] == "/course"
    assert wire["datacontenttype"] == "application/json"
    assert "traceparent" not in wire, "no traceparent key when there is no trace"
    assert make_event("x").id != make_event("x").id, "every event gets a fresh id"


@pytest.mark.parametrize("kwargs", [{"type": ""}, {"type": "t", "source": ""}])
def test_make_event_needs_type_and_source(kwargs: dict[str, str]) -> None:
    with pytest.raises(InvalidEvent, match="non-empty type and source"):
        make_event(**kwargs)


def _wire(**changes: object) -> bytes:
    obj = make_event("t", 1).to_dict()
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"hello", "not JSON text"),
        (b"", "not JSON text"),
        (b"\xff\xfe\x00", "not JSON text"),
        (b"[1, 2]", "JSON list, not an object"),
        (b"42", "JSON int, not an object"),
        (b'"order"', "JSON str, not an object"),
        (b"{}", "missing CloudEvents attribute(s): specversion, id, source, type"),
        (_wire(id=...), "missing CloudEvents attribute(s): id"),
        (_wire(source="", type=...), "missing CloudEvents attribute(s): source, type"),
        (_wire(specversion="0.3"), "specversion '0.3' is not '1.0'"),
    ],
)
def test_decode_says_what_is_wrong(payload: bytes, says: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode(payload)
    assert says in str(info.value)


def test_decode_tolerates_missing_optional_attributes() -> None:
    event = decode(b'{"specversion":"1.0","id":"1","source":"/s","type":"t"}')
    assert (event.id, event.data, event.traceparent, event.datacontenttype) == ("1", None, None, "application/json")


def test_dead_letter_record_is_lossless() -> None:
    text = json.loads(dead_letter_payload("orders", b"not json", "malformed: x"))
    assert text == {"reason": "malformed: x", "topic": "orders", "payload": "not json", "encoding": "utf-8"}
    binary = json.loads(dead_letter_payload("orders", b"\xff\x00", "r"))
    assert binary["encoding"] == "base64"
    assert base64.b64decode(binary["payload"]) == b"\xff\x00"


# --- SeenIds ---------------------------------------------------------------------------------------------


def test_seen_ids_in_memory() -> None:
    seen = SeenIds()
    assert "a" not in seen
    assert len(seen) == 0
    seen.add("a")
    seen.add("a")
    assert "a" in seen
    assert len(seen) == 1


def test_seen_ids_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "seen.txt"  # the folder does not exist yet
    first = SeenIds(path)
    for event_id in ("e1", "e2", "e1"):
        first.add(event_id)
    del first  # the consumer process "dies"
    restarted = SeenIds(path)
    assert "e1" in restarted
    assert "e2" in restarted
    assert "e3" not in restarted
    assert len(restarted) == 2
    assert path.read_text().split() == ["e1", "e2"], "ids are appended once each"
    restarted.add("e3")
    assert "e3" in SeenIds(path)


# --- Consumer against a real broker ------------------------------------------------------------------------


class Harness:
    """A Consumer running in the background, plus a watcher on its dead-letter topic."""

    def __init__(self, broker: Broker, topic: str, consumer: Consumer, watcher: aiomqtt.Client, publisher: aiomqtt.Client):
        self.broker, self.topic, self.consumer, self.watcher, self.publisher = broker, topic, consumer, watcher, publisher

    async def dead_letter(self) -> dict[str, str]:
        message = await asyncio.wait_for(self.watcher.messages.__anext__(), WAIT_S)
        return json.loads(message.payload)

    async def until_processed(self, count: int) -> None:
        assert await until(lambda: self.consumer.stats.processed >= count, WAIT_S, poll=0.005), (
            f"processed {self.consumer.stats.processed} of {count} within {WAIT_S} s"
        )


@pytest.fixture
async def harness(broker: Broker, topic: str) -> AsyncIterator[tuple[Harness, list[Event]]]:
    handled: list[Event] = []

    async def handler(event: Event) -> None:
        if event.data == "boom":
            raise RuntimeError("cannot process boom")
        handled.append(event)

    base = topic.replace("/", "-")
    client = manual_ack(broker.client(f"{base}-consumer"))
    async with client, broker.client(f"{base}-watcher") as watcher, broker.client(f"{base}-publisher") as publisher:
        consumer = Consumer(client, f"{topic}/orders", handler, dedupe=SeenIds(), dead_letter_topic=f"{topic}/dlq")
        await watcher.subscribe(f"{topic}/dlq", qos=1)
        ready = asyncio.Event()
        task = asyncio.create_task(consumer.run(ready))
        await asyncio.wait_for(ready.wait(), WAIT_S)
        yield Harness(broker, f"{topic}/orders", consumer, watcher, publisher), handled
        assert not task.done(), "the consumer stopped running"
        assert await kill(task) is None
        assert task.cancelled()


async def test_consumer_processes_dedupes_and_dead_letters(harness: tuple[Harness, list[Event]]) -> None:
    h, handled = harness
    good = make_event("order.placed", {"n": 1})
    await publish(h.publisher, h.topic, good)
    await h.until_processed(1)

    await h.publisher.publish(h.topic, b"this is not json", qos=1)
    record = await h.dead_letter()
    assert record["reason"].startswith("malformed: payload is not JSON text")
    assert (record["topic"], record["payload"]) == (h.topic, "this is not json")

    await h.publisher.publish(h.topic, b'{"specversion": "1.0"}', qos=1)
    assert "missing CloudEvents attribute(s): id, source, type" in (await h.dead_letter())["reason"]

    await h.publisher.publish(h.topic, b"[1]", qos=1)
    assert "not an object" in (await h.dead_letter())["reason"]

    bad = make_event("order.placed", "boom")
    await publish(h.publisher, h.topic, bad)
    record = await h.dead_letter()
    assert record["reason"] == "handler error after 1 attempt(s): RuntimeError: cannot process boom"
    assert decode(record["payload"]) == bad, "the original event is kept in the dead letter"

    await publish(h.publisher, h.topic, good)  # a publisher retry: same id again
    second = make_event("order.placed", {"n": 2})
    await publish(h.publisher, h.topic, second)
    await h.until_processed(2)  # the consumer kept running after every failure

    assert [e.id for e in handled] == [good.id, second.id]
    stats = h.consumer.stats
    assert (stats.received, stats.processed, stats.duplicates, stats.dead_lettered) == (7, 2, 1, 4)


async def test_consumer_retries_a_transient_failure_and_dead_letters_poison(broker: Broker, topic: str) -> None:
    """attempts=3: a handler failing twice then passing is processed; one failing every try is dead-lettered."""
    tries: dict[str, int] = {}

    async def handler(event: Event) -> None:
        tries[event.data] = tries.get(event.data, 0) + 1
        if event.data == "poison" or (event.data == "flaky" and tries["flaky"] <= 2):
            raise TimeoutError(f"{event.data} failed on try {tries[event.data]}")

    async with manual_ack(broker.client()) as client, broker.client() as watcher, broker.client() as publisher:
        consumer = Consumer(client, topic, handler, dead_letter_topic=f"dead-letter/{topic}", attempts=3, retry_base_s=0.001)
        await watcher.subscribe(f"dead-letter/{topic}", qos=1)
        ready = asyncio.Event()
        task = asyncio.create_task(consumer.run(ready))
        await asyncio.wait_for(ready.wait(), WAIT_S)
        for data in ("flaky", "poison", "fine"):
            await publish(publisher, topic, make_event("order.placed", data))
        record = json.loads((await asyncio.wait_for(watcher.messages.__anext__(), WAIT_S)).payload)
        assert await until(lambda: consumer.stats.received == 3 and consumer.stats.processed == 2, WAIT_S)
        await kill(task)
    assert tries == {"flaky": 3, "poison": 3, "fine": 1}
    assert record["reason"] == "handler error after 3 attempt(s): TimeoutError: poison failed on try 3"
    assert decode(record["payload"]).data == "poison"
    assert (consumer.stats.dead_lettered, consumer.stats.retries) == (1, 4)


async def test_consumer_does_not_retry_a_process_death(broker: Broker, topic: str) -> None:
    """A BaseException (a cancelled task, a dying process) ends the consumer; it is neither retried nor dead-lettered."""
    tries = 0

    class Died(BaseException):
        pass

    async def handler(event: Event) -> None:
        nonlocal tries
        tries += 1
        raise Died

    async with manual_ack(broker.client()) as client, broker.client() as publisher:
        consumer = Consumer(client, topic, handler, attempts=3)
        ready = asyncio.Event()
        task = asyncio.create_task(consumer.run(ready))
        await asyncio.wait_for(ready.wait(), WAIT_S)
        await publish(publisher, topic, make_event("order.placed", 1))
        with pytest.raises(Died):
            await asyncio.wait_for(task, WAIT_S)
    assert tries == 1
    assert consumer.stats.dead_lettered == 0


async def test_consumer_needs_at_least_one_attempt() -> None:
    async def nothing(_: Event) -> None:
        return None

    with pytest.raises(ValueError, match="at least 1"):
        Consumer(aiomqtt.Client("127.0.0.1"), "t", nothing, attempts=0)


async def test_consumer_default_dead_letter_topic(broker: Broker) -> None:
    async def nothing(_: Event) -> None:
        return None

    client = broker.client()
    assert Consumer(client, "orders/#", nothing).dead_letter_topic == "dead-letter/orders/all"
    assert Consumer(client, "+/temp", nothing).dead_letter_topic == "dead-letter/any/temp"


async def test_dedupe_survives_consumer_restart(broker: Broker, topic: str, tmp_path: Path) -> None:
    """The same event id delivered to a *new* consumer process is still applied once."""
    path = tmp_path / "seen.txt"
    applied: list[str] = []

    async def apply(event: Event) -> None:
        applied.append(event.id)

    event = make_event("payment.taken", {"amount": 10})
    base = topic.replace("/", "-")
    async with broker.client(f"{base}-pub") as publisher:
        for life in range(2):  # first life, then the "restarted" consumer
            client = manual_ack(broker.client(f"{base}-consumer-{life}"))
            async with client:
                consumer = Consumer(client, topic, apply, dedupe=SeenIds(path))
                ready = asyncio.Event()
                task = asyncio.create_task(consumer.run(ready))
                await asyncio.wait_for(ready.wait(), WAIT_S)
                await publish(publisher, topic, event)

                def handled_once(s: ConsumerStats = consumer.stats) -> bool:
                    return s.processed + s.duplicates >= 1

                assert await until(handled_once, WAIT_S, poll=0.005)
                assert await kill(task) is None
                assert task.cancelled()
            if life == 1:
                assert (consumer.stats.processed, consumer.stats.duplicates) == (0, 1)
    assert applied == [event.id]


async def test_ack_is_a_no_op_for_qos0(broker: Broker, topic: str) -> None:
    client = manual_ack(broker.client(topic.replace("/", "-")))
    async with client:
        await client.subscribe(topic, qos=0)
        sent = await publish(client, topic, make_event("t", 1), qos=0)
        message = await asyncio.wait_for(client.messages.__anext__(), WAIT_S)
        assert message.qos == 0
        ack(client, message)  # must not raise or send anything
        assert decode(message.payload) == sent
