"""Malformed HTTP gets the answer every course error gets (problem+json), and a request head gets a deadline.

aiohttp parses a request's line and headers before any application code runs. What it
cannot parse (a bad request line, conflicting lengths, a header over 8,190 bytes, obsolete
line folding...) it answers with its own plain-text 400, which no middleware sees; and a
head that never completes holds its connection until a keep-alive timer much later. A
client of a course service meets one error format and a bounded wait whatever it sent, so
every service runs on :class:`ProblemAppRunner`: its connections answer those errors as
problem+json (RFC 9457) and give the first request's head :data:`HEAD_TIMEOUT_S` to arrive.

The hook is ``aiohttp.web.RequestHandler`` (exported by ``aiohttp.web``); the server that
makes one per connection is not a documented extension point, so ``tests/test_core_connections.py``
pins both behaviours: an aiohttp upgrade that changes them fails a test, not a learner's service.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus

from aiohttp import web

from helpers.core.problems import PROBLEM_JSON, problem

HEAD_TIMEOUT_S = 1.5
"""Seconds a new connection has to deliver its first request's line and headers (read when it connects)."""

_LOOP_WAS_BUSY_S = 0.25
"""A deadline timer that fires this late means the event loop was blocked: the head may be queued, unread."""

_DETAIL_CHARS = 300
"""aiohttp's parse messages can quote the client's bytes: keep the detail short."""

log = logging.getLogger(__name__)


class ProblemRequestHandler(web.RequestHandler):
    """One connection's protocol handler: aiohttp's, with problem+json errors and a head deadline."""

    _head_timer: asyncio.TimerHandle | None = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The error aiohttp would send as text, as problem+json; a 500 keeps its traceback in the log only."""
        if request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)  # raises: a response has begun
        if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            log.debug("malformed request from %s: %s", request.remote, message, exc_info=exc)
        phrase = HTTPStatus(status).phrase
        failed = status >= HTTPStatus.INTERNAL_SERVER_ERROR
        detail = "the server failed on this request; its log has the details" if failed else message or phrase
        answer = problem(status, phrase, detail[:_DETAIL_CHARS])
        answer.force_close()
        return answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer(HEAD_TIMEOUT_S)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._request_count and self._head_timer is not None:  # the first head is in: no deadline after it
            self._head_timer.cancel()
            self._head_timer = None

    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio reads the bool; aiohttp typed it None
        """Keep the way back open when a client half-closes after its request: it still gets its answer.

        aiohttp lets asyncio close the socket at any EOF, so a client that shuts down its sending
        side after a request (an HTTP/1.0 POST, ``nc -N``) got no answer. An EOF in the middle of
        a body is still a hang-up, handled as before.
        """
        request = self._current_request
        return request is None or request.content.is_eof()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _arm_head_timer(self, delay: float) -> None:
        due = self._loop.time() + delay
        self._head_timer = self._loop.call_at(due, self._head_due, due)

    def _head_due(self, due: float) -> None:
        """408 problem+json and close, unless the loop was too busy to read what may have arrived."""
        self._head_timer = None
        if self._request_count or self.transport is None or self.transport.is_closing():
            return
        if self._loop.time() - due > _LOOP_WAS_BUSY_S:
            self._arm_head_timer(0.1)  # read the socket first: a blocked kernel is not a slow client
            return
        detail = f"the request line and headers did not arrive within {HEAD_TIMEOUT_S:g} s of connecting"
        body = json.dumps({"type": "about:blank", "title": "Request Timeout", "status": 408, "detail": detail}).encode()
        head = (
            f"HTTP/1.1 408 Request Timeout\r\nContent-Type: {PROBLEM_JSON}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        self.force_close()  # the transport sends what was written, then closes


class ProblemServer(web.Server):
    """The runner's connection factory, making :class:`ProblemRequestHandler` connections."""

    def __call__(self) -> web.RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class ProblemAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer malformed HTTP as problem+json, with a head deadline."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = ProblemServer  # same state, one method different: aiohttp offers no factory argument
        return server
