"""Every stored notebook shows what its prose says: its figures, its claims' verdicts, real numbers.

A notebook re-executed in a kernel that draws into nothing (``MPLBACKEND=Agg`` inherited
from a test or CI shell) stores no figure at all, while its prose still says "left, the
orders done over time". These tests read the stored notebooks (nothing is executed), so
a re-run that lost its plots, kept an ``Out[]`` that is a raw ``Claim(...)`` repr, or
printed ``nan`` where a measured number belongs fails here before anyone reads it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
STORED = sorted(p for folder in ("notebooks", "solutions") for p in (ROOT / folder).glob("*.ipynb"))

FIGURES: dict[str, int] = {
    "notebooks/00_welcome.ipynb": 0,
    "notebooks/01_sync_request_response.ipynb": 1,
    "notebooks/02_sync_failure_modes.ipynb": 6,
    "notebooks/03_async_messaging.ipynb": 4,
    "notebooks/04_async_pitfalls.ipynb": 3,
    "notebooks/05_head_to_head.ipynb": 2,
    "notebooks/06_choosing_and_hybrid.ipynb": 1,
    "notebooks/07_mini_challenge.ipynb": 4,
    "notebooks/08_beyond_one_kernel.ipynb": 2,
    "solutions/00_warmup.ipynb": 0,
    "solutions/02_resilient_client.ipynb": 0,
    "solutions/04_reliable_consumer.ipynb": 0,
    "solutions/06_hybrid_job.ipynb": 0,
    "solutions/07_image_pipeline.ipynb": 0,
}
"""The one place that says how many stored figures (``image/png`` outputs) each notebook's prose refers to.

A new notebook needs its line here (a test says so), so nobody forgets to decide."""

_DRAWS = re.compile(r"^\s*plt\.show\(\)", re.MULTILINE)
_NAN = re.compile(r"\bnan\b", re.IGNORECASE)


def _label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _code_cells(path: Path) -> list[Any]:
    return [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def _figures(cell: Any) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def _texts(cell: Any) -> list[str]:
    """Every text a reader sees in a cell's outputs: streams, plain text, Markdown (a claim's verdict line)."""
    texts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            texts.append(str(output.get("text", "")))
        data = output.get("data", {})
        texts.extend(str(data[mime]) for mime in ("text/plain", "text/markdown") if mime in data)
    return texts


def test_every_stored_notebook_has_its_figure_count() -> None:
    assert sorted(FIGURES) == [_label(p) for p in STORED], "add the new notebook's figure count to FIGURES (or drop a gone one)"


@pytest.mark.parametrize("path", STORED, ids=_label)
def test_stored_figures_are_there(path: Path) -> None:
    stored = sum(_figures(cell) for cell in _code_cells(path))
    assert stored >= FIGURES[_label(path)], (
        f"{_label(path)} stores {stored} figure(s), its prose refers to {FIGURES[_label(path)]}: re-execute it with "
        "`python -m helpers run --in-place` (a kernel that inherits MPLBACKEND=Agg draws into nothing)"
    )


@pytest.mark.parametrize("path", STORED, ids=_label)
def test_every_cell_that_shows_a_plot_stored_it(path: Path) -> None:
    empty = [i for i, cell in enumerate(_code_cells(path)) if _DRAWS.search(cell.source) and not _figures(cell)]
    assert not empty, f"{_label(path)}: code cell(s) {empty} call plt.show() and stored no figure"


@pytest.mark.parametrize("path", STORED, ids=_label)
def test_no_raw_claim_repr_is_stored(path: Path) -> None:
    shown = [i for i, cell in enumerate(_code_cells(path)) if any("Claim(" in text for text in _texts(cell))]
    assert not shown, f"{_label(path)}: code cell(s) {shown} show a raw Claim(...) repr (claim() returns None: re-execute)"


@pytest.mark.parametrize("path", STORED, ids=_label)
def test_no_nan_where_a_number_belongs(path: Path) -> None:
    lines = [
        line.strip() for cell in _code_cells(path) for text in _texts(cell) for line in text.splitlines() if _NAN.search(line)
    ]
    assert not lines, f"{_label(path)} prints nan where a measured number belongs: {lines[:3]}"


@pytest.mark.kernel
def test_an_in_place_run_stores_figures_even_from_a_shell_with_mplbackend_agg(tmp_path: Path, monkeypatch: Any) -> None:
    """The root cause of the lost figures: a kernel that inherits ``MPLBACKEND=Agg`` draws into nothing."""
    from helpers.tools import run_all

    monkeypatch.setenv("MPLBACKEND", "Agg")  # as .ci/run and many test shells export it
    path = tmp_path / "plot.ipynb"
    plot = nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
    notebook = nbformat.v4.new_notebook(cells=[plot])
    notebook.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nbformat.write(notebook, path)
    ok, _, message = run_all.run_in_place(path, cell_timeout=60)
    assert ok, message
    assert _figures(_code_cells(path)[0]) == 1, "the kernel drew with the Agg backend: plt.show() stored nothing"
