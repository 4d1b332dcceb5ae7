"""Lab 06's harness, shared by its checks (:mod:`helpers.labchecks.hybrid_job`).

The hybrid of :mod:`helpers.choosing.hybrid` built around the learner's functions, and
the calls a check makes to it: one request (a handler that raised fails the check with
its error), the kickoff that must answer a usable 202, a job followed to its end, a
problem+json answer. Not a lab (the underscore): the grader lists only
``labchecks/<slug>.py`` files as labs.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
from aiohttp import web

from helpers.choosing.hybrid import (
    Answer,
    HybridSystem,
    Job,
    JobBoard,
    Topics,
    quick_steps,
    read_task,
    request,
    resolve,
    start_hybrid,
)
from helpers.core.problems import PROBLEM_BASE, PROBLEM_JSON, problem
from helpers.core.waiting import until
from helpers.grading.checks import CheckFailed, Context, expect

STEPS = quick_steps(0.2)
"""The checks' agent: the lesson's four steps at a fifth of their work time (about 0.36 s a job)."""
JOB_TIMEOUT_S = 3.0
"""How long a check waits for a job of :data:`STEPS` to end (ten times its work)."""
TOPICS = ("a vector database", "three message brokers", "the incident reports", "next quarter's traffic", "two cloud regions")


def task_text(ctx: Context) -> str:
    return f"compare {ctx.rng.choice(TOPICS)} #{ctx.rng.randint(1, 10**6)}"


async def course_kickoff(request: web.Request, jobs: JobBoard) -> web.Response:
    """The course's ``POST /jobs`` (the solution's): what the checks of questions 2-4 send their jobs through.

    Those questions are not about the kickoff, so a mistake in the learner's (question 1)
    costs points there only.
    """
    task = await read_task(request)
    if task is None:
        return problem(400, "Invalid task", 'send JSON like {"task": "..."}', f"{PROBLEM_BASE}invalid-task")
    key = request.headers.get("Idempotency-Key")
    job = jobs.by_key(key) if key else None
    if job is not None and job.task != task:
        return problem(422, "Idempotency-Key reused", "this key came before with another task", f"{PROBLEM_BASE}key-reused")
    if job is None:
        job = jobs.create(task, key)
        await jobs.start(job)
    headers = {"Location": job.path, "Retry-After": str(jobs.retry_after_s)}
    return web.json_response(job.accepted, status=202, headers=headers)


async def start_system(  # noqa: PLR0913  the checks pass these knobs by keyword
    ctx: Context,
    *,
    kickoff: bool = False,
    apply: bool = False,
    status: bool = False,
    cancel: bool = False,
    scale: float | None = None,
) -> HybridSystem:
    """The hybrid with the learner's functions where asked (``kickoff``: their start_job; else the course's).

    Only question 1's checks take the learner's kickoff: the others send their jobs through
    :func:`course_kickoff`, so each question is judged by its own code.
    """
    kwargs: dict[str, Any] = {}
    if apply:
        kwargs["apply"] = ctx.function("apply_event")
    if status:
        kwargs["status"] = ctx.function("job_status")
    if cancel:
        kwargs["cancel"] = ctx.function("cancel_job")
    broker = await ctx.broker()
    steps = STEPS if scale is None else quick_steps(scale)
    name = f"check06-{uuid.uuid4().hex[:8]}"  # never the name the learner's own system runs under
    start_job = ctx.function("start_job") if kickoff else course_kickoff
    system = await start_hybrid(broker, start_job, steps=steps, topics=Topics.fresh("check06"), name=name, **kwargs)
    ctx.on_cleanup(system.stop)
    return system


async def _session(ctx: Context) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession()
    ctx.on_cleanup(session.close)
    return session


def handler_failed(system: HybridSystem, answer: Answer, what: str) -> None:
    """A 500 from a handler that raised: say which function and what it raised."""
    if answer.status != 500 or not system.errors:
        return
    failure = system.errors[-1]
    if isinstance(failure.error, NotImplementedError):
        raise CheckFailed(f"{failure.handler}() is not written yet (it raises NotImplementedError)")
    raise CheckFailed(f"{what} answered 500: {failure.handler}() raised {type(failure.error).__name__}: {failure.error}")


def apply_failed(system: HybridSystem) -> None:
    """The status keeper raised on a worker event: say so (the event was dead-lettered)."""
    if not system.board.errors:
        return
    error = system.board.errors[-1]
    if isinstance(error, NotImplementedError):
        raise CheckFailed("apply_event() is not written yet (it raises NotImplementedError)")
    raise CheckFailed(f"apply_event() raised {type(error).__name__}: {error}")


async def call_service(system: HybridSystem, http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> Answer:
    """One request to the learner's service; a handler that raised fails the check with its error."""
    try:
        answer = await request(http, method, resolve(system.url, path), timeout=5.0, **kwargs)
    except TimeoutError:
        raise CheckFailed(f"{method} {path} got no answer within 5 s: does a handler wait for the job?") from None
    except aiohttp.ClientError as exc:
        raise CheckFailed(f"{method} {path} failed ({type(exc).__name__}: {exc})") from None
    handler_failed(system, answer, f"{method} {path}")
    return answer


def describe_answer(answer: Answer) -> str:
    body = answer.body if isinstance(answer.body, str) else str(answer.body)
    return f"{answer.status} {body[:100]}"


async def kick_off(system: HybridSystem, http: aiohttp.ClientSession, task: str, key: str | None = None) -> Answer:
    """POST /jobs and insist on a usable 202 (the Q1 checks say what is wrong in detail)."""
    headers = {"Idempotency-Key": key} if key else {}
    answer = await call_service(system, http, "POST", "/jobs", json={"task": task}, headers=headers)
    expect(
        answer.status == 202 and answer.location and isinstance(answer.body, dict) and answer.body.get("job_id"),
        f"POST /jobs should answer 202 with a Location and a body with the job_id (question 1), got {describe_answer(answer)}",
    )
    return answer


def job_of(system: HybridSystem, answer: Answer) -> Job:
    job = system.board.get(str(answer.body.get("job_id")))
    expect(job is not None, f"the 202's job_id {answer.body.get('job_id')!r} is not a job on the board: answer with job.accepted")
    assert job is not None
    return job


async def finished(system: HybridSystem, job: Job, timeout: float = JOB_TIMEOUT_S) -> Job:
    await until(lambda: job.final or bool(system.board.errors), timeout)
    apply_failed(system)
    return job


def expect_problem(answer: Answer, what: str, status: int) -> None:
    expect(answer.status == status, f"{what} answered {describe_answer(answer)}, expected {status}")
    expect(
        answer.content_type == PROBLEM_JSON and isinstance(answer.body, dict) and answer.body.get("title"),
        f"{what} answered {answer.status} as {answer.content_type or 'no content type'}: send a problem details "
        "document, problem(status, title, detail, type), so the client reads what went wrong (application/problem+json)",
    )


def retry_after_fault(value: str | None, where: str) -> str | None:
    """What is wrong with a Retry-After header (None: a whole number of seconds, at least 1), named as it is."""
    if value is None:
        return f"{where} has no Retry-After header: send Retry-After: str(jobs.retry_after_s), the seconds to wait"
    if not value.strip():
        return f"{where} has an empty Retry-After header: send the seconds to wait, str(jobs.retry_after_s)"
    if not value.strip().isdigit():
        return (
            f"{where} has Retry-After: {value!r}, which is not a whole number of seconds: send digits only, "
            "str(jobs.retry_after_s) (no unit, no fraction)"
        )
    if int(value) < 1:
        return f"{where} has Retry-After: {value!r}: a client told to wait 0 s asks again at once; send jobs.retry_after_s"
    return None
