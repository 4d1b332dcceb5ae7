"""``python -m helpers gradescope LAB --out DIR``: a Gradescope autograder zip for one lab.

The zip holds ``setup.sh`` and ``run_autograder`` at its root, next to the course
(``helpers/``, ``pyproject.toml``, the learner pins ``requirements.txt``, the lab as
shipped). Gradescope unpacks it into ``/autograder/source`` and runs ``setup.sh`` once
when it builds the image: it installs Python (Ubuntu 24.04 base image: 3.12), util-linux and
bubblewrap, then a virtualenv with the pinned learner environment and the course. For every
submission it runs ``run_autograder``, which calls ``python -m helpers gradescope LAB --run``:
the notebook found in ``/autograder/submission/`` is graded as LAB (``--sandbox auto``) and
``/autograder/results/results.json`` is written: one test per check, visible checks
visible, hidden ones ``after_published`` (``--hidden-visibility``), each test's output the
check's message and first-level hint (never the code hint), the top-level output the
learner's feedback (Markdown). A submission that is not a notebook, or is another lab,
still gets a results.json: score 0 and one visible test saying why.

Paths come from environment variables so the tests can run the package in a temporary
root laid out like Gradescope's: ``GRADESCOPE_ROOT`` (default ``/autograder``),
``COURSE_SOURCE`` (default ``$GRADESCOPE_ROOT/source``), ``COURSE_VENV`` (default
``$GRADESCOPE_ROOT/venv``); ``setup.sh`` also reads ``COURSE_SKIP_APT`` and ``COURSE_PIP_FLAGS``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from helpers.grading.feedback import blocks, to_markdown
from helpers.grading.platforms import (
    VISIBILITIES,
    build_parser,
    check_number,
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

SETUP_SH = r"""#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image (Ubuntu 24.04 base image).
# It installs the learner environment (the course's pinned requirements.txt) and the course's grader.
set -euo pipefail
SOURCE="${COURSE_SOURCE:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
VENV="${COURSE_VENV:-/autograder/venv}"
PYTHON="${COURSE_PYTHON:-python3}"
if [ -z "${COURSE_SKIP_APT:-}" ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    # util-linux: setpriv and prlimit (the sandbox's fallback); bubblewrap: the sandbox, where the container allows it
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip util-linux bubblewrap
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup.sh: the course needs Python 3.11 or newer; choose Gradescope's Ubuntu 24.04 base image" >&2
    exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC2086  # COURSE_PIP_FLAGS is a list of flags
"$VENV/bin/python" -m pip install ${COURSE_PIP_FLAGS:-} -r "$SOURCE/requirements.txt"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install ${COURSE_PIP_FLAGS:-} --no-deps "$SOURCE"
# the kernel runs as an unprivileged uid: it must read the course
chmod -R a+rX "$SOURCE"
echo "setup.sh: done ($("$VENV/bin/python" --version))"
"""

RUN_AUTOGRADER = r"""#!/usr/bin/env bash
# Gradescope runs this for every submission, as root, in a fresh container.
set -uo pipefail
ROOT="${GRADESCOPE_ROOT:-/autograder}"
SOURCE="${COURSE_SOURCE:-$ROOT/source}"
VENV="${COURSE_VENV:-$ROOT/venv}"
RESULTS="$ROOT/results/results.json"
cd "$SOURCE" && "$VENV/bin/python" -m helpers gradescope __LAB__ --run --hidden-visibility __HIDDEN__
status=$?
if [ ! -s "$RESULTS" ]; then  # the grader itself failed: the learner still gets a result, and a reason
    mkdir -p "$(dirname "$RESULTS")"
    why="The autograder failed before it could grade (exit status $status). Tell your instructor."
    printf '{"score": 0, "output": "%s", "tests": []}\n' "$why" > "$RESULTS"
fi
exit 0
"""


def parser() -> argparse.ArgumentParser:
    parse = build_parser("python -m helpers gradescope", "Build a Gradescope autograder zip for one lab.")
    parse.add_argument(
        "--hidden-visibility",
        choices=VISIBILITIES[:3],
        default="after_published",
        help="when learners see the hidden checks' results (default after_published: once you publish the grades)",
    )
    return parse


def results(result: Result, max_points: float, hidden_visibility: str = "after_published") -> dict[str, Any]:
    """Gradescope's results.json for one graded submission (or one that could not be graded)."""
    doc: dict[str, Any] = {
        "execution_time": round(result.seconds),
        "output": clip(to_markdown(blocks(result)), 20 * 4000),
        "output_format": "md",
        "visibility": "visible",
        "stdout_visibility": "hidden",  # the grader's log: the sandbox used, the instructor's details
    }
    if result.status == "error":
        why = {"name": "Submission", "number": "0", "score": 0.0, "max_score": max_points, "status": "failed"}
        doc.update(score=0.0, tests=[{**why, "output": clip(result.error), "visibility": "visible"}])
        return doc
    tests = []
    seen: dict[str, int] = {}
    for c in result.checks:
        seen[c.question] = seen.get(c.question, 0) + 1
        tests.append(
            {
                "name": f"{c.question}: {c.description or c.name}" + (" (hidden)" if c.hidden else ""),
                "number": check_number(c.question, seen[c.question]),
                "score": float(c.points),
                "max_score": float(c.max_points),
                "status": "passed" if c.passed else "failed",
                "output": check_output(c),
                "visibility": hidden_visibility if c.hidden else "visible",
            }
        )
    doc.update(score=float(result.score), tests=tests)
    return doc


def build(args: argparse.Namespace) -> Path:
    """``DIR/gradescope-LAB/`` (the zip's content, for a look) and ``DIR/gradescope-LAB.zip``."""
    folder = Path(args.out) / f"gradescope-{args.lab}"
    shutil.rmtree(folder, ignore_errors=True)
    copy_course(args.lab, folder)
    write_script(folder / "setup.sh", SETUP_SH)
    script = RUN_AUTOGRADER.replace("__LAB__", args.lab).replace("__HIDDEN__", args.hidden_visibility)
    write_script(folder / "run_autograder", script)
    return Path(shutil.make_archive(str(folder), "zip", root_dir=folder))


def run(args: argparse.Namespace) -> int:
    """Inside Gradescope: grade the submission, write results.json (always), log for the instructor."""
    started = time.monotonic()
    root = env_path("GRADESCOPE_ROOT", "/autograder")
    source = env_path("COURSE_SOURCE", str(root / "source"))
    result = grade_submission(root / "submission", args.lab, source / "labs")
    result.seconds = result.seconds or round(time.monotonic() - started, 2)
    write_results(root / "results" / "results.json", results(result, lab_points(args.lab), args.hidden_visibility))
    print(format_row(result), flush=True)  # stdout: the instructor sees it, the learner does not
    return 0


def main(argv: list[str] | None = None) -> int:
    """Build the zip, or (``--run``) grade inside Gradescope."""
    return run_main(build, run, parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
