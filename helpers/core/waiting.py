"""Wait for a condition, never for a guessed amount of time.

Experiments and checks often need "until the consumer has seen 3 messages" or "until
the broker let go of that connection". A fixed ``sleep`` is either too long (slow) or
too short on a busy machine (flaky); :func:`until` polls the condition itself, with a
hard deadline, and says whether it came true.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, poll: float = 0.01) -> bool:
    """Wait until ``condition()`` is true (True) or ``timeout`` seconds passed (False).

    ``condition`` may be a coroutine function (e.g. a read over HTTP); it is awaited each time.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def holds() -> bool:
        value = condition()
        return bool(await value) if inspect.isawaitable(value) else bool(value)

    while not await holds():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True


async def until_quiet(measure: Callable[[], object], idle: float, timeout: float) -> bool:
    """Wait until ``measure()`` has not changed for ``idle`` seconds (True), or ``timeout`` passed (False).

    "And then nothing more arrives", without a fixed sleep: each change restarts the
    quiet window, so a late arrival is seen however busy the machine is, and a quiet
    run costs just ``idle``.
    """

    def changed_from(seen: object) -> Callable[[], bool]:
        return lambda: measure() != seen

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() + idle <= end:
        if not await until(changed_from(measure()), idle):
            return True
    return False
