"""Lesson 07's claims (M13) that tests/test_capstone_pipeline.py does not already assert.

The experiments (upload latency, head-of-line blocking, the notifier outage, the killed
worker, the failing transform) and most of the Upload service are covered there; here:
the lesson's own reference diagram, the status resource's Retry-After as a client polls
it, and two hostile inputs the lesson's table sends over HTTP (a text file dressed up as
a JPEG, and a user name that looks like a path).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from PIL import Image

from helpers.capstone import images
from helpers.capstone.diagram import check_design, find_mermaid, parse_flowchart
from helpers.capstone.pipeline import ReferenceSystem, start_pipeline
from helpers.core.broker import Broker
from helpers.core.problems import PROBLEM_JSON
from helpers.core.waiting import until

LESSON = Path(__file__).resolve().parents[1] / "notebooks" / "07_mini_challenge.ipynb"
ASYNC_UPLOAD = 'upload -.->|"MQTT image.uploaded"| broker'

WORKERS = 1
WORK = 0.3
"""Lesson 07's reference system here (the ``pipeline`` fixture of conftest.py): one worker, 0.3 s a photo."""


def reference_diagram() -> str:
    """The Mermaid block of the lesson's cell with id "reference-design" (what the lesson's own check reads)."""
    cell = next(c for c in nbformat.read(LESSON, as_version=4).cells if c.get("id") == "reference-design")
    text = find_mermaid(cell.source)
    assert text is not None, "the reference-design cell has no Mermaid block"
    return text


def test_the_lessons_reference_design_passes_every_check() -> None:
    chart = parse_flowchart(reference_diagram())
    findings = check_design(chart)
    assert findings, [str(f) for f in findings if not f.ok]
    assert all(f.ok for f in findings), [str(f) for f in findings if not f.ok]


def test_the_reference_drawn_with_a_sync_upload_to_the_processor_fails() -> None:
    reference = reference_diagram()
    assert ASYNC_UPLOAD in reference, "the lesson's naive variant replaces this arrow"
    naive = reference.replace(ASYNC_UPLOAD, 'upload -->|"HTTP POST /process"| processor')
    failed = [f.message for f in check_design(parse_flowchart(naive)) if not f.ok]
    assert any("the upload would wait for processing" in message for message in failed), failed


@pytest.mark.broker
async def test_the_status_says_when_to_ask_again_until_the_job_is_final(pipeline: ReferenceSystem) -> None:
    answer = await pipeline.post(images.sample_photo(), "ada")
    assert answer.status == 202
    assert answer.job_id is not None
    status_url = f"{pipeline.url}{answer.location}"
    polls: list[tuple[str, str | None]] = []

    async def final() -> bool:
        async with pipeline.session.get(status_url, allow_redirects=False) as response:
            assert response.status in (200, 303)
            assert response.headers["Cache-Control"] == "no-store"
            body = await response.json()
            polls.append((body["state"], response.headers.get("Retry-After")))
            return body["state"] in ("succeeded", "failed")

    assert await until(final, 20, poll=0.05)
    assert polls[0][0] in ("accepted", "running"), polls
    assert all(after == "1" for state, after in polls if state in ("accepted", "running")), polls
    assert polls[-1] == ("succeeded", None), "a finished job has nothing left to wait for: no Retry-After"


@pytest.mark.broker
async def test_a_text_file_sent_as_a_jpeg_and_a_path_as_user_name_are_refused_over_http(pipeline: ReferenceSystem) -> None:
    sent = {
        "text named holiday.jpg": (
            images.not_an_image(),
            "eve",
            {"Content-Type": "image/jpeg", "Content-Disposition": 'attachment; filename="holiday.jpg"'},
            415,
        ),
        "user ../../etc/passwd": (images.sample_photo(), "../../etc/passwd", {"Content-Type": "image/jpeg"}, 400),
        "user ..": (images.sample_photo(), "..", {"Content-Type": "image/jpeg"}, 400),
        "user -": (images.sample_photo(), "-", {"Content-Type": "image/jpeg"}, 400),
    }
    for label, (data, user, headers, expected) in sent.items():
        async with pipeline.session.post(f"{pipeline.url}/images", params={"user": user}, data=data, headers=headers) as response:
            body = await response.json(content_type=None)
            assert response.status == expected, f"{label}: {response.status} {body}"
            assert response.content_type == PROBLEM_JSON, (label, body)
            assert body["status"] == expected, (label, body)
    assert len(pipeline.upload_service.store) == 0
    assert pipeline.upload_service.published == 0


async def test_caption_model_is_swapped_by_a_parameter(broker: Broker, tmp_path: Path) -> None:
    """A learner's own caption function (a real model, say) replaces the default, with no monkeypatching."""
    seen: list[tuple[int, int]] = []

    def my_caption(img: Image.Image) -> str:
        seen.append(img.size)
        return f"my model saw a {img.width}x{img.height} picture"

    pipeline = await start_pipeline(broker, tmp_path, workers=1, work=0.0, caption_fn=my_caption)
    try:
        answer = await pipeline.post(images.sample_photo(), "ada")
        assert answer.job_id is not None
        assert await pipeline.wait_finished([answer.job_id], timeout=30)
        status, body = await pipeline.status(answer.job_id, follow=True)
    finally:
        await pipeline.stop()
    assert status in (200, 303)
    assert body["caption"].startswith("my model saw a ")
    assert len(seen) == 1
