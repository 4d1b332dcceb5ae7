"""Dead letters: what a consumer does with a message it cannot handle.

Two kinds of bad message reach every real consumer sooner or later:

* **malformed**: not an event at all (not JSON, or JSON without the CloudEvents
  attributes). No retry will ever fix it.
* **poison**: a well-formed event the handler cannot process (here: an order with a
  negative amount). Retrying it forever would block everything behind it.

Dropping either silently loses data; crashing on it stops the consumer, and at-least-once
delivery brings the same message back, so it crashes again. The usual answer: publish
it, with the reason, to a *dead-letter topic* for a human or a repair job, acknowledge
it, and carry on. :class:`helpers.core.messaging.Consumer` does exactly that; this module
supplies the test messages, a strict handler and a way to read the dead letters.
"""

from __future__ import annotations

import json
from typing import Any

import aiomqtt

from helpers.core.events import ORDER_PLACED
from helpers.core.messaging import Event, EventHandler, InvalidEvent, decode, make_event
from helpers.pubsub.idempotency import Ledger, order_event


def sample_messages() -> list[tuple[str, bytes]]:
    """(label, payload) pairs: good orders, a malformed one, an incomplete one, a poison one, a good one."""
    return [
        ("good order", order_event(1).to_bytes()),
        ("good order", order_event(2).to_bytes()),
        ("not JSON", b"order 3, 20 EUR, thanks"),
        ("JSON, not an event", json.dumps({"order_id": "order-004", "amount": 20}).encode()),
        (
            "poison: negative amount",
            make_event(ORDER_PLACED, {"order_id": "order-005", "amount": -20}, source="/shop/orders").to_bytes(),
        ),
        ("good order (after the bad ones)", order_event(6).to_bytes()),
    ]


def strict_charging(ledger: Ledger) -> EventHandler:
    """Charge the order, but refuse amounts that make no sense (raise, do not guess)."""

    async def handle(event: Event) -> None:
        amount = (event.data or {}).get("amount")
        if not isinstance(amount, (int, float)) or amount <= 0:
            raise ValueError(f"amount must be a positive number, got {amount!r}")
        ledger.charge(event)

    return handle


def dead_letter_rows(messages: list[aiomqtt.Message], width: int = 64) -> list[dict[str, Any]]:
    """The dead-letter records as table rows: the reason and what the original message was."""
    rows = []
    for message in messages:
        record = json.loads(bytes(message.payload))
        original = str(record.get("payload", ""))
        try:  # a well-formed event: show its type and data (its id and time differ on every run)
            event = decode(original)
            original = f"{event.type} event, data={json.dumps(event.data)}"
        except InvalidEvent:
            pass
        rows.append(
            {
                "reason": record.get("reason", "?"),
                "original message": original if len(original) <= width else original[: width - 3] + "...",
            }
        )
    return rows
