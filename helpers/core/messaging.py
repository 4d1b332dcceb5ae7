"""One envelope for every message, and a consumer that never silently drops one.

Every message in the course is a CloudEvents 1.0 event in structured JSON mode: the
event's metadata (id, source, type, time) travels with its data, so any consumer can
dedupe on ``id``, and a W3C ``traceparent`` extension carries the trace across the
broker. We write the envelope by hand (it is ~40 lines) because the CloudEvents SDK
binds to HTTP, while we need bytes for MQTT payloads.

The consumer runner turns the three things that go wrong into visible outcomes:
a payload that is not a valid event goes to a dead-letter topic with the reason at
once (no retry can fix it); a handler that raises is retried up to ``attempts`` times
with backoff (a transient failure passes on a later try) and dead-lettered only when
every attempt failed (poison); a repeated event id is skipped by the dedupe store.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from helpers.core import internals
from helpers.core.receive import subscribed_messages
from helpers.core.resilience import call_with_retries, retry_policy

SPEC_VERSION = "1.0"
REQUIRED = ("specversion", "id", "source", "type")


class InvalidEvent(ValueError):
    """A payload that is not a CloudEvents 1.0 JSON event; the message says what is missing."""


@dataclass(frozen=True)
class Event:
    """A CloudEvents 1.0 event (structured JSON mode), plus an optional traceparent."""

    type: str
    source: str
    data: Any = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    datacontenttype: str = "application/json"
    traceparent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object that goes on the wire."""
        out: dict[str, Any] = {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time,
            "datacontenttype": self.datacontenttype,
            "data": self.data,
        }
        if self.traceparent:
            out["traceparent"] = self.traceparent
        return out

    def to_bytes(self) -> bytes:
        """Encode for an MQTT payload."""
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


def make_event(type: str, data: Any = None, *, source: str = "/course", **kwargs: Any) -> Event:
    """Build an event; ``type`` names what happened, e.g. ``"order.placed"``."""
    if not type or not source:
        raise InvalidEvent("an event needs a non-empty type and source")
    return Event(type=type, source=source, data=data, **kwargs)


def decode(payload: bytes | bytearray | str) -> Event:
    """Parse a payload into an Event, or raise InvalidEvent saying what is wrong."""
    try:
        raw = payload.decode() if isinstance(payload, (bytes, bytearray)) else payload
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(f"payload is not JSON text: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent(f"payload is JSON {type(obj).__name__}, not an object")
    missing = [key for key in REQUIRED if not obj.get(key)]
    if missing:
        raise InvalidEvent(f"missing CloudEvents attribute(s): {', '.join(missing)}")
    if obj["specversion"] != SPEC_VERSION:
        raise InvalidEvent(f"specversion {obj['specversion']!r} is not {SPEC_VERSION!r}")
    return Event(
        type=str(obj["type"]),
        source=str(obj["source"]),
        data=obj.get("data"),
        id=str(obj["id"]),
        time=str(obj.get("time", "")),
        datacontenttype=str(obj.get("datacontenttype", "application/json")),
        traceparent=obj.get("traceparent"),
    )


async def publish(client: aiomqtt.Client, topic: str, event: Event, *, qos: int = 1, retain: bool = False) -> Event:
    """Publish one event; returns it so the caller can keep its id."""
    await client.publish(topic, event.to_bytes(), qos=qos, retain=retain)
    return event


def manual_ack(client: aiomqtt.Client) -> aiomqtt.Client:
    """Make ``client`` acknowledge QoS 1 messages only when :func:`ack` is called.

    aiomqtt acknowledges on receipt; at-least-once processing means acknowledging
    after the work is done, so we switch the underlying paho client to manual acks.
    Call before ``async with client``.
    """
    internals.set_manual_ack(client)
    return client


def ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    """Acknowledge a message received with :func:`manual_ack` on (no-op for QoS 0)."""
    if message.qos > 0:
        internals.send_ack(client, message.mid, message.qos)


class InOrderAcks:
    """Release acknowledgements in the order messages arrived, whatever order the work ends in.

    MQTT 3.1.1 (section 4.6) requires a client to send PUBACKs in the order the PUBLISH
    packets arrived. A consumer that works on several messages at once finishes them in
    any order; acking each as it finishes breaks the rule, and a strict broker (the
    embedded rumqttd) disconnects such a client. So a finished message waits here until
    every message that arrived before it is finished too, then the run is acked at once.

    A message whose work never finishes (the process died) holds back the acks behind it:
    the broker then redelivers them all, which is what at-least-once promises.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self._waiting: dict[int, tuple[aiomqtt.Message, bool]] = {}  # id(message) -> (message, done), arrival order

    def received(self, message: aiomqtt.Message) -> None:
        """Note a message's arrival (call in the order messages are read). No-op for QoS 0."""
        if message.qos > 0 and id(message) not in self._waiting:
            self._waiting[id(message)] = (message, False)

    def done(self, message: aiomqtt.Message) -> None:
        """The work on ``message`` is finished: ack it and every finished message queued behind it."""
        if message.qos == 0:
            return
        if id(message) not in self._waiting:
            self.received(message)
        self._waiting[id(message)] = (message, True)
        for key, (waiting, finished) in list(self._waiting.items()):
            if not finished:
                break
            del self._waiting[key]
            ack(self.client, waiting)

    @property
    def held(self) -> int:
        """Finished messages whose ack waits for an earlier, unfinished one."""
        return sum(finished for _, finished in self._waiting.values())


class SeenIds:
    """The ids a consumer has already applied, kept in a file so they survive a restart.

    Without a file it is an in-memory set (enough inside one process). What it is not:
    it does not ``fsync`` (an id survives a process crash, since the write reached the
    operating system, but not a power loss before the OS wrote it to disk), and it keeps
    every id forever (no retention: the file and the set only grow). A production store
    keeps the id in the same transaction as the effect and drops ids older than the
    longest redelivery window.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self._ids: set[str] = set()
        if self.path and self.path.exists():
            self._ids = {line.strip() for line in self.path.read_text().splitlines() if line.strip()}

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str) -> None:
        """Record an id (appended and flushed at once, so a crash right after keeps it)."""
        if event_id in self._ids:
            return
        self._ids.add(event_id)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(event_id + "\n")


def dead_letter_payload(topic: str, payload: bytes, reason: str) -> bytes:
    """The dead-letter record: where it came from, why, and the original bytes (lossless)."""
    try:
        original: Any = payload.decode()
        encoding = "utf-8"
    except UnicodeDecodeError:
        original, encoding = base64.b64encode(payload).decode(), "base64"
    record = {"reason": reason, "topic": topic, "payload": original, "encoding": encoding}
    return json.dumps(record).encode()


EventHandler = Callable[[Event], Awaitable[None]]


@dataclass
class ConsumerStats:
    """Outcome counts, so a lesson can show that nothing vanished."""

    received: int = 0
    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    retries: int = 0  # handler attempts beyond the first, over all messages


@dataclass
class Consumer:
    """Runs ``handler`` on every event from ``topic`` until cancelled.

    ``dedupe`` (a :class:`SeenIds`) skips ids already applied. A malformed payload is
    published to ``dead_letter_topic`` with the reason at once. A handler that raises is
    tried again, up to ``attempts`` tries in all, with capped, jittered backoff from
    ``retry_base_s``: a transient failure (a timeout, a busy database) passes on a later
    try; a message that fails every try is poison and is dead-lettered with the number of
    attempts in the reason. Either way the consumer keeps going. The default of one
    attempt keeps the capstone's consumers as they were (its processor counts attempts
    itself); lesson 04 asks for three. Messages are acknowledged after handling (manual ack).

    The default dead-letter topic starts with ``dead-letter/``, outside the consumed
    topic's tree: a dead-letter topic under ``orders/`` would be read back by any
    consumer of ``orders/#``, which would dead-letter its own dead letters.
    """

    client: aiomqtt.Client
    topic: str
    handler: EventHandler
    qos: int = 1
    dedupe: SeenIds | None = None
    dead_letter_topic: str | None = None
    attempts: int = 1
    retry_base_s: float = 0.01
    stats: ConsumerStats = field(default_factory=ConsumerStats)
    acks: InOrderAcks = field(init=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        self.acks = InOrderAcks(self.client)
        if self.dead_letter_topic is None:
            self.dead_letter_topic = f"dead-letter/{self.topic.replace('#', 'all').replace('+', 'any')}"

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Subscribe and process forever, one message at a time; set ``ready`` once subscribed.

        Messages are read while the SUBSCRIBE is in flight (see
        :func:`helpers.core.receive.subscribed_messages` for why that order matters).
        """
        async for message in subscribed_messages(self.client, self.topic, qos=self.qos, ready=ready):
            await self.handle(message)

    async def handle(self, message: aiomqtt.Message) -> None:
        """Process one message: decode, dedupe, handle or dead-letter, then ack."""
        self.stats.received += 1
        self.acks.received(message)  # before any await: arrival order
        payload = bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else str(message.payload).encode()
        try:
            event = decode(payload)
        except InvalidEvent as exc:
            await self._dead_letter(message, payload, f"malformed: {exc}")
            return
        if self.dedupe is not None and event.id in self.dedupe:
            self.stats.duplicates += 1
            self.acks.done(message)
            return
        tries = 0

        async def attempt() -> None:
            nonlocal tries
            tries += 1
            await self.handler(event)

        base = self.retry_base_s
        policy = retry_policy(attempts=self.attempts, base_s=base, cap_s=10 * base, retry_on=(Exception,))
        try:
            await call_with_retries(attempt, policy)
        except Exception as exc:  # noqa: BLE001 - failed every attempt: poison, dead-lettered, not lost
            self.stats.retries += tries - 1
            reason = f"handler error after {tries} attempt(s): {type(exc).__name__}: {exc}"
            await self._dead_letter(message, payload, reason)
            return
        self.stats.retries += tries - 1
        if self.dedupe is not None:
            self.dedupe.add(event.id)
        self.stats.processed += 1
        self.acks.done(message)

    async def _dead_letter(self, message: aiomqtt.Message, payload: bytes, reason: str) -> None:
        record = dead_letter_payload(str(message.topic), payload, reason)
        await self.client.publish(self.dead_letter_topic or "dead-letter", record, qos=1)
        self.stats.dead_lettered += 1
        self.acks.done(message)
