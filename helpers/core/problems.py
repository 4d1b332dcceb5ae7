"""RFC 9457 error bodies (``application/problem+json``) for every course HTTP service that reports errors.

Every error the course's services send (lesson 06's jobs, lesson 07's capstone) has the same four fields, so a client (or a
learner reading a response in the notebook) can always tell what went wrong and why,
whatever the service. The validation errors (``ImageRejected``, ``KeyRejected``) carry
those four fields themselves; ``problem_for`` turns one into a response.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import HttpVersion11, hdrs, web

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://course.invalid/problems/"
"""Prefix of the ``type`` URIs; ``.invalid`` is reserved (RFC 2606), so nobody dereferences it by accident."""


class ProblemLike(Protocol):
    """Anything that knows its own problem fields, e.g. ``ImageRejected`` or ``KeyRejected``."""

    @property
    def status(self) -> int: ...

    @property
    def title(self) -> str: ...

    @property
    def detail(self) -> str: ...

    @property
    def type(self) -> str: ...


def problem(status: int, title: str, detail: str, type: str = "about:blank", **extra: object) -> web.Response:
    """A problem+json response: ``type``, ``title``, ``status``, ``detail``, then any extension members."""
    body = {"type": type, "title": title, "status": status, "detail": detail, **extra}
    return web.json_response(body, status=status, content_type=PROBLEM_JSON)


def problem_for(error: ProblemLike, **extra: object) -> web.Response:
    """The problem+json response for a validation error that carries its own fields."""
    return problem(error.status, error.title, error.detail, error.type, **extra)


@web.middleware
async def problems_everywhere(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own errors (no such route, wrong method, a raised HTTPException) as problem+json too.

    A service that answers its own errors as problem+json must not leave a 404 for an
    unknown route or a 405 as aiohttp's plain text: a client would need two parsers.
    ``Retry-After`` on the raised error is kept.
    """
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = (
            exc.text
            if exc.text and exc.text != f"{exc.status}: {exc.reason}"
            else f"{request.method} {request.path}: {exc.reason}"
        )
        answer = problem(exc.status, exc.reason, detail)
        if "Retry-After" in exc.headers:
            answer.headers["Retry-After"] = exc.headers["Retry-After"]
        return answer
    return response


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """A route's ``expect_handler=``: ``100 Continue`` for ``Expect: 100-continue``, a 417 problem+json for any other.

    aiohttp's own Expect handler runs before the middlewares, so :func:`problems_everywhere` never sees its
    plain-text 417. This one answers as aiohttp's does for 100-continue, and closes the connection after a 417:
    the body the client may send anyway is never read.
    """
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:
        return None
    if expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer's own bytes are counted from here, as aiohttp does
        return None
    response = problem(
        417,
        "Expectation Failed",
        f"Expect: {expect[:100]!r} is not supported; send no Expect header, or Expect: 100-continue",
        f"{PROBLEM_BASE}expectation-failed",
    )
    response.force_close()
    return response
