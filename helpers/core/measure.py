"""Load generators and latency summaries, done the way that does not lie.

An *open-loop* generator sends at a fixed arrival rate whatever the service does, and
counts each request's latency from the moment it was *meant* to be sent. A *closed-loop*
generator (N workers, each waits for its answer before sending the next) slows down
when the service slows down, so it sends fewer requests exactly when things are bad
and hides the queueing a real user would feel ("coordinated omission"). The course
uses open loop for claims and closed loop only to show the contrast.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Call = Callable[[], Awaitable[Any]]

P99_MIN_SAMPLES = 200
"""Fewest values a p99 is shown for: the nearest-rank p99 of fewer than 100 values is their
maximum, and it takes a few hundred before one unlucky value stops deciding it."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Sample:
    """One request: when it was meant to go, when it went, when it ended, and how."""

    intended: float
    sent: float
    done: float
    ok: bool
    error: str | None = None
    value: Any = None

    @property
    def latency(self) -> float:
        """Seconds from the intended send time to the answer (what a user feels)."""
        return self.done - self.intended

    @property
    def lateness(self) -> float:
        """Seconds the generator itself was late to send (its own error)."""
        return self.sent - self.intended


@dataclass(frozen=True)
class Summary:
    """Count, errors, throughput and latency percentiles, in milliseconds."""

    count: int
    errors: int
    duration_s: float
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def answered(self) -> int:
        """The values the percentiles are over: successful calls (``count - errors``)."""
        return self.count - self.errors

    def tail(self) -> tuple[str, float]:
        """``("p99", p99)`` over at least :data:`P99_MIN_SAMPLES` values, else ``("max", max)``.

        A p99 of 40 values is simply the slowest one: calling it p99 would suggest a
        statistic that a handful of samples cannot give, so a small run says "max".
        """
        return ("p99", self.p99_ms) if self.answered >= P99_MIN_SAMPLES else ("max", self.max_ms)

    def tail_cell(self) -> float | str:
        """The tail for a table's p99 column: the p99 rounded, "max 123.4" for a short run, "-" for none."""
        label, value = self.tail()
        if math.isnan(value):
            return "-"
        return round(value, 1) if label == "p99" else f"max {value:,.1f}"

    def as_row(self) -> dict[str, float | int]:
        """A dict for tables (pandas-free): one row per experiment."""
        return {
            "count": self.count,
            "errors": self.errors,
            "req/s": round(self.throughput, 1),
            "p50 ms": round(self.p50_ms, 1),
            "p90 ms": round(self.p90_ms, 1),
            "p99 ms": round(self.p99_ms, 1),
            "max ms": round(self.max_ms, 1),
        }

    def __str__(self) -> str:
        return (
            f"{self.count} requests, {self.errors} errors, {self.throughput:.1f}/s | "
            f"p50 {self.p50_ms:.1f} ms, p90 {self.p90_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms"
        )


def summarize(samples: Iterable[Sample] | Iterable[float]) -> Summary:
    """Summarise samples (or plain latencies in seconds). Percentiles use successful calls."""
    items: list[Sample | float] = list(samples)
    runs = [s for s in items if isinstance(s, Sample)]
    if items and not runs:
        latencies = [float(x) for x in items if not isinstance(x, Sample)]
        duration = sum(latencies)
        errors = 0
    else:
        latencies = [s.latency for s in runs if s.ok]
        errors = sum(not s.ok for s in runs)
        duration = (max(s.done for s in runs) - min(s.intended for s in runs)) if runs else 0.0
    ok_count = len(latencies)
    ms = [x * 1000 for x in latencies]
    return Summary(
        count=len(items),
        errors=errors,
        duration_s=duration,
        throughput=ok_count / duration if duration > 0 else math.nan,
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        max_ms=max(ms) if ms else math.nan,
    )


async def _timed(call: Call, intended: float, timeout: float | None) -> Sample:
    loop = asyncio.get_running_loop()
    sent = loop.time()
    try:
        value = await (asyncio.wait_for(call(), timeout) if timeout else call())
    except TimeoutError:
        return Sample(intended, sent, loop.time(), False, "timeout")
    except Exception as exc:  # noqa: BLE001 - every failure is a data point, not a crash
        return Sample(intended, sent, loop.time(), False, f"{type(exc).__name__}: {exc}")
    ok = not (isinstance(value, bool) and value is False)
    return Sample(intended, sent, loop.time(), ok, None if ok else "returned False", value)


@dataclass
class LoadRun:
    """All samples of one run, in send order."""

    samples: list[Sample] = field(default_factory=list)

    def summary(self) -> Summary:
        """The run's :class:`Summary`."""
        return summarize(self.samples)

    @property
    def latencies_ms(self) -> list[float]:
        """Latency of each successful request, ms."""
        return [s.latency * 1000 for s in self.samples if s.ok]

    @property
    def lateness_ms(self) -> list[float]:
        """How late the generator sent each request, ms."""
        return [s.lateness * 1000 for s in self.samples]


def _check_positive(**values: float | int | None) -> None:
    for name, value in values.items():
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


async def open_loop(
    call: Call, *, rate: float, duration: float | None = None, count: int | None = None, timeout: float | None = None
) -> LoadRun:
    """Send ``call()`` at ``rate`` per second, on schedule, regardless of answers.

    Give ``duration`` (seconds) or ``count``. Each call may take at most ``timeout``
    seconds (then it counts as an error), so a dead service cannot hang the run.
    """
    _check_positive(rate=rate, duration=duration, count=count, timeout=timeout)
    if (duration is None) == (count is None):
        raise ValueError("give exactly one of duration= or count=")
    total = count if count is not None else max(1, round(rate * float(duration or 0)))
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: list[asyncio.Task[Sample]] = []
    for i in range(total):
        due = start + i / rate
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(_timed(call, due, timeout)))
    return LoadRun(list(await asyncio.gather(*tasks)))


async def closed_loop(
    call: Call, *, concurrency: int, count: int | None = None, duration: float | None = None, timeout: float | None = None
) -> LoadRun:
    """``concurrency`` workers, each sending its next call only after the last answer.

    Latency is measured from each call's own send time, which is exactly why closed
    loop under-reports queueing: a slow answer delays the next send instead of
    adding to it.
    """
    _check_positive(concurrency=concurrency, count=count, duration=duration, timeout=timeout)
    if (duration is None) == (count is None):
        raise ValueError("give exactly one of duration= or count=")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration if duration is not None else math.inf
    remaining = [count if count is not None else math.inf]
    samples: list[Sample] = []

    async def worker() -> None:
        while remaining[0] > 0 and loop.time() < deadline:
            remaining[0] -= 1
            samples.append(await _timed(call, loop.time(), timeout))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    samples.sort(key=lambda s: s.intended)
    return LoadRun(samples)


async def time_calls(call: Call, n: int, *, timeout: float | None = None) -> LoadRun:
    """Call ``call()`` ``n`` times one after another (a single patient user)."""
    return await closed_loop(call, concurrency=1, count=n, timeout=timeout)
