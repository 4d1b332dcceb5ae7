"""Lab 04's checks catch the mistakes they are meant to catch, on the broker in use.

The grader tests prove the solution notebook scores full marks and the lab as shipped
scores zero. These tests go further: the solution notebook's own consumer (its code run
into a namespace) passes every check, and each classic mistake (clean session, auto-ack,
no dedupe, an in-memory store, crashing on a malformed message), an edit of that code,
fails the check that names it.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from lab_submissions import Edit, replaced, submission

from helpers.core.messaging import ack
from helpers.core.receive import subscribed_messages
from helpers.grading.checks import CheckResult, load_checks, run_check
from helpers.pubsub.idempotency import Ledger

pytestmark = pytest.mark.broker  # every check of lab 04 runs against a broker

LAB = "04_reliable_consumer"
CHECKS = load_checks(LAB)

CLIENT = "    return manual_ack(broker.client(name, clean_session=False))"
LOOP_BODY = """            event = await parse_or_dead_letter(client, message, f"{topic}/dead-letter")
            if event is not None:
                apply_once(event, ledger, applied)"""
IF_EVENT = "            if event is not None:"
ACK = "\n            ack(client, message)"  # the last line of run_consumer
OWN_CLIENT = "    async with consumer_client(broker, name) as client:"

EDITS: dict[str, tuple[Edit, ...]] = {
    "clean session": ((CLIENT, CLIENT.replace("clean_session=False", "clean_session=True")),),
    "auto-ack": ((CLIENT, "    return broker.client(name, clean_session=False)"),),
    # question 4's own mistakes with the client: run_consumer makes one itself instead of calling consumer_client
    "run_consumer's own auto-acking client": (
        (OWN_CLIENT, "    async with broker.client(name, clean_session=False) as client:"),
    ),
    "run_consumer's own clean-session client": ((OWN_CLIENT, "    async with manual_ack(broker.client(name)) as client:"),),
    "no dedupe": (("    if event.id in applied:\n        return False\n", ""),),
    "an in-memory store": (
        ("def open_applied_ids(workdir):", "SHARED_IDS = set()\n\n\ndef open_applied_ids(workdir):"),
        ('    return SeenIds(Path(workdir) / "applied-ids.txt")', "    return SHARED_IDS"),
    ),
    "malformed not caught": (
        ("    except InvalidEvent as exc:\n        record", "    except ZeroDivisionError as exc:\n        record"),
    ),
    "malformed never acked": (
        (
            "                apply_once(event, ledger, applied)\n            ack(client, message)",
            "                apply_once(event, ledger, applied)\n                ack(client, message)",
        ),
    ),
    "QoS 0": (("QOS = 1\n", "QOS = 0\n"),),
    # question 4's own QoS mistake: the loop subscribes at QoS 0 whatever QOS says
    "run_consumer subscribing at QoS 0": (
        ("subscribed_messages(client, topic, qos=QOS,", "subscribed_messages(client, topic, qos=0,"),
    ),
    "ack before the work": ((LOOP_BODY + ACK, ACK[1:] + "\n" + LOOP_BODY),),
    "recorded before the charge": (
        ("    ledger.charge(event)\n    applied.add(event.id)\n", "    applied.add(event.id)\n    ledger.charge(event)\n"),
    ),
    # not a mistake: a correct consumer that takes 20 ms an order (a store that commits each id)
    "slow but correct": ((LOOP_BODY, LOOP_BODY.replace(IF_EVENT, "            await asyncio.sleep(0.02)\n" + IF_EVENT)),),
    # held-out round 4's one miss: the argument ignored, the topic built from the message's own
    "dead_letter_topic ignored": (
        (
            "        await client.publish(dead_letter_topic, record, qos=1)",
            '        await client.publish(f"{message.topic}/dead-letter", record, qos=1)',
        ),
    ),
    "dead letter at QoS 0": (
        (
            "        await client.publish(dead_letter_topic, record, qos=1)",
            "        await client.publish(dead_letter_topic, record)",
        ),
    ),
}
"""Each classic mistake as an edit of the solution notebook's code (tests/lab_submissions.py)."""


async def results(ns: dict[str, Any], names: set[str] | None = None) -> dict[str, CheckResult]:
    return {c.name: await run_check(c, ns) for c in CHECKS if names is None or c.name in names}


async def test_a_correct_consumer_passes_every_check() -> None:
    got = await results(submission(LAB))
    failed = {name: r.message for name, r in got.items() if not r.passed}
    assert not failed


async def test_a_slow_correct_consumer_is_not_failed_for_its_pace() -> None:
    """270 orders left after the kill at 20 ms each take over 5 s: longer than the 3 s a stalled
    consumer gets, and still every order is charged once (a held-out SQLite-store submission lost
    2 points here, run to run, before the wait followed progress)."""
    names = {"killed_mid_stream", "survives_a_restart", "charges_each_event_once"}
    got = await results(submission(LAB, *EDITS["slow but correct"]), names)
    failed = {name: r.message for name, r in got.items() if not r.passed}
    assert not failed


async def test_clean_session_loses_orders_while_down() -> None:
    """Question 1's mistake costs question 1's points; question 4's checks run its loop with the course's client."""
    got = await results(submission(LAB, *EDITS["clean session"]), {"orders_wait_for_an_offline_consumer", "survives_a_restart"})
    assert not got["orders_wait_for_an_offline_consumer"].passed
    assert "persistent session" in got["orders_wait_for_an_offline_consumer"].message
    assert got["survives_a_restart"].passed, got["survives_a_restart"].message


async def test_a_clean_session_client_made_in_run_consumer_loses_orders_while_down() -> None:
    """A client run_consumer makes itself is question 4's code: its clean session loses the orders sent while down."""
    got = await results(submission(LAB, *EDITS["run_consumer's own clean-session client"]), {"survives_a_restart"})
    assert not got["survives_a_restart"].passed
    assert "never charged" in got["survives_a_restart"].message


async def test_auto_ack_is_caught() -> None:
    got = await results(submission(LAB, *EDITS["auto-ack"]), {"acknowledges_only_when_told"})
    assert not got["acknowledges_only_when_told"].passed


async def test_a_consumer_without_dedupe_double_charges() -> None:
    got = await results(submission(LAB, *EDITS["no dedupe"]), {"charges_each_event_once", "survives_a_restart"})
    assert not any(r.passed for r in got.values())
    assert "more than once" in got["survives_a_restart"].message


async def test_an_in_memory_store_is_caught() -> None:
    got = await results(submission(LAB, *EDITS["an in-memory store"]), {"stores_belong_to_their_folder"})
    assert not got["stores_belong_to_their_folder"].passed


async def test_crashing_on_a_malformed_message_is_caught() -> None:
    got = await results(
        submission(LAB, *EDITS["malformed not caught"]), {"dead_letters_and_keeps_going", "malformed_goes_to_dead_letters"}
    )
    assert not any(r.passed for r in got.values())


async def test_a_dead_letter_never_acknowledged_is_named_as_such() -> None:
    """Dead-lettered but never acked: the consumer stops too, and the feedback names the missing ack, not the dead letter."""
    got = await results(submission(LAB, *EDITS["malformed never acked"]), {"dead_letters_and_keeps_going"})
    message = got["dead_letters_and_keeps_going"].message
    assert "dead-lettered the malformed message but never acknowledged it" in message, message
    crashed = await results(submission(LAB, *EDITS["malformed not caught"]), {"dead_letters_and_keeps_going"})
    assert "never acknowledged" not in crashed["dead_letters_and_keeps_going"].message


async def test_qos_0_is_caught_on_every_broker_and_costs_question_1_only() -> None:
    """QoS 0 promises nothing. Mosquitto drops QoS 0 messages for an offline session (the
    spec lets rumqttd keep them); on every broker the orders arrive at QoS 0, never acked,
    and Q1's own visible check says so. ``QOS = 0`` is Q1's answer: Q4's checks run the
    learner's loop with the course's ``QOS`` (it cost 3 of Q4's 6 points before)."""
    names = {"orders_wait_for_an_offline_consumer", "acks_each_order_after_charging_it", "killed_mid_stream"}
    got = await results(submission(LAB, *EDITS["QoS 0"]), names)
    assert not got["orders_wait_for_an_offline_consumer"].passed
    assert "QoS 1" in got["orders_wait_for_an_offline_consumer"].message
    assert got["acks_each_order_after_charging_it"].passed, got["acks_each_order_after_charging_it"].message
    assert got["killed_mid_stream"].passed, got["killed_mid_stream"].message


async def test_a_loop_that_subscribes_at_qos_0_is_caught_in_question_4() -> None:
    """A QoS written in run_consumer is question 4's code: its orders arrive at QoS 0, and Q4's visible check says so."""
    got = await results(submission(LAB, *EDITS["run_consumer subscribing at QoS 0"]), {"acks_each_order_after_charging_it"})
    assert not got["acks_each_order_after_charging_it"].passed
    assert "arrived at QoS 0" in got["acks_each_order_after_charging_it"].message


async def test_auto_ack_in_consumer_client_costs_question_1_only() -> None:
    """Held-out uma_noack: consumer_client without manual_ack cost 3 of Q4's 6 points, and Q4's message said to move an
    ack() that was already last. Q1 names the mistake; Q4's checks run the learner's loop with the course's client."""
    names = {"acknowledges_only_when_told", "acks_each_order_after_charging_it", "killed_mid_stream"}
    got = await results(submission(LAB, *EDITS["auto-ack"]), names)
    assert not got["acknowledges_only_when_told"].passed
    assert "manual_ack" in got["acknowledges_only_when_told"].message
    assert got["acks_each_order_after_charging_it"].passed, got["acks_each_order_after_charging_it"].message
    assert got["killed_mid_stream"].passed, got["killed_mid_stream"].message


async def test_auto_ack_is_caught_on_every_broker() -> None:
    """paho acknowledges on receipt unless told otherwise: seen on the wire, whatever the broker resends. A client
    run_consumer makes itself is question 4's code, and the message names the cause (no manual_ack), not the ack()."""
    got = await results(submission(LAB, *EDITS["run_consumer's own auto-acking client"]), {"acks_each_order_after_charging_it"})
    message = got["acks_each_order_after_charging_it"].message
    assert not got["acks_each_order_after_charging_it"].passed
    assert "acknowledged before they were charged" in message
    assert "made without manual_ack" in message, message


async def test_ack_before_the_work_is_caught() -> None:
    """Manual acks, but ack() called first: the same loss window as auto-ack."""
    got = await results(submission(LAB, *EDITS["ack before the work"]), {"acks_each_order_after_charging_it"})
    assert not got["acks_each_order_after_charging_it"].passed
    assert "acknowledged before they were charged" in got["acks_each_order_after_charging_it"].message


async def test_recording_the_id_before_the_charge_is_caught() -> None:
    """Recorded first, charged second: a charge that fails leaves the event marked applied, and it is never charged."""
    got = await results(
        submission(LAB, *EDITS["recorded before the charge"]), {"records_only_after_charging", "charges_each_event_once"}
    )
    assert got["charges_each_event_once"].passed, "the mistake only shows when a charge fails"
    assert not got["records_only_after_charging"].passed
    assert "record the event id only after the charge" in got["records_only_after_charging"].message


async def test_a_dead_letter_at_qos_0_is_caught() -> None:
    got = await results(submission(LAB, *EDITS["dead letter at QoS 0"]), {"malformed_goes_to_dead_letters"})
    assert "publish it with QoS 1" in got["malformed_goes_to_dead_letters"].message


async def test_a_dead_letter_topic_built_from_the_message_is_caught() -> None:
    """The check passes a dead-letter topic unrelated to the message's; publishing to TOPIC/dead-letter is named."""
    got = await results(
        submission(LAB, *EDITS["dead_letter_topic ignored"]), {"malformed_goes_to_dead_letters", "valid_event_passes_through"}
    )
    assert not got["malformed_goes_to_dead_letters"].passed
    assert "not to the dead_letter_topic" in got["malformed_goes_to_dead_letters"].message
    assert got["valid_event_passes_through"].passed, "a valid event publishes nothing: nothing to catch there"


async def test_acks_out_of_arrival_order_are_named() -> None:
    """Several messages at once, each acked when its (uneven) work ends: acks leave the arrival order."""
    ns = submission(LAB)

    async def all_at_once(broker: Any, name: str, topic: str, workdir: Any, ready: asyncio.Event | None = None) -> None:
        ledger = Ledger(Path(workdir) / "ledger.jsonl")
        applied = ns["open_applied_ids"](workdir)
        pending: set[asyncio.Task[None]] = set()

        async def handle(client: Any, message: Any) -> None:
            await asyncio.sleep(random.uniform(0, 0.05))  # uneven work: later messages finish first
            event = await ns["parse_or_dead_letter"](client, message, f"{topic}/dead-letter")
            if event is not None:
                ns["apply_once"](event, ledger, applied)
            ack(client, message)  # the mistake: acked as each one ends, not in arrival order

        async with ns["consumer_client"](broker, name) as client:
            async for message in subscribed_messages(client, topic, qos=ns["QOS"], ready=ready):
                task = asyncio.ensure_future(handle(client, message))
                pending.add(task)
                task.add_done_callback(pending.discard)

    got = await results(replaced(ns, run_consumer=all_at_once), {"acks_each_order_after_charging_it"})
    result = got["acks_each_order_after_charging_it"]
    assert not result.passed, result.message
    assert "in the order the messages arrived" in result.message, result.message
