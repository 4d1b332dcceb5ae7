"""Unit tests of helpers.core.resilience: the breaker's state machine, the retry policies, get_json."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from types import SimpleNamespace
from typing import cast

import aiohttp
import pytest
from aiohttp import web
from tenacity import RetryCallState

from helpers.core.http import Faults, start_service
from helpers.core.resilience import (
    CircuitBreaker,
    CircuitOpenError,
    ServiceError,
    call_with_retries,
    get_json,
    retry_policy,
)
from helpers.sync.chain import Downstream


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def fail() -> None:
    raise ServiceError(503, "http://x")


async def succeed() -> str:
    return "ok"


# --------------------------------------------------------------------------- breaker


async def test_breaker_opens_after_threshold_and_refuses_without_calling() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=1.0, clock=clock)
    for _ in range(2):
        with pytest.raises(ServiceError):
            await breaker.call(fail)
    assert breaker.state == "closed"
    with pytest.raises(ServiceError):
        await breaker.call(fail)
    assert breaker.state == "open"

    calls = 0

    async def counted() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            await breaker.call(counted)
    assert calls == 0
    assert breaker.rejected == 5


async def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=FakeClock())
    for _ in range(5):
        with pytest.raises(ServiceError):
            await breaker.call(fail)
        with pytest.raises(ServiceError):
            await breaker.call(fail)
        await breaker.call(succeed)
    assert breaker.state == "closed", "failures must be consecutive to open the breaker"


async def test_half_open_lets_one_trial_through_then_closes_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, clock=clock)
    with pytest.raises(ServiceError):
        await breaker.call(fail)
    clock.now += 0.5
    assert not breaker.allow()
    assert breaker.state == "open"
    clock.now += 0.6
    trial_started, release = asyncio.Event(), asyncio.Event()

    async def slow_trial() -> str:
        trial_started.set()
        await release.wait()
        return "ok"

    trial = asyncio.ensure_future(breaker.call(slow_trial))
    await trial_started.wait()
    assert breaker.state == "half-open"
    with pytest.raises(CircuitOpenError):
        await breaker.call(succeed)  # only ONE trial at a time
    release.set()
    assert await trial == "ok"
    assert breaker.state == "closed"
    assert breaker.transitions() == ["closed", "open", "half-open", "closed"]


async def test_failed_trial_reopens_for_a_full_reset_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, clock=clock)
    with pytest.raises(ServiceError):
        await breaker.call(fail)
    clock.now += 1.0
    with pytest.raises(ServiceError):
        await breaker.call(fail)  # the trial fails
    assert breaker.state == "open"
    clock.now += 0.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()
    assert breaker.state == "half-open"


async def test_stragglers_do_not_move_an_open_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=1.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    opened_at = breaker.opened_at
    clock.now += 0.5
    breaker.record_failure()  # a call that started before the breaker opened
    breaker.record_success()
    assert breaker.state == "open"
    assert breaker.opened_at == opened_at


async def test_other_errors_pass_through_uncounted() -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=FakeClock())

    async def bug() -> None:
        raise ValueError("a bug in the caller, not a sick dependency")

    with pytest.raises(ValueError, match="a bug in the caller"):
        await breaker.call(bug)
    assert breaker.state == "closed"


def test_spans_cover_the_window_in_relative_seconds() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, clock=clock)
    start = clock.now
    clock.now += 2.0
    breaker.record_failure()
    clock.now += 1.5
    assert breaker.allow()
    clock.now += 0.25
    breaker.record_success()
    spans = breaker.spans(start, start + 5.0)
    assert [s[2] for s in spans] == ["closed", "open", "half-open", "closed"]
    assert spans[0][0] == 0
    assert spans[-1][1] == 5.0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), "spans are contiguous"


def test_breaker_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="failure_threshold must be >= 1"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="reset_timeout_s > 0"):
        CircuitBreaker(reset_timeout_s=0)


# --------------------------------------------------------------------------- retries


def _attempt(number: int) -> RetryCallState:
    """A stand-in for tenacity's call state: the policies' waits read only ``attempt_number``."""
    return cast("RetryCallState", SimpleNamespace(attempt_number=number))


def _window(base: float, cap: float, attempt: int) -> float:
    return min(cap, base * 2 ** (attempt - 1))


def test_full_jitter_draws_the_whole_wait_at_random_below_the_cap() -> None:
    random.seed(3)
    wait = retry_policy(jitter="full", base_s=0.05, cap_s=0.3).wait
    for attempt in range(1, 7):
        draws = [wait(_attempt(attempt)) for _ in range(200)]
        top = _window(0.05, 0.3, attempt)
        assert all(0 <= d <= top for d in draws)
        assert min(draws) < 0.2 * top, "full jitter spans the whole window"
        assert max(draws) > 0.8 * top, "full jitter spans the whole window"


def test_no_jitter_waits_are_fixed_and_capped() -> None:
    wait = retry_policy(jitter="none", base_s=0.05, cap_s=0.3).wait
    assert [round(wait(_attempt(n)), 6) for n in range(1, 6)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    assert retry_policy(jitter="immediate").wait(_attempt(3)) == 0


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="attempts must be at least 1, got 0"):
        retry_policy(attempts=0)
    with pytest.raises(ValueError, match="jitter must be one of .*, got 'some'"):
        retry_policy(jitter="some")  # type: ignore[arg-type]  # a bad argument on purpose


async def test_retries_stop_at_the_attempt_budget_and_reraise() -> None:
    attempts = 0

    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        raise ServiceError(503, "http://x")

    with pytest.raises(ServiceError):
        await call_with_retries(flaky, retry_policy(attempts=4, jitter="immediate"))
    assert attempts == 4


async def test_retries_return_the_first_success_and_skip_non_retryable() -> None:
    outcomes: list[Exception | str] = [ServiceError(503, "u"), TimeoutError(), "done"]

    async def recovering() -> str:
        item = outcomes.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    assert await call_with_retries(recovering, retry_policy(attempts=5, base_s=0.001)) == "done"

    calls = 0

    async def bad_request() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("4xx-like: retrying will not help")

    with pytest.raises(ValueError, match="retrying will not help"):
        await call_with_retries(bad_request, retry_policy(attempts=5, jitter="immediate"))
    assert calls == 1


async def test_a_policy_object_can_be_reused() -> None:
    policy = retry_policy(attempts=2, jitter="immediate")
    for _ in range(3):
        with pytest.raises(ServiceError):
            await call_with_retries(fail, policy)


async def test_deadline_stops_before_a_wait_would_cross_it() -> None:
    policy = retry_policy(attempts=50, jitter="none", base_s=0.1, cap_s=0.1, deadline_s=0.35)
    started = time.perf_counter()
    with pytest.raises(ServiceError):
        await call_with_retries(fail, policy)
    assert time.perf_counter() - started < 0.45


# --------------------------------------------------------------------------- get_json / Downstream


async def _ok(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def test_get_json_timeout_5xx_and_4xx() -> None:
    svc = await start_service("resilience-target", _ok, faults=Faults(latency=0.5))
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        with pytest.raises(asyncio.TimeoutError):
            await get_json(session, svc.url, timeout_s=0.1)
        assert time.perf_counter() - started < 0.3
        svc.faults.latency, svc.faults.down = 0.0, True
        with pytest.raises(ServiceError) as info:
            await get_json(session, svc.url)
        assert info.value.status == 503
        svc.faults.down = False
        assert await get_json(session, svc.url) == {"ok": True}

    async def missing(_: web.Request) -> web.Response:
        return web.json_response({"error": "no such thing"}, status=404)

    gone = await start_service("resilience-404", missing)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientResponseError):
            await get_json(session, gone.url)


async def test_downstream_breaker_spares_a_dead_service() -> None:
    svc = await start_service("resilience-dead", _ok, faults=Faults(down=True))
    client = Downstream("caller", svc.url, timeout_s=0.2, breaker=CircuitBreaker(failure_threshold=3, reset_timeout_s=5))
    try:
        for _ in range(10):
            with pytest.raises((ServiceError, CircuitOpenError)):
                await client.get("/")
        assert svc.stats.requests == 3, "after 3 failures the breaker stops calling"
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- lab 02: the checks catch classic mistakes

LAB_MUTANTS = {
    "no timeout": ("q1", "timeout=aiohttp.ClientTimeout(total=timeout_s)", "timeout=aiohttp.ClientTimeout(total=None)"),
    "immediate retries": ("q2", "wait=wait_random_exponential(multiplier=base_s, max=cap_s)", "wait=wait_none()"),
    "backoff without jitter": (
        "q2",
        "wait=wait_random_exponential(multiplier=base_s, max=cap_s)",
        "wait=wait_exponential(multiplier=base_s, max=cap_s)",
    ),
    # what a busy machine does to waits without jitter: each one a little longer than its window, never shorter
    # (a quiet make test once passed plain backoff as jittered when stalls stretched some of its waits)
    "backoff without jitter, stretched": (
        "q2",
        "wait=wait_random_exponential(multiplier=base_s, max=cap_s)",
        "wait=wait_exponential(multiplier=base_s, max=cap_s) + wait_random(0, 0.028)",
    ),
    "no overall deadline": ("q2", "return await asyncio.wait_for(attempt_all(), deadline_s)", "return await attempt_all()"),
    "retries everything": ("q2", "retry=retry_if_exception_type(RETRY_ON),", ""),
    "never half-open": ("q3", '            self.state = "half-open"', "            pass"),
    "breaker counts bugs": ("q3", "        except RETRY_ON:", "        except Exception:"),
    "client without breaker": (
        "q4",
        "lambda: self.breaker.call(lambda: fetch(self.session, url, self.timeout_s))",
        "lambda: fetch(self.session, url, self.timeout_s)",
    ),
}


LAB_MUTANTS_NAMED = {
    # mistake: (question, old, new, the check that must fail, words its message must say)
    "a 4xx raised as ServiceError": (
        "q1",
        "if response.status >= 500:",
        "if response.status >= 400:",
        "fetch_raises_a_4xx_as_a_client_error",
        "a 4xx must not be retried",
    ),
    "a 4xx returned as data": (
        "q1",
        "        response.raise_for_status()\n",
        "",
        "fetch_raises_a_4xx_as_a_client_error",
        "a 4xx must raise",
    ),
    "fetch returns a coroutine": (
        "q1",
        "return await response.json()",
        "return response.json()",
        "fetch_returns_json",
        "returned a coroutine",
    ),
    "retries a 4xx": ("q2", "retry=retry_if_exception_type(RETRY_ON),", "", "does_not_retry_a_4xx", "must not be retried"),
    "sync Retrying blocks the loop": (
        "q2",
        "async for attempt in AsyncRetrying(",
        "for attempt in Retrying(",
        "waits_without_blocking_the_event_loop",
        "time.sleep()",
    ),
    "the client retries a 4xx": (
        "q4",
        "return await with_retries(",
        "return await with_retries_all(",
        "client_passes_a_4xx_through",
        "a 4xx must not be retried",
    ),
    "the breaker counts a 4xx": (  # Q3's mistake: Q4 runs get() with the course's Breaker, so Q3 names it
        "q3",
        "        except RETRY_ON:",
        "        except Exception:",
        "other_errors_do_not_count",
        "only RETRY_ON failures count",
    ),
    "the client ignores its timeout": (
        "q4",
        "fetch(self.session, url, self.timeout_s)",
        "fetch(self.session, url)",
        "client_uses_its_timeout",
        "the client's timeout_s",
    ),
}
"""Mistakes whose check must not only fail but say which rule was broken."""


def _lab_namespace(old: str = "", new: str = "") -> dict:
    """The solution's definitions (fetch, with_retries, Breaker, ResilientClient), optionally with one edit."""
    import tenacity
    from lab_submissions import submission

    namespace = submission("02_resilient_client", *([(old, new)] if old else []))
    for name in tenacity.__all__:  # what an edit may use (Retrying, wait_none): the learner would import it
        namespace.setdefault(name, getattr(tenacity, name))
    return namespace


async def _question_passes(question: str, namespace: dict) -> list[str]:
    from helpers.grading.checks import load_checks, run_check

    results = [await run_check(c, namespace) for c in load_checks("02_resilient_client").of(question)]
    return [r.name for r in results if not r.passed]


@pytest.mark.parametrize("mistake", sorted(LAB_MUTANTS))
async def test_lab02_checks_catch_the_classic_mistakes(mistake: str) -> None:
    question, old, new = LAB_MUTANTS[mistake]
    assert await _question_passes(question, _lab_namespace()) == [], "the solution itself passes"
    failed = await _question_passes(question, _lab_namespace(old, new))
    assert failed, f"a solution with '{mistake}' still passes every check of {question}"


async def _with_retries_all(call, **settings):  # type: ignore[no-untyped-def] # test double: a retry helper that retries anything
    import tenacity

    async for attempt in tenacity.AsyncRetrying(stop=tenacity.stop_after_attempt(settings.get("attempts", 3)), reraise=True):
        with attempt:
            return await call()


@pytest.mark.parametrize("mistake", sorted(LAB_MUTANTS_NAMED))
async def test_lab02_checks_name_the_broken_rule(mistake: str) -> None:
    from helpers.grading.checks import load_checks, run_check

    question, old, new, check_name, words = LAB_MUTANTS_NAMED[mistake]
    check = next(c for c in load_checks("02_resilient_client").of(question) if c.name == check_name)
    assert (await run_check(check, _lab_namespace())).passed, "the solution itself passes"
    namespace = _lab_namespace(old, new)
    namespace["with_retries_all"] = _with_retries_all
    result = await run_check(check, namespace)
    assert not result.passed, f"a solution with '{mistake}' passes {check_name}"
    assert words in result.message, result.message
