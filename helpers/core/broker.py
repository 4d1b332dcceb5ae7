"""An MQTT broker for the lessons: embedded (amqtt, in-process) or real (MQTT_URL).

Learners should not need to install anything, so by default we start an amqtt broker
inside the running event loop, bound to 127.0.0.1 on a free port. Setting
``MQTT_URL=mqtt://[user:pass@]host:port`` points every notebook at a real broker
(Mosquitto, EMQX, HiveMQ) instead, with no code change.

The embedded broker is configured so that persistent sessions really queue messages
for offline clients: amqtt only does that when anonymous access is off and each
client sends a username, so every client made by :meth:`Broker.client` identifies
itself with one.

    async with mqtt_broker() as broker:
        async with broker.client("sensor") as client:
            await client.publish("temp", b"21.5", qos=1)
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt

from helpers.core import internals
from helpers.core.waiting import until

CONNECT_TIMEOUT_S = 5.0
"""A broker that does not answer within this many seconds is reported, never waited on."""

_running: dict[str, Broker] = {}


class BrokerError(RuntimeError):
    """The broker could not be configured, started or reached; the message says why."""


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

    def __init__(self, url: str | None = None, name: str = "default") -> None:
        self.name = name
        self._url = url if url is not None else os.environ.get("MQTT_URL") or None
        self.endpoint: Endpoint | None = parse_mqtt_url(self._url) if self._url else None
        self._amqtt: Any = None

    @property
    def embedded(self) -> bool:
        """True when the broker runs inside this process (no MQTT_URL)."""
        return self._url is None

    @property
    def kind(self) -> str:
        """A label for tables and plots: which broker answered."""
        return "embedded amqtt" if self.embedded else f"external ({self.endpoint.host if self.endpoint else '?'})"

    @property
    def url(self) -> str:
        """Where the broker listens (password hidden)."""
        if self.endpoint is None:
            raise BrokerError("the broker is not started yet; use 'async with mqtt_broker()' or start_broker()")
        return self.endpoint.url

    @property
    def supports_shared_subscriptions(self) -> bool:
        """amqtt 0.12 has no ``$share/...``; real brokers we target do (MQTT 5 and 3.1.1 extensions)."""
        return not self.embedded

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
        from amqtt.broker import Broker as AmqttBroker

        for noisy in ("amqtt", "transitions"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}},
            # Only these plugins: no $SYS chatter, and anonymous OFF so offline queueing works.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}},
        }
        self._amqtt = AmqttBroker(config)
        await self._amqtt.start()
        self.endpoint = Endpoint("127.0.0.1", internals.amqtt_port(self._amqtt))

    async def stop(self) -> None:
        """Stop the embedded broker (external brokers are left running)."""
        if self._amqtt is not None:
            amqtt, self._amqtt = self._amqtt, None
            await amqtt.shutdown()
        if _running.get(self.name) is self:
            del _running[self.name]

    async def __aenter__(self) -> Broker:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    def client(self, name: str | None = None, *, clean_session: bool = True, **kwargs: Any) -> aiomqtt.Client:
        """An aiomqtt client whose MQTT client id is ``name``.

        The same name plus ``clean_session=False`` resumes the same persistent session,
        which is what lets a consumer pick up messages sent while it was away.
        """
        if self.endpoint is None:
            raise BrokerError("the broker is not started yet; use 'async with mqtt_broker()' or start_broker()")
        ident = name or f"client-{uuid.uuid4().hex[:8]}"
        username = self.endpoint.username or ident
        kwargs.setdefault("timeout", CONNECT_TIMEOUT_S)
        client = _SessionSafeClient(
            self,
            self.endpoint.host,
            self.endpoint.port,
            identifier=ident,
            username=username,
            password=self.endpoint.password,
            clean_session=clean_session,
            **kwargs,
        )
        _no_nagle(client)
        return client

    async def until_offline(self, client_id: str, timeout: float = 1.0) -> bool:
        """Wait until the embedded broker has finished closing ``client_id``'s last connection.

        Returns False if it is still connected after ``timeout`` (a deliberate take-over
        by a second client with the same id: MQTT lets the newcomer win, so go ahead).
        Nothing to wait for on an external broker.
        """
        amqtt = self._amqtt
        if amqtt is None:
            return True
        return await until(lambda: not internals.amqtt_connected(amqtt, client_id), timeout, poll=0.002)

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


class _SessionSafeClient(aiomqtt.Client):
    """An aiomqtt client that, on the embedded broker, reconnects only once its old connection is gone.

    amqtt 0.12 closes a connection asynchronously; if the same client id reconnects
    before that finishes, the old connection's clean-up marks the *resumed* session
    offline and its messages pile up undelivered (seen in ~1 of 3 instant reconnects).
    A real client reconnects after a delay anyway; we wait for the condition itself.
    Mosquitto takes sessions over correctly, so nothing is waited for there.
    """

    def __init__(self, broker: Broker, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._course_broker = broker

    async def __aenter__(self) -> _SessionSafeClient:
        await self._course_broker.until_offline(self.identifier)
        await super().__aenter__()
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


def mqtt_broker(url: str | None = None, name: str = "default") -> Broker:
    """A broker to use with ``async with``: MQTT_URL if set (or ``url``), else embedded."""
    return Broker(url, name=name)


async def start_broker(url: str | None = None, name: str = "default") -> Broker:
    """Start (or restart) the notebook's broker; re-running the cell replaces the old one."""
    return await Broker(url, name=name).start()
