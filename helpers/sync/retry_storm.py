"""Retry storms: how the retry policy of many callers decides the load on a sick service.

A *struggling* service can work on only ``capacity`` requests at once and sheds the
rest with an immediate 503 (what an overloaded instance behind a proxy does). A crowd
of users hits it at the same moment. Every user's client retries; only the policy
differs:

* immediate retries send the whole retry budget within milliseconds, while every slot
  is still busy: the 503s multiply and few users get through;
* capped exponential backoff *without* jitter spaces the attempts out, but the crowd
  comes back in synchronized waves that overflow the service again;
* the same backoff with *full jitter* scatters the retries over time, so they fit into
  the gaps: fewer requests reach the service and more users succeed.

We count the requests that reach the service per user request and keep their arrival
times for a histogram. The retry loop itself is the learner's: :func:`storm` takes any
``async def retry(call)`` that calls ``call()`` until it succeeds or gives up (lesson 02
writes the three loops on screen), or the name of one of the tenacity policies of
:func:`helpers.core.resilience.retry_policy`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from helpers.core.http import STATS, Service, start_service
from helpers.core.measure import open_loop
from helpers.core.resilience import Jitter, call_with_retries, get_json, retry_policy


async def start_struggling(name: str = "inventory", *, capacity: int = 5, work_s: float = 0.05) -> Service:
    """A service that works on ``capacity`` requests at once and answers 503 to the rest."""

    async def handle(request: web.Request) -> web.Response:
        if request.app[STATS].in_flight > capacity:  # this request counts itself
            return web.json_response({"error": "overloaded, try later"}, status=503)
        await asyncio.sleep(work_s)
        return web.json_response({"ok": True})

    return await start_service(name, handle)


POLICY_LABELS = {"immediate": "immediate retries", "none": "backoff, no jitter", "full": "backoff + full jitter"}

Call = Callable[[], Awaitable[Any]]
RetryFn = Callable[[Call], Awaitable[Any]]
"""A retry loop: ``await retry(call)`` runs ``call()`` until it succeeds or the loop gives up (re-raising)."""


@dataclass(frozen=True)
class StormResult:
    """What one crowd of users did to the service under one retry policy."""

    policy: str
    users: int
    succeeded: int
    requests: int
    """Requests that reached the service (first attempts and retries)."""
    arrivals_s: tuple[float, ...]
    """Arrival time of each request at the service, seconds after the first one arrived."""

    @property
    def per_user(self) -> float:
        """Requests the service had to handle per user request: the amplification."""
        return self.requests / self.users

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.users

    def busy_bins(self, window_s: float = 0.02) -> int:
        """How many ``window_s`` bins saw any arrival: how widely the load was spread."""
        return int(np.count_nonzero(np.histogram(self.arrivals_s, bins=_bins(self.arrivals_s, window_s))[0]))

    def peak(self, window_s: float = 0.02, *, after_s: float = 0.0) -> int:
        """The most requests that arrived within one ``window_s`` bin: the height of the worst wave.

        ``after_s`` skips the bins that begin before it, e.g. the crowd's first attempts,
        which every policy sends at the same moment, to compare the waves of retries.
        """
        counts, edges = np.histogram(self.arrivals_s, bins=_bins(self.arrivals_s, window_s))
        return int(counts[edges[:-1] >= after_s - 1e-9].max(initial=0))

    def as_row(self) -> dict[str, float | int | str]:
        return {
            "policy": POLICY_LABELS.get(self.policy, self.policy),
            "users": self.users,
            "requests at service": self.requests,
            "requests per user": round(self.per_user, 2),
            "users served": f"{self.success_rate:.0%}",
            "20 ms slots with arrivals": self.busy_bins(),
            "most in one 20 ms slot": self.peak(),
        }


def _bins(values: Sequence[float], width: float) -> np.ndarray:
    top = max(values, default=0.0) + width
    return np.arange(0.0, top + width, width)


async def storm(  # noqa: PLR0913  learner-facing: lesson 02 passes these knobs
    service: Service,
    retry: RetryFn | Jitter,
    *,
    users: int = 50,
    attempts: int = 6,
    base_s: float = 0.05,
    cap_s: float = 1.0,
    burst_s: float = 0.02,
    timeout_s: float = 0.5,
    name: str | None = None,
) -> StormResult:
    """``users`` users arrive within ``burst_s``; each one's call goes through ``retry``.

    ``retry`` is a retry loop, ``async def retry(call)`` (its own attempts and waits), or
    a tenacity policy name: ``"immediate"``, ``"none"`` (backoff without jitter) or
    ``"full"`` (backoff with full jitter), built from ``attempts``, ``base_s`` and
    ``cap_s``. ``name`` labels the result (default: the function's name or the policy).
    Each attempt is one GET with a ``timeout_s`` deadline that raises ``ServiceError``
    on a 503, so the loop sees the same failures a real client would.
    """
    run_retries: RetryFn
    if isinstance(retry, str):
        rules = retry_policy(attempts=attempts, base_s=base_s, cap_s=cap_s, jitter=retry)
        label = name or retry

        async def with_tenacity(call: Call) -> Any:
            return await call_with_retries(call, rules)

        run_retries = with_tenacity
    else:
        label = name or str(getattr(retry, "__name__", "retry"))
        run_retries = retry
    service.stats.reset()
    start = time.perf_counter()  # the clock service.stats.arrivals uses
    url = service.url + "/item"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one_user() -> object:
            return await run_retries(lambda: get_json(session, url, timeout_s=timeout_s))

        run = await open_loop(one_user, rate=users / burst_s, count=users)
    # counted from the first arrival, not from ``start``: opening the session and 50 connections
    # takes a few ms (more on a busy machine) that belong to no policy
    first = min(service.stats.arrivals, default=start)
    arrivals = tuple(t - first for t in service.stats.arrivals)
    succeeded = sum(s.ok for s in run.samples)
    return StormResult(label, users, succeeded, service.stats.requests, arrivals)
