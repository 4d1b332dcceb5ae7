"""The async-job kit: a durable SQLite job store (states, idempotency, outbox, deadline) and its HTTP convention."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from helpers.core.broker import Broker
from helpers.core.jobkit import http as jobhttp
from helpers.core.jobkit.client import Answer, PollError
from helpers.core.jobkit.store import (
    Admission,
    Change,
    JobRecord,
    JobState,
    JobStore,
    KeyInUse,
    StateMovedBack,
    fingerprint,
    moves_forward,
    relay_outbox,
)
from helpers.core.problems import PROBLEM_JSON
from helpers.core.receive import collect


def new_job(job_id: str, request: dict[str, str], *, caller: str = "ada", key: str | None = None) -> JobRecord:
    return JobRecord(job_id, request, caller, key)


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3")


def test_states_only_move_forward() -> None:
    assert moves_forward("accepted", "running")
    assert moves_forward("running", "succeeded")
    assert moves_forward("accepted", "failed")
    assert moves_forward("running", "running")
    assert not moves_forward("running", "accepted")
    for final in ("succeeded", "failed", "cancelled"):
        assert not any(moves_forward(final, other) for other in JobState if other != final), final
    with pytest.raises(ValueError, match="done"):
        moves_forward("accepted", "done")  # one vocabulary: "done" is not a state


def test_the_store_refuses_a_move_back_and_keeps_what_it_had(store: JobStore) -> None:
    job = store.accept(new_job("j1", {"task": "t"}), {"state": "accepted"})
    job.state = JobState.SUCCEEDED
    store.update(job, {"state": "succeeded"})
    job.state = JobState.RUNNING
    with pytest.raises(StateMovedBack, match="from 'succeeded' to 'running'"):
        store.update(job, {"state": "running"})
    stored = store.get("j1")
    assert stored is not None
    assert stored.state == JobState.SUCCEEDED
    assert [c.document["state"] for c in store.changes("j1")] == ["accepted", "succeeded"]


def test_the_fingerprint_ignores_key_order_but_not_content() -> None:
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint(b"x") != fingerprint(b"y")


def test_idempotency_is_per_caller_with_a_fingerprint(store: JobStore) -> None:
    task = {"task": "compare brokers"}
    assert store.admit("ada", "k1", fingerprint(task)).outcome == Admission.NEW
    store.accept(new_job("j1", task, key="k1"), {"state": "accepted"})
    assert store.admit("ada", "k1", fingerprint(task)).outcome == Admission.IN_FLIGHT, "not answered yet"
    store.answered("ada", "k1")
    replay = store.admit("ada", "k1", fingerprint(task))
    assert replay.outcome == Admission.REPLAY
    assert replay.job is not None
    assert replay.job.job_id == "j1"
    assert store.admit("ada", "k1", fingerprint({"task": "other"})).outcome == Admission.MISMATCH
    assert store.admit("bob", "k1", fingerprint({"task": "other"})).outcome == Admission.NEW, "another caller's key"
    assert store.admit("ada", None, fingerprint(task)).outcome == Admission.NEW
    with pytest.raises(KeyInUse):
        store.accept(new_job("j2", task, key="k1"), {"state": "accepted"})  # the race's loser
    assert store.get("j2") is None, "the loser left no job behind (one transaction)"
    assert len(store) == 1
    by_bob = store.accept(new_job("j3", task, caller="bob", key="k1"), {"state": "accepted"})
    found = store.by_key("bob", "k1")
    assert found is not None
    assert found.job_id == by_bob.job_id
    assert store.by_key("eve", "k1") is None


def test_a_reserved_key_is_in_flight_until_its_job_is_stored(store: JobStore) -> None:
    task = {"task": "decode a large image"}
    store.reserve("ada", "k1", fingerprint(task), "j1")  # before the expensive work: no job yet
    assert store.get("j1") is None
    in_flight = store.admit("ada", "k1", fingerprint(task))
    assert (in_flight.outcome, in_flight.job) == (Admission.IN_FLIGHT, None), "a concurrent retry: 409"
    assert store.admit("ada", "k1", fingerprint({"task": "other"})).outcome == Admission.MISMATCH
    assert store.admit("bob", "k1", fingerprint(task)).outcome == Admission.NEW, "another caller's key"
    with pytest.raises(KeyInUse):
        store.reserve("ada", "k1", fingerprint(task), "j2")
    with pytest.raises(KeyInUse):
        store.accept(new_job("j2", task, key="k1"), {"state": "accepted"})  # not the reserving job
    store.accept(new_job("j1", task, key="k1"), {"state": "accepted"})  # the reservation becomes the job's key
    assert not store.release("ada", "k1", "j1"), "a stored job keeps its key"
    assert store.admit("ada", "k1", fingerprint(task)).outcome == Admission.IN_FLIGHT
    store.answered("ada", "k1")
    replay = store.admit("ada", "k1", fingerprint(task))
    assert replay.outcome == Admission.REPLAY
    assert replay.job is not None
    assert replay.job.job_id == "j1"


def test_a_released_or_abandoned_reservation_frees_the_key(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    task = {"task": "decode"}
    store = JobStore(path)
    store.reserve("ada", "failed", fingerprint(task), "j1")
    assert store.release("ada", "failed", "j1"), "the first request failed: nothing was stored"
    assert store.admit("ada", "failed", fingerprint(task)).outcome == Admission.NEW
    store.reserve("ada", "crashed", fingerprint(task), "j2")  # the process dies before the job is stored
    store.close()
    again = JobStore(path)
    assert again.admit("ada", "crashed", fingerprint(task)).outcome == Admission.NEW, "a restart frees the key"
    again.close()


def test_a_restart_keeps_jobs_history_and_pending_outbox(tmp_path: Path) -> None:
    path = tmp_path / "work" / "jobs.sqlite3"
    first = JobStore(path)
    job = first.accept(new_job("j1", {"task": "t"}, key="k"), {"state": "accepted"}, [("work/plan", b"order-1")])
    job.state, job.data = JobState.RUNNING, {"step": "plan"}
    first.update(job, {"state": "running"}, [("work/next", b"order-2")])
    first.published([first.pending()[0].seq])
    first.close()  # the service stops (or dies) before its relay sent order-2
    again = JobStore(path)
    stored = again.get("j1")
    assert stored is not None
    assert stored.state == JobState.RUNNING
    assert stored.data == {"step": "plan"}
    assert [c.seq for c in again.changes("j1")] == [1, 2]
    assert [c.seq for c in again.changes("j1", after=1)] == [2]
    assert [m.payload for m in again.pending()] == [b"order-2"], "what was not published is published after the restart"
    assert again.admit("ada", "k", fingerprint({"task": "t"})).outcome == Admission.REPLAY, "no key stays in flight"
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_overdue_lists_unfinished_jobs_past_their_deadline(store: JobStore) -> None:
    now = time.time()
    for job_id, deadline, state in (("late", now - 1, "running"), ("early", now + 60, "running"), ("done", now - 1, "succeeded")):
        job = store.accept(JobRecord(job_id, {"task": job_id}, deadline=deadline), {"state": "accepted"})
        job.state = JobState(state)
        store.update(job, {"state": state})
    assert [j.job_id for j in store.overdue()] == ["late"]
    assert store.states() == {"running": 2, "succeeded": 1}


@pytest.mark.broker
async def test_the_relay_publishes_after_commit_and_marks_what_it_sent(broker: Broker, store: JobStore, topic: str) -> None:
    store.accept(new_job("j1", {"task": "t"}), {"state": "accepted"}, [(f"{topic}/a", b"1"), (f"{topic}/b", b"2")])
    async with broker.client() as reader, broker.client() as writer:
        await reader.subscribe(f"{topic}/#", qos=1)
        assert await relay_outbox(store, writer) == 2
        assert await relay_outbox(store, writer) == 0, "a message is sent once per relay, not again"
        got = await collect(reader, expected=2, timeout=5)
    assert [bytes(m.payload) for m in got if isinstance(m.payload, bytes)] == [b"1", b"2"]
    assert store.pending() == []


async def test_a_failed_publish_leaves_the_rest_pending(store: JobStore) -> None:
    class Down:
        async def publish(self, *args: object, **kwargs: object) -> None:
            raise OSError("broker down")

    store.accept(new_job("j1", {"task": "t"}), {"state": "accepted"}, [("t/a", b"1")])
    with pytest.raises(OSError, match="broker down"):
        await relay_outbox(store, Down())  # type: ignore[arg-type]  # a stand-in client whose publish fails
    assert [m.payload for m in store.pending()] == [b"1"]


def _body(response: web.Response) -> str:
    assert isinstance(response.body, bytes)
    return response.body.decode()


def test_the_http_convention() -> None:
    made = jobhttp.accepted({"job_id": "j", "state": "accepted"}, "/jobs/j", 2)
    assert made.status == 202
    assert made.headers["Location"] == "/jobs/j"
    assert made.headers["Retry-After"] == "2"
    running = jobhttp.status({"state": "running"}, "running", "/jobs/j/result")
    assert running.status == 200
    assert running.headers["Retry-After"] == "1"
    done = jobhttp.status({"state": "succeeded"}, "succeeded", "/jobs/j/result")
    assert done.status == 303
    assert done.headers["Location"] == "/jobs/j/result"
    failed = jobhttp.status({"state": "failed"}, "failed", "/jobs/j/result")
    assert failed.status == 200
    assert failed.content_type == PROBLEM_JSON
    assert "Retry-After" not in failed.headers
    cancelled = jobhttp.status({"state": "cancelled"}, "cancelled", "/jobs/j/result")
    assert cancelled.status == 200
    assert "Retry-After" not in cancelled.headers
    for response, code in (
        (jobhttp.unknown_job("x"), 404),
        (jobhttp.job_finished("x", "failed"), 409),
        (jobhttp.key_reused("k"), 422),
        (jobhttp.key_in_flight("k"), 409),
        (jobhttp.no_result("x", "running", "/jobs/x"), 404),
    ):
        assert response.status == code
        assert response.content_type == PROBLEM_JSON
        assert '"title"' in _body(response)
    assert jobhttp.key_in_flight("k", 3).headers["Retry-After"] == "3"


def test_links_come_from_the_configured_base_never_the_host_header() -> None:
    assert jobhttp.link("/jobs/j") == "/jobs/j"
    assert jobhttp.link("/jobs/j", "https://api.example.org/v1/") == "https://api.example.org/jobs/j"
    hostile = make_mocked_request("POST", "/jobs?user=ada", headers={"Host": "evil.example"})
    assert jobhttp.caller_of(hostile) == "ada"
    assert jobhttp.caller_of(make_mocked_request("POST", "/jobs")) == jobhttp.ANONYMOUS
    assert "evil" not in jobhttp.link("/jobs/j", None)


async def test_no_store_marks_every_answer() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({})

    response = await jobhttp.no_store(make_mocked_request("GET", "/jobs/j"), handler)
    assert response.headers["Cache-Control"] == "no-store"
    await asyncio.sleep(0)


def test_a_failed_jobs_document_is_problem_details_without_a_status_member() -> None:
    body = {"job_id": "j", "state": "failed", "links": {"self": "/jobs/j"}}
    document = jobhttp.failed_document(body, "step 'draft' failed: timeout", failed_step="draft")
    assert document["type"].endswith("job-failed")
    assert document["instance"] == "/jobs/j", "the problem's instance is the job's status resource"
    assert document["failed_step"] == "draft"
    assert "status" not in document, "RFC 9457's status would have to equal the HTTP 200 of the read"


def test_a_reconnecting_client_resumes_after_its_last_event_id() -> None:
    change = Change(3, 0.0, {"state": "running"})
    assert jobhttp.sse_frame(change) == b'id: 3\nevent: status\ndata: {"state":"running"}\n\n'
    assert (change.state, change.final) == ("running", False)
    assert jobhttp.last_event_id(make_mocked_request("GET", "/e", headers={"Last-Event-ID": "3"})) == 3
    assert jobhttp.last_event_id(make_mocked_request("GET", "/e", headers={"Last-Event-ID": "x"})) == 0
    assert jobhttp.last_event_id(make_mocked_request("GET", "/e")) == 0


async def test_the_event_stream_sends_each_change_and_keep_alives_then_closes() -> None:
    async def changes() -> AsyncGenerator[Change | None, None]:
        yield Change(1, 0.0, {"state": "accepted"})
        yield None  # nothing happened for a heartbeat
        yield Change(2, 0.0, {"state": "succeeded"})

    async def stream(request: web.Request) -> web.StreamResponse:
        return await jobhttp.event_stream(request, changes(), retry_after_s=2)

    app = web.Application()
    app.router.add_get("/events", stream)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/events")
        text = await response.text()
    assert response.headers["Content-Type"] == "text/event-stream"
    assert text.startswith("retry: 2000\n\n"), "a reconnecting client waits as long as Retry-After says"
    assert text.count("event: status") == 2
    assert ": keep-alive\n\n" in text


def test_a_client_goes_on_only_from_a_202_that_names_its_job() -> None:
    assert Answer("POST", "http://h/jobs", 202, {}, {"job_id": "j1"}, 0.0, 0.1).job_id() == "j1"
    with pytest.raises(PollError, match="POST http://h/jobs answered 400"):
        Answer("POST", "http://h/jobs", 400, {}, {"title": "Invalid task"}, 0.0, 0.1).job_id()
