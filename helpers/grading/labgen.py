"""Write labs/ from solutions/: one source of truth for every exercise.

    python -m helpers labs            # (make labs) rewrite labs/*.ipynb from solutions/*.ipynb
    python -m helpers labs --check    # exit 1 and name the files if labs/ is out of date

A solution notebook is the master. In its code cells the learner's part sits between
two marker lines, and the lab gets a placeholder instead::

    # BEGIN SOLUTION                          (lab)  # HINT: read ?name=
    # HINT: read ?name=                  ==>          raise NotImplementedError("your code here")
    name = request.query.get("name", "world")
    # END SOLUTION

* ``# HINT: ...`` lines inside the block are kept, at their indentation.
* ``# LAB: <code>`` lines inside the block replace the ``raise`` with ``<code>``, for
  places where a statement would be wrong (e.g. ``# LAB: p50_ms = ...``).
* A cell tagged ``solution_only`` does not appear in the lab.
* Markdown: ``<!-- BEGIN SOLUTION -->`` ... ``<!-- END SOLUTION -->`` becomes a prompt.

The lab gets no outputs, no execution counts, and ``metadata.course_lab`` (its id and
source), which the grader reads to know which checks apply. Unbalanced markers are an
error naming the notebook, cell and line. CONTRIBUTING.md ("Writing a lab") is the whole
authoring guide (checks, hidden checks, tests).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = ROOT / "solutions"
LABS = ROOT / "labs"

BEGIN = re.compile(r"^(?P<indent>[ \t]*)#+\s*BEGIN SOLUTION\s*$")
END = re.compile(r"^[ \t]*#+\s*END SOLUTION\s*$")
HINT = re.compile(r"^[ \t]*#\s*HINT\b")
LAB_LINE = re.compile(r"^(?P<indent>[ \t]*)#\s*LAB:\s?(?P<code>.*)$")
MD_BEGIN = re.compile(r"^\s*<!--\s*BEGIN SOLUTION\s*-->\s*$")
MD_END = re.compile(r"^\s*<!--\s*END SOLUTION\s*-->\s*$")

PLACEHOLDER = 'raise NotImplementedError("your code here")'
MD_PLACEHOLDER = "_Your answer here._"
SOLUTION_ONLY_TAG = "solution_only"
GENERATOR = "helpers.grading.labgen"
NB_VERSION = 4


class MarkerError(ValueError):
    """Solution markers that do not pair up; the message names notebook, cell and line."""


@dataclass(frozen=True)
class Written:
    """One lab the generator produced (or would produce)."""

    solution: Path
    lab: Path
    text: str


def strip_code(source: str, where: str = "cell") -> tuple[str, int]:
    """Replace each marked block of a code cell; return (lab source, number of blocks)."""
    out: list[str] = []
    block: list[str] | None = None
    indent = ""
    blocks = 0
    for number, line in enumerate(source.split("\n"), start=1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if block is not None:
                raise MarkerError(f"{where}, line {number}: BEGIN SOLUTION inside another block (missing END SOLUTION?)")
            block, indent = [], begin.group("indent")
        elif end:
            if block is None:
                raise MarkerError(f"{where}, line {number}: END SOLUTION without BEGIN SOLUTION")
            hints = [ln for ln in block if HINT.match(ln)]
            replacements = [m for m in (LAB_LINE.match(ln) for ln in block) if m]
            out.extend(hints)
            if replacements:
                out.extend(m.group("indent") + m.group("code") for m in replacements)
            else:
                out.append(indent + PLACEHOLDER)
            block, blocks = None, blocks + 1
        elif block is not None:
            block.append(line)
        else:
            out.append(line)
    if block is not None:
        raise MarkerError(f"{where}: BEGIN SOLUTION without END SOLUTION")
    return "\n".join(out), blocks


def strip_markdown(source: str, where: str = "cell") -> tuple[str, int]:
    """Replace ``<!-- BEGIN SOLUTION -->`` ... ``<!-- END SOLUTION -->`` with a prompt."""
    out: list[str] = []
    inside = False
    blocks = 0
    for number, line in enumerate(source.split("\n"), start=1):
        if MD_BEGIN.match(line):
            if inside:
                raise MarkerError(f"{where}, line {number}: BEGIN SOLUTION inside another block")
            inside = True
        elif MD_END.match(line):
            if not inside:
                raise MarkerError(f"{where}, line {number}: END SOLUTION without BEGIN SOLUTION")
            out.append(MD_PLACEHOLDER)
            inside, blocks = False, blocks + 1
        elif not inside:
            out.append(line)
    if inside:
        raise MarkerError(f"{where}: BEGIN SOLUTION without END SOLUTION")
    return "\n".join(out), blocks


def lab_id(path: Path) -> str:
    """The lab id is the notebook's file name without .ipynb (``00_warmup``)."""
    return path.stem


def make_lab(solution: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The lab notebook for a solution notebook (a new object; the solution is untouched)."""
    lab = copy.deepcopy(solution)
    cells = []
    blocks = 0
    for index, cell in enumerate(lab.cells):
        where = f"{name}.ipynb cell {index}"
        if SOLUTION_ONLY_TAG in cell.get("metadata", {}).get("tags", []):
            continue
        if cell.cell_type == "code":
            cell.source, found = strip_code(cell.source, where)
            cell.outputs = []
            cell.execution_count = None
        elif cell.cell_type == "markdown":
            cell.source, found = strip_markdown(cell.source, where)
        else:
            found = 0
        blocks += found
        meta = cell.get("metadata", {})
        for key in ("execution", "collapsed", "scrolled"):
            meta.pop(key, None)
        cells.append(cell)
    if not blocks:
        raise MarkerError(f"{name}.ipynb has no '# BEGIN SOLUTION' block: nothing for the learner to do")
    lab.cells = cells
    meta = {k: v for k, v in lab.metadata.items() if k in ("kernelspec", "language_info")}
    meta["course_lab"] = {"id": name, "source": f"solutions/{name}.ipynb", "generator": GENERATOR}
    lab.metadata = meta
    return lab


def render(solution_path: Path, labs_dir: Path = LABS) -> Written:
    """What the generator writes for one solution notebook (not written yet)."""
    solution = nbformat.read(solution_path, as_version=NB_VERSION)
    lab = make_lab(solution, lab_id(solution_path))
    return Written(solution_path, labs_dir / solution_path.name, nbformat.writes(lab) + "\n")


def solution_paths(solutions_dir: Path = SOLUTIONS) -> list[Path]:
    """Every solution notebook, in course order."""
    return sorted(p for p in solutions_dir.glob("*.ipynb") if not p.name.startswith("."))


def _generated_by_us(path: Path) -> bool:
    try:
        meta = nbformat.read(path, as_version=NB_VERSION).metadata.get("course_lab", {})
    except Exception:  # noqa: BLE001 - an unreadable file is not ours
        return False
    return meta.get("generator") == GENERATOR


def stale(solutions_dir: Path = SOLUTIONS, labs_dir: Path = LABS) -> list[str]:
    """Why labs/ differs from what the generator would write (empty when up to date)."""
    problems = []
    expected = {w.lab.name: w for w in map(lambda p: render(p, labs_dir), solution_paths(solutions_dir))}
    for written in expected.values():
        if not written.lab.exists():
            problems.append(f"{written.lab} is missing")
        elif written.lab.read_text(encoding="utf-8") != written.text:
            problems.append(f"{written.lab} differs from what {written.solution.name} generates")
    for path in sorted(labs_dir.glob("*.ipynb")):
        if path.name not in expected and _generated_by_us(path):
            problems.append(f"{path} has no solution any more (solutions/{path.name})")
    return problems


def generate(solutions_dir: Path = SOLUTIONS, labs_dir: Path = LABS) -> list[Written]:
    """Write every lab; remove generated labs whose solution is gone. Returns what was written."""
    labs_dir.mkdir(parents=True, exist_ok=True)
    written = [render(p, labs_dir) for p in solution_paths(solutions_dir)]  # all or nothing on errors
    for w in written:
        if not w.lab.exists() or w.lab.read_text(encoding="utf-8") != w.text:
            w.lab.write_text(w.text, encoding="utf-8")
    names = {w.lab.name for w in written}
    for path in labs_dir.glob("*.ipynb"):
        if path.name not in names and _generated_by_us(path):
            path.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers labs", description="Write labs/ from solutions/.")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if labs/ is out of date")
    parser.add_argument("--solutions", type=Path, default=SOLUTIONS, help="folder of solution notebooks")
    parser.add_argument("--labs", type=Path, default=LABS, help="folder to write labs into")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = stale(args.solutions, args.labs)
            for problem in problems:
                print(problem)
            if problems:
                print("labs/ is out of date: run 'make labs' (python -m helpers labs)")
                return 1
            print(f"labs/ is up to date ({len(solution_paths(args.solutions))} labs)")
            return 0
        for w in generate(args.solutions, args.labs):
            print(f"{w.solution.relative_to(w.solution.parent.parent)} -> {w.lab.relative_to(w.lab.parent.parent)}")
        return 0
    except MarkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
