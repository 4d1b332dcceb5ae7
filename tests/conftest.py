"""Shared fixtures: a broker per test (embedded, or the real one MQTT_URL names)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from helpers.core.broker import Broker, mqtt_broker
from helpers.core.http import stop_all


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    """A started broker: the embedded rumqttd, or MQTT_URL's broker when that is set."""
    async with mqtt_broker(name=f"test-{uuid.uuid4().hex[:6]}") as running:
        yield running


@pytest.fixture
def topic() -> str:
    """A topic prefix no other test (or earlier run on a shared broker) uses."""
    return f"test/{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
async def _stop_services() -> AsyncIterator[None]:
    """Every test leaves no HTTP service running."""
    yield
    await stop_all()
