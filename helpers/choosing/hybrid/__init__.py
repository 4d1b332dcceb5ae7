"""Lesson 06's hybrid: answer ``202 Accepted`` at once, run the long steps over MQTT, let the client poll or be told.

The asynchronous request-reply pattern, by the HTTP spec (RFC 9110), for a multi-step AI
agent task (plan, research, draft, review), built on the course's async-job kit
(:mod:`helpers.core.jobkit`):

* ``POST /jobs`` validates first (a bad request gets ``400`` problem+json at once and
  leaves no job), stores the job with its first work order (the outbox), hands the order
  to the broker at QoS 1, and answers ``202 Accepted`` with ``Location: /jobs/{id}`` (the
  status resource), ``Retry-After`` in seconds and a body with the job id and state. A
  repeated ``Idempotency-Key`` (per caller) returns the same job; the same key with another
  task is a ``422``; a key whose first request is still being answered is a ``409``.
* ``GET /jobs/{id}`` is the status resource: ``state`` (``accepted``, ``running``,
  ``succeeded``, ``failed``, ``cancelled``), ``created``/``updated`` and ``progress``,
  with ``Retry-After`` while the job is unfinished. Once it succeeded it answers
  ``303 See Other`` with ``Location: /jobs/{id}/result``; a failed job stays readable here
  as problem+json (RFC 9457). An unknown id is a ``404``.
* ``DELETE /jobs/{id}`` cancels: the state becomes ``cancelled`` and the workers stop the
  step that is running.
* ``GET /jobs/{id}/events`` pushes the same status documents as server-sent events.

Durable by default (see :mod:`.service`): the jobs live in SQLite, every consumer that must
not lose work has a fixed client id and a persistent session, and an unfinished job fails
at its deadline. The modules, along the old banners: :mod:`.task` (the task, its steps,
the events and work orders on the wire, the topics), :mod:`.agent` (the step workers),
:mod:`.board` (jobs, the status keeper, the reference handlers), :mod:`.service` (the
assembled system and the synchronous version), :mod:`.watch` (measurements and the plot)
and :mod:`.drills` (outages, measured). The clients (requests, a poller, an SSE reader)
are the kit's (:mod:`helpers.core.jobkit.client`).
"""

from helpers.choosing.hybrid.agent import Agent, AgentFaults, RunOutcome, StepRun
from helpers.choosing.hybrid.board import (
    ACCEPTED,
    CANCELLED,
    DEADLINE_S,
    FAILED,
    HEARTBEAT_S,
    RETRY_AFTER_S,
    RUNNING,
    STATES,
    SUCCEEDED,
    ApplyFn,
    Change,
    Job,
    JobBoard,
    JobHandler,
    apply_event,
    cancel_job,
    job_events,
    job_result,
    job_status,
    sse_frame,
    unknown_job,
)
from helpers.choosing.hybrid.service import (
    HandlerError,
    HybridSystem,
    build_app,
    start_hybrid,
    start_sync_agent,
    sync_agent_app,
)
from helpers.choosing.hybrid.task import (
    JOB_CANCEL,
    JOB_FAILED,
    JOB_SUCCEEDED,
    MAX_TASK_CHARS,
    STEP_DONE,
    STEP_EVENT_TOPICS,
    STEP_ORDER,
    STEP_STARTED,
    STEPS,
    Step,
    StepFailed,
    Task,
    Topics,
    WorkOrder,
    compose_result,
    quick_steps,
    read_task,
    step_output,
    submit,
)
from helpers.choosing.hybrid.watch import STATE_COLORS, KickoffRun, Watch, measure_kickoffs, plot_watch, watch_job
from helpers.core.jobkit.client import (
    Answer,
    Polled,
    PollError,
    SseEvent,
    distinct,
    poll_job,
    read_events,
    request,
    resolve,
)
from helpers.core.jobkit.store import FINAL

__all__ = [
    "ACCEPTED", "CANCELLED", "DEADLINE_S", "FAILED", "FINAL", "HEARTBEAT_S", "JOB_CANCEL", "JOB_FAILED", "JOB_SUCCEEDED",
    "MAX_TASK_CHARS", "RETRY_AFTER_S", "RUNNING", "STATES", "STATE_COLORS", "STEPS", "STEP_DONE", "STEP_EVENT_TOPICS",
    "STEP_ORDER", "STEP_STARTED", "SUCCEEDED", "Agent", "AgentFaults", "Answer", "ApplyFn", "Change", "HandlerError",
    "HybridSystem", "Job", "JobBoard", "JobHandler", "KickoffRun", "PollError", "Polled", "RunOutcome", "SseEvent", "Step",
    "StepFailed", "StepRun", "Task", "Topics", "Watch", "WorkOrder", "apply_event", "build_app", "cancel_job",
    "compose_result", "distinct", "job_events", "job_result", "job_status", "measure_kickoffs", "plot_watch", "poll_job",
    "quick_steps", "read_events", "read_task", "request", "resolve", "sse_frame", "start_hybrid", "start_sync_agent",
    "step_output", "submit", "sync_agent_app", "unknown_job", "watch_job",
]  # fmt: skip
