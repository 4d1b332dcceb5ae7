"""``python -m helpers grade``: grade lab submissions from the command line.

    python -m helpers grade SUBMISSION.ipynb [MORE.ipynb | FOLDER ...] [--csv grades.csv] [--json results.json]
        [--merge] [--feedback DIR] [--canvas gradebook.csv --roster roster.csv]
    make grade DIR=submissions/          # same, writes grades.csv and grades.json

Grades ``--jobs`` submissions at once (default: the cores), each kernel in a bubblewrap
sandbox where one works (``--sandbox auto``), with a progress bar on a terminal's stderr
(not with ``-q``). Prints one line per submission (plus the reason of every failed
check, notes and flags), then a summary. Exit code: 0 when every submission got full marks, 1 when any
did not (or was an error row), 2 for a usage error (no submissions given).

How a submission is graded, and what the grader does and does not protect against:
CONTRIBUTING.md, "How the grader works and its trust model".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from helpers.grading import canvas
from helpers.grading import sandbox as boxes
from helpers.grading.checks import CHECKS_DIR
from helpers.grading.feedback import write_feedback
from helpers.grading.report import (
    Result,
    check_summary,
    format_row,
    format_summary,
    merge,
    read_json,
    write_csv,
    write_json,
)
from helpers.grading.runner import (
    CELL_TIMEOUT_S,
    MAX_RESTARTS,
    TOTAL_TIMEOUT_S,
    Options,
    broker_label,
    expand,
    grade_many,
    resolve_plan,
)


class _Stdout:
    """Printing that survives a closed pipe (``grade ... | head``): once stdout is gone, the rest is dropped.

    The grading goes on and the report files are written all the same: a reader that
    stopped reading must not cost the results.
    """

    closed = False

    @classmethod
    def say(cls, text: str = "") -> None:
        if cls.closed:
            return
        try:
            print(text, flush=True)
        except BrokenPipeError:
            cls.closed = True
            try:  # what Python's docs advise: point stdout at devnull, so the flush at exit raises nothing
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (AttributeError, OSError, ValueError):  # a stdout with no file behind it (a test's, a wrapper's)
                pass


say = _Stdout.say


def default_jobs() -> int:
    """One submission per core the grader may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1, with a clear message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parse = argparse.ArgumentParser(
        prog="python -m helpers grade",
        description="Grade lab notebooks: fresh kernel per submission, every check (hidden ones too).",
        epilog="Exit code: 0 if every submission got full marks, 1 otherwise, 2 for usage errors.",
    )
    parse.add_argument("submissions", nargs="*", help="notebooks, or folders of notebooks")
    parse.add_argument("--csv", type=Path, help="write one row per submission to this CSV file")
    parse.add_argument("--json", type=Path, help="write every check's result to this JSON file")
    parse.add_argument(
        "--merge",
        action="store_true",
        help="re-grade a subset: keep the other submissions of an existing --json (and rewrite --csv from it), "
        "replacing the rows of the ones graded now",
    )
    parse.add_argument(
        "--feedback",
        type=Path,
        metavar="DIR",
        help="write one Markdown and one HTML feedback file per submission (graded now) into DIR, for the learner",
    )
    parse.add_argument(
        "--name-hidden",
        action="store_true",
        help="in --feedback files, name each hidden check and its result (after the deadline); default: only counts",
    )
    parse.add_argument(
        "--canvas",
        type=Path,
        metavar="GRADEBOOK",
        help="fill this lab's column of an exported Canvas gradebook CSV (written to a copy, see --canvas-out); needs --roster",
    )
    parse.add_argument(
        "--roster",
        type=Path,
        help="CSV mapping each submission (column 'submission': file stem or username) to Canvas's ID, "
        "SIS Login ID or SIS User ID",
    )
    parse.add_argument("--canvas-column", help="the gradebook column to fill (default: the one assignment naming the lab)")
    parse.add_argument("--canvas-out", type=Path, help="where the filled gradebook goes (default: GRADEBOOK-filled.csv)")
    parse.add_argument(
        "--cell-timeout", type=float, default=CELL_TIMEOUT_S, help=f"seconds per cell (default {CELL_TIMEOUT_S:g})"
    )
    parse.add_argument(
        "--timeout",
        type=float,
        default=TOTAL_TIMEOUT_S,
        help=f"seconds per submission, all included (default {TOTAL_TIMEOUT_S:g})",
    )
    parse.add_argument("--check-timeout", type=float, help="cap every check's own time limit at this many seconds")
    parse.add_argument(
        "--max-restarts", type=int, default=MAX_RESTARTS, help="kernel restarts after a cell that cannot be interrupted"
    )
    parse.add_argument(
        "-j",
        "--jobs",
        type=positive_int,
        default=default_jobs(),
        help=f"grade this many submissions at once, each in its own kernel (default: the cores, {default_jobs()})",
    )
    parse.add_argument(
        "--alone",
        choices=("timing", "all"),
        default="timing",
        help="with --jobs: which checks run while nothing else runs: timing-critical ones (default) or all",
    )
    parse.add_argument(
        "--sandbox",
        choices=boxes.MODES,
        default="auto",
        help="run each kernel in a bubblewrap sandbox (bwrap); as an unprivileged uid with limits but no namespaces "
        "(setpriv, needs root); or plainly (none); auto (default): bwrap where it works, else setpriv, else none, "
        "saying what is missing",
    )
    parse.add_argument(
        "--seed",
        help="draw the checks' random inputs from this seed (re-grading with it gives the same messages); "
        "default: a new secret seed, recorded in --json",
    )
    parse.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="for logs: one line per submission (details stay in --csv/--json), no progress bar",
    )
    parse.add_argument("--checks", type=Path, default=CHECKS_DIR, help="folder of checks modules (default helpers/labchecks)")
    return parse


def main(argv: list[str] | None = None) -> int:
    """Grade, print, write the reports; the exit code says whether everyone got full marks."""
    parse = parser()
    args = parse.parse_args(argv)
    _Stdout.closed = False  # a new command, a new stdout
    paths = expand(args.submissions)
    if not paths:
        parse.print_usage(sys.stderr)
        print("error: no submissions given", file=sys.stderr)
        return 2
    problem = _usage_problem(args)
    if problem:
        parse.print_usage(sys.stderr)
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        earlier = read_json(args.json) if args.merge and args.json.is_file() else []
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: --merge: cannot read {args.json}: {exc}", file=sys.stderr)
        return 2
    outputs = tuple(p.resolve().parent for p in (args.csv, args.json, args.canvas_out) if p is not None)
    outputs += (args.feedback.resolve(),) if args.feedback else ()
    options = Options(
        args.cell_timeout,
        args.timeout,
        args.max_restarts,
        args.checks,
        check_timeout=args.check_timeout,
        jobs=args.jobs,
        alone=args.alone,
        seed=args.seed,
        sandbox=args.sandbox,
        hide=outputs,
    )
    try:
        plan = resolve_plan(options, paths)  # the one place an option is decided
    except boxes.SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if plan.sandbox_notice:
        print(plan.sandbox_notice, file=sys.stderr, flush=True)
    for name, why in plan.broken.items():
        print(f"warning: checks file {name} cannot be loaded: {why}", file=sys.stderr)
    jobs = min(plan.jobs, len(paths))
    how = f"{broker_label()}, sandbox: {plan.sandbox}, {jobs} at a time"
    labs = ", ".join(sorted(plan.labs)) or "none"
    say(f"grading {len(paths)} submission(s); checks found for labs {labs} ({how})")
    bar = _progress_bar(len(paths), disable=args.quiet)

    def show(result: Result) -> None:
        if args.quiet:
            text = format_row(result).splitlines()[0] + (f"  ERROR: {result.error}" if result.error else "")
        else:
            text = format_row(result)
        if bar is None:
            say(text)
            return
        bar.clear()  # the rows go to stdout, the bar redraws itself below them on stderr
        say(text)
        bar.update(1)

    try:
        results = asyncio.run(grade_many(paths, plan, progress=show))
    finally:
        if bar is not None:
            bar.close()
    full = sum(r.full_marks for r in results)
    errors = sum(r.status == "error" for r in results)
    written, lines = _write_reports(args, results, earlier, plan.describe())  # the files first: printing may fail
    say("\n".join([f"{full}/{len(results)} with full marks, {errors} error row(s) (sandbox: {plan.sandbox})", *lines]))
    if not written:
        return 2
    return 0 if full == len(results) else 1


def _usage_problem(args: argparse.Namespace) -> str:
    """What is wrong with the options together ('' when nothing): said before grading, not after."""
    if (args.canvas is None) != (args.roster is None):
        return "--canvas and --roster go together (the roster says which Canvas student each file is)"
    for given in (args.canvas, args.roster):
        if given is not None and not given.is_file():
            return f"no such file: {given}"
    if args.merge and args.json is None:
        return "--merge needs --json (the earlier results, with every check, are read from it)"
    return ""


def _write_reports(
    args: argparse.Namespace, results: list[Result], earlier: list[Result], grader: dict[str, Any]
) -> tuple[bool, list[str]]:
    """Write every file asked for; return whether the Canvas column could be filled, and the lines to print
    (the merge, the per-check summary, what was written). Nothing goes to stdout here: a stdout closed
    under the grader (``| head``) never costs a report file."""
    every = merge(earlier, results)
    said = []
    if earlier:
        said.append(f"merged into {args.json}: {len(results)} row(s) graded now, {len(every) - len(results)} kept from before")
    summary = format_summary(check_summary(every))
    if summary:
        said.append(summary)
    if args.csv:
        write_csv(every, args.csv)
        said.append(f"wrote {args.csv}")
    if args.json:
        write_json(every, args.json, grader)
        said.append(f"wrote {args.json}")
    if args.feedback:
        files = write_feedback(results, args.feedback, name_hidden=args.name_hidden)
        said.append(f"wrote {len(files)} feedback file(s) (Markdown and HTML) to {args.feedback}")
    filled = True
    if args.canvas:
        try:
            said.append(canvas.fill(args.canvas, args.roster, every, args.canvas_out, args.canvas_column).summary())
        except (canvas.CanvasError, OSError, UnicodeDecodeError) as exc:
            print(f"error: --canvas: {exc}", file=sys.stderr)
            filled = False
    return filled, said


def _progress_bar(total: int, *, disable: bool) -> Any:
    """A tqdm bar on stderr while the batch runs; None with --quiet or when stderr is not a terminal."""
    if disable or not sys.stderr.isatty():
        return None
    from tqdm import tqdm  # type: ignore[import-untyped] # tqdm ships no type hints (types-tqdm is not pinned)

    return tqdm(total=total, unit="submission", file=sys.stderr, dynamic_ncols=True, leave=False)


if __name__ == "__main__":
    sys.exit(main())
