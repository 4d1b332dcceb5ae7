"""``make run``: execute every lesson and solution headless into build/, with HTML.

Instructors use it to check the whole course on a machine before a class (and to
hand out rendered copies). Each notebook runs in a fresh kernel, in its own folder
(as JupyterLab would), with a per-cell timeout; one failure does not stop the rest.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("notebooks", "solutions")


def execute(path: Path, cell_timeout: int) -> tuple[nbformat.NotebookNode, bool, float, str]:
    """Run ``path`` in a fresh kernel in its own folder; the executed notebook, ok, seconds, message."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    ok, message = True, "ok"
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        ok, message = False, str(exc).strip().splitlines()[-1][:200]
    return nb, ok, time.perf_counter() - start, message


def run_in_place(path: Path, cell_timeout: int) -> tuple[bool, float, str]:
    """Execute ``path`` and store its outputs back into it (authors, after a change).

    A run that failed is not written: the stored notebook keeps its last good outputs.
    """
    nb, ok, elapsed, message = execute(path, cell_timeout)
    if ok:
        nbformat.write(nb, path)
    return ok, elapsed, message


def run_one(path: Path, out_dir: Path, cell_timeout: int) -> tuple[bool, float, str]:
    """Execute ``path``; write the executed .ipynb and .html to ``out_dir``."""
    nb, ok, elapsed, message = execute(path, cell_timeout)
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)
    html, _ = HTMLExporter().from_notebook_node(nb)
    (out_dir / path.with_suffix(".html").name).write_text(html, encoding="utf-8")
    return ok, elapsed, message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers run", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="output folder (default build/)")
    parser.add_argument("--cell-timeout", type=int, default=120, help="seconds one cell may run")
    parser.add_argument("--in-place", action="store_true", help="store the outputs back into each notebook (authors)")
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks to run (default: notebooks/ and solutions/)")
    args = parser.parse_args(argv)
    paths = args.paths or [p for folder in FOLDERS for p in sorted((ROOT / folder).glob("*.ipynb"))]
    failures = 0
    for path in paths:
        if args.in_place:
            ok, seconds, message = run_in_place(path, args.cell_timeout)
        else:
            ok, seconds, message = run_one(path, args.out / path.parent.name, args.cell_timeout)
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {seconds:6.1f} s  {path.parent.name}/{path.name}  {'' if ok else message}", flush=True)
    where = "outputs stored in place (failed runs left untouched)" if args.in_place else f"results in {args.out}/"
    print(f"{len(paths) - failures} of {len(paths)} notebooks ran cleanly; {where}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
