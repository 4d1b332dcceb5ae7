"""Lab 06's checks catch the mistakes they are meant to catch, on the broker in use.

The grader tests prove the solution notebook scores full marks and the lab as shipped
scores (near) zero. These go further: the solution notebook's own code (run into a
namespace) passes every check, and each classic mistake of the 202 flow (200 instead of
202, no Location, 302 instead of 303, a job left 'running' when a step fails, a new job
per retried request, a cancel that only changes the state, a kickoff that waits for the
work), an edit of that code, fails the check whose message names it.
"""

from __future__ import annotations

import json
from typing import Any

import nbformat
import pytest
from aiohttp import web
from lab_submissions import Edit, replaced, shipped_lab, submission

from helpers.core.waiting import until
from helpers.grading.checks import CheckResult, load_checks, run_check
from helpers.grading.labgen import LABS

pytestmark = pytest.mark.broker

LAB = "06_hybrid_job"
CHECKS = load_checks(LAB)

JOB_FAILED_BRANCH = (
    '\n    elif event.type == JOB_FAILED:\n        job.state, job.failed_step, job.reason = FAILED, data["step"], data["reason"]'
)
RETRY_AFTER = '    headers = {} if job.final else {"Retry-After": str(jobs.retry_after_s)}'
FAILED_AS_PROBLEM = "        return web.json_response(job.to_json(), content_type=PROBLEM_JSON)"
START = "        await jobs.start(job)\n"
FIRST_STEP = (
    '    if event.type == STEP_STARTED:\n        job.state, job.step = RUNNING, data["step"]\n    elif event.type == STEP_DONE:'
)
ACCEPTED_HEADERS = 'headers={"Location": f"/jobs/{job.job_id}", "Retry-After": str(jobs.retry_after_s)}'
EDITS: dict[str, tuple[Edit, ...]] = {
    "200 instead of 202": (("json_response(job.accepted, status=202,", "json_response(job.accepted, status=200,"),),
    "no Location": (('headers={"Location": f"/jobs/{job.job_id}", "Retry-After"', 'headers={"Retry-After"'),),
    "302 instead of 303": (("status=303, headers", "status=302, headers"),),
    "a failed step not applied": ((JOB_FAILED_BRANCH, ""),),
    "a new job per retry": (("    job = jobs.by_key(key) if key else None\n", "    job = None  # never looks the key up\n"),),
    "a cosmetic cancel": (("    await jobs.cancel(job)\n", "    job.state = CANCELLED  # the workers are never told\n"),),
    "a repeat counted": (
        ('job.state, job.done = RUNNING, max(job.done, data["done"])', "job.state, job.done = RUNNING, job.done + 1"),
    ),
    "a finished job moved": (("    if job.final:\n        return\n    data = event.data", "    data = event.data"),),
    "a failure not problem+json": ((FAILED_AS_PROBLEM, "        return web.json_response(job.to_json())"),),
    "a failure as 500": ((FAILED_AS_PROBLEM, FAILED_AS_PROBLEM.replace("content_type=", "status=500, content_type=")),),
    "no Retry-After": ((RETRY_AFTER, "    headers = {}"),),
    "Retry-After when final": ((RETRY_AFTER, '    headers = {"Retry-After": str(jobs.retry_after_s)}'),),
    "a 400 of type about:blank": ((',\n                       f"{PROBLEM_BASE}invalid-task")', ")"),),
    "a kickoff that waits until the job runs": ((START, START + "        await until(lambda: job.state != ACCEPTED, 10)\n"),),
    "a 202 although queuing failed": ((START, "        try:\n    " + START + "        except Exception:\n            pass\n"),),
    "the first step not reported": ((FIRST_STEP, "    if event.type == STEP_DONE:"),),
    "Retry-After 1s in the 202": (
        (ACCEPTED_HEADERS, ACCEPTED_HEADERS.replace("str(jobs.retry_after_s)", 'f"{jobs.retry_after_s}s"')),
    ),
    "Retry-After 1s while running": ((RETRY_AFTER, RETRY_AFTER.replace("str(jobs.retry_after_s)", 'f"{jobs.retry_after_s}s"')),),
}
"""Each classic mistake as an edit of the solution notebook's code (tests/lab_submissions.py)."""


def mistake(name: str) -> dict[str, Any]:
    """The solution notebook's namespace with the mistake ``name`` of EDITS made."""
    return submission(LAB, *EDITS[name])


async def results(ns: dict[str, Any], names: set[str] | None = None) -> dict[str, CheckResult]:
    return {c.name: await run_check(c, ns) for c in CHECKS if names is None or c.name in names}


async def test_the_answer_passes_every_check() -> None:
    got = await results(submission(LAB))
    failed = {name: r.message for name, r in got.items() if not r.passed}
    assert not failed
    assert sum(r.points for r in got.values()) == CHECKS.max_points() == 27  # 26 before the out-of-order success check


async def test_the_unwritten_lab_fails_every_check_saying_what_is_missing() -> None:
    got = await results(shipped_lab(LAB))
    assert not any(r.passed for r in got.values())
    assert all("is not written yet" in r.message for r in got.values()), {n: r.message for n, r in got.items()}


async def test_200_instead_of_202_is_caught() -> None:
    got = await results(mistake("200 instead of 202"), {"answers_202_with_location_and_retry_after"})
    message = got["answers_202_with_location_and_retry_after"].message
    assert "200 OK" in message, message
    assert "202 Accepted" in message, message


async def test_no_location_is_caught() -> None:
    got = await results(mistake("no Location"), {"answers_202_with_location_and_retry_after"})
    assert "no Location header" in got["answers_202_with_location_and_retry_after"].message


async def test_302_instead_of_303_is_caught() -> None:
    got = await results(mistake("302 instead of 303"), {"a_finished_job_answers_303_to_its_result"})
    message = got["a_finished_job_answers_303_to_its_result"].message
    assert "302 Found" in message, message
    assert "303 See Other" in message, message


async def test_a_job_left_running_when_a_step_fails_is_caught() -> None:
    got = await results(mistake("a failed step not applied"), {"a_failed_step_ends_the_job", "follows_a_job_to_success"})
    assert got["follows_a_job_to_success"].passed
    result = got["a_failed_step_ends_the_job"]
    assert not result.passed
    assert "still says 'running'" in result.message, result.message
    assert "never leaves" in result.message, result.message


async def test_a_new_job_per_retry_is_caught() -> None:
    got = await results(
        mistake("a new job per retry"),
        {"a_retry_with_the_same_key_gets_the_same_job", "answers_202_with_location_and_retry_after"},
    )
    assert got["answers_202_with_location_and_retry_after"].passed
    message = got["a_retry_with_the_same_key_gets_the_same_job"].message
    assert "answered 409" in message, message
    assert "jobs.by_key(key)" in message, message


async def test_a_kickoff_that_waits_for_the_work_is_caught() -> None:
    ns = submission(LAB)
    sound = ns["start_job"]

    async def patient(request: web.Request, jobs: Any) -> web.Response:
        answer = await sound(request, jobs)
        job = jobs.get(json.loads(answer.text or "{}")["job_id"])
        await until(lambda: job.final, 5)  # the mistake: a sync endpoint in disguise
        return answer

    got = await results(replaced(ns, start_job=patient), {"kickoff_answers_before_the_work"})
    assert "without waiting for the work" in got["kickoff_answers_before_the_work"].message


async def test_a_cancel_that_only_changes_the_state_is_caught() -> None:
    got = await results(mistake("a cosmetic cancel"), {"cancel_stops_the_running_step"})
    assert "kept running" in got["cancel_stops_the_running_step"].message


async def test_counting_repeats_and_moving_finished_jobs_are_caught() -> None:
    got = await results(mistake("a repeat counted"), {"a_repeated_event_counts_once"})
    assert "a repeat is not a new step" in got["a_repeated_event_counts_once"].message
    got = await results(mistake("a finished job moved"), {"a_finished_job_never_moves"})
    assert "once a job is final" in got["a_finished_job_never_moves"].message


async def test_status_mistakes_are_caught() -> None:
    got = await results(mistake("a failure not problem+json"), {"a_failed_job_is_problem_json"})
    assert "application/problem+json" in got["a_failed_job_is_problem_json"].message
    got = await results(mistake("a failure as 500"), {"a_failed_job_is_problem_json"})
    assert "reading the status worked" in got["a_failed_job_is_problem_json"].message
    got = await results(mistake("no Retry-After"), {"an_unfinished_job_reports_its_state"})
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

    got = await results(replaced(submission(LAB), start_job=trusting), {"rejects_a_bad_task_at_once"})
    result = got["rejects_a_bad_task_at_once"]
    assert not result.passed
    assert "expected 400" in result.message, result.message


async def test_checks_that_draw_a_step_pass_whichever_step_they_draw() -> None:
    """The checks pick the step to fail or hold at random: the answer must pass for every pick."""
    names = {
        "cancel_stops_the_running_step",
        "a_failed_step_ends_the_job",
        "an_unfinished_job_reports_its_state",
        "a_failed_job_is_problem_json",
    }
    for _ in range(4):
        got = await results(submission(LAB), names)
        assert all(r.passed for r in got.values()), {n: r.message for n, r in got.items() if not r.passed}


async def test_a_400_without_a_course_problem_type_is_caught() -> None:
    got = await results(mistake("a 400 of type about:blank"), {"rejects_a_bad_task_at_once"})
    assert "PROBLEM_BASE" in got["rejects_a_bad_task_at_once"].message


async def test_retry_after_on_a_cancelled_job_is_caught() -> None:
    got = await results(mistake("Retry-After when final"), {"a_cancelled_job_has_no_retry_after"})
    assert "a cancelled job is final" in got["a_cancelled_job_has_no_retry_after"].message


# --------------------------------------------------------------------------- the outside review of lab 06 (issue 21)


async def test_a_kickoff_that_waits_for_the_workers_is_caught() -> None:
    """It passes with idle, fast workers; with the workers down it never answers."""
    got = await results(
        mistake("a kickoff that waits until the job runs"),
        {"kickoff_answers_before_the_work", "kickoff_never_waits_for_the_workers"},
    )
    assert got["kickoff_answers_before_the_work"].passed
    message = got["kickoff_never_waits_for_the_workers"].message
    assert "no answer within" in message, message
    assert "workers were down" in message, message


async def test_a_202_although_queuing_failed_is_caught() -> None:
    got = await results(mistake("a 202 although queuing failed"), {"no_202_when_queuing_fails", "no_202_when_the_store_refuses"})
    message = got["no_202_when_queuing_fails"].message
    assert "answered 202 Accepted" in message, message
    assert "await jobs.start(job) raised" in message, message
    assert got["no_202_when_the_store_refuses"].passed  # create raised before the try: the service answered 500


async def test_a_kickoff_that_lets_the_queuing_error_through_passes() -> None:
    got = await results(submission(LAB), {"no_202_when_queuing_fails", "no_202_when_the_store_refuses"})
    assert all(r.passed for r in got.values()), {n: r.message for n, r in got.items()}
    assert got["no_202_when_queuing_fails"].message.startswith("500"), got["no_202_when_queuing_fails"].message


async def test_a_status_keeper_that_ignores_the_first_step_is_caught() -> None:
    got = await results(
        mistake("the first step not reported"), {"follows_a_job_to_success", "the_first_step_makes_the_job_running"}
    )
    assert got["follows_a_job_to_success"].passed  # accepted > running > succeeded: step_done makes it running later
    message = got["the_first_step_makes_the_job_running"].message
    assert "still says 'accepted'" in message, message
    assert "a step started means 'running'" in message, message


async def test_a_retry_after_with_a_unit_is_named_as_such() -> None:
    got = await results(mistake("Retry-After 1s in the 202"), {"answers_202_with_location_and_retry_after"})
    message = got["answers_202_with_location_and_retry_after"].message
    assert "Retry-After: '1s', which is not a whole number of seconds" in message, message
    got = await results(mistake("Retry-After 1s while running"), {"an_unfinished_job_reports_its_state"})
    message = got["an_unfinished_job_reports_its_state"].message
    assert "'1s', which is not a whole number of seconds" in message, message
    assert "no Retry-After" not in message, message


async def test_a_q1_mistake_costs_points_in_q1_only() -> None:
    got = await results(mistake("200 instead of 202"))
    lost = {name for name, r in got.items() if not r.passed}
    later = {c.name for c in CHECKS if c.question != "q1"}
    assert "answers_202_with_location_and_retry_after" in lost
    assert not lost & later, {n: got[n].message for n in lost & later}


def test_the_given_code_follows_a_location_with_resolve() -> None:
    """An absolute Location is valid HTTP: the lab's own demo cells must not glue it onto the service's URL."""
    code = "\n".join(c.source for c in nbformat.read(LABS / f"{LAB}.ipynb", as_version=4).cells if c.cell_type == "code")
    assert "resolve(system.url, accepted.location)" in code
    assert ".url + " not in code
