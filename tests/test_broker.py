"""helpers.core.broker: URL parsing, clear errors that come fast, the embedded broker's lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiomqtt
import pytest

from helpers.core.broker import (
    CONNECT_TIMEOUT_S,
    Broker,
    BrokerError,
    ConnectRefused,
    Endpoint,
    mqtt_broker,
    parse_mqtt_url,
    start_broker,
    to_broker_topic,
)
from helpers.core.net import free_port

# --- MQTT_URL parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", Endpoint("127.0.0.1", 1883)),
        ("mqtt://localhost", Endpoint("localhost", 1883)),
        ("tcp://broker.example:2883", Endpoint("broker.example", 2883)),
        ("  mqtt://127.0.0.1:1884/  ", Endpoint("127.0.0.1", 1884)),
        ("mqtt://alice:s3cret@127.0.0.1:1883", Endpoint("127.0.0.1", 1883, "alice", "s3cret")),
        ("mqtt://al%40ce:p%3Ass@10.0.0.5:1883", Endpoint("10.0.0.5", 1883, "al@ce", "p:ss")),
        ("mqtt://bob@127.0.0.1:1883", Endpoint("127.0.0.1", 1883, "bob", None)),
        ("mqtts://ada:pw@broker.school.example", Endpoint("broker.school.example", 8883, "ada", "pw", tls=True)),
        ("mqtts://127.0.0.1:9883", Endpoint("127.0.0.1", 9883, tls=True)),
    ],
)
def test_parse_good_urls(url: str, expected: Endpoint) -> None:
    assert parse_mqtt_url(url) == expected


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("127.0.0.1:1883", "no scheme"),
        ("   ", "no scheme"),
        ("http://127.0.0.1:1883", "scheme 'http' is not supported"),
        ("mqtt://127.0.0.1:1883?cafile=/etc/hosts", "only mqtts:// takes ?cafile=PATH"),
        ("mqtts://127.0.0.1:8883?cafile=", "unexpected path or query"),
        ("mqtts://127.0.0.1:8883?insecure=1", "unexpected path or query"),
        ("mqtts://127.0.0.1:8883?cafile=/no/such/ca.pem", "cafile='/no/such/ca.pem', which is not a file"),
        ("ws://127.0.0.1:9001", "not supported"),
        ("mqtt://", "no host"),
        ("mqtt://:1883", "no host"),
        ("mqtt://127.0.0.1:99999", "bad port"),
        ("mqtt://127.0.0.1:port", "bad port"),
        ("mqtt://127.0.0.1:1883/sensors", "unexpected path or query"),
        ("mqtt://127.0.0.1:1883?x=1", "unexpected path or query"),
    ],
)
def test_malformed_url_gives_clear_error_fast(monkeypatch: pytest.MonkeyPatch, url: str, says: str) -> None:
    monkeypatch.setenv("MQTT_URL", url)
    start = time.perf_counter()
    with pytest.raises(BrokerError) as info:
        mqtt_broker()  # reads MQTT_URL, as every notebook does
    assert time.perf_counter() - start < 0.5
    message = str(info.value)
    assert says in message
    assert "mqtt://[user:pass@]host[:port]" in message, "the error should show the expected form"


@pytest.mark.parametrize("url", ["mqtt://ada:s3c@r3t@h:1883/x", "mqtt://ada:s3c@r3t@h:port", "mqtt://ada:s3c@r3t@h:1883?x=1"])
def test_a_bad_url_error_never_shows_the_password(url: str) -> None:
    with pytest.raises(BrokerError) as info:
        parse_mqtt_url(url)
    assert "s3c" not in str(info.value)
    assert "r3t" not in str(info.value)
    assert "ada:***@" in str(info.value)


def test_mqtts_url_with_a_cafile_keeps_it(tmp_path: Path) -> None:
    ca = tmp_path / "class ca.pem"
    ca.write_text("not read until a client connects")
    endpoint = parse_mqtt_url(f"mqtts://ada:s3cret@127.0.0.1:8883?cafile={quote(str(ca))}")
    assert (endpoint.tls, endpoint.cafile, endpoint.password) == (True, str(ca), "s3cret")
    assert endpoint.url == f"mqtts://ada:***@127.0.0.1:8883?cafile={quote(str(ca))}"
    assert parse_mqtt_url(endpoint.url.replace("***", "s3cret")) == endpoint, "the printed URL reads back"


def test_a_user_name_puts_topics_under_the_learners_prefix() -> None:
    assert parse_mqtt_url("mqtt://ada:pw@h:1883").topic_prefix == "course/ada/"
    assert parse_mqtt_url("mqtt://h:1883").topic_prefix == "", "no user name: topics as written"
    with pytest.raises(BrokerError, match="cannot become a topic level"):
        _ = parse_mqtt_url("mqtt://a%2Fb:pw@h:1883").topic_prefix


@pytest.mark.parametrize(
    ("topic", "wire"),
    [
        ("orders/placed", "course/ada/orders/placed"),
        ("orders/#", "course/ada/orders/#"),
        ("+/placed", "course/ada/+/placed"),
        ("#", "course/ada/#"),
        ("$share/workers/jobs/#", "$share/workers/course/ada/jobs/#"),
        ("$share/workers", "$share/workers"),
        ("$SYS/#", "$SYS/#"),
    ],
)
def test_topics_on_the_wire(topic: str, wire: str) -> None:
    assert to_broker_topic("course/ada/", topic) == wire
    assert to_broker_topic("", topic) == topic


def test_endpoint_url_hides_the_password() -> None:
    assert Endpoint("h", 1, "alice", "s3cret").url == "mqtt://alice:***@h:1"
    assert Endpoint("h", 1, "bob").url == "mqtt://bob@h:1"
    assert Endpoint("h", 1).url == "mqtt://h:1"


def test_empty_mqtt_url_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_URL", "")
    broker = mqtt_broker()
    assert broker.embedded
    assert broker.kind == "embedded rumqttd"
    assert broker.supports_shared_subscriptions


def test_external_broker_properties() -> None:
    broker = Broker("mqtt://u:p@127.0.0.1:1999")
    assert not broker.embedded
    assert broker.kind == "external (127.0.0.1)"
    assert broker.url == "mqtt://u:***@127.0.0.1:1999"
    assert broker.supports_shared_subscriptions


def test_unstarted_embedded_broker_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MQTT_URL", raising=False)
    broker = mqtt_broker()
    for attempt in (lambda: broker.url, lambda: broker.client("x")):
        with pytest.raises(BrokerError, match="not started"):
            attempt()


# --- unreachable brokers: an error within ~5 s, never a hang --------------------------------------


async def test_nothing_listening_fails_fast() -> None:
    port = free_port()
    start = time.perf_counter()
    with pytest.raises(BrokerError) as info:
        await Broker(f"mqtt://127.0.0.1:{port}").start()
    elapsed = time.perf_counter() - start
    assert elapsed < 6.5
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "Unset MQTT_URL" in str(info.value), "the error should say how to fall back to the embedded broker"


class BlackHole:
    """A TCP port that accepts connections and then never says a word (a wedged broker)."""

    def __init__(self) -> None:
        self.held: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def accept(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.held.append(writer)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def hang_up(self) -> None:
        """Close every accepted connection, as a wedged broker finally does."""
        for writer in self.held:
            writer.close()
        self.held.clear()
        for _ in range(20):  # let the loop run the callbacks this triggers
            await asyncio.sleep(0)


@pytest.fixture
async def black_hole() -> AsyncIterator[BlackHole]:
    hole = BlackHole()
    hole.server = await asyncio.start_server(hole.accept, "127.0.0.1", 0)
    yield hole
    await hole.hang_up()
    hole.server.close()
    await hole.server.wait_closed()


async def test_silent_broker_times_out_instead_of_hanging(black_hole: BlackHole, caplog: pytest.LogCaptureFixture) -> None:
    start = time.perf_counter()
    with pytest.raises(BrokerError) as info:
        await Broker(f"mqtt://127.0.0.1:{black_hole.port}").start()
    elapsed = time.perf_counter() - start
    assert elapsed < 6.5, f"took {elapsed:.1f} s"
    assert elapsed >= CONNECT_TIMEOUT_S * 0.9, "it gave up before its own timeout"
    assert f"no answer within {CONNECT_TIMEOUT_S:g} s" in str(info.value)
    # The abandoned connection attempt must not linger: when the broker finally hangs up,
    # nothing of it may still be registered with the loop (it used to log an error then).
    await black_hole.hang_up()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors


# --- a running broker (embedded, or MQTT_URL's) -------------------------------------------------------


async def test_ping_round_trips(broker: Broker) -> None:
    seconds = await broker.ping()
    assert 0 < seconds < CONNECT_TIMEOUT_S


async def test_client_identifies_with_its_name(broker: Broker, topic: str) -> None:
    name = topic.replace("/", "-")
    client = broker.client(name)
    assert client.identifier == name
    async with client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, b"hello", qos=1)
        message = await asyncio.wait_for(client.messages.__anext__(), 5)
    assert message.payload == b"hello"
    assert broker.client().identifier.startswith("client-"), "unnamed clients get a generated id"


async def test_fixture_broker_matches_environment(broker: Broker) -> None:
    assert broker.embedded == (not os.environ.get("MQTT_URL"))
    assert broker.url.startswith("mqtt://")


# --- the embedded broker's lifecycle (always embedded, whatever MQTT_URL says) ---------------------------


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.broker
async def test_embedded_broker_binds_loopback_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MQTT_URL", raising=False)
    async with mqtt_broker(name="lifecycle") as broker:
        assert broker.embedded
        endpoint = broker.endpoint
        assert endpoint is not None
        assert endpoint.host == "127.0.0.1"
        assert endpoint.port > 0
        assert _accepts(endpoint.port)
    assert not _accepts(endpoint.port)
    assert broker.started_in_s is not None, "the start was timed"
    assert broker.started_in_s < 5, "started within the budget"
    await broker.stop()  # stopping twice is harmless


@pytest.mark.broker
async def test_start_broker_again_replaces_the_old_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-running a notebook cell must not leave the first broker running."""
    monkeypatch.delenv("MQTT_URL", raising=False)
    first = await start_broker(name="rerun")
    second = await start_broker(name="rerun")
    try:
        assert first.endpoint
        assert second.endpoint
        assert first.endpoint.port != second.endpoint.port
        assert not _accepts(first.endpoint.port), "the replaced broker still listens"
        assert await second.ping() > 0
    finally:
        await second.stop()


@pytest.mark.broker
async def test_embedded_broker_busy_port_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """iotcore cannot bind port 0: the helper picks a free port and tries another if it was taken."""
    from helpers.core import broker as broker_module

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1]])
    real_free_port = broker_module.free_port
    monkeypatch.setattr(broker_module, "free_port", lambda: next(ports, None) or real_free_port())
    monkeypatch.delenv("MQTT_URL", raising=False)
    try:
        async with mqtt_broker(name="busy-port") as broker:
            assert broker.endpoint is not None
            assert broker.endpoint.port != taken.getsockname()[1]
            await broker.ping()
    finally:
        taken.close()


async def test_keepalive_zero_is_refused_with_a_reason(broker: Broker) -> None:
    with pytest.raises(BrokerError, match="keepalive must be > 0"):
        broker.client("no-keepalive", keepalive=0)


@pytest.mark.broker
async def test_a_client_that_cannot_connect_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped embedded broker: the client error names the broker and the likely cause, fast."""
    monkeypatch.delenv("MQTT_URL", raising=False)
    async with mqtt_broker(name="gone") as broker:
        client = broker.client("late", timeout=1)
    began = time.perf_counter()
    with pytest.raises(ConnectRefused, match=r"client 'late' could not connect .* still running") as caught:
        async with client:
            pass
    assert isinstance(caught.value, aiomqtt.MqttError), "still an aiomqtt.MqttError for code that catches those"
    assert time.perf_counter() - began < 3


async def test_embedded_broker_that_does_not_come_up_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import iotcore

    tries: list[int] = []

    def never(self: object, timeout: float = 10.0) -> None:
        tries.append(1)
        raise RuntimeError("broker process exited with code 1 during startup")

    monkeypatch.setattr(iotcore.Broker, "start", never)
    with pytest.raises(BrokerError, match=r"did not start after 3 attempts: .* broker process exited with code 1"):
        await mqtt_broker(name="never-up", embedded=True).start()
    assert len(tries) == 3, "a crash at startup (rumqttd aborts when it loses the port race) is tried on other ports"


@pytest.mark.broker
async def test_embedded_broker_that_crashes_once_at_startup_comes_up_on_the_next_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import iotcore

    real_start = iotcore.Broker.start
    crashes = [RuntimeError("broker process exited with code -6 during startup")]

    def once(self: Any, timeout: float = 10.0) -> None:
        if crashes:
            raise crashes.pop()
        real_start(self, timeout)

    monkeypatch.setattr(iotcore.Broker, "start", once)
    async with mqtt_broker(name="second-try", embedded=True) as broker:
        assert not crashes
        assert await broker.ping() < 5


async def test_embedded_broker_ignores_mqtt_url_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_URL", "mqtt://127.0.0.1:1")
    assert mqtt_broker(embedded=True).embedded
    with pytest.raises(BrokerError, match="either a url or embedded=True"):
        mqtt_broker("mqtt://127.0.0.1:1", embedded=True)
