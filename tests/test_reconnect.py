"""helpers.core.reconnect: a lost connection is connected again; a first connection that fails is reported at once.

The sessions here are stand-ins (no broker): what is tested is the loop around them. The
real clients, dropped by a proxy, are in tests/test_capstone_hostile.py.
"""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from helpers.core import lifecycle
from helpers.core.broker import Broker, BrokerError, ConnectRefused, mqtt_broker
from helpers.core.net import free_port
from helpers.core.reconnect import RECONNECT_MAX_S, Publisher, reconnecting
from helpers.core.waiting import until


async def test_a_session_that_loses_its_connection_runs_again_until_it_is_killed() -> None:
    runs = 0
    settled = asyncio.Event()

    async def session(ready: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        ready.set()
        if runs < 3:
            raise aiomqtt.MqttError("Disconnected during message iteration")
        settled.set()
        await asyncio.Event().wait()  # connected for good

    task = await lifecycle.start(reconnecting, session)
    await asyncio.wait_for(settled.wait(), 3 * RECONNECT_MAX_S)
    assert runs == 3
    assert not task.done()
    assert await lifecycle.kill(task) is None


async def test_the_first_connection_failing_is_raised_at_once_not_retried() -> None:
    runs = 0

    async def session(ready: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        raise aiomqtt.MqttError("connection refused")

    with pytest.raises(aiomqtt.MqttError, match="connection refused"):
        await lifecycle.start(reconnecting, session)
    assert runs == 1


async def test_an_error_that_is_not_a_lost_connection_ends_the_session() -> None:
    async def session(ready: asyncio.Event) -> None:
        ready.set()
        await asyncio.sleep(0)
        raise ValueError("a bug, not the network")

    task = await lifecycle.start(reconnecting, session)
    with pytest.raises(ValueError, match="a bug"):
        await task


async def test_a_publisher_for_a_broker_that_is_not_there_says_so_at_start() -> None:
    nowhere = Broker(f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectRefused):
        await Publisher(nowhere, "upload-pub", timeout=1.0).start()


@pytest.mark.broker
async def test_a_publisher_stops_trying_once_its_embedded_broker_was_stopped_on_purpose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MQTT_URL", raising=False)
    async with mqtt_broker(name="stopped-on-purpose") as broker:
        publisher = await Publisher(broker, "upload-pub").start()
    assert await until(lambda: publisher.crashed() is not None, 3 * RECONNECT_MAX_S + 5)
    assert isinstance(publisher.crashed(), BrokerError)
    assert "was stopped" in str(publisher.crashed())
    await publisher.stop()
