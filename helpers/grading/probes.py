"""Probes a check runs *beside* the learner's code: what the code did to the event loop.

One home for the event-loop lag probe that several labs' checks use. The classic asyncio
mistake is a blocking call inside ``async def`` code (``time.sleep``, ``requests.get``,
CPU-heavy work): the code still "works", and a check that only looks at results or
durations passes it, but every other coroutine in the kernel (services, consumers, the
check's own fakes) stands still meanwhile. A ticker task that wakes every few
milliseconds sees that directly: the gap between two of its ticks is time the loop
could not run anything.

    async with LoopLag() as lag:
        await learners_code()
    if lag.longest > 0.2: ...            # or lag.blocked_fraction(...)

:func:`helpers.grading.checks.outcome` runs one around every call of the learner's code,
so a call that never gives control back is reported as blocking, not as "too slow".
The ticker itself lives in :mod:`helpers.core.loop_lag` (appendix 08 uses it too); this
module adds the words every check uses about it.
"""

from __future__ import annotations

from helpers.core.loop_lag import NOISE_S, TICK_S, LoopLag

__all__ = ["BLOCKING_ADVICE", "NOISE_S", "TICK_S", "LoopLag", "blocking_message"]

BLOCKING_ADVICE = (
    "a blocking call in async code (time.sleep(), requests, a long CPU loop) stops the event loop and every "
    "coroutine in the kernel with it: use await asyncio.sleep(), an async client, or await asyncio.to_thread(...)"
)
"""What to do about it, in the words every check uses."""


def blocking_message(label: str, stood_still_s: float) -> str:
    """The one message for learner code that blocked the event loop, naming the usual culprits."""
    return f"{label} blocked the event loop for {stood_still_s:.2f} s: {BLOCKING_ADVICE}"
