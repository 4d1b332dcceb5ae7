"""Run All, twice, in one kernel works: every broker and service a lesson starts, it stops or replaces.

A learner re-runs a notebook all the time. The embedded broker is a child process now,
so a second run must replace it cleanly (no port clash, no orphan process), and the
HTTP services must be replaced by name.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import psutil  # type: ignore[import-untyped]  # psutil ships no hints; types-psutil is not worth a pin
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def broker_children(kernel_pid: int) -> list[psutil.Process]:
    """The embedded brokers the kernel started (iotcore's child processes)."""
    kids = psutil.Process(kernel_pid).children(recursive=True)
    return [p for p in kids if "iotcore" in " ".join(p.cmdline())]


@pytest.mark.broker
@pytest.mark.parametrize("name", ["00_welcome", "04_async_pitfalls", "07_mini_challenge"])
@pytest.mark.kernel
def test_run_all_twice_in_one_kernel(name: str) -> None:
    path = ROOT / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    with client.setup_kernel():
        assert client.km is not None
        assert client.km.provisioner is not None
        kernel_pid = client.km.provisioner.process.pid  # type: ignore[attr-defined]  # a local kernel: a Popen
        for run in (1, 2):
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)  # raises CellExecutionError on any error
            errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
            assert not errors, f"run {run}: {errors[0]['ename']}: {errors[0]['evalue']}"
            left = broker_children(kernel_pid)
            assert not left, f"run {run} left {len(left)} embedded broker process(es) running"
