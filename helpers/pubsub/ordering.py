"""Message ordering: kept by one consumer, broken by a worker pool, restored per key by routing.

MQTT delivers the messages of one publisher on one topic in the order they were sent
(for QoS 1, given the usual one-connection setup). That order survives exactly as long
as they are *processed* one at a time. Hand them to a pool of workers whose work takes
varying time and a quick message overtakes a slow one: an **inversion**, e.g. "order
shipped" applied before "order paid".

Usually only the order *per key* matters (per customer, per order id). Routing every
event of a key to the same single-threaded consumer (here: one topic per partition,
like Kafka partitions) keeps per-key order while different keys still run in parallel.
The routing function (:data:`Route`, key and partition count in, partition out) is the
learner's, written in lesson 04; :func:`run_ordering` publishes with it and counts what
happened to the order.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from matplotlib.axes import Axes

from helpers.core.broker import Broker
from helpers.core.lifecycle import running
from helpers.core.messaging import Consumer, Event, make_event, manual_ack, publish
from helpers.core.plots import COLORS
from helpers.core.waiting import until
from helpers.core.worker_pool import run_pool

KEYS = ("alice", "bob", "erin", "frank")  # crc32(key) % 4 puts each on its own partition
Mode = Literal["single consumer", "worker pool", "routed by key"]
"""How the consuming side is built: one consumer, a pool behind one subscription, or one consumer per key partition."""
MODES: tuple[Mode, ...] = get_args(Mode)

Route = Callable[[str, int], int]
"""The learner's partitioner: ``route(key, partitions)`` is the partition (0 .. partitions - 1) for ``key``."""


@dataclass(frozen=True)
class Step:
    """One processed event: its key, its per-key sequence number and its publish position."""

    key: str
    seq: int
    sent: int


def keyed_events(keys: Sequence[str] = KEYS, count: int = 100, *, seed: int = 7) -> list[Event]:
    """``count`` events for randomly (seeded) chosen keys, each key numbered 0, 1, 2, ... in publish order."""
    rng = random.Random(seed)
    next_seq = dict.fromkeys(keys, 0)
    events = []
    for sent in range(count):
        key = rng.choice(list(keys))
        events.append(make_event("account.updated", {"key": key, "seq": next_seq[key], "sent": sent}, source="/accounts"))
        next_seq[key] += 1
    return events


def inversions(steps: Sequence[Step]) -> dict[str, int]:
    """Per key: how many events were processed after a later event of the same key."""
    highest: dict[str, int] = {}
    out: dict[str, int] = {}
    for step in steps:
        out.setdefault(step.key, 0)
        if step.seq < highest.get(step.key, -1):
            out[step.key] += 1
        highest[step.key] = max(highest.get(step.key, -1), step.seq)
    return out


def global_inversions(steps: Sequence[Step]) -> int:
    """Events processed after an event that was published later (any key)."""
    count, highest = 0, -1
    for step in steps:
        if step.sent < highest:
            count += 1
        highest = max(highest, step.sent)
    return count


def work_time(key: str, seq: int, *, seed: int, max_s: float) -> float:
    """The (seeded, repeatable) time one event takes: anywhere from 0 to ``max_s``."""
    return random.Random(f"{seed}:{key}:{seq}").uniform(0, max_s)


async def run_ordering(  # noqa: PLR0913  learner-facing: lesson 04 passes these knobs
    broker: Broker,
    topic: str,
    mode: Mode,
    *,
    workers: int = 4,
    count: int = 100,
    seed: int = 7,
    max_work_s: float = 0.01,
    timeout: float = 10.0,
    route: Route | None = None,
) -> list[Step]:
    """Publish keyed events and return the order in which they were processed under ``mode``.

    "routed by key" runs ``workers`` single-threaded consumers, one per partition topic,
    and publishes each event to the partition ``route(key, workers)`` picks.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "routed by key" and route is None:
        raise ValueError("'routed by key' needs route=your_partition_function(key, partitions)")
    events = keyed_events(count=count, seed=seed)
    steps: list[Step] = []

    async def handle(event: Event) -> None:
        data = event.data
        await asyncio.sleep(work_time(data["key"], data["seq"], seed=seed, max_s=max_work_s))
        steps.append(Step(data["key"], data["seq"], data["sent"]))

    run_id = uuid.uuid4().hex[:6]
    routed = mode == "routed by key"
    pool = workers if mode == "worker pool" else 1
    async with contextlib.AsyncExitStack() as stack:
        for i in range(workers if routed else 1):
            client = await stack.enter_async_context(manual_ack(broker.client(f"ordering-{run_id}-{i}")))
            consumer = Consumer(client, f"{topic}/p{i}" if routed else topic, handle)
            await stack.enter_async_context(running(run_pool, consumer, pool))
        publisher = await stack.enter_async_context(broker.client(f"ordering-pub-{run_id}"))
        for event in events:
            target = f"{topic}/p{_partition(route, event.data['key'], workers)}" if route and routed else topic
            await publish(publisher, target, event, qos=1)
        await until(lambda: len(steps) >= len(events), timeout)
    return steps


def _partition(route: Route, key: str, partitions: int) -> int:
    """``route(key, partitions)``, refused unless it names one of the partitions (else nobody would consume it)."""
    chosen = route(key, partitions)
    if not isinstance(chosen, int) or not 0 <= chosen < partitions:
        name = getattr(route, "__name__", "route")
        raise ValueError(f"{name}({key!r}, {partitions}) returned {chosen!r}: expected a partition 0..{partitions - 1}")
    return chosen


def plot_processing_order(
    results: dict[str, list[Step]], *, key: str = KEYS[0], axes: Sequence[Axes] | None = None
) -> Sequence[Axes]:
    """For one key: sequence number against processing position, one panel per mode.

    A staircase that only goes up is in order; every step down is an inversion. One line
    per panel, so the panel's title carries the count and no legend sits on the data.
    """
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.4), layout="constrained", sharey=True)
    for i, (ax, (mode, steps)) in enumerate(zip(axes, results.items(), strict=True)):
        mine = [s.seq for s in steps if s.key == key]
        bad = inversions([s for s in steps if s.key == key]).get(key, 0)
        ax.plot(range(len(mine)), mine, "o-", ms=3, color=COLORS[i % len(COLORS)])
        ax.set(
            title=f"{mode}: {bad} inversion{'' if bad == 1 else 's'}",
            xlabel=f"applied as {key}'s n-th event (position)",
            ylabel=f"sequence number of {key}'s event" if i == 0 else None,
        )
        ax.grid(alpha=0.3)
    return axes
