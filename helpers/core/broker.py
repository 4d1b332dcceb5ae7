"""An MQTT broker for the lessons: embedded (rumqttd, via iotcore) or real (MQTT_URL).

Learners should not need to install anything, so by default we start an embedded
broker bound to 127.0.0.1 on a free port: rumqttd, a Rust MQTT broker that the
``iotcore`` package ships as a wheel and runs in a child process of the kernel (the
child exits when the kernel does). It behaves like Mosquitto in everything the lessons
rely on: persistent sessions queue for offline clients, unacknowledged QoS 1 messages
are redelivered on resume, ``$share/...`` subscriptions split work, keepalive is
enforced and a silent client's will is sent (tests/test_broker_conformance.py proves
each on both brokers). It is stricter than Mosquitto in one way the course respects:
a client must acknowledge QoS 1 messages in the order they arrived.

Setting ``MQTT_URL=mqtt://[user:pass@]host:port`` points every notebook at a real broker
(Mosquitto, EMQX, HiveMQ) instead, with no code change.

    async with mqtt_broker() as broker:
        async with broker.client("sensor") as client:
            await client.publish("temp", b"21.5", qos=1)
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt

from helpers.core import internals
from helpers.core.mosquitto import free_port

CONNECT_TIMEOUT_S = 5.0
"""A broker that does not answer within this many seconds is reported, never waited on."""

KEEPALIVE_S = 30
"""Seconds between keepalive pings. Must be > 0: rumqttd never answers a CONNECT with keepalive 0."""

MAX_PAYLOAD_BYTES = 1 << 20
"""The embedded broker's payload limit (rumqttd's default is 20 KiB). The course's messages
carry references, never image bytes (claim check), so 1 MiB leaves wide room; a larger
publish closes the publisher's connection, which :class:`BrokerError` then explains."""

EMBEDDED_START_TIMEOUT_S = 10.0

_running: dict[str, Broker] = {}


class BrokerError(RuntimeError):
    """The broker could not be configured, started or reached; the message says why."""


class ConnectRefused(BrokerError, aiomqtt.MqttError):
    """A client got no CONNACK in time. Also an ``aiomqtt.MqttError``, so code that
    handles connection errors the aiomqtt way keeps working."""


@dataclass(frozen=True)
class Endpoint:
    """Where a broker listens and how to log in to it."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        """The URL with any password hidden, safe to print in a notebook."""
        auth = f"{self.username}:***@" if self.password else (f"{self.username}@" if self.username else "")
        return f"mqtt://{auth}{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> Endpoint:
    """Turn ``mqtt://[user:pass@]host[:port]`` into an :class:`Endpoint`, or say what is wrong."""
    text = url.strip()
    hint = "expected mqtt://[user:pass@]host[:port], e.g. mqtt://127.0.0.1:1883"
    if "://" not in text:
        raise BrokerError(f"MQTT_URL {url!r} has no scheme; {hint}")
    parts = urlsplit(text)
    if parts.scheme not in ("mqtt", "tcp"):
        raise BrokerError(f"MQTT_URL scheme {parts.scheme!r} is not supported (only mqtt://); {hint}")
    if not parts.hostname:
        raise BrokerError(f"MQTT_URL {url!r} has no host; {hint}")
    try:
        port = parts.port or 1883
    except ValueError as exc:
        raise BrokerError(f"MQTT_URL {url!r} has a bad port ({exc}); {hint}") from None
    if parts.path not in ("", "/") or parts.query:
        raise BrokerError(f"MQTT_URL {url!r} has an unexpected path or query; {hint}")
    return Endpoint(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


class Broker:
    """A running broker (embedded or external) and a factory for named clients.

    Use ``async with mqtt_broker() as broker`` in scripts and tests; in a notebook,
    ``broker = await start_broker()`` in one cell and ``await broker.stop()`` at the end.
    """

    def __init__(self, url: str | None = None, name: str = "default", *, embedded: bool = False) -> None:
        self.name = name
        if embedded and url:
            raise BrokerError("pass either a url or embedded=True, not both")
        self._url = None if embedded else (url if url is not None else os.environ.get("MQTT_URL") or None)
        self.endpoint: Endpoint | None = parse_mqtt_url(self._url) if self._url else None
        self._embedded: Any = None  # the iotcore.Broker while it runs
        self.started_in_s: float | None = None
        """How long the embedded broker took to accept connections (None for an external one)."""

    @property
    def embedded(self) -> bool:
        """True when the course starts the broker itself (no MQTT_URL)."""
        return self._url is None

    @property
    def kind(self) -> str:
        """A label for tables and plots: which broker answered."""
        return "embedded rumqttd" if self.embedded else f"external ({self.endpoint.host if self.endpoint else '?'})"

    @property
    def url(self) -> str:
        """Where the broker listens (password hidden)."""
        if self.endpoint is None:
            raise BrokerError("the broker is not started yet; use 'async with mqtt_broker()' or start_broker()")
        return self.endpoint.url

    @property
    def supports_shared_subscriptions(self) -> bool:
        """Whether ``$share/GROUP/topic`` splits messages among a group's members.

        rumqttd and every real broker the course targets (Mosquitto, EMQX, HiveMQ) do;
        kept as a property so a lesson can say which design it runs. Caveat (measured, see
        tests/test_broker_conformance.py): on rumqttd a member that dies holding an
        unacknowledged message strands it, so work that must survive a crash uses one
        subscription + a worker pool there.
        """
        return True

    async def start(self) -> Broker:
        """Start the embedded broker, or check the external one answers within 5 s."""
        previous = _running.get(self.name)
        if previous is not None and previous is not self:
            await previous.stop()
        if self.embedded:
            await self._start_embedded()
        await self.ping()
        _running[self.name] = self
        return self

    async def _start_embedded(self) -> None:
        """Start rumqttd (iotcore) on a free 127.0.0.1 port; retry if another program took the port first."""
        try:
            from iotcore import Broker as IotCoreBroker
        except ImportError as exc:
            raise BrokerError(
                f"the embedded MQTT broker needs the iotcore package ({exc}): run 'make lab' or 'pip install -e .'"
            ) from None
        loop = asyncio.get_running_loop()
        problem = "no attempt made"
        for _attempt in range(3):
            port = free_port()  # iotcore cannot bind port 0: pick one, and retry on a race
            broker = IotCoreBroker(port=port, listen="127.0.0.1", max_payload_size=MAX_PAYLOAD_BYTES)
            began = loop.time()
            try:
                await asyncio.to_thread(broker.start, EMBEDDED_START_TIMEOUT_S)  # blocks ~0.1-0.2 s: not on the loop
            except OSError as exc:  # the port was taken between free_port() and the bind
                problem = f"port {port} is busy ({exc})"
                continue
            except RuntimeError as exc:
                raise BrokerError(f"the embedded MQTT broker did not start: {exc}") from None
            self._embedded, self.started_in_s = broker, loop.time() - began
            self.endpoint = Endpoint("127.0.0.1", port)
            return
        raise BrokerError(f"the embedded MQTT broker found no free port after 3 attempts: {problem}")

    async def stop(self) -> None:
        """Stop the embedded broker (external brokers are left running). Safe to call twice."""
        if self._embedded is not None:
            broker, self._embedded = self._embedded, None
            await asyncio.to_thread(broker.stop)
        if _running.get(self.name) is self:
            del _running[self.name]

    async def __aenter__(self) -> Broker:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    def client(self, name: str | None = None, *, clean_session: bool = True, **kwargs: Any) -> aiomqtt.Client:
        """An aiomqtt client whose MQTT client id is ``name``.

        The same name plus ``clean_session=False`` resumes the same persistent session,
        which is what lets a consumer pick up messages sent while it was away. A client
        that gets no CONNACK raises :class:`ConnectRefused` saying why that may be.
        """
        if self.endpoint is None:
            raise BrokerError("the broker is not started yet; use 'async with mqtt_broker()' or start_broker()")
        keepalive = kwargs.setdefault("keepalive", KEEPALIVE_S)
        if not keepalive or keepalive <= 0:
            raise BrokerError(
                f"keepalive must be > 0 seconds, got {keepalive!r}: a broker may never answer a CONNECT without one"
            )
        kwargs.setdefault("timeout", CONNECT_TIMEOUT_S)
        client = _CourseClient(
            self,
            self.endpoint.host,
            self.endpoint.port,
            identifier=name or f"client-{uuid.uuid4().hex[:8]}",
            username=self.endpoint.username,
            password=self.endpoint.password,
            clean_session=clean_session,
            **kwargs,
        )
        _no_nagle(client)
        internals.quick_acks(client)
        return client

    async def ping(self) -> float:
        """Round-trip one QoS 1 message through the broker; return seconds, or raise BrokerError."""
        try:
            return await asyncio.wait_for(self._round_trip(), CONNECT_TIMEOUT_S)
        except (TimeoutError, aiomqtt.MqttError, OSError) as exc:
            timed_out = isinstance(exc, asyncio.TimeoutError)
            reason = f"no answer within {CONNECT_TIMEOUT_S:g} s" if timed_out else str(exc) or type(exc).__name__
            where = self.endpoint.url if self.endpoint else "?"
            fix = "" if self.embedded else " Is it running? Unset MQTT_URL to use the embedded broker."
            raise BrokerError(f"cannot reach the MQTT broker at {where}: {reason}.{fix}") from None

    async def _round_trip(self) -> float:
        loop = asyncio.get_running_loop()
        topic = f"helpers/ping/{uuid.uuid4().hex}"
        client = self.client()
        try:
            async with client:
                await client.subscribe(topic, qos=1)
                start = loop.time()
                await client.publish(topic, b"ping", qos=1)
                async for _ in client.messages:
                    return loop.time() - start
        except asyncio.CancelledError:
            # Timed out (often while waiting for CONNACK): aiomqtt leaves that socket
            # registered with the loop, and when the broker finally hangs up its callback
            # fails with an "Exception in callback" log. Close it now; no-op if already closed.
            internals.close_socket(client)
            raise
        raise BrokerError("the broker closed the ping subscription without a message")


class _CourseClient(aiomqtt.Client):
    """An aiomqtt client whose failure to connect says what to check.

    A broker that ignores a CONNECT (wrong credentials on some brokers, keepalive 0 on
    rumqttd, a firewall) leaves aiomqtt with a bare "Operation timed out".
    """

    def __init__(self, broker: Broker, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._course_broker = broker

    async def __aenter__(self) -> _CourseClient:
        try:
            await super().__aenter__()
        except aiomqtt.MqttError as exc:
            broker = self._course_broker
            where = broker.endpoint.url if broker.endpoint else "?"
            hint = (
                "is the broker still running (did a cell stop it)?"
                if broker.embedded
                else "is it running, and are the user name and password in MQTT_URL right?"
            )
            internals.close_socket(self)
            raise ConnectRefused(
                f"client {self.identifier!r} could not connect to the MQTT broker at {where}: {exc}; {hint}"
            ) from None
        return self


def _no_nagle(client: aiomqtt.Client) -> None:
    """Send small MQTT packets at once (TCP_NODELAY), as asyncio and most brokers do.

    paho leaves Nagle's algorithm on; with delayed ACKs a small packet written right
    after another (a PUBACK, then a reply) then waits ~40 ms, which would add a fake
    40-90 ms to every request/reply or chained-message measurement in the course.
    """

    def nodelay(c: Any, userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):  # not a TCP socket (unix/websocket transport)
            pass

    internals.on_socket_open(client, nodelay)


def mqtt_broker(url: str | None = None, name: str = "default", *, embedded: bool = False) -> Broker:
    """A broker to use with ``async with``: ``url``, else MQTT_URL if set, else embedded.

    ``embedded=True`` starts the embedded broker whatever MQTT_URL says (benchmarks compare the two).
    """
    return Broker(url, name=name, embedded=embedded)


async def start_broker(url: str | None = None, name: str = "default") -> Broker:
    """Start (or restart) the notebook's broker; re-running the cell replaces the old one."""
    return await Broker(url, name=name).start()
