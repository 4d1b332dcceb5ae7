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
times for a histogram.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class StormResult:
    """What one crowd of users did to the service under one retry policy."""

    policy: str
    users: int
    succeeded: int
    requests: int
    """Requests that reached the service (first attempts and retries)."""
    arrivals_s: tuple[float, ...]
    """Arrival time of each request at the service, seconds after the crowd started."""

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

    def as_row(self) -> dict[str, float | int | str]:
        return {
            "policy": POLICY_LABELS.get(self.policy, self.policy),
            "users": self.users,
            "requests at service": self.requests,
            "requests per user": round(self.per_user, 2),
            "users served": f"{self.success_rate:.0%}",
            "20 ms slots with arrivals": self.busy_bins(),
        }


def _bins(values: Sequence[float], width: float) -> np.ndarray:
    top = max(values, default=0.0) + width
    return np.arange(0.0, top + width, width)


async def storm(
    service: Service,
    *,
    policy: Jitter,
    users: int = 50,
    attempts: int = 6,
    base_s: float = 0.05,
    cap_s: float = 1.0,
    burst_s: float = 0.02,
    timeout_s: float = 0.5,
) -> StormResult:
    """``users`` users arrive within ``burst_s`` and each retries with ``policy``
    (``"immediate"``, ``"none"`` = backoff without jitter, ``"full"`` = backoff with
    full jitter); every policy has the same budget of ``attempts`` tries."""
    service.stats.reset()
    start = time.perf_counter()  # the clock service.stats.arrivals uses
    rules = retry_policy(attempts=attempts, base_s=base_s, cap_s=cap_s, jitter=policy)
    url = service.url + "/item"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one_user() -> object:
            return await call_with_retries(lambda: get_json(session, url, timeout_s=timeout_s), rules)

        run = await open_loop(one_user, rate=users / burst_s, count=users)
    arrivals = tuple(t - start for t in service.stats.arrivals)
    succeeded = sum(s.ok for s in run.samples)
    return StormResult(policy, users, succeeded, service.stats.requests, arrivals)
