"""Lesson 04's fixes, as the notebook writes them: its own cells, not a copy.

The lesson's harnesses take the learner's functions as parameters; these are the
notebook's correct versions, shared by the tests that run those harnesses
(``test_async_claims.py``) and the tests of the pieces (``test_async_helpers.py``).
They are read from ``notebooks/04_async_pitfalls.ipynb`` by name (the definitions and the
notebook's imports, executed into a fresh namespace; see ``lab_submissions``), so the
tests run what the learner reads: a fix renamed, removed or defined twice in the
notebook fails here, naming it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
from lab_submissions import notebook_definitions
from opentelemetry.context import Context

from helpers.core.messaging import Event, EventHandler, SeenIds
from helpers.pubsub.idempotency import Ledger

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_async_pitfalls.ipynb"

Charge = Callable[[Event, Ledger, SeenIds], Awaitable[None]]
Acker = Callable[[aiomqtt.Client, AsyncIterator[aiomqtt.Message], EventHandler], Awaitable[None]]

_CELLS = notebook_definitions(
    NOTEBOOK,
    [
        "charge_naively",
        "charge_once",
        "partition_for",
        "ReadYourWrites",
        "with_trace_context",
        "trace_context_of",
        "ack_on_receipt",
        "ack_after_work",
        "MAX_ATTEMPTS",
        "work_or_dead_letter",
    ],
)

charge_naively: Charge = _CELLS["charge_naively"]
charge_once: Charge = _CELLS["charge_once"]
partition_for: Callable[[str, int], int] = _CELLS["partition_for"]
ReadYourWrites: Any = _CELLS["ReadYourWrites"]
"""A class: the writer's session over a ``StatusSystem``."""
with_trace_context: Callable[[Event], Event] = _CELLS["with_trace_context"]
trace_context_of: Callable[[Event], Context] = _CELLS["trace_context_of"]
ack_on_receipt: Acker = _CELLS["ack_on_receipt"]
ack_after_work: Acker = _CELLS["ack_after_work"]
MAX_ATTEMPTS: int = _CELLS["MAX_ATTEMPTS"]
work_or_dead_letter: Callable[[aiomqtt.Client, aiomqtt.Message, EventHandler, str], Awaitable[int]] = _CELLS[
    "work_or_dead_letter"
]
