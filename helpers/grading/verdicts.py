"""The verdict vocabulary every check uses: fail with a message, test a number, bound a wait.

Split out of :mod:`helpers.grading.checks` (which re-exports all of it) so that the
modules a check leans on (:mod:`~helpers.grading.calls`, :mod:`~helpers.grading.context`,
:mod:`~helpers.grading.saved`) can share it without importing the declaring API.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any


class CheckFailed(AssertionError):
    """A check did not pass; the message is shown to the learner, so make it say what to fix."""


class LabError(ValueError):
    """A lab or its checks are mis-declared (an author error, not a learner one)."""


def expect(condition: object, message: str) -> None:
    """Fail the current check with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


def finite(value: Any) -> bool:
    """True for a real, finite number (not bool, not NaN): handy for measured answers."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def deadline(seconds: float) -> asyncio.Timeout:
    """``async with deadline(5):`` raises TimeoutError after 5 s.

    Unlike ``asyncio.wait_for`` it runs the body in the *current* task, so when the grader
    interrupts an endless loop the KeyboardInterrupt lands in the check, not in the event
    loop (which would kill the kernel). ``.expired()`` says whether it was this deadline
    that ended the body (and not a TimeoutError of the code under test).
    """
    return asyncio.timeout(seconds)


def format_points(value: float) -> str:
    """Points as people write them: ``3``, ``0.5``, ``2.25`` (never ``3.0``)."""
    return f"{value:g}"
