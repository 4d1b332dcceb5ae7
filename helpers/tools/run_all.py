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


def run_one(path: Path, out_dir: Path, cell_timeout: int) -> tuple[bool, float, str]:
    """Execute ``path``; write the executed .ipynb and .html to ``out_dir``."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    ok, message = True, "ok"
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        ok, message = False, str(exc).strip().splitlines()[-1][:200]
    elapsed = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)
    html, _ = HTMLExporter().from_notebook_node(nb)
    (out_dir / path.with_suffix(".html").name).write_text(html, encoding="utf-8")
    return ok, elapsed, message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers run", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="output folder (default build/)")
    parser.add_argument("--cell-timeout", type=int, default=120, help="seconds one cell may run")
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks to run (default: notebooks/ and solutions/)")
    args = parser.parse_args(argv)
    paths = args.paths or [p for folder in FOLDERS for p in sorted((ROOT / folder).glob("*.ipynb"))]
    failures = 0
    for path in paths:
        ok, seconds, message = run_one(path, args.out / path.parent.name, args.cell_timeout)
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {seconds:6.1f} s  {path.parent.name}/{path.name}  {'' if ok else message}", flush=True)
    print(f"{len(paths) - failures} of {len(paths)} notebooks ran cleanly; results in {args.out}/")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
