"""Checks of lab 06_hybrid_job: a slow synchronous endpoint turned into the 202 flow.

Every check builds the hybrid of :mod:`helpers.choosing.hybrid` around the learner's
functions (``apply_event``, ``job_status`` and ``cancel_job`` as the questions add them;
the course's reference versions stand in for the parts a question does not ask about
yet), on a broker of its own (embedded, or MQTT_URL's), with short steps. Only question
1's checks (:mod:`helpers.labchecks._hybrid_kickoff`) run the learner's ``start_job``;
the others send their jobs through the course's kickoff, so a mistake in question 1
costs points there only. It sends real HTTP requests, never follows a redirect for the learner, drives
jobs to success, to failure (a step made to fail) and to cancellation (a step made to
hold), and reads what the service and the workers did.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp

from helpers.choosing.hybrid import (
    ACCEPTED,
    CANCELLED,
    FAILED,
    FINAL,
    JOB_FAILED,
    JOB_SUCCEEDED,
    RUNNING,
    STEP_DONE,
    STEP_STARTED,
    SUCCEEDED,
    Job,
    poll_job,
    read_events,
    resolve,
)
from helpers.core.messaging import Event, make_event
from helpers.core.problems import PROBLEM_JSON
from helpers.core.waiting import until, until_quiet
from helpers.grading.checks import CheckFailed, Checks, Context, expect
from helpers.labchecks import _hybrid_kickoff
from helpers.labchecks._hybrid_harness import (
    JOB_TIMEOUT_S,
    STEPS,
    apply_failed,
    call_service,
    describe_answer,
    expect_problem,
    finished,
    job_of,
    kick_off,
    retry_after_fault,
    start_system,
    task_text,
)

checks = Checks("06_hybrid_job")


# --------------------------------------------------------------------------- q1: the kickoff

checks.include(_hybrid_kickoff.part)  # its own module: helpers/labchecks/_hybrid_kickoff.py


# --------------------------------------------------------------------------- q2: the status keeper


def _event(kind: str, job: Job, **data: Any) -> Event:
    return make_event(kind, {"job_id": job.job_id, **data}, source="/check")


def _fresh_job(ctx: Context) -> Job:
    return Job(uuid.uuid4().hex, {"task": task_text(ctx)}, tuple(s.name for s in STEPS))


@checks.check(
    "q2",
    hint="each worker event moves the job on: a step started or done means running; success carries the result",
    code_hint='if event.type == STEP_STARTED: job.state, job.step = RUNNING, data["step"] ... '
    'elif event.type == JOB_SUCCEEDED: job.state, job.done, job.result = SUCCEEDED, job.total, data["result"]',
)
async def follows_a_job_to_success(ctx: Context) -> str:
    """A job goes accepted > running > succeeded, with every step counted and the result kept"""
    system = await start_system(ctx, apply=True)
    http = await ctx.enter(aiohttp.ClientSession())
    job = await finished(system, job_of(system, await kick_off(system, http, task_text(ctx))))
    history = job.history()
    expect(
        job.state == SUCCEEDED,
        f"after the last step the job is still {job.state!r} (it went {' > '.join(history)}): a job.succeeded event "
        "makes it 'succeeded' and keeps data['result']",
    )
    expect(
        history == [ACCEPTED, RUNNING, SUCCEEDED], f"the job went {' > '.join(history)}, expected accepted > running > succeeded"
    )
    expect(job.done == job.total, f"the job counts {job.done} of {job.total} steps done after it succeeded")
    result = job.result if isinstance(job.result, dict) else {}
    expect(
        list(result.get("steps", {})) == list(job.steps),
        f"job.result should be the event's data['result'], got {job.result!r:.100}",
    )
    return f"{' > '.join(history)}, {job.done} of {job.total} steps"


@checks.check(
    "q2",
    points=2,
    hint="a failure is an outcome too: the job ends as failed, with the step and the reason",
    code_hint='elif event.type == JOB_FAILED: job.state, job.failed_step, job.reason = FAILED, data["step"], data["reason"]',
)
async def a_failed_step_ends_the_job(ctx: Context) -> str:
    """A step that fails ends the job as failed, naming the step and the reason (reported, not lost)"""
    system = await start_system(ctx, apply=True)
    http = await ctx.enter(aiohttp.ClientSession())
    step = ctx.rng.choice([s.name for s in STEPS])
    system.faults.fail_step, system.faults.reason = step, f"the model timed out (#{ctx.rng.randint(1, 999)})"
    job = await finished(system, job_of(system, await kick_off(system, http, task_text(ctx))))
    expect(
        job.state != RUNNING and job.state != ACCEPTED,
        f"step {step!r} failed, but the job still says {job.state!r} {JOB_TIMEOUT_S:g} s later: apply job.failed, or a "
        "failed step leaves the client polling a job that never leaves 'running'",
    )
    expect(job.state == FAILED, f"step {step!r} failed and the job says {job.state!r}, expected 'failed'")
    expect(job.failed_step == step, f"job.failed_step is {job.failed_step!r}, the step that failed was {step!r}")
    expect(job.reason == system.faults.reason, f"job.reason is {job.reason!r}, the worker said {system.faults.reason!r}")
    return f"failed at {step!r}: {job.reason}"


@checks.check(
    "q2",
    hint="the first step starting is news too: the job is running from that moment, at that step",
    code_hint='if event.type == STEP_STARTED: job.state, job.step = RUNNING, data["step"]',
)
async def the_first_step_makes_the_job_running(ctx: Context) -> str:
    """While the first step runs (no step done yet), the job says running, at that step"""
    system = await start_system(ctx, apply=True)
    http = await ctx.enter(aiohttp.ClientSession())
    first = STEPS[0].name
    system.faults.hold_step = first  # the job waits in its first step until released: surely running, nothing done yet
    ctx.callback(system.agent.release)
    job = job_of(system, await kick_off(system, http, task_text(ctx)))
    at_step = await until(lambda: system.agent.running_step(job.job_id) == first or bool(system.board.errors), JOB_TIMEOUT_S)
    apply_failed(system)
    expect(at_step, f"the job never reached its {first!r} step")
    await until(lambda: job.state != ACCEPTED or bool(system.board.errors), 1.0)  # the keeper applies the event a moment later
    apply_failed(system)
    expect(
        job.state == RUNNING,
        f"a worker started the {first!r} step, but the job still says {job.state!r}: a step started means 'running' "
        "(the client would think nothing happens until a step is done)",
    )
    expect(job.step == first, f"the job is running its {first!r} step, but job.step is {job.step!r}")
    return f"running at {first!r}, {job.done} of {job.total} done"


@checks.check(
    "q2",
    hint="a succeeded job has every step done, even when job.succeeded overtakes the last job.step_done",
    code_hint='elif event.type == JOB_SUCCEEDED: job.state, job.done, job.result = SUCCEEDED, job.total, data["result"]',
)
async def success_before_the_last_step_done_counts_every_step(ctx: Context) -> str:
    """job.succeeded arriving before the last job.step_done still leaves every step done, and the late event changes nothing

    Workers publish on their own connections, so the event table's "every step done" cannot
    wait for the last job.step_done: follows_a_job_to_success sees them in order only.
    """
    job = _fresh_job(ctx)
    last = len(job.steps)
    for done, step in enumerate(job.steps[:-1], start=1):
        await ctx.call("apply_event", job, _event(STEP_STARTED, job, step=step, index=done - 1, total=last))
        await ctx.call("apply_event", job, _event(STEP_DONE, job, step=step, done=done, total=last))
    result = {"report": f"r{ctx.rng.randint(1, 999)}"}
    await ctx.call("apply_event", job, _event(JOB_SUCCEEDED, job, result=result))
    expect(job.state == SUCCEEDED, f"job.succeeded left the job {job.state!r}")
    expect(
        job.done == job.total,
        f"job.succeeded arrived before the last job.step_done and the job counts {job.done} of {job.total} steps done: "
        "a succeeded job has every step done (set job.done = job.total on job.succeeded; events can arrive out of order)",
    )
    await ctx.call("apply_event", job, _event(STEP_DONE, job, step=job.steps[-1], done=last, total=last))  # the late one
    expect(
        job.state == SUCCEEDED and job.done == job.total and job.result == result,
        f"the late job.step_done moved the succeeded job to {job.state!r}, {job.done} of {job.total} done: "
        "a succeeded job has every step done and stays as it ended",
    )
    return f"succeeded with {job.done} of {job.total} steps done, the late job.step_done ignored"


@checks.check(
    "q2",
    hint="a finished job is final: late events change nothing",
    code_hint="if job.final: return  # first thing in apply_event",
)
async def a_finished_job_never_moves(ctx: Context) -> None:
    """Once succeeded, failed or cancelled, a late or repeated event changes nothing"""
    done = _fresh_job(ctx)
    await ctx.call("apply_event", done, _event(JOB_SUCCEEDED, done, result={"report": "r"}))
    expect(done.state == SUCCEEDED, f"job.succeeded left the job {done.state!r}")
    for late in (
        _event(STEP_STARTED, done, step="review", index=3, total=4),
        _event(STEP_DONE, done, step="review", done=4, total=4),
        _event(JOB_FAILED, done, step="review", reason="late"),
    ):
        await ctx.call("apply_event", done, late)
        expect(
            done.state == SUCCEEDED and done.result == {"report": "r"},
            f"a late {late.type} moved a succeeded job to {done.state!r}: once a job is final, no event changes it",
        )
    cancelled = _fresh_job(ctx)
    cancelled.state = CANCELLED
    await ctx.call("apply_event", cancelled, _event(STEP_STARTED, cancelled, step="draft", index=2, total=4))
    expect(cancelled.state == CANCELLED, f"a step that started late moved a cancelled job to {cancelled.state!r}")


@checks.check(
    "q2",
    hint="events can arrive twice, or late: use the count the event carries, never add to yours",
    code_hint='elif event.type == STEP_DONE: job.state, job.done = RUNNING, max(job.done, data["done"])',
)
async def a_repeated_event_counts_once(ctx: Context) -> None:
    """The same job.step_done delivered twice counts once, and progress never goes backwards"""
    job = _fresh_job(ctx)
    await ctx.call("apply_event", job, _event(STEP_STARTED, job, step="plan", index=0, total=4))
    repeated = _event(STEP_DONE, job, step="plan", done=1, total=4)
    await ctx.call("apply_event", job, repeated)
    await ctx.call("apply_event", job, repeated)  # at-least-once: the broker delivered it again
    expect(job.done == 1, f"one step done, delivered twice, made job.done {job.done}: a repeat is not a new step")
    await ctx.call("apply_event", job, _event(STEP_DONE, job, step="draft", done=3, total=4))
    await ctx.call("apply_event", job, _event(STEP_DONE, job, step="research", done=2, total=4))  # arrived late
    expect(job.done == 3, f"a late job.step_done (2 of 4) after 3 of 4 made job.done {job.done}: progress never goes backwards")
    expect(job.state == RUNNING, f"a job with steps done says {job.state!r}, expected 'running'")


# --------------------------------------------------------------------------- q3: the status resource


@checks.check(
    "q3",
    hint="a job that does not exist is a 404, as problem+json",
    code_hint='if job is None: return problem(404, "Unknown job", "...", f"{PROBLEM_BASE}unknown-job")',
)
async def unknown_job_is_404_problem(ctx: Context) -> None:
    """GET /jobs/{id} of a job that does not exist answers 404 problem+json"""
    system = await start_system(ctx, apply=True, status=True)
    http = await ctx.enter(aiohttp.ClientSession())
    answer = await call_service(system, http, "GET", f"/jobs/{uuid.uuid4().hex}")
    expect_problem(answer, "GET of an unknown job", 404)


@checks.check(
    "q3",
    hint="an unfinished job: its status, and when to ask again",
    code_hint='web.json_response(job.to_json(), headers={} if job.final else {"Retry-After": str(jobs.retry_after_s)})',
)
async def an_unfinished_job_reports_its_state(ctx: Context) -> str:
    """A running job's status answers 200 with its state and progress, and Retry-After"""
    system = await start_system(ctx, apply=True, status=True)
    http = await ctx.enter(aiohttp.ClientSession())
    step = ctx.rng.choice([s.name for s in STEPS[1:]])
    system.faults.hold_step = step  # the job waits at this step until released: surely running while we look
    answer = await kick_off(system, http, task_text(ctx))
    job = job_of(system, answer)
    at_step = await until(lambda: system.agent.running_step(job.job_id) == step or bool(system.board.errors), JOB_TIMEOUT_S)
    apply_failed(system)
    expect(at_step, f"the job never reached its {step!r} step: did start_job start it?")
    await until(lambda: job.state != ACCEPTED, 1.0)  # the service applies the workers' events a moment after they happen
    status = await call_service(system, http, "GET", str(answer.location))
    system.agent.release()
    expect(status.status == 200, f"GET of a running job answered {describe_answer(status)}, expected 200 with its status")
    body = status.body if isinstance(status.body, dict) else {}
    expect(body.get("state") == RUNNING, f"the job is running its {step!r} step, the status says {body.get('state')!r}")
    expect(isinstance(body.get("progress"), dict), f"the status should be job.to_json() (state, progress), got {body!r:.100}")
    retry_after = status.headers.get("Retry-After")
    fault = retry_after_fault(retry_after, "the status of a running job")
    expect(fault is None, f"{fault} (it tells the client when to ask again)")
    return f"running at {step!r}, Retry-After {retry_after}"


@checks.check(
    "q3",
    hint="a finished job points at its result with the redirect that means: go GET it there",
    code_hint='web.json_response(job.to_json(), status=303, headers={"Location": job.result_path})',
)
async def a_finished_job_answers_303_to_its_result(ctx: Context) -> str:
    """Once the job succeeded, its status answers 303 See Other with Location: its result"""
    system = await start_system(ctx, apply=True, status=True)
    http = await ctx.enter(aiohttp.ClientSession())
    answer = await kick_off(system, http, task_text(ctx))
    job = await finished(system, job_of(system, answer))
    expect(job.state == SUCCEEDED, f"the job ended {job.state!r}, so there is no result to point at (question 2)")
    status = await call_service(system, http, "GET", str(answer.location))
    expect(
        status.status != 302,
        "the status of a finished job answered 302 Found, which says the status resource itself moved. Send 303 See "
        "Other: the answer is at another address, GET it",
    )
    expect(status.status != 200, "a job that succeeded answered 200: answer 303 See Other with Location: its result")
    expect(status.status == 303, f"a job that succeeded answered {describe_answer(status)}, expected 303 See Other")
    expect(status.location, "the 303 has no Location: point it at job.result_path")
    result = await call_service(system, http, "GET", str(status.location))
    expect(
        result.status == 200 and isinstance(result.body, dict) and result.body.get("result") == job.result,
        f"the 303 points at {status.location!r}, which answered {describe_answer(result)}; point it at job.result_path",
    )
    return f"303 to {status.location}"


@checks.check(
    "q3",
    hint="reading a failed job's status succeeds; the failure is the document, as problem+json",
    code_hint="web.json_response(job.to_json(), content_type=PROBLEM_JSON)  # status 200",
)
async def a_failed_job_is_problem_json(ctx: Context) -> str:
    """A failed job's status stays readable: 200 with a problem+json document naming the failed step"""
    system = await start_system(ctx, apply=True, status=True)
    http = await ctx.enter(aiohttp.ClientSession())
    step = ctx.rng.choice([s.name for s in STEPS])
    system.faults.fail_step = step
    answer = await kick_off(system, http, task_text(ctx))
    job = await finished(system, job_of(system, answer))
    expect(job.state == FAILED, f"the failing job ended {job.state!r}, expected 'failed' (question 2)")
    status = await call_service(system, http, "GET", str(answer.location))
    expect(
        status.status == 200,
        f"the status of a failed job answered {describe_answer(status)}: reading the status worked, so 200, with the failure "
        "in the body (a 4xx or 5xx would say this GET failed)",
    )
    expect(status.content_type == PROBLEM_JSON, f"a failed job's status is {status.content_type}: send it as {PROBLEM_JSON}")
    body = status.body if isinstance(status.body, dict) else {}
    expect(body.get("state") == FAILED and body.get("failed_step") == step, f"send job.to_json() as the body, got {body!r:.100}")
    expect("Retry-After" not in status.headers, "a failed job is final: no Retry-After (there is nothing to wait for)")
    return f"problem+json: {body.get('detail')}"


@checks.check(
    "q3",
    hint="a cancelled job is final too: nothing to wait for, so no Retry-After",
    code_hint='headers = {} if job.final else {"Retry-After": str(jobs.retry_after_s)}',
)
async def a_cancelled_job_has_no_retry_after(ctx: Context) -> None:
    """A cancelled job's status answers 200 with its document, and no Retry-After"""
    system = await start_system(ctx, apply=True, status=True)
    http = await ctx.enter(aiohttp.ClientSession())
    system.faults.hold_step = STEPS[0].name  # the job waits at its first step: surely unfinished when it is cancelled
    answer = await kick_off(system, http, task_text(ctx))
    job = job_of(system, answer)
    await system.board.cancel(job)  # the course's cancel, not the learner's (that is question 4)
    system.agent.release()
    status = await call_service(system, http, "GET", str(answer.location))
    expect(
        status.status == 200, f"the status of a cancelled job answered {describe_answer(status)}, expected 200 with its status"
    )
    body = status.body if isinstance(status.body, dict) else {}
    expect(body.get("state") == CANCELLED, f"the job was cancelled, the status says {body.get('state')!r}")
    expect(
        "Retry-After" not in status.headers,
        "a cancelled job's status carries Retry-After: a cancelled job is final, there is nothing to wait for "
        "(send Retry-After only while the job is not final)",
    )


@checks.check("q3", hidden=True, timeout=15, hint="a poller needs Retry-After while the job runs and the 303 once it is done")
async def a_poll_and_the_stream_see_the_same_states(ctx: Context) -> None:
    """Hidden: a poller honoring Retry-After and the event stream see the same states, in a bounded number of requests"""
    system = await start_system(ctx, apply=True, status=True, scale=0.7)  # about 1.3 s: longer than Retry-After
    http = await ctx.enter(aiohttp.ClientSession())
    answer = await kick_off(system, http, task_text(ctx))
    job = job_of(system, answer)
    try:
        polled, stream = await asyncio.gather(
            poll_job(http, system.url, answer, timeout=8), read_events(http, resolve(system.url, job.events_path), timeout=8)
        )
    except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
        if system.errors:  # a handler raised: say which, and what (job_status() not written yet, say)
            failure = system.errors[-1]
            if isinstance(failure.error, NotImplementedError):
                raise CheckFailed(f"{failure.handler}() is not written yet (it raises NotImplementedError)") from None
            raise CheckFailed(f"{failure.handler}() raised {type(failure.error).__name__}: {failure.error}") from None
        raise CheckFailed(f"a client following the job failed: {exc}") from None
    streamed = [str(e.json().get("state")) for e in stream]
    seen = [s for i, s in enumerate(streamed) if i == 0 or streamed[i - 1] != s]
    expect(polled.states == seen, f"polling saw {polled.states}, the event stream {seen}")
    job_s = job.changes[-1].at - answer.sent
    expect(
        polled.requests <= job_s / answer.retry_after() + 3, f"polling took {polled.requests} requests for a {job_s:.1f} s job"
    )


# --------------------------------------------------------------------------- q4: cancel


@checks.check(
    "q4",
    points=2,
    hint="a cancel must reach the workers, not only the state the client reads",
    code_hint="await jobs.cancel(job)  # marks it cancelled and publishes job.cancel; not job.state = CANCELLED",
)
async def cancel_stops_the_running_step(ctx: Context) -> str:
    """DELETE /jobs/{id} cancels a running job: state 'cancelled', its running step stops, no later step runs"""
    system = await start_system(ctx, apply=True, status=True, cancel=True)
    http = await ctx.enter(aiohttp.ClientSession())
    step = ctx.rng.choice([s.name for s in STEPS[1:-1]])
    system.faults.hold_step = step  # the job waits in this step: it is surely running when we cancel it
    answer = await kick_off(system, http, task_text(ctx))
    job = job_of(system, answer)
    at_step = await until(lambda: system.agent.running_step(job.job_id) == step or bool(system.board.errors), JOB_TIMEOUT_S)
    apply_failed(system)
    expect(at_step, f"the job never reached its {step!r} step: did start_job start it?")
    cancel = await call_service(system, http, "DELETE", str(answer.location))
    expect(cancel.status == 200, f"DELETE of a running job answered {describe_answer(cancel)}, expected 200 with its status")
    document = cancel.body if isinstance(cancel.body, dict) else {}
    expect(
        document.get("state") == CANCELLED,
        f"the DELETE's 200 should carry the job's status document (job.to_json()), got {document!r:.100}",
    )
    expect(job.state == CANCELLED, f"after DELETE the job says {job.state!r}, expected 'cancelled'")
    stopped = await until(lambda: not system.agent.running(job.job_id), 2.0)
    system.agent.release()
    expect(
        stopped,
        f"the job says 'cancelled', but its {step!r} step kept running: await jobs.cancel(job) tells the workers to "
        "stop; changing job.state alone only changes what the client reads",
    )
    await until_quiet(lambda: len(system.agent.runs_of(job.job_id)), idle=0.2, timeout=2.0)
    names = [s.name for s in STEPS]
    later = [r.step for r in system.agent.runs_of(job.job_id) if r.step in names[names.index(step) + 1 :]]
    expect(not later, f"after the cancel, the step(s) {later} still ran")
    status = await call_service(system, http, "GET", str(answer.location))
    expect(status.state == CANCELLED, f"GET of the cancelled job says {status.state!r}")
    return f"cancelled during {step!r}; it stopped, and nothing ran after it"


@checks.check(
    "q4",
    hint="an unknown job is a 404 here too",
    code_hint='if job is None: return problem(404, "Unknown job", "...", f"{PROBLEM_BASE}unknown-job")',
)
async def cancel_of_an_unknown_job_is_404(ctx: Context) -> None:
    """DELETE of a job that does not exist answers 404 problem+json"""
    system = await start_system(ctx, apply=True, status=True, cancel=True)
    http = await ctx.enter(aiohttp.ClientSession())
    answer = await call_service(system, http, "DELETE", f"/jobs/{uuid.uuid4().hex}")
    expect_problem(answer, "DELETE of an unknown job", 404)


@checks.check(
    "q4",
    hint="a job that ended cannot be cancelled: 409, and leave it as it is",
    code_hint='if job.final: return problem(409, "Job already finished", "...", f"{PROBLEM_BASE}job-finished")',
)
async def cancel_of_a_finished_job_is_409(ctx: Context) -> None:
    """DELETE of a job that already ended answers 409 problem+json and leaves the job as it was"""
    system = await start_system(ctx, apply=True, status=True, cancel=True)
    http = await ctx.enter(aiohttp.ClientSession())
    answer = await kick_off(system, http, task_text(ctx))
    job = await finished(system, job_of(system, answer))
    expect(job.state in FINAL, f"the job did not end within {JOB_TIMEOUT_S:g} s")
    ended = job.state
    cancel = await call_service(system, http, "DELETE", str(answer.location))
    expect_problem(cancel, f"DELETE of a {ended} job", 409)
    expect(job.state == ended, f"DELETE turned a {ended} job into {job.state!r}")
