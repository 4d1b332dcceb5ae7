"""Lab 02's question 3, the circuit breaker: a part of :mod:`helpers.labchecks.resilient_client`.

The lab's checks module includes these checks in place (``checks.include(part)``), so
they run and are listed in the lab's order. The breaker is driven by :class:`Flaky`
functions that fail on command; its clock is outwaited for real (see ``outwait_reset``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

from helpers.grading.checks import CheckFailed, Checks, Context, Outcome, expect, outcome
from helpers.labchecks._resilient_fakes import Flaky, errors, outwait_reset, random_token

part = Checks("02_resilient_client")


async def _breaker(ctx: Context, threshold: int, reset_s: float) -> Any:
    cls = ctx.get("Breaker")
    expect(isinstance(cls, type), "`Breaker` should be a class")
    return await ctx.call(cls, failure_threshold=threshold, reset_timeout_s=reset_s)


async def _call(breaker: Any, fn: Flaky) -> Outcome:
    """``breaker.call(fn)``, as an outcome."""
    return await outcome("Breaker.call()", lambda: breaker.call(fn), 2.0)


async def _fail_n(breaker: Any, n: int, error: Callable[[], BaseException]) -> None:
    for _ in range(n):
        got = await _call(breaker, Flaky(1, error))
        expect(got.error is not None, "Breaker.call should let the call's exception through")


async def _until_in_flight(
    fn: Flaky, call: asyncio.Future[Outcome], timeout: float = 2.0, what: str = "after reset_timeout_s the trial call"
) -> None:
    """Return once ``call`` has reached ``fn`` (``fn`` is running); fail if it ends or times out first."""
    reached: asyncio.Future[Any] = asyncio.ensure_future(fn.called.wait())
    try:
        await asyncio.wait([reached, call], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        reached.cancel()
    if fn.calls:
        return
    expect(call.done(), f"{what} did not reach fn within {timeout:g} s")
    ended = call.result()  # raises the check failure of unwritten code
    raise CheckFailed(f"{what} should reach fn, but the call ended with {ended.raised}")


async def _finish(call: asyncio.Future[Any]) -> None:
    """Cleanup: cancel ``call`` if it still runs, and wait for it."""
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)


@part.check(
    "q3",
    hint="count the failures in a row; when the count reaches the threshold, open and remember when",
    code_hint="self.failures += 1; if self.failures >= self.failure_threshold: "
    "self.state, self.opened_at = 'open', time.monotonic()",
)
async def opens_after_threshold_failures(ctx: Context) -> str:
    """Breaker opens after failure_threshold failures in a row, not before."""
    service_error, _ = errors(ctx)
    threshold = ctx.rng.randint(2, 4)
    breaker = await _breaker(ctx, threshold, 0.3)
    await _fail_n(breaker, threshold - 1, lambda: service_error(503, "x"))
    expect(breaker.state == "closed", f"after {threshold - 1} failures (threshold {threshold}) state is {breaker.state!r}")
    await _fail_n(breaker, 1, lambda: service_error(503, "x"))
    expect(breaker.state == "open", f"after {threshold} failures in a row state is {breaker.state!r}, expected 'open'")
    return f"threshold {threshold}"


@part.check(
    "q3",
    hint="an open breaker answers for the service: refuse at once, before fn is ever called",
    code_hint="if self.state == 'open': raise CircuitOpenError(...)  # before `await fn()`",
    timing=True,
)
async def refuses_while_open(ctx: Context) -> None:
    """While open, call(fn) raises CircuitOpenError at once and never calls fn."""
    service_error, open_error = errors(ctx)
    breaker = await _breaker(ctx, 2, 5.0)
    await _fail_n(breaker, 2, lambda: service_error(503, "x"))
    spy = Flaky(0, RuntimeError, "should not run")
    for _ in range(5):
        got = await _call(breaker, spy)
        expect(isinstance(got.error, open_error), f"an open breaker should raise CircuitOpenError, got {got.raised}")
        expect(got.seconds < 0.05, f"refusing took {got.seconds * 1000:.0f} ms: it should be instant")
    expect(spy.calls == 0, f"the open breaker still called fn {spy.calls} times")


@part.check(
    "q3",
    hint="once reset_timeout_s has passed, the next call is a trial; a trial that works closes the breaker",
    code_hint="if self.state == 'open' and time.monotonic() - self.opened_at >= self.reset_timeout_s: self.state = 'half-open'",
)
async def half_open_trial_success_closes(ctx: Context) -> None:
    """After reset_timeout_s one trial call goes through; its success closes the breaker."""
    service_error, _ = errors(ctx)
    breaker = await _breaker(ctx, 2, 0.2)
    await _fail_n(breaker, 2, lambda: service_error(503, "x"))
    await outwait_reset(0.2)
    token = random_token(ctx)
    got = await _call(breaker, Flaky(0, RuntimeError, token))
    expect(
        got.error is None and got.value == token,
        f"after the reset timeout the trial call should run and return its result ({got.raised})",
    )
    expect(breaker.state == "closed", f"a successful trial should close the breaker, state is {breaker.state!r}")


@part.check(
    "q3",
    hint="a failed trial proves the service is still sick: open again, with a fresh timer",
    code_hint="except RETRY_ON: if trial: self.state, self.opened_at = 'open', time.monotonic()",
)
async def failed_trial_reopens(ctx: Context) -> None:
    """A failed trial opens the breaker again for another reset_timeout_s."""
    service_error, open_error = errors(ctx)
    breaker = await _breaker(ctx, 2, 0.2)
    await _fail_n(breaker, 2, lambda: service_error(503, "x"))
    await outwait_reset(0.2)
    await _fail_n(breaker, 1, lambda: service_error(503, "x"))
    expect(breaker.state == "open", f"after a failed trial state should be 'open', got {breaker.state!r}")
    spy = Flaky(0, RuntimeError)
    got = await _call(breaker, spy)
    expect(isinstance(got.error, open_error) and spy.calls == 0, "right after a failed trial the breaker should refuse calls")


@part.check(
    "q3",
    hint="a success resets the count of failures in a row",
    code_hint="after `result = await fn()` succeeds: self.failures = 0",
)
async def failures_must_be_consecutive(ctx: Context) -> None:
    """A success resets the count: fail, fail, succeed, fail, fail with threshold 3 leaves the breaker closed."""
    service_error, _ = errors(ctx)
    breaker = await _breaker(ctx, 3, 0.5)
    for _ in range(2):
        await _fail_n(breaker, 2, lambda: service_error(503, "x"))
        await _call(breaker, Flaky(0, RuntimeError))
    expect(
        breaker.state == "closed",
        f"no 3 failures were in a row (a success came between), yet state is {breaker.state!r}: a success resets "
        "the count of failures in a row",
    )


@part.check(
    "q3",
    hint="count only RETRY_ON failures; let other exceptions through uncounted",
    code_hint="except RETRY_ON: ...  (no `except Exception`)",
)
async def other_errors_do_not_count(ctx: Context) -> None:
    """ValueErrors (bugs, not a sick service) pass through and never open the breaker."""
    breaker = await _breaker(ctx, 2, 0.5)
    for n in range(1, 4):
        got = await _call(breaker, Flaky(1, lambda: ValueError("bug")))
        expect(
            breaker.state == "closed",
            f"{n} ValueError(s) (threshold 2) moved the breaker to {breaker.state!r}: bugs say nothing about the "
            "service, so only RETRY_ON failures count and every other exception passes through uncounted",
        )
        expect(isinstance(got.error, ValueError), f"the ValueError should pass through to the caller, got {got.raised}")


@part.check(
    "q3",
    hint="half-open lets ONE trial through; other calls are refused until it ends",
    code_hint="if self.state == 'half-open' and self.trial_running: raise CircuitOpenError(...)",
)
async def one_trial_at_a_time(ctx: Context) -> None:
    """While a half-open trial runs, a second call is refused without calling fn."""
    service_error, open_error = errors(ctx)
    breaker = await _breaker(ctx, 1, 0.15)
    await _fail_n(breaker, 1, lambda: service_error(503, "x"))
    await outwait_reset(0.15)
    slow = Flaky(0, RuntimeError, "ok", hang_s=0.2)
    trial = asyncio.ensure_future(_call(breaker, slow))
    ctx.on_cleanup(partial(_finish, trial))
    await _until_in_flight(slow, trial)
    spy = Flaky(0, RuntimeError)
    second = await _call(breaker, spy)
    await trial
    expect(
        spy.calls == 0 and isinstance(second.error, open_error),
        f"a second call while the half-open trial was still running ended with {second.raised} after calling fn "
        f"{spy.calls} time(s): half-open lets exactly one trial through and refuses the others with CircuitOpenError",
    )


@part.check(
    "q3",
    hint="a call that began before the breaker opened says nothing about the service now: when it ends late, "
    "it must not move the breaker",
    code_hint="trial = self.state == 'half-open'  # before the call; after a success: "
    "if trial or self.state == 'closed': self.state, self.failures = 'closed', 0",
)
async def a_straggler_does_not_close_the_breaker(ctx: Context) -> str:
    """A slow call that began while closed and succeeds after the breaker opened leaves it open."""
    service_error, open_error = errors(ctx)
    breaker = await _breaker(ctx, 2, 5.0)
    token = random_token(ctx)
    slow = Flaky(0, RuntimeError, token, hang_s=0.3)
    straggler = asyncio.ensure_future(_call(breaker, slow))
    ctx.on_cleanup(partial(_finish, straggler))
    await _until_in_flight(slow, straggler, what="a call made while the breaker was closed")
    await _fail_n(breaker, 2, lambda: service_error(503, "x"))
    expect(breaker.state == "open", f"2 failures in a row (threshold 2) left the breaker {breaker.state!r}")
    late = await straggler
    expect(late.error is None and late.value == token, f"the slow call's own result should reach its caller ({late.raised})")
    expect(
        breaker.state == "open",
        f"a call that began before the breaker opened succeeded afterwards and moved the breaker to {breaker.state!r}: "
        "a straggler says nothing about the service now; only the half-open trial may close an open breaker",
    )
    spy = Flaky(0, RuntimeError)
    after = await _call(breaker, spy)
    expect(
        isinstance(after.error, open_error) and spy.calls == 0,
        f"after the straggler the breaker should still refuse calls, got {after.raised}",
    )
    return "still open after the straggler"
