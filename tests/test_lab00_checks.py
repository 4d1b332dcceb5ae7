"""Lab 00's checks catch the warm-up's classic mistakes, and say which rule was broken.

The grader tests prove the solution notebook scores full marks and the lab as shipped
scores zero. Here a correct answer (a namespace of functions, like the notebook's) passes
every check, and each classic mistake fails the check that names it: the handler not
written yet, the service stopped by the clean-up cell, publishing before subscribing, a
forgotten ``await``, QoS 0, requests sent all at once.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from helpers.core.http import start_service
from helpers.core.measure import time_calls
from helpers.grading.checks import CheckResult, load_checks, run_check

CHECKS = load_checks("00_warmup")


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": request.query.get("name", "world")})


async def round_trip(broker: Any, topic: str, text: str) -> str:
    async with broker.client() as subscriber, broker.client() as publisher:
        await subscriber.subscribe(topic, qos=1)
        await publisher.publish(topic, text.encode(), qos=1)
        async for message in subscriber.messages:
            return bytes(message.payload).decode()
    raise AssertionError("unreachable: the subscriber's messages never end")


async def measure_p50(url: str, n: int = 20) -> float:
    async with aiohttp.ClientSession() as session:

        async def one_request() -> None:
            async with session.get(url) as response:
                await response.read()

        run = await time_calls(one_request, n)
    return run.summary().p50_ms


async def solution(**overrides: Any) -> dict[str, Any]:
    """The warm-up answered correctly, as the notebook's namespace; ``overrides`` swaps in a mistake."""
    ns: dict[str, Any] = {"hello": hello, "round_trip": round_trip, "measure_p50": measure_p50}
    ns["svc"] = await start_service("hello", hello)
    ns["p50_ms"] = await measure_p50(f"{ns['svc'].url}/", 20)
    ns.update(overrides)
    return ns


async def results(ns: dict[str, Any], names: set[str] | None = None) -> dict[str, CheckResult]:
    return {c.name: await run_check(c, ns) for c in CHECKS if names is None or c.name in names}


@pytest.fixture
def no_cell_error() -> Iterator[None]:
    """The last notebook cell error is kept in ``sys`` by IPython; a test that sets it puts the old one back."""
    saved = getattr(sys, "last_value", None)
    yield
    if saved is None:
        if hasattr(sys, "last_value"):
            del sys.last_value
    else:
        sys.last_value = saved


@pytest.mark.broker
async def test_the_correct_answer_passes_every_check() -> None:
    got = await results(await solution())
    assert {name: r.message for name, r in got.items() if not r.passed} == {}


async def test_an_unwritten_handler_says_write_the_handler(no_cell_error: None) -> None:
    async def todo(request: web.Request) -> web.Response:
        raise NotImplementedError("your code here")

    ns = await solution(hello=todo)
    del ns["svc"]  # the cell stopped at the handler's block: svc was never created
    sys.last_value = NotImplementedError("your code here")
    got = await results(ns, {"service_greets_by_name", "service_greets_the_world"})
    for result in got.values():
        assert not result.passed and "write the handler `hello`" in result.message
        assert "run the cell that creates it" not in result.message


async def test_an_unstarted_service_says_which_line_is_missing(no_cell_error: None) -> None:
    ns = await solution()
    del ns["svc"]  # the handler is written, the start_service line still raises NotImplementedError
    sys.last_value = NotImplementedError("your code here")
    got = await results(ns, {"service_greets_by_name"})
    assert "stopped at `raise NotImplementedError`" in got["service_greets_by_name"].message


async def test_a_stopped_service_is_reported_as_stopped() -> None:
    ns = await solution()
    await ns["svc"].stop()  # the learner ran the clean-up cell, then checked again
    got = await results(ns, {"service_greets_by_name", "notebook_p50_is_plausible"})
    for result in got.values():
        assert not result.passed and "was stopped" in result.message, result.message


@pytest.mark.broker
async def test_publishing_before_subscribing_names_the_rule() -> None:
    async def publish_first(broker: Any, topic: str, text: str) -> str:
        async with broker.client() as subscriber, broker.client() as publisher:
            await publisher.publish(topic, text.encode(), qos=1)  # the mistake: nobody listens yet
            await subscriber.subscribe(topic, qos=1)
            async for message in subscriber.messages:
                return bytes(message.payload).decode()
        return ""

    got = await results(await solution(round_trip=publish_first), {"round_trip_returns_the_text"})
    assert "before subscribing" in got["round_trip_returns_the_text"].message


@pytest.mark.broker
async def test_a_forgotten_await_is_named() -> None:
    async def no_await(broker: Any, topic: str, text: str) -> str:
        async with broker.client() as subscriber, broker.client() as publisher:
            subscriber.subscribe(topic, qos=1)  # type: ignore[unused-coroutine] # the mistake under test: no await
            await publisher.publish(topic, text.encode(), qos=1)
            async for message in subscriber.messages:
                return bytes(message.payload).decode()
        return ""

    got = await results(await solution(round_trip=no_await), {"round_trip_returns_the_text"})
    message = got["round_trip_returns_the_text"].message
    assert "subscribe() was never awaited" in message and "write `await`" in message, message


@pytest.mark.broker
async def test_qos_0_is_caught() -> None:
    async def qos0(broker: Any, topic: str, text: str) -> str:
        async with broker.client() as subscriber, broker.client() as publisher:
            await subscriber.subscribe(topic, qos=1)
            await publisher.publish(topic, text.encode())  # the mistake: QoS 0, the lab asks for 1
            async for message in subscriber.messages:
                return bytes(message.payload).decode()
        return ""

    got = await results(await solution(round_trip=qos0), {"publishes_at_qos_1", "round_trip_returns_the_text"})
    assert got["round_trip_returns_the_text"].passed, "the text still arrives: only the QoS check notices"
    assert "the lab asks for QoS 1" in got["publishes_at_qos_1"].message


async def test_requests_sent_at_once_are_caught() -> None:
    async def all_at_once(url: str, n: int = 20) -> float:
        async with aiohttp.ClientSession() as session:

            async def one() -> float:
                started = asyncio.get_running_loop().time()
                async with session.get(url) as response:
                    await response.read()
                return (asyncio.get_running_loop().time() - started) * 1000

            times = sorted(await asyncio.gather(*(one() for _ in range(n))))
        return times[len(times) // 2]

    got = await results(await solution(measure_p50=all_at_once), {"sends_n_requests", "respects_n"})
    for result in got.values():
        assert not result.passed and "one after another" in result.message, result.message
