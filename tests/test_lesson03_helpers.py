"""Lesson 03's harnesses: they run the learner's own functions, and what they report is measured.

The notebook hands its ``publish_order``, ``consume`` and ``away_and_back`` to the helpers;
these tests hand in small stand-ins written the same way and check that the helpers
really call them, count what really happened, and draw honest plots.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import aiomqtt
import matplotlib.pyplot as plt
import numpy as np
import pytest

from helpers.core.broker import Broker
from helpers.core.measure import LoadRun, Sample, summarize
from helpers.core.messaging import EventHandler, decode, make_event
from helpers.core.receive import collect, flush
from helpers.pubsub.delivery import SETTINGS, durability_matrix, queue_bound
from helpers.pubsub.leveling import BurstResult, SyncBurst, backlog, cumulative, plot_burst, queued_burst
from helpers.pubsub.scaling import POOL, SHARED, ScaleResult, WorkerSlots, consumer_throughput, plot_scaling
from helpers.pubsub.shop import percentile_dots, place_orders, start_event_shop


async def consume(client: aiomqtt.Client, topic: str, handle: EventHandler, ready: asyncio.Event | None = None) -> None:
    """The consumer loop as lesson 03 writes it on screen."""
    await client.subscribe(topic, qos=1)
    if ready is not None:
        ready.set()
    async for message in client.messages:
        await handle(decode(bytes(message.payload)))


async def consume_in_pool(
    client: aiomqtt.Client, topic: str, handle: EventHandler, ready: asyncio.Event | None = None, *, workers: int = 4
) -> None:
    """The bounded pool as lesson 03 writes it on screen."""
    free = asyncio.Semaphore(workers)

    async def work_on(message: aiomqtt.Message) -> None:
        try:
            await handle(decode(bytes(message.payload)))
        finally:
            free.release()

    await client.subscribe(topic, qos=1)
    if ready is not None:
        ready.set()
    async with asyncio.TaskGroup() as pool:
        async for message in client.messages:
            await free.acquire()
            pool.create_task(work_on(message))


def shared_filter(group: str, topic: str) -> str:
    return f"$share/{group}/{topic}"


# --------------------------------------------------------------------------- no broker


async def test_worker_slots_give_each_running_handler_its_own_slot() -> None:
    slots, held, most = WorkerSlots(3), set(), [0]

    async def work(seconds: float) -> int:
        async with slots.hold() as slot:
            assert slot not in held, "two handlers were given the same worker"
            held.add(slot)
            most[0] = max(most[0], len(held))
            await asyncio.sleep(seconds)
            held.discard(slot)
            return slot

    used = await asyncio.gather(*(work(0.01 * (i % 3)) for i in range(9)))
    assert set(used) == {0, 1, 2}
    assert most[0] == 3


async def test_throughput_needs_one_work_time_per_consumer() -> None:
    with pytest.raises(ValueError, match="one per consumer"):
        await consumer_throughput(None, "t", consumers=3, work_s=[0.1, 0.2])  # type: ignore[arg-type]  # fails before the broker


def test_backlog_and_cumulative_count_what_arrived_and_is_not_done() -> None:
    times, waiting = backlog([0.0, 0.0, 0.05], [0.03, 0.09, 0.11], step=0.02)
    assert waiting == [2, 2, 1, 2, 2, 1, 0, 0, 0]
    assert len(times) == len(waiting)
    assert cumulative([0.0, 0.05, 1.0], [0.01, 0.05, 0.2]) == [0, 2, 3]


def test_sync_burst_knows_when_its_work_was_done_and_when_timeouts_began() -> None:
    samples = [
        Sample(10.0, 10.0, 10.05, True),
        Sample(10.0, 10.0, 11.0, False, "timeout"),
        Sample(10.1, 10.1, 11.1, False, "timeout"),
    ]
    burst = SyncBurst(LoadRun(samples), served=3, arrived_at=[0.0, 0.0, 0.1], served_at=[0.05, 1.3, 1.6])
    assert burst.over_s == pytest.approx(1.1), "the last caller left at 1.1 s"
    assert burst.done_s == pytest.approx(1.6), "but the service worked until 1.6 s"
    assert burst.first_timeout_s == pytest.approx(1.0)
    times, inside = burst.in_service(step=0.1)
    assert inside[0] == 2
    assert inside[-1] == 0
    assert SyncBurst(LoadRun(samples[:1]), served=1).first_timeout_s is None


def test_percentile_dots_use_a_log_axis_and_print_every_value() -> None:
    m5 = {"async": summarize([0.002, 0.003, 0.004]), "sync": summarize([0.5, 0.51, 0.52])}
    ax = percentile_dots(m5, reference_ms=500, reference_label="work")
    texts = [t.get_text() for t in ax.texts]
    assert ax.get_xscale() == "log", "a log time axis"
    assert not ax.patches, "dots, not bars"
    assert len(texts) == 2
    assert all(p in texts[1] for p in ("p50", "p90", "p99"))
    assert "520 ms" in texts[1]
    assert "ms" in ax.get_xlabel()
    assert ax.get_title()
    assert ax.get_legend() is not None
    plt.close("all")


def test_scaling_plot_has_a_numeric_axis_of_consumer_counts() -> None:
    results = [ScaleResult(k, SHARED, 40, 40, 2.0 / k, (40 // k,) * k) for k in (1, 2, 4)]
    ax = plot_scaling(results)
    assert list(ax.get_xticks()) == [1, 2, 4], "consumer counts, not categories"
    ideal = ax.get_lines()[0]
    assert np.asarray(ideal.get_xdata())[-1] == 4, "k x one consumer, at x = k"
    assert np.asarray(ideal.get_ydata())[-1] == pytest.approx(80), "k x one consumer, at x = k"
    assert "messages/s" in ax.get_ylabel()
    assert "consumers" in ax.get_xlabel()
    pool = plot_scaling([ScaleResult(k, POOL, 40, 40, 2.0 / k, (40 // k,) * k) for k in (1, 2)])
    assert "workers" in pool.get_xlabel(), "without $share the k are called workers"
    plt.close("all")


def test_burst_plot_draws_the_sync_service_work_and_the_first_timeout() -> None:
    queued = BurstResult(sent_at=[0.0, 0.1, 0.2], done_at=[0.5, 1.0, 1.5])
    samples = [Sample(0.0, 0.0, 0.5, True), Sample(0.1, 0.1, 1.1, False, "timeout"), Sample(0.2, 0.2, 1.2, False, "timeout")]
    sync = SyncBurst(LoadRun(samples), served=3, arrived_at=[0.0, 0.1, 0.2], served_at=[0.5, 1.0, 1.5])
    left, right = plot_burst(queued, sync, timeout=1.0)
    labels = [line.get_label() for line in right.get_lines()]
    assert "work done (sync service)" in labels
    assert "work done (async)" in labels
    marker = next(line for line in right.get_lines() if str(line.get_label()).startswith("first caller gives up"))
    assert np.asarray(marker.get_xdata())[0] == pytest.approx(1.1), "the line sits where the first caller really gave up"
    for ax in (left, right):
        assert "(s)" in ax.get_xlabel()
        assert ax.get_ylabel()
        assert ax.get_title()
    plt.close("all")


# --------------------------------------------------------------------------- with a broker


@pytest.mark.broker
async def test_pool_workers_are_counted_for_real(broker: Broker, topic: str) -> None:
    result = await consumer_throughput(broker, topic, consumers=2, n=30, work_s=[0.005, 0.04], shared=False)
    fast, slow = result.per_consumer
    assert result.mode == POOL
    assert result.unit == "worker"
    assert fast + slow == 30 == result.processed, "the per-worker counts add up to the messages processed"
    assert fast > slow + 5, f"the free worker takes the next message, so the fast one does more: {result.per_consumer}"


@pytest.mark.broker
async def test_shared_members_run_the_learners_loop_on_their_own_connections(broker: Broker, topic: str) -> None:
    calls: list[str] = []

    async def counted(client: aiomqtt.Client, group: str, handle: EventHandler, ready: asyncio.Event | None = None) -> None:
        calls.append(f"{client.identifier}:{group}")
        await consume(client, group, handle, ready)

    result = await consumer_throughput(broker, topic, consumers=3, n=30, work_s=0.01, shared=True, consume=counted)
    assert result.mode == SHARED
    assert len(calls) == 3
    assert len({c.split(":")[0] for c in calls}) == 3
    assert all(c.split(":", 1)[1].startswith("$share/") for c in calls), "each member subscribed to the $share group"
    assert sum(result.per_consumer) == 30, result.per_consumer
    assert min(result.per_consumer) > 0, result.per_consumer


@pytest.mark.broker
async def test_event_shop_runs_the_given_publish_and_consume(broker: Broker, topic: str) -> None:
    published: list[dict[str, Any]] = []

    async def publish_order(client: aiomqtt.Client, topic: str, order: dict[str, Any]) -> None:
        published.append(order)
        await client.publish(topic, make_event("order.placed", order, source="/t").to_bytes(), qos=1)

    with pytest.raises(ValueError, match="concurrency"):
        await start_event_shop(broker, topic, work={"a": 0.0}, consume=consume, concurrency=2)
    shop = await start_event_shop(broker, topic, work={"a": 0.0, "b": 0.01}, publish_order=publish_order, consume=consume)
    try:
        await place_orders(shop.order_service.url, count=3, rate=50)
        assert await shop.wait_handled(3, timeout=5), shop.counts()
    finally:
        await shop.stop()
    assert len(published) == 3
    assert all(o["item"] == "book" for o in published)
    assert {h.order_id for h in shop.workers["b"].handled} == {o["order_id"] for o in published}


@pytest.mark.broker
async def test_durability_matrix_runs_the_given_experiment_once_per_setting(broker: Broker, topic: str) -> None:
    seen: list[tuple[str, bool, int]] = []

    async def away_and_back(topic: str, *, client_id: str, clean_session: bool, qos: int, n: int) -> list[aiomqtt.Message]:
        seen.append((client_id, clean_session, qos))
        async with broker.client(client_id, clean_session=clean_session) as consumer:
            await consumer.subscribe(topic, qos=qos)
        async with broker.client() as producer:
            for i in range(n):
                event = make_event("order.placed", {"i": i}, source="/t")
                for _ in range(2):  # every event twice: the helper must count distinct events
                    await producer.publish(topic, event.to_bytes(), qos=qos)
            await flush(producer)
        async with broker.client(client_id, clean_session=clean_session) as consumer:
            return await collect(consumer, expected=2 * n, idle=0.3)

    matrix = await durability_matrix(broker, topic, n=4, experiment=away_and_back, client_id="learner")
    assert [(clean, qos) for _, clean, qos in seen] == [(clean, qos) for qos, clean in SETTINGS]
    assert len({cid for cid, _, _ in seen}) == 4
    assert all(cid.startswith("learner-") for cid, _, _ in seen)
    got = {r.setup: r.received for r in matrix}
    assert got["QoS 1 + persistent session"] == 4, "distinct events, not messages"
    assert got["QoS 1 + clean session"] == got["QoS 0 + clean session"] == 0
    # the helper deleted the stored session: a persistent reconnect with that id finds nothing waiting
    async with broker.client(seen[0][0], clean_session=False) as again:
        assert await collect(again, idle=0.3) == []
    async with broker.client(seen[0][0], clean_session=True):
        pass
    bound = await queue_bound(broker, f"{topic}/bound", n=5, experiment=away_and_back, client_id="learner")
    assert (bound.sent, bound.received, bound.qos, bound.persistent) == (5, 5, 1, True)


def test_no_gc_pauses_during_a_burst_and_the_collector_comes_back() -> None:
    import gc

    from helpers.pubsub.leveling import no_gc_pauses

    def failing_burst() -> None:
        with no_gc_pauses():
            assert not gc.isenabled(), "no collection may land inside the burst"
            raise RuntimeError("the burst failed")

    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="the burst failed"):
        failing_burst()
    assert gc.isenabled(), "switched back on, even after an error"


async def test_the_burst_is_drained_by_the_learners_pool_within_its_bound(broker: Broker, topic: str) -> None:
    run = await queued_burst(broker, topic, n=120, rate=600, workers=3, work_s=0.01, consume=consume_in_pool_of(3))
    assert run.processed == run.sent == 120
    assert run.peak_in_progress == 3, "the learner's pool ran 3 at once, never more"


async def test_the_burst_harness_catches_an_unbounded_pool(broker: Broker, topic: str) -> None:
    run = await queued_burst(broker, topic, n=60, rate=600, workers=3, work_s=0.05, consume=consume_in_pool_of(60))
    assert run.processed == 60
    assert run.peak_in_progress > 3


async def test_event_shop_reports_how_many_orders_the_learners_pool_ran_at_once(broker: Broker, topic: str) -> None:
    shop = await start_event_shop(broker, topic, work={"a": 0.2}, consume=consume_in_pool_of(5))
    try:
        await place_orders(shop.order_service.url, count=8, rate=100)
        assert await shop.wait_handled(8, timeout=10)
    finally:
        await shop.stop()
    assert 2 <= shop.peak_in_progress()["a"] <= 5


async def test_shared_members_subscribe_to_the_learners_filter(broker: Broker, topic: str) -> None:
    made: list[str] = []
    subscribed: list[str] = []

    def recorded_filter(group: str, topic: str) -> str:
        made.append(shared_filter(group, topic))
        return made[-1]

    async def counted(client: aiomqtt.Client, group: str, handle: EventHandler, ready: asyncio.Event | None = None) -> None:
        subscribed.append(group)
        await consume(client, group, handle, ready)

    result = await consumer_throughput(
        broker, topic, consumers=2, n=10, work_s=0.001, shared=True, consume=counted, subscription=recorded_filter
    )
    assert len(made) == 1
    assert made[0].startswith("$share/")
    assert made[0].endswith(f"/{topic}")
    assert subscribed == made * 2, "every member subscribed to the filter the learner's function returned"
    assert sum(result.per_consumer) == 10


def consume_in_pool_of(workers: int) -> Any:
    return functools.partial(consume_in_pool, workers=workers)
