"""Message ordering: kept by one consumer, broken by a worker pool, restored per key by routing.

MQTT delivers the messages of one publisher on one topic in the order they were sent
(for QoS 1, given the usual one-connection setup). That order survives exactly as long
as they are *processed* one at a time. Hand them to a pool of workers whose work takes
varying time and a quick message overtakes a slow one: an **inversion**, e.g. "order
shipped" applied before "order paid".

Usually only the order *per key* matters (per customer, per order id). Routing every
event of a key to the same single-threaded consumer (here: one topic per partition,
``partition = crc32(key) % partitions``, like Kafka partitions) keeps per-key order
while different keys still run in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.axes import Axes

from helpers.core.broker import Broker
from helpers.core.lifecycle import running
from helpers.core.messaging import Consumer, Event, make_event, manual_ack, publish
from helpers.core.plots import COLORS
from helpers.core.waiting import until
from helpers.core.worker_pool import run_pool

KEYS = ("alice", "bob", "erin", "frank")  # crc32 % 4 puts each on its own partition
MODES = ("single consumer", "worker pool", "routed by key")


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


def partition(key: str, partitions: int) -> int:
    """A stable partition for ``key`` (crc32, not ``hash()``, which changes per process)."""
    return zlib.crc32(key.encode()) % partitions


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


async def run_ordering(
    broker: Broker,
    topic: str,
    mode: str,
    *,
    workers: int = 4,
    count: int = 100,
    seed: int = 7,
    max_work_s: float = 0.01,
    timeout: float = 10.0,
) -> list[Step]:
    """Publish keyed events and return the order in which they were processed under ``mode``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
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
            target = f"{topic}/p{partition(event.data['key'], workers)}" if routed else topic
            await publish(publisher, target, event, qos=1)
        await until(lambda: len(steps) >= len(events), timeout)
    return steps


def plot_processing_order(
    results: dict[str, list[Step]], *, key: str = KEYS[0], axes: Sequence[Axes] | None = None
) -> Sequence[Axes]:
    """For one key: sequence number against processing position, one panel per mode.

    A staircase that only goes up is in order; every step down is an inversion.
    """
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.4), layout="constrained", sharey=True)
    for i, (ax, (mode, steps)) in enumerate(zip(axes, results.items(), strict=True)):
        mine = [s.seq for s in steps if s.key == key]
        bad = inversions([s for s in steps if s.key == key]).get(key, 0)
        ax.plot(range(len(mine)), mine, "o-", ms=3, color=COLORS[i % len(COLORS)], label=f"{bad} inversions")
        ax.set(title=mode, xlabel=f"processing position ({key}'s events)", ylabel="sequence number" if i == 0 else None)
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    return axes
