"""How long the event loop stood still: a ticker task that records every gap between its ticks.

The classic asyncio mistake is a blocking call inside ``async def`` code (``time.sleep``,
``requests.get``, CPU-heavy work, or worker threads holding the GIL): the code still
"works", but every other coroutine in the process (services, consumers, the notebook)
stands still meanwhile. A ticker that wakes every few milliseconds sees that directly: the
gap between two of its ticks is time the loop could not run anything.

    async with LoopLag() as lag:
        await some_code()
    print(f"the loop stood still for up to {lag.longest * 1000:.0f} ms")

The labs' checks use it to name blocking calls (:mod:`helpers.grading.probes`); appendix 08
uses it to show what CPU work in the kernel's threads does to the kernel's services.
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
