"""Lesson 07's services and the claims of its experiments, against the broker in use.

Run on the embedded broker (``pytest tests/test_capstone_pipeline.py``) and on Mosquitto
(``python -m helpers mosquitto -- pytest tests/test_capstone_pipeline.py``). Images are
processed with small ``work`` values (about 0.1-0.4 s each on 2 cores), and every timing
claim is a ratio or an order, with wide margins: the machine may be busy.
"""

from __future__ import annotations

import asyncio
import io
import re
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display needed

import aiohttp
import matplotlib.pyplot as plt
import pytest
from matplotlib.axes import Axes
from PIL import Image

from helpers.capstone import experiments, images
from helpers.capstone.drills import FAILING_USER, failing_transform, notifier_outage, upload_restarted, worker_killed
from helpers.capstone.experiments import head_of_line, upload_latency
from helpers.capstone.jobs import IMAGE_UPLOADED, JOB_DONE, Job, Topics, UploadJobs
from helpers.capstone.pipeline import ReferenceSystem, reference_system, start_pipeline
from helpers.capstone.plots import plot_head_of_line, plot_notifier_outage, plot_upload_latency
from helpers.capstone.processor import POOL, SHARED, Processor
from helpers.capstone.sync_design import start_sync_pipeline
from helpers.capstone.system import CapstoneSystem, ServiceHandle, Uploads
from helpers.core.broker import Broker
from helpers.core.messaging import make_event
from helpers.core.problems import PROBLEM_JSON
from helpers.core.reconnect import NotConnected
from helpers.core.waiting import until, until_quiet

pytestmark = pytest.mark.broker

WORK = 0.1
"""About 0.2 s of Pillow work per image here: enough to be measurable, cheap enough for many tests."""
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


async def fetch(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.content_type, await response.read()


def assert_problem(status: int, body: dict[str, object], content_type: str | None, expected: int) -> None:
    assert status == expected, f"expected HTTP {expected}, got {status}: {body}"
    assert content_type is not None, content_type
    assert content_type.startswith(PROBLEM_JSON), content_type
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == expected


# --- the Upload service -----------------------------------------------------------------------


async def test_upload_answers_202_at_once_with_location_retry_after_and_body(pipeline: ReferenceSystem) -> None:
    answer = await pipeline.post(images.sample_photo(), "ann")
    assert answer.status == 202, answer.body
    assert answer.job_id is not None
    assert answer.location == f"/jobs/{answer.job_id}"
    assert answer.retry_after == "1"
    assert answer.headers["Content-Type"].startswith("application/json")
    assert set(answer.body) == {"job_id", "state", "created", "links"}, "shaped like lesson 06's 202"
    assert answer.body["state"] == "accepted"
    assert ISO_UTC.fullmatch(str(answer.body["created"]))
    assert answer.body["links"] == {"status": answer.location}, "a relative link: never built from the Host header"
    assert await pipeline.wait_finished([answer.job_id], 20)


async def test_a_job_succeeds_its_status_answers_303_and_its_result_links_serve_the_renditions(pipeline: ReferenceSystem) -> None:
    answer = await pipeline.post(images.exif_rotated_jpeg(), "bea")
    job_id = answer.job_id
    assert job_id is not None
    seen: list[tuple[str, int, str | None]] = []

    async def succeeded_over_http() -> bool:
        async with pipeline.session.get(f"{pipeline.url}/jobs/{job_id}", allow_redirects=False) as response:
            body = await response.json()
            step = (body["state"], response.status, response.headers.get("Retry-After"))
            location = response.headers.get("Location")
        if not seen or seen[-1] != step:
            seen.append(step)
        return body["state"] == "succeeded" and location == f"/jobs/{job_id}/result"

    assert await until(succeeded_over_http, 20, poll=0.02)
    assert seen[0][0] in ("accepted", "running"), seen
    assert seen[-1] == ("succeeded", 303, None), seen
    assert all(status == 200 and after == "1" for state, status, after in seen[:-1]), "unfinished: 200 + Retry-After"
    assert {state for state, _, _ in seen} <= {"accepted", "running", "succeeded"}, seen
    status, body = await pipeline.status(job_id, follow=True)  # a client that follows the 303 gets the result
    assert status == 200
    assert body["state"] == "succeeded"
    assert ISO_UTC.fullmatch(body["created"]), body
    assert ISO_UTC.fullmatch(body["updated"]), body
    assert body["created"] <= body["updated"]
    assert body["progress"] == {"done": 4, "total": 4}
    assert body["caption"]
    assert "reason" not in body
    assert "eventual" in body["consistency"]
    assert set(body["results"]) == {"thumb-128", "thumb-512", "thumb-1024", images.FILTER_NAME}
    for name, url in body["results"].items():
        got, content_type, data = await fetch(url)
        assert got == 200, (name, got, content_type)
        assert content_type == "image/jpeg", (name, got, content_type)
        picture = Image.open(io.BytesIO(data))
        assert picture.width > picture.height, f"{name} is not upright: {picture.size}"  # the EXIF rotation was applied
    uploaded = pipeline.recorder.events(IMAGE_UPLOADED, job_id)
    assert len(uploaded) == 1
    record = next(r for r in pipeline.recorder.records if r.topic == pipeline.topics.uploaded)
    assert len(record.payload) < 2048, "the event carries a reference, never the image"
    assert uploaded[0][1].data["original"]["key"] == f"originals/{job_id}"


async def test_an_idempotency_key_returns_the_same_job_and_refuses_other_bytes(pipeline: ReferenceSystem) -> None:
    photo = images.sample_photo()
    first = await pipeline.post(photo, "cy", idempotency_key="key-1")
    again = await pipeline.post(photo, "cy", idempotency_key="key-1")
    assert first.status == again.status == 202
    assert again.body == first.body
    assert again.location == first.location
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = await pipeline.post(images.generated_image(1), "cy", idempotency_key="key-1")
    assert_problem(other.status, other.body, other.headers.get("Content-Type"), 422)
    assert "key-1" in str(other.body["detail"])
    someone_else = await pipeline.post(photo, "dee", idempotency_key="key-1")  # keys belong to one user
    assert someone_else.status == 202
    assert someone_else.job_id != first.job_id
    assert len(pipeline.upload_service.store) == 2
    assert pipeline.upload_service.published == 2
    assert first.job_id is not None
    assert someone_else.job_id is not None
    assert await pipeline.wait_finished([first.job_id, someone_else.job_id], 20)


async def test_a_restarted_upload_service_keeps_its_jobs_its_keys_and_its_address(pipeline: ReferenceSystem) -> None:
    photo = images.sample_photo()
    first = await pipeline.post(photo, "kay", idempotency_key="key-r")
    assert first.status == 202
    assert first.job_id is not None
    url = pipeline.url
    await pipeline.upload_service.restart()
    assert pipeline.url == url
    assert pipeline.upload_service.restarts == 1
    async with pipeline.session.get(f"{url}{first.location}", allow_redirects=False) as response:
        assert response.status in (200, 303), await response.text()
    again = await pipeline.post(photo, "kay", idempotency_key="key-r")  # the key survived the restart
    assert again.status == 202
    assert again.body == first.body
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = await pipeline.post(images.generated_image(3), "kay", idempotency_key="key-r")
    assert_problem(other.status, other.body, other.headers.get("Content-Type"), 422)
    assert await pipeline.wait_finished([first.job_id], 20)
    assert pipeline.state(first.job_id) == "succeeded"
    assert len(pipeline.upload_service.store) == 1


async def test_a_publish_that_fails_costs_no_job_the_outbox_sends_it_later(
    pipeline: ReferenceSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = pipeline.upload_service

    async def refused(topic: str, payload: bytes, *, qos: int = 1) -> None:
        raise NotConnected("the broker is away (test)")

    monkeypatch.setattr(upload.publisher, "publish_raw", refused)
    answer = await pipeline.post(images.sample_photo(), "oli")
    assert answer.status == 202, "the job is stored: the 202 is a promise kept"
    assert answer.job_id is not None, "the job is stored: the 202 is a promise kept"
    assert upload.published == 0, "its event waits in the outbox"
    assert len(upload.store.store.pending()) == 1, "its event waits in the outbox"
    assert pipeline.state(answer.job_id) == "accepted"
    monkeypatch.undo()  # the broker is back: the housekeeping relays what the outbox holds
    assert await pipeline.wait_finished([answer.job_id], 20)
    assert upload.published == 1
    assert upload.store.store.pending() == []
    assert len(pipeline.recorder.events(IMAGE_UPLOADED, answer.job_id)) == 1


async def test_storage_down_is_a_503_problem_and_the_same_key_works_once_it_is_back(pipeline: ReferenceSystem) -> None:
    pipeline.storage.faults.down = True
    refused = await pipeline.post(images.sample_photo(), "joy", idempotency_key="retry-me")
    assert_problem(refused.status, refused.body, refused.headers.get("Content-Type"), 503)
    assert refused.retry_after == "1"
    assert len(pipeline.upload_service.store) == 0
    assert pipeline.upload_service.published == 0
    pipeline.storage.faults.down = False
    retried = await pipeline.post(images.sample_photo(), "joy", idempotency_key="retry-me")
    assert retried.status == 202
    assert retried.job_id is not None
    assert await pipeline.wait_finished([retried.job_id], 20)


async def test_unknown_job_and_unknown_route_are_404_problem_json(pipeline: ReferenceSystem) -> None:
    status, body = await pipeline.status("no-such-job", follow=True)
    assert status == 404
    assert body["status"] == 404
    assert "no-such-job" in body["detail"]
    assert {"type", "title", "status", "detail"} <= set(body)
    async with pipeline.session.get(f"{pipeline.url}/nowhere") as response:
        assert response.status == 404
        assert response.content_type == PROBLEM_JSON


HOSTILE = {
    "empty": (b"", 400),
    "not an image": (images.not_an_image(), 415),
    "a GIF (valid, not accepted)": (images.generated_image(2, (40, 30), "GIF"), 415),
    "decompression bomb": (images.decompression_bomb(), 413),
    "truncated JPEG": (images.truncated_jpeg(), 422),
    "corrupt PNG": (images.corrupt_png(), 422),
    "over 8 MiB": (b"\xff\xd8" + bytes(images.MAX_UPLOAD_BYTES), 413),
}


async def test_hostile_uploads_are_refused_with_their_status_and_leave_no_job_and_no_event(pipeline: ReferenceSystem) -> None:
    for label, (data, expected) in HOSTILE.items():
        answer = await pipeline.post(data, "eve")
        assert answer.status == expected, f"{label}: expected {expected}, got {answer.status} {answer.body}"
        assert_problem(answer.status, answer.body, answer.headers.get("Content-Type"), expected)
    missing_user = await pipeline.post(images.sample_photo(), "")
    assert_problem(missing_user.status, missing_user.body, missing_user.headers.get("Content-Type"), 400)
    assert len(pipeline.upload_service.store) == 0
    assert pipeline.upload_service.published == 0
    # No event: a good upload's event arrives behind anything published before it (same connection, same topic)
    good = await pipeline.post(images.sample_photo(), "eve")
    assert good.job_id is not None
    assert await until(lambda: len(pipeline.recorder.events(IMAGE_UPLOADED)) >= 1, 5)
    assert [e.data["job_id"] for _, e in pipeline.recorder.events(IMAGE_UPLOADED)] == [good.job_id]
    assert await pipeline.wait_finished([good.job_id], 20)


async def test_the_processor_absorbs_a_duplicate_event_one_set_of_results_one_done(pipeline: ReferenceSystem) -> None:
    answer = await pipeline.post(images.sample_photo(), "fay")
    job_id = answer.job_id
    assert job_id is not None
    assert await pipeline.wait_finished([job_id], 20)
    (_, uploaded), *_ = pipeline.recorder.events(IMAGE_UPLOADED, job_id)
    async with pipeline.broker.client() as again:  # the same event once more, as a redelivery would bring it
        await again.publish(pipeline.topics.uploaded, uploaded.to_bytes(), qos=1)
    stats = pipeline.processor.stats
    assert await until(lambda: stats.skipped[job_id] >= 1, 10)
    assert await until_quiet(lambda: len(pipeline.recorder.records), 0.3, 5)
    assert stats.starts(job_id) == 1
    assert stats.published[JOB_DONE] == 1
    assert len(pipeline.recorder.events(JOB_DONE, job_id)) == 1
    assert len(pipeline.inbox("fay")) == 1


async def test_a_job_event_applied_twice_or_late_changes_nothing(tmp_path: Path) -> None:
    store = UploadJobs(tmp_path / "jobs.sqlite3")
    job = store.create(Job("j1", "gus", 4, "digest"), [])

    def event(kind: str, **data: object) -> bool:
        return store.apply(make_event(kind, {"job_id": job.job_id, **data}))

    def state() -> str | None:
        stored = store.get(job.job_id)
        return stored.state if stored is not None else None

    assert event("job.progress", step="upright", done=1, total=4)
    assert state() == "running"
    assert event("job.done", results={"a": "results/x/a"}, caption="c")
    assert state() == "succeeded"
    assert not event("job.done", results={}, caption="other")  # a duplicate: the first one stands
    assert not event("job.progress", step="filter", done=3, total=4)  # late: never backwards
    assert not event("job.failed", reason="late")
    store.close()
    reopened = UploadJobs(tmp_path / "jobs.sqlite3").get(job.job_id)  # what a restarted service reads
    assert reopened is not None
    assert reopened.state == "succeeded"
    assert reopened.results == {"a": "results/x/a"}
    assert reopened.caption == "c"
    assert reopened.done_steps == 4


async def test_the_reference_system_is_a_capstone_system_with_restartable_services(pipeline: ReferenceSystem) -> None:
    assert isinstance(pipeline, CapstoneSystem)
    for handle in (pipeline.processor, pipeline.notifier):
        assert isinstance(handle, ServiceHandle)
        assert handle.alive
    await pipeline.notifier.kill()
    assert not pipeline.notifier.alive, "a kill is not a crash"
    assert pipeline.notifier.crashed() is None, "a kill is not a crash"
    await pipeline.notifier.start()
    assert pipeline.notifier.alive


async def test_the_sync_design_answers_200_only_after_processing(tmp_path: Path) -> None:
    sync = await start_sync_pipeline(tmp_path, workers=1, work=WORK)
    assert isinstance(sync, Uploads), "the request side only"
    assert not isinstance(sync, CapstoneSystem), "the request side only"
    try:
        answer = await sync.post(images.sample_photo(), "hal")
        refused = await sync.post(images.not_an_image(), "hal")
    finally:
        await sync.stop()
    assert answer.status == 200
    assert answer.body["state"] == "succeeded"
    assert len(answer.body["results"]) == 4
    assert answer.seconds >= sync.processing_s[0], "the caller waited for the whole processing"
    assert refused.status == 415


async def test_the_processor_picks_a_design_each_broker_handles_safely(broker: Broker, tmp_path: Path) -> None:
    topics = Topics.fresh("test-capstone")
    processor = Processor(broker, topics, "http://127.0.0.1:9", workers=3)
    if broker.embedded:
        assert processor.mode == POOL
        assert len(processor.members) == 1
        with pytest.raises(ValueError, match="rumqttd"):
            Processor(broker, topics, "http://127.0.0.1:9", workers=3, shared=True)
    else:
        assert processor.mode == SHARED
        assert len(processor.members) == 3
        assert all(m.topic.startswith("$share/processors/") for m in processor.members)
    await processor.storage.close()


class ProcessDied(BaseException):
    """Stands for a worker's process dying (not an Exception, so no handler turns it into a dead letter)."""


async def test_a_crashed_worker_is_reported_not_swallowed(broker: Broker, tmp_path: Path) -> None:
    def work_of(job: object) -> float:
        raise ProcessDied("the worker's process died")

    pipeline = await start_pipeline(broker, tmp_path, workers=1, shared=False, work_of=work_of)
    try:
        answer = await pipeline.post(images.sample_photo(), "ida")
        assert answer.job_id is not None
        with pytest.raises(ProcessDied) as raised:
            await pipeline.wait_finished([answer.job_id], 10)
        assert any("processor" in note for note in raised.value.__notes__)
    finally:
        with pytest.raises(ProcessDied):
            await pipeline.stop()


# --- the experiments ------------------------------------------------------------------------------


def assert_plot(ax: Axes, *, x_unit: str | None, y_unit: str | None) -> None:
    assert ax.get_title(), "missing title"
    if x_unit is not None:
        assert x_unit in ax.get_xlabel(), ax.get_xlabel()
    if y_unit is not None:
        assert y_unit in ax.get_ylabel(), ax.get_ylabel()
    legend = ax.get_legend()
    assert legend is not None, "every plot needs a legend"
    assert legend.get_texts(), "every plot needs a legend"
    ax.figure.canvas.draw()
    box = legend.get_window_extent()
    axes_box = ax.get_window_extent()
    assert box.x0 >= axes_box.x1 - 1, "the legend sits outside the axes, where it covers no data"


async def test_upload_latency_async_answers_long_before_the_work_sync_waits_for_it(broker: Broker, tmp_path: Path) -> None:
    photo = images.sample_photo()
    await asyncio.to_thread(images.process_image, photo, work=0.3)  # warm (the lesson's kernel processed photos before)
    # 12 uploads, 2 at a time: 6 rounds. The sync callers wait 2.5 rounds, a round measured on the async run seconds
    # before (a yardstick measured apart from the run broke when another test's load came and went in between).
    result = await upload_latency(broker, tmp_path, uploads=12, workers=2, work=0.3, sync_timeout_rounds=2.5)
    a = result.async_summary
    assert a.errors == 0
    assert result.async_done == 12
    assert a.p99_ms / 1000 < 0.5 * result.processing_p50_s, result.as_rows()
    answered = [s for s in result.sync_run.samples if s.ok]
    assert answered, f"a timeout of 2.5 rounds lets the first round answer: {result.as_rows()}"
    assert all(s.latency >= min(result.sync_processing_s) for s in answered), result.as_rows()
    assert result.sync_timeouts >= 1, result.as_rows()
    assert len(result.as_rows()) == 2
    assert result.as_row()["uploads"] == 12
    assert_plot(plot_upload_latency(result), x_unit="upload", y_unit="(s")


async def test_upload_latency_runs_the_sync_burst_again_when_the_load_changed_under_the_yardstick(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_burst = experiments._sync_burst
    medians: list[float] = []  # each sync run's round, as upload_latency saw it

    async def first_run_three_times_slower(*args: Any, **kwargs: Any) -> Any:
        run, processing, done = await real_burst(*args, **kwargs)
        if not medians:  # as if the machine got three times busier after the yardstick
            processing = tuple(t * 3 for t in processing)
        medians.append(statistics.median(processing))
        return run, processing, done

    monkeypatch.setattr(experiments, "_sync_burst", first_run_three_times_slower)
    result = await upload_latency(broker, tmp_path, uploads=4, workers=2, work=0.05, sync_timeout_rounds=2.5)
    assert result.sync_attempts == len(medians) >= 2, medians
    # the last burst's patience is 2.5 rounds of the run before it, not of the async yardstick
    assert result.client_timeout_s == round(2.5 * medians[-2], 1), (medians, result.client_timeout_s)


async def test_head_of_line_a_pool_finishes_normal_images_before_the_slow_one(broker: Broker, tmp_path: Path) -> None:
    result = await head_of_line(broker, tmp_path, normal=4, work=0.05, slow_work=2.0, workers=4)
    single, pool = result.runs
    assert single.workers == 1
    assert pool.workers == 4
    assert pool.mode == POOL
    assert single.normal_before_slow == 0, single.as_row()
    assert pool.normal_before_slow == 4, pool.as_row()
    assert max(pool.normal_done_s) < min(single.normal_done_s), result.as_rows()
    assert_plot(plot_head_of_line(result), x_unit="(s)", y_unit="count")


async def test_notifier_outage_loses_nothing_and_delivers_after_the_restart(broker: Broker, tmp_path: Path) -> None:
    async with reference_system(broker, tmp_path, workers=2, work=0.05) as system:
        result = await notifier_outage(system, [images.sample_photo()] * 3)
        emails = system.outbox()
    assert result.lost == 0, result.as_row()
    assert result.duplicates == 0, result.as_row()
    assert result.during_outage == 0
    assert all(t >= result.up_s for t in result.notified_s)
    assert all(result.down_s <= t < result.up_s for t in result.done_s), "every job finished while the service was down"
    assert result.done_while_down == 3
    assert len(emails) == 3
    assert_plot(plot_notifier_outage(result), x_unit="(s)", y_unit=None)


async def test_a_worker_killed_mid_image_redoes_it_and_the_user_hears_once(broker: Broker, tmp_path: Path) -> None:
    async with reference_system(broker, tmp_path, workers=2, work=0.6) as system:
        result = await worker_killed(system, images.sample_photo(), after_steps=1)
    assert result.killed_mid_image, result.as_row()
    assert result.steps_before_kill >= 1, result.as_row()
    assert result.redelivered, result.as_row()
    assert result.starts == 2, result.as_row()
    assert result.state == "succeeded"
    assert result.results == 4
    assert result.done_events == 1, result.as_row()
    assert result.notifications == 1, result.as_row()


async def test_upload_restarted_mid_burst_every_job_answers_is_done_and_notified_once(broker: Broker, tmp_path: Path) -> None:
    async with reference_system(broker, tmp_path, workers=2, work=0.2) as system:
        result = await upload_restarted(system, images.sample_photo(), jobs=6, down_s=0.5)
    row = result.as_row()
    assert result.accepted == 6, row
    assert result.unfinished_at_stop >= 1, f"the stop did not land mid-burst: {row}"
    assert result.done_while_down >= 1, f"the stop did not land mid-burst: {row}"
    assert result.answered == result.done == result.notified == 6, row
    assert result.duplicated == 0, row
    assert result.lost == 0, row


async def test_a_failed_job_answers_200_problem_json_and_has_no_result(broker: Broker, tmp_path: Path) -> None:
    pipeline = await start_pipeline(broker, tmp_path, workers=1, work=0.0, attempts=1, fail_on=lambda job: True)
    try:
        job_id = (await pipeline.post(images.sample_photo(), "ivy")).job_id
        assert job_id is not None
        assert await pipeline.wait_finished([job_id], 20)
        async with pipeline.session.get(f"{pipeline.url}/jobs/{job_id}", allow_redirects=False) as response:
            body = await response.json(content_type=None)
            assert response.status == 200, body
            assert response.content_type == PROBLEM_JSON, body
            assert "Retry-After" not in response.headers
            assert "Location" not in response.headers
        assert body["state"] == "failed"
        assert body["title"] == "Job failed"
        assert "status" not in body
        assert body["reason"]
        assert body["reason"] in body["detail"]
        async with pipeline.session.get(f"{pipeline.url}/jobs/{job_id}/result") as response:
            assert response.status == 404
            assert response.content_type == PROBLEM_JSON
    finally:
        await pipeline.stop()


async def test_a_transform_that_always_fails_ends_failed_with_reason_and_dead_letter(broker: Broker, tmp_path: Path) -> None:
    def fail_on(job: object) -> bool:
        return isinstance(job, dict) and job.get("user") == FAILING_USER

    async with reference_system(broker, tmp_path, workers=1, work=0.0, attempts=3, fail_on=fail_on) as system:
        result = await failing_transform(system, images.sample_photo())
    assert result.attempts == 3
    assert result.state == "failed"
    assert result.reason is not None
    assert "caption model crashed" in result.reason
    assert "3 time" in result.reason
    assert result.dead_letters == 1
    assert result.dead_letter_reason == result.reason
    assert result.notification is not None
    assert "could not be processed" in result.notification.text
    assert result.next_job_state == "succeeded", "the worker lived on after the failure"
    assert result.as_row()["dead letters"] == 1
