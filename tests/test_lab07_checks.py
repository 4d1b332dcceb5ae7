"""Lab 07's checks catch the mistakes they are meant to catch, on the broker in use.

The grader tests prove the solution notebook scores full marks and the lab as shipped
scores (near) zero. These tests go further: the solution notebook's own pipeline (its
code run into a namespace) passes every check, and each classic mistake, an edit of that
code, fails the check that names it: processing inside the upload request, publishing the bytes instead of a
reference, trusting the file extension or content type, no idempotency (the upload's
key, the processor's done marker), ack before storing, blocking the event loop, and a
clean-session notifier. The diagram's checks get the solution's Markdown cells (or the
shipped lab's) the way the grader gives them (``run_check(..., markdown=...)``).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from lab_submissions import Edit, edited, markdown_cells, replaced, submission

from helpers.capstone import images
from helpers.capstone.assembly import UploadJobsDesk, serve_upload
from helpers.capstone.jobs import IMAGE_UPLOADED, STORE_FILE, Topics, UploadJobs
from helpers.capstone.storage import StorageClient
from helpers.capstone.wire import RecordingStorage, start_recorder
from helpers.core.broker import Broker
from helpers.core.jobkit.store import KeyInUse
from helpers.core.messaging import make_event
from helpers.core.waiting import until
from helpers.grading.checks import SAVE_FIRST, CheckResult, load_checks, run_check

pytestmark = pytest.mark.broker

LAB = "07_image_pipeline"
CHECKS = load_checks(LAB)
MARKDOWN = markdown_cells(LAB)
"""The solution notebook's Markdown cells, its diagram among them, as the grader gives them to the checks."""

INSPECT = """        try:
            info = await asyncio.to_thread(images.inspect_upload, data)
        except images.ImageRejected as exc:
            return problem_for(exc)
"""
MARKER = "    if await storage.exists(done_marker(job_id)):\n        return\n"
PROCESSOR_CLIENT = (
    "manual_ack(broker.client(name, clean_session=False)) as client:\n"
    "        async for message in subscribed_messages(client, topics.uploaded"
)
NOTIFIER_CLIENT = PROCESSOR_CLIENT.replace("topics.uploaded", "topics.jobs")
PROCESSOR_ACK = "                await process_job(client, storage, topics, event, work=work)\n            ack(client, message)"
NOTIFIER_ACK = '                notified.add(event.data["job_id"])\n            ack(client, message)'
DECODE = "            try:\n                event = decode(message.payload)\n            except InvalidEvent as exc:"
DONE_PUBLISH = (
    '    await publish(client, topics.done, make_event(JOB_DONE, done, source="/processor", id=done_event_id(job_id)))\n'
)
DONE_MARK = '    await storage.put(done_marker(job_id), b\'{"state": "done"}\', "application/json")\n'
FAILED_MARK = '        await storage.put(done_marker(job_id), b\'{"state": "failed"}\', "application/json")\n'
FETCH = '    try:\n        data, _, _ = await storage.get(job["original"]["key"])\n'
QUEUE = "        await jobs.queue(job, topics.uploaded, event)  # the job and its event in one transaction, published after it\n"
PUT = "        etag = await storage.put(original_key(job.job_id), data, info.content_type)\n"
STORAGE_ERROR = (
    "from helpers.capstone.storage import StorageClient",
    "from helpers.capstone.storage import StorageClient, StorageError",
)


def _without_ack(ack_line: str) -> Edit:
    return (ack_line, ack_line.removesuffix("\n            ack(client, message)"))


EDITS: dict[str, tuple[Edit, ...]] = {
    "processing in the request": (
        (
            "        fingerprint = hashlib.sha256(data).hexdigest()",
            "        await asyncio.to_thread(images.process_image, data)  # the user waits for the work\n"
            "        fingerprint = hashlib.sha256(data).hexdigest()",
        ),
    ),
    "the bytes in the event": (
        ("import hashlib", "import base64\nimport hashlib"),
        ('"original": claim}', '"image": base64.b64encode(data).decode()}'),  # the bytes ride on the broker
    ),
    "trusting the label": (
        (
            INSPECT,
            '        if request.content_type.startswith("image/"):  # the client\'s label decides\n'
            "            info = request  # its .content_type is the label\n"
            "        else:\n" + "".join(f"    {line}\n" for line in INSPECT.splitlines()),
        ),
    ),
    "publishing straight after storing": ((QUEUE, "        await publish(mqtt, topics.uploaded, event, qos=1)\n"),),
    "a 202 when Storage fails": (
        (PUT, "        try:\n    " + PUT + "        except StorageError:\n            etag = None  # 'the processor copes'\n"),
        STORAGE_ERROR,
    ),
    "no idempotency key": (
        ('        key = request.headers.get("Idempotency-Key")', "        key = None  # the header is never read"),
    ),
    "no done marker": ((MARKER, ""),),
    "a dedupe in memory": (
        ("async def process_job(", "SEEN = set()\n\n\nasync def process_job("),
        (
            MARKER,
            "    if event.id in SEEN:  # in memory, and per event rather than per job\n        return\n    SEEN.add(event.id)\n",
        ),
    ),
    "ack first": ((DECODE, "            ack(client, message)  # before the work\n" + DECODE), _without_ack(PROCESSOR_ACK)),
    "auto-ack": (
        (
            PROCESSOR_CLIENT,
            PROCESSOR_CLIENT.replace(
                "manual_ack(broker.client(name, clean_session=False))", "broker.client(name, clean_session=False)"
            ),
        ),
        _without_ack(PROCESSOR_ACK),
    ),
    "blocking the loop": (
        (
            "renditions, caption = await asyncio.to_thread(images.process_image, data, work=work)",
            "renditions, caption = images.process_image(data, work=work)",
        ),
    ),
    "a failure crashes the worker": (("    except Exception as exc:\n", "    except ZeroDivisionError as exc:\n"),),
    "the marker before job.done": ((DONE_PUBLISH + DONE_MARK, DONE_MARK + DONE_PUBLISH),),
    "the marker first": ((DONE_MARK, ""), (MARKER, MARKER + DONE_MARK)),
    "no marker on the failure path": ((FAILED_MARK, ""),),
    "the fetch outside the try": ((FETCH, '    data, _, _ = await storage.get(job["original"]["key"])\n    try:\n'),),
    "a clean-session notifier": ((NOTIFIER_CLIENT, NOTIFIER_CLIENT.replace("clean_session=False", "clean_session=True")),),
    "a new client id per start": (
        (NOTIFIER_CLIENT, NOTIFIER_CLIENT.replace("broker.client(name,", 'broker.client(f"{name}-{uuid.uuid4().hex[:4]}",')),
    ),
    "a forgetful notifier acking first": (
        ('    notified = SeenIds(Path(workdir) / "notified-jobs.txt")', "    notified = set()  # in memory"),
        (
            NOTIFIER_CLIENT,
            NOTIFIER_CLIENT.replace(
                "manual_ack(broker.client(name, clean_session=False))", "broker.client(name, clean_session=False)"
            ),
        ),
        _without_ack(NOTIFIER_ACK),
    ),
}
"""Each classic mistake as an edit of the solution notebook's code (tests/lab_submissions.py)."""


def mistake(name: str) -> dict[str, Any]:
    """The solution notebook's namespace with the mistake ``name`` of EDITS made."""
    return submission(LAB, *EDITS[name])


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
    got = await results(submission(LAB))
    assert not failed(got)
    assert set(got) == {c.name for c in CHECKS}


# --------------------------------------------------------------------------- q1: the diagram


def diagram_with(*edits: Edit) -> list[str]:
    """The solution's Markdown with its diagram edited."""
    return [
        edited(text, *edits, what="the solution's diagram") if "```mermaid" in text and "BEGIN SOLUTION" in text else text
        for text in MARKDOWN
    ]


async def test_a_missing_diagram_says_to_save_the_notebook() -> None:
    names = {"draws_every_part", "marks_every_arrow", "design_holds", "diagram_matches_the_running_code"}
    got = await results(submission(LAB), names, markdown=markdown_cells(LAB, shipped=True))
    assert not any(r.passed for r in got.values())
    assert all(SAVE_FIRST in r.message for r in got.values()), failed(got)


async def test_a_diagram_with_the_processor_called_synchronously_names_the_edge() -> None:
    sync = diagram_with(("upload -.->|MQTT image.uploaded| broker", "upload -->|HTTP POST /process| processor"))
    got = await results(submission(LAB), {"draws_every_part", "marks_every_arrow", "design_holds"}, markdown=sync)
    assert got["draws_every_part"].passed
    assert got["marks_every_arrow"].passed
    assert "Upload -> AI Image Processor is drawn sync: the upload would wait for processing" in got["design_holds"].message


async def test_an_unmarked_arrow_is_named() -> None:
    unmarked = diagram_with(("|HTTP PUT original|", "|stores the original|"))
    got = await results(submission(LAB), {"marks_every_arrow"}, markdown=unmarked)
    assert "Upload -> Storage has no sync/async marking" in got["marks_every_arrow"].message


LATER_FLOWCHART = "\n\n```mermaid\nflowchart LR\n    worker[Worker] -.->|MQTT job.done| inbox[Inbox]\n```\n"
"""A second diagram, in a later answer: it draws two parts only, so read as the Q1 diagram it fails every Q1 check."""
DIAGRAM_CHECKS = {"draws_every_part", "marks_every_arrow", "design_holds"}


def with_later_flowchart(markdown: list[str]) -> list[str]:
    """The Markdown with a second flowchart in Q5's answer cell (the reviewer's case: it replaced the Q1 diagram)."""
    later = [text + LATER_FLOWCHART if text.startswith("**In your words**") else text for text in markdown]
    assert later != markdown, "the Q5 answer cell is gone"
    return later


async def test_a_second_flowchart_in_a_later_answer_does_not_replace_the_q1_diagram() -> None:
    got = await results(submission(LAB), DIAGRAM_CHECKS, markdown=with_later_flowchart(MARKDOWN))
    assert failed(got) == {}


async def test_a_flowchart_only_in_a_later_answer_is_not_the_q1_diagram() -> None:
    got = await results(submission(LAB), DIAGRAM_CHECKS, markdown=with_later_flowchart(markdown_cells(LAB, shipped=True)))
    assert not any(r.passed for r in got.values())
    assert all("found no ```mermaid flowchart in Q1's answer cell" in r.message for r in got.values()), failed(got)


async def test_without_the_q1_heading_the_first_flowchart_is_read() -> None:
    from helpers.labchecks.image_pipeline import q1_section

    assert q1_section(MARKDOWN) == MARKDOWN[1:3]  # the Q1 prompt and its answer cell, up to Q2's heading
    own_heading = [f"### Q1, my answer\n\n{text}" if text.startswith("**Your diagram:**") else text for text in MARKDOWN]
    assert q1_section(own_heading) == own_heading[1:3]
    renamed = [text.replace("## Q1 ·", "## One ·") for text in with_later_flowchart(MARKDOWN)]
    assert q1_section(renamed) is None
    assert failed(await results(submission(LAB), DIAGRAM_CHECKS, markdown=renamed)) == {}


async def test_a_dotted_arrow_that_contradicts_a_solid_one_loses_the_design_points() -> None:
    solid = "    processor -->|HTTP GET original, PUT renditions| storage\n"
    both = diagram_with((solid, solid + "    processor -.->|MQTT renditions| storage\n"))
    got = await results(submission(LAB), {"marks_every_arrow", "design_holds"}, markdown=both)
    assert got["marks_every_arrow"].passed
    assert "AI Image Processor -> Storage is drawn both sync (HTTP) and async (MQTT)" in got["design_holds"].message


async def test_a_diagram_that_says_async_where_the_code_is_sync_loses_the_point() -> None:
    got = await results(mistake("processing in the request"), {"diagram_matches_the_running_code"})
    message = got["diagram_matches_the_running_code"].message
    assert (
        "the diagram says Upload -> AI Image Processor is async (MQTT), but the running code called it synchronously" in message
    )


Q1_CHECKS = {c.name for c in CHECKS if c.question == "q1"}
JOB_DONE_ARROW = "    processor -.->|MQTT job.done / job.failed| broker\n"


def q1_points_lost(got: dict[str, CheckResult]) -> float:
    return sum(c.points for c in CHECKS if c.name in failed(got))


async def test_one_solid_arrow_labelled_mqtt_costs_the_notation_point_only() -> None:
    """Held-out: `processor -->|MQTT job.done / job.failed| broker` cost 5 of Q1's 6 points (the notation, the design and
    the comparison with the code each failing it). The label names the protocol and the event: the design and the
    code are judged as meant, and the notation's check alone names the slip."""
    one_arrow = diagram_with((JOB_DONE_ARROW, JOB_DONE_ARROW.replace("-.->", "-->")))
    got = await results(submission(LAB), Q1_CHECKS, markdown=one_arrow)
    assert set(failed(got)) == {"marks_every_arrow"}, failed(got)
    assert "a solid arrow says sync, the label says MQTT" in got["marks_every_arrow"].message
    assert q1_points_lost(got) == 1


async def test_a_missing_async_route_fails_the_design_once() -> None:
    """No job.done route to Notification: a design mistake, charged by design_holds; the comparison with the (right) code
    does not charge it again."""
    notify = "    broker -.->|MQTT job.done / job.failed| notification[Notification]\n"
    missing = diagram_with((JOB_DONE_ARROW, ""), (notify, "    notification[Notification]\n"))
    got = await results(submission(LAB), Q1_CHECKS, markdown=missing)
    assert set(failed(got)) == {"design_holds"}, failed(got)
    assert "there is no arrow from AI Image Processor to Notification" in got["design_holds"].message


async def test_an_upload_that_calls_the_processor_fails_the_design_in_either_line_style() -> None:
    """Read as meant, an arrow labelled HTTP is a call whatever its line: the upload waiting for processing fails the
    design drawn solid, and drawn dotted too (where the notation's check names the style as well)."""
    for arrow in ("-->", "-.->"):
        calls = diagram_with(("upload -.->|MQTT image.uploaded| broker", f"upload {arrow}|HTTP POST /process| processor"))
        got = await results(submission(LAB), {"marks_every_arrow", "design_holds"}, markdown=calls)
        assert "Upload -> AI Image Processor is drawn sync: the upload would wait for processing" in got["design_holds"].message
        assert got["marks_every_arrow"].passed == (arrow == "-->"), got["marks_every_arrow"].message


USER_CALL = "    user([User]) -->|HTTP POST /images| upload[Upload]\n"
STORAGE_CALL = "    upload -->|HTTP PUT original| storage[(Storage)]\n"


async def test_answers_drawn_as_arrows_lose_the_design_points_by_name() -> None:
    """Held-out: every required arrow plus `upload -->|HTTP 202 Accepted| user` and `storage -->|HTTP 201| upload` got
    full marks, though the lab says to draw calls and messages, not answers. design_holds names each answer arrow;
    nothing else in Q1 charges it."""
    answers = diagram_with(
        (USER_CALL, USER_CALL + "    upload -->|HTTP 202 Accepted| user\n"),
        (STORAGE_CALL, STORAGE_CALL + "    storage -->|HTTP 201| upload\n"),
    )
    got = await results(submission(LAB), Q1_CHECKS, markdown=answers)
    assert set(failed(got)) == {"design_holds"}, failed(got)
    message = got["design_holds"].message
    assert "Upload -> User: this is the answer to User's call (HTTP 202); draw the call only" in message
    assert "Storage -> Upload: this is the answer to Upload's call (HTTP 201); draw the call only" in message
    assert q1_points_lost(got) == 2


async def test_an_unlabelled_answer_back_along_a_sync_call_is_named() -> None:
    """A solid HTTP arrow back along a required sync call is an answer whatever its label says (Storage never calls)."""
    back = diagram_with((STORAGE_CALL, STORAGE_CALL + "    storage -->|HTTP the stored key| upload\n"))
    got = await results(submission(LAB), {"design_holds"}, markdown=back)
    assert "Storage -> Upload: this is the answer to Upload's call" in got["design_holds"].message


async def test_calls_the_other_way_are_not_answers() -> None:
    """Correct diagrams draw arrows that go back between two parts: the notification pushed to the user, the user
    polling its job, the processor's job events to the upload, brokers drawn as topic nodes. None is an answer."""
    extra = (
        "    user -->|HTTP GET /jobs/id| upload\n"
        "    processor -.->|MQTT job events| events((jobs topic))\n"
        "    events -.->|MQTT job events| upload\n"
        "    notification -->|HTTP web push: 200 images ready| user\n"
    )
    calls = diagram_with((USER_CALL, USER_CALL + extra))
    got = await results(submission(LAB), DIAGRAM_CHECKS, markdown=calls)
    assert failed(got) == {}


async def test_the_diagram_is_compared_with_the_code_where_the_learner_sees_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The comparison is visible: the notebook's ``await check("q4")`` runs it (after q4's own checks), not
    ``check("q1")``, whose code does not exist yet; it counts for Q1."""
    from helpers.grading.notebook import PendingCheck

    comparison = next(c for c in CHECKS if c.name == "diagram_matches_the_running_code")
    assert (comparison.question, comparison.hidden, comparison.after) == ("q1", False, "q4")
    monkeypatch.chdir(tmp_path)  # no saved notebook here: every check fails fast, saying why
    at_q1 = await PendingCheck(LAB, "q1", {}, 1)
    at_q4 = await PendingCheck(LAB, "q4", {}, 1)
    assert comparison.description not in {r.description for r in at_q1.results}
    assert at_q4.results[-1].description == comparison.description
    assert {r.question for r in at_q4.results} == {"q4", "q1"}
    assert SAVE_FIRST in at_q4.results[-1].message
    capsys.readouterr()


# --------------------------------------------------------------------------- q2: the upload


async def test_processing_inside_the_upload_request_is_named() -> None:
    got = await results(mistake("processing in the request"), {"answers_before_processing", "burst_of_uploads_stays_fast"})
    assert not any(r.passed for r in got.values()), failed(got)
    assert all("processing inside the upload request" in r.message for r in got.values())


async def test_publishing_the_bytes_instead_of_a_reference_is_named() -> None:
    got = await results(mistake("the bytes in the event"), {"publishes_a_claim_check", "diagram_matches_the_running_code"})
    assert "publishing the bytes instead of a reference" in got["publishes_a_claim_check"].message
    assert "carries the image's bytes" in got["diagram_matches_the_running_code"].message


async def test_trusting_the_file_extension_or_content_type_is_named() -> None:
    got = await results(mistake("trusting the label"), {"refuses_what_is_not_an_image", "trusts_the_bytes_not_the_label"})
    assert not any(r.passed for r in got.values()), failed(got)
    assert all("trusting the file extension/content type" in r.message for r in got.values()), failed(got)


async def test_no_idempotency_key_is_named() -> None:
    got = await results(mistake("no idempotency key"), {"repeated_idempotency_key_is_one_job"})
    assert "no idempotency" in got["repeated_idempotency_key_is_one_job"].message


async def test_an_unscoped_dict_from_key_to_202_body_is_named() -> None:
    """The classic mistake: one dict ``Idempotency-Key -> 202 body`` for everyone, blind to the bytes."""
    ns = submission(LAB)
    make_correct = ns["make_upload_handler"]

    def unscoped_dict(storage: StorageClient, mqtt: Any, topics: Any, jobs: Any) -> Any:
        correct = make_correct(storage, mqtt, topics, jobs)
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

    got = await results(replaced(ns, make_upload_handler=unscoped_dict), {"idempotency_is_per_user_with_a_fingerprint"})
    result = got["idempotency_is_per_user_with_a_fingerprint"]
    assert not result.passed, result
    assert "someone else's job" in result.message, result.message
    assert "422" in result.message, result.message


Q2 = {check.name for check in CHECKS.of("q2")}


async def test_publishing_straight_after_storing_is_named_as_a_dual_write() -> None:
    """The lab's first version (issue 19): publish right after storing, the job stored at the 202. The broker away, it
    answered 500 for work it could have queued; only the outbox check fails, the rest of Q2 still runs."""
    got = await results(mistake("publishing straight after storing"), Q2)
    assert set(failed(got)) == {"queues_through_the_outbox"}, failed(got)
    message = got["queues_through_the_outbox"].message
    assert "while the MQTT broker was away" in message, message
    assert "dual write" in message, message
    assert "jobs.queue(job, topics.uploaded, event)" in message, message


async def test_a_202_for_an_upload_storage_refused_is_named() -> None:
    got = await results(mistake("a 202 when Storage fails"), {"queues_through_the_outbox"})
    message = got["queues_through_the_outbox"].message
    assert "never a 202 for work that is not queued" in message, message


async def test_a_storage_failure_answered_by_the_handler_itself_frees_the_key_too() -> None:
    """A correct alternative: the handler answers Storage's failure with its own 503 instead of raising. The key its
    jobs.new reserved is still given up (serve_upload's middleware), so the same key's retry is a new, queued job."""
    answer_503 = "            return web.Response(status=503, text=str(exc))\n"
    answered = "        try:\n    " + PUT + "        except StorageError as exc:\n" + answer_503
    ns = submission(LAB, (PUT, answered), STORAGE_ERROR)
    got = await results(ns, {"queues_through_the_outbox"})
    assert not failed(got)
    assert "Storage down: HTTP 5" in got["queues_through_the_outbox"].message


async def test_the_desk_stores_a_job_only_with_its_event_and_frees_an_unqueued_key(tmp_path: Path) -> None:
    """Issue 19: the first desk stored the job at jobs.new. A Storage PUT or publish that then failed left an accepted
    job with no event, and a retry with the same key was answered 202 for that job, work nobody would do."""
    store = UploadJobs(tmp_path / STORE_FILE)
    desk = UploadJobsDesk(store)  # no relay: what is queued waits in the outbox
    try:
        with desk.request():
            job = desk.new("ada", "key-1", "f1")
            assert len(desk) == 0, "jobs.new stores nothing: the job exists once it is queued"
            with pytest.raises(KeyInUse):
                desk.new("ada", "key-1", "f1")  # a concurrent request with the key is told 409
        assert desk.find("ada", "key-1") is None, "the request ended without queueing: no job to replay"
        with desk.request():
            again = desk.new("ada", "key-1", "f1")  # the key is free again
            event = make_event(IMAGE_UPLOADED, {"job_id": again.job_id}, source="/test")
            await desk.queue(again, "t/images/uploaded", event)
        found = desk.find("ada", "key-1")
        assert found is not None
        assert found.job_id == again.job_id != job.job_id
        assert [(m.topic, m.payload) for m in store.store.pending()] == [("t/images/uploaded", event.to_bytes())]
        assert desk.accepted(again).status == 202
    finally:
        store.close()


async def test_a_keyed_retry_after_storage_failed_is_a_new_job_that_is_queued(broker: Broker, tmp_path: Path) -> None:
    """Issue 19, on the solution's own handler: Storage down answers an error, and the same key afterwards gets a job
    whose image.uploaded goes out. (The first desk replayed a 202 for the job the failed request left, with no event.)"""
    topics, storage = Topics.fresh("t19"), RecordingStorage(tmp_path / "storage")
    wire = await start_recorder(broker, topics, name=f"t19-{uuid.uuid4().hex[:6]}")
    server = await serve_upload(submission(LAB)["make_upload_handler"], broker, topics, await storage.url("upload"), name="t19")
    try:
        async with aiohttp.ClientSession() as http:

            async def post() -> tuple[int, dict[str, Any]]:
                headers = {"Idempotency-Key": "retry-me"}
                async with http.post(f"{server.url}/images", params={"user": "ada"}, data=photo, headers=headers) as r:
                    return r.status, await r.json(content_type=None)

            photo = images.sample_photo()
            storage.faults.down = True
            refused, _ = await post()
            storage.faults.down = False
            retried, body = await post()
        assert refused == 500, "Storage refused the original: no 202"
        assert retried == 202, body
        job_id = body["job_id"]
        assert await until(lambda: bool(wire.events(IMAGE_UPLOADED, job_id)), 5.0), "the retry's job was never announced"
        assert len(server.jobs) == 1, "the failed request stored no job"
    finally:
        await server.stop()
        await wire.stop()
        await storage.stop()


# --------------------------------------------------------------------------- q3: the processor


async def test_no_idempotency_in_the_processor_is_named() -> None:
    got = await results(mistake("no done marker"), {"same_event_twice_is_done_once", "retried_upload_event_is_done_once"})
    assert not any(r.passed for r in got.values()), failed(got)
    assert all("no idempotency" in r.message for r in got.values())


async def test_a_dedupe_in_memory_is_caught() -> None:
    got = await results(mistake("a dedupe in memory"), {"same_event_twice_is_done_once", "retried_upload_event_is_done_once"})
    assert got["same_event_twice_is_done_once"].passed
    assert not got["retried_upload_event_is_done_once"].passed


async def test_ack_before_storing_is_named() -> None:
    got = await results(mistake("ack first"), {"acks_after_storing", "worker_killed_mid_image"})
    assert not any(r.passed for r in got.values()), failed(got)
    assert "ack before storing" in got["acks_after_storing"].message
    assert "lost" in got["worker_killed_mid_image"].message


async def test_auto_ack_is_named_with_its_fix() -> None:
    got = await results(mistake("auto-ack"), {"acks_after_storing"})
    message = got["acks_after_storing"].message
    assert "ack before storing" in message, message
    assert "manual_ack" in message, message


async def test_blocking_the_event_loop_is_named() -> None:
    got = await results(mistake("blocking the loop"), {"keeps_the_event_loop_free"})
    message = got["keeps_the_event_loop_free"].message
    assert "blocked the event loop" in message, message
    assert "asyncio.to_thread" in message, message


async def test_a_failure_that_crashes_the_worker_is_caught() -> None:
    got = await results(mistake("a failure crashes the worker"), {"failure_ends_failed_with_a_dead_letter"})
    assert "crashed" in got["failure_ends_failed_with_a_dead_letter"].message


@pytest.mark.parametrize(
    ("name", "when"), [("the marker before job.done", "before job.done"), ("the marker first", "before the work")]
)
async def test_a_done_marker_written_too_early_is_named(name: str, when: str) -> None:
    got = await results(mistake(name), {"marker_written_last"})
    message = got["marker_written_last"].message
    assert f"the marker was written {when}" in message, message
    assert "write the marker last" in message, message


async def test_no_marker_on_the_failure_path_is_named() -> None:
    got = await results(mistake("no marker on the failure path"), {"failure_ends_failed_with_a_dead_letter"})
    message = got["failure_ends_failed_with_a_dead_letter"].message
    assert "the failed image, delivered again, failed again (2 job.failed" in message, message


async def test_a_failing_fetch_that_crashes_the_worker_is_caught() -> None:
    got = await results(mistake("the fetch outside the try"), {"failure_ends_failed_with_a_dead_letter"})
    message = got["failure_ends_failed_with_a_dead_letter"].message
    assert "run_processor() crashed" in message, message


# --------------------------------------------------------------------------- q4: the notifier


async def test_a_clean_session_notifier_is_named() -> None:
    got = await results(mistake("a clean-session notifier"), {"keeps_what_arrives_while_down", "notifier_outage_loses_nothing"})
    assert not any(r.passed for r in got.values()), failed(got)
    assert "a clean session forgets what was sent while it was down" in got["keeps_what_arrives_while_down"].message


async def test_a_notifier_that_ignores_job_failed_is_told_why() -> None:
    """Only job.done notified: the feedback names the failed jobs as the unnotified ones and job.failed as the cause."""
    done_only = submission(LAB, ("event.type in (JOB_DONE, JOB_FAILED) and", "event.type == JOB_DONE and"))
    got = await results(done_only, {"notifies_each_user_once"})
    message = got["notifies_each_user_once"].message
    assert "the 1 failed job(s) were never notified, the done ones were: job.failed must notify too" in message, message


async def test_a_new_client_id_per_start_is_named() -> None:
    got = await results(mistake("a new client id per start"), {"keeps_what_arrives_while_down"})
    assert "a new client id is a new session" in got["keeps_what_arrives_while_down"].message


async def test_a_notifier_that_forgets_on_restart_or_acks_first_is_caught() -> None:
    got = await results(mistake("a forgetful notifier acking first"), {"remembers_across_a_restart", "acks_after_notifying"})
    assert not any(r.passed for r in got.values()), failed(got)
    assert "ack before notifying" in got["acks_after_notifying"].message
