"""Grade submissions: run each notebook in a fresh kernel, then every check of its lab.

:func:`grade_file` grades one notebook, :func:`grade_many` a batch (one after another:
timing checks need the CPU); both never raise for a bad submission, they return an
``error`` :class:`~helpers.grading.report.Result` instead. The command line is
:mod:`helpers.grading.cli` (``python -m helpers grade``), the grader's side inside the
submission's kernel is :mod:`helpers.grading.kernel`.

How a submission is run (cells in order, each question's checks right after its
``check("qN")`` cell, timeouts, restarts without a cell that cannot be interrupted) and
the trust model (what tampering the grader resists, and why it is NOT a sandbox) are
described in CONTRIBUTING.md, "How the grader works and its trust model".
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import secrets
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from helpers.grading import kernel as grade_kernel
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

    def describe(self) -> dict[str, Any]:
        """How the grader ran, for the JSON report."""
        return {"cell_timeout_s": self.cell_timeout, "total_timeout_s": self.total_timeout, "broker": broker_label()}


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


def plan_steps(nb: nbformat.NotebookNode, checks: Sequence[Check]) -> tuple[list[Step], list[str]]:
    """Notebook cells in order; each question's checks right after its first check("qN") cell.

    A check declared with ``after="qM"`` runs with question qM's checks (it needs code
    written for qM), and still counts for its own question.
    """
    steps: list[Step] = []
    anchored: set[str] = set()
    questions = list(dict.fromkeys(c.question for c in checks))

    def anchor(c: Check) -> str:
        return c.after if c.after in questions else c.question

    def question(q: str) -> Step:
        return Step("question", question=q, checks=tuple(j for j, c in enumerate(checks) if anchor(c) == q))

    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        steps.append(Step("cell", index))
        for match in CHECK_CALL.finditer(cell.get("source", "")):
            q = match.group("q")
            if q in questions and q not in anchored:
                anchored.add(q)
                steps.append(question(q))
    missing = [q for q in questions if q not in anchored]
    steps.extend(question(q) for q in missing)
    notes = [f'no check("{q}") cell found: its checks ran after the last cell' for q in missing]
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


class _Kernel:
    """One kernel process and the cells run in it."""

    def __init__(self, nb: nbformat.NotebookNode, options: Options, cwd: str, env: dict[str, str]) -> None:
        from nbclient import NotebookClient

        self.env = env
        self.client = NotebookClient(
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
        self._reply: dict[str, Any] = {}
        self.alive = True
        self.client.on_cell_executed = self._on_executed

    def _on_executed(self, cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        self._reply = execute_reply.get("content", {})

    def setup(self) -> Any:
        """``async with kernel.setup():`` start the kernel (and always shut it down)."""
        return self.client.async_setup_kernel(env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def _is_alive(self) -> bool:
        from jupyter_client.asynchronous import AsyncKernelClient

        kc = self.client.kc
        return isinstance(kc, AsyncKernelClient) and await kc.is_alive()

    async def run(self, cell: Any, index: int, timeout: float, *, trusted: bool = False) -> _CellRun:
        """Execute one cell; trusted (grader) cells stay out of the kernel's history (In/Out)."""
        from nbclient.exceptions import DeadKernelError

        self.client.timeout = max(1, math.ceil(timeout))
        self._reply = {}
        try:
            await self.client.async_execute_cell(cell, index, store_history=not trusted)
        except DeadKernelError:
            self.alive = False
            return _CellRun("dead", cell=cell)
        except Exception as exc:  # noqa: BLE001 - a kernel/channel failure is an outcome, not a crash
            self.alive = await self._is_alive()
            return _CellRun("error" if self.alive else "dead", type(exc).__name__, str(exc), cell)
        content = self._reply
        if content.get("ename") == _TIMEOUT_REPLY["ename"]:
            return _CellRun("timeout", cell=cell)
        if content.get("status") == "error":
            return _CellRun("error", content.get("ename", ""), content.get("evalue", ""), cell)
        return _CellRun("ok", cell=cell)

    async def run_source(self, source: str, timeout: float) -> _CellRun:
        return await self.run(nbformat.v4.new_code_cell(source), 0, timeout, trusted=True)

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

    def __init__(self, nb: nbformat.NotebookNode, lab: str, checks: list[Check], options: Options) -> None:
        self.nb, self.lab, self.checks, self.options = nb, lab, checks, options
        self.steps, self.notes = plan_steps(nb, checks)
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

    async def run(self, cwd: str, env: dict[str, str]) -> None:
        for attempt in range(self.options.max_restarts + 1):
            kernel = _Kernel(self.nb, self.options, cwd, env)
            async with kernel.setup():
                restart = await self._attempt(kernel)
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
            self.cell_notes.setdefault(index, f"{where} raised {out.ename}: {out.evalue}"[:300])
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

    async def _question(self, kernel: _Kernel, step: Step) -> bool:
        """Every check of one question, from a fresh session with its own nonce."""
        todo = [j for j in step.checks if j not in self.results]
        if not todo:
            return False
        nonce = secrets.token_hex(16)  # new for every question: a nonce seen by later cells is already dead
        source = grade_kernel.boot_source(nonce, self.lab, str(HELPERS_DIR), str(self.options.checks_dir), self.markdown)
        out = await kernel.run_source(source, min(BOOT_TIMEOUT_S, self.remaining()))
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
                await kernel.run_source(grade_kernel.close_source(nonce), PROBE_TIMEOUT_S)
        return False

    async def _check(self, kernel: _Kernel, nonce: str, j: int) -> bool:
        """Check ``j`` in the session of ``nonce``. True when the kernel has to be restarted."""
        check = self.checks[j]
        own = check.timeout if self.options.check_timeout is None else min(check.timeout, self.options.check_timeout)
        limit = max(1.0, min(own + CHECK_MARGIN_S, self.remaining()))
        out = await kernel.run_source(grade_kernel.run_source(nonce, j, own), limit)
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
            self.fail(j, f"did not finish within {limit:g} s (an endless loop?)")
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


def _error(path: Path, message: str, lab: str = "", started: float | None = None) -> Result:
    took = round(time.monotonic() - started, 2) if started else 0.0
    return Result(str(path), lab=lab, status="error", error=message, seconds=took)


async def grade_file(path: Path | str, options: Options | None = None, labs: dict[str, Path] | None = None) -> Result:
    """Grade one submission. Never raises for a bad submission: problems become an error row."""
    options = options or Options()
    path = Path(path)
    started = time.monotonic()
    if labs is None:
        labs, _ = known_labs(options.checks_dir)
    if not path.is_file():
        return _error(path, "no such file", started=started)
    try:
        with warnings.catch_warnings():  # a learner's odd notebook is graded, not lectured about
            warnings.simplefilter("ignore")
            nb = nbformat.read(path, as_version=4)
        if not isinstance(nb.get("cells"), list):
            raise ValueError("it has no cells")
    except Exception as exc:  # noqa: BLE001 - anything unreadable is "not a notebook"
        return _error(path, f"not a Jupyter notebook: {type(exc).__name__}: {str(exc)[:160]}", started=started)
    lab, how = identify_lab(nb, path, labs)
    if lab is None:
        return _error(path, how, started=started)
    try:
        checks = list(load_checks(lab, options.checks_dir))
    except Exception as exc:  # noqa: BLE001 - a broken checks file is an error row, and the batch goes on
        return _error(path, f"the checks of lab {lab} cannot be loaded: {exc}", lab, started)
    grading = _Grading(_clean(nb), lab, checks, options)
    env = {**os.environ, GRADING_ENV: "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        with tempfile.TemporaryDirectory(prefix="grade-") as cwd:
            await asyncio.wait_for(grading.run(cwd, env), options.total_timeout + STARTUP_TIMEOUT_S * (options.max_restarts + 1))
    except Exception as exc:  # noqa: BLE001 - the batch goes on
        if not grading.results:
            return _error(path, f"the grader could not run it: {type(exc).__name__}: {exc}", lab, started)
        grading.notes.append(f"grading stopped early: {type(exc).__name__}: {exc}")
        for j in range(len(checks)):
            if j not in grading.results:
                grading.fail(j, "not run: grading stopped early")
    rows = [grading.results[j] for j in range(len(checks))]
    took = round(time.monotonic() - started, 2)
    return Result.graded(str(path), lab, rows, notes=grading.notes, flags=grading.flags, seconds=took)


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders become their *.ipynb files (sorted)."""
    found: list[Path] = []
    for item in paths:
        p = Path(item)
        found.extend(sorted(p.glob("*.ipynb")) if p.is_dir() else [p])
    return found


async def grade_many(paths: Iterable[str | Path], options: Options | None = None, progress: Any = None) -> list[Result]:
    """Grade submissions one after another (timing checks need the CPU); never stops early."""
    options = options or Options()
    labs, _ = known_labs(options.checks_dir)
    results = []
    for path in expand(paths):
        try:
            result = await grade_file(path, options, labs)
        except Exception as exc:  # noqa: BLE001 - belt and braces: the batch goes on
            result = _error(Path(path), f"the grader failed on it: {type(exc).__name__}: {exc}")
        results.append(result)
        if progress is not None:
            progress(result)
    return results
