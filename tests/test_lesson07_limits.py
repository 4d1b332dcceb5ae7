"""Lesson 07 states Upload's limits in prose; the numbers there are the code's, not typed once and left to drift."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.capstone import images, upload
from helpers.core import connections

LESSON = Path(__file__).resolve().parents[1] / "notebooks" / "07_mini_challenge.ipynb"


def limits_paragraph() -> str:
    cells = json.loads(LESSON.read_text(encoding="utf-8"))["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    start = text.index("The limits, all in")
    return " ".join(text[start : text.index("\n\n", start)].split())


def test_the_limits_the_lesson_states_are_the_ones_upload_enforces() -> None:
    said = limits_paragraph()
    stated = [
        f"at most {images.MAX_PIXELS // 1_000_000} MP",
        f"{images.MAX_SIDE:,} px a side",
        f"a {images.MAX_ASPECT_RATIO:g}:1 aspect ratio",
        f"at most {images.IMAGE_WORK_SLOTS} large images (over {upload.LARGE_IMAGE_PIXELS // 1_000_000} MP)",
        f"lets {upload.DECODE_QUEUE} more wait",
        f"at most {upload.MAX_FORM_PARTS} parts",
        f"has {connections.HEAD_TIMEOUT_S:g} s to send its request line and headers",
        f"at most {images.MAX_PNG_CHUNKS:,} PNG chunks besides the image data and {images.MAX_JPEG_SCANS} JPEG scans",
    ]
    missing = [phrase for phrase in stated if phrase not in said]
    assert missing == [], f"lesson 07 says: {said!r}"
