"""The three downstream services' effects: the one truth both designs of lesson 05 are judged by.

Whichever design applied an effect (an HTTP call in the sync one, an MQTT delivery in the
async one), :class:`Effects` records it the same way, so "done", "half done" and "applied
twice" mean the same for both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_WORK: dict[str, float] = {"inventory": 0.02, "payment": 0.04, "notification": 0.01}
"""Seconds of (simulated, I/O-bound) work per order in each downstream service."""


@dataclass(frozen=True)
class Applied:
    """One effect applied to one order; times are the event loop's clock (seconds)."""

    service: str
    order_id: str
    started: float
    finished: float


class Effects:
    """Every effect the downstream services applied, per service and order.

    The work is an ``asyncio.sleep`` standing in for I/O (the stock database, the payment
    provider, the mail server). An effect is recorded once per order and service; a
    second application of the same one (which the async design's dedupe should prevent)
    is counted in :attr:`repeats` instead of overwriting the first.
    """

    def __init__(self, work: Mapping[str, float]) -> None:
        self.work = dict(work)
        self.applied: dict[str, dict[str, Applied]] = {service: {} for service in self.work}
        self.repeats = 0

    @property
    def services(self) -> list[str]:
        return list(self.work)

    async def apply(self, service: str, order: Mapping[str, Any]) -> None:
        """Do ``service``'s work on ``order`` and record it."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(self.work[service])
        order_id = str(order.get("order_id"))
        if order_id in self.applied[service]:
            self.repeats += 1
            return
        self.applied[service][order_id] = Applied(service, order_id, started, loop.time())

    def done_at(self, order_id: str) -> float | None:
        """When the last of the order's effects finished, or None while one is missing."""
        applied = [self.applied[s].get(order_id) for s in self.work]
        return max(a.finished for a in applied if a is not None) if all(applied) else None

    def steps_done(self, order_id: str) -> int:
        """How many of the services have applied their effect to this order."""
        return sum(order_id in self.applied[s] for s in self.work)

    def first_started(self, order_id: str) -> float | None:
        """When the first downstream service started on the order (None: none has yet)."""
        starts = [self.applied[s][order_id].started for s in self.work if order_id in self.applied[s]]
        return min(starts, default=None)
