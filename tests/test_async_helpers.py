"""Unit tests of the helpers behind lessons 03-04 (pure logic first, then small broker runs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import cast

import aiomqtt
import pytest
from lesson04_fixes import ReadYourWrites, partition_for

from helpers.core import lifecycle
from helpers.core.broker import Broker
from helpers.core.measure import LoadRun, Sample
from helpers.core.messaging import Consumer, InvalidEvent, decode, make_event, publish
from helpers.core.receive import collect, flush, payloads
from helpers.core.tables import render
from helpers.core.worker_pool import run_pool
from helpers.pubsub.consistency import StatusSystem, View, own_reads_after_write
from helpers.pubsub.deadletters import dead_letter_rows, sample_messages
from helpers.pubsub.delivery import OfflineResult, offline_delivery
from helpers.pubsub.idempotency import Ledger, die_before_ack, order_event
from helpers.pubsub.leveling import BurstResult
from helpers.pubsub.ordering import KEYS, Step, global_inversions, inversions, keyed_events, work_time
from helpers.pubsub.probes import Finding

# --------------------------------------------------------------------------- pure logic


def test_inversions_count_events_applied_after_a_later_one_of_the_same_key() -> None:
    steps = [Step("a", 0, 0), Step("b", 0, 1), Step("a", 2, 2), Step("a", 1, 3), Step("b", 1, 4), Step("a", 3, 5)]
    assert inversions(steps) == {"a": 1, "b": 0}
    assert global_inversions(steps) == 0  # publish positions only grow
    assert global_inversions([Step("a", 0, 1), Step("b", 0, 0)]) == 1


def test_keyed_events_number_each_key_in_publish_order_and_are_seeded() -> None:
    events = keyed_events(count=50, seed=3)
    assert [e.data["sent"] for e in events] == list(range(50))
    for key in KEYS:
        seqs = [e.data["seq"] for e in events if e.data["key"] == key]
        assert seqs == list(range(len(seqs)))
    again = keyed_events(count=50, seed=3)
    assert [e.data["key"] for e in events] == [e.data["key"] for e in again]


def test_the_course_keys_spread_over_four_partitions_with_lesson_04s_crc32() -> None:
    """Lesson 04's partition_for is crc32(key) % partitions: each course key gets a consumer of its own."""
    assert sorted(partition_for(k, 4) for k in KEYS) == [0, 1, 2, 3]
    assert work_time("alice", 3, seed=1, max_s=0.01) == work_time("alice", 3, seed=1, max_s=0.01) <= 0.01


def test_burst_depth_is_sent_minus_processed() -> None:
    result = BurstResult(sent_at=[0.0, 0.0, 0.05, 0.05], done_at=[0.03, 0.07, 0.09, 0.11])
    times, depth = result.depth(step=0.02)
    assert depth[0] == 2
    assert max(depth) <= 4
    assert depth[-1] == 0
    assert result.drain_s == pytest.approx(0.11)


def test_ledger_survives_reopening_and_counts_per_order(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "sub" / "ledger.jsonl")
    first = order_event(1)
    ledger.charge(first)
    ledger.charge(first)
    ledger.charge(order_event(2))
    reopened = Ledger(tmp_path / "sub" / "ledger.jsonl")
    assert len(reopened) == 3
    assert reopened.per_order() == {"order-001": 2, "order-002": 1}
    assert Ledger(tmp_path / "none.jsonl").charges() == []


class FakeStatusSystem:
    """The read model never catches up by itself: a test sets ``model`` to play the projection."""

    def __init__(self) -> None:
        self.model: dict[str, View] = {}
        self.versions: dict[str, int] = {}

    async def write(self, order_id: str, status: str) -> int:
        self.versions[order_id] = self.versions.get(order_id, 0) + 1
        return self.versions[order_id]

    async def read(self, order_id: str) -> View:
        return self.model.get(order_id, View(None, 0))


async def test_read_your_own_writes_prefers_the_newer_of_own_write_and_read_model() -> None:
    system = FakeStatusSystem()
    session = ReadYourWrites(cast("StatusSystem", system))  # a fake with StatusSystem's write and read, no broker
    await session.write("o1", "paid")
    assert (await session.read("o1")) == View("paid", 1, "own write")
    system.model["o1"] = View("shipped", 2)  # the projection caught up, and someone else moved it on
    assert (await session.read("o1")) == View("shipped", 2)


async def test_own_reads_harness_tells_a_working_session_from_a_broken_one() -> None:
    system = FakeStatusSystem()
    own, other = await own_reads_after_write(system, ReadYourWrites(system), trials=5)  # type: ignore[arg-type]  # a fake
    assert own == [False] * 5
    assert other == [True] * 5
    broken, _ = await own_reads_after_write(system, system, trials=5)  # type: ignore[arg-type]  # reads like anyone else
    assert broken == [True] * 5


def test_texttable_aligns_numbers_right_and_text_left() -> None:
    text = render([{"name": "a", "n": 5}, {"name": "longer", "n": 1234}], title="T")
    lines = text.splitlines()
    assert lines[0] == "T"
    assert lines[1].split() == ["name", "n"]
    assert lines[3].startswith("a     ")
    assert lines[3].endswith("    5")
    assert lines[4].endswith("1234")
    assert render([]) == "(no rows)"


def test_dead_letter_rows_show_reason_and_a_stable_summary_of_the_original() -> None:
    event = make_event("order.placed", {"order_id": "x"}, source="/s")
    records = [
        {"reason": "malformed: nope", "topic": "t", "payload": "garbage", "encoding": "utf-8"},
        {"reason": "handler error: ValueError", "topic": "t", "payload": event.to_bytes().decode(), "encoding": "utf-8"},
    ]
    messages = [aiomqtt.Message("dl", json.dumps(r).encode(), 1, False, 1, None) for r in records]
    rows = dead_letter_rows(messages)
    assert rows[0] == {"reason": "malformed: nope", "original message": "garbage"}
    assert rows[1]["original message"] == 'order.placed event, data={"order_id": "x"}'


def test_sample_messages_are_three_good_and_three_bad() -> None:
    decodable = []
    for _, payload in sample_messages():
        try:
            decodable.append(decode(payload))
        except InvalidEvent:
            pass
    assert len(sample_messages()) == 6
    assert len(decodable) == 4  # 2 malformed; the poison one decodes fine


def test_rows_for_tables() -> None:
    assert OfflineResult(1, True, 20, 18).as_row() == {
        "setup": "QoS 1 + persistent session",
        "sent while offline": 20,
        "received after reconnect": 18,
        "lost": 2,
    }
    assert Finding("x", "y", "z", None).as_row()["verdict"] == "broker's choice"
    assert Finding("x", "y", "z", False).as_row()["verdict"] == "DIFFERS"


async def test_lifecycle_until_and_start_report_clearly() -> None:
    flag: list[int] = []
    asyncio.get_running_loop().call_later(0.05, flag.append, 1)
    assert await lifecycle.until(lambda: bool(flag), timeout=1)
    assert not await lifecycle.until(lambda: False, timeout=0.05)

    async def never_ready(ready: asyncio.Event) -> None:
        await asyncio.sleep(10)

    async def fails(ready: asyncio.Event) -> None:
        raise ValueError("boom")

    with pytest.raises(TimeoutError, match="not ready"):
        await lifecycle.start(never_ready, timeout=0.1)
    with pytest.raises(ValueError, match="boom"):
        await lifecycle.start(fails)

    async def fine(ready: asyncio.Event) -> None:
        ready.set()
        await asyncio.sleep(10)

    task = await lifecycle.start(fine)
    assert await lifecycle.kill(task) is None
    assert task.cancelled()


async def test_running_stops_the_consumer_and_raises_its_crash() -> None:
    from helpers.core.lifecycle import running

    async def fine(ready: asyncio.Event) -> None:
        ready.set()
        await asyncio.sleep(10)

    async with running(fine) as task:
        assert not task.done()
    assert task.cancelled()

    crash = asyncio.Event()

    async def crashes(ready: asyncio.Event) -> None:
        ready.set()
        await crash.wait()
        raise RuntimeError("consumer bug")

    async def block_outlived_by(error: Exception | None) -> None:
        async with running(crashes) as task:
            crash.set()
            await asyncio.wait([task])
            if error is not None:
                raise error

    with pytest.raises(RuntimeError, match="consumer bug"):
        await block_outlived_by(None)
    with pytest.raises(KeyError, match="block") as caught:  # the block's own error wins; the consumer's is noted on it
        await block_outlived_by(KeyError("block"))
    assert any("consumer bug" in note for note in caught.value.__notes__)


async def test_kill_stops_a_consumer_whose_wait_for_dropped_the_cancel() -> None:
    """The busy-run hang: a cancel landing as aiomqtt's awaited PUBACK arrives is dropped by 3.11's wait_for.

    The consumer then reads on as if never cancelled; ``kill`` must cancel again, not wait forever.
    """
    loop = asyncio.get_running_loop()
    puback: asyncio.Future[None] = loop.create_future()
    publishing = asyncio.Event()

    async def consumer(ready: asyncio.Event) -> None:
        ready.set()
        publishing.set()
        await asyncio.wait_for(puback, 10)  # a dead-letter publish waiting for its ack, as aiomqtt does
        await asyncio.sleep(3600)  # back in `async for message in ...`, waiting for the next message

    task = await lifecycle.start(consumer)
    await publishing.wait()
    await asyncio.sleep(0)
    started = loop.time()
    puback.set_result(None)  # the ack arrives in the same loop turn as the kill's cancel (3.11 drops it)
    async with asyncio.timeout(10):
        assert await lifecycle.kill(task) is None
    assert task.cancelled()
    assert loop.time() - started < 5


async def test_cancel_and_wait_cancels_again_and_names_a_task_that_never_stops() -> None:
    swallowed = 0

    async def swallows_one_cancel() -> None:
        nonlocal swallowed
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed += 1
        await asyncio.sleep(3600)

    released = asyncio.Event()

    async def never_stops() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await released.wait()

    once = asyncio.ensure_future(swallows_one_cancel())
    await asyncio.sleep(0)
    await lifecycle.cancel_and_wait(once, recancel_after_s=0.05, deadline_s=5)
    assert (swallowed, once.cancelled()) == (1, True)
    stubborn = asyncio.create_task(never_stops(), name="stubborn-consumer")
    await asyncio.sleep(0)
    with pytest.raises(lifecycle.TaskWouldNotStop, match="stubborn-consumer"):
        await lifecycle.cancel_and_wait(stubborn, recancel_after_s=0.05, deadline_s=0.3)
    assert not stubborn.done()
    released.set()  # leave nothing running
    await stubborn


async def test_died_of_names_a_crash_and_nothing_else() -> None:
    """One spelling of "done, not cancelled, and what it raised": running, returned and cancelled tasks died of nothing."""
    gate = asyncio.Event()

    async def waits() -> int:
        await gate.wait()
        return 1

    async def crashes() -> None:
        await gate.wait()
        raise RuntimeError("worker bug")

    running_task, returned, crashed, cancelled = (asyncio.ensure_future(f()) for f in (waits, waits, crashes, waits))
    assert lifecycle.died_of(running_task) is None
    cancelled.cancel()
    gate.set()
    await asyncio.wait([returned, crashed, cancelled])
    assert lifecycle.died_of(returned) is None
    assert lifecycle.died_of(cancelled) is None
    error = lifecycle.died_of(crashed)
    assert isinstance(error, RuntimeError)
    assert str(error) == "worker bug"
    assert await running_task == 1
    assert lifecycle.died_of(running_task) is None


async def test_run_pool_rejects_zero_workers() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        await run_pool(None, 0)  # type: ignore[arg-type]  # no consumer on purpose: the check comes first


def test_sync_burst_outcomes_are_cumulative() -> None:
    from helpers.pubsub.leveling import SyncBurst

    samples = [Sample(0.0, 0.0, 0.05, True), Sample(0.0, 0.0, 0.5, False, "timeout"), Sample(0.01, 0.01, 0.2, True)]
    burst = SyncBurst(LoadRun(samples), served=3)
    assert (burst.answered, burst.timed_out) == (2, 1)
    times, answered, gave_up = burst.outcomes(step=0.1)
    assert answered[-1] == 2
    assert gave_up[-1] == 1
    assert answered == sorted(answered)
    assert burst.over_s == pytest.approx(0.5)


# --------------------------------------------------------------------------- with a broker


async def test_collect_stops_at_expected_or_when_quiet(broker: Broker, topic: str) -> None:
    async with broker.client() as client:
        await client.subscribe(topic, qos=1)
        for i in range(3):
            await client.publish(topic, str(i).encode(), qos=0)
        await flush(client)
        assert payloads(await collect(client, expected=2, idle=1)) == ["0", "1"]
        assert payloads(await collect(client, idle=0.2)) == ["2"]
        assert await collect(client, idle=0.1) == []


async def test_offline_delivery_cleans_up_its_session(broker: Broker, topic: str) -> None:
    result = await offline_delivery(broker, topic, n=3, qos=1, persistent=True)
    assert (result.sent, result.received, result.lost) == (3, 3, 0)


async def test_die_before_ack_escapes_the_consumers_error_handling(broker: Broker, topic: str) -> None:
    from helpers.core.messaging import manual_ack
    from helpers.pubsub.idempotency import ProcessDied

    handled = []

    async def handler(event: object) -> None:
        handled.append(event)

    async with die_before_ack(manual_ack(broker.client())) as sub, broker.client() as pub:
        consumer = Consumer(sub, topic, handler)
        task = await lifecycle.start(consumer.run)
        await publish(pub, topic, order_event(1), qos=1)
        with pytest.raises(ProcessDied):
            await asyncio.wait_for(task, 5)
    assert len(handled) == 1
    assert consumer.stats.dead_lettered == 0  # the work ran; no ack, no dead letter


async def test_event_shop_reports_a_crashed_worker_instead_of_swallowing_it(broker: Broker, topic: str) -> None:
    from helpers.pubsub.shop import place_orders, start_event_shop

    shop = await start_event_shop(broker, topic, work={"fulfillment": 0.0, "broken": 0.0})

    async def bug(message: aiomqtt.Message) -> None:  # escapes the consumer's dead-lettering: a crash
        raise RuntimeError("worker bug")

    shop.workers["broken"].consumer.handle = bug  # type: ignore[method-assign,union-attr]  # plant the bug on one worker
    try:
        await place_orders(shop.order_service.url, count=1, rate=10)
        with pytest.raises(RuntimeError, match="worker bug"):
            await shop.wait_handled(1, timeout=5)
        assert await lifecycle.until(lambda: shop.counts()["fulfillment"] == 1), "the healthy worker kept working"
    finally:
        with pytest.raises(RuntimeError, match="worker bug") as caught:
            await shop.stop()
    assert "raised by the shop's worker 'broken'" in caught.value.__notes__


def test_order_placed_has_one_definition() -> None:
    from helpers.core import events
    from helpers.pubsub import deadletters, idempotency, shop

    assert idempotency.ORDER_PLACED is shop.ORDER_PLACED is events.ORDER_PLACED == "order.placed"
    for path in Path(__file__).resolve().parents[1].joinpath("helpers").rglob("*.py"):
        defines = [line for line in path.read_text().splitlines() if line.startswith("ORDER_PLACED =")]
        assert not defines or path.name == "events.py", f"{path} defines ORDER_PLACED again"
    assert {decode(p).type for _, p in deadletters.sample_messages()[:2]} == {events.ORDER_PLACED}


async def test_out_of_order_acks_probe_strict_embedded_lenient_external(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    """rumqttd disconnects a client whose PUBACKs break arrival order; Mosquitto (MQTT_URL) lets it pass.

    Either way the probe leaves nothing for asyncio to complain about on a learner's screen.
    """
    import gc

    from helpers.pubsub.probes import out_of_order_acks_tolerated

    tolerated = await out_of_order_acks_tolerated(broker)
    gc.collect()  # an unretrieved disconnect error would be logged when its future is collected
    await asyncio.sleep(0)
    assert tolerated is (not broker.embedded)
    assert not [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]


# --------------------------------------------------------------------------- lesson 04's plots


def test_lesson04_plots_have_titles_units_and_no_legend_on_the_data() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers.core.tracing import SpanRow
    from helpers.pubsub.consistency import plot_staleness
    from helpers.pubsub.ordering import MODES, plot_processing_order
    from helpers.pubsub.trace_flows import plot_traces

    def row(service: str, start: float, end: float, depth: int) -> SpanRow:
        return SpanRow(service, "span", start, end, depth, "t", service, None)

    sync = [row("order-service", 0, 300, 0), row("fulfillment", 1, 100, 1), row("agent", 1, 299, 1)]
    asynchronous = [row("order-service", 0, 1, 0), row("fulfillment", 2, 100, 1), row("agent", 2, 302, 1)]
    top, bottom = plot_traces(sync, asynchronous)
    assert top.get_legend() is not None, "one legend for both panels"
    assert bottom.get_legend() is None, "one legend for both panels"
    assert top.get_xlabel() == "", "one x label, under the lower panel"
    assert "(ms)" in bottom.get_xlabel(), "one x label, under the lower panel"
    assert top.get_title()
    assert bottom.get_title()
    assert bottom.get_xlim()[1] > 302, "room for the duration label of the longest span"
    plt.close("all")

    ax = plot_staleness([10.0, 20.0, 30.0, 41.0])
    assert ax.get_legend() is None
    assert "(ms)" in ax.get_xlabel()
    assert ax.get_ylabel()
    assert "4 trials" in ax.get_title()
    plt.close("all")

    steps: dict[str, list[Step]] = {mode: [Step("alice", 1, 0), Step("alice", 0, 1)] for mode in MODES}
    axes = plot_processing_order(steps, key="alice")
    assert [a.get_title() for a in axes] == [f"{mode}: 1 inversion" for mode in MODES]
    assert all(a.get_legend() is None and a.get_xlabel() for a in axes)
    assert axes[0].get_ylabel()
    plt.close("all")
