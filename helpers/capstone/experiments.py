"""Lesson 07's two comparisons of designs: upload latency (async vs sync) and head-of-line blocking (one worker vs a pool).

Each starts the systems it compares on the same image and load, runs a drill or a burst on
each (:mod:`helpers.capstone.drills`), and returns a frozen result with ``as_rows()`` for
:func:`helpers.core.tables.show`; the plots are in :mod:`helpers.capstone.plots`.

1. :func:`upload_latency`: a burst of uploads, async vs sync: upload latency, processing
   time, and the sync design's client timeouts.
2. :func:`head_of_line`: one pathological image among normal ones, one worker vs a pool.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.capstone import images
from helpers.capstone.drills import SLOW_USER, Completion, slow_image_first
from helpers.capstone.pipeline import reference_system
from helpers.capstone.sync_design import start_sync_pipeline
from helpers.capstone.wire import UploadAnswer
from helpers.core.broker import Broker
from helpers.core.measure import LoadRun, Summary, open_loop, percentile
from helpers.core.waiting import until

# --- experiment helpers -----------------------------------------------------------------------


async def _burst(call: Callable[[int], Awaitable[UploadAnswer]], count: int, *, rate: float, timeout: float | None) -> LoadRun:
    """``count`` uploads at ``rate`` per second (open loop); a non-2xx answer counts as an error."""
    numbers = itertools.count()

    async def one() -> UploadAnswer:
        answer = await call(next(numbers))
        if not 200 <= answer.status < 300:
            raise RuntimeError(f"HTTP {answer.status}: {answer.body.get('detail', answer.body)}")
        return answer

    return await open_loop(one, rate=rate, count=count, timeout=timeout)


def _job_ids(run: LoadRun) -> list[str]:
    return [s.value.job_id for s in run.samples if s.ok and isinstance(s.value, UploadAnswer) and s.value.job_id]


def _seconds(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(round(v, 4) for v in values)


def _p(values: Sequence[float], q: float) -> float:
    return percentile(list(values), q)


def _shown(value: float, digits: int = 1) -> float | str:
    """A number rounded for a table, or "-" when there is none (NaN: e.g. every caller gave up)."""
    return "-" if math.isnan(value) else round(value, digits)


# --- 1. upload latency: async vs sync ---------------------------------------------------------


@dataclass(frozen=True)
class LatencyResult:
    """A burst of uploads against both designs: what the uploader waited, and what the work took."""

    uploads: int
    workers: int
    work: float
    client_timeout_s: float
    async_run: LoadRun
    sync_run: LoadRun
    processing_s: tuple[float, ...]
    """Async design: seconds each image took in the processor (fetch, transform, store)."""
    sync_processing_s: tuple[float, ...]
    """Sync design: seconds each image took in the request's worker thread."""
    async_all_done_s: float
    """Async design: seconds from the first upload until the last job was done."""
    sync_all_done_s: float
    """Sync design: seconds from the first upload until the server finished the last one (callers gone or not)."""
    async_done: int
    sync_attempts: int = 1
    """Sync bursts run: more than 1 when the load changed under the yardstick (see ``sync_timeout_rounds``)."""

    @property
    def async_summary(self) -> Summary:
        return self.async_run.summary()

    @property
    def sync_summary(self) -> Summary:
        """Latency percentiles of the sync uploads that were answered (NaN when every caller gave up)."""
        return self.sync_run.summary()

    @property
    def sync_timeouts(self) -> int:
        """Sync uploads whose caller gave up after ``client_timeout_s`` (the server went on working)."""
        return sum(s.error == "timeout" for s in self.sync_run.samples)

    @property
    def processing_p50_s(self) -> float:
        return _p(self.processing_s, 50)

    @property
    def rounds_to_finish(self) -> tuple[float, float]:
        """(async, sync): how long all the work took, in rounds (each design's own processing p50).

        In rounds, not seconds: the two designs run one after the other, and on a busy machine
        the load can change in between; each run's own processing time is its yardstick.
        """
        return (
            self.async_all_done_s / _p(self.processing_s, 50),
            self.sync_all_done_s / _p(self.sync_processing_s, 50),
        )

    def _row(self, design: str, run: LoadRun, processing: Sequence[float], all_done_s: float) -> dict[str, object]:
        summary = run.summary()
        return {
            "design": design,
            "uploads": self.uploads,
            "answered": summary.count - summary.errors,
            "gave up": sum(x.error == "timeout" for x in run.samples),
            "upload p50 ms": _shown(summary.p50_ms),
            "upload p99 ms": summary.tail_cell(),  # the p99 of 8 uploads is the slowest: "max"
            "processing p50 s": _shown(_p(processing, 50), 2),
            "all processed after s": _shown(all_done_s, 2),
        }

    def as_rows(self) -> list[dict[str, object]]:
        """One row per design, for :func:`helpers.core.tables.show`."""
        return [
            self._row("async: 202, then events", self.async_run, self.processing_s, self.async_all_done_s),
            self._row("sync: 200 when processed", self.sync_run, self.sync_processing_s, self.sync_all_done_s),
        ]

    def as_row(self) -> dict[str, object]:
        """The headline numbers in one row."""
        return {
            "uploads": self.uploads,
            "async upload p99 ms": self.async_summary.tail_cell(),
            "sync upload p50 ms": _shown(self.sync_summary.p50_ms),
            "processing p50 s": _shown(self.processing_p50_s, 2),
            "sync callers gave up": self.sync_timeouts,
        }


async def upload_latency(  # noqa: PLR0913  learner-facing: lesson 07 passes these knobs
    broker: Broker,
    workdir: str | Path,
    *,
    uploads: int = 8,
    workers: int = 4,
    work: float = 1.0,
    client_timeout: float = 2.0,
    sync_timeout_rounds: float | None = None,
    rate: float = 50.0,
    image: bytes | None = None,
    timeout: float = 60.0,
) -> LatencyResult:
    """A burst of ``uploads`` (at ``rate``/s) against the async design, then against the sync one.

    Both designs get the same image, the same ``work`` and ``workers``; the sync callers
    give up after ``client_timeout`` seconds, as a browser or a gateway would. With
    ``sync_timeout_rounds``, their patience is that many *rounds* instead, a round being the
    processing time of one photo measured on the async run just before (``workers`` photos at
    once, as the sync server does them too): with 12 uploads and 2 workers (6 rounds), 2.5
    rounds answers the first round and never the last, whatever this machine's speed, and the
    figure is measured seconds before the run it applies to. If the sync run's own round
    differs from it by more than 1.6x, the machine's load changed in between: the burst runs
    again (at most 3 times) with the round it just measured.
    """
    photo = image if image is not None else images.sample_photo()
    folder = Path(workdir)
    async with reference_system(broker, folder / "async", workers=workers, work=work) as system:
        began = time.perf_counter()
        async_run = await _burst(
            lambda i: system.post(photo, f"user{i}", timeout=client_timeout), uploads, rate=rate, timeout=client_timeout
        )
        ids = _job_ids(async_run)
        if not await system.wait_finished(ids, timeout):
            states = system.upload_service.store.states()
            raise TimeoutError(f"the async pipeline did not finish {len(ids)} jobs within {timeout:g} s: {states}")
        stats = system.processor.stats
        processing = _seconds(stats.processing_s[j] for j in ids)
        all_done = max(stats.finished_at[j] for j in ids) - began if ids else 0.0
    if sync_timeout_rounds is not None and not processing:
        raise RuntimeError("no async upload was processed: there is no round to measure the callers' patience in")
    round_s = statistics.median(processing) if processing else 0.0
    for attempt in range(1, _SYNC_ATTEMPTS + 1):
        if sync_timeout_rounds is not None:
            client_timeout = round(sync_timeout_rounds * round_s, 1)
        sync_run, sync_processing, sync_all_done = await _sync_burst(
            folder / f"sync{attempt}", photo, uploads, workers=workers, work=work, rate=rate,
            client_timeout=client_timeout, timeout=timeout,
        )  # fmt: skip
        if sync_timeout_rounds is None or _same_load(round_s, statistics.median(sync_processing)):
            break
        round_s = statistics.median(sync_processing)  # the load changed since the yardstick: this run's round, again
    return LatencyResult(
        uploads,
        workers,
        work,
        client_timeout,
        async_run,
        sync_run,
        processing,
        sync_processing,
        all_done,
        sync_all_done,
        len(ids),
        attempt,
    )


_SYNC_ATTEMPTS = 3
"""How many times the sync burst may run when the machine's load changed under the yardstick."""


def _same_load(yardstick_s: float, measured_s: float) -> bool:
    """Whether a run's processing time per photo is within 1.6x of the yardstick it was given.

    Beyond that the machine's load changed between the two (a busy laptop, a test beside
    it), and a patience set in the yardstick's rounds is no longer that many rounds.
    """
    return yardstick_s / 1.6 <= measured_s <= yardstick_s * 1.6


async def _sync_burst(  # noqa: PLR0913  the burst's knobs, passed through from upload_latency
    folder: Path,
    photo: bytes,
    uploads: int,
    *,
    workers: int,
    work: float,
    rate: float,
    client_timeout: float,
    timeout: float,
) -> tuple[LoadRun, tuple[float, ...], float]:
    """One burst against a fresh sync service: the callers' samples, each photo's processing, the last done."""
    sync = await start_sync_pipeline(folder, workers=workers, work=work)
    try:
        began = time.perf_counter()
        run = await _burst(lambda i: sync.post(photo, f"user{i}", timeout=None), uploads, rate=rate, timeout=client_timeout)
        # the callers that gave up left work behind on the server: let it finish before the next experiment
        if not await until(lambda: sync.in_flight == 0, timeout):
            raise TimeoutError(f"the sync service still had {sync.in_flight} requests in flight after {timeout:g} s")
        return run, _seconds(sync.processing_s), max(sync.done_at, default=began) - began
    finally:
        await sync.stop()


# --- 2. head-of-line blocking ------------------------------------------------------------------


@dataclass(frozen=True)
class DesignRun:
    """One design's run of :func:`head_of_line`."""

    design: str
    workers: int
    mode: str
    completions: tuple[Completion, ...]

    @property
    def slow_done_s(self) -> float:
        return max(c.done_s for c in self.completions if c.slow)

    @property
    def normal_done_s(self) -> tuple[float, ...]:
        return tuple(sorted(c.done_s for c in self.completions if not c.slow))

    @property
    def normal_before_slow(self) -> int:
        """Normal images finished before the pathological one."""
        return sum(t < self.slow_done_s for t in self.normal_done_s)

    def as_row(self) -> dict[str, object]:
        normal = self.normal_done_s
        return {
            "design": self.design,
            "normal images": len(normal),
            "done before the slow one": self.normal_before_slow,
            "first normal done s": round(normal[0], 2) if normal else "-",
            "last normal done s": round(normal[-1], 2) if normal else "-",
            "slow one done s": round(self.slow_done_s, 2),
        }


@dataclass(frozen=True)
class HeadOfLineResult:
    """Both designs of :func:`head_of_line`: the single worker first, then the pool."""

    normal: int
    work: float
    slow_work: float
    runs: tuple[DesignRun, ...]

    def as_rows(self) -> list[dict[str, object]]:
        return [run.as_row() for run in self.runs]

    def as_row(self) -> dict[str, object]:
        return {run.design: f"{run.normal_before_slow}/{self.normal} before the slow one" for run in self.runs}


@dataclass(frozen=True)
class _SlowFirst:
    """The batch both designs get: one slow image, then ``normal`` normal ones."""

    normal: int
    work: float
    slow_work: float
    image: bytes
    timeout: float

    def work_of(self, job: Mapping[str, Any]) -> float:
        return self.slow_work if job.get("user") == SLOW_USER else self.work


async def _head_of_line_run(broker: Broker, workdir: Path, design: str, workers: int, batch: _SlowFirst) -> DesignRun:
    async with reference_system(broker, workdir, workers=workers, shared=False, work_of=batch.work_of) as system:
        completions = await slow_image_first(system, batch.image, normal=batch.normal, timeout=batch.timeout)
        return DesignRun(design, workers, system.processor.mode, completions)


async def head_of_line(  # noqa: PLR0913  learner-facing: lesson 07 passes these knobs
    broker: Broker,
    workdir: str | Path,
    *,
    normal: int = 6,
    work: float = 1.0,
    slow_work: float = 10.0,
    workers: int = 4,
    image: bytes | None = None,
    timeout: float = 120.0,
) -> HeadOfLineResult:
    """One pathological image (``slow_work``) then ``normal`` normal ones (``work``): one worker, then a pool.

    The pool is one subscription handing each event to the next *free* worker
    (``shared=False``): with shared subscriptions the broker deals events round robin,
    and the events dealt to the slow image's member would wait behind it.
    """
    photo = image if image is not None else images.sample_photo()
    batch = _SlowFirst(normal, work, slow_work, photo, timeout)
    runs = []
    for design, count in (("one worker", 1), (f"pool of {workers} workers", workers)):
        runs.append(await _head_of_line_run(broker, Path(workdir) / f"hol-{count}", design, count, batch))
    return HeadOfLineResult(normal, work, slow_work, tuple(runs))
