"""What the Gradescope and PrairieLearn autograders share: the course copied into a package,
the one submission of a platform's job graded as the assignment's lab, and the platform's
results written even when there was nothing to grade.

:mod:`helpers.grading.gradescope` and :mod:`helpers.grading.prairielearn` add each
platform's scripts and results format. Inside the platform's container the grader runs
as usual (:func:`~helpers.grading.runner.grade_file`, ``--sandbox auto``: bubblewrap where
the container allows it, else the ``setpriv`` fallback, which says what it lacks), one
submission, one kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.grading.checks import load_checks
from helpers.grading.report import Result
from helpers.grading.runner import ROOT, Options, grade_file, known_labs, resolve_plan

COURSE_FILES = ("pyproject.toml", "README.md", "requirements.txt")
"""Next to ``helpers/``, what ``pip install .`` of the course needs (the README is the package's long description)."""

MAX_TEXT = 4000
"""Characters kept of any one message or output in a platform's results (PrairieLearn takes at most 1 MB in all)."""

VISIBILITIES = ("after_published", "after_due_date", "hidden", "visible")


def lab_points(lab: str, checks_dir: Path | None = None) -> float:
    """The most points a submission of ``lab`` can earn (a score of 0 of this when there is nothing to grade)."""
    checks = load_checks(lab, checks_dir) if checks_dir else load_checks(lab)
    return float(sum(c.points for c in checks))


def copy_course(lab: str, target: Path) -> Path:
    """The course as the platform installs it: ``helpers/``, the packaging files, the lab as shipped.

    The lab as shipped tells the grader where a question's checks belong when a learner
    deleted its check cell. Caches and compiled files stay behind.
    """
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "helpers", target / "helpers", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in COURSE_FILES:
        shutil.copyfile(ROOT / name, target / name)
    (target / "labs").mkdir(exist_ok=True)
    shutil.copyfile(ROOT / "labs" / f"{lab}.ipynb", target / "labs" / f"{lab}.ipynb")
    return target


def write_script(path: Path, text: str) -> None:
    """An executable script (the platforms run them directly)."""
    path.write_text(text, encoding="utf-8", newline="\n")
    path.chmod(0o755)


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters, saying so."""
    return text if len(text) <= limit else text[: limit - 20] + " ... (cut)"


def find_submission(folder: Path, lab: str) -> tuple[Path | None, str]:
    """The notebook to grade in a platform's submission folder: (path, '') or (None, why not).

    Several notebooks: the one that is this lab (by metadata or name); none or two of
    those is a reason to say, not a guess.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".ipynb_checkpoints" not in p.parts)
    notebooks = [p for p in files if p.suffix == ".ipynb"]
    if not notebooks:
        found = ", ".join(p.name for p in files[:5]) or "nothing"
        return None, f"no Jupyter notebook (.ipynb) was submitted (found: {found}): submit the lab notebook {lab}.ipynb"
    if len(notebooks) == 1:
        return notebooks[0], ""
    named = [p for p in notebooks if lab in p.stem or _claims(p) == lab]
    if len(named) == 1:
        return named[0], ""
    listed = ", ".join(p.name for p in notebooks)
    return None, f"{len(notebooks)} notebooks were submitted ({listed}) and not exactly one is lab {lab}: submit only that one"


def _claims(path: Path) -> str | None:
    """The lab id a notebook's metadata names (None when unreadable or absent)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("course_lab", {})
    except (OSError, ValueError, AttributeError):
        return None
    claimed = meta.get("id") if isinstance(meta, dict) else None
    return claimed if isinstance(claimed, str) else None


def grade_submission(folder: Path, lab: str, labs_dir: Path, *, sandbox: str = "auto") -> Result:
    """Grade the one submission in ``folder`` as ``lab``; an error row (score 0) says why when it cannot be."""
    path, why = find_submission(folder, lab)
    plan = resolve_plan(Options(labs_dir=labs_dir, sandbox=sandbox, jobs=1), [path] if path else [])
    if plan.sandbox_notice:
        print(plan.sandbox_notice, file=sys.stderr, flush=True)  # the instructor's log (the platform's stdout), not the learner's
    if path is None:
        return Result(str(folder), lab=lab, status="error", error=why, sandbox=plan.sandbox)
    return asyncio.run(grade_file(path, plan, lab=lab))


def check_output(check: Any) -> str:
    """What a learner reads about one check: its message, and its first hint when it failed (never the code)."""
    if check.passed:
        return clip(check.message or "passed")
    hint = f"\nHint: {check.hint}" if check.hint else ""
    return clip(f"{check.message or 'did not pass'}{hint}")


def check_number(question: str, index: int) -> str:
    """``q2``'s third check is ``2.3`` (platforms sort tests by this)."""
    digits = "".join(ch for ch in question if ch.isdigit())
    return f"{digits or question}.{index}"


def notes_text(result: Result) -> str:
    """The submission's own notes (timeouts, errors of its cells), one per line."""
    return "\n".join(f"- {n}" for n in result.notes)


def write_results(path: Path, doc: dict[str, Any]) -> None:
    """The platform's results file, its folder made first (neither platform makes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def build_parser(prog: str, about: str) -> argparse.ArgumentParser:
    """The arguments both platform commands take: the lab, where to build, or --run inside the platform."""
    parse = argparse.ArgumentParser(prog=prog, description=about)
    parse.add_argument("lab", help="the lab id, e.g. 00_warmup (a file in labs/ and a checks module)")
    parse.add_argument("--out", type=Path, default=Path("build"), help="folder to write the package into (default build/)")
    parse.add_argument(
        "--run",
        action="store_true",
        help="inside the platform's container: grade the submission and write results.json (what the package's script calls)",
    )
    return parse


def env_path(name: str, default: str) -> Path:
    """A platform path, overridable by an environment variable (the tests run the package in a temporary root)."""
    return Path(os.environ.get(name) or default)


Step = Callable[[argparse.Namespace], Any]


def run_main(build: Step, run: Step, args: argparse.Namespace) -> int:
    """Build the package (printing where it is), or grade inside the platform with ``--run``."""
    if args.run:
        return int(run(args))
    labs, _ = known_labs()
    if args.lab not in labs:
        print(f"error: unknown lab {args.lab!r} (known labs: {', '.join(sorted(labs))})", file=sys.stderr)
        return 2
    where = build(args)
    print(f"wrote {where}")
    return 0
