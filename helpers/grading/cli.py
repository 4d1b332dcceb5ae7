"""``python -m helpers grade``: grade lab submissions from the command line.

    python -m helpers grade SUBMISSION.ipynb [MORE.ipynb | FOLDER ...] [--csv grades.csv] [--json results.json]
    make grade DIR=submissions/          # same, writes grades.csv and grades.json

Prints one line per submission (plus the reason of every failed check, notes and
flags), then a summary. Exit code: 0 when every submission got full marks, 1 when any
did not (or was an error row), 2 for a usage error (no submissions given).

How a submission is graded, and what the grader does and does not protect against:
CONTRIBUTING.md, "How the grader works and its trust model".
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from helpers.grading.checks import CHECKS_DIR
from helpers.grading.report import Result, format_row, write_csv, write_json
from helpers.grading.runner import (
    CELL_TIMEOUT_S,
    MAX_RESTARTS,
    TOTAL_TIMEOUT_S,
    Options,
    broker_label,
    expand,
    grade_many,
    known_labs,
)


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
    parse.add_argument("-q", "--quiet", action="store_true", help="one line per submission (details stay in --csv/--json)")
    parse.add_argument("--checks", type=Path, default=CHECKS_DIR, help="folder of checks modules (default helpers/labchecks)")
    return parse


def main(argv: list[str] | None = None) -> int:
    """Grade, print, write the reports; the exit code says whether everyone got full marks."""
    parse = parser()
    args = parse.parse_args(argv)
    paths = expand(args.submissions)
    if not paths:
        parse.print_usage(sys.stderr)
        print("error: no submissions given", file=sys.stderr)
        return 2
    options = Options(args.cell_timeout, args.timeout, args.max_restarts, args.checks, check_timeout=args.check_timeout)
    labs, broken = known_labs(options.checks_dir)
    for name, why in broken.items():
        print(f"warning: checks file {name} cannot be loaded: {why}", file=sys.stderr)
    print(f"grading {len(paths)} submission(s) for labs {', '.join(sorted(labs)) or 'none'} ({broker_label()})", flush=True)

    def show(result: Result) -> None:
        if args.quiet:
            text = format_row(result).splitlines()[0] + (f"  ERROR: {result.error}" if result.error else "")
        else:
            text = format_row(result)
        print(text, flush=True)

    results = asyncio.run(grade_many(paths, options, progress=show))
    full = sum(r.full_marks for r in results)
    errors = sum(r.status == "error" for r in results)
    print(f"{full}/{len(results)} with full marks, {errors} error row(s)")
    if args.csv:
        write_csv(results, args.csv)
        print(f"wrote {args.csv}")
    if args.json:
        write_json(results, args.json, options.describe())
        print(f"wrote {args.json}")
    return 0 if full == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
