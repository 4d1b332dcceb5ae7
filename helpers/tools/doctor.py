"""``python -m helpers doctor``: can this machine run the course? Answers in seconds.

It prints the versions that matter, round-trips one HTTP request through a toy
service and one MQTT message through the broker (embedded, or MQTT_URL), and checks
the event loop: on Windows the default Proactor loop lacks the socket calls aiomqtt
needs, and the fix is one line.
"""

from __future__ import annotations

import asyncio
import platform
import sys
from collections.abc import Callable
from importlib import metadata

import aiohttp
from aiohttp import web

from helpers.core.broker import BrokerError, mqtt_broker
from helpers.core.http import start_service

PACKAGES = ("aiohttp", "aiomqtt", "iotcore", "paho-mqtt", "tenacity", "opentelemetry-sdk", "matplotlib", "numpy", "Pillow")

WINDOWS_FIX = (
    "On Windows, aiomqtt needs the selector event loop. Before any asyncio code, run:\n"
    "    import asyncio, sys\n"
    "    if sys.platform == 'win32': asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy())\n"
    "In JupyterLab, put that line in a cell at the top and restart the kernel."
)


def versions() -> dict[str, str]:
    """Python and package versions, 'missing' for what is not installed."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def loop_problem(loop: asyncio.AbstractEventLoop) -> str | None:
    """A message if ``loop`` cannot run aiomqtt (Windows Proactor), else None."""
    proactor = getattr(asyncio, "ProactorEventLoop", None)
    if proactor is not None and isinstance(loop, proactor):
        return WINDOWS_FIX
    return None


async def _http_round_trip() -> float:
    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    service = await start_service("doctor-hello", hello)
    try:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            start = loop.time()
            async with session.get(service.url) as response:
                await response.json()
                return loop.time() - start
    finally:
        await service.stop()


async def run_doctor(print_fn: Callable[[str], None] = print) -> bool:
    """Run every check, print a short report, return True when all passed."""
    ok = True
    print_fn("Course doctor")
    for name, version in versions().items():
        flag = "" if version != "missing" else "   <-- install it: make lab (or pip install -e .)"
        ok &= version != "missing"
        print_fn(f"  {name:18} {version}{flag}")
    loop = asyncio.get_running_loop()
    problem = loop_problem(loop)
    print_fn(f"  event loop         {type(loop).__name__}{'  <-- see below' if problem else ' (ok)'}")
    if problem:
        print_fn(problem)
        return False
    try:
        http_s = await asyncio.wait_for(_http_round_trip(), 5)
        print_fn(f"  HTTP round trip    {http_s * 1000:.1f} ms (ok)")
    except Exception as exc:  # noqa: BLE001 - the doctor reports, it does not crash
        ok = False
        print_fn(f"  HTTP round trip    FAILED: {type(exc).__name__}: {exc}")
    try:
        async with mqtt_broker(name="doctor") as broker:
            mqtt_s = await broker.ping()
            print_fn(f"  MQTT round trip    {mqtt_s * 1000:.1f} ms via {broker.kind} at {broker.url} (ok)")
    except BrokerError as exc:
        ok = False
        print_fn(f"  MQTT round trip    FAILED: {exc}")
    print_fn("All good: this machine can run the course." if ok else "Some checks failed; see the lines above.")
    return ok


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers doctor``: exit 0 when the machine can run the course."""
    if argv:
        print("usage: python -m helpers doctor", file=sys.stderr)
        return 2
    if sys.platform == "win32" and loop_problem(asyncio.new_event_loop()):
        asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy())  # type: ignore[attr-defined,unused-ignore]  # exists on Windows only
    return 0 if asyncio.run(run_doctor()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
