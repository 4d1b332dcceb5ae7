"""Lab 06's question 1, the kickoff (``start_job``): its checks, included by :mod:`helpers.labchecks.hybrid_job`.

Only these checks run the learner's kickoff; the other questions' checks send their jobs
through the course's (:func:`helpers.labchecks._hybrid_harness.course_kickoff`).
"""

from __future__ import annotations

import sqlite3
import uuid

import aiohttp

from helpers.choosing.hybrid import ACCEPTED, SUCCEEDED, Answer, HybridSystem, request, resolve
from helpers.core.problems import PROBLEM_BASE
from helpers.core.waiting import until
from helpers.grading.checks import CheckFailed, Checks, Context, expect
from helpers.labchecks._hybrid_harness import (
    JOB_TIMEOUT_S,
    STEPS,
    call_service,
    describe_answer,
    expect_problem,
    finished,
    handler_failed,
    job_of,
    kick_off,
    retry_after_fault,
    start_system,
    task_text,
)

part = Checks("06_hybrid_job")


# --------------------------------------------------------------------------- q1: the kickoff


@part.check(
    "q1",
    hint="202 says accepted, not done; Location says where to look, Retry-After when",
    code_hint="return web.json_response(job.accepted, status=202, "
    'headers={"Location": f"/jobs/{job.job_id}", "Retry-After": str(jobs.retry_after_s)})',
)
async def answers_202_with_location_and_retry_after(ctx: Context) -> str:
    """POST /jobs answers 202 Accepted with Location (the job's status), Retry-After and the job id"""
    system = await start_system(ctx, kickoff=True)
    http = await ctx.enter(aiohttp.ClientSession())
    answer = await call_service(system, http, "POST", "/jobs", json={"task": task_text(ctx)})
    expect(
        answer.status != 200,
        "POST /jobs answered 200 OK, which says the work is done. It is not: the job was only accepted for later, "
        "which is 202 Accepted",
    )
    expect(answer.status == 202, f"POST /jobs answered {describe_answer(answer)}, expected 202 Accepted")
    location = answer.location
    expect(
        location,
        "the 202 has no Location header, so the client cannot find its job: send Location: /jobs/{job.job_id}",
    )
    retry_after = answer.headers.get("Retry-After")
    fault = retry_after_fault(retry_after, "the 202")
    expect(fault is None, str(fault))
    body = answer.body if isinstance(answer.body, dict) else {}
    expect(body.get("job_id") and body.get("state") == ACCEPTED, f"the 202 body should be job.accepted, got {body!r:.120}")
    job = job_of(system, answer)
    expect(
        resolve(system.url, str(location)) == resolve(system.url, job.path),
        f"Location is {location!r}, but job {job.job_id}'s status lives at {job.path}",
    )
    status = await call_service(system, http, "GET", str(location))
    expect(status.status in (200, 303), f"GET {location} (the Location you sent) answered {describe_answer(status)}")
    return f"202, Location /jobs/{job.job_id[:8]}..., Retry-After {retry_after}"


@part.check(
    "q1",
    hint="queue the work, then answer: the 202 never waits for the steps",
    code_hint="job = jobs.create(task, key); await jobs.start(job)  # returns once the broker has the first step; then answer",
    timing=True,
)
async def kickoff_answers_before_the_work(ctx: Context) -> str:
    """The 202 comes back long before the job is done, and the job it started runs to its end"""
    system = await start_system(ctx, kickoff=True)
    http = await ctx.enter(aiohttp.ClientSession())
    answer = await kick_off(system, http, task_text(ctx))
    job = await finished(system, job_of(system, answer))
    expect(
        job.state == SUCCEEDED,
        f"the job is still {job.state!r} {JOB_TIMEOUT_S:g} s later: did start_job call await jobs.start(job)? "
        "(it publishes the first step to the workers)",
    )
    job_s = job.changes[-1].at - answer.sent
    expect(
        answer.seconds < job_s / 3,
        f"POST /jobs took {answer.seconds * 1000:.0f} ms and the whole job {job_s * 1000:.0f} ms: answer right after "
        "jobs.start(job), without waiting for the work to finish",
    )
    return f"202 after {answer.seconds * 1000:.1f} ms, the job took {job_s * 1000:.0f} ms"


BAD_BODIES = (b"", b"not json at all", b"[1, 2, 3]", b'{"task": ""}', b'{"task": 42}', b'{"topic": "x"}')


@part.check(
    "q1",
    hint="validate before anything else: a request that can never succeed gets a 400 at once",
    code_hint='if await read_task(request) is None: return problem(400, "Invalid task", "...", f"{PROBLEM_BASE}invalid-task")',
)
async def rejects_a_bad_task_at_once(ctx: Context) -> str:
    """A body that is not a valid task gets 400 problem+json at once, and no job"""
    system = await start_system(ctx, kickoff=True)
    http = await ctx.enter(aiohttp.ClientSession())
    bodies = ctx.rng.sample(BAD_BODIES, 2)
    for body in bodies:
        answer = await call_service(system, http, "POST", "/jobs", data=body, headers={"Content-Type": "application/json"})
        expect_problem(answer, f"POST /jobs with the body {body!r}", 400)
        kind = answer.body.get("type", "") if isinstance(answer.body, dict) else ""
        expect(
            isinstance(kind, str) and kind.startswith(PROBLEM_BASE),
            f"the 400's problem type is {kind!r}: the lab asks for a type URI under PROBLEM_BASE ({PROBLEM_BASE}...), "
            "which names the kind of mistake for the client",
        )
    expect(len(system.board) == 0, f"bad requests created {len(system.board)} job(s): validate before jobs.create(...)")
    return f"400 for {', '.join(repr(b) for b in bodies)}"


@part.check(
    "q1",
    hint="a retry carries the same Idempotency-Key: find the job it made before making one",
    code_hint='job = jobs.by_key(request.headers.get("Idempotency-Key"))  # found: answer its 202 again, start nothing',
)
async def a_retry_with_the_same_key_gets_the_same_job(ctx: Context) -> str:
    """A retried POST with the same Idempotency-Key gets the same job, and the work runs once"""
    system = await start_system(ctx, kickoff=True)
    http = await ctx.enter(aiohttp.ClientSession())
    key, task = f"key-{uuid.uuid4()}", task_text(ctx)
    first = await kick_off(system, http, task, key)
    retried = await call_service(system, http, "POST", "/jobs", json={"task": task}, headers={"Idempotency-Key": key})
    expect(
        retried.status != 409,
        "the retry (same key, same task, after the first 202) answered 409: start_job tried to create a second job "
        "for a key the store already holds. Look the key up first (jobs.by_key(key)) and answer its job's 202 again",
    )
    again = await kick_off(system, http, task, key)  # the client timed out and retried
    expect(
        len(system.board) == 1,
        f"two POSTs with the same Idempotency-Key created {len(system.board)} jobs: a retried request must get the "
        "job the first one created (a new job per retry runs the work twice)",
    )
    expect(again.location == first.location, f"the retry was sent to {again.location!r}, the first to {first.location!r}")
    await finished(system, job_of(system, first))
    plans = [r for r in system.agent.runs if r.step == "plan"]
    expect(len(plans) == 1, f"the work started {len(plans)} times for one key: start the job only when it is new")
    others = [await kick_off(system, http, task), await kick_off(system, http, task, f"key-{uuid.uuid4()}")]
    expect(
        len({first.location, *(a.location for a in others)}) == 3 and len(system.board) == 3,
        f"the same task again without a key, then with another key, got {len(system.board) - 1} new job(s), expected 2: "
        "only the same Idempotency-Key means the same request",
    )
    return "one job, one run, the same Location twice; other keys get their own jobs"


@part.check(
    "q1",
    hint="a retry is answered from the job its key already made: nothing is created and nothing is started again",
    code_hint="if job is None: job = jobs.create(task, key); await jobs.start(job)  # only a new job is started",
)
async def a_retry_with_the_same_key_starts_nothing(ctx: Context) -> str:
    """A retried POST with the same Idempotency-Key and task starts nothing: jobs.start is called for new jobs only"""
    system = await start_system(ctx, kickoff=True)
    http = await ctx.enter(aiohttp.ClientSession())
    board, started = system.board, []
    start_as_given = board.start

    async def counted_start(job: object) -> None:
        started.append(getattr(job, "job_id", job))
        await start_as_given(job)  # type: ignore[arg-type]  # the board's own start, only counted

    board.start = counted_start  # type: ignore[method-assign]  # a spy on this check's board only
    key, task = f"key-{uuid.uuid4()}", task_text(ctx)
    first = job_of(system, await kick_off(system, http, task, key))
    expect(
        started == [first.job_id],
        f"the first POST with a new key called jobs.start {len(started)} time(s), expected once for its new job",
    )
    retries = ctx.rng.randint(1, 3)
    for _ in range(retries):
        again = job_of(system, await kick_off(system, http, task, key))  # the client timed out and retried
        expect(again.job_id == first.job_id, "the retry got another job than the first request with its key")
    expect(
        len(started) == 1,
        f"{retries} retr{'y' if retries == 1 else 'ies'} with the same Idempotency-Key and task called jobs.start "
        f"{len(started) - 1} more time(s) for the job the key already made: a retry is answered with that job's "
        "202 again and starts nothing (call jobs.start only for a job jobs.create just made)",
    )
    return f"1 start for the first POST, none for {retries} retr{'y' if retries == 1 else 'ies'}"


@part.check("q1", hidden=True, hint="only the same key means the same request")
async def different_requests_make_different_jobs(ctx: Context) -> None:
    """Hidden: POSTs without a key, or with different keys, each get a job of their own"""
    system = await start_system(ctx, kickoff=True)
    http = await ctx.enter(aiohttp.ClientSession())
    task = task_text(ctx)
    answers = [await kick_off(system, http, task) for _ in range(2)]
    answers += [await kick_off(system, http, task, f"key-{uuid.uuid4()}") for _ in range(2)]
    locations = {a.location for a in answers}
    expect(len(locations) == 4 and len(system.board) == 4, f"4 distinct requests got {len(locations)} job(s)")


@part.check(
    "q1",
    hint="a key reused for another task is the client's bug: say so with a 422",
    code_hint='if job is not None and job.task != task: return problem(422, "Idempotency-Key reused", "...", '
    'f"{PROBLEM_BASE}key-reused")',
)
async def a_key_reused_for_another_task_is_422(ctx: Context) -> None:
    """The same Idempotency-Key with another task gets 422 problem+json, and the first job stays as it was"""
    system = await start_system(ctx, kickoff=True)
    http = await ctx.enter(aiohttp.ClientSession())
    key = f"key-{uuid.uuid4()}"
    first = await kick_off(system, http, task_text(ctx), key)
    changed = {"task": task_text(ctx) + " (changed)"}
    other = await call_service(system, http, "POST", "/jobs", json=changed, headers={"Idempotency-Key": key})
    expect_problem(other, "POST /jobs with a key already used for another task", 422)
    expect(len(system.board) == 1, f"the reused key made a second job ({len(system.board)} jobs): answer 422 and start nothing")
    expect(job_of(system, first).key == key, "the first job lost its key")


# ------------------------------------------------------------- never wait for the workers, never a 202 for work not queued

PROMPT_S = 1.5
"""A kickoff answers within this, whatever the workers do (a sound one takes milliseconds, even on a busy machine)."""
GIVE_UP_S = 4.0
"""How long a check waits for the 202 before saying the kickoff waits for the workers."""


async def _prompt_202(system: HybridSystem, http: aiohttp.ClientSession, task: str, workers: str) -> Answer:
    """POST /jobs while the workers are ``workers``: a usable 202 within :data:`PROMPT_S`."""
    try:
        answer = await request(http, "POST", resolve(system.url, "/jobs"), json={"task": task}, timeout=GIVE_UP_S)
    except TimeoutError:
        raise CheckFailed(
            f"POST /jobs got no answer within {GIVE_UP_S:g} s while the workers were {workers}: the kickoff waits for "
            "them. Answer 202 right after jobs.start(job): the work order waits at the broker, not the client"
        ) from None
    handler_failed(system, answer, "POST /jobs")
    expect(
        answer.status == 202,
        f"while the workers were {workers}, POST /jobs answered {describe_answer(answer)}, expected 202 Accepted",
    )
    expect(
        answer.seconds < PROMPT_S,
        f"while the workers were {workers}, POST /jobs took {answer.seconds:.2f} s: the 202 must not wait for any "
        "step to start or finish",
    )
    return answer


@part.check(
    "q1",
    hint="the 202 depends on the broker taking the order, never on a worker picking it up",
    code_hint="job = jobs.create(task, key); await jobs.start(job); return web.json_response(job.accepted, status=202, ...)",
    timing=True,
)
async def kickoff_never_waits_for_the_workers(ctx: Context) -> str:
    """The 202 comes at once when the workers are slow (stuck in the first step) or down"""
    system = await start_system(ctx, kickoff=True)
    http = await ctx.enter(aiohttp.ClientSession())
    first = STEPS[0].name
    system.faults.hold_step = first  # slow workers: every job stays in its first step until released
    ctx.callback(system.agent.release)
    slow = await _prompt_202(system, http, task_text(ctx), f"slow (stuck in the {first!r} step)")
    job = job_of(system, slow)
    started = await until(lambda: system.agent.running_step(job.job_id) == first, JOB_TIMEOUT_S)
    expect(started, f"the job never reached its {first!r} step: did start_job call await jobs.start(job)?")
    await system.stop_workers()  # the workers are down: nobody takes the order until they are back
    down = await _prompt_202(system, http, task_text(ctx), "down")
    expect(
        job_of(system, down).state == ACCEPTED,
        f"with every worker down, the new job says {job_of(system, down).state!r}: nothing ran it, so it is still 'accepted'",
    )
    return f"202 after {slow.seconds * 1000:.0f} ms (slow workers) and {down.seconds * 1000:.0f} ms (workers down)"


class QueueRefused(RuntimeError):
    """What the checks make jobs.create or jobs.start raise: the work could not be queued."""


async def _refused_kickoff(ctx: Context, where: str) -> str:
    """POST /jobs while ``where`` (create: the store, start: the broker) refuses the job; the answer must not be 2xx."""
    system = await start_system(ctx, kickoff=True)
    http = await ctx.enter(aiohttp.ClientSession())
    board, refused = system.board, []
    if where == "start":

        async def refuse_start(job: object) -> None:
            refused.append(job)
            raise QueueRefused("the broker refused the work order (the check made jobs.start fail)")

        board.start = refuse_start  # type: ignore[method-assign]  # the check makes queuing fail on this board only
        call = "await jobs.start(job)"
    else:

        def refuse_accept(*args: object) -> None:
            refused.append(args)
            raise sqlite3.OperationalError("database or disk is full (the check made the job store refuse)")

        board.store.accept = refuse_accept  # type: ignore[method-assign,assignment]  # the check makes queuing fail on this board only
        call = "jobs.create(task, key)"
    answer = await request(http, "POST", resolve(system.url, "/jobs"), json={"task": task_text(ctx)}, timeout=5.0)
    crash = system.errors[-1].error if system.errors else None
    if isinstance(crash, NotImplementedError):
        raise CheckFailed("start_job() is not written yet (it raises NotImplementedError)")
    expect(bool(refused), f"POST /jobs never called {call}: create the job and start it (question 1, step 3)")
    if crash is not None and not isinstance(crash, QueueRefused | sqlite3.OperationalError):
        raise CheckFailed(f"start_job() raised {type(crash).__name__}: {crash} (after {call} had raised)")
    expect(
        answer.status != 202,
        f"{call} raised (the work was not queued), yet POST /jobs answered 202 Accepted, a promise that the work will "
        "run: let the error through (the service answers 500) instead of catching it",
    )
    expect(
        answer.status >= 500,
        f"{call} raised (the work was not queued) and POST /jobs answered {describe_answer(answer)}: a failure of the "
        "service is a 5xx, never a 2xx (or a 4xx, which blames the client)",
    )
    return f"{answer.status} when {call} raised"


@part.check(
    "q1",
    hint="a 202 promises the work will run: when queuing it fails, the client must not get one",
    code_hint="await jobs.start(job)  # no try/except around it: if it raises, the service answers 500",
)
async def no_202_when_queuing_fails(ctx: Context) -> str:
    """When jobs.start raises (the work order was not queued), POST /jobs does not answer 202"""
    return await _refused_kickoff(ctx, "start")


@part.check("q1", hidden=True, hint="a 202 promises the work will run: when queuing it fails, the client must not get one")
async def no_202_when_the_store_refuses(ctx: Context) -> str:
    """Hidden: when jobs.create raises (the job store is full), POST /jobs does not answer 202"""
    return await _refused_kickoff(ctx, "create")
