"""How busy the machine was while a measurement ran: this kernel, and every other program.

A timing claim measured while other programs keep the cores busy measures them too: on a
shared or busy laptop the event loop runs late and a ratio of two latencies can shrink for
reasons that have nothing to do with the design. A notebook wraps the measurement in
:class:`OtherPrograms` and checks its claim only when the machine was quiet enough
(:data:`QUIET_CORES`), saying so when it was not, instead of failing on a busy machine or
passing by luck. Appendix 08 (M16) and lesson 05 (M14) both do.
"""

from __future__ import annotations

import os
import time
from types import TracebackType

import psutil  # type: ignore[import-untyped]  # psutil ships no hints; types-psutil is not worth a pin

QUIET_CORES = 0.5
"""Other programs may keep at most this many cores busy (on average) for a timing claim to be checked."""


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (not idle, not waiting for disks)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _process_seconds(pids: set[int]) -> dict[int, float]:
    """CPU seconds (user + system) each live process of ``pids`` has used so far."""
    seconds = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:  # gone since it was listed: its time is not ours to count any more
            continue
        seconds[pid] = times.user + times.system
    return seconds


def _ours() -> set[int]:
    """This process and every process it started (the embedded broker, worker processes)."""
    me = psutil.Process(os.getpid())
    return {me.pid, *(child.pid for child in me.children(recursive=True))}


class OtherPrograms:
    """``with OtherPrograms() as others: ...``: then ``others.cores`` is how many cores other programs kept busy.

    "Ours" is this process and its children (the embedded broker runs as one); everything
    else the machine did meanwhile is other programs: another notebook, a browser, a build,
    or another user of a shared machine.
    """

    def __init__(self) -> None:
        self.cores = 0.0
        """Cores other programs kept busy, on average over the block (0.0 until it ends)."""
        self.seconds = 0.0
        """Wall-clock seconds the block took."""
        self._start: tuple[float, float, dict[int, float]] = (0.0, 0.0, {})

    def __enter__(self) -> OtherPrograms:
        self._start = (time.monotonic(), machine_busy_seconds(), _process_seconds(_ours()))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        began, machine_before, ours_before = self._start
        machine = machine_busy_seconds() - machine_before
        ours_after = _process_seconds(_ours() | set(ours_before))
        ours = sum(after - ours_before.get(pid, 0.0) for pid, after in ours_after.items())
        self.seconds = time.monotonic() - began
        self.cores = max(0.0, machine - ours) / self.seconds if self.seconds > 0 else 0.0

    @property
    def quiet(self) -> bool:
        """Whether other programs left the machine quiet enough for a timing claim (:data:`QUIET_CORES`)."""
        return self.cores <= QUIET_CORES
