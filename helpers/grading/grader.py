"""Grade lab submissions: run each notebook in a fresh kernel, then run every check.

    python -m helpers grade SUBMISSION.ipynb [MORE.ipynb | FOLDER ...] [--csv grades.csv] [--json results.json]
    make grade DIR=submissions/          # same, writes grades.csv

For each submission the grader

1. reads the file (not a notebook -> an ``error`` row) and finds its lab from the
   notebook metadata the lab generator wrote (``metadata.course_lab.id``), else from a
   lab id in the file name (``alice_00_warmup.ipynb``); an unknown lab -> an ``error`` row;
2. starts a fresh kernel process (nbclient, the grader's own Python, a temporary working
   folder, ``MQTT_URL`` inherited) and runs the notebook cell by cell, continuing after
   errors, with a per-cell timeout (``--cell-timeout``) and a budget for the whole
   submission (``--timeout``);
3. right after the cell that says ``check("qN")`` (or at the end, if that cell was
   deleted), runs every check of question qN, hidden ones included, from a fresh copy of
   the checks and of ``helpers`` (see ``helpers/grade_kernel.py``), one check per kernel
   request with its own time limit;
4. reports points per question, the total, and the reason of every failure.

Partial credit: a cell that raises does not stop the notebook; questions whose code ran
get their points. A cell that runs past its timeout is interrupted; if it cannot be
interrupted (``while True: pass`` inside async code ignores Ctrl-C in ipykernel) the
kernel is restarted and the notebook re-run without that cell (at most
``--max-restarts`` times), so what did finish still counts; what never finished scores
0 with the reason. The same holds for a learner function that hangs inside a check.
One broken submission never stops the batch.

Exit code: 0 when every submission got full marks, 1 when any did not (or was an
error row), 2 for a usage error (no submissions given).

Trust and its limits. The checks that count are loaded fresh from the grader's own
files after the learner's code has run, with the learner's ``helpers`` modules set
aside, so replacing ``check``, the checks module or a helper does not change the score.
Results travel on lines tagged with a random nonce made for each question's checks and
written only into the grader's own cells (kept out of the kernel's history and
forgotten after use); stored outputs and anything else the notebook prints are
ignored, so printing a fake score does nothing. Signs of tampering (library functions
replaced by notebook code, import hooks, trace functions, cell hooks) are reported in
the ``flags`` column for a human to look at. But this is NOT a security sandbox:
learner code runs as the grader's user, with the grader's files, network and
permissions, in the same process as the checks; code called by a check could
deliberately dig the nonce out of memory, and a notebook that rewrites the standard
library or the import system can defeat any in-process check. When that matters
(untrusted submissions, exams), run the grader in a throw-away container or VM with
no secrets and no network beyond loopback, e.g. ``docker run --rm --network none
-v "$PWD":/course -w /course IMAGE python -m helpers grade submissions/`` (nbgrader
users: the same idea, its autograder inside a container), and keep grading on a
machine you can wipe.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from helpers.grading import kernel as grade_kernel
from helpers.grading.checks import CHECKS_DIR, GRADING_ENV, Check, Checks, load_checks, load_module

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


@dataclass
class Result:
    """One submission's grade."""

    submission: str
    lab: str = ""
    status: str = "graded"
    """``graded``, or ``error`` when the file could not be graded at all (see ``error``)."""
    score: float = 0.0
    max_score: float = 0.0
    questions: dict[str, list[float]] = field(default_factory=dict)
    """question -> [points, max points]"""
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What happened while the notebook ran (errors, timeouts, restarts)."""
    flags: list[str] = field(default_factory=list)
    """Signs of tampering, for a human to look at; they do not change the score."""
    error: str = ""
    seconds: float = 0.0

    @property
    def full_marks(self) -> bool:
        """True when graded and every point was earned."""
        return self.status == "graded" and self.max_score > 0 and self.score >= self.max_score

    def failures(self) -> list[str]:
        """One line per failed check: question, name, reason."""
        return [
            f"{c['question']} {c['name']}{' (hidden)' if c['hidden'] else ''}: {c['message']}"
            for c in self.checks
            if not c["passed"]
        ]


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


# --------------------------------------------------------------------------- running


@dataclass
class _Outcome:
    status: str  # ok | error | timeout | dead
    ename: str = ""
    evalue: str = ""
    cell: Any = None


@dataclass
class _Step:
    kind: str  # "cell" (index = notebook cell) or "question" (checks = indices into the lab's checks)
    index: int = -1
    question: str = ""
    checks: tuple[int, ...] = ()


def plan_steps(nb: nbformat.NotebookNode, checks: Sequence[Check]) -> tuple[list[_Step], list[str]]:
    """Notebook cells in order; each question's checks right after its first check("qN") cell."""
    steps: list[_Step] = []
    anchored: set[str] = set()
    questions = list(dict.fromkeys(c.question for c in checks))

    def question(q: str) -> _Step:
        return _Step("question", question=q, checks=tuple(j for j, c in enumerate(checks) if c.question == q))

    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        steps.append(_Step("cell", index))
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

    async def run(self, cell: Any, index: int, timeout: float, *, trusted: bool = False) -> _Outcome:
        """Execute one cell; trusted (grader) cells stay out of the kernel's history (In/Out)."""
        from nbclient.exceptions import DeadKernelError

        self.client.timeout = max(1, math.ceil(timeout))
        self._reply = {}
        try:
            await self.client.async_execute_cell(cell, index, store_history=not trusted)
        except DeadKernelError:
            self.alive = False
            return _Outcome("dead", cell=cell)
        except Exception as exc:  # noqa: BLE001 - a kernel/channel failure is an outcome, not a crash
            self.alive = bool(self.client.kc) and await self.client.kc.is_alive()
            return _Outcome("error" if self.alive else "dead", type(exc).__name__, str(exc), cell)
        content = self._reply
        if content.get("ename") == _TIMEOUT_REPLY["ename"]:
            return _Outcome("timeout", cell=cell)
        if content.get("status") == "error":
            return _Outcome("error", content.get("ename", ""), content.get("evalue", ""), cell)
        return _Outcome("ok", cell=cell)

    async def run_source(self, source: str, timeout: float) -> _Outcome:
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
                    found.append(json.loads(line[len(nonce) + 1 :]))
                except ValueError:
                    continue
    return found


def _failed(check: Check, reason: str) -> dict[str, Any]:
    return {
        "question": check.question,
        "name": check.name,
        "description": check.description,
        "passed": False,
        "points": 0.0,
        "max_points": check.points,
        "message": reason,
        "hint": check.hint,
        "hidden": check.hidden,
        "seconds": 0.0,
    }


class _Grading:
    """The state of one submission across kernel restarts."""

    def __init__(self, nb: nbformat.NotebookNode, lab: str, checks: list[Check], options: Options) -> None:
        self.nb, self.lab, self.checks, self.options = nb, lab, checks, options
        self.steps, self.notes = plan_steps(nb, checks)
        self.results: dict[int, dict[str, Any]] = {}
        self.flags: list[str] = []
        self.skip: set[int] = set()
        self.cell_notes: dict[int, str] = {}
        self.deadline = time.monotonic() + options.total_timeout
        self.out_of_time = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

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
        for j, check in enumerate(self.checks):
            if j not in self.results:
                why = "time budget used up" if self.out_of_time else "the notebook could not be run to this point"
                self.results[j] = _failed(check, f"not run: {why}")
        self.notes[:0] = [self.cell_notes[i] for i in sorted(self.cell_notes)]

    async def _attempt(self, kernel: _Kernel) -> bool:
        """Run the plan once in ``kernel``; True when the kernel must be restarted."""
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

    async def _question(self, kernel: _Kernel, step: _Step) -> bool:
        """Every check of one question, from a fresh session with its own nonce."""
        todo = [j for j in step.checks if j not in self.results]
        if not todo:
            return False
        nonce = secrets.token_hex(16)  # new for every question: a nonce seen by later cells is already dead
        source = grade_kernel.boot_source(nonce, self.lab, str(HELPERS_DIR), str(self.options.checks_dir))
        out = await kernel.run_source(source, min(BOOT_TIMEOUT_S, self.remaining()))
        boot = [p for p in _tagged(out.cell, nonce) if p.get("boot") == "ok"]
        if not boot or boot[0].get("checks") != [c.name for c in self.checks]:
            if out.status == "dead" or (out.status == "timeout" and not await kernel.responsive()):
                return True
            reason = f"{out.ename}: {out.evalue}" if out.ename else "the checks did not load"
            for j in todo:
                self.results[j] = _failed(self.checks[j], f"the grader could not start the checks ({reason})")
            return False
        try:
            for j in todo:
                check = self.checks[j]
                own = check.timeout if self.options.check_timeout is None else min(check.timeout, self.options.check_timeout)
                limit = max(1.0, min(own + CHECK_MARGIN_S, self.remaining()))
                out = await kernel.run_source(grade_kernel.run_source(nonce, j, own), limit)
                payloads = [p for p in _tagged(out.cell, nonce) if p.get("index") == j]
                if payloads:
                    self.results[j] = payloads[0]["result"]
                    self.flags.extend(f for f in payloads[0].get("flags", []) if f not in self.flags)
                elif out.status == "timeout":
                    self.results[j] = _failed(check, f"did not finish within {limit:g} s (an endless loop?)")
                    if not await kernel.responsive():
                        self.notes.append(f"check {check.name} hung the kernel: it was restarted")
                        return True
                elif out.status == "dead":
                    self.results[j] = _failed(check, "the kernel died while this check ran")
                    return True
                else:
                    self.results[j] = _failed(check, f"the check could not run ({out.ename}: {out.evalue})")
                if self.remaining() <= 1:
                    return False
        finally:
            if kernel.alive:
                await kernel.run_source(grade_kernel.close_source(nonce), PROBE_TIMEOUT_S)
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
    except Exception as exc:  # noqa: BLE001
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
        for j, check in enumerate(checks):
            grading.results.setdefault(j, _failed(check, "not run: grading stopped early"))
    rows = [grading.results[j] for j in range(len(checks))]
    questions: dict[str, list[float]] = {}
    for row in rows:
        got = questions.setdefault(row["question"], [0.0, 0.0])
        got[0] += float(row["points"])
        got[1] += float(row["max_points"])
    return Result(
        str(path),
        lab=lab,
        score=sum(q[0] for q in questions.values()),
        max_score=sum(q[1] for q in questions.values()),
        questions=questions,
        checks=rows,
        notes=grading.notes,
        flags=grading.flags,
        seconds=round(time.monotonic() - started, 2),
    )


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


# --------------------------------------------------------------------------- reports


def _pts(value: float) -> str:
    return f"{value:g}"


def question_columns(results: Sequence[Result]) -> list[str]:
    """Every question id across the batch, in first-seen order."""
    return list(dict.fromkeys(q for r in results for q in r.questions))


def format_row(result: Result) -> str:
    """One submission as one line, plus its failure reasons."""
    if result.status == "error":
        return f"{result.submission}\n    ERROR: {result.error}"
    per_q = "  ".join(f"{q} {_pts(p)}/{_pts(m)}" for q, (p, m) in result.questions.items())
    head = (
        f"{result.submission}  [{result.lab}]  {_pts(result.score)}/{_pts(result.max_score)}  {per_q}  ({result.seconds:.1f} s)"
    )
    lines = [head]
    lines += [f"    - {f}" for f in result.failures()]
    lines += [f"    note: {n}" for n in result.notes]
    lines += [f"    FLAG: {f}" for f in result.flags]
    return "\n".join(lines)


def write_csv(results: Sequence[Result], path: Path | str) -> None:
    """One row per submission: score, points per question, failures, notes, flags, errors."""
    questions = question_columns(results)
    header = [
        "submission",
        "lab",
        "status",
        "score",
        "max_score",
        "percent",
        *questions,
        "failed",
        "notes",
        "flags",
        "error",
        "seconds",
    ]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r in results:
            percent = round(100 * r.score / r.max_score, 1) if r.max_score else 0.0
            per_q = [_pts(r.questions[q][0]) if q in r.questions else "" for q in questions]
            writer.writerow(
                [
                    r.submission,
                    r.lab,
                    r.status,
                    _pts(r.score),
                    _pts(r.max_score),
                    percent,
                    *per_q,
                    " | ".join(r.failures()),
                    " | ".join(r.notes),
                    " | ".join(r.flags),
                    r.error,
                    r.seconds,
                ]
            )


def write_json(results: Sequence[Result], path: Path | str, options: Options) -> None:
    """Everything, per check, for tools and for feedback to learners."""
    doc = {
        "grader": {
            "cell_timeout_s": options.cell_timeout,
            "total_timeout_s": options.total_timeout,
            "broker": broker_label(),
        },
        "submissions": [{**asdict(r), "full_marks": r.full_marks} for r in results],
    }
    Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers grade",
        description="Grade lab notebooks: fresh kernel per submission, every check (hidden ones too).",
        epilog="Exit code: 0 if every submission got full marks, 1 otherwise, 2 for usage errors.",
    )
    parser.add_argument("submissions", nargs="*", help="notebooks, or folders of notebooks")
    parser.add_argument("--csv", type=Path, help="write one row per submission to this CSV file")
    parser.add_argument("--json", type=Path, help="write every check's result to this JSON file")
    parser.add_argument(
        "--cell-timeout", type=float, default=CELL_TIMEOUT_S, help=f"seconds per cell (default {CELL_TIMEOUT_S:g})"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=TOTAL_TIMEOUT_S,
        help=f"seconds per submission, all included (default {TOTAL_TIMEOUT_S:g})",
    )
    parser.add_argument("--check-timeout", type=float, help="cap every check's own time limit at this many seconds")
    parser.add_argument(
        "--max-restarts", type=int, default=MAX_RESTARTS, help="kernel restarts after a cell that cannot be interrupted"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="one line per submission (details stay in --csv/--json)")
    parser.add_argument("--checks", type=Path, default=CHECKS_DIR, help="folder of checks modules (default helpers/labchecks)")
    args = parser.parse_args(argv)
    paths = expand(args.submissions)
    if not paths:
        parser.print_usage(sys.stderr)
        print("error: no submissions given", file=sys.stderr)
        return 2
    options = Options(args.cell_timeout, args.timeout, args.max_restarts, args.checks, check_timeout=args.check_timeout)
    labs, broken = known_labs(options.checks_dir)
    for name, why in broken.items():
        print(f"warning: checks file {name} cannot be loaded: {why}", file=sys.stderr)
    print(f"grading {len(paths)} submission(s) for labs {', '.join(sorted(labs)) or 'none'} ({broker_label()})", flush=True)

    def show(result: Result) -> None:
        text = format_row(result)
        print(
            text.splitlines()[0] + (f"  ERROR: {result.error}" if args.quiet and result.error else "") if args.quiet else text,
            flush=True,
        )

    results = asyncio.run(grade_many(paths, options, progress=show))
    full = sum(r.full_marks for r in results)
    errors = sum(r.status == "error" for r in results)
    print(f"{full}/{len(results)} with full marks, {errors} error row(s)")
    if args.csv:
        write_csv(results, args.csv)
        print(f"wrote {args.csv}")
    if args.json:
        write_json(results, args.json, options)
        print(f"wrote {args.json}")
    return 0 if full == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
