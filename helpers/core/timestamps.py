"""How the course writes a moment in a message or a resource: one format, defined once.

Events, job resources and notifications all carry times a learner reads and a test
compares; two formats (with and without milliseconds, ``Z`` or ``+00:00``) would make
the same instant look different in two places.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["iso"]


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z`` (``2025-01-31T12:00:00.123Z``): how events and job resources write time."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
