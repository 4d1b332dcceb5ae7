"""Checks of lab 02_resilient_client: a timeout, retries with backoff and jitter, a breaker.

Every check runs the learner's code: `fetch` and `ResilientClient` against services
of the check's own with injected faults (slow, failing, down, then healed),
`with_retries` and `Breaker` against small functions that fail on command and count
their calls. Payloads and budgets are random, so hard-coded answers fail. Question 4's
checks run the learner's ``ResilientClient`` with the course's ``fetch``, ``with_retries``
and ``Breaker`` (:mod:`helpers.labchecks._resilient_reference`): they judge how get()
composes them, and a mistake in questions 1-3 costs points there only.

The exception classes are the learner's own (`ServiceError`, `CircuitOpenError` from the
notebook's namespace): the grader loads a fresh copy of ``helpers`` for the checks, and
a fresh class would never match what the learner's code catches.
"""

from __future__ import annotations

import asyncio
import statistics
from functools import partial
from itertools import pairwise
from typing import Any

from aiohttp import web

from helpers.core.loop_lag import LoopLag
from helpers.grading.checks import Checks, Context, Outcome, expect, outcome
from helpers.labchecks import _resilient_breaker
from helpers.labchecks._resilient_fakes import Flaky, errors, json_service, outwait_reset, random_token, refusal, refusing_url
from helpers.labchecks._resilient_reference import with_course_parts

checks = Checks("02_resilient_client")


# --------------------------------------------------------------------------- q1: fetch with a timeout


@checks.check(
    "q1",
    hint="GET the url with the session you are given and return the body, parsed as JSON",
    code_hint="async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response: "
    "return await response.json()",
)
async def fetch_returns_json(ctx: Context) -> None:
    """fetch(session, url) returns the service's JSON answer."""
    import aiohttp

    payload = {"item": random_token(ctx), "in_stock": ctx.rng.randint(1, 99)}
    svc = await json_service(ctx, payload)
    fetch = ctx.function("fetch")
    async with aiohttp.ClientSession() as session:
        got = await outcome("fetch()", lambda: fetch(session, svc.url + "/"), 5.0)
    expect(got.error is None, f"fetch raised {got.raised} against a healthy service")
    expect(got.value == payload, f"expected {payload}, got {got.value!r}")


@checks.check(
    "q1",
    hint="the timeout must bound the whole call (connect, wait, read), not only one phase of it",
    code_hint="session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s))",
    timing=True,
)
async def fetch_gives_up_at_its_timeout(ctx: Context) -> str:
    """Against a service that takes 1 s, fetch(..., timeout_s=0.2) raises asyncio.TimeoutError within 0.4 s."""
    import aiohttp

    svc = await json_service(ctx, {"late": True}, latency=1.0)
    fetch = ctx.function("fetch")
    async with aiohttp.ClientSession() as session:
        got = await outcome("fetch()", lambda: fetch(session, svc.url + "/", 0.2), 3.0)
    expect(isinstance(got.error, asyncio.TimeoutError), f"expected asyncio.TimeoutError, got {got.raised}")
    expect(got.seconds < 0.4, f"fetch waited {got.seconds:.2f} s: a 200 ms timeout should end it by ~0.2 s")
    return f"gave up after {got.seconds * 1000:.0f} ms"


@checks.check(
    "q1",
    hint="look at the status before reading the body: a 5xx means the service is there but failing",
    code_hint="if response.status >= 500: raise ServiceError(response.status, url)",
)
async def fetch_raises_service_error_on_5xx(ctx: Context) -> None:
    """A 5xx answer raises ServiceError carrying the status."""
    import aiohttp

    service_error, _ = errors(ctx)
    status = ctx.rng.choice([500, 502, 503])

    async def broken(_: web.Request) -> web.Response:
        return web.json_response({"error": "broken"}, status=status)

    svc = await ctx.service("broken", broken)
    fetch = ctx.function("fetch")
    async with aiohttp.ClientSession() as session:
        got = await outcome("fetch()", lambda: fetch(session, svc.url + "/"), 3.0)
    expect(isinstance(got.error, service_error), f"an HTTP {status} answer should raise ServiceError, got {got.raised}")
    carried = getattr(got.error, "status", None)
    expect(carried == status, f"ServiceError.status should be {status}, got {carried!r}")


async def _client_error_service(ctx: Context) -> tuple[Any, int]:
    """A service of the check's own that answers every request with a 4xx (a bad request: not the service's fault)."""
    status = ctx.rng.choice([400, 404, 409, 422])

    async def refuse(_: web.Request) -> web.Response:
        return web.json_response({"error": "bad request"}, status=status)

    return await ctx.service("refusing", refuse), status


@checks.check(
    "q1",
    hint="a 4xx is the caller's mistake, not a sick service: it raises, but not as a ServiceError (those get retried)",
    code_hint="after the 5xx test: response.raise_for_status()  # raises aiohttp.ClientResponseError for a 4xx",
)
async def fetch_raises_a_4xx_as_a_client_error(ctx: Context) -> str:
    """A 4xx answer raises aiohttp's ClientResponseError, not a ServiceError (a bad request is not retried)."""
    import aiohttp

    service_error, _ = errors(ctx)
    svc, status = await _client_error_service(ctx)
    fetch = ctx.function("fetch")
    async with aiohttp.ClientSession() as session:
        got = await outcome("fetch()", lambda: fetch(session, svc.url + "/"), 3.0)
    expect(got.error is not None, f"fetch returned {got.value!r} for an HTTP {status}: a 4xx must raise, not pass as data")
    expect(
        not isinstance(got.error, service_error),
        f"an HTTP {status} raised ServiceError: that marks it retryable, but a 4xx must not be retried "
        "(a bad request will not get better); only a 5xx is a ServiceError",
    )
    expect(
        isinstance(got.error, aiohttp.ClientResponseError) and getattr(got.error, "status", None) == status,
        f"an HTTP {status} should raise aiohttp's ClientResponseError (status {status}), got {got.raised}",
    )
    return f"HTTP {status} -> ClientResponseError"


@checks.check(
    "q1",
    hidden=True,
    hint="use the timeout_s you are given, not a constant",
    code_hint="aiohttp.ClientTimeout(total=timeout_s)",
    timing=True,
)
async def fetch_uses_the_timeout_it_is_given(ctx: Context) -> None:
    """Hidden: timeout_s=0.6 waits for a 250 ms service; timeout_s=0.1 does not."""
    import aiohttp

    payload = {"token": random_token(ctx)}
    svc = await json_service(ctx, payload, latency=0.25)
    fetch = ctx.function("fetch")
    async with aiohttp.ClientSession() as session:
        patient = await outcome("fetch()", lambda: fetch(session, svc.url + "/", 0.6), 3.0)
        expect(
            patient.error is None and patient.value == payload,
            f"with timeout_s=0.6 a 250 ms service should answer, got {patient.raised}",
        )
        hasty = await outcome("fetch()", lambda: fetch(session, svc.url + "/", 0.1), 3.0)
    expect(
        isinstance(hasty.error, asyncio.TimeoutError) and hasty.seconds < 0.25,
        f"timeout_s=0.1 should give up by ~0.1 s ({hasty.raised}, {hasty.seconds:.2f} s)",
    )


# --------------------------------------------------------------------------- q2: retries


@checks.check(
    "q2",
    hint="let tenacity's async loop drive the attempts, retrying every RETRY_ON failure (a timeout, a 5xx, "
    "a refused connection), and return the first success",
    code_hint="async for attempt in AsyncRetrying(..., retry=retry_if_exception_type(RETRY_ON), reraise=True): "
    "with attempt: return await call()",
)
async def retries_until_success(ctx: Context) -> str:
    """with_retries(call) retries a timeout, a ServiceError and a refused connection, then returns the result."""
    service_error, _ = errors(ctx)
    token = random_token(ctx)
    failures = [TimeoutError(), service_error(503, "http://check"), await refusal(ctx)]
    ctx.rng.shuffle(failures)
    pending = iter(failures)
    flaky = Flaky(len(failures), lambda: next(pending), token)
    with_retries = ctx.function("with_retries")
    got = await outcome("with_retries()", lambda: with_retries(flaky, attempts=5, base_s=0.01, cap_s=0.05), 5.0)
    kinds = ", ".join(type(error).__name__ for error in failures)
    expect(
        got.error is None,
        f"with_retries raised {got.raised} after {flaky.calls} call(s); the call failed with {kinds} (each one in "
        "RETRY_ON, each one worth a retry: a refused connection is a service whose process is gone) and would "
        "have succeeded on its 4th attempt",
    )
    expect(got.value == token, f"expected the call's result {token!r}, got {got.value!r}")
    expect(flaky.calls == 4, f"the call was made {flaky.calls} times; it succeeds on the 4th")
    return f"retried {kinds}"


@checks.check(
    "q2",
    hint="the retry budget counts calls, not retries; after the last one the caller sees the real error",
    code_hint="AsyncRetrying(stop=stop_after_attempt(attempts), reraise=True, ...)",
)
async def stops_at_the_retry_budget(ctx: Context) -> str:
    """A call that always fails is tried exactly `attempts` times, then its last error is raised."""
    service_error, _ = errors(ctx)
    attempts = ctx.rng.randint(3, 5)
    flaky = Flaky(float("inf"), lambda: service_error(503, "http://check"))
    with_retries = ctx.function("with_retries")
    got = await outcome("with_retries()", lambda: with_retries(flaky, attempts=attempts, base_s=0.01, cap_s=0.02), 5.0)
    expect(flaky.calls == attempts, f"attempts={attempts}, but the call was made {flaky.calls} times")
    expect(isinstance(got.error, service_error), f"after the last attempt the ServiceError should be raised, got {got.raised}")
    return f"{attempts} attempts"


@checks.check(
    "q2",
    hint="each wait is drawn at random below a ceiling that doubles per attempt and stops at the cap (full jitter)",
    code_hint="AsyncRetrying(wait=wait_random_exponential(multiplier=base_s, max=cap_s), ...)",
)
async def waits_are_capped_exponential_with_full_jitter(ctx: Context) -> str:
    """The waits between attempts are random in [0, min(cap, base * 2**n)]: growing, capped, jittered."""
    service_error, _ = errors(ctx)
    with_retries = ctx.function("with_retries")
    base, cap, fractions = 0.04, 0.1, []
    for _ in range(4):
        flaky = Flaky(float("inf"), lambda: service_error(503, "http://check"))
        async with LoopLag() as lag:  # a busy machine that stalls this process stretches a wait: not the learner's
            call = partial(with_retries, flaky, attempts=4, base_s=base, cap_s=cap, deadline_s=5.0)
            await outcome("with_retries()", call, 5.0)
        expect(flaky.calls == 4, f"expected 4 attempts, saw {flaky.calls}")
        for n, (a, b) in enumerate(pairwise(flaky.times), start=1):
            window = min(cap, base * 2 ** (n - 1))
            allowed = window + 0.03 + lag.longest_between(a, b)
            expect(b - a <= allowed, f"wait {n} was {(b - a) * 1000:.0f} ms, above its cap of {window * 1000:.0f} ms")
            fractions.append((b - a) / window)
    # A stall of this process only ever lengthens a wait, so both tests look at what a stall cannot fake:
    # the median wait (no wait at all stays near 0 whatever a few stalls add), and the shortest one. A
    # wait without jitter never ends before its window; 12 full-jitter draws all at 60% or more of their
    # windows happen about once in 60,000 runs.
    expect(statistics.median(fractions) > 0.15, "the attempts come (almost) immediately one after another: wait between them")
    expect(
        min(fractions) < 0.6,
        f"every wait used at least {min(fractions):.0%} of its window: draw each one at random between 0 and "
        "its window (full jitter), so retrying clients spread out instead of coming back together",
    )
    return f"waits used {min(fractions):.0%}-{max(fractions):.0%} of their windows"


@checks.check(
    "q2",
    hint="the deadline bounds the whole retry loop, waits included, not each attempt",
    code_hint="return await asyncio.wait_for(attempt_all(), deadline_s)  # attempt_all: the tenacity loop",
    timing=True,
)
async def respects_the_deadline(ctx: Context) -> str:
    """A call that never answers ends with asyncio.TimeoutError at deadline_s, not later."""
    flaky = Flaky(float("inf"), asyncio.TimeoutError, hang_s=30)
    with_retries = ctx.function("with_retries")
    deadline = ctx.rng.choice([0.3, 0.4, 0.5])
    async with LoopLag() as lag:  # a stall of this process delays the deadline's wake-up: not the learner's
        got = await outcome("with_retries()", lambda: with_retries(flaky, attempts=3, deadline_s=deadline), 3.0)
    expect(isinstance(got.error, asyncio.TimeoutError), f"expected asyncio.TimeoutError at the deadline, got {got.raised}")
    allowed = deadline + 0.15 + lag.longest
    expect(got.seconds < allowed, f"deadline_s={deadline} but the call took {got.seconds:.2f} s")
    return f"deadline {deadline} s, ended after {got.seconds:.2f} s"


class _BadRequest:
    """An async call that always ends in a real 4xx (``raise_for_status`` of a refusing service); counts its calls."""

    def __init__(self, url: str) -> None:
        self.url, self.calls = url, 0

    async def __call__(self) -> Any:
        import aiohttp

        self.calls += 1
        async with aiohttp.ClientSession() as session, session.get(self.url) as response:
            response.raise_for_status()
            return await response.json()


@checks.check(
    "q2",
    hint="only the failures in RETRY_ON may pass by themselves; anything else, such as a 4xx, goes to the caller at once",
    code_hint="retry=retry_if_exception_type(RETRY_ON)",
)
async def does_not_retry_a_4xx(ctx: Context) -> str:
    """A call that fails with a 4xx is made once: a bad request is not retried."""
    svc, status = await _client_error_service(ctx)
    bad = _BadRequest(svc.url + "/")
    with_retries = ctx.function("with_retries")
    got = await outcome("with_retries()", partial(with_retries, bad, attempts=4, base_s=0.01, cap_s=0.02), 5.0)
    expect(got.error is not None, f"with_retries returned {got.value!r} for a call that always fails with HTTP {status}")
    expect(
        bad.calls == 1,
        f"a call failing with HTTP {status} was made {bad.calls} times: a 4xx must not be retried (retry only RETRY_ON)",
    )
    expect(getattr(got.error, "status", None) == status, f"the caller should see the HTTP {status} error, got {got.raised}")
    return f"HTTP {status}: 1 call"


@checks.check(
    "q2",
    hint="waiting must not stop the event loop: the async retry loop waits with asyncio, the sync one with time.sleep",
    code_hint="async for attempt in AsyncRetrying(...)  # not `for attempt in Retrying(...)`, whose waits block",
    timing=True,
)
async def waits_without_blocking_the_event_loop(ctx: Context) -> str:
    """While with_retries waits between attempts, the event loop keeps running (no time.sleep)."""
    from helpers.grading.probes import LoopLag, blocking_message

    service_error, _ = errors(ctx)
    with_retries = ctx.function("with_retries")
    async with LoopLag() as lag:
        for _ in range(2):  # two rounds: full jitter could draw tiny waits once, hardly twice
            flaky = Flaky(float("inf"), lambda: service_error(503, "http://check"))
            await outcome("with_retries()", partial(with_retries, flaky, attempts=4, base_s=0.1, cap_s=0.2, deadline_s=5.0), 5.0)
    expect(
        lag.blocked < 0.1 or lag.blocked_fraction() < 0.5,
        blocking_message("with_retries()", lag.blocked) + " (here: the waits between attempts)",
    )
    return f"the loop stood still at most {lag.longest * 1000:.0f} ms in {lag.elapsed:.2f} s of retrying"


@checks.check(
    "q2",
    hint="retry only RETRY_ON; an open breaker or a bug goes straight to the caller",
    code_hint="retry=retry_if_exception_type(RETRY_ON)",
)
async def does_not_retry_what_cannot_pass(ctx: Context) -> None:
    """A ValueError (a bug) or a CircuitOpenError goes straight to the caller, after one call."""
    _, open_error = errors(ctx)
    with_retries = ctx.function("with_retries")
    for error in (lambda: ValueError("bug"), lambda: open_error("open")):
        flaky = Flaky(float("inf"), error)
        got = await outcome("with_retries()", partial(with_retries, flaky, attempts=4, base_s=0.01), 3.0)
        expect(
            flaky.calls == 1,
            f"{type(got.error).__name__} was retried ({flaky.calls} calls): it is not in RETRY_ON and will not pass "
            "by itself, so it goes straight to the caller",
        )
        expect(
            type(got.error).__name__ in ("ValueError", "CircuitOpenError"),
            f"the caller should see the call's own exception, got {got.raised}",
        )


@checks.check(
    "q2", hidden=True, hint="a timeout may pass: it is retryable too", code_hint="RETRY_ON includes asyncio.TimeoutError"
)
async def retries_timeouts(ctx: Context) -> None:
    """Hidden (retries_until_success with other inputs): a call that times out once, then answers, succeeds."""
    flaky = Flaky(1, asyncio.TimeoutError, "fine")
    with_retries = ctx.function("with_retries")
    got = await outcome("with_retries()", lambda: with_retries(flaky, attempts=3, base_s=0.01), 3.0)
    expect(got.error is None and got.value == "fine", f"a timeout should be retried, got {got.raised}")


# --------------------------------------------------------------------------- q3: the breaker

checks.include(_resilient_breaker.part)  # its own module: helpers/labchecks/_resilient_breaker.py


# --------------------------------------------------------------------------- q4: all together


async def _client(ctx: Context, url: str, **settings: Any) -> Any:
    """The learner's ResilientClient, with the course's fetch, with_retries and Breaker (Q4 judges get() only)."""
    cls = ctx.get("ResilientClient")
    expect(isinstance(cls, type), "`ResilientClient` should be a class")
    cls = with_course_parts(cls)
    client = await ctx.call(cls, url, **settings)
    ctx.on_cleanup(client.close)
    return client


async def _get(client: Any, timeout: float = 5.0) -> Outcome:
    return await outcome("ResilientClient.get()", lambda: client.get("/stock"), timeout)


@checks.check(
    "q4",
    hint="your with_retries already keeps a deadline: drive the attempts with it, using this client's settings",
    code_hint="return await with_retries(lambda: self.breaker.call(lambda: fetch(self.session, url, self.timeout_s)), "
    "attempts=self.attempts, deadline_s=self.deadline_s)",
    timing=True,
)
async def client_respects_the_deadline(ctx: Context) -> str:
    """Against a service that sleeps 2 s, get() gives up by deadline_s (+0.15 s)."""
    svc = await json_service(ctx, {"late": True}, latency=2.0)
    deadline = ctx.rng.choice([0.5, 0.6, 0.7])
    client = await _client(ctx, svc.url, timeout_s=0.2, attempts=5, deadline_s=deadline, failure_threshold=100)
    got = await _get(client, 3.0)
    expect(got.error is not None, "a service that sleeps 2 s cannot have answered")
    expect(got.seconds < deadline + 0.15, f"deadline_s={deadline}, but get() took {got.seconds:.2f} s")
    return f"ended after {got.seconds:.2f} s"


@checks.check(
    "q4",
    hint="each attempt is one request; the client's attempts is the budget",
    code_hint="with_retries(..., attempts=self.attempts, ...)",
)
async def client_stays_within_the_retry_budget(ctx: Context) -> str:
    """Against an always-failing service, one get() sends exactly `attempts` requests."""
    service_error, _ = errors(ctx)
    svc = await json_service(ctx, {}, error_rate=1.0)
    attempts = ctx.rng.randint(2, 4)
    client = await _client(ctx, svc.url, timeout_s=0.2, attempts=attempts, deadline_s=2.0, failure_threshold=100)
    got = await _get(client)
    expect(isinstance(got.error, service_error), f"get() should end with the last ServiceError, got {got.raised}")
    expect(svc.stats.requests == attempts, f"attempts={attempts}, but the service got {svc.stats.requests} requests")
    return f"{attempts} requests for one get()"


@checks.check(
    "q4",
    hint="retries go outside the breaker: each attempt is one breaker call, so the breaker sees every failed attempt "
    "and, once open, stops the retries that are left",
    code_hint="with_retries(lambda: self.breaker.call(lambda: fetch(...)), ...)  # not self.breaker.call(lambda: "
    "with_retries(...))",
)
async def every_attempt_goes_through_the_breaker(ctx: Context) -> str:
    """Against an always-failing service, one get() opens the breaker after failure_threshold attempts, then stops."""
    svc = await json_service(ctx, {}, error_rate=1.0)
    threshold = ctx.rng.randint(2, 3)
    client = await _client(
        ctx, svc.url, timeout_s=0.2, attempts=threshold + 2, deadline_s=3.0, failure_threshold=threshold, reset_timeout_s=5.0
    )
    await _get(client)
    state = getattr(getattr(client, "breaker", None), "state", None)
    expect(
        state == "open" and svc.stats.requests == threshold,
        f"one get() (attempts={threshold + 2}, failure_threshold={threshold}) sent {svc.stats.requests} requests to "
        f"an always-failing service and left the breaker {state!r}: every attempt must go through the breaker, with "
        f"the retries outside it, so the breaker opens after {threshold} failed attempts and stops the retries left "
        "(retries inside one breaker call count as one failure)",
    )
    return f"open after {threshold} attempts of one get()"


@checks.check(
    "q4",
    hint="a 4xx is not the service failing: no retry, and the breaker does not count it",
    code_hint="fetch lets aiohttp's ClientResponseError out; neither RETRY_ON nor the breaker's failures include it",
)
async def client_passes_a_4xx_through(ctx: Context) -> str:
    """A 4xx answer reaches the caller after one request, and never opens the breaker."""
    import aiohttp

    _, open_error = errors(ctx)
    svc, status = await _client_error_service(ctx)
    client = await _client(ctx, svc.url, timeout_s=0.5, attempts=3, deadline_s=2.0, failure_threshold=2, reset_timeout_s=5.0)
    for n in range(1, 4):
        got = await _get(client)
        sent = svc.stats.requests
        expect(
            not isinstance(got.error, open_error),
            f"the breaker opened during get() call {n}, after {sent} requests answered HTTP {status} (threshold 2): "
            "a 4xx says nothing about the service's health and must not count as a failure",
        )
        expect(
            isinstance(got.error, aiohttp.ClientResponseError),
            f"get() of a path answered HTTP {status} should raise aiohttp's ClientResponseError, got {got.raised}",
        )
        expect(sent == n, f"{n} get() calls answered HTTP {status} sent {sent} requests: a 4xx must not be retried")
    state = getattr(getattr(client, "breaker", None), "state", None)
    expect(
        state == "closed",
        f"3 answers HTTP {status} left the breaker {state!r} (threshold 2): a 4xx says nothing about the service's "
        "health and must not count as a failure",
    )
    return f"HTTP {status}: one request each, breaker closed"


async def _opened(ctx: Context, svc: Any, reset_s: float) -> Any:
    client = await _client(ctx, svc.url, timeout_s=0.2, attempts=2, deadline_s=1.0, failure_threshold=3, reset_timeout_s=reset_s)
    for _ in range(6):
        await _get(client)
        if getattr(client.breaker, "state", None) == "open":
            break
    return client


@checks.check(
    "q4",
    hint="one breaker per client, and every attempt asks it",
    code_hint="lambda: self.breaker.call(lambda: fetch(self.session, url, self.timeout_s))",
)
async def client_opens_under_sustained_failure(ctx: Context) -> str:
    """With the service down, the client's breaker opens within a few calls."""
    svc = await json_service(ctx, {}, down=True)
    client = await _opened(ctx, svc, 5.0)
    expect(hasattr(client, "breaker"), "ResilientClient should keep its breaker in `self.breaker`")
    expect(client.breaker.state == "open", f"after repeated failures the breaker is {client.breaker.state!r}, expected 'open'")
    return f"open after {svc.stats.requests} requests"


@checks.check(
    "q4",
    hint="retries go outside the breaker, and a refusal is not a failure worth retrying",
    code_hint="with_retries(lambda: self.breaker.call(...), ...)  # CircuitOpenError is not in RETRY_ON",
    timing=True,
)
async def client_stops_calling_while_open(ctx: Context) -> None:
    """While the breaker is open, get() raises CircuitOpenError at once and sends nothing."""
    _, open_error = errors(ctx)
    svc = await json_service(ctx, {}, down=True)
    client = await _opened(ctx, svc, 5.0)
    expect(getattr(client.breaker, "state", None) == "open", "the breaker did not open (see the check above)")
    before = svc.stats.requests
    for _ in range(5):
        got = await _get(client)
        expect(isinstance(got.error, open_error), f"with the breaker open get() should raise CircuitOpenError, got {got.raised}")
        expect(got.seconds < 0.05, f"refusing took {got.seconds * 1000:.0f} ms: it should be instant")
    expect(svc.stats.requests == before, f"the service got {svc.stats.requests - before} requests while the breaker was open")


@checks.check(
    "q4",
    hint="after reset_timeout_s the next get() is the half-open trial; its success closes the breaker",
    code_hint="the same breaker (self.breaker) for every get()",
)
async def client_closes_after_recovery(ctx: Context) -> None:
    """Once the service heals, the next get() after reset_timeout_s succeeds and closes the breaker."""
    payload = {"item": random_token(ctx), "in_stock": ctx.rng.randint(1, 50)}
    svc = await json_service(ctx, payload, down=True)
    client = await _opened(ctx, svc, 0.3)
    expect(getattr(client.breaker, "state", None) == "open", "the breaker did not open (see the check above)")
    svc.faults.down = False
    await outwait_reset(0.3)
    got = await _get(client)
    expect(got.error is None and got.value == payload, f"after recovery get() should return the answer, got {got.raised}")
    expect(client.breaker.state == "closed", f"after a successful trial the breaker is {client.breaker.state!r}")


@checks.check(
    "q4",
    hint="every attempt uses the client's own timeout_s",
    code_hint="fetch(self.session, url, self.timeout_s)",
)
async def client_uses_its_timeout(ctx: Context) -> None:
    """A client with timeout_s=0.8 waits for a service that answers in 350 ms."""
    payload = {"item": random_token(ctx)}
    svc = await json_service(ctx, payload, latency=0.35)
    client = await _client(ctx, svc.url, timeout_s=0.8, attempts=1, deadline_s=2.0, failure_threshold=100)
    got = await _get(client)
    expect(
        got.error is None and got.value == payload,
        f"timeout_s=0.8 but a 350 ms answer ended in {got.raised}: each attempt should use the client's timeout_s",
    )


@checks.check(
    "q4",
    hint="a refused connection is a service whose process is gone: it is a RETRY_ON failure, and the breaker counts it",
    code_hint="RETRY_ON = (asyncio.TimeoutError, ServiceError, aiohttp.ClientConnectionError); the breaker's "
    "`except RETRY_ON:` counts it",
)
async def client_opens_when_the_service_is_gone(ctx: Context) -> str:
    """With nothing listening at the URL (connections refused), the breaker opens and get() then fails fast."""
    _, open_error = errors(ctx)
    client = await _client(
        ctx, refusing_url(ctx), timeout_s=0.2, attempts=2, deadline_s=1.0, failure_threshold=3, reset_timeout_s=5.0
    )
    ended: list[str] = []
    for _ in range(6):
        ended.append((await _get(client)).raised)
        if getattr(getattr(client, "breaker", None), "state", None) == "open":
            break
    state = getattr(getattr(client, "breaker", None), "state", None)
    expect(
        state == "open",
        f"{len(ended)} get() calls to a service whose process is gone ended with {ended[-1]}, and the breaker is "
        f"{state!r}: a refused connection must count as a failure (aiohttp.ClientConnectionError belongs in RETRY_ON, "
        "and the breaker counts what RETRY_ON lists)",
    )
    got = await _get(client)
    expect(isinstance(got.error, open_error), f"with the breaker open get() should raise CircuitOpenError, got {got.raised}")
    return f"open after {len(ended)} get() calls"
