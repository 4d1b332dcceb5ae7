"""Lesson 06's claims: the decision walk (D1), and the hybrid 202 flow by the HTTP spec, measured (D2, M15).

Run on the embedded broker (``pytest tests/test_choosing.py``) and on Mosquitto
(``python -m helpers mosquitto -- pytest tests/test_choosing.py``). Bounds are ratios or
wide (2 shared cores); the tests wait on conditions (``until``), never on a guessed sleep.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import matplotlib
import pytest
from aiohttp import web

from helpers.choosing.decision import (
    ASYNC,
    BUSY_PER_S,
    EXAMPLES,
    HYBRID,
    PATIENCE_S,
    SYNC,
    Interaction,
    Recommendation,
    by_name,
    recommendation_rows,
)
from helpers.choosing.hybrid import (
    ACCEPTED,
    CANCELLED,
    FAILED,
    JOB_FAILED,
    JOB_SUCCEEDED,
    RUNNING,
    STEP_DONE,
    STEP_STARTED,
    STEPS,
    SUCCEEDED,
    HybridSystem,
    Job,
    JobBoard,
    apply_event,
    measure_kickoffs,
    plot_watch,
    quick_steps,
    read_events,
    read_task,
    request,
    start_hybrid,
    start_sync_agent,
    submit,
    watch_job,
)
from helpers.core.broker import Broker
from helpers.core.messaging import Event, make_event
from helpers.core.problems import PROBLEM_BASE, PROBLEM_JSON, problem
from helpers.core.waiting import until, until_quiet

matplotlib.use("Agg")


# The walk and the 202 handler as lesson 06 writes them on screen (the harness takes any such handler).
def decide(x: Interaction) -> Recommendation:
    why = []
    if x.needs_answer_now and x.work_s <= PATIENCE_S and not x.must_survive_outage:
        why.append(f"the caller needs it and {x.work_s:g} s fits in a request")
        if x.per_second > BUSY_PER_S:
            why.append("busy: scale the service out, keep the call")
        return Recommendation(SYNC, why)
    if x.work_s > PATIENCE_S:
        why.append(f"{x.work_s:g} s is too long to hold a request open")
    if x.must_survive_outage:
        why.append("must outlive an outage: a durable queue keeps it")
    if x.per_second > BUSY_PER_S or x.scale_apart:
        why.append("volume or heavy work: workers scale on their own")
    if x.needs_answer_now or x.wants_result:
        return Recommendation(HYBRID, [*why, "someone wants the outcome: 202, then poll or push"])
    return Recommendation(ASYNC, [*why, "nobody waits for the outcome: publish and move on"])


async def start_job(request: web.Request, jobs: JobBoard) -> web.Response:
    task = await read_task(request)
    if task is None:
        return problem(
            400, "Invalid task", 'send JSON like {"task": "compare three vector databases"}', f"{PROBLEM_BASE}invalid-task"
        )
    key = request.headers.get("Idempotency-Key")
    job = jobs.by_key(key) if key else None
    if job is not None and job.task != task:
        return problem(422, "Idempotency-Key reused", "this key came before with another task", f"{PROBLEM_BASE}key-reused")
    if job is None:
        job = jobs.create(task, key)
        await jobs.start(job)
    return web.json_response(
        job.accepted, status=202, headers={"Location": f"/jobs/{job.job_id}", "Retry-After": str(jobs.retry_after_s)}
    )


# --------------------------------------------------------------------------- D1: the decision walk


def test_the_walk_recommends_what_the_lesson_says() -> None:
    styles = {x.name: decide(x).style for x in EXAMPLES}
    assert styles["login"] == styles["add to cart"] == styles["payment authorization"] == SYNC
    assert styles["millions of notification emails"] == ASYNC
    assert styles["video encoding"] in (ASYNC, HYBRID)
    assert styles["report generation"] == styles["multi-step AI agent task"] == HYBRID
    assert all(decide(x).reasons for x in EXAMPLES), "every recommendation says why"


def test_each_question_can_change_the_answer() -> None:
    login = by_name("login")
    assert decide(login).style == SYNC
    slow = Interaction("slow login", True, True, work_s=PATIENCE_S * 5, must_survive_outage=False)
    assert decide(slow).style == HYBRID  # question 2: too long to hold a request open
    kept = Interaction("order during an outage", True, True, work_s=0.1, must_survive_outage=True)
    assert decide(kept).style == HYBRID  # question 3: it must be kept, so it cannot be a plain call
    fire = Interaction("page view counter", False, False, work_s=0.01, must_survive_outage=False, per_second=BUSY_PER_S * 2)
    assert decide(fire).style == ASYNC  # question 5: nobody waits for the outcome
    busy = Interaction("price lookup", True, True, work_s=0.01, must_survive_outage=False, per_second=BUSY_PER_S * 2)
    assert decide(busy).style == SYNC
    assert len(decide(busy).reasons) == 2


def test_the_decision_module_imports_neither_aiohttp_nor_aiomqtt() -> None:
    code = "import sys\nfor name in ('aiohttp', 'aiomqtt'):\n    sys.modules[name] = None\nimport helpers.choosing.decision\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_table_runner_one_reason_per_row_and_checks_what_decide_returns() -> None:
    rows = recommendation_rows(decide, [by_name("video encoding"), by_name("login")])
    assert [r["interaction"] for r in rows] == ["video encoding", "", "", "", "login"]
    assert rows[0]["style"] == HYBRID
    assert rows[0]["work"] == "10 min"
    assert rows[4]["work"] == "50 ms"
    assert all(r["why"] for r in rows)
    with pytest.raises(TypeError, match="should return a Recommendation"):
        recommendation_rows(lambda x: "sync", EXAMPLES)  # type: ignore[arg-type, return-value]  # the mistake under test
    with pytest.raises(ValueError, match="one of"):
        Recommendation("maybe")  # type: ignore[arg-type]  # the wrong style under test
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match="work_s"):
            Interaction("x", True, True, work_s=bad, must_survive_outage=False)
    assert "202" in Recommendation(HYBRID).flow
    assert "broker" in Recommendation(ASYNC).flow


# --------------------------------------------------------------------------- D2 and M15: the hybrid, measured


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def started(broker: Broker, scale: float = 0.25) -> HybridSystem:
    return await start_hybrid(broker, start_job, steps=quick_steps(scale))


@pytest.mark.broker
async def test_kickoff_p99_is_far_below_the_job(broker: Broker) -> None:
    system = await started(broker, 0.5)  # about 0.9 s of work per job
    try:
        run = await measure_kickoffs(system, count=10)
    finally:
        await system.stop()
    assert run.outcomes() == {SUCCEEDED: 10}
    assert run.ratio > 5, f"kickoff p99 {run.kickoff.p99_ms:.1f} ms vs job p50 {run.job.p50_ms:.0f} ms"
    assert run.job.p50_ms >= 1000 * sum(s.work_s for s in quick_steps(0.5))


@pytest.mark.broker
async def test_polite_poll_is_bounded_and_sees_what_the_stream_sees(broker: Broker) -> None:
    system = await started(broker, 0.75)  # about 1.35 s: longer than Retry-After, so a poll sees it running
    try:
        watch = await watch_job(system, "summarize the incident reports", every_s=0.05)
    finally:
        await system.stop()
    job_s = watch.ended - watch.started
    assert watch.stream_states == watch.polite.states == [ACCEPTED, RUNNING, SUCCEEDED]
    assert watch.eager.states == watch.polite.states
    assert watch.polite.requests <= job_s / watch.accepted.retry_after() + 3 < watch.eager.requests
    assert watch.polite.result == watch.job.result
    assert watch.polite.result["steps"].keys() == {s.name for s in STEPS}
    assert watch.pushed is not None
    assert watch.pushed[1].type == JOB_SUCCEEDED
    assert watch.pushed[0] - watch.ended < watch.polite.learned_at - watch.ended, "the push is no later than the polite poll"
    ids = [int(e.id or 0) for e in watch.stream]
    assert ids == list(range(1, len(watch.job.changes) + 1)), "every change once, numbered"
    assert {r["client"] for r in watch.rows()}
    assert plot_watch(watch).get_title()
    matplotlib.pyplot.close("all")


@pytest.mark.broker
async def test_succeeded_answers_303_to_the_result(broker: Broker, http: aiohttp.ClientSession) -> None:
    system = await started(broker)
    try:
        accepted = await submit(http, system.url, "compare three brokers")
        assert accepted.status == 202
        assert accepted.location == f"/jobs/{accepted.body['job_id']}"
        assert accepted.headers["Retry-After"] == "1"
        assert accepted.body["state"] == ACCEPTED
        job = await system.finished(accepted.body["job_id"])
        status = await request(http, "GET", system.url + accepted.location)
        assert status.status == 303
        assert status.location == job.result_path
        assert "Retry-After" not in status.headers
        assert status.headers["Cache-Control"] == "no-store"
        result = await request(http, "GET", system.url + job.result_path)
        assert result.status == 200
        assert result.body["result"] == job.result
        async with http.get(system.url + accepted.location) as followed:  # a client that follows redirects
            assert followed.status == 200
            assert (await followed.json())["result"] == job.result
    finally:
        await system.stop()


@pytest.mark.broker
async def test_cancel_stops_the_running_step(broker: Broker, http: aiohttp.ClientSession) -> None:
    system = await started(broker)
    system.faults.hold_step = "research"  # the job surely runs while we cancel it
    try:
        accepted = await submit(http, system.url, "plan a trip")
        job_id = accepted.body["job_id"]
        assert await until(lambda: system.agent.running(job_id) and getattr(system.board.get(job_id), "step", None) == "research")
        cancel = await request(http, "DELETE", f"{system.url}{accepted.location}")
        assert cancel.status == 200
        assert cancel.body["state"] == CANCELLED
        assert await until(lambda: not system.agent.running(job_id))
        await until_quiet(lambda: len(system.agent.runs_of(job_id)), idle=0.2, timeout=2)
        assert [(r.step, r.outcome) for r in system.agent.runs_of(job_id)] == [("plan", "done"), ("research", "interrupted")]
        status = await request(http, "GET", f"{system.url}{accepted.location}")
        assert status.status == 200
        assert status.state == CANCELLED
        assert "Retry-After" not in status.headers
        again = await request(http, "DELETE", f"{system.url}{accepted.location}")
        assert again.status == 409
        assert again.content_type == PROBLEM_JSON
        system.agent.release()
        await until_quiet(lambda: len(system.agent.runs_of(job_id)), idle=0.2, timeout=2)
        assert len(system.agent.runs_of(job_id)) == 2
        assert (await system.finished(job_id)).state == CANCELLED
    finally:
        await system.stop()


@pytest.mark.broker
async def test_a_failed_step_is_problem_json_at_the_status(broker: Broker, http: aiohttp.ClientSession) -> None:
    system = await started(broker)
    system.faults.fail_step = "draft"
    try:
        accepted = await submit(http, system.url, "forecast traffic")
        job = await system.finished(accepted.body["job_id"])
        assert job.state == FAILED
        status = await request(http, "GET", f"{system.url}{accepted.location}")
        assert status.status == 200
        assert status.content_type == PROBLEM_JSON
        doc = status.body
        assert doc["type"].endswith("job-failed")
        assert doc["state"] == FAILED
        assert doc["failed_step"] == "draft"
        assert "draft" in doc["detail"]
        assert "status" not in doc, "the status member would have to equal the HTTP 200"
        assert doc["progress"] == {"done": 2, "total": 4, "step": "draft"}
        result = await request(http, "GET", system.url + job.result_path)
        assert result.status == 404
        assert result.content_type == PROBLEM_JSON
        stream = await read_events(http, system.url + job.events_path)
        assert stream[-1].json()["state"] == FAILED
    finally:
        await system.stop()


@pytest.mark.broker
async def test_bad_requests_unknown_jobs_and_idempotency(broker: Broker, http: aiohttp.ClientSession) -> None:
    system = await started(broker)
    try:
        for body in (b"not json", b"[1, 2]", b'{"task": ""}', b'{"task": 3}', b'{"other": "x"}'):
            bad = await request(http, "POST", f"{system.url}/jobs", data=body)
            assert (bad.status, bad.content_type) == (400, PROBLEM_JSON), body
        assert len(system.board) == 0
        assert not system.agent.runs
        for method, path in (
            ("GET", "/jobs/nope"),
            ("DELETE", "/jobs/nope"),
            ("GET", "/jobs/nope/result"),
            ("GET", "/jobs/nope/events"),
        ):
            unknown = await request(http, method, system.url + path)
            assert unknown.status == 404
            assert unknown.content_type == PROBLEM_JSON
            assert unknown.body["title"] == "Unknown job"
        first = await submit(http, system.url, "same task", key="key-1")
        again = await submit(http, system.url, "same task", key="key-1")
        assert again.status == 202
        assert again.location == first.location
        assert again.body == first.body
        other = await submit(http, system.url, "another task", key="key-1")
        assert other.status == 422
        assert other.content_type == PROBLEM_JSON
        plain = [await submit(http, system.url, "same task") for _ in range(2)]
        assert plain[0].location != plain[1].location
        assert len(system.board) == 3
        assert await until(lambda: all(job.final for job in system.board), timeout=5)
        plan_runs = [r for r in system.agent.runs if r.step == "plan"]
        assert len(plan_runs) == 3, "the retried request started no second job"
        wrong_route = await request(http, "PUT", f"{system.url}/jobs")
        assert wrong_route.status == 405
        assert wrong_route.content_type == PROBLEM_JSON
    finally:
        await system.stop()


@pytest.mark.broker
async def test_event_stream_resumes_after_last_event_id(broker: Broker, http: aiohttp.ClientSession) -> None:
    system = await started(broker)
    try:
        accepted = await submit(http, system.url, "resume me")
        job = await system.finished(accepted.body["job_id"])
        whole = await read_events(http, system.url + job.events_path)
        rest = await read_events(http, system.url + job.events_path, last_event_id="2")
        assert [e.id for e in whole] == [str(c.seq) for c in job.changes]
        assert [e.id for e in rest] == [str(c.seq) for c in job.changes[2:]]
        assert [e.json() for e in rest] == [c.document for c in job.changes[2:]]
        assert whole[-1].event == "status"
        assert whole[-1].json()["state"] == SUCCEEDED
    finally:
        await system.stop()


@pytest.mark.broker
async def test_a_handler_that_raises_answers_a_500_problem(broker: Broker, http: aiohttp.ClientSession) -> None:
    async def broken(request: web.Request, jobs: object) -> web.Response:
        raise NotImplementedError("your code here")

    system = await start_hybrid(broker, broken, steps=quick_steps())
    try:
        answer = await submit(http, system.url, "x")
        assert answer.status == 500
        assert answer.content_type == PROBLEM_JSON
        assert "NotImplementedError" in answer.body["detail"]
        assert [type(e.error) for e in system.errors] == [NotImplementedError]
        assert system.errors[0].handler == "broken"
    finally:
        await system.stop()


async def test_the_sync_version_makes_the_caller_wait_for_every_step(http: aiohttp.ClientSession) -> None:
    steps = quick_steps(0.2)
    service = await start_sync_agent(steps)
    answer = await request(http, "POST", f"{service.url}/agent", json={"task": "compare"})
    assert answer.status == 200
    assert list(answer.body["result"]["steps"]) == [s.name for s in steps]
    assert answer.seconds >= sum(s.work_s for s in steps)
    bad = await request(http, "POST", f"{service.url}/agent", json={"task": ""})
    assert bad.status == 400
    assert bad.content_type == PROBLEM_JSON


def test_the_reference_status_keeper_never_moves_a_finished_job() -> None:
    def event(kind: str, **data: object) -> Event:
        return make_event(kind, {"job_id": "j", **data})

    job = Job("j", {"task": "t"}, ("plan", "research"))
    apply_event(job, event(STEP_STARTED, step="plan", index=0, total=2))
    assert (job.state, job.step) == (RUNNING, "plan")
    for _ in range(2):  # at-least-once: the same event twice counts once
        apply_event(job, event(STEP_DONE, step="plan", done=1, total=2))
    assert job.done == 1
    apply_event(job, event(JOB_SUCCEEDED, result={"ok": True}))
    apply_event(job, event(JOB_FAILED, step="research", reason="late"))
    assert (job.state, job.done, job.result, job.failed_step) == (SUCCEEDED, 2, {"ok": True}, None)


async def test_unused_hold_and_release_do_not_block() -> None:
    """release() with nobody held is harmless, and a later hold waits again (the gate is renewed)."""
    from helpers.choosing.hybrid import Agent, Topics

    agent = Agent(Broker(embedded=True), Topics.fresh(), quick_steps())
    agent.release()
    agent.faults.hold_step = "plan"
    held = asyncio.ensure_future(agent._work(agent.steps[0], "t", {}))
    assert not await until(held.done, timeout=0.3), "plan's work is 0.05 s: without the hold it would be done"
    agent.release()
    assert await held == "3 questions about 't'"


@pytest.mark.broker
async def test_stop_raises_what_a_worker_died_of(broker: Broker) -> None:
    system = await started(broker)

    async def dies() -> None:
        raise RuntimeError("lost the broker")

    dead = asyncio.ensure_future(dies())
    await asyncio.wait({dead})
    life = system.agent._lives["plan worker"]
    real, life.task = life.task, dead  # the plan worker "died"
    assert real is not None
    real.cancel()
    with pytest.raises(RuntimeError, match="lost the broker") as caught:
        await system.stop()
    assert "raised by the hybrid's consumers 'plan worker'" in caught.value.__notes__


@pytest.mark.broker
async def test_a_second_start_under_one_name_replaces_the_first(broker: Broker, http: aiohttp.ClientSession) -> None:
    first = await start_hybrid(broker, start_job, steps=quick_steps(), name="rerun")
    second = await start_hybrid(broker, start_job, steps=quick_steps(), name="rerun")  # the cell ran again
    try:
        assert first._stopped
        assert not first.agent._lives
        assert (await submit(http, second.url, "x")).status == 202
        with pytest.raises(aiohttp.ClientError):
            await submit(http, first.url, "x")
    finally:
        await second.stop()
        await second.stop()  # safe twice


@pytest.mark.broker
async def test_post_cancel_and_a_key_still_in_flight(broker: Broker, http: aiohttp.ClientSession) -> None:
    system = await started(broker)
    system.faults.hold_step = "plan"
    try:
        accepted = await submit(http, system.url, "cancel me by action")
        cancel = await request(http, "POST", f"{system.url}{accepted.location}/cancel")
        assert cancel.status == 200
        assert cancel.body["state"] == CANCELLED
        job = system.board.create({"task": "half-way"}, "slow-key")  # created, not yet answered (start() not called)
        in_flight = await submit(http, system.url, "half-way", key="slow-key")
        assert in_flight.status == 409
        assert in_flight.content_type == PROBLEM_JSON
        assert in_flight.headers["Retry-After"] == "1"
        assert "'slow-key'" in in_flight.body["detail"]
        await system.board.start(job)  # the first request is answered: a retry is now a replay
        replay = await submit(http, system.url, "half-way", key="slow-key")
        assert replay.status == 202
        assert replay.body["job_id"] == job.job_id
        other_caller = await request(
            http, "POST", f"{system.url}/jobs?user=bob", json={"task": "half-way"}, headers={"Idempotency-Key": "slow-key"}
        )
        assert other_caller.status == 202
        assert other_caller.body["job_id"] != job.job_id, "keys are per caller"
    finally:
        system.agent.release()
        await system.stop()


def test_a_work_order_republished_after_a_redelivery_has_the_same_event_id() -> None:
    """A step that runs twice (its worker died before the ack) publishes the next order twice:
    the copies must share an id so the next step's SeenIds drops one, or the rest of the job
    runs twice (seen by an outside probe that killed the workers' process mid-job)."""
    from helpers.choosing.hybrid.task import WorkOrder

    order = WorkOrder("job-1", "write a haiku", ("plan", "draft", "review"))
    first, again = order.then("an outline").event("/agent"), order.then("another outline").event("/agent")
    assert first.id == again.id
    assert order.event("/jobs").id != first.id, "each step's order has its own id"
    assert WorkOrder("job-2", "t", order.steps).event("/jobs").id != order.event("/jobs").id, "each job's too"
