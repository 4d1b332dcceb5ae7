"""Every notebook names its kernel the way JupyterLab writes it back.

JupyterLab 4.6 rewrites ``kernelspec.display_name`` "Python 3" to "Python 3 (ipykernel)"
when a notebook opens: the tab shows unsaved changes at once and, with autosave on, the
learner's file is rewritten before they typed anything (found by the browser test).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for folder in ("notebooks", "labs", "solutions") for p in (ROOT / folder).glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_kernelspec_is_what_jupyterlab_writes(path: Path) -> None:
    spec = nbformat.read(path, as_version=4).metadata.get("kernelspec", {})
    assert spec == {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}, spec
