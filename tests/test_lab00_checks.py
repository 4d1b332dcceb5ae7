"""Lab 00's checks catch the warm-up's classic mistakes, and say which rule was broken.

The grader tests prove the solution notebook scores full marks and the lab as shipped
scores zero. Here the solution notebook's own code (run into a namespace, with the hello
service started as the notebook does) passes every check, and each classic mistake, an
edit of that code, fails the check that names it: the handler not
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
from lab_submissions import Edit, replaced, submission, warmup_kernel

from helpers.grading.checks import CheckResult, load_checks, run_check

LAB = "00_warmup"
CHECKS = load_checks(LAB)

SUBSCRIBE = "        await subscriber.subscribe(topic, qos=1)\n"
PUBLISH = "        await publisher.publish(topic, text.encode(), qos=1)\n"
EDITS: dict[str, tuple[Edit, ...]] = {
    "handler not written": (
        (
            '    name = request.query.get("name", "world")\n    return web.json_response({"hello": name})\n',
            '    raise NotImplementedError("your code here")\n',
        ),
    ),
    "publish before subscribe": ((SUBSCRIBE + PUBLISH, PUBLISH + SUBSCRIBE),),
    "no await": ((SUBSCRIBE, "        subscriber.subscribe(topic, qos=1)\n"),),
    "QoS 0": ((PUBLISH, "        await publisher.publish(topic, text.encode())\n"),),
}
"""Each classic mistake as an edit of the solution notebook's code (tests/lab_submissions.py)."""


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
    async with warmup_kernel(submission(LAB)) as ns:
        got = await results(ns)
    assert {name: r.message for name, r in got.items() if not r.passed} == {}


async def test_an_unwritten_handler_says_write_the_handler(no_cell_error: None) -> None:
    ns = submission(LAB, *EDITS["handler not written"])  # the cell stopped at the handler's block: no svc
    sys.last_value = NotImplementedError("your code here")
    got = await results(ns, {"service_greets_by_name", "service_greets_the_world"})
    for result in got.values():
        assert not result.passed
        assert "write the handler `hello`" in result.message
        assert "run the cell that creates it" not in result.message


async def test_an_unstarted_service_says_which_line_is_missing(no_cell_error: None) -> None:
    ns = submission(LAB)  # the handler is written, the start_service line still raises NotImplementedError
    sys.last_value = NotImplementedError("your code here")
    got = await results(ns, {"service_greets_by_name"})
    assert "stopped at `raise NotImplementedError`" in got["service_greets_by_name"].message


async def test_a_stopped_service_is_reported_as_stopped() -> None:
    async with warmup_kernel(submission(LAB)) as ns:
        await ns["svc"].stop()  # the learner ran the clean-up cell, then checked again
        got = await results(ns, {"service_greets_by_name", "notebook_p50_is_plausible"})
    for result in got.values():
        assert not result.passed, result.message
        assert "was stopped" in result.message, result.message


@pytest.mark.broker
async def test_publishing_before_subscribing_names_the_rule() -> None:
    got = await results(submission(LAB, *EDITS["publish before subscribe"]), {"round_trip_returns_the_text"})
    assert "before subscribing" in got["round_trip_returns_the_text"].message


@pytest.mark.broker
async def test_a_forgotten_await_is_named() -> None:
    got = await results(submission(LAB, *EDITS["no await"]), {"round_trip_returns_the_text"})
    message = got["round_trip_returns_the_text"].message
    assert "subscribe() was never awaited" in message, message
    assert "write `await`" in message, message


@pytest.mark.broker
async def test_qos_0_is_caught() -> None:
    got = await results(submission(LAB, *EDITS["QoS 0"]), {"publishes_at_qos_1", "round_trip_returns_the_text"})
    assert got["round_trip_returns_the_text"].passed, "the text still arrives: only the QoS check notices"
    assert "the lab asks for QoS 1" in got["publishes_at_qos_1"].message


async def all_at_once(url: str, n: int = 20) -> float:
    """The mistake: every request sent at once, the median of their latencies returned."""
    async with aiohttp.ClientSession() as session:

        async def one() -> float:
            started = asyncio.get_running_loop().time()
            async with session.get(url) as response:
                await response.read()
            return (asyncio.get_running_loop().time() - started) * 1000

        times = sorted(await asyncio.gather(*(one() for _ in range(n))))
    return times[len(times) // 2]


async def test_requests_sent_at_once_are_caught() -> None:
    async with warmup_kernel(submission(LAB)) as ns:  # the notebook's p50, then the learner's function swapped
        got = await results(replaced(ns, measure_p50=all_at_once), {"sends_n_requests", "respects_n"})
    for result in got.values():
        assert not result.passed, result.message
        assert "one after another" in result.message, result.message


def _stalled_once(measure: Any, extra_ms: float) -> Any:
    """The learner's measure_p50, with ``extra_ms`` added to its first answer only: a stall of the machine."""
    calls = [0]

    async def measure_p50(url: str, n: int = 20) -> float:
        calls[0] += 1
        p50 = await measure(url, n)
        return p50 + extra_ms if calls[0] == 1 else p50

    return measure_p50


async def test_a_p50_raised_once_by_a_stall_is_measured_again() -> None:
    """A stall raises a p50 once (a busy run lost a correct warm-up a point); the checks measure again."""
    names = {"p50_in_milliseconds", "respects_n", "median_not_mean"}
    async with warmup_kernel(submission(LAB)) as ns:
        got = await results(replaced(ns, measure_p50=_stalled_once(ns["measure_p50"], 500)), names)
    failed = {name: r.message for name, r in got.items() if not r.passed}
    assert not failed


async def test_a_mean_is_still_too_high_in_every_run() -> None:
    """The mean is over 100 ms in every run: measuring again does not let it pass."""

    async def mean_ms(url: str, n: int = 20) -> float:
        async with aiohttp.ClientSession() as session:
            times = []
            for _ in range(n):
                started = asyncio.get_running_loop().time()
                async with session.get(url) as response:
                    await response.read()
                times.append((asyncio.get_running_loop().time() - started) * 1000)
        return sum(times) / len(times)

    async with warmup_kernel(submission(LAB)) as ns:
        got = await results(replaced(ns, measure_p50=mean_ms), {"median_not_mean"})
    assert not got["median_not_mean"].passed
    assert "the lab asks for the median" in got["median_not_mean"].message
