"""The saved notebook: where ``ctx.markdown()`` reads the learner's text outside the grader.

A kernel cannot see what the browser has not saved, so a check of a diagram or a written
answer reads the newest saved notebook of the lab in the kernel's working folder (the
grader hands the submitted file's Markdown over instead). Re-exported by
:mod:`helpers.grading.checks`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers.grading.verdicts import CheckFailed

SAVE_FIRST = "save the notebook (Ctrl+S), then check again"
"""What to do when the saved notebook lacks what the learner just typed (Markdown is read from the file)."""


def _lab_of(doc: Any) -> str | None:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    lab = meta.get("course_lab") if isinstance(meta, dict) else None
    claimed = lab.get("id") if isinstance(lab, dict) else None
    return claimed if isinstance(claimed, str) else None


def _markdown_cells(doc: dict[str, Any]) -> list[str]:
    texts = []
    for cell in doc.get("cells") or []:
        if isinstance(cell, dict) and cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            texts.append("".join(map(str, source)) if isinstance(source, list) else str(source or ""))
    return texts


def lab_notebooks(lab: str, folder: Path | str) -> list[Path]:
    """The notebooks of ``lab`` in ``folder``, newest first.

    A notebook belongs to the lab when its ``metadata.course_lab.id`` says so (the lab
    generator writes it), or, without that metadata (a solution), when its file name
    contains the lab id: the grader's own two rules (``runner.identify_lab``).
    """
    found: list[tuple[float, Path]] = []
    for path in Path(folder).glob("*.ipynb"):
        try:
            claimed = _lab_of(json.loads(path.read_text(encoding="utf-8")))
            modified = path.stat().st_mtime
        except (OSError, ValueError):
            continue  # unreadable, half-written or not a notebook: not the learner's lab
        if claimed == lab or (claimed is None and lab and lab in path.stem):
            found.append((modified, path))
    return [path for _, path in sorted(found, key=lambda item: item[0], reverse=True)]


def saved_markdown(lab: str, folder: Path | str) -> list[str]:
    """The Markdown cells of the newest saved notebook of ``lab`` in ``folder`` (the kernel's working folder).

    Raises :class:`CheckFailed` (telling the learner to save) when there is none: a
    kernel cannot see what the browser has not saved yet.
    """
    for path in lab_notebooks(lab, folder):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # replaced or removed since it was listed: try the next one
        if isinstance(doc, dict):
            return _markdown_cells(doc)
    raise CheckFailed(f"found no saved notebook of lab {lab or '?'} in {Path(folder)}: {SAVE_FIRST}")
