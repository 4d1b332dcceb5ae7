"""The event types that two lesson groups share, defined once (lessons 03-04 and 05).

A producer and its consumers must agree on the type string; a typo in one copy would
be a silent mismatch, so every module that speaks of a placed order imports it here.
It lives in core only because both ``helpers.pubsub`` (the shop of lessons 03-04) and
lesson 05's head-to-head publish it, and no lesson package imports another. Generic
pieces do not belong here: time formatting is :mod:`helpers.core.timestamps`.
"""

from __future__ import annotations

__all__ = ["ORDER_PLACED"]

ORDER_PLACED = "order.placed"
"""The Order service's event: a customer placed an order (data: ``order_id`` and the order)."""
