"""A consumer that runs for the length of a ``with`` block: the start + stop pair of every scenario.

Each lesson-03/04 scenario starts one or more consumers, waits until they are
subscribed, runs its experiment and stops them again. :func:`running` is that pair,
built on :func:`helpers.core.lifecycle.start` (returns once the consumer set ``ready``)
and :func:`helpers.core.lifecycle.kill` (cancels it and waits). A consumer that crashed
on the way is never swallowed: its error is raised when the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from helpers.core import lifecycle


@contextlib.asynccontextmanager
async def running(run: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``run(*args, ready=event, **kwargs)`` while the block runs; yield its task once ready.

    On exit the task is cancelled and awaited. If it had failed, its error is raised (or,
    when the block itself failed, attached to the block's error as a note).
    """
    task = await lifecycle.start(run, *args, **kwargs)
    try:
        yield task
    except BaseException as exc:  # not swallowed: noted and re-raised below
        error = await lifecycle.kill(task)
        if error is not None:
            exc.add_note(f"the consumer had failed too: {type(error).__name__}: {error}")
        raise
    error = await lifecycle.kill(task)
    if error is not None:
        raise error
