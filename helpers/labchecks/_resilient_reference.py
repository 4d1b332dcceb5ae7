"""The course's answers to lab 02's questions 1-3, for judging question 4 on its own.

Question 4 asks for ``ResilientClient.get()`` only: how one request composes ``fetch``
(Q1), ``with_retries`` (Q2) and the breaker (Q3). Run with the learner's own parts, a
mistake in Q1 or Q2 (a 4xx raised as ServiceError, ``stop_after_attempt(attempts + 1)``)
cost its points there AND again in Q4, whose code was right. :func:`with_course_parts`
gives the learner's class the course's ``fetch``, ``with_retries`` and ``Breaker`` (on a
copy of its globals: the learner's namespace is never changed), as lab 06 judges Q2-Q4
through the course's kickoff and lab 04 Q4 runs the learner's loop with the course's
client. What get() itself does wrong (retries inside one breaker call, its own timeout
ignored, attempts or deadline not passed on) still fails Q4.

The parts are built around the learner's ``ServiceError``, ``CircuitOpenError`` and
``RETRY_ON``: the checks catch the learner's classes, and ``RETRY_ON`` is the lab's given
code, which question 4's refused-connection check judges.
Not a lab (the underscore): the grader lists only ``labchecks/<slug>.py`` files as labs.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from helpers.core import resilience


def _fetch(service_error: type[Exception]) -> Callable[..., Awaitable[Any]]:
    """The course's Q1 ``fetch``: JSON back, the learner's ServiceError for a 5xx, aiohttp's error for a 4xx."""

    async def fetch(session: aiohttp.ClientSession, url: str, timeout_s: float = 0.2) -> Any:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status >= 500:
                raise service_error(response.status, url)
            response.raise_for_status()
            return await response.json()

    return fetch


def _with_retries(retry_on: Any) -> Callable[..., Awaitable[Any]]:
    """The course's Q2 ``with_retries``: ``attempts`` calls at most, full jitter, the whole loop within ``deadline_s``."""

    async def with_retries(
        call: Callable[[], Awaitable[Any]],
        *,
        attempts: int = 4,
        base_s: float = 0.05,
        cap_s: float = 0.5,
        deadline_s: float = 1.0,
    ) -> Any:
        async def attempt_all() -> Any:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=wait_random_exponential(multiplier=base_s, max=cap_s),
                retry=retry_if_exception_type(retry_on),
                reraise=True,
            ):
                with attempt:
                    return await call()
            return None  # unreachable: reraise=True ends the loop with the last error

        return await asyncio.wait_for(attempt_all(), deadline_s)

    return with_retries


def _breaker(open_error: type[Exception], retry_on: Any) -> type:
    """The course's Q3 ``Breaker``, refusing with the learner's CircuitOpenError and counting what ``retry_on`` lists."""

    class Breaker:
        """Closed, open, half-open with one trial; a straggler that began before it opened changes nothing."""

        def __init__(self, failure_threshold: int = 3, reset_timeout_s: float = 0.5) -> None:
            self.failure_threshold, self.reset_timeout_s = failure_threshold, reset_timeout_s
            self.state, self.failures, self.opened_at, self.trial_running = "closed", 0, 0.0, False

        async def call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
            if self.state == "open" and time.monotonic() - self.opened_at >= self.reset_timeout_s:
                self.state = "half-open"
            if self.state == "open" or (self.state == "half-open" and self.trial_running):
                raise open_error(f"circuit open, retry after {self.reset_timeout_s} s")
            trial = self.state == "half-open"
            self.trial_running = trial
            try:
                result = await fn()
            except retry_on:
                self._failed(trial)
                raise
            finally:
                if trial:
                    self.trial_running = False
            if trial or self.state == "closed":  # a late success of a straggler must not close an open breaker
                self.state, self.failures = "closed", 0
            return result

        def _failed(self, trial: bool) -> None:
            if trial or self.state == "closed":  # a straggler that began before the breaker opened: no verdict
                self.failures += 1
                if trial or self.failures >= self.failure_threshold:
                    self.state, self.opened_at, self.failures = "open", time.monotonic(), 0

    return Breaker


def course_parts(service_error: type[Exception], open_error: type[Exception], retry_on: Any) -> dict[str, Any]:
    """The course's ``fetch``, ``with_retries`` and ``Breaker``, raising and catching the given classes."""
    return {"fetch": _fetch(service_error), "with_retries": _with_retries(retry_on), "Breaker": _breaker(open_error, retry_on)}


def _rebound(fn: types.FunctionType, names: dict[str, Any]) -> types.FunctionType:
    copy = types.FunctionType(fn.__code__, names, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__qualname__ = fn.__qualname__
    copy.__doc__ = fn.__doc__
    return copy


def with_course_parts(cls: Any) -> Any:
    """The learner's ``ResilientClient`` with the course's ``fetch``, ``with_retries`` and ``Breaker`` for theirs.

    Its methods run on a copy of their globals in which those three names are the course's;
    anything that is not a plain class of plain methods is judged as it is.
    """
    if not isinstance(cls, type):
        return cls
    methods = {name: value for name, value in vars(cls).items() if isinstance(value, types.FunctionType)}
    learner = next((fn.__globals__ for fn in methods.values()), None)
    if learner is None:
        return cls
    service_error = learner.get("ServiceError", resilience.ServiceError)
    open_error = learner.get("CircuitOpenError", resilience.CircuitOpenError)
    retry_on = learner.get("RETRY_ON", (asyncio.TimeoutError, service_error, aiohttp.ClientConnectionError))
    names = {**learner, **course_parts(service_error, open_error, retry_on)}
    body = {name: value for name, value in vars(cls).items() if name not in ("__dict__", "__weakref__")}
    body.update({name: _rebound(fn, names) for name, fn in methods.items()})
    return type(cls)(cls.__name__, cls.__bases__, body)
