"""Lab 02's fakes, shared by its checks (:mod:`helpers.labchecks.resilient_client` and its breaker part).

Services of the check's own with injected faults, a port that refuses connections, a
function that fails on command and counts its calls, and the learner's exception classes.
Not a lab (the underscore): the grader lists only ``labchecks/<slug>.py`` files as labs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from helpers.grading.checks import CheckFailed, Context


def errors(ctx: Context) -> tuple[type[Exception], type[Exception]]:
    """(ServiceError, CircuitOpenError) as the learner's notebook knows them."""
    from helpers.core import resilience

    service_error = ctx.get("ServiceError", resilience.ServiceError)
    open_error = ctx.get("CircuitOpenError", resilience.CircuitOpenError)
    return service_error, open_error


def random_token(ctx: Context) -> str:
    return uuid.UUID(int=ctx.rng.getrandbits(128)).hex[:12]


async def json_service(ctx: Context, payload: dict[str, Any], **faults: Any) -> Any:
    from helpers.core.http import Faults

    async def answer(_: web.Request) -> web.Response:
        return web.json_response(payload)

    return await ctx.service("resilient", answer, faults=Faults(**faults))


def refusing_url(ctx: Context) -> str:
    """The URL of a service whose process is gone: a port bound but not listening refuses every connection.

    Holding the port (instead of stopping a service and hoping nobody takes its port) keeps
    the refusal certain for the whole check.
    """
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    ctx.callback(sock.close)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def refusal(ctx: Context) -> Exception:
    """The exception aiohttp raises for a refused connection, produced for real."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(refusing_url(ctx) + "/", timeout=aiohttp.ClientTimeout(total=2)):
                pass
        except aiohttp.ClientConnectionError as exc:
            return exc
    raise CheckFailed("the checks could not provoke a refused connection (a port bound but not listening answered)")


RESET_MARGIN_S = 0.05
"""How long past a breaker's reset timeout the checks wait before its trial call."""


async def outwait_reset(reset_s: float) -> None:
    """Let a breaker's reset timeout run out (plus a margin for the clock).

    A sleep on purpose: what is under test is a clock (stay open for reset_timeout_s, then
    allow one trial), and there is no event to wait for instead, because a correct breaker
    may look at the clock only on its next call.
    """
    await asyncio.sleep(reset_s + RESET_MARGIN_S)


class Flaky:
    """An async function that fails its first ``failures`` calls with ``error()``, then returns ``value``.

    ``hang_s`` makes every call take that long (a slow or silent dependency); ``called``
    is set as soon as a call has started, so a check can wait until a call is in flight.
    """

    def __init__(self, failures: float, error: Callable[[], BaseException], value: Any = "ok", hang_s: float = 0.0) -> None:
        self.failures, self.error, self.value, self.hang_s = failures, error, value, hang_s
        self.times: list[float] = []
        self.called = asyncio.Event()

    @property
    def calls(self) -> int:
        return len(self.times)

    async def __call__(self) -> Any:
        self.times.append(time.perf_counter())
        self.called.set()
        if self.hang_s:
            await asyncio.sleep(self.hang_s)  # the fake dependency's latency: the behaviour the learner's code must survive
        if self.calls <= self.failures:
            raise self.error()
        return self.value
