"""Lab 07's checks catch the mistakes they are meant to catch, on the broker in use.

The grader tests prove the solution notebook scores full marks and the lab as shipped
scores (near) zero. These tests go further: a correct pipeline (the same code as the
solution notebook) passes every check, and each classic mistake fails the check that
names it: processing inside the upload request, publishing the bytes instead of a
reference, trusting the file extension or content type, no idempotency (the upload's
key, the processor's done marker), ack before storing, blocking the event loop, and a
clean-session notifier. The diagram's checks get the Markdown the way the grader gives
it (``run_check(..., markdown=...)``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from helpers.capstone import images
from helpers.capstone.assembly import Inbox, UploadJobsDesk
from helpers.capstone.jobs import IMAGE_UPLOADED, JOB_DONE, JOB_FAILED, done_event_id, failed_event_id
from helpers.capstone.processor import done_marker, result_key
from helpers.capstone.storage import StorageClient
from helpers.capstone.upload import original_key
from helpers.core.jobkit.http import key_reused
from helpers.core.messaging import InvalidEvent, SeenIds, ack, dead_letter_payload, decode, make_event, manual_ack, publish
from helpers.core.problems import problem_for
from helpers.core.receive import subscribed_messages
from helpers.grading.checks import SAVE_FIRST, CheckResult, load_checks, run_check

pytestmark = pytest.mark.broker

CHECKS = load_checks("07_image_pipeline")

DIAGRAM = """\
# The image pipeline

```mermaid
flowchart LR
    user([User]) -->|HTTP POST /images| upload[Upload]
    upload -->|HTTP PUT original| storage[(Storage)]
    upload -.->|MQTT image.uploaded| broker((MQTT broker))
    broker -.->|MQTT image.uploaded| processor[AI Image Processor]
    processor -->|HTTP GET original, PUT renditions| storage
    processor -.->|MQTT job.done / job.failed| broker
    broker -.->|MQTT job.done / job.failed| notification[Notification]
    notification -->|HTTP push: your image is ready| user
```
"""
MARKDOWN = ["# Lab 07", "Draw the pipeline below.", DIAGRAM]


def solution(**overrides: Any) -> dict[str, Any]:
    """A correct pipeline as a namespace of functions; ``overrides`` swaps in a mistake."""
    ns: dict[str, Any] = {}

    def make_upload_handler(storage: StorageClient, mqtt: Any, topics: Any, jobs: UploadJobsDesk) -> Any:
        async def post_image(request: web.Request) -> web.Response:
            user = request.query.get("user", "anonymous")
            key = request.headers.get("Idempotency-Key")
            data = await request.read()
            fingerprint = hashlib.sha256(data).hexdigest()
            if key is not None and (job := jobs.find(user, key)) is not None:
                if job.fingerprint != fingerprint:
                    return key_reused(key)
                return jobs.accepted(job, replayed=True)
            try:
                info = await asyncio.to_thread(images.inspect_upload, data)
            except images.ImageRejected as exc:
                return problem_for(exc)
            job = jobs.new(user, key, fingerprint)
            etag = await storage.put(original_key(job.job_id), data, info.content_type)
            claim = {"key": original_key(job.job_id), "etag": etag, "content_type": info.content_type}
            event = make_event(IMAGE_UPLOADED, {"job_id": job.job_id, "user": user, "original": claim}, source="/upload")
            await publish(mqtt, topics.uploaded, event, qos=1)
            return jobs.accepted(job)

        return post_image

    async def process_job(client: Any, storage: StorageClient, topics: Any, event: Any, *, work: float = 1.0) -> None:
        job = event.data
        job_id, user = job["job_id"], job["user"]
        if await storage.exists(done_marker(job_id)):
            return
        try:
            data, _, _ = await storage.get(job["original"]["key"])
            renditions, caption = await asyncio.to_thread(images.process_image, data, work=work)
        except Exception as exc:  # noqa: BLE001 - any failure ends the job as failed, with the reason
            reason = f"{type(exc).__name__}: {exc}"
            await client.publish(topics.dead_letter, dead_letter_payload(topics.uploaded, event.to_bytes(), reason), qos=1)
            failed = {"job_id": job_id, "user": user, "reason": reason}
            await publish(client, topics.failed, make_event(JOB_FAILED, failed, source="/processor", id=failed_event_id(job_id)))
            await storage.put(done_marker(job_id), b'{"state": "failed"}', "application/json")
            return
        results = {}
        for rendition in renditions:
            await storage.put(result_key(job_id, rendition.name), rendition.data, rendition.content_type)
            results[rendition.name] = result_key(job_id, rendition.name)
        done = {"job_id": job_id, "user": user, "results": results, "caption": caption}
        await publish(client, topics.done, make_event(JOB_DONE, done, source="/processor", id=done_event_id(job_id)))
        await storage.put(done_marker(job_id), b'{"state": "done"}', "application/json")

    async def run_processor(
        broker: Any, topics: Any, storage_url: str, name: str, *, work: float = 1.0, ready: asyncio.Event | None = None
    ) -> None:
        async with StorageClient(storage_url) as storage, manual_ack(broker.client(name, clean_session=False)) as client:
            async for message in subscribed_messages(client, topics.uploaded, qos=1, ready=ready):
                try:
                    event = decode(message.payload)
                except InvalidEvent as exc:
                    record = dead_letter_payload(topics.uploaded, bytes(message.payload), str(exc))
                    await client.publish(topics.dead_letter, record, qos=1)
                else:
                    await ns["process_job"](client, storage, topics, event, work=work)
                ack(client, message)

    async def run_notifier(broker: Any, topics: Any, workdir: Any, name: str, *, ready: asyncio.Event | None = None) -> None:
        inbox = Inbox(workdir)
        notified = SeenIds(Path(workdir) / "notified-jobs.txt")
        async with ns["notifier_client"](broker, name) as client:
            async for message in subscribed_messages(client, topics.jobs, qos=1, ready=ready):
                try:
                    event = decode(message.payload)
                except InvalidEvent:
                    event = None
                if event is not None and event.type in (JOB_DONE, JOB_FAILED) and event.data["job_id"] not in notified:
                    inbox.notify(event.data["user"], event.data["job_id"], "done" if event.type == JOB_DONE else "failed")
                    notified.add(event.data["job_id"])
                ack(client, message)

    def notifier_client(broker: Any, name: str) -> Any:
        return manual_ack(broker.client(name, clean_session=False))

    ns.update(
        make_upload_handler=make_upload_handler,
        process_job=process_job,
        run_processor=run_processor,
        run_notifier=run_notifier,
        notifier_client=notifier_client,
    )
    ns.update(overrides)
    return ns


async def results(ns: dict[str, Any], names: set[str] | None = None, markdown: list[str] | None = None) -> dict[str, CheckResult]:
    got = {}
    for check in CHECKS:
        if names is None or check.name in names:
            got[check.name] = await run_check(check, ns, markdown=MARKDOWN if markdown is None else markdown)
    return got


def failed(got: dict[str, CheckResult]) -> dict[str, str]:
    return {name: r.message for name, r in got.items() if not r.passed}


# --------------------------------------------------------------------------- the solution


async def test_the_solution_passes_every_check() -> None:
    got = await results(solution())
    assert not failed(got)
    assert set(got) == {c.name for c in CHECKS}


# --------------------------------------------------------------------------- q1: the diagram


async def test_a_missing_diagram_says_to_save_the_notebook() -> None:
    names = {"draws_every_part", "marks_every_arrow", "design_holds", "diagram_matches_the_running_code"}
    got = await results(solution(), names, markdown=["# Lab 07", "_Your answer here._"])
    assert not any(r.passed for r in got.values())
    assert all(SAVE_FIRST in r.message for r in got.values()), failed(got)


async def test_a_diagram_with_the_processor_called_synchronously_names_the_edge() -> None:
    sync = DIAGRAM.replace("upload -.->|MQTT image.uploaded| broker", "upload -->|HTTP POST /process| processor")
    got = await results(solution(), {"draws_every_part", "marks_every_arrow", "design_holds"}, markdown=[sync])
    assert got["draws_every_part"].passed and got["marks_every_arrow"].passed
    assert "Upload -> AI Image Processor is drawn sync: the upload would wait for processing" in got["design_holds"].message


async def test_an_unmarked_arrow_is_named() -> None:
    unmarked = DIAGRAM.replace("|HTTP PUT original|", "|stores the original|")
    got = await results(solution(), {"marks_every_arrow"}, markdown=[unmarked])
    assert "Upload -> Storage has no sync/async marking" in got["marks_every_arrow"].message


async def test_a_diagram_that_says_async_where_the_code_is_sync_loses_the_point() -> None:
    got = await results(solution(make_upload_handler=processing_in_the_request), {"diagram_matches_the_running_code"})
    message = got["diagram_matches_the_running_code"].message
    assert (
        "the diagram says Upload -> AI Image Processor is async (MQTT), but the running code called it synchronously" in message
    )


# --------------------------------------------------------------------------- q2: the upload


def processing_in_the_request(storage: StorageClient, mqtt: Any, topics: Any, jobs: UploadJobsDesk) -> Any:
    """The naive design: the handler processes the image before it answers."""
    correct = solution()["make_upload_handler"](storage, mqtt, topics, jobs)

    async def post_image(request: web.Request) -> web.StreamResponse:
        data = await request.read()
        await asyncio.to_thread(images.process_image, data)  # the mistake: the user waits for the work
        return await correct(request)  # read() again gives the same bytes

    return post_image


async def test_processing_inside_the_upload_request_is_named() -> None:
    got = await results(
        solution(make_upload_handler=processing_in_the_request), {"answers_before_processing", "burst_of_uploads_stays_fast"}
    )
    assert not any(r.passed for r in got.values()), failed(got)
    assert all("processing inside the upload request" in r.message for r in got.values())


def bytes_in_the_event(storage: StorageClient, mqtt: Any, topics: Any, jobs: UploadJobsDesk) -> Any:
    async def post_image(request: web.Request) -> web.Response:
        data = await request.read()
        try:
            await asyncio.to_thread(images.inspect_upload, data)
        except images.ImageRejected as exc:
            return problem_for(exc)
        job_id = uuid.uuid4().hex
        image = base64.b64encode(data).decode()  # the mistake: the bytes ride on the broker
        event = make_event(
            IMAGE_UPLOADED, {"job_id": job_id, "user": request.query.get("user", "?"), "image": image}, source="/upload"
        )
        await publish(mqtt, topics.uploaded, event, qos=1)
        body = {"job_id": job_id, "state": "accepted", "status_url": f"/jobs/{job_id}"}
        return web.json_response(body, status=202, headers={"Location": f"/jobs/{job_id}", "Retry-After": "1"})

    return post_image


async def test_publishing_the_bytes_instead_of_a_reference_is_named() -> None:
    got = await results(
        solution(make_upload_handler=bytes_in_the_event), {"publishes_a_claim_check", "diagram_matches_the_running_code"}
    )
    assert "publishing the bytes instead of a reference" in got["publishes_a_claim_check"].message
    assert "carries the image's bytes" in got["diagram_matches_the_running_code"].message


def trusting_the_label(storage: StorageClient, mqtt: Any, topics: Any, jobs: UploadJobsDesk) -> Any:
    correct = solution()["make_upload_handler"](storage, mqtt, topics, jobs)

    async def post_image(request: web.Request) -> web.StreamResponse:
        if request.content_type.startswith("image/"):  # the mistake: the client's label decides
            data = await request.read()
            job_id = uuid.uuid4().hex
            etag = await storage.put(original_key(job_id), data, request.content_type)
            claim = {"key": original_key(job_id), "etag": etag, "content_type": request.content_type}
            event = make_event(IMAGE_UPLOADED, {"job_id": job_id, "user": "x", "original": claim}, source="/upload")
            await publish(mqtt, topics.uploaded, event, qos=1)
            body = {"job_id": job_id, "state": "accepted", "status_url": f"/jobs/{job_id}"}
            return web.json_response(body, status=202, headers={"Location": f"/jobs/{job_id}", "Retry-After": "1"})
        return await correct(request)

    return post_image


async def test_trusting_the_file_extension_or_content_type_is_named() -> None:
    got = await results(
        solution(make_upload_handler=trusting_the_label), {"refuses_what_is_not_an_image", "trusts_the_bytes_not_the_label"}
    )
    assert not any(r.passed for r in got.values()), failed(got)
    assert all("trusting the file extension/content type" in r.message for r in got.values()), failed(got)


def forgetting_the_key(storage: StorageClient, mqtt: Any, topics: Any, jobs: UploadJobsDesk) -> Any:
    correct = solution()["make_upload_handler"](storage, mqtt, topics, jobs)

    async def post_image(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "idempotency-key"}  # the mistake
        return await correct(request.clone(headers=headers))

    return post_image


async def test_no_idempotency_key_is_named() -> None:
    got = await results(solution(make_upload_handler=forgetting_the_key), {"repeated_idempotency_key_is_one_job"})
    assert "no idempotency" in got["repeated_idempotency_key_is_one_job"].message


def unscoped_dict(storage: StorageClient, mqtt: Any, topics: Any, jobs: UploadJobsDesk) -> Any:
    """The classic mistake: one dict ``Idempotency-Key -> 202 body`` for everyone, blind to the bytes."""
    correct = solution()["make_upload_handler"](storage, mqtt, topics, jobs)
    answered: dict[str, web.Response] = {}

    async def post_image(request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key")
        if key is not None and key in answered:  # the mistake: another user's key, or other bytes, get this job
            first = answered[key]
            return web.Response(body=first.body, status=first.status, headers=first.headers)
        response = await correct(request)
        if key is not None and response.status == 202:
            answered[key] = response
        return response

    return post_image


async def test_an_unscoped_dict_from_key_to_202_body_is_named() -> None:
    got = await results(solution(make_upload_handler=unscoped_dict), {"idempotency_is_per_user_with_a_fingerprint"})
    result = got["idempotency_is_per_user_with_a_fingerprint"]
    assert not result.passed, result
    assert "someone else's job" in result.message and "422" in result.message, result.message


# --------------------------------------------------------------------------- q3: the processor


def without_marker() -> Any:
    correct = solution()["process_job"]

    class NoMarker:
        def __init__(self, storage: StorageClient) -> None:
            self.storage = storage

        async def exists(self, key: str) -> bool:
            return False  # the mistake: never looks whether the job was done

        def __getattr__(self, name: str) -> Any:
            return getattr(self.storage, name)

    async def process_job(client: Any, storage: StorageClient, topics: Any, event: Any, *, work: float = 1.0) -> None:
        await correct(client, NoMarker(storage), topics, event, work=work)

    return process_job


async def test_no_idempotency_in_the_processor_is_named() -> None:
    got = await results(
        solution(process_job=without_marker()), {"same_event_twice_is_done_once", "retried_upload_event_is_done_once"}
    )
    assert not any(r.passed for r in got.values()), failed(got)
    assert all("no idempotency" in r.message for r in got.values())


async def test_a_dedupe_in_memory_is_caught() -> None:
    seen: set[str] = set()

    async def by_event_id(client: Any, storage: StorageClient, topics: Any, event: Any, *, work: float = 1.0) -> None:
        if event.id in seen:  # the mistake: in memory, and per event rather than per job
            return
        seen.add(event.id)
        await without_marker()(client, storage, topics, event, work=work)

    got = await results(solution(process_job=by_event_id), {"same_event_twice_is_done_once", "retried_upload_event_is_done_once"})
    assert got["same_event_twice_is_done_once"].passed
    assert not got["retried_upload_event_is_done_once"].passed


def acking_first(auto: bool = False) -> Any:
    async def run_processor(
        broker: Any, topics: Any, storage_url: str, name: str, *, work: float = 1.0, ready: asyncio.Event | None = None
    ) -> None:
        client = broker.client(name, clean_session=False)
        async with StorageClient(storage_url) as storage, client if auto else manual_ack(client):
            async for message in subscribed_messages(client, topics.uploaded, qos=1, ready=ready):
                if not auto:
                    ack(client, message)  # the mistake: acknowledged before the work
                await solution()["process_job"](client, storage, topics, decode(message.payload), work=work)

    return run_processor


async def test_ack_before_storing_is_named() -> None:
    got = await results(solution(run_processor=acking_first()), {"acks_after_storing", "worker_killed_mid_image"})
    assert not any(r.passed for r in got.values()), failed(got)
    assert "ack before storing" in got["acks_after_storing"].message
    assert "lost" in got["worker_killed_mid_image"].message


async def test_auto_ack_is_named_with_its_fix() -> None:
    got = await results(solution(run_processor=acking_first(auto=True)), {"acks_after_storing"})
    assert "ack before storing" in got["acks_after_storing"].message and "manual_ack" in got["acks_after_storing"].message


async def test_blocking_the_event_loop_is_named() -> None:
    correct = solution()["process_job"]

    async def on_the_loop(client: Any, storage: StorageClient, topics: Any, event: Any, *, work: float = 1.0) -> None:
        real = asyncio.to_thread

        async def same_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)  # the mistake: process_image runs on the event loop

        asyncio.to_thread = same_thread  # type: ignore[assignment] # swapped for this one call only, to plant the mistake
        try:
            await correct(client, storage, topics, event, work=work)
        finally:
            asyncio.to_thread = real

    got = await results(solution(process_job=on_the_loop), {"keeps_the_event_loop_free"})
    message = got["keeps_the_event_loop_free"].message
    assert "blocked the event loop" in message and "asyncio.to_thread" in message, message


async def test_a_failure_that_crashes_the_worker_is_caught() -> None:
    async def strict(client: Any, storage: StorageClient, topics: Any, event: Any, *, work: float = 1.0) -> None:
        data, _, _ = await storage.get(event.data["original"]["key"])
        await asyncio.to_thread(images.process_image, data, work=work)  # raises for a truncated JPEG: the worker dies

    got = await results(solution(process_job=strict), {"failure_ends_failed_with_a_dead_letter"})
    assert "crashed" in got["failure_ends_failed_with_a_dead_letter"].message


# --------------------------------------------------------------------------- q4: the notifier


async def test_a_clean_session_notifier_is_named() -> None:
    def clean(broker: Any, name: str) -> Any:
        return manual_ack(broker.client(name, clean_session=True))  # the mistake

    got = await results(solution(notifier_client=clean), {"keeps_what_arrives_while_down", "notifier_outage_loses_nothing"})
    assert not any(r.passed for r in got.values()), failed(got)
    assert "a clean session forgets what was sent while it was down" in got["keeps_what_arrives_while_down"].message


async def test_a_new_client_id_per_start_is_named() -> None:
    def fresh(broker: Any, name: str) -> Any:
        return manual_ack(broker.client(f"{name}-{uuid.uuid4().hex[:4]}", clean_session=False))  # the mistake

    got = await results(solution(notifier_client=fresh), {"keeps_what_arrives_while_down"})
    assert "a new client id is a new session" in got["keeps_what_arrives_while_down"].message


async def test_a_notifier_that_forgets_on_restart_or_acks_first_is_caught() -> None:
    async def forgetful(broker: Any, topics: Any, workdir: Any, name: str, *, ready: asyncio.Event | None = None) -> None:
        inbox, notified = Inbox(workdir), set()  # the mistake: the notified ids live in memory
        async with broker.client(name, clean_session=False) as client:  # and the client acks on receipt
            async for message in subscribed_messages(client, topics.jobs, qos=1, ready=ready):
                event = decode(message.payload)
                if event.type in (JOB_DONE, JOB_FAILED) and event.data["job_id"] not in notified:
                    inbox.notify(event.data["user"], event.data["job_id"], "done")
                    notified.add(event.data["job_id"])

    got = await results(solution(run_notifier=forgetful), {"remembers_across_a_restart", "acks_after_notifying"})
    assert not any(r.passed for r in got.values()), failed(got)
    assert "ack before notifying" in got["acks_after_notifying"].message
