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
(``helpers.core.measure`` measures the course's services; this module belongs to the
grading side and is owned with the checks.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType

TICK_S = 0.005
"""How often the ticker wakes up (seconds)."""

NOISE_S = 0.02
"""A gap up to this much longer than a tick is scheduling noise on a busy machine, not blocking."""

BLOCKING_ADVICE = (
    "a blocking call in async code (time.sleep(), requests, a long CPU loop) stops the event loop and every "
    "coroutine in the kernel with it: use await asyncio.sleep(), an async client, or await asyncio.to_thread(...)"
)
"""What to do about it, in the words every check uses."""


class LoopLag:
    """A ticker task on the running loop that records every gap between two of its ticks.

    ``start()`` (or ``async with``) begins ticking; ``stop()`` ends it and counts the time
    since the last tick too, so a call that blocked the loop until its very end is seen.
    """

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self.gaps: list[tuple[float, float]] = []
        """(before, after) of every tick: ``after - before`` is the tick's real length."""
        self._task: asyncio.Task[None] | None = None
        self._last = 0.0
        self.started = 0.0
        self.ended: float | None = None

    def start(self) -> LoopLag:
        """Start ticking on the running loop (returns self)."""
        self.started = self._last = time.perf_counter()
        self._task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)  # the probe itself: how late this wakes up is what it measures
            now = time.perf_counter()
            self.gaps.append((self._last, now))
            self._last = now

    def stop(self) -> None:
        """Stop ticking; the time since the last tick counts as one more gap. Safe to call twice."""
        if self._task is None:
            return
        self._task.cancel()
        self._task = None
        self.ended = time.perf_counter()
        self.gaps.append((self._last, self.ended))

    async def close(self) -> None:
        """:meth:`stop`, then let the cancelled ticker finish (for ``ctx.on_cleanup``)."""
        task = self._task
        self.stop()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> LoopLag:
        return self.start()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def longest(self) -> float:
        """The longest the loop stood still (seconds): the longest gap between two ticks."""
        return max((after - before for before, after in self.gaps), default=0.0)

    def longest_between(self, start: float, end: float) -> float:
        """The longest gap that overlaps ``[start, end]`` (``time.perf_counter()`` times)."""
        return max((after - before for before, after in self.gaps if after > start and before < end), default=0.0)

    @property
    def blocked(self) -> float:
        """Total time the loop was blocked: the part of each gap beyond a tick plus noise."""
        return sum(max(0.0, after - before - self.tick_s - NOISE_S) for before, after in self.gaps)

    @property
    def elapsed(self) -> float:
        """Seconds from start to stop (or to now, while running)."""
        return (self.ended if self.ended is not None else time.perf_counter()) - self.started

    def blocked_fraction(self) -> float:
        """The share of the elapsed time the loop was blocked (0 when nothing was measured)."""
        return self.blocked / self.elapsed if self.elapsed > 0 else 0.0


def blocking_message(label: str, stood_still_s: float) -> str:
    """The one message for learner code that blocked the event loop, naming the usual culprits."""
    return f"{label} blocked the event loop for {stood_still_s:.2f} s: {BLOCKING_ADVICE}"
