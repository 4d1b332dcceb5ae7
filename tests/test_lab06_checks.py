"""Lab 06's checks catch the mistakes they are meant to catch, on the broker in use.

The grader tests prove the solution notebook scores full marks and the lab as shipped
scores (near) zero. These go further: a correct answer passes every check, and each
classic mistake of the 202 flow (200 instead of 202, no Location, 302 instead of 303, a
job left 'running' when a step fails, a new job per retried request, a cancel that only
changes the state, a kickoff that waits for the work) fails the check whose message
names it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web

from helpers.choosing.hybrid import (
    CANCELLED,
    FAILED,
    JOB_FAILED,
    JOB_SUCCEEDED,
    RUNNING,
    STEP_DONE,
    STEP_STARTED,
    SUCCEEDED,
    read_task,
)
from helpers.core.problems import PROBLEM_BASE, PROBLEM_JSON, problem
from helpers.core.waiting import until
from helpers.grading.checks import CheckResult, load_checks, run_check

pytestmark = pytest.mark.broker

CHECKS = load_checks("06_hybrid_job")


def solution(**overrides: Any) -> dict[str, Any]:
    """The lab's answers as a namespace of functions; ``overrides`` swaps in a mistake."""

    async def start_job(request: web.Request, jobs: Any) -> web.Response:
        task = await read_task(request)
        if task is None:
            return problem(400, "Invalid task", 'send JSON like {"task": "..."}', f"{PROBLEM_BASE}invalid-task")
        key = request.headers.get("Idempotency-Key")
        job = jobs.by_key(key) if key else None
        if job is not None and job.task != task:
            return problem(422, "Idempotency-Key reused", "this key came with another task", f"{PROBLEM_BASE}key-reused")
        if job is None:
            job = jobs.create(task, key)
            await jobs.start(job)
        headers = {"Location": f"/jobs/{job.job_id}", "Retry-After": str(jobs.retry_after_s)}
        return web.json_response(job.accepted, status=202, headers=headers)

    def apply_event(job: Any, event: Any) -> None:
        if job.final:
            return
        data = event.data
        if event.type == STEP_STARTED:
            job.state, job.step = RUNNING, data["step"]
        elif event.type == STEP_DONE:
            job.state, job.done = RUNNING, max(job.done, data["done"])
        elif event.type == JOB_SUCCEEDED:
            job.state, job.done, job.result = SUCCEEDED, job.total, data["result"]
        elif event.type == JOB_FAILED:
            job.state, job.failed_step, job.reason = FAILED, data["step"], data["reason"]

    async def job_status(request: web.Request, jobs: Any) -> web.Response:
        job = jobs.get(request.match_info["job_id"])
        if job is None:
            return problem(404, "Unknown job", "no such job", f"{PROBLEM_BASE}unknown-job")
        if job.state == SUCCEEDED:
            return web.json_response(job.to_json(), status=303, headers={"Location": job.result_path})
        if job.state == FAILED:
            return web.json_response(job.to_json(), content_type=PROBLEM_JSON)
        headers = {} if job.final else {"Retry-After": str(jobs.retry_after_s)}
        return web.json_response(job.to_json(), headers=headers)

    async def cancel_job(request: web.Request, jobs: Any) -> web.Response:
        job = jobs.get(request.match_info["job_id"])
        if job is None:
            return problem(404, "Unknown job", "no such job", f"{PROBLEM_BASE}unknown-job")
        if job.final:
            return problem(409, "Job already finished", f"the job is {job.state}", f"{PROBLEM_BASE}job-finished")
        await jobs.cancel(job)
        return web.json_response(job.to_json())

    ns: dict[str, Any] = {
        "start_job": start_job,
        "apply_event": apply_event,
        "job_status": job_status,
        "cancel_job": cancel_job,
    }
    ns.update(overrides)
    return ns


async def results(ns: dict[str, Any], names: set[str] | None = None) -> dict[str, CheckResult]:
    return {c.name: await run_check(c, ns) for c in CHECKS if names is None or c.name in names}


async def test_the_answer_passes_every_check() -> None:
    got = await results(solution())
    failed = {name: r.message for name, r in got.items() if not r.passed}
    assert not failed
    assert sum(r.points for r in got.values()) == CHECKS.max_points() == 21


async def test_the_unwritten_lab_fails_every_check_saying_what_is_missing() -> None:
    async def todo(*args: Any) -> Any:
        raise NotImplementedError("your code here")

    def todo_sync(*args: Any) -> Any:
        raise NotImplementedError("your code here")

    ns = {"start_job": todo, "apply_event": todo_sync, "job_status": todo, "cancel_job": todo}
    got = await results(ns)
    assert not any(r.passed for r in got.values())
    assert all("is not written yet" in r.message for r in got.values()), {n: r.message for n, r in got.items()}


async def test_200_instead_of_202_is_caught() -> None:
    sound = solution()["start_job"]

    async def ok_200(request: web.Request, jobs: Any) -> web.Response:
        answer = await sound(request, jobs)
        answer.set_status(200)
        return answer

    got = await results(solution(start_job=ok_200), {"answers_202_with_location_and_retry_after"})
    message = got["answers_202_with_location_and_retry_after"].message
    assert "200 OK" in message and "202 Accepted" in message


async def test_no_location_is_caught() -> None:
    sound = solution()["start_job"]

    async def nowhere(request: web.Request, jobs: Any) -> web.Response:
        answer = await sound(request, jobs)
        del answer.headers["Location"]
        return answer

    got = await results(solution(start_job=nowhere), {"answers_202_with_location_and_retry_after"})
    assert "no Location header" in got["answers_202_with_location_and_retry_after"].message


async def test_302_instead_of_303_is_caught() -> None:
    sound = solution()["job_status"]

    async def found(request: web.Request, jobs: Any) -> web.Response:
        answer = await sound(request, jobs)
        if answer.status == 303:
            answer.set_status(302)
        return answer

    got = await results(solution(job_status=found), {"a_finished_job_answers_303_to_its_result"})
    message = got["a_finished_job_answers_303_to_its_result"].message
    assert "302 Found" in message and "303 See Other" in message


async def test_a_job_left_running_when_a_step_fails_is_caught() -> None:
    sound = solution()["apply_event"]

    def no_failures(job: Any, event: Any) -> None:
        if event.type != JOB_FAILED:  # the mistake: a failed step is not applied
            sound(job, event)

    got = await results(solution(apply_event=no_failures), {"a_failed_step_ends_the_job", "follows_a_job_to_success"})
    assert got["follows_a_job_to_success"].passed
    message = got["a_failed_step_ends_the_job"].message
    assert not got["a_failed_step_ends_the_job"].passed and "still says 'running'" in message and "never leaves" in message


async def test_a_new_job_per_retry_is_caught() -> None:
    sound = solution()["start_job"]

    async def forgetful(request: web.Request, jobs: Any) -> web.Response:
        task = await read_task(request)
        if task is None:
            return await sound(request, jobs)
        job = jobs.create(task, request.headers.get("Idempotency-Key"))  # the mistake: never looks the key up
        await jobs.start(job)
        return web.json_response(job.accepted, status=202, headers={"Location": job.path, "Retry-After": "1"})

    got = await results(
        solution(start_job=forgetful),
        {"a_retry_with_the_same_key_gets_the_same_job", "answers_202_with_location_and_retry_after"},
    )
    assert got["answers_202_with_location_and_retry_after"].passed
    message = got["a_retry_with_the_same_key_gets_the_same_job"].message
    assert "answered 409" in message and "jobs.by_key(key)" in message, message


async def test_a_kickoff_that_waits_for_the_work_is_caught() -> None:
    sound = solution()["start_job"]

    async def patient(request: web.Request, jobs: Any) -> web.Response:
        answer = await sound(request, jobs)
        job = jobs.get(json.loads(answer.text or "{}")["job_id"])
        await until(lambda: job.final, 5)  # the mistake: a sync endpoint in disguise
        return answer

    got = await results(solution(start_job=patient), {"kickoff_answers_before_the_work"})
    assert "without waiting for the work" in got["kickoff_answers_before_the_work"].message


async def test_a_cancel_that_only_changes_the_state_is_caught() -> None:
    async def cosmetic(request: web.Request, jobs: Any) -> web.Response:
        job = jobs.get(request.match_info["job_id"])
        job.state = CANCELLED  # the mistake: the workers are never told
        return web.json_response(job.to_json())

    got = await results(solution(cancel_job=cosmetic), {"cancel_stops_the_running_step"})
    assert "kept running" in got["cancel_stops_the_running_step"].message


async def test_counting_repeats_and_moving_finished_jobs_are_caught() -> None:
    def plus_one(job: Any, event: Any) -> None:
        if job.final:
            return
        if event.type == STEP_STARTED:
            job.state = RUNNING
        elif event.type == STEP_DONE:
            job.done += 1  # the mistake: a repeated event counts twice
        elif event.type == JOB_SUCCEEDED:
            job.state, job.result = SUCCEEDED, event.data["result"]

    reference = solution()["apply_event"]

    def unguarded(job: Any, event: Any) -> None:
        if job.final and event.type == STEP_STARTED:
            job.state = RUNNING  # the mistake: a late event revives a finished job
            return
        reference(job, event)

    got = await results(solution(apply_event=plus_one), {"a_repeated_event_counts_once"})
    assert "a repeat is not a new step" in got["a_repeated_event_counts_once"].message
    got = await results(solution(apply_event=unguarded), {"a_finished_job_never_moves"})
    assert "once a job is final" in got["a_finished_job_never_moves"].message


async def test_status_mistakes_are_caught() -> None:
    sound = solution()["job_status"]

    async def plain_failure(request: web.Request, jobs: Any) -> web.Response:
        job = jobs.get(request.match_info["job_id"])
        if job is not None and job.state == FAILED:
            return web.json_response(job.to_json())  # the mistake: not problem+json
        return await sound(request, jobs)

    async def failure_as_500(request: web.Request, jobs: Any) -> web.Response:
        job = jobs.get(request.match_info["job_id"])
        if job is not None and job.state == FAILED:
            return web.json_response(job.to_json(), status=500, content_type=PROBLEM_JSON)
        return await sound(request, jobs)

    async def no_retry_after(request: web.Request, jobs: Any) -> web.Response:
        answer = await sound(request, jobs)
        answer.headers.pop("Retry-After", None)
        return answer

    got = await results(solution(job_status=plain_failure), {"a_failed_job_is_problem_json"})
    assert "application/problem+json" in got["a_failed_job_is_problem_json"].message
    got = await results(solution(job_status=failure_as_500), {"a_failed_job_is_problem_json"})
    assert "reading the status worked" in got["a_failed_job_is_problem_json"].message
    got = await results(solution(job_status=no_retry_after), {"an_unfinished_job_reports_its_state"})
    assert "no Retry-After" in got["an_unfinished_job_reports_its_state"].message


async def test_a_kickoff_without_validation_is_caught() -> None:
    async def trusting(request: web.Request, jobs: Any) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        job = jobs.create({"task": str(body)})  # the mistake: any body becomes a job
        await jobs.start(job)
        return web.json_response(job.accepted, status=202, headers={"Location": job.path, "Retry-After": "1"})

    got = await results(solution(start_job=trusting), {"rejects_a_bad_task_at_once"})
    assert not got["rejects_a_bad_task_at_once"].passed and "expected 400" in got["rejects_a_bad_task_at_once"].message


async def test_checks_that_draw_a_step_pass_whichever_step_they_draw() -> None:
    """The checks pick the step to fail or hold at random: the answer must pass for every pick."""
    names = {
        "cancel_stops_the_running_step",
        "a_failed_step_ends_the_job",
        "an_unfinished_job_reports_its_state",
        "a_failed_job_is_problem_json",
    }
    for _ in range(4):
        got = await results(solution(), names)
        assert all(r.passed for r in got.values()), {n: r.message for n, r in got.items() if not r.passed}


async def test_a_400_without_a_course_problem_type_is_caught() -> None:
    async def about_blank(request: web.Request, jobs: Any) -> web.Response:
        if await read_task(request) is None:
            return problem(400, "Invalid task", "send a task")  # the mistake: type stays about:blank
        raise AssertionError("only bad bodies are sent by this check")

    got = await results(solution(start_job=about_blank), {"rejects_a_bad_task_at_once"})
    assert "PROBLEM_BASE" in got["rejects_a_bad_task_at_once"].message


async def test_retry_after_on_a_cancelled_job_is_caught() -> None:
    async def always_retry_after(request: web.Request, jobs: Any) -> web.Response:
        job = jobs.get(request.match_info["job_id"])
        if job.state in (SUCCEEDED, FAILED):
            raise AssertionError("this check only reads a cancelled job")
        return web.json_response(job.to_json(), headers={"Retry-After": str(jobs.retry_after_s)})  # the mistake: final too

    got = await results(solution(job_status=always_retry_after), {"a_cancelled_job_has_no_retry_after"})
    assert "a cancelled job is final" in got["a_cancelled_job_has_no_retry_after"].message
