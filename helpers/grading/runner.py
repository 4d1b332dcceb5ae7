"""Grade submissions: run each notebook in a fresh kernel, then every check of its lab.

:func:`grade_file` grades one notebook, :func:`grade_many` a batch (``jobs`` at a time,
each in its own kernel; timing-critical checks run alone, see :class:`Gate`); both never
raise for a bad submission, they return an ``error``
:class:`~helpers.grading.report.Result` instead. The command line is
:mod:`helpers.grading.cli` (``python -m helpers grade``), the grader's side inside the
submission's kernel is :mod:`helpers.grading.kernel`, the sandbox the kernel runs in is
:mod:`helpers.grading.sandbox`. The grader talks to every kernel over ZeroMQ's IPC
transport (Unix sockets in the submission's scratch folder), never TCP.

How a submission is run (cells in order, each question's checks right after its
``check("qN")`` cell or where the lab as shipped has it, timeouts, restarts without a
cell that cannot be interrupted) and the trust model (what tampering the grader
resists, what the sandbox stops and what it does not) are described in CONTRIBUTING.md,
"How the grader works and its trust model".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from helpers.grading import kernel as grade_kernel
from helpers.grading import sandbox as boxes
from helpers.grading.checks import CHECKS_DIR, GRADING_ENV, Check, CheckResult, Checks, load_checks, load_module
from helpers.grading.report import Result

HELPERS_DIR = Path(__file__).resolve().parents[1]
ROOT = HELPERS_DIR.parent

CELL_TIMEOUT_S = 15.0
TOTAL_TIMEOUT_S = 120.0
MAX_RESTARTS = 2
CHECK_MARGIN_S = 2.0
"""A check cell may run this much longer than the check's own timeout before the grader interrupts it."""
PROBE_TIMEOUT_S = 3.0
BOOT_TIMEOUT_S = 30.0
STARTUP_TIMEOUT_S = 60.0
MAX_OUTPUT_BYTES = 1_000_000
"""What the grader keeps of one cell's output (the rest is dropped, with a note). Messages in
flight still cost memory while they are read: measured, a cell that prints 100 MB at once
raises the grader's peak to about 350 MB, 1 GB in 100 MB prints to about 1.8 GB. Not capped
further: ZeroMQ's MAXMSGSIZE drops the connection and IOPub never comes back."""
LABS_DIR = ROOT / "labs"
"""The labs as shipped: where a question's check("qN") cell belongs, when a submission deleted it."""

CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](?P<q>[^"']+)["']\s*\)""")
_TIMEOUT_REPLY = {"ename": "GraderTimeout", "evalue": "cell timed out", "traceback": []}


@dataclass
class Options:
    """How long things may take, and where the checks come from."""

    cell_timeout: float = CELL_TIMEOUT_S
    total_timeout: float = TOTAL_TIMEOUT_S
    max_restarts: int = MAX_RESTARTS
    checks_dir: Path = CHECKS_DIR
    kernel_name: str = "python3"
    check_timeout: float | None = None
    """Cap on each check's own time limit (None: what the check declares, 10 s by default)."""
    jobs: int = 1
    """Submissions graded at the same time, each in its own kernel (see :class:`Gate`)."""
    sandbox: str = "auto"
    """``bwrap``, ``setpriv``, ``none``, or ``auto`` (bwrap where it works, else setpriv as root): see
    :mod:`helpers.grading.sandbox`."""
    limits: boxes.Limits = field(default_factory=boxes.Limits)
    hide: tuple[Path, ...] = ()
    """Folders a sandboxed kernel must not see even if they lie inside one it needs (results, cwd)."""
    labs_dir: Path | None = LABS_DIR
    max_output: int = MAX_OUTPUT_BYTES
    alone: str = "timing"
    """Which checks run alone in a parallel batch: ``timing`` (those that say so) or ``all``."""
    seed: str | None = None
    """The checks' random inputs are drawn from this seed (same seed, same inputs, same messages);
    :func:`grade_many` makes a secret one per batch when None, and the JSON report records it."""

    def describe(self, sandbox: str | None = None) -> dict[str, Any]:
        """How the grader ran, for the JSON report."""
        return {
            "cell_timeout_s": self.cell_timeout,
            "total_timeout_s": self.total_timeout,
            "broker": broker_label(),
            "jobs": self.jobs,
            "alone": self.alone,
            "seed": self.seed,
            "sandbox": boxes.describe(sandbox or self.sandbox, self.limits),
        }


def broker_label() -> str:
    """Which broker the submissions' kernels use (MQTT_URL is inherited), password hidden."""
    url = os.environ.get("MQTT_URL")
    if not url:
        return "embedded broker"
    try:
        from helpers.core.broker import parse_mqtt_url

        return f"MQTT_URL={parse_mqtt_url(url).url}"
    except Exception:  # noqa: BLE001 - a bad URL is the submissions' problem to report
        return "MQTT_URL=(unparseable)"


# --------------------------------------------------------------------------- labs


def known_labs(checks_dir: Path = CHECKS_DIR) -> tuple[dict[str, Path], dict[str, str]]:
    """({lab id: checks file}, {checks file name: why it cannot be loaded})."""
    labs: dict[str, Path] = {}
    broken: dict[str, str] = {}
    for path in sorted(Path(checks_dir).glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            checks = getattr(load_module(path), "checks", None)
            if not isinstance(checks, Checks):
                raise ValueError("it defines no 'checks = Checks(...)'")
            labs[checks.lab] = path
        except Exception as exc:  # noqa: BLE001 - one broken checks file must not stop grading others
            broken[path.name] = f"{type(exc).__name__}: {exc}"
    return labs, broken


def identify_lab(nb: nbformat.NotebookNode, path: Path, labs: Iterable[str]) -> tuple[str | None, str]:
    """The lab a notebook belongs to: its metadata first, then its file name. (lab, how or why not)."""
    ids = sorted(labs, key=len, reverse=True)
    meta = nb.get("metadata", {}).get("course_lab", {})
    claimed = meta.get("id") if isinstance(meta, dict) else None
    if isinstance(claimed, str) and claimed in ids:
        return claimed, "metadata"
    for lab in ids:
        if lab in path.stem:
            return lab, "file name"
    known = ", ".join(sorted(ids)) or "none"
    said = f"its metadata names lab {claimed!r}, which is unknown, and " if claimed else ""
    return None, f"unknown lab: {said}its file name contains no lab id (known labs: {known})"


# --------------------------------------------------------------------------- the plan


@dataclass
class Step:
    """One thing to run: a notebook cell, or the checks of one question."""

    kind: str  # "cell" (index = notebook cell) or "question" (checks = indices into the lab's checks)
    index: int = -1
    question: str = ""
    checks: tuple[int, ...] = ()


def _normalized(source: str) -> str:
    return "\n".join(line.rstrip() for line in str(source).strip().splitlines())


def _code_sources(nb: nbformat.NotebookNode) -> list[tuple[int, str]]:
    return [(i, _normalized(c.get("source", ""))) for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"]


def _places(nb: nbformat.NotebookNode, reference: nbformat.NotebookNode | None, missing: list[str]) -> dict[str, int]:
    """Where each question whose check cell the learner deleted belongs: before this cell of ``nb``.

    The lab as shipped (``reference``) says what follows the question's check cell there;
    the first of those cells the submission still has unchanged (found by aligning the
    two notebooks' code cells) is where the checks run, so they run before the lab's
    clean-up cell stops the broker and the services they need.
    """
    if reference is None or not missing:
        return {}
    mine = [(i, src) for i, src in _code_sources(nb) if src]
    theirs = [src for _, src in _code_sources(reference) if src]
    matcher = difflib.SequenceMatcher(None, [src for _, src in mine], theirs, autojunk=False)
    same = {block.b + k: mine[block.a + k][0] for block in matcher.get_matching_blocks() for k in range(block.size)}
    places: dict[str, int] = {}
    for q in missing:
        spots = [j for j, src in enumerate(theirs) if any(m.group("q") == q for m in CHECK_CALL.finditer(src))]
        after = [same[j] for j in range(spots[0] + 1, len(theirs)) if j in same] if spots else []
        if after:
            places[q] = after[0]
    return places


def plan_steps(
    nb: nbformat.NotebookNode, checks: Sequence[Check], reference: nbformat.NotebookNode | None = None
) -> tuple[list[Step], list[str]]:
    """Notebook cells in order; each question's checks right after its first check("qN") cell.

    A check declared with ``after="qM"`` runs with question qM's checks (it needs code
    written for qM), and still counts for its own question. A question whose check cell
    was deleted runs where the lab as shipped (``reference``) has it: before the first
    cell that follows it there and is still in the submission (the lab's clean-up cell,
    for the last question); without a reference, after the last cell.
    """
    steps: list[Step] = []
    anchored: set[str] = set()
    questions = list(dict.fromkeys(c.question for c in checks))

    def anchor(c: Check) -> str:
        return c.after if c.after in questions else c.question

    def question(q: str) -> Step:
        return Step("question", question=q, checks=tuple(j for j, c in enumerate(checks) if anchor(c) == q))

    calls = {
        i: [m.group("q") for m in CHECK_CALL.finditer(c.get("source", ""))]
        for i, c in enumerate(nb.cells)
        if c.get("cell_type") == "code"
    }
    present = {q for qs in calls.values() for q in qs}
    missing = [q for q in questions if q not in present]
    places = _places(nb, reference, missing)
    notes = []
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        for q in missing:
            if places.get(q) == index and q not in anchored:
                anchored.add(q)
                steps.append(question(q))
                notes.append(f'no check("{q}") cell found: its checks ran before {_describe(nb, index)}, where the lab has it')
        steps.append(Step("cell", index))
        for q in calls[index]:
            if q in questions and q not in anchored:
                anchored.add(q)
                steps.append(question(q))
    last = [q for q in questions if q not in anchored]
    steps.extend(question(q) for q in last)
    notes += [f'no check("{q}") cell found: its checks ran after the last cell' for q in last]
    return steps, notes


def _describe(nb: nbformat.NotebookNode, index: int) -> str:
    code_cells = [i for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"]
    number = code_cells.index(index) + 1 if index in code_cells else index + 1
    lines = [ln.strip() for ln in nb.cells[index].get("source", "").splitlines()]
    first = next((ln for ln in lines if ln and not ln.startswith("# NBVAL")), "")
    return f"code cell {number} ({first[:40]!r})"


# --------------------------------------------------------------------------- the kernel


@dataclass
class _CellRun:
    status: str  # ok | error | timeout | dead
    ename: str = ""
    evalue: str = ""
    cell: Any = None


class Gate:
    """The batch's scheduler: many steps may run at once, an exclusive one runs alone.

    With ``--jobs N`` several kernels run side by side, and a check that measures time
    (a 200 ms deadline, "refusing is instant") could see another kernel's load. So a
    timing-critical check (one that says so: ``timing=True``, see :func:`timing_critical`;
    every check with ``--alone all``) runs exclusive: it waits until no other submission
    is in a step, and no new step starts until it ends. Everything else (learner cells,
    kernel start-ups, loading the checks, checks that only wait for an outcome with a
    deadline) shares the machine. Time spent waiting here is not charged to the
    submission's budget, so a queue never costs points.
    """

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._shared = 0
        self._exclusive = False
        self._queued = 0

    @contextlib.asynccontextmanager
    async def step(self, exclusive: bool) -> AsyncIterator[float]:
        """``async with gate.step(exclusive) as waited:`` run one step; ``waited`` s were spent queueing."""
        began = time.monotonic()
        async with self._cond:
            if exclusive:
                self._queued += 1
                try:
                    await self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
                finally:
                    self._queued -= 1
                self._exclusive = True
            else:
                await self._cond.wait_for(lambda: not self._exclusive and self._queued == 0)
                self._shared += 1
        try:
            yield time.monotonic() - began
        finally:
            async with self._cond:
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                self._cond.notify_all()


def timing_critical(check: Check, alone: str = "timing") -> bool:
    """Must this check run alone? ``alone="all"``: every check; else those that say ``timing=True``.

    A check says it with ``timing=True`` (a field of :class:`~helpers.grading.checks.Check`),
    or its function has ``timing = True``. A check is timing-critical when load on the
    machine can change its verdict: it asserts an upper bound on a duration measured
    while the learner's code runs (an instant refusal, a deadline kept, a 202 that does
    not wait). Waiting for an outcome with a generous deadline is not.
    """
    if alone == "all":
        return True
    return bool(getattr(check, "timing", False) or getattr(check.func, "timing", False))


def _kernel_manager(kernel_name: str, connection_file: Path, box: boxes.Sandbox | None) -> Any:
    """A kernel manager on ZeroMQ's IPC transport (Unix sockets next to the connection file).

    IPC rather than TCP: a sandboxed kernel has its own network, which the grader cannot
    reach, and nothing else on the machine can connect to the kernel's ports (ipykernel
    warns about unencrypted TCP; over IPC it has nothing to warn about). In ``bwrap`` mode
    the launch command is wrapped in the sandbox.
    """
    from jupyter_client.manager import AsyncKernelManager

    class Manager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            cmd: list[str] = super().format_kernel_cmd(extra_arguments)
            if box is None:
                return cmd
            box.give(Path(self.connection_file))  # written 0600 by us, read by the sandbox's uid
            # a SIGINT to the kernel's process group would hit bwrap first and end the sandbox:
            # interrupt by message, and ipykernel signals itself inside
            if self.kernel_spec is not None:
                self.kernel_spec.interrupt_mode = "message"
            return box.wrap(cmd)

    km = Manager(kernel_name=kernel_name, transport="ipc", connection_file=str(connection_file))
    return km


def _nb_client_class() -> type:
    from nbclient import NotebookClient

    class Client(NotebookClient):
        """nbclient, with our kernel manager and a cap on what a cell's output may cost."""

        make_km: Callable[[], Any] | None = None
        max_output = MAX_OUTPUT_BYTES
        keep = ""
        used = 0
        dropped = 0

        def create_kernel_manager(self) -> Any:
            if self.make_km is None:
                return super().create_kernel_manager()
            self.km = self.make_km()
            return self.km

        def output(self, outs: list[Any], msg: dict[str, Any], display_id: str | None, cell_index: int) -> Any:
            content = msg.get("content", {})
            if msg.get("msg_type") == "stream":
                size = len(content.get("text", ""))
            else:
                size = sum(len(str(v)) for v in content.get("data", {}).values()) + len(str(content.get("traceback", "")))
            if self.used + size > self.max_output:
                self.dropped += size
                text = content.get("text", "") if msg.get("msg_type") == "stream" else ""
                if not (self.keep and self.keep in text):
                    return None
                kept = "\n".join(ln for ln in text.splitlines() if ln.startswith(self.keep)) + "\n"
                msg = {**msg, "content": {**content, "text": kept}}  # the grader's result lines survive a flood
                size = len(kept)
            self.used += size
            return super().output(outs, msg, display_id, cell_index)

    return Client


class _Kernel:
    """One kernel process and the cells run in it."""

    def __init__(
        self,
        nb: nbformat.NotebookNode,
        options: Options,
        cwd: str,
        env: dict[str, str],
        *,
        connection_file: Path | None = None,
        box: boxes.Sandbox | None = None,
        gate: Callable[[bool], contextlib.AbstractAsyncContextManager[float]] | None = None,
    ) -> None:
        self.env = env
        self.client = _nb_client_class()(
            nb,
            kernel_name=options.kernel_name,
            timeout=math.ceil(options.cell_timeout),
            startup_timeout=int(STARTUP_TIMEOUT_S),
            allow_errors=True,
            interrupt_on_timeout=True,
            error_on_timeout=_TIMEOUT_REPLY,
            iopub_timeout=2,
            record_timing=False,
            shutdown_kernel="immediate",
            resources={"metadata": {"path": cwd}},
        )
        if connection_file is not None:
            self.client.make_km = lambda: _kernel_manager(options.kernel_name, connection_file, box)
        self.client.max_output = options.max_output
        self.gate = gate
        self.truncated: list[int] = []
        """Indices of cells whose output went past the cap."""
        self._reply: dict[str, Any] = {}
        self.alive = True
        self.client.on_cell_executed = self._on_executed

    def _on_executed(self, cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        self._reply = execute_reply.get("content", {})

    @contextlib.asynccontextmanager
    async def setup(self) -> AsyncIterator[None]:
        """``async with kernel.setup():`` start the kernel (and always shut it down)."""
        async with contextlib.AsyncExitStack() as stack:
            if self.gate is not None:
                async with self.gate(False):  # starting a kernel is CPU work: not while a timing check runs
                    await stack.enter_async_context(self._start())
            else:
                await stack.enter_async_context(self._start())
            yield

    def _start(self) -> Any:
        return self.client.async_setup_kernel(env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def _is_alive(self) -> bool:
        from jupyter_client.asynchronous import AsyncKernelClient

        kc = self.client.kc
        return isinstance(kc, AsyncKernelClient) and await kc.is_alive()

    async def run(
        self, cell: Any, index: int, timeout: float, *, trusted: bool = False, keep: str = "", exclusive: bool = False
    ) -> _CellRun:
        """Execute one cell; trusted (grader) cells stay out of the kernel's history (In/Out).

        ``keep``: lines starting with it are kept even past the output cap (the grader's
        result lines); ``exclusive``: run while no other submission runs a step (:class:`Gate`).
        """
        if self.gate is None:
            return await self._run(cell, index, timeout, trusted, keep)
        async with self.gate(exclusive):
            return await self._run(cell, index, timeout, trusted, keep)

    async def _run(self, cell: Any, index: int, timeout: float, trusted: bool, keep: str) -> _CellRun:
        from nbclient.exceptions import DeadKernelError

        self.client.timeout = max(1, math.ceil(timeout))
        self.client.keep, self.client.used, self.client.dropped = keep, 0, 0
        self._reply = {}
        try:
            await self.client.async_execute_cell(cell, index, store_history=not trusted)
        except DeadKernelError:
            self.alive = False
            return _CellRun("dead", cell=cell)
        except Exception as exc:  # noqa: BLE001 - a kernel/channel failure is an outcome, not a crash
            self.alive = await self._is_alive()
            return _CellRun("error" if self.alive else "dead", type(exc).__name__, str(exc), cell)
        finally:
            if self.client.dropped and not trusted:
                self.truncated.append(index)
        content = self._reply
        if content.get("ename") == _TIMEOUT_REPLY["ename"]:
            return _CellRun("timeout", cell=cell)
        if content.get("status") == "error":
            return _CellRun("error", content.get("ename", ""), content.get("evalue", ""), cell)
        return _CellRun("ok", cell=cell)

    async def run_source(self, source: str, timeout: float, *, keep: str = "", exclusive: bool = False) -> _CellRun:
        return await self.run(nbformat.v4.new_code_cell(source), 0, timeout, trusted=True, keep=keep, exclusive=exclusive)

    async def responsive(self) -> bool:
        """After a timeout: did the interrupt work, i.e. does the kernel answer a trivial cell?"""
        return (await self.run_source("pass", PROBE_TIMEOUT_S)).status == "ok"


def _tagged(cell: Any, nonce: str) -> list[dict[str, Any]]:
    """The JSON payloads of this run's nonce-tagged lines in a cell's stdout."""
    found = []
    for output in cell.get("outputs", []):
        if output.get("output_type") != "stream" or output.get("name") != "stdout":
            continue
        for line in output.get("text", "").splitlines():
            if line.startswith(nonce + " "):
                try:
                    payload = json.loads(line[len(nonce) + 1 :])
                except ValueError:
                    continue
                if isinstance(payload, dict):
                    found.append(payload)
    return found


# --------------------------------------------------------------------------- one submission


class _Grading:
    """The state of one submission across kernel restarts."""

    def __init__(
        self,
        nb: nbformat.NotebookNode,
        lab: str,
        checks: list[Check],
        options: Options,
        reference: nbformat.NotebookNode | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.nb, self.lab, self.checks, self.options = nb, lab, checks, options
        self.steps, self.notes = plan_steps(nb, checks, reference)
        self.gate = gate or Gate()
        self.guard: asyncio.Timeout | None = None
        """The overall time guard of grade_file: moved on by the time spent queueing at the gate."""
        self.box: boxes.Sandbox | None = None
        self.scratch: Path | None = None
        self.kernel_checks_dir: Path | None = None
        """Where the kernel loads the checks from, when not from options.checks_dir (the sandbox's copy)."""
        self.markdown = [str(c.get("source", "")) for c in nb.cells if c.get("cell_type") == "markdown"]
        """The submission's Markdown cells, as read from its file: what Context.markdown() gives the checks."""
        self.results: dict[int, CheckResult] = {}
        self.flags: list[str] = []
        self.skip: set[int] = set()
        self.cell_notes: dict[int, str] = {}
        self.deadline = time.monotonic() + options.total_timeout
        self.out_of_time = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def fail(self, j: int, reason: str) -> None:
        """Check ``j`` scores 0, for ``reason``."""
        self.results[j] = CheckResult.failed(self.checks[j], reason)

    @contextlib.asynccontextmanager
    async def _step(self, exclusive: bool) -> AsyncIterator[float]:
        """One step through the batch's gate; queueing time extends this submission's budget."""
        async with self.gate.step(exclusive) as waited:
            self.deadline += waited
            if self.guard is not None and self.guard.when() is not None:
                self.guard.reschedule(self.guard.when() + waited)  # type: ignore[operator]
            yield waited

    async def run(self, cwd: str, env: dict[str, str]) -> None:
        for attempt in range(self.options.max_restarts + 1):
            connection = Path(self.scratch or cwd) / "conn" / f"kernel-{attempt}.json"
            connection.parent.mkdir(parents=True, exist_ok=True)
            kernel = _Kernel(self.nb, self.options, cwd, env, connection_file=connection, box=self.box, gate=self._step)
            async with kernel.setup():
                restart = await self._attempt(kernel)
            for index in kernel.truncated:
                if index not in self.cell_notes:
                    cap = self.options.max_output
                    where = _describe(self.nb, index)
                    self.cell_notes[index] = f"{where} printed more than {cap:,} bytes: the grader kept at most {cap:,} of it"
            if not restart or self.out_of_time:
                break
            if attempt == self.options.max_restarts:
                self.notes.append(f"gave up after {attempt + 1} kernel restarts")
        if self.out_of_time:
            self.notes.append(f"the submission used up its {self.options.total_timeout:g} s budget; what had not run scores 0")
        for j in range(len(self.checks)):
            if j not in self.results:
                why = "time budget used up" if self.out_of_time else "the notebook could not be run to this point"
                self.fail(j, f"not run: {why}")
        self.notes[:0] = [self.cell_notes[i] for i in sorted(self.cell_notes)]

    async def _attempt(self, kernel: _Kernel) -> bool:
        """Run the plan once. True when the kernel has to be restarted."""
        for step in self.steps:
            if self.remaining() <= 1:
                self.out_of_time = True
                return False
            if step.kind == "cell":
                restart = await self._cell(kernel, step.index)
            else:
                restart = await self._question(kernel, step)
            if restart:
                return True
        return False

    async def _cell(self, kernel: _Kernel, index: int) -> bool:
        """One learner cell. True when the kernel is stuck or dead (restart without this cell)."""
        if index in self.skip:
            return False
        where = _describe(self.nb, index)
        limit = min(self.options.cell_timeout, self.remaining())
        out = await kernel.run(self.nb.cells[index], index, limit)
        if out.status == "error":
            self.cell_notes.setdefault(index, f"{where} raised {out.ename}: {out.evalue}"[:300] + self._limit_hit(out))
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

    def _limit_hit(self, out: _CellRun) -> str:
        """Which sandbox limit an error most likely hit ('' when none or no sandbox)."""
        if self.box is None:
            return ""
        lim = self.box.limits
        if out.ename == "MemoryError":
            return f" (the sandbox's memory limit: {lim.memory_bytes / boxes.GIB:g} GiB of address space)"
        if out.ename == "BlockingIOError" or "Resource temporarily unavailable" in out.evalue:
            return f" (the sandbox's limit: {lim.processes} processes and threads)"
        if "File too large" in out.evalue:
            return f" (the sandbox's limit: files of at most {lim.file_bytes // boxes.MIB} MiB)"
        return ""

    async def _question(self, kernel: _Kernel, step: Step) -> bool:
        """Every check of one question, from a fresh session with its own nonce."""
        todo = [j for j in step.checks if j not in self.results]
        if not todo:
            return False
        nonce = secrets.token_hex(16)  # new for every question: a nonce seen by later cells is already dead
        checks_dir = str(self.kernel_checks_dir or self.options.checks_dir)
        source = grade_kernel.boot_source(nonce, self.lab, str(HELPERS_DIR), checks_dir, self.markdown, self.options.seed)
        out = await kernel.run_source(source, min(BOOT_TIMEOUT_S, self.remaining()), keep=nonce)
        boot = [p for p in _tagged(out.cell, nonce) if p.get("boot") == "ok"]
        if not boot or boot[0].get("checks") != [c.name for c in self.checks]:
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

    async def _check(self, kernel: _Kernel, nonce: str, j: int) -> bool:
        """Check ``j`` in the session of ``nonce``. True when the kernel has to be restarted."""
        check = self.checks[j]
        own = check.timeout if self.options.check_timeout is None else min(check.timeout, self.options.check_timeout)
        limit = max(1.0, min(own + CHECK_MARGIN_S, self.remaining()))
        out = await kernel.run_source(
            grade_kernel.run_source(nonce, j, own), limit, keep=nonce, exclusive=timing_critical(check, self.options.alone)
        )
        payloads = [p for p in _tagged(out.cell, nonce) if p.get("index") == j]
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


def _clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A well-formed copy with the submission's code and text only: stored outputs count for
    nothing, and odd cells (no source, a list source, unknown keys) cannot trip the runner."""
    cells = []
    for cell in nb.get("cells", []):
        if not isinstance(cell, dict):
            continue
        source = cell.get("source", "")
        source = "".join(map(str, source)) if isinstance(source, list) else str(source or "")
        make = nbformat.v4.new_code_cell if cell.get("cell_type") == "code" else nbformat.v4.new_markdown_cell
        cells.append(make(source))
    return nbformat.v4.new_notebook(cells=cells)


def _error(path: Path, message: str, lab: str = "", started: float | None = None, *, sandbox: str = "") -> Result:
    took = round(time.monotonic() - started, 2) if started else 0.0
    return Result(str(path), lab=lab, status="error", error=message, seconds=took, sandbox=sandbox)


def _reference(lab: str, labs_dir: Path | None) -> nbformat.NotebookNode | None:
    """The lab as shipped, if there is one: where its check cells and clean-up cell are."""
    path = Path(labs_dir) / f"{lab}.ipynb" if labs_dir else None
    if path is None or not path.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 - no reference: checks of a deleted check cell run at the end, as before
        return None


async def grade_file(
    path: Path | str,
    options: Options | None = None,
    labs: dict[str, Path] | None = None,
    *,
    gate: Gate | None = None,
    sandbox: str | None = None,
    lab: str | None = None,
) -> Result:
    """Grade one submission. Never raises for a bad submission: problems become an error row.

    ``lab``: the lab this submission must be (a platform's assignment): a notebook that says
    it is another lab is an error row, not graded against that lab's checks; one that says
    nothing (no metadata, no lab id in its name) is graded as ``lab``.

    ``sandbox``: the mode already resolved by the caller (``bwrap``, ``setpriv`` or ``none``); by default
    ``options.sandbox`` is resolved here (:class:`~helpers.grading.sandbox.SandboxError` when
    ``bwrap`` was asked for and cannot work: that is the grader's setup, not the submission).
    """
    options = options or Options()
    mode = sandbox or boxes.resolve(options.sandbox)[0]
    path = Path(path)
    started = time.monotonic()
    if labs is None:
        labs, _ = known_labs(options.checks_dir)
    if not path.is_file():
        return _error(path, "no such file", started=started, sandbox=mode)
    try:
        with warnings.catch_warnings():  # a learner's odd notebook is graded, not lectured about
            warnings.simplefilter("ignore")
            nb = nbformat.read(path, as_version=4)
        if not isinstance(nb.get("cells"), list):
            raise ValueError("it has no cells")
    except Exception as exc:  # noqa: BLE001 - anything unreadable is "not a notebook"
        return _error(path, f"not a Jupyter notebook: {type(exc).__name__}: {str(exc)[:160]}", started=started, sandbox=mode)
    expected, (lab, how) = lab, identify_lab(nb, path, labs)
    if expected is not None and lab not in (None, expected):
        why = f"wrong lab: this notebook is lab {lab} (by its {how}), and this assignment is lab {expected}"
        return _error(path, why, started=started, sandbox=mode)
    lab = lab or expected
    if lab is None:
        return _error(path, how, started=started, sandbox=mode)
    try:
        checks = list(load_checks(lab, options.checks_dir))
    except Exception as exc:  # noqa: BLE001 - a broken checks file is an error row, and the batch goes on
        return _error(path, f"the checks of lab {lab} cannot be loaded: {exc}", lab, started, sandbox=mode)
    grading = _Grading(_clean(nb), lab, checks, options, _reference(lab, options.labs_dir), gate)
    env = {**os.environ, GRADING_ENV: "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    scratch = Path(tempfile.mkdtemp(prefix="grade-"))
    grading.scratch = scratch
    cwd = scratch / "work"
    cwd.mkdir()
    if mode != "none":
        hide = [*options.hide, path.resolve().parent, Path.cwd(), Path.home()]
        # the checks are copied out of the grader's (perhaps private) folder to one the sandbox's
        # uid can read and not change, bound read-only next to the scratch folder
        grading.kernel_checks_dir = boxes.readable_copy(Path(options.checks_dir), Path(f"{scratch}-checks"))
        grading.box = boxes.make(mode, scratch, options.limits, extra_ro=[grading.kernel_checks_dir], hide=hide)
    if grading.box is not None:
        grading.box.prepare()
        env = grading.box.env(env)
    budget = options.total_timeout + STARTUP_TIMEOUT_S * (options.max_restarts + 1)
    try:
        async with asyncio.timeout(budget) as guard:
            grading.guard = guard
            await grading.run(str(cwd), env)
    except Exception as exc:  # noqa: BLE001 - the batch goes on
        if not grading.results:
            return _error(path, f"the grader could not run it: {type(exc).__name__}: {exc}", lab, started, sandbox=mode)
        grading.notes.append(f"grading stopped early: {type(exc).__name__}: {exc}")
        for j in range(len(checks)):
            if j not in grading.results:
                grading.fail(j, "not run: grading stopped early")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(f"{scratch}-checks", ignore_errors=True)
    rows = [grading.results[j] for j in range(len(checks))]
    took = round(time.monotonic() - started, 2)
    return Result.graded(str(path), lab, rows, notes=grading.notes, flags=grading.flags, seconds=took, sandbox=mode)


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders become their *.ipynb files (sorted)."""
    found: list[Path] = []
    for item in paths:
        p = Path(item)
        found.extend(sorted(p.glob("*.ipynb")) if p.is_dir() else [p])
    return found


async def grade_many(
    paths: Iterable[str | Path], options: Options | None = None, progress: Callable[[Result], Any] | None = None
) -> list[Result]:
    """Grade submissions, ``options.jobs`` at a time, each in its own kernel; never stops early.

    Results come back in the order of ``paths``; ``progress`` is called as each one is done
    (in the order they finish). Timing-critical checks run alone (:class:`Gate`), so a
    parallel batch gives the grades a serial one gives.
    """
    options = options or Options()
    mode, _ = boxes.resolve(options.sandbox)
    labs, _ = known_labs(options.checks_dir)
    files = expand(paths)
    others = tuple({p.resolve().parent for p in files})
    options = dataclasses.replace(options, hide=(*options.hide, *others), seed=options.seed or secrets.token_hex(8))
    gate = Gate()
    slots = asyncio.Semaphore(max(1, options.jobs))
    results: list[Result | None] = [None] * len(files)

    async def one(i: int, path: Path) -> None:
        async with slots:
            try:
                result = await grade_file(path, options, labs, gate=gate, sandbox=mode)
            except Exception as exc:  # noqa: BLE001 - belt and braces: the batch goes on
                result = _error(Path(path), f"the grader failed on it: {type(exc).__name__}: {exc}", sandbox=mode)
        results[i] = result
        if progress is not None:
            progress(result)

    await asyncio.gather(*(one(i, p) for i, p in enumerate(files)))
    return [r for r in results if r is not None]
