"""The event types the lessons' services publish (lessons 03, 04 and 05), defined once.

A producer and its consumers must agree on the type string; a typo in one copy would
be a silent mismatch, so every module that speaks of a placed order imports it here.
"""

from __future__ import annotations

from datetime import UTC, datetime

ORDER_PLACED = "order.placed"
"""The Order service's event: a customer placed an order (data: ``order_id`` and the order)."""


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z`` (``2025-01-31T12:00:00.123Z``): how events and job resources write time."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
