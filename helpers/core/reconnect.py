"""Keep a service's MQTT clients connected: after a lost connection, connect again, with backoff.

A broker restart, a network blip or a missed keepalive (a process whose event loop stood
still longer than the keepalive) closes a client's connection. aiomqtt then raises
``MqttError`` and does not reconnect by itself: a consumer task ends, and a publisher
answers every later publish with an error until the process is restarted. A service
that must keep working wraps each client's life in :func:`reconnecting`:

    task = await lifecycle.start(reconnecting, serve, client_id)   # serve(client_id, ready=...)

Each run of the session connects a *fresh* client with the same id, so a persistent
session (``clean_session=False``) resumes on the broker and hands over what arrived, and
what was delivered but not acknowledged, while the client was away. The pauses between
attempts grow exponentially with full jitter (tenacity), so a broker coming back is not
met by every client at the same instant.

:class:`Publisher` is the same for a client that only publishes (Upload's): it keeps the
connection up in the background and a publish waits briefly for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import tenacity

from helpers.core.broker import Broker
from helpers.core.lifecycle import Restartable
from helpers.core.messaging import Event, publish

RECONNECT_FIRST_S = 0.1
"""Pause before the first attempt to connect again; it doubles with each failed attempt..."""
RECONNECT_MAX_S = 2.0
"""...up to this, so a client notices a broker that came back within about two seconds."""
PUBLISH_WAIT_S = 2.0
"""How long :meth:`Publisher.publish` waits for a lost connection to come back before it raises."""

log = logging.getLogger(__name__)


class NotConnected(aiomqtt.MqttError):
    """A publish found no connection to the broker, and none came back within ``PUBLISH_WAIT_S``."""


def _log_lost(state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    pause = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("MQTT connection lost (%s); connecting again in %.2f s", error, pause)


async def reconnecting(session: Callable[..., Awaitable[None]], *args: Any, ready: asyncio.Event, **kwargs: Any) -> None:
    """Run ``session(*args, ready=ready, **kwargs)``, and again each time its connection is lost, until cancelled.

    The first connection's failure is raised as it is (a wrong URL or a stopped broker
    says so at once). Once ``ready`` was set, an ``aiomqtt.MqttError`` means a lost
    connection: the session runs again after a pause, for as long as it takes. Any other
    error ends it, e.g. the ``BrokerError`` of a client asked of an embedded broker that was
    stopped on purpose (a notebook's old services must not knock on a dead port forever).
    """

    def lost(error: BaseException) -> bool:
        return isinstance(error, aiomqtt.MqttError) and ready.is_set()

    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(lost),
        wait=tenacity.wait_random_exponential(multiplier=RECONNECT_FIRST_S, max=RECONNECT_MAX_S),
        before_sleep=_log_lost,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            await session(*args, ready=ready, **kwargs)


class Publisher:
    """An MQTT client that a service publishes through, connected again whenever its connection is lost.

    ``await Publisher(broker, "upload-pub").start()``, then ``await publisher.publish(topic, event)``
    from any handler; :meth:`stop` disconnects. While the connection is down a publish waits
    up to ``PUBLISH_WAIT_S`` for it, then raises :class:`NotConnected` (an ``aiomqtt.MqttError``).
    """

    def __init__(self, broker: Broker, client_id: str, **client_options: Any) -> None:
        self.broker, self.client_id, self.client_options = broker, client_id, client_options
        self.connections = 0
        """How many times it connected (1 + the reconnections)."""
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._life = Restartable()

    async def start(self) -> Publisher:
        """Connect; returns once connected (a broker that cannot be reached is reported here)."""
        await self._life.launch(reconnecting, self._session)
        return self

    async def _session(self, ready: asyncio.Event) -> None:
        client = self.broker.client(self.client_id, **self.client_options)
        async with client:
            client.pending_calls_threshold = 1000  # a burst of uploads means many publishes in flight: not a warning
            self._client = client
            self.connections += 1
            self._connected.set()
            ready.set()
            try:
                async for _ in client.messages:  # it subscribes to nothing: this only ends when the connection does
                    pass
            finally:
                self._connected.clear()
                self._client = None

    async def publish(self, topic: str, event: Event, *, qos: int = 1) -> Event:
        """Publish ``event`` (see :func:`helpers.core.messaging.publish`), waiting briefly for a lost connection."""
        return await publish(await self._connection(), topic, event, qos=qos)

    async def publish_raw(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Publish bytes as they are (an outbox message, already an encoded event), waiting briefly for a lost connection."""
        await (await self._connection()).publish(topic, payload, qos=qos)

    async def _connection(self) -> aiomqtt.Client:
        """The connected client, after waiting up to ``PUBLISH_WAIT_S`` for a lost connection to come back."""
        if not self._connected.is_set():
            try:
                async with asyncio.timeout(PUBLISH_WAIT_S):
                    await self._connected.wait()
            except TimeoutError:
                raise NotConnected(f"no connection to the MQTT broker for {PUBLISH_WAIT_S:g} s") from None
        client = self._client
        if client is None:
            raise NotConnected("the connection to the MQTT broker was lost")
        return client

    def crashed(self) -> BaseException | None:
        """The error its connection loop died of (a healthy publisher's loop runs until stopped)."""
        return self._life.crashed()

    async def stop(self) -> Exception | None:
        """Disconnect; returns what the connection loop had died of, if anything."""
        return await self._life.kill()
