"""``make run``: execute every lesson and solution headless into build/, with HTML and a report.

Instructors use it to check the whole course on a machine before a class (and to
hand out rendered copies). Each notebook runs in a fresh kernel, in its own folder
(as JupyterLab would), with a per-cell timeout; one failure does not stop the rest.
The broker is the embedded one, or the one ``MQTT_URL`` names.

``build/`` gets the executed notebooks and their HTML pages (which render their diagrams
with no network, see :mod:`helpers.tools.html`), and ``build/report.html`` and
``build/claims.json``: every measured claim the notebooks stated, whether it holds, what
was not measured, and the machine (see :mod:`helpers.tools.report`). The exit status is
non-zero when a notebook failed or a claim did not hold.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type hints

from helpers.core.claims import from_outputs
from helpers.tools import html, report

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("notebooks", "solutions")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the colors of an IPython traceback


@contextmanager
def quiet_kernel_manager() -> Iterator[AsyncKernelManager]:
    """A kernel manager whose kernel talks over local IPC sockets in a private temp folder.

    Over TCP, ipykernel prints "Kernel is running over TCP without encryption" for every
    kernel, which buries the progress bar. IPC sockets (Unix domain sockets, POSIX only)
    are not reachable from the network at all, so the warning does not apply; on Windows,
    which has no IPC transport, the kernel stays on TCP (loopback only, as always).
    """
    with tempfile.TemporaryDirectory(prefix="course-kernel-") as folder:
        if sys.platform == "win32":
            yield AsyncKernelManager(kernel_name="python3")
        else:
            yield AsyncKernelManager(kernel_name="python3", transport="ipc", connection_file=str(Path(folder, "kernel.json")))


def kernel_env() -> dict[str, str]:
    """The kernel's environment: ours, without ``MPLBACKEND``.

    CI and tests export ``MPLBACKEND=Agg`` (no display); a kernel that inherits it draws
    into nothing, so ``plt.show()`` stores no image and the stored notebook loses its plots.
    The kernel's own default (inline) is what a learner sees in JupyterLab.
    """
    return {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}


def execute(path: Path, cell_timeout: int) -> tuple[nbformat.NotebookNode, bool, float, str]:
    """Run ``path`` in a fresh kernel in its own folder; the executed notebook, ok, seconds, message."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    ok, message = True, "ok"
    with quiet_kernel_manager() as km:
        client = NotebookClient(nb, km=km, timeout=cell_timeout, resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute(cleanup_kc=True, env=kernel_env())  # nbclient keeps a kernel it did not start running: stop it here
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
            ok, message = False, _ANSI.sub("", str(exc)).strip().splitlines()[-1][:300]
    return nb, ok, time.perf_counter() - start, message


def run_in_place(path: Path, cell_timeout: int) -> tuple[bool, float, str]:
    """Execute ``path`` and store its outputs back into it (authors, after a change).

    A run that failed is not written: the stored notebook keeps its last good outputs.
    """
    nb, ok, elapsed, message = execute(path, cell_timeout)
    if ok:
        nbformat.write(nb, path)
    return ok, elapsed, message


def _execute_into(path: Path, out_dir: Path, out_root: Path, cell_timeout: int) -> tuple[nbformat.NotebookNode, bool, float, str]:
    """Execute ``path``; write the executed .ipynb and an offline .html to ``out_dir`` (assets in ``out_root``)."""
    nb, ok, elapsed, message = execute(path, cell_timeout)
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)
    html.write_page(nb, out_dir / path.with_suffix(".html").name, out_root)
    return nb, ok, elapsed, message


def run_one(path: Path, out_dir: Path, cell_timeout: int) -> tuple[bool, float, str]:
    """Execute ``path`` into ``out_dir`` (.ipynb, .html, and the pages' ``_assets``); ok, seconds, message."""
    _, ok, elapsed, message = _execute_into(path, out_dir, out_dir, cell_timeout)
    return ok, elapsed, message


def run_for_report(path: Path, out_root: Path, cell_timeout: int) -> report.NotebookRun:
    """Execute ``path`` into ``out_root/<its folder>/``; the run, with the claims its outputs carry."""
    nb, ok, elapsed, message = _execute_into(path, out_root / path.parent.name, out_root, cell_timeout)
    return report.NotebookRun(_label(path), ok, elapsed, message, from_outputs(nb.cells))


def _label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers run", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="output folder (default build/)")
    parser.add_argument("--cell-timeout", type=int, default=120, help="seconds one cell may run")
    parser.add_argument("--in-place", action="store_true", help="store the outputs back into each notebook (authors)")
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks to run (default: notebooks/ and solutions/)")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.paths] or [p for folder in FOLDERS for p in sorted((ROOT / folder).glob("*.ipynb"))]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")

    if args.in_place:
        failures = 0
        for path in tqdm(paths, unit="notebook", desc="running", leave=False):
            ok, seconds, message = run_in_place(path, args.cell_timeout)
            failures += not ok
            tqdm.write(f"{'ok  ' if ok else 'FAIL'} {seconds:6.1f} s  {_label(path)}  {'' if ok else message}")
        print(
            f"{len(paths) - failures} of {len(paths)} notebooks ran cleanly; outputs stored in place (failed runs left untouched)"
        )
        return 1 if failures else 0

    broker = report.broker_description()
    runs: list[report.NotebookRun] = []
    with tqdm(paths, unit="notebook", desc="running") as bar:
        for path in bar:
            bar.set_postfix_str(_label(path))
            run = run_for_report(path, args.out, args.cell_timeout)
            runs.append(run)
            if not run.ok:
                tqdm.write(f"FAIL {run.path}: {run.message}")
    data = report.write(args.out, runs, report.machine(ROOT, broker))
    summary = data["summary"]
    print(f"{summary['headline']}.")
    print(
        f"{summary['holding']} claims hold, {summary['failing']} do not, {summary['not_measured']} not measured; "
        f"{summary['notebooks'] - summary['notebooks_failed']} of {summary['notebooks']} notebooks ran cleanly."
    )
    print(f"report: {args.out / 'report.html'}  (data: {args.out / 'claims.json'})")
    return 1 if summary["failing"] or summary["notebooks_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
