"""The HTTP side of an asynchronous job, one convention for every jobs service in the course.

* the kickoff answers ``202 Accepted`` with ``Location`` (the job's status resource) and
  ``Retry-After`` (RFC 9110 section 10.2.3 defines it for any response: here "ask again in
  this many seconds");
* the status resource answers ``200`` with the job's status (and ``Retry-After`` while it
  is unfinished); ``303 See Other`` to the result once the job succeeded ("the answer is
  elsewhere: GET it there"); ``200`` with ``application/problem+json`` for a failed job (the
  read worked; what it says is a failure, RFC 9457);
* errors are problem+json: ``404`` for an unknown job, ``409`` for a finished job that
  cannot be cancelled and for an idempotency key whose first request is still in flight,
  ``422`` for a key reused with other content;
* ``GET /jobs/{id}/events`` streams the same status documents as server-sent events
  (:func:`event_stream`), each with its change number as ``id``, so a client that
  reconnects with ``Last-Event-ID`` gets only what it missed;
* links are relative (``/jobs/{id}``) or built from the service's configured base URL,
  never from the request's ``Host`` header (which the client controls).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from helpers.core.jobkit.store import Change
from helpers.core.problems import PROBLEM_BASE, PROBLEM_JSON, problem

RETRY_AFTER_S = 1
"""Whole seconds a client waits before it asks about an unfinished job again."""
ANONYMOUS = "anonymous"
"""The caller of a request that names nobody: every such request shares one key space."""


def link(path: str, base_url: str | None = None) -> str:
    """``path`` as the service shows it: relative, or under its configured ``base_url`` (never the Host header)."""
    return str(URL(base_url).join(URL(path))) if base_url else path


def caller_of(request: web.Request) -> str:
    """Whose idempotency keys a request uses: the user an authentication step stored in
    ``request["user"]``, else the ``?user=`` the course's services name users with, else :data:`ANONYMOUS`."""
    user = request.get("user") or request.query.get("user")
    return str(user) if user else ANONYMOUS


def accepted(body: dict[str, Any], location: str, retry_after_s: int = RETRY_AFTER_S) -> web.Response:
    """``202 Accepted``: the body (job id and state), where its status lives, and when to ask."""
    return web.json_response(body, status=202, headers={"Location": location, "Retry-After": str(retry_after_s)})


def status(document: dict[str, Any], state: str, result_location: str, retry_after_s: int = RETRY_AFTER_S) -> web.Response:
    """The status resource's answer for a job in ``state`` (see the module docstring)."""
    if state == "succeeded":
        return web.json_response(document, status=303, headers={"Location": result_location})
    if state == "failed":
        return web.json_response(document, content_type=PROBLEM_JSON)
    unfinished = state in ("accepted", "running")
    return web.json_response(document, headers={"Retry-After": str(retry_after_s)} if unfinished else {})


def failed_document(body: dict[str, Any], detail: str, **extra: Any) -> dict[str, Any]:
    """A failed job's status document: problem details (RFC 9457) around the job's own fields.

    It has no ``status`` member: RFC 9457 wants that member to equal the HTTP status of the
    response, and reading the status of a failed job is itself a success (200).
    """
    problem_fields = {"type": f"{PROBLEM_BASE}job-failed", "title": "Job failed", "detail": detail}
    return {**problem_fields, "instance": body["links"]["self"], **body, **extra}


def unknown_job(job_id: str) -> web.Response:
    """``404`` problem+json for a job id the store does not know."""
    return problem(
        404,
        "Unknown job",
        f"there is no job {job_id!r}; a job's address comes from the Location header of its 202",
        f"{PROBLEM_BASE}unknown-job",
    )


def job_finished(job_id: str, state: str) -> web.Response:
    """``409`` problem+json: a finished job cannot be cancelled."""
    return problem(
        409,
        "Job already finished",
        f"job {job_id} is {state}; only an unfinished job can be cancelled",
        f"{PROBLEM_BASE}job-finished",
    )


def key_reused(key: str) -> web.Response:
    """``422`` problem+json: this caller sent ``key`` before with other content (a client bug, not a retry)."""
    return problem(
        422,
        "Idempotency-Key reused",
        f"the Idempotency-Key {key!r} came before with other content; a new request needs a new key",
        f"{PROBLEM_BASE}key-reused",
    )


def key_in_flight(key: str, retry_after_s: int = RETRY_AFTER_S) -> web.Response:
    """``409`` problem+json: the first request with ``key`` is still being answered; retry after a moment."""
    response = problem(
        409,
        "Request in flight",
        f"the first request with Idempotency-Key {key!r} is still being processed; retry in {retry_after_s} s",
        f"{PROBLEM_BASE}key-in-flight",
    )
    response.headers["Retry-After"] = str(retry_after_s)
    return response


def no_result(job_id: str, state: str, status_path: str, retry_after_s: int = RETRY_AFTER_S) -> web.Response:
    """``404`` problem+json for the result of a job that has none (yet): say why and where its status is."""
    response = problem(
        404,
        "No result",
        f"job {job_id} is {state}: only a job that succeeded has a result; its status is at {status_path}",
        f"{PROBLEM_BASE}no-result",
    )
    if state in ("accepted", "running"):
        response.headers["Retry-After"] = str(retry_after_s)
    return response


@web.middleware
async def no_store(request: web.Request, handler: Any) -> web.StreamResponse:
    """``Cache-Control: no-store`` on every answer that does not set its own: a status must never come from a cache."""
    response: web.StreamResponse = await handler(request)
    if not response.prepared and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"
    return response


def sse_frame(change: Change) -> bytes:
    """One server-sent event: ``id`` (the change number), ``event: status`` and the status document."""
    return f"id: {change.seq}\nevent: status\ndata: {json.dumps(change.document, separators=(',', ':'))}\n\n".encode()


def last_event_id(request: web.Request) -> int:
    """The change number a reconnecting client saw last (``Last-Event-ID``), 0 for a new client."""
    after = request.headers.get("Last-Event-ID", "0")
    return int(after) if after.isdigit() else 0


async def event_stream(
    request: web.Request, changes: AsyncGenerator[Change | None, None], retry_after_s: int = RETRY_AFTER_S
) -> web.StreamResponse:
    """Answer ``text/event-stream``: each of ``changes`` as a frame (None: a keep-alive comment), then close.

    ``retry`` tells a reconnecting client how long to wait; a client that went away ends the stream quietly.
    """
    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await stream.prepare(request)
    await stream.write(f"retry: {retry_after_s * 1000}\n\n".encode())
    try:
        async with contextlib.aclosing(changes):
            async for change in changes:
                await stream.write(b": keep-alive\n\n" if change is None else sse_frame(change))
        await stream.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass  # the client went away: nothing to send it any more
    return stream
