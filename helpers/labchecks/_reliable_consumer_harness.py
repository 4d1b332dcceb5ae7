"""Lab 04's question 4 harness, shared by its checks (:mod:`helpers.labchecks.reliable_consumer`).

The learner's ``run_consumer`` started, killed and restarted like a process, on a
:class:`~helpers.grading.probes.WireWatch` that notes what was charged as each PUBACK
leaves, with the course's question 1 answer, its client and its ``QOS`` (:func:`with_course_client`).
Not a lab (the underscore): the grader lists only ``labchecks/<slug>.py`` files as labs.
"""

from __future__ import annotations

import asyncio
import types
import uuid
from typing import Any

import aiomqtt

from helpers.core.lifecycle import kill, start
from helpers.core.messaging import Event, InvalidEvent, decode, manual_ack, publish
from helpers.core.waiting import until, until_quiet
from helpers.grading.checks import CheckFailed, Context, expect, outcome
from helpers.grading.probes import WireWatch
from helpers.pubsub.idempotency import Ledger, order_event

START_S = 8.0
"""Time limit for starting the learner's consumer (lifecycle.start gives up on `ready` after 5 s)."""
QUIET_S = 0.15
"""Once every expected order is charged, the ledger must stay unchanged this long: a late double charge lands in it."""
QUIET_MAX_S = 1.0
"""The longest the checks wait for the ledger to go quiet (charges that never stop are counted as they stand)."""


def consumer_name(ctx: Context, role: str = "payments") -> str:
    return f"{role}-{uuid.uuid4().hex[:8]}"


def event_id_of(payload: bytes) -> str | None:
    """The order a message carries (None for a malformed one: dead-lettered, nothing to charge)."""
    try:
        return decode(payload).id
    except InvalidEvent:
        return None


def acked_out_of_order(watch: WireWatch) -> int:
    """Acks sent while an earlier message (in arrival order) was still unacknowledged."""
    return sum(d.out_of_order for d in watch.deliveries)


def at_qos0(watch: WireWatch) -> list[str]:
    """Orders that arrived at QoS 0 (never acknowledged, never resent)."""
    return [i for d in watch.deliveries if d.qos == 0 and (i := event_id_of(d.payload)) is not None]


def acked_early(watch: WireWatch) -> list[str]:
    """Orders acknowledged before they were charged (the watch's snapshot is the set of charged ids)."""
    return [i for d in watch.acked() if (i := event_id_of(d.payload)) is not None and i not in d.seen_at_ack]


def course_client(broker: Any, name: str) -> aiomqtt.Client:
    """Question 1's answer, the course's: a persistent session under ``name``, acking only when told."""
    return manual_ack(broker.client(name, clean_session=False))


COURSE_QOS = 1
"""Question 1's ``QOS``, the course's: the level the lab asks the consumer to subscribe with."""


def with_course_client(run: Any) -> Any:
    """The learner's ``run_consumer``, with the course's question 1 answer (``consumer_client`` and ``QOS``) for theirs.

    Question 4 is the loop (read, parse, apply once, then ack), not question 1's settings:
    a client made without manual acks or with a clean session, or ``QOS = 0``, is question
    1's mistake and costs points there only (held-out uma_noack lost 3 of Q4's 6 points,
    told to move an ack() that was already last; a loop subscribing with ``qos=QOS`` under
    ``QOS = 0`` lost 3 too, its orders arriving at QoS 0). The function runs on a copy of
    its globals, so the learner's namespace is never changed. A ``run_consumer`` that makes
    its own client inline, or subscribes with a QoS written in the loop, is judged with
    that: there it is question 4's code.
    """
    if not isinstance(run, types.FunctionType):
        return run
    names = {**run.__globals__, "consumer_client": course_client, "QOS": COURSE_QOS}
    copy = types.FunctionType(run.__code__, names, run.__name__, run.__defaults__, run.__closure__)
    copy.__kwdefaults__ = run.__kwdefaults__
    copy.__qualname__ = run.__qualname__
    return copy


class ConsumerRun:
    """The learner's run_consumer under test (with the course's client, see :func:`with_course_client`):
    started, killed and restarted like a process."""

    def __init__(self, ctx: Context, broker: Any) -> None:
        self.ledger = Ledger(ctx.tmp_path("check04-") / "ledger.jsonl")
        # the broker as the learner's consumer sees it: each PUBACK notes what was charged by then
        self.watch = WireWatch(broker, snapshot=lambda: {c["event_id"] for c in self.ledger.charges()})
        self.ctx, self.broker = ctx, broker
        self.name, self.topic, self.folder = consumer_name(ctx), ctx.topic("orders"), self.ledger.path.parent
        self.task: Any = None
        ctx.forget_session(broker, self.name)
        ctx.on_cleanup(self.stop)

    async def start(self) -> None:
        run = with_course_client(self.ctx.function("run_consumer"))
        began = await outcome("run_consumer()", lambda: start(run, self.watch, self.name, self.topic, self.folder), START_S)
        if isinstance(began.error, TimeoutError):  # lifecycle.start's own: it says the consumer never set `ready`
            raise CheckFailed(str(began.error))
        expect(began.error is None, f"run_consumer() failed while starting: {began.raised}")
        self.task = began.value

    async def stop(self) -> None:
        if self.task is not None:
            error = await kill(self.task)
            self.task = None
            # An unwritten part (NotImplementedError) is reported by the checks of its own
            # question ("apply_once() is not written yet"), not a second time as a crash here.
            if error is not None and not isinstance(error, NotImplementedError):
                raise CheckFailed(f"run_consumer() crashed: {type(error).__name__}: {error}")

    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def publish(self, events: list[Event]) -> None:
        async with self.broker.client() as shop:
            for event in events:
                await publish(shop, self.topic, event, qos=1)

    def charged(self, events: list[Event]) -> dict[str, int]:
        counts = {e.id: 0 for e in events}
        for charge in self.ledger.charges():
            counts[charge["event_id"]] = counts.get(charge["event_id"], 0) + 1
        return counts

    async def wait_charged(self, events: list[Event], timeout: float = 3.0, most: float = 6.0) -> dict[str, int]:
        """Charges per event, once every event was charged and the ledger went quiet.

        ``timeout`` is how long charging may stall (no new charge) before what is missing
        counts as missing; while charges keep coming it waits on, up to ``most`` seconds in
        all. A correct consumer that is slow (a SQLite store committing each id, a busy
        machine) is not failed for its pace, and a lost order still ends the wait quickly.
        """
        wanted = {e.id for e in events}
        loop = asyncio.get_running_loop()
        end = loop.time() + most
        seen = len(self.ledger)
        while not await until(lambda: wanted <= {c["event_id"] for c in self.ledger.charges()}, timeout):
            if loop.time() >= end or len(self.ledger) == seen:
                break  # no charge for `timeout` s (or out of time): what is missing now is missing
            seen = len(self.ledger)
        await until_quiet(lambda: len(self.ledger), QUIET_S, timeout=QUIET_MAX_S)  # a late double charge shows up
        return self.charged(events)


def new_orders(ctx: Context, n: int) -> list[Event]:
    base = ctx.rng.randint(1, 10**5)
    return [order_event(base + i, amount=float(ctx.rng.randint(5, 99))) for i in range(n)]


def charged_once(counts: dict[str, int], label: str) -> None:
    missing = [i for i, c in counts.items() if c == 0]
    doubled = [i for i, c in counts.items() if c > 1]
    expect(not missing, f"{label}: {len(missing)} of {len(counts)} orders were never charged")
    expect(not doubled, f"{label}: {len(doubled)} order(s) charged more than once")
