"""Wait for a condition, never for a guessed amount of time.

Experiments and checks often need "until the consumer has seen 3 messages" or "until
the broker let go of that connection". A fixed ``sleep`` is either too long (slow) or
too short on a busy machine (flaky); :func:`until` polls the condition itself, with a
hard deadline, and says whether it came true.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], bool], timeout: float = 5.0, poll: float = 0.01) -> bool:
    """Wait until ``condition()`` is true (True) or ``timeout`` seconds passed (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True
