"""Grade submissions: run each notebook in a fresh kernel, then every check of its lab.

:func:`grade_file` grades one notebook, :func:`grade_many` a batch (``jobs`` at a time,
each in its own kernel; timing-critical checks run alone, see :class:`Gate`); both never
raise for a bad submission, they return an ``error``
:class:`~helpers.grading.report.Result` instead. The command line is
:mod:`helpers.grading.cli` (``python -m helpers grade``), the grader's side inside the
submission's kernel is :mod:`helpers.grading.kernel`, the sandbox the kernel runs in is
:mod:`helpers.grading.sandbox`. The grader talks to every kernel over ZeroMQ's IPC
transport (Unix sockets in the submission's scratch folder), never TCP.

The options are resolved once, at the edge of the batch, into a frozen
:class:`~helpers.grading.plan.GradingPlan`. Each submission then goes through a short
pipeline of named stages, in the manner of nbgrader's preprocessors; a stage that cannot
go on raises :class:`Rejected`, whose reason becomes the submission's error row:

1. :func:`clean`: read the file; keep the cells' code and text, drop stored outputs;
2. :func:`identify`: which lab it is (its metadata, else its file name);
3. :func:`plan_submission`: load the lab's checks, place each question's checks among the cells;
4. :func:`execute`: run the steps in a kernel, in the sandbox, with caps on time and output
   (:mod:`helpers.grading.execute`);
5. :func:`collect`: one result per check, the notes, the flags: the submission's row.

How a submission is run (cells in order, each question's checks right after its
``check("qN")`` cell or where the lab as shipped has it, timeouts, restarts without a
cell that cannot be interrupted) and the trust model (what tampering the grader
resists, what the sandbox stops and what it does not) are described in CONTRIBUTING.md,
"How the grader works and its trust model".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import nbformat

from helpers.grading import sandbox as boxes
from helpers.grading.checks import GRADING_ENV, load_checks
from helpers.grading.execute import Execution, Submission
from helpers.grading.kernels import STARTUP_TIMEOUT_S, Gate, Workspace, timing_critical
from helpers.grading.plan import (
    CELL_TIMEOUT_S,
    HELPERS_DIR,
    LABS_DIR,
    MAX_OUTPUT_BYTES,
    MAX_RESTARTS,
    ROOT,
    TOTAL_TIMEOUT_S,
    GradingPlan,
    Options,
    broker_label,
    identify_lab,
    known_labs,
    resolve_plan,
)
from helpers.grading.report import Result
from helpers.grading.steps import CHECK_CALL, Step, given_setup_cell, plan_steps

__all__ = [
    "CELL_TIMEOUT_S",
    "CHECK_CALL",
    "HELPERS_DIR",
    "LABS_DIR",
    "MAX_OUTPUT_BYTES",
    "MAX_RESTARTS",
    "ROOT",
    "STARTUP_TIMEOUT_S",
    "TOTAL_TIMEOUT_S",
    "Gate",
    "GradingPlan",
    "Options",
    "Rejected",
    "Step",
    "broker_label",
    "clean",
    "collect",
    "execute",
    "expand",
    "grade_file",
    "grade_many",
    "identify",
    "identify_lab",
    "known_labs",
    "plan_steps",
    "plan_submission",
    "resolve_plan",
    "timing_critical",
]


class Rejected(Exception):
    """A stage cannot go on with this submission; ``message`` is its error row's reason."""

    def __init__(self, message: str, lab: str = "") -> None:
        super().__init__(message)
        self.message, self.lab = message, lab


# --------------------------------------------------------------------------- the stages


def clean(path: Path) -> nbformat.NotebookNode:
    """Stage 1: the submission's code and text, as a well-formed notebook without stored outputs.

    Stored outputs count for nothing, and odd cells (no source, a list source, unknown
    keys) cannot trip the runner; of the metadata only the lab's claim (``course_lab``) is
    kept, for :func:`identify`. Something that is not a notebook is rejected.
    """
    if not path.is_file():
        raise Rejected("no such file")
    try:
        with warnings.catch_warnings():  # a learner's odd notebook is graded, not lectured about
            warnings.simplefilter("ignore")
            nb = nbformat.read(path, as_version=4)
        if not isinstance(nb.get("cells"), list):
            raise ValueError("it has no cells")
    except Exception as exc:  # noqa: BLE001 - anything unreadable is "not a notebook"
        raise Rejected(f"not a Jupyter notebook: {type(exc).__name__}: {str(exc)[:160]}") from None
    cells = []
    for cell in nb.get("cells", []):
        if not isinstance(cell, dict):
            continue
        source = cell.get("source", "")
        source = "".join(map(str, source)) if isinstance(source, list) else str(source or "")
        make = nbformat.v4.new_code_cell if cell.get("cell_type") == "code" else nbformat.v4.new_markdown_cell
        cells.append(make(source))
    meta = nb.get("metadata")
    claim = {"course_lab": meta["course_lab"]} if isinstance(meta, dict) and "course_lab" in meta else {}
    return nbformat.v4.new_notebook(cells=cells, metadata=claim)  # the lab's claim is all identify() reads


def identify(nb: nbformat.NotebookNode, path: Path, labs: Mapping[str, Path], expected: str | None = None) -> str:
    """Stage 2: the lab this submission is (read from the file as submitted, ``nb``).

    ``expected``: the lab this submission must be (a platform's assignment): a notebook that
    says it is another lab is rejected; one that says nothing is graded as ``expected``.
    """
    lab, how = identify_lab(nb, path, labs)
    if expected is not None and lab not in (None, expected):
        raise Rejected(f"wrong lab: this notebook is lab {lab} (by its {how}), and this assignment is lab {expected}")
    lab = lab or expected
    if lab is None:
        raise Rejected(how)
    return lab


def plan_submission(path: Path, nb: nbformat.NotebookNode, lab: str, plan: GradingPlan) -> Submission:
    """Stage 3: the lab's checks, freshly loaded, and the order of cells and checks to run."""
    try:
        checks = tuple(load_checks(lab, plan.checks_dir))
    except Exception as exc:  # noqa: BLE001 - a broken checks file is an error row, and the batch goes on
        raise Rejected(f"the checks of lab {lab} cannot be loaded: {exc}", lab) from None
    reference = _reference(lab, plan.labs_dir)
    steps, notes = plan_steps(nb, checks, reference)
    markdown = tuple(str(c.get("source", "")) for c in nb.cells if c.get("cell_type") == "markdown")
    return Submission(path, nb, lab, checks, tuple(steps), tuple(notes), markdown, given_setup_cell(nb, reference))


async def execute(sub: Submission, plan: GradingPlan, gate: Gate) -> Execution:
    """Stage 4: run the steps in a fresh kernel (in the sandbox), capped in time and output.

    A failure of the grader itself after some checks ran keeps what they scored; before
    any ran, the submission is rejected with the reason. So is a submission whose first
    cell, the lab's setup code as shipped, failed: no learner code had run, the course's
    environment is broken (a package changed under the grader), and a 0 would be no grade.
    """
    deadline = time.monotonic() + plan.total_timeout
    with _workspace(plan) as ws:
        run = Execution(sub, plan, ws, gate, deadline)
        try:
            await run.run()
        except Exception as exc:  # noqa: BLE001 - the batch goes on
            if not run.results:
                raise Rejected(f"the grader could not run it: {type(exc).__name__}: {exc}", sub.lab) from None
            run.notes.append(f"grading stopped early: {type(exc).__name__}: {exc}")
            for j in range(len(sub.checks)):
                if j not in run.results:
                    run.fail(j, "not run: grading stopped early")
    if run.setup_failed:
        raise Rejected(
            "the lab's own setup cell, unchanged from the lab as shipped, failed before any "
            f"of the learner's code ran ({run.setup_failed}); the course's environment is broken, not the submission: "
            "fix it and grade this submission again",
            sub.lab,
        )
    return run


def collect(sub: Submission, run: Execution, plan: GradingPlan, started: float) -> Result:
    """Stage 5: the submission's row: one result per check in the lab's order, notes, flags."""
    rows = [run.results[j] for j in range(len(sub.checks))]
    took = round(time.monotonic() - started, 2)
    return Result.graded(str(sub.path), sub.lab, rows, notes=run.notes, flags=run.flags, seconds=took, sandbox=plan.sandbox)


# --------------------------------------------------------------------------- what the stages share


@contextlib.contextmanager
def _workspace(plan: GradingPlan) -> Iterator[Workspace]:
    """A scratch folder (and the sandbox around it) for one submission's kernels; removed after."""
    env = {**os.environ, GRADING_ENV: "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    scratch = Path(tempfile.mkdtemp(prefix="grade-"))
    checks_copy = Path(f"{scratch}-checks")
    try:
        cwd = scratch / "work"
        cwd.mkdir()
        box, checks_dir = None, plan.checks_dir
        if plan.sandbox != "none":
            # the checks are copied out of the grader's (perhaps private) folder to one the sandbox's
            # uid can read and not change, bound read-only next to the scratch folder
            checks_dir = boxes.readable_copy(plan.checks_dir, checks_copy)
            box = boxes.make(plan.sandbox, scratch, plan.limits, extra_ro=[checks_dir], hide=plan.hide)
        if box is not None:
            box.prepare()
            env = box.env(env)
        yield Workspace(scratch, cwd, env, checks_dir, box)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(checks_copy, ignore_errors=True)


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


def _error(path: Path, message: str, lab: str = "", started: float | None = None, *, sandbox: str = "") -> Result:
    took = round(time.monotonic() - started, 2) if started else 0.0
    return Result(str(path), lab=lab, status="error", error=message, seconds=took, sandbox=sandbox)


# --------------------------------------------------------------------------- one submission, a batch


async def _grade(path: Path, plan: GradingPlan, gate: Gate, expected: str | None = None) -> Result:
    """One submission through the stages; a rejection becomes its error row."""
    started = time.monotonic()
    try:
        nb = clean(path)
        lab = identify(nb, path, plan.labs, expected)
        sub = plan_submission(path, nb, lab, plan)
        run = await execute(sub, plan, gate)
    except Rejected as rejected:
        return _error(path, rejected.message, rejected.lab, started, sandbox=plan.sandbox)
    return collect(sub, run, plan, started)


async def grade_file(path: Path | str, options: Options | GradingPlan | None = None, *, lab: str | None = None) -> Result:
    """Grade one submission. Never raises for a bad submission: problems become an error row.

    ``options``: what to ask for (resolved here, for this one file), or a plan already
    resolved by the caller. ``lab``: the lab this submission must be (a platform's
    assignment): a notebook that says it is another lab is an error row, not graded against
    that lab's checks; one that says nothing (no metadata, no lab id in its name) is graded
    as ``lab``. Resolving raises :class:`~helpers.grading.sandbox.SandboxError` when
    ``bwrap`` was asked for and cannot work: that is the grader's setup, not the submission.
    """
    path = Path(path)
    plan = options if isinstance(options, GradingPlan) else resolve_plan(options or Options(), [path])
    return await _grade(path, plan, Gate(), lab)


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders become their *.ipynb files (sorted)."""
    found: list[Path] = []
    for item in paths:
        p = Path(item)
        found.extend(sorted(p.glob("*.ipynb")) if p.is_dir() else [p])
    return found


async def grade_many(
    paths: Iterable[str | Path], options: Options | GradingPlan | None = None, progress: Callable[[Result], Any] | None = None
) -> list[Result]:
    """Grade submissions, ``jobs`` at a time, each in its own kernel; never stops early.

    ``options`` are resolved once here for the whole batch (or come resolved, as a
    :class:`~helpers.grading.plan.GradingPlan` made for these same files). Results come back
    in the order of ``paths``; ``progress`` is called as each one is done (in the order they
    finish). Timing-critical checks run alone (:class:`Gate`), so a parallel batch gives the
    grades a serial one gives.
    """
    files = expand(paths)
    plan = options if isinstance(options, GradingPlan) else resolve_plan(options or Options(), files)
    gate = Gate()
    slots = asyncio.Semaphore(plan.jobs)
    results: list[Result | None] = [None] * len(files)

    async def one(i: int, path: Path) -> None:
        async with slots:
            try:
                result = await _grade(path, plan, gate)
            except Exception as exc:  # noqa: BLE001 - belt and braces: the batch goes on
                result = _error(Path(path), f"the grader failed on it: {type(exc).__name__}: {exc}", sandbox=plan.sandbox)
        results[i] = result
        if progress is not None:
            progress(result)

    await asyncio.gather(*(one(i, p) for i, p in enumerate(files)))
    return [r for r in results if r is not None]
