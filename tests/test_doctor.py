"""helpers.tools.doctor: True on a healthy setup, a clear report (and False) when something is off."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

import helpers
from helpers.core.net import free_port
from helpers.tools import doctor  # the module (``helpers.doctor`` is the notebook's function)


async def run() -> tuple[bool, str]:
    lines: list[str] = []
    ok = await doctor.run_doctor(print_fn=lines.append)
    return ok, "\n".join(lines)


@pytest.mark.broker
async def test_healthy_setup_passes_quickly() -> None:
    start = time.perf_counter()
    ok, report = await run()
    assert time.perf_counter() - start < 5
    assert ok, report
    assert "HTTP round trip" in report
    assert "MQTT round trip" in report
    assert report.count("(ok)") == 3, report  # event loop, HTTP, MQTT
    assert "FAILED" not in report
    assert "All good" in report


@pytest.mark.broker
async def test_helpers_doctor_shortcut_works_every_time(capsys: pytest.CaptureFixture[str]) -> None:
    """A notebook runs ``await helpers.doctor()``; Run All twice in one kernel must work."""
    for _ in range(2):
        assert await helpers.doctor() is True
        assert "Course doctor" in capsys.readouterr().out


def test_versions_lists_python_and_packages() -> None:
    found = doctor.versions()
    assert set(found) == {"python", *doctor.PACKAGES}
    assert all(v != "missing" for v in found.values()), found


@pytest.mark.broker
async def test_missing_package_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "PACKAGES", (*doctor.PACKAGES, "surely-not-installed-pkg"))
    ok, report = await run()
    assert not ok
    assert "surely-not-installed-pkg" in report
    assert "missing" in report
    assert "install it" in report


class FakeProactorLoop:
    """Stands in for Windows' ProactorEventLoop on any OS."""


def test_loop_problem_detects_a_proactor_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio, "ProactorEventLoop", FakeProactorLoop, raising=False)
    message = doctor.loop_problem(FakeProactorLoop())  # type: ignore[arg-type]  # a stand-in loop on purpose
    assert message is not None
    assert "WindowsSelectorEventLoopPolicy" in message
    assert "restart the kernel" in message


def test_loop_problem_is_none_for_a_selector_loop() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert doctor.loop_problem(loop) is None
    finally:
        loop.close()


async def test_proactor_loop_fails_the_doctor_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    running = type(asyncio.get_running_loop())
    monkeypatch.setattr(asyncio, "ProactorEventLoop", running, raising=False)  # pretend ours is one
    ok, report = await run()
    assert not ok
    assert "<-- see below" in report
    assert "WindowsSelectorEventLoopPolicy" in report


async def test_unreachable_broker_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_URL", f"mqtt://127.0.0.1:{free_port()}")
    start = time.perf_counter()
    ok, report = await run()
    assert time.perf_counter() - start < 6.5
    assert not ok
    assert "MQTT round trip    FAILED: cannot reach the MQTT broker" in report
    assert "HTTP round trip" in report
    assert "Some checks failed" in report


async def test_malformed_mqtt_url_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_URL", "localhost:1883")
    ok, report = await run()
    assert not ok
    assert "has no scheme" in report


def test_command_line_exits_zero() -> None:
    done = subprocess.run([sys.executable, "-m", "helpers", "doctor"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All good" in done.stdout
