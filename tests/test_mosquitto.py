"""helpers.core.mosquitto: a real, throw-away Mosquitto on a free loopback port, started and stopped."""

from __future__ import annotations

import os
import shutil
import socket
import sys

import pytest

from helpers.core import mosquitto
from helpers.core.broker import Broker

try:
    mosquitto.find_mosquitto()
    HAVE_MOSQUITTO = True
except FileNotFoundError:
    HAVE_MOSQUITTO = False

needs_mosquitto = pytest.mark.skipif(not HAVE_MOSQUITTO, reason=mosquitto.INSTALL_HINT)


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@needs_mosquitto
@pytest.mark.broker
async def test_running_mosquitto_serves_mqtt_then_stops() -> None:
    with mosquitto.running_mosquitto() as url:
        assert url.startswith("mqtt://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        broker = await Broker(url).start()
        assert not broker.embedded
        assert await broker.ping() < 5
        await broker.stop()
        assert accepts(port), "stopping a Broker object must leave an external broker running"
    assert not accepts(port), "mosquitto still listens after the context ended"


@needs_mosquitto
def test_bad_config_gives_up_after_three_attempts() -> None:
    with pytest.raises(RuntimeError, match="could not start mosquitto after 3 attempts"):
        with mosquitto.running_mosquitto(extra_config="this_is_not_an_option true"):
            pytest.fail("should not get here")


@needs_mosquitto
def test_main_runs_the_command_with_mqtt_url(capsys: pytest.CaptureFixture[str]) -> None:
    check = "import os, sys; sys.exit(0 if os.environ['MQTT_URL'].startswith('mqtt://127.0.0.1:') else 1)"
    assert mosquitto.main(["--", sys.executable, "-c", check]) == 0
    assert "[mosquitto] mqtt://127.0.0.1:" in capsys.readouterr().out
    assert mosquitto.main(["--", sys.executable, "-c", "raise SystemExit(7)"]) == 7, "the command's exit code is passed on"


def test_main_without_a_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert mosquitto.main([]) == 2
    assert mosquitto.main(["--"]) == 2
    assert "usage: python -m helpers mosquitto -- COMMAND" in capsys.readouterr().err


def test_missing_mosquitto_says_how_to_install(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    monkeypatch.setattr(os.path, "exists", lambda _: False)
    with pytest.raises(FileNotFoundError, match="apt-get install mosquitto"):
        mosquitto.find_mosquitto()
    assert mosquitto.main(["--", "true"]) == 3
    assert "Mosquitto is not installed" in capsys.readouterr().err
