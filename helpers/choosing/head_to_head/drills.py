"""Lesson 05's runs: one scenario on one design (:func:`run_design`), or on both with the same workload (:func:`compare`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping

from helpers.choosing.head_to_head.designs import AsyncHandler, Design, SyncHandler, start_async, start_sync
from helpers.choosing.head_to_head.results import Result
from helpers.choosing.head_to_head.workload import Scenario, Workload, place_orders
from helpers.core.broker import Broker
from helpers.core.waiting import until


async def run_design(design: Design, scenario: Scenario, workload: Workload, *, done_timeout: float = 15.0) -> Result:
    """Send the workload to ``design`` while ``scenario`` happens; wait until the accepted work is done.

    Every order the Order service accepted is waited for (up to ``done_timeout`` seconds
    after the last send); an order still not done then counts as not done.
    """
    loop = asyncio.get_running_loop()
    window: list[float] = []
    if scenario.slow is not None:
        design.faults[scenario.slow].latency = scenario.slow_by_s

    async def outage(service: str) -> None:
        await asyncio.sleep(scenario.down_at_s)  # a scripted clock: the outage starts at a set time...
        await design.take_down(service)
        window.append(loop.time())
        await asyncio.sleep(scenario.down_for_s)  # ...and lasts a set time
        await design.bring_back(service)
        window.append(loop.time())

    try:
        async with asyncio.TaskGroup() as group:
            if scenario.down is not None:
                group.create_task(outage(scenario.down))
            loading = group.create_task(place_orders(design.url, workload))
        run, ids = loading.result()
        accepted = [oid for oid, s in zip(ids, run.samples, strict=True) if s.ok]
        await until(lambda: all(design.effects.done_at(o) is not None for o in accepted) or bool(design.crashed()), done_timeout)
        design.raise_crashed()
    finally:
        for faults in design.faults.values():
            faults.reset()
    down = (window[0], window[1]) if len(window) == 2 else None
    received = dict(design.received)
    return Result(
        design.kind, scenario, workload, run, ids, design.effects, received, down, design.redelivered, design.in_progress_at_kill
    )


async def compare(  # noqa: PLR0913  lesson 05 passes these knobs by keyword
    broker: Broker,
    sync_handler: SyncHandler,
    async_handler: AsyncHandler,
    scenario: Scenario,
    workload: Workload,
    *,
    work: Mapping[str, float] | None = None,
    workers: int = 16,
    topic: str = "h2h",
) -> dict[str, Result]:
    """Run ``scenario`` on a fresh sync design, then on a fresh async design, with the same workload.

    Returns ``{"sync": result, "async": result}``; each design is stopped after its run.
    """
    results: dict[str, Result] = {}
    sync = await start_sync(sync_handler, work=work)
    try:
        results["sync"] = await run_design(sync, scenario, workload)
    finally:
        await sync.stop()
    design = await start_async(broker, async_handler, f"{topic}/{uuid.uuid4().hex[:8]}/orders", work=work, workers=workers)
    try:
        results["async"] = await run_design(design, scenario, workload)
    finally:
        await design.stop()
    return results


def flatten(results: Iterable[Result | Mapping[str, Result]]) -> list[Result]:
    """Results as one list, whether given one by one or as :func:`compare`'s pairs."""
    flat: list[Result] = []
    for item in results:
        flat.extend(item.values() if isinstance(item, Mapping) else [item])
    return flat


def summary_rows(results: Iterable[Result | Mapping[str, Result]]) -> list[dict[str, object]]:
    """The summary table, one row per design and scenario, computed from the results (for ``show``)."""
    return [r.as_row() for r in flatten(results)]
