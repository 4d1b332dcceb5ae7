"""Start, kill and restart a consumer inside one kernel, the way a process would live and die.

Lessons and lab checks need "the consumer crashed, then came back": run the consumer
as a task, cancel it (its connection closes, its persistent session stays on the
broker), and start it again with the same client id.

A killed consumer's unacknowledged messages stay with its session on the broker, and a
restarted consumer with the same client id gets them again: that is the redelivery
at-least-once delivery is about.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

from helpers.core.waiting import until

__all__ = [
    "Restartable",
    "TaskWouldNotStop",
    "cancel_and_wait",
    "died_of",
    "kill",
    "raise_crashed",
    "running",
    "start",
    "until",
]


async def start(run: Callable[..., Awaitable[Any]], *args: Any, timeout: float = 5.0, **kwargs: Any) -> asyncio.Task[Any]:
    """Run ``run(*args, ready=event, **kwargs)`` as a task; return once it set ``ready``.

    If the task ends (or fails) before it is ready, its error is raised here instead.
    """
    ready = asyncio.Event()
    task = asyncio.ensure_future(run(*args, ready=ready, **kwargs))
    waiter = asyncio.ensure_future(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        if task in done:
            task.result()  # raises the consumer's own error
            raise RuntimeError("the consumer returned before it was ready (did it set `ready`?)")
        await _cancelled(task)
        raise TimeoutError(f"the consumer was not ready within {timeout:g} s (did it call ready.set() after subscribing?)")
    return task


RECANCEL_AFTER_S = 1.0
"""How long a cancelled task may take to clean up (close its connection) before it is cancelled again."""
STOP_DEADLINE_S = 15.0
"""How long :func:`cancel_and_wait` keeps cancelling a task that goes on running before it gives up loudly."""


class TaskWouldNotStop(RuntimeError):
    """A task went on running through every cancellation: a loop that catches ``CancelledError``."""


async def cancel_and_wait(
    tasks: asyncio.Future[Any] | Iterable[asyncio.Future[Any]],
    *,
    recancel_after_s: float = RECANCEL_AFTER_S,
    deadline_s: float = STOP_DEADLINE_S,
) -> None:
    """Cancel ``tasks`` and return once every one has ended (how it ended is left on the task).

    One ``cancel()`` is not always enough on Python 3.11: ``asyncio.wait_for``, which
    aiomqtt uses for every publish, subscribe and disconnect, drops a cancellation that
    lands in the same loop turn as the reply it waits for (CPython gh-86296, fixed in
    3.12). The task then goes on as if nothing happened, and a plain ``await task`` waits
    forever with the loop idle. So a task still running ``recancel_after_s`` after its
    cancel (time enough to close its connection) is cancelled again; one that outlives
    ``deadline_s`` of that raises :class:`TaskWouldNotStop` naming it, never a silent hang.
    """
    pending = {tasks} if isinstance(tasks, asyncio.Future) else set(tasks)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline_s
    while pending := {task for task in pending if not task.done()}:
        if loop.time() >= give_up:
            names = ", ".join(sorted(_name(task) for task in pending))
            raise TaskWouldNotStop(f"still running {deadline_s:g} s after being cancelled: {names}")
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=min(recancel_after_s, max(give_up - loop.time(), 0.0)))


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)


async def kill(task: asyncio.Task[Any]) -> Exception | None:
    """Cancel ``task`` (the consumer dies) and wait for it. Returns the task's own error, if any.

    A ``BaseException`` it died of (a simulated process death, a KeyboardInterrupt) is
    raised here, not returned.
    """
    await cancel_and_wait(task)
    if task.cancelled():
        return None
    error = task.exception()
    if error is not None and not isinstance(error, Exception):
        raise error
    return error


async def _cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end; its own failure is not ours to raise here.

    Only ``Exception`` is swallowed: a KeyboardInterrupt or SystemExit (the grader
    stopping an endless loop) must travel on.
    """
    await kill(task)


@contextlib.asynccontextmanager
async def running(run: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``run(*args, ready=event, **kwargs)`` while the block runs; yield its task once ready.

    On exit the task is cancelled and awaited. If it had failed, its error is raised (or,
    when the block itself failed, attached to the block's error as a note).
    """
    task = await start(run, *args, **kwargs)
    try:
        yield task
    except BaseException as exc:  # not swallowed: noted and re-raised below
        error = await kill(task)
        if error is not None:
            exc.add_note(f"the consumer had failed too: {type(error).__name__}: {error}")
        raise
    error = await kill(task)
    if error is not None:
        raise error


def died_of(task: asyncio.Future[Any]) -> BaseException | None:
    """What a finished task (or future) died of; None while it runs, once it returned, or if it was cancelled.

    The one spelling of ``task.done() and not task.cancelled() and task.exception()``:
    reading the error also marks it retrieved, so asyncio does not log it a second time.
    """
    if not task.done() or task.cancelled():
        return None
    return task.exception()


def raise_crashed(errors: Mapping[str, BaseException], owner: str) -> None:
    """Raise what named workers died of, each noted "raised by {owner} 'name'"; several become one group.

    A scenario that runs many workers must never let one die quietly: its stop (or its
    wait) calls this with the workers' errors. Nothing to raise when ``errors`` is empty.
    """
    for name, error in errors.items():
        note = f"raised by {owner} {name!r}"
        if note not in getattr(error, "__notes__", ()):
            error.add_note(note)
    if len(errors) == 1:
        raise next(iter(errors.values()))
    if errors:
        raise BaseExceptionGroup(f"{len(errors)} of {owner} crashed", list(errors.values()))


class Restartable:
    """A long-running loop (a consumer, a service) that a lesson kills and restarts like a process.

    Keeps the running task and what it died of, so a scenario can ask "did it crash by
    itself?" after a kill, and nothing it raised is lost: a ``BaseException`` too (a
    simulated process death, a KeyboardInterrupt or SystemExit that hit its task: asyncio
    re-raised those out of the event loop when they happened, and they are what it died
    of). Being cancelled (a kill) is not a crash.
    """

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.errors: list[BaseException] = []

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def launch(self, run: Callable[..., Awaitable[Any]], *args: Any, timeout: float = 5.0, **kwargs: Any) -> None:
        """Start ``run`` with :func:`start` (returns once it set ``ready``); refuses while one runs."""
        if self.alive:
            raise RuntimeError("it is running already: kill it first")
        self.task = await start(run, *args, timeout=timeout, **kwargs)

    async def kill(self) -> Exception | None:
        """Kill it mid-work, like a crashed process; returns the error it had died of before, if any.

        A ``BaseException`` it had died of is raised here, as :func:`kill` does, not returned.
        """
        if self.task is None:
            return None
        error = await kill(self.task)
        self.task = None
        if error is not None:
            self.errors.append(error)
        return error

    def crashed(self) -> BaseException | None:
        """What it died of, if it died by itself (a healthy loop runs until it is killed); never a cancellation."""
        error = died_of(self.task) if self.task is not None else None
        if error is not None:
            return error
        return self.errors[-1] if self.errors else None
