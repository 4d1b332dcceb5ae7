"""Lab 04's checks catch the mistakes they are meant to catch, on the broker in use.

The grader tests prove the solution notebook scores full marks and the lab as shipped
scores zero. These tests go further: a correct consumer passes every check, and each
classic mistake (clean session, auto-ack, no dedupe, an in-memory store, crashing on a
malformed message) fails the check that names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers.core.messaging import InvalidEvent, SeenIds, ack, dead_letter_payload, decode, manual_ack
from helpers.core.receive import subscribed_messages
from helpers.grading.checks import load_checks, run_check
from helpers.pubsub.idempotency import Ledger

pytestmark = pytest.mark.broker  # every check of lab 04 runs against a broker

CHECKS = load_checks("04_reliable_consumer")


def solution(**overrides: Any) -> dict[str, Any]:
    """A correct consumer as a namespace of functions; ``overrides`` swaps in a mistake."""
    ns: dict[str, Any] = {"QOS": 1}

    def consumer_client(broker: Any, name: str) -> Any:
        return manual_ack(broker.client(name, clean_session=False))

    def open_applied_ids(workdir: Any) -> Any:
        return SeenIds(Path(workdir) / "applied-ids.txt")

    def apply_once(event: Any, ledger: Ledger, applied: Any) -> bool:
        if event.id in applied:
            return False
        ledger.charge(event)
        applied.add(event.id)
        return True

    async def parse_or_dead_letter(client: Any, message: Any, dead_letter_topic: str) -> Any:
        payload = bytes(message.payload)
        try:
            return decode(payload)
        except InvalidEvent as exc:
            await client.publish(dead_letter_topic, dead_letter_payload(str(message.topic), payload, str(exc)), qos=1)
            return None

    async def run_consumer(broker: Any, name: str, topic: str, workdir: Any, ready: Any = None) -> None:
        ledger = Ledger(Path(workdir) / "ledger.jsonl")
        applied = ns["open_applied_ids"](workdir)
        async with ns["consumer_client"](broker, name) as client:
            async for message in subscribed_messages(client, topic, qos=ns["QOS"], ready=ready):
                event = await ns["parse_or_dead_letter"](client, message, f"{topic}/dead-letter")
                if event is not None:
                    ns["apply_once"](event, ledger, applied)
                ack(client, message)

    ns.update(
        consumer_client=consumer_client,
        open_applied_ids=open_applied_ids,
        apply_once=apply_once,
        parse_or_dead_letter=parse_or_dead_letter,
        run_consumer=run_consumer,
    )
    ns.update(overrides)
    return ns


async def results(ns: dict[str, Any], names: set[str] | None = None) -> dict[str, Any]:
    return {c.name: await run_check(c, ns) for c in CHECKS if names is None or c.name in names}


async def test_a_correct_consumer_passes_every_check() -> None:
    got = await results(solution())
    failed = {name: r.message for name, r in got.items() if not r.passed}
    assert not failed


async def test_clean_session_loses_orders_while_down() -> None:
    def clean(broker: Any, name: str) -> Any:
        return manual_ack(broker.client(name, clean_session=True))

    got = await results(solution(consumer_client=clean), {"orders_wait_for_an_offline_consumer", "survives_a_restart"})
    assert not any(r.passed for r in got.values())
    assert "persistent session" in got["orders_wait_for_an_offline_consumer"].message


async def test_auto_ack_is_caught() -> None:
    def auto(broker: Any, name: str) -> Any:
        return broker.client(name, clean_session=False)

    got = await results(solution(consumer_client=auto), {"acknowledges_only_when_told"})
    assert not got["acknowledges_only_when_told"].passed


async def test_a_consumer_without_dedupe_double_charges() -> None:
    def always(event: Any, ledger: Ledger, applied: Any) -> bool:
        ledger.charge(event)
        return True

    got = await results(solution(apply_once=always), {"charges_each_event_once", "survives_a_restart"})
    assert not any(r.passed for r in got.values())
    assert "more than once" in got["survives_a_restart"].message


async def test_an_in_memory_store_is_caught() -> None:
    shared: set[str] = set()

    got = await results(solution(open_applied_ids=lambda workdir: shared), {"stores_belong_to_their_folder"})
    assert not got["stores_belong_to_their_folder"].passed


async def test_crashing_on_a_malformed_message_is_caught() -> None:
    async def strict(client: Any, message: Any, dead_letter_topic: str) -> Any:
        return decode(bytes(message.payload))  # raises InvalidEvent: the consumer dies

    got = await results(solution(parse_or_dead_letter=strict), {"dead_letters_and_keeps_going", "malformed_goes_to_dead_letters"})
    assert not any(r.passed for r in got.values())


async def test_qos_0_is_caught_on_every_broker() -> None:
    """QoS 0 promises nothing. Mosquitto drops QoS 0 messages for an offline session (the
    spec lets rumqttd keep them); on every broker the orders arrive at QoS 0, never acked,
    and Q1's own visible check says so (not only Q4's, nor only a hidden one)."""
    got = await results(solution(QOS=0), {"orders_wait_for_an_offline_consumer", "acks_each_order_after_charging_it"})
    assert not got["orders_wait_for_an_offline_consumer"].passed
    assert "QoS 1" in got["orders_wait_for_an_offline_consumer"].message
    assert not got["acks_each_order_after_charging_it"].passed
    assert "arrived at QoS 0" in got["acks_each_order_after_charging_it"].message


async def test_auto_ack_is_caught_on_every_broker() -> None:
    """paho acknowledges on receipt unless told otherwise: seen on the wire, whatever the broker resends."""

    def auto(broker: Any, name: str) -> Any:
        return broker.client(name, clean_session=False)  # acks on receipt, before the work

    got = await results(solution(consumer_client=auto), {"acknowledges_only_when_told", "acks_each_order_after_charging_it"})
    assert not any(r.passed for r in got.values())
    assert "acknowledged before they were charged" in got["acks_each_order_after_charging_it"].message


async def test_ack_before_the_work_is_caught() -> None:
    """Manual acks, but ack() called first: the same loss window as auto-ack."""

    async def ack_first(broker: Any, name: str, topic: str, workdir: Any, ready: Any = None) -> None:
        ledger = Ledger(Path(workdir) / "ledger.jsonl")
        applied = SeenIds(Path(workdir) / "applied-ids.txt")
        async with manual_ack(broker.client(name, clean_session=False)) as client:
            async for message in subscribed_messages(client, topic, qos=1, ready=ready):
                ack(client, message)  # the mistake: acknowledged before it is charged
                event = decode(bytes(message.payload))
                if event.id not in applied:
                    ledger.charge(event)
                    applied.add(event.id)

    got = await results(solution(run_consumer=ack_first), {"acks_each_order_after_charging_it"})
    assert not got["acks_each_order_after_charging_it"].passed
    assert "acknowledged before they were charged" in got["acks_each_order_after_charging_it"].message


async def test_recording_the_id_before_the_charge_is_caught() -> None:
    """Recorded first, charged second: a charge that fails leaves the event marked applied, and it is never charged."""

    def record_first(event: Any, ledger: Ledger, applied: Any) -> bool:
        if event.id in applied:
            return False
        applied.add(event.id)  # the mistake: the record outruns the charge
        ledger.charge(event)
        return True

    got = await results(solution(apply_once=record_first), {"records_only_after_charging", "charges_each_event_once"})
    assert got["charges_each_event_once"].passed, "the mistake only shows when a charge fails"
    assert not got["records_only_after_charging"].passed
    assert "record the event id only after the charge" in got["records_only_after_charging"].message


async def test_a_dead_letter_at_qos_0_is_caught() -> None:
    async def qos0(client: Any, message: Any, dead_letter_topic: str) -> Any:
        payload = bytes(message.payload)
        try:
            return decode(payload)
        except InvalidEvent as exc:
            await client.publish(dead_letter_topic, dead_letter_payload(str(message.topic), payload, str(exc)))  # QoS 0
            return None

    got = await results(solution(parse_or_dead_letter=qos0), {"malformed_goes_to_dead_letters"})
    assert "publish it with QoS 1" in got["malformed_goes_to_dead_letters"].message


async def test_acks_out_of_arrival_order_are_named() -> None:
    """Several messages at once, each acked when its (uneven) work ends: acks leave the arrival order."""
    import asyncio
    import random

    async def all_at_once(broker: Any, name: str, topic: str, workdir: Any, ready: Any = None) -> None:
        ledger = Ledger(Path(workdir) / "ledger.jsonl")
        applied = SeenIds(Path(workdir) / "applied-ids.txt")
        pending: set[asyncio.Task[None]] = set()

        async def handle(client: Any, message: Any) -> None:
            await asyncio.sleep(random.uniform(0, 0.05))  # uneven work: later messages finish first
            event = decode(bytes(message.payload))
            if event.id not in applied:
                ledger.charge(event)
                applied.add(event.id)
            ack(client, message)  # the mistake: acked as each one ends, not in arrival order

        async with manual_ack(broker.client(name, clean_session=False)) as client:
            async for message in subscribed_messages(client, topic, qos=1, ready=ready):
                task = asyncio.ensure_future(handle(client, message))
                pending.add(task)
                task.add_done_callback(pending.discard)

    got = await results(solution(run_consumer=all_at_once), {"acks_each_order_after_charging_it"})
    result = got["acks_each_order_after_charging_it"]
    assert not result.passed and "in the order the messages arrived" in result.message, result.message
