"""Executing one submission: its steps in a kernel, with caps on time and output, across restarts.

The execute stage of the runner's pipeline (:mod:`helpers.grading.runner`). It gets what
the earlier stages decided, all frozen: the :class:`Submission` (cleaned notebook, lab,
checks, steps), the batch's :class:`~helpers.grading.plan.GradingPlan`, and the
:class:`~helpers.grading.kernels.Workspace` (scratch folder, sandbox, environment); it
fills in one result per check and the notes that say what went wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nbformat

from helpers.grading import kernel as grade_kernel
from helpers.grading import sandbox as boxes
from helpers.grading.checks import Check, CheckResult
from helpers.grading.kernels import (
    PROBE_TIMEOUT_S,
    STARTUP_TIMEOUT_S,
    CellRun,
    Gate,
    Kernel,
    Workspace,
    tagged,
    timing_critical,
)
from helpers.grading.plan import HELPERS_DIR, GradingPlan
from helpers.grading.steps import Step, describe_cell

CHECK_MARGIN_S = 2.0
"""A check cell may run this much longer than the check's own timeout before the grader interrupts it."""
BOOT_TIMEOUT_S = 30.0
"""How long loading a fresh copy of helpers and the checks into the kernel may take."""


@dataclass(frozen=True)
class Submission:
    """What the plan stage decided about one notebook: what runs, in which order, judged by what."""

    path: Path
    nb: nbformat.NotebookNode
    """The cleaned notebook: the submission's code and text, no stored outputs."""
    lab: str
    checks: tuple[Check, ...]
    steps: tuple[Step, ...]
    notes: tuple[str, ...]
    """What the plan had to decide (a deleted check cell: where its checks run)."""
    markdown: tuple[str, ...]
    """The Markdown cells as read from the file: what ``Context.markdown()`` gives the checks."""
    setup_cell: int | None = None
    """The first code cell, when it is the lab's setup cell as shipped (the course's code, unchanged)."""


class Execution:
    """The state of one submission's run across kernel restarts: results, notes, the time left."""

    def __init__(self, sub: Submission, plan: GradingPlan, ws: Workspace, gate: Gate, deadline: float) -> None:
        self.sub, self.plan, self.ws, self.gate = sub, plan, ws, gate
        self.deadline = deadline
        """``time.monotonic()`` by which the submission's own budget is used up (moved on by queueing)."""
        self.results: dict[int, CheckResult] = {}
        self.notes: list[str] = list(sub.notes)
        self.flags: list[str] = []
        self.skip: set[int] = set()
        self.cell_notes: dict[int, str] = {}
        self.out_of_time = False
        self.setup_failed = ""
        """What the lab's own setup cell raised ('' when it ran): nothing the checks found then is a grade."""
        self._guard: asyncio.Timeout | None = None
        """The bound on the whole run (see :meth:`run`): moved on by the time spent queueing at the gate."""

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def fail(self, j: int, reason: str) -> None:
        """Check ``j`` scores 0, for ``reason``."""
        self.results[j] = CheckResult.failed(self.sub.checks[j], reason)

    @contextlib.asynccontextmanager
    async def _step(self, exclusive: bool) -> AsyncIterator[float]:
        """One step through the batch's gate; queueing time extends this submission's budget."""
        async with self.gate.step(exclusive) as waited:
            self.deadline += waited
            if self._guard is not None and self._guard.when() is not None:
                self._guard.reschedule(self._guard.when() + waited)  # type: ignore[operator]
            yield waited

    async def run(self) -> None:
        """Run the submission's steps, restarting the kernel without a cell that cannot be stopped.

        The whole run is bounded (the submission's budget plus each kernel's start-up), and
        that bound moves on by the time spent queueing at the batch's gate.
        """
        budget = self.plan.total_timeout + STARTUP_TIMEOUT_S * (self.plan.max_restarts + 1)
        async with asyncio.timeout(budget) as self._guard:
            await self._restarts()

    async def _restarts(self) -> None:
        ws = self.ws
        for attempt in range(self.plan.max_restarts + 1):
            connection = ws.scratch / "conn" / f"kernel-{attempt}.json"
            connection.parent.mkdir(parents=True, exist_ok=True)
            kernel = Kernel(self.sub.nb, self.plan, ws, connection, gate=self._step)
            async with kernel.setup():
                restart = await self._attempt(kernel)
            for index in kernel.truncated:
                if index not in self.cell_notes:
                    cap = self.plan.max_output
                    where = describe_cell(self.sub.nb, index)
                    self.cell_notes[index] = f"{where} printed more than {cap:,} bytes: the grader kept at most {cap:,} of it"
            if not restart or self.out_of_time:
                break
            if attempt == self.plan.max_restarts:
                self.notes.append(f"gave up after {attempt + 1} kernel restarts")
        if self.out_of_time:
            self.notes.append(f"the submission used up its {self.plan.total_timeout:g} s budget; what had not run scores 0")
        for j in range(len(self.sub.checks)):
            if j not in self.results:
                why = "time budget used up" if self.out_of_time else "the notebook could not be run to this point"
                self.fail(j, f"not run: {why}")
        self.notes[:0] = [self.cell_notes[i] for i in sorted(self.cell_notes)]

    async def _attempt(self, kernel: Kernel) -> bool:
        """Run the plan once. True when the kernel has to be restarted."""
        for step in self.sub.steps:
            if self.remaining() <= 1:
                self.out_of_time = True
                return False
            if step.kind == "cell":
                restart = await self._cell(kernel, step.index)
                if self.setup_failed:
                    return False  # the course's own setup failed: nothing after it would be a grade
            else:
                restart = await self._question(kernel, step)
            if restart:
                return True
        return False

    async def _cell(self, kernel: Kernel, index: int) -> bool:
        """One learner cell. True when the kernel is stuck or dead (restart without this cell)."""
        if index in self.skip:
            return False
        where = describe_cell(self.sub.nb, index)
        limit = min(self.plan.cell_timeout, self.remaining())
        out = await kernel.run(self.sub.nb.cells[index], index, limit)
        if out.status == "error":
            self.cell_notes.setdefault(index, f"{where} raised {out.ename}: {out.evalue}"[:300] + self._limit_hit(out))
            if index == self.sub.setup_cell and not self.setup_failed:
                self.setup_failed = f"{where} raised {out.ename}: {out.evalue}"[:300]
        elif out.status == "timeout":
            if await kernel.responsive():
                self.cell_notes[index] = f"{where} ran past {limit:g} s and was interrupted"
                return False
            self.skip.add(index)
            self.cell_notes[index] = (
                f"{where} ran past {limit:g} s and ignored the interrupt (an endless loop?): the notebook was re-run without it"
            )
            return True
        elif out.status == "dead":
            self.skip.add(index)
            self.cell_notes[index] = f"the kernel died in {where}: the notebook was re-run without it"
            return True
        return False

    def _limit_hit(self, out: CellRun) -> str:
        """Which sandbox limit an error most likely hit ('' when none or no sandbox)."""
        if self.ws.box is None:
            return ""
        lim = self.ws.box.limits
        if out.ename == "MemoryError":
            return f" (the sandbox's memory limit: {lim.memory_bytes / boxes.GIB:g} GiB of address space)"
        if out.ename == "BlockingIOError" or "Resource temporarily unavailable" in out.evalue:
            return f" (the sandbox's limit: {lim.processes} processes and threads)"
        if "File too large" in out.evalue:
            return f" (the sandbox's limit: files of at most {lim.file_bytes // boxes.MIB} MiB)"
        return ""

    async def _question(self, kernel: Kernel, step: Step) -> bool:
        """Every check of one question, from a fresh session with its own nonce."""
        todo = [j for j in step.checks if j not in self.results]
        if not todo:
            return False
        nonce = secrets.token_hex(16)  # new for every question: a nonce seen by later cells is already dead
        checks_dir = str(self.ws.checks_dir)
        given = grade_kernel.Boot(nonce, self.sub.lab, checks_dir, self.sub.markdown, self.plan.seed)
        source = grade_kernel.boot_source(given, str(HELPERS_DIR))
        out = await kernel.run_source(source, min(BOOT_TIMEOUT_S, self.remaining()), keep=nonce)
        boot = [p for p in tagged(out.cell, nonce) if p.get("boot") == "ok"]
        if not boot or boot[0].get("checks") != [c.name for c in self.sub.checks]:
            if out.status == "dead" or (out.status == "timeout" and not await kernel.responsive()):
                return True
            reason = f"{out.ename}: {out.evalue}" if out.ename else "the checks did not load"
            for j in todo:
                self.fail(j, f"the grader could not start the checks ({reason})")
            return False
        try:
            for j in todo:
                if await self._check(kernel, nonce, j):
                    return True
                if self.remaining() <= 1:
                    return False
        finally:
            if kernel.alive:
                await kernel.run_source(grade_kernel.close_source(nonce), PROBE_TIMEOUT_S, keep=nonce)
        return False

    async def _check(self, kernel: Kernel, nonce: str, j: int) -> bool:
        """Check ``j`` in the session of ``nonce``. True when the kernel has to be restarted."""
        check = self.sub.checks[j]
        own = self.plan.check_limit(check)
        limit = max(1.0, min(own + CHECK_MARGIN_S, self.remaining()))
        out = await kernel.run_source(
            grade_kernel.run_source(nonce, j, own), limit, keep=nonce, exclusive=timing_critical(check, self.plan.alone)
        )
        payloads = [p for p in tagged(out.cell, nonce) if p.get("index") == j]
        if payloads:
            try:
                self.results[j] = CheckResult.from_dict(payloads[0].get("result"))
            except (TypeError, ValueError) as exc:
                self.fail(j, f"the grader could not read the check's result ({exc})")
            flags = payloads[0].get("flags")
            for flag in map(str, flags if isinstance(flags, list) else []):
                if flag not in self.flags:
                    self.flags.append(flag)
        elif out.status == "timeout":
            self.fail(
                j,
                f"did not finish within {limit:g} s (an endless loop, or a blocking call such as time.sleep() "
                "or requests in async code?)",
            )
            if not await kernel.responsive():
                self.notes.append(f"check {check.name} hung the kernel: it was restarted")
                return True
        elif out.status == "dead":
            self.fail(j, "the kernel died while this check ran")
            return True
        else:
            self.fail(j, f"the check could not run ({out.ename}: {out.evalue})")
        return False
