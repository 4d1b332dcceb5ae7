"""``python -m helpers prairielearn LAB --out DIR``: a PrairieLearn external grader for one lab.

PrairieLearn runs an external grader as a Docker image plus files it mounts under
``/grade``: the learner's files in ``/grade/student/``, the course's shared files in
``/grade/serverFilesCourse/``; the grader writes ``/grade/results/results.json``
(``gradable``, ``score`` from 0 to 1, ``message``, ``output``, ``format_errors``, ``tests``;
at most 1 MB). Networking is off by default and the job's timeout is 30 s unless set.

The folder written holds:

* ``image/``: a Dockerfile and the course's pinned learner ``requirements.txt``: the image
  the grader runs in (build it and push it where PrairieLearn pulls images from);
* ``serverFilesCourse/sync_async_grader/``: the course (``helpers/``, the lab as shipped)
  and ``grade.sh``, the entrypoint; copy it into your course's ``serverFilesCourse/``;
* ``info.json``: the question's ``externalGradingOptions`` (image, entrypoint with the
  lab, a timeout the grader fits in).

``grade.sh`` calls ``python -m helpers prairielearn LAB --run``: the notebook is graded as
LAB (``--sandbox auto``), one test per check; hidden checks show as "hidden check" with
passed/failed only, unless built with ``--name-hidden`` (PrairieLearn has no "after the
deadline" visibility: rebuild with it after the deadline). A file that is not a notebook,
or is another lab, is ``gradable: false`` with ``format_errors`` (no attempt is used up).
Paths: ``PL_GRADE_ROOT`` (default ``/grade``), ``COURSE_SOURCE`` (default the folder of
grade.sh), ``COURSE_PYTHON`` (default ``python3``): the tests run it in a temporary root.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from helpers.grading.feedback import blocks, to_markdown
from helpers.grading.platforms import (
    build_parser,
    check_output,
    clip,
    copy_course,
    env_path,
    grade_submission,
    lab_points,
    run_main,
    write_results,
    write_script,
)
from helpers.grading.report import Result, format_row
from helpers.grading.runner import STARTUP_TIMEOUT_S, TOTAL_TIMEOUT_S

FOLDER = "sync_async_grader"
"""The package's folder in the course's serverFilesCourse/."""

DOCKERFILE = """\
# The learner environment the grader runs in: the course's pinned requirements, and util-linux
# (setpriv, prlimit: the sandbox's fallback) and bubblewrap (the sandbox, where the container allows it).
FROM python:3.12-slim
RUN apt-get update && apt-get install -y --no-install-recommends util-linux bubblewrap \\
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
"""

GRADE_SH = r"""#!/usr/bin/env bash
# PrairieLearn runs this entrypoint for every submission, as root, in the grader image.
set -uo pipefail
ROOT="${PL_GRADE_ROOT:-/grade}"
SOURCE="${COURSE_SOURCE:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
RESULTS="$ROOT/results/results.json"
chmod -R a+rX "$SOURCE" 2>/dev/null  # the kernel runs as an unprivileged uid: it must read the course
cd "$SOURCE" && "${COURSE_PYTHON:-python3}" -m helpers prairielearn __LAB__ --run __NAME_HIDDEN__
status=$?
if [ ! -s "$RESULTS" ]; then  # the grader itself failed: not the learner's fault, so not gradable
    mkdir -p "$(dirname "$RESULTS")"
    why="The autograder failed before it could grade (exit status $status). Tell your instructor."
    printf '{"gradable": false, "format_errors": ["%s"]}\n' "$why" > "$RESULTS"
fi
exit 0
"""

JOB_TIMEOUT_S = int(TOTAL_TIMEOUT_S + STARTUP_TIMEOUT_S + 30)
"""The job's timeout in info.json: the grader's own budget for one submission, plus start-up."""


def parser() -> argparse.ArgumentParser:
    parse = build_parser("python -m helpers prairielearn", "Build a PrairieLearn external grader for one lab.")
    parse.add_argument(
        "--name-hidden",
        action="store_true",
        help="name the hidden checks and show their messages (PrairieLearn shows every test at once: after the deadline)",
    )
    parse.add_argument("--image", default="YOUR-REGISTRY/sync-async-grader:latest", help="the image name info.json names")
    return parse


def results(result: Result, max_points: float, *, name_hidden: bool = False) -> dict[str, Any]:
    """PrairieLearn's results.json for one submission: gradable with a 0-1 score, or not gradable and why."""
    if result.status == "error":
        return {"gradable": False, "score": 0.0, "message": clip(result.error), "format_errors": [clip(result.error)]}
    tests = []
    for c in result.checks:
        secret = c.hidden and not name_hidden
        tests.append(
            {
                "name": f"{c.question}: {'hidden check' if secret else c.description or c.name}",
                "description": "" if secret else c.name,
                "points": float(c.points),
                "max_points": float(c.max_points),
                "message": ("passed" if c.passed else "failed") if secret else check_output(c),
                "output": "",
            }
        )
    score = result.score / max_points if max_points else 0.0
    return {
        "gradable": True,
        "score": round(min(1.0, max(0.0, score)), 6),
        "message": f"{result.score:g} of {max_points:g} points",
        "output": clip(to_markdown(blocks(result, name_hidden=name_hidden)), 20 * 4000),
        "tests": tests,
    }


def build(args: argparse.Namespace) -> Path:
    """``DIR/prairielearn-LAB/``: the image, the serverFilesCourse folder, the question's info.json."""
    folder = Path(args.out) / f"prairielearn-{args.lab}"
    shutil.rmtree(folder, ignore_errors=True)
    grader = copy_course(args.lab, folder / "serverFilesCourse" / FOLDER)
    flag = "--name-hidden" if args.name_hidden else ""
    write_script(grader / "grade.sh", GRADE_SH.replace("__LAB__", args.lab).replace("__NAME_HIDDEN__", flag))
    (folder / "image").mkdir()
    (folder / "image" / "Dockerfile").write_text(DOCKERFILE, encoding="utf-8")
    shutil.copyfile(grader / "requirements.txt", folder / "image" / "requirements.txt")
    options = {
        "enabled": True,
        "image": args.image,
        "serverFilesCourse": [f"{FOLDER}/"],
        "entrypoint": f"/grade/serverFilesCourse/{FOLDER}/grade.sh",
        "timeout": JOB_TIMEOUT_S,
    }
    (folder / "info.json").write_text(json.dumps({"externalGradingOptions": options}, indent=2) + "\n", encoding="utf-8")
    return folder


def run(args: argparse.Namespace) -> int:
    """Inside PrairieLearn: grade the submission, write results.json (always), log for the instructor."""
    started = time.monotonic()
    root = env_path("PL_GRADE_ROOT", "/grade")
    source = env_path("COURSE_SOURCE", str(Path.cwd()))
    result = grade_submission(root / "student", args.lab, source / "labs")
    result.seconds = result.seconds or round(time.monotonic() - started, 2)
    write_results(root / "results" / "results.json", results(result, lab_points(args.lab), name_hidden=args.name_hidden))
    print(format_row(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Build the grader folder, or (``--run``) grade inside PrairieLearn."""
    return run_main(build, run, parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
