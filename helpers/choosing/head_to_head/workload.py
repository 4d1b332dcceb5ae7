"""Lesson 05's inputs of a run: the orders on their open-loop schedule (the same for both designs), and what goes wrong."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import aiohttp

from helpers.core.measure import LoadRun, open_loop

ITEMS: dict[str, float] = {"espresso cup": 9.5, "teapot": 24.0, "coffee grinder": 59.0, "milk jug": 14.0}
"""What the generated orders buy, and the unit price."""


class Order(TypedDict):
    """One order as the caller POSTs it (JSON): what the Order service's handler reads."""

    order_id: str
    item: str
    qty: int
    amount: float


@dataclass(frozen=True)
class Workload:
    """An open-loop load: ``count`` orders at ``rate`` per second, contents drawn from ``seed``."""

    rate: float = 20.0
    count: int = 40
    seed: int = 5
    timeout_s: float = 2.0
    """A caller gives up on an answer after this long (counted as an error)."""

    def orders(self) -> list[Order]:
        """The orders, identical on every call with the same seed."""
        rng = random.Random(self.seed)
        orders: list[Order] = []
        for i in range(self.count):
            item = rng.choice(sorted(ITEMS))
            qty = rng.randint(1, 3)
            orders.append(Order(order_id=f"order-{i:03d}", item=item, qty=qty, amount=round(ITEMS[item] * qty, 2)))
        return orders

    @property
    def duration_s(self) -> float:
        """How long the orders take to send."""
        return self.count / self.rate


class OrderRefused(RuntimeError):
    """The Order service answered with an error status; the message has the status and why."""


async def _post(session: aiohttp.ClientSession, url: str, order: Mapping[str, Any]) -> Any:
    async with session.post(f"{url}/orders", json=order) as answer:
        text = await answer.text()
        if answer.status >= 300:
            raise OrderRefused(f"HTTP {answer.status}: {text[:120]}")
        return await answer.json(content_type=None) if text else None


async def place_orders(url: str, workload: Workload) -> tuple[LoadRun, list[str]]:
    """POST the workload's orders to ``url``/orders on its open-loop schedule.

    Returns the run (one sample per order, in send order) and the order ids in the same order.
    """
    pending = iter(workload.orders())
    ids: list[str] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        def call() -> Awaitable[Any]:
            order = next(pending)  # taken when open_loop makes the call, so ids[i] is sample i's order
            ids.append(order["order_id"])
            return _post(session, url, order)

        run = await open_loop(call, rate=workload.rate, count=workload.count, timeout=workload.timeout_s)
    for sample, order_id in zip(run.samples, ids, strict=True):
        answered = sample.value.get("order_id") if sample.ok and isinstance(sample.value, dict) else None
        if answered is not None and answered != order_id:
            raise RuntimeError(f"sample for {order_id} was answered for {answered}: the pairing of samples and orders broke")
    return run, ids


@dataclass(frozen=True)
class Scenario:
    """What goes wrong during the run: one service slower, or one service down for a while."""

    name: str
    slow: str | None = None
    """This service takes ``slow_by_s`` longer for every order."""
    slow_by_s: float = 0.3
    down: str | None = None
    """This service is down from ``down_at_s`` after the first order, for ``down_for_s``."""
    down_at_s: float = 1.0
    down_for_s: float = 3.0


HEALTHY = Scenario("healthy")
SLOW_PAYMENT = Scenario("payment slow", slow="payment", slow_by_s=0.3)
SLOW_THEN_DOWN = Scenario("payment slow, then down", slow="payment", slow_by_s=0.3, down="payment", down_at_s=1.0, down_for_s=3.0)
"""A payment provider that is slow (+300 ms per charge) and then dies for 3 s: it dies with charges in progress."""
