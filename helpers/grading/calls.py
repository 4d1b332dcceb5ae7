"""Calling the learner's code from a check: a time limit, and the reason when it does not finish.

:func:`outcome` is what every check's call of learner code goes through (``ctx.call``
too), so that "not written yet", "blocked the event loop", "forgot an ``await``" and
"returned a coroutine" read the same in every lab. Re-exported by
:mod:`helpers.grading.checks`, where check authors import it from.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from helpers.grading.probes import LoopLag, blocking_message
from helpers.grading.verdicts import CheckFailed, deadline


@dataclass(frozen=True)
class Outcome:
    """What one call of the learner's code did: its value, or the exception it raised, and how long it took."""

    value: Any = None
    error: Exception | None = None
    seconds: float = 0.0
    stalled_s: float = 0.0
    """The longest the event loop stood still during the call (a blocking call shows here)."""
    unawaited: tuple[str, ...] = ()
    """Coroutines the call created and dropped without awaiting (a missing ``await``), by name."""

    @property
    def raised(self) -> str:
        """The exception as the learner should read it (``ValueError: bad``), or ``no exception``."""
        if self.error is None:
            return "no exception"
        text = str(self.error)
        told = f"{type(self.error).__name__}: {text}" if text else type(self.error).__name__
        if self.unawaited:
            told += f" ({forgot_await(self.unawaited)})"
        elif "'coroutine' object" in text:
            told += " (a coroutine was used as a value: an `await` is missing)"
        return told


_UNAWAITED = re.compile(r"coroutine '([^']+)' was never awaited")

_capture = {"on": False}
"""Whether some outcome() is recording warnings right now (see :func:`_recording_warnings`)."""


@contextlib.contextmanager
def _recording_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record the warnings given while the learner's code runs (a dropped coroutine's among them).

    ``warnings.catch_warnings`` swaps module-wide state and restores it on exit, so two that
    overlap in time (two checks' calls running as concurrent tasks) would restore each other
    out of order and leave warnings swallowed for the rest of the kernel. Only the first of
    overlapping calls records; the others get an empty list (they miss a name, nothing worse).
    """
    if _capture["on"]:
        yield []
        return
    _capture["on"] = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)  # every dropped coroutine, even one warned about before
            yield caught
    finally:
        _capture["on"] = False


def forgot_await(names: tuple[str, ...] | list[str]) -> str:
    """The words for coroutines created and never awaited: what the learner forgot."""
    calls = ", ".join(f"{name.rsplit('.', 1)[-1]}()" for name in dict.fromkeys(names))
    return f"the coroutine {calls} was never awaited: write `await` before the call"


def _unawaited(caught: list[warnings.WarningMessage]) -> tuple[str, ...]:
    """The coroutine names among ``caught``; every other warning is shown as it would have been."""
    names: list[str] = []
    for warning in caught:
        found = _UNAWAITED.search(str(warning.message))
        if found and issubclass(warning.category, RuntimeWarning):
            names.append(found.group(1))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno, source=warning.source)
    return tuple(names)


async def outcome(label: str, call: Callable[[], Any], timeout: float = 5.0) -> Outcome:
    """Run ``call()`` (the learner's code, sync or async) for a check, at most ``timeout`` s.

    A few things end the check at once, with the same message in every lab: code that is
    not written yet (``NotImplementedError``: "``label`` is not written yet"); code that
    does not finish within ``timeout``, told apart by why: it blocked the event loop
    (``time.sleep``, a blocking client, a CPU loop: measured with a
    :class:`~helpers.grading.probes.LoopLag`), it dropped a coroutine without awaiting it
    (the warning Python gives is caught and named), or it is simply too slow; and code that
    returns a coroutine instead of a value (a ``return`` without ``await``). Any other
    exception is returned in the :class:`Outcome` for the check to judge: a retry helper
    *should* raise the service's error in the end, a fetch with a timeout *should* raise
    its own TimeoutError. ``label`` names the call the way the learner knows it, e.g. ``"fetch()"``.
    """
    limit = deadline(timeout)
    lag = LoopLag().start()
    started = time.perf_counter()
    value: Any = None
    error: Exception | None = None
    stuck = False
    with _recording_warnings() as caught:
        try:
            async with limit:
                value = call()
                if inspect.isawaitable(value):
                    value = await value
        except NotImplementedError:
            raise CheckFailed(f"{label} is not written yet (it raises NotImplementedError)") from None
        except CheckFailed:
            raise
        except TimeoutError as exc:
            stuck = limit.expired()
            error = None if stuck else exc  # otherwise the code under test timed out by itself
        except Exception as exc:  # noqa: BLE001 - the learner's exception is what the check inspects
            error = exc
        finally:
            lag.stop()
    seconds = time.perf_counter() - started
    dropped = _unawaited(caught)
    if stuck:
        raise CheckFailed(_stuck(label, timeout, lag.longest, dropped))
    if lag.longest >= timeout:  # a call that never let the deadline fire: it held the loop the whole time
        raise CheckFailed(blocking_message(label, lag.longest))
    if error is None and inspect.iscoroutine(value):
        value.close()  # never run: close it so Python does not warn a second time
        raise CheckFailed(
            f"{label} returned a coroutine ({getattr(value, '__qualname__', 'a coroutine')}) instead of its result: "
            "write `return await ...`, not `return ...`"
        )
    return Outcome(value, error, seconds, lag.longest, dropped)


def _stuck(label: str, timeout: float, stalled_s: float, dropped: tuple[str, ...]) -> str:
    """Why ``label`` did not finish within ``timeout``: blocking, a missing await, or slowness."""
    if stalled_s >= min(1.0, timeout / 2):
        return blocking_message(label, stalled_s)
    if dropped:
        return f"{label} did not finish within {timeout:g} s, and {forgot_await(dropped)}"
    return f"{label} did not finish within {timeout:g} s"
