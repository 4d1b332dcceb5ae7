"""Timeouts, retries and a circuit breaker: the three guards a synchronous caller needs.

A synchronous call borrows the caller's time. These guards bound how much it may borrow:

* a **timeout** caps one attempt (inside a system, 100-200 ms is a sane default: an
  internal call that has not answered by then is usually not going to);
* **retries** get past short blips, but only with *capped exponential backoff* and
  *full jitter*: each wait is drawn at random from ``[0, min(cap, base * 2**n)]``, so a
  crowd of callers that failed together does not come back together. We use tenacity
  for this rather than a hand-written loop (see :func:`retry_policy`);
* a **circuit breaker** notices that a dependency keeps failing and stops calling it
  for a while (fail fast), then lets a single trial call through to see whether it has
  healed. Its state history is recorded so a notebook can shade it on a timeline.

    breaker = CircuitBreaker(failure_threshold=5, reset_timeout_s=1.0)
    data = await breaker.call(lambda: get_json(session, url, timeout_s=0.2))
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import aiohttp
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
    wait_none,
    wait_random_exponential,
)
from tenacity.stop import stop_base

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 0.2
"""An internal call that has not answered within 200 ms is treated as failed."""

Jitter = Literal["full", "none", "immediate"]


class ServiceError(Exception):
    """The service answered, but with an error status (5xx): worth retrying, maybe."""

    def __init__(self, status: int, url: str, detail: str = "") -> None:
        super().__init__(f"{url} answered HTTP {status}{': ' + detail if detail else ''}")
        self.status = status
        self.url = url


class CircuitOpenError(Exception):
    """The breaker is open: the call was refused without touching the network."""


RETRYABLE: tuple[type[BaseException], ...] = (ServiceError, asyncio.TimeoutError, aiohttp.ClientConnectionError)
"""Failures that may go away on their own. A 4xx or an open breaker will not."""


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """GET ``url`` and return its JSON; raise :class:`ServiceError` on 5xx.

    ``timeout_s`` covers the whole attempt (waiting for a pooled connection, sending,
    the server's work, reading the body); ``asyncio.TimeoutError`` when it runs out.
    ``None`` means wait forever, which is exactly the setting that lets one slow
    service freeze everyone upstream of it.
    """
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with session.get(url, headers=dict(headers or {}), timeout=timeout) as response:
            if response.status >= 500:
                detail = (await response.text())[:200]
                raise ServiceError(response.status, url, detail)
            response.raise_for_status()
            return await response.json()
    except aiohttp.ServerTimeoutError as exc:  # aiohttp's own timeout type, made uniform
        raise TimeoutError(str(exc)) from exc


def retry_policy(  # noqa: PLR0913  learner-facing: lesson 02 turns these knobs
    *,
    attempts: int = 4,
    base_s: float = 0.05,
    cap_s: float = 1.0,
    jitter: Jitter = "full",
    deadline_s: float | None = None,
    retry_on: tuple[type[BaseException], ...] = RETRYABLE,
) -> AsyncRetrying:
    """A tenacity retry policy: at most ``attempts`` tries, waiting between them.

    ``jitter`` picks the waits:

    * ``"full"``: capped exponential backoff with full jitter (tenacity's
      ``wait_random_exponential``): wait n is uniform in ``[0, min(cap, base * 2**(n-1))]``.
      The recommended default.
    * ``"none"``: the same capped exponential waits, but fixed: callers that failed
      together retry together, in synchronized waves.
    * ``"immediate"``: no wait at all, the naive ``for _ in range(n)`` loop.

    ``deadline_s`` stops retrying when the next wait would end past the deadline
    (counted from the first attempt), so the caller's own time budget holds.
    The last error is re-raised when the policy gives up.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    waits = {
        "full": wait_random_exponential(multiplier=base_s, max=cap_s),
        "none": wait_exponential(multiplier=base_s, max=cap_s),
        "immediate": wait_none(),
    }
    if jitter not in waits:
        raise ValueError(f"jitter must be one of {sorted(waits)}, got {jitter!r}")
    stop: stop_base = stop_after_attempt(attempts)
    if deadline_s is not None:
        stop = stop | stop_before_delay(deadline_s)
    return AsyncRetrying(stop=stop, wait=waits[jitter], retry=retry_if_exception_type(retry_on), reraise=True)


async def call_with_retries(call: Callable[[], Awaitable[T]], policy: AsyncRetrying) -> T:
    """Run ``call()`` under ``policy``: the result of the first success, or the last error."""
    async for attempt in policy.copy():
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity re-raises the last error when it gives up")


State = Literal["closed", "open", "half-open"]


@dataclass
class CircuitBreaker:
    """Closed -> open after ``failure_threshold`` failures in a row; open -> half-open
    after ``reset_timeout_s``; half-open lets ONE trial call through: success closes
    the breaker, failure opens it again for another ``reset_timeout_s``.

    While open, :meth:`call` raises :class:`CircuitOpenError` at once: the caller
    fails fast instead of queueing behind a sick dependency, and the dependency gets
    room to recover. Every state change is appended to ``history`` as
    ``(clock(), state)``, ready for :meth:`spans` and a timeline plot.
    """

    failure_threshold: int = 5
    reset_timeout_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    """The time source; the default is the same clock asyncio's loop uses."""
    counts_as_failure: tuple[type[BaseException], ...] = RETRYABLE
    """Exceptions that say "the dependency is sick". Anything else passes through uncounted."""
    state: State = field(default="closed", init=False)
    failures: int = field(default=0, init=False)
    """Consecutive failures while closed."""
    opened_at: float = field(default=0.0, init=False)
    trial_in_flight: bool = field(default=False, init=False)
    rejected: int = field(default=0, init=False)
    """Calls refused while open (each one a request the dependency was spared)."""
    history: list[tuple[float, State]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.reset_timeout_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and reset_timeout_s > 0")
        self.history.append((self.clock(), "closed"))

    def _move(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self.history.append((self.clock(), state))

    def allow(self) -> bool:
        """May a call go out now? (Moves open -> half-open once the reset timeout passed.)"""
        if self.state == "open" and self.clock() - self.opened_at >= self.reset_timeout_s:
            self._move("half-open")
        if self.state == "closed":
            return True
        if self.state == "half-open" and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        self.rejected += 1
        return False

    def record_success(self) -> None:
        """A call worked: forget past failures; a successful trial closes the breaker."""
        if self.state == "open":
            return  # a straggler that started before the breaker opened: no verdict
        self.failures = 0
        self.trial_in_flight = False
        self._move("closed")

    def record_failure(self) -> None:
        """A call failed: a failed trial, or one failure too many, opens the breaker."""
        if self.state == "open":
            return  # a straggler: the breaker already knows
        self.trial_in_flight = False
        self.failures += 1
        if self.state == "half-open" or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
            self.failures = 0
            self._move("open")

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` through the breaker; raise :class:`CircuitOpenError` when open."""
        if not self.allow():
            raise CircuitOpenError(f"circuit open: refusing calls for {self.reset_timeout_s:g} s after repeated failures")
        try:
            result = await fn()
        except self.counts_as_failure:
            self.record_failure()
            raise
        except BaseException:
            self.trial_in_flight = False  # e.g. cancelled: no verdict on the dependency
            raise
        self.record_success()
        return result

    def spans(self, start: float, end: float) -> list[tuple[float, float, str]]:
        """``(from_s, to_s, state)`` spans between clock times ``start`` and ``end``,
        in seconds relative to ``start``: the ``states=`` argument of ``plots.timeline``."""
        out: list[tuple[float, float, str]] = []
        for i, (t, state) in enumerate(self.history):
            t_next = self.history[i + 1][0] if i + 1 < len(self.history) else end
            lo, hi = max(t, start), min(t_next, end)
            if hi > lo:
                out.append((lo - start, hi - start, state))
        return out

    def transitions(self) -> list[str]:
        """The sequence of states so far, e.g. ['closed', 'open', 'half-open', 'closed']."""
        return [state for _, state in self.history]
