"""Malformed HTTP gets the answer every course error gets (problem+json), and a request head gets a deadline.

aiohttp parses a request's line and headers before any application code runs. What it
cannot parse (a bad request line, conflicting lengths, a header over 8,190 bytes, obsolete
line folding...) it answers with its own plain-text 400, which no middleware sees; and a
head that never completes holds its connection until a keep-alive timer much later. A
client of a course service meets one error format and a bounded wait whatever it sent, so
every service runs on :class:`ProblemAppRunner`: its connections answer those errors as
problem+json (RFC 9457) and give every request's head :data:`HEAD_TIMEOUT_S` to arrive.

An answer that ends a connection while the client is still sending (a 10 MB head refused
after its first 8 KB, a body nobody read) is followed by a lingering close (RFC 9112 9.6):
closing a socket with unread bytes makes the kernel send a reset, and a client still
sending then fails in its send and never reads the answer waiting for it.

The hook is ``aiohttp.web.RequestHandler`` (exported by ``aiohttp.web``); the server that
makes one per connection is not a documented extension point, so ``tests/test_core_connections.py``
pins these behaviours: an aiohttp upgrade that changes them fails a test, not a learner's service.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from helpers.core.problems import PROBLEM_JSON, problem

HEAD_TIMEOUT_S = 1.5
"""Seconds a request's line and headers have to arrive: from the connect for a connection's first request, from
the first byte of the head for a later one on a kept-alive connection (idle time between requests is keep-alive's)."""

_LOOP_WAS_BUSY_S = 0.25
"""A deadline timer that fires this late means the event loop was blocked: the head may be queued, unread."""

LINGER_S = 2.0
"""Longest linger after an answer that ends a connection. A client still sending then is finishing a request it
had begun: on 127.0.0.1 even :data:`LINGER_MAX_BYTES` arrive in tens of milliseconds, over a 100 Mbit/s link about 1.3 s.
Longer would let a client that never stops hold a connection for nothing; a client on a slow link still sending
after it gets the reset every client got before this linger existed."""

LINGER_MAX_BYTES = 16 * 2**20
"""Most bytes read and dropped in one linger. Twice the largest request a course service takes (the capstone's
8 MiB image upload), so a client that sent all of one with a broken head still reads why; no more, so a client
flooding 127.0.0.1 (gigabytes a second) costs tens of milliseconds of reading, not :data:`LINGER_S` of a core.
Memory does not depend on it: each chunk read is dropped at once."""

_DETAIL_CHARS = 300
"""aiohttp's parse messages can quote the client's bytes: keep the detail short."""

log = logging.getLogger(__name__)


class ProblemRequestHandler(web.RequestHandler):
    """One connection's protocol handler: aiohttp's, with problem+json errors, a head deadline and a lingering close."""

    _head_timer: asyncio.TimerHandle | None = None
    _heads_before = 0  # requests whose head had arrived when the head timer was armed
    _answered = 0  # requests answered on this connection
    _client_done = False  # the client half-closed after its requests: close once they are answered
    _head_from = "connecting"
    _unframed = False
    _linger_ended: asyncio.Future[None] | None = None
    _linger_timer: asyncio.TimerHandle | None = None
    _linger_budget = 0

    @property
    def lingering(self) -> bool:
        """Whether this connection is in its lingering close: its last answer sent, what still comes dropped."""
        return self._linger_ended is not None and not self._linger_ended.done()

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
        self._unframed = isinstance(exc, HttpProcessingError)  # the bytes after a parse failure are no requests
        return answer

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """Send the answer as aiohttp does; then linger if it ends the connection with request bytes unread.

        Unread means the parser failed (nothing after the failure can be framed) or the body has
        not all arrived (the handler answered without waiting for it). aiohttp's own linger
        (``lingering_time``, 10 s) reads such a body through the parser but has no byte bound, no
        half-close, and none for a parse failure; a kept-alive answer still gets it, as it must
        read the body to find the next request.
        """
        resp, reset = await super().finish_response(request, resp, start_time)
        self._answered += 1
        if self._client_done and self._answered == self._request_count:  # the half-closed client has its answers
            self.force_close()
        if not reset and not resp.keep_alive and (self._unframed or not request.content.is_eof()):
            await self._linger()
        return resp, reset

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer(HEAD_TIMEOUT_S)

    def data_received(self, data: bytes) -> None:
        if self._linger_ended is not None:  # lingering: count and drop, never parse or keep
            self._linger_budget -= len(data)
            if self._linger_budget < 0:
                self._end_linger()
            return
        heads = self._request_count
        super().data_received(data)
        if self._head_timer is not None and self._request_count > self._heads_before:  # the head is in
            self._head_timer.cancel()
            self._head_timer = None
        elif self._head_timer is None and self._request_count == heads and self._idle():
            self._arm_head_timer(HEAD_TIMEOUT_S, after="its first byte")  # a kept-alive connection begins a new head

    def _idle(self) -> bool:
        """Every request parsed so far is answered: bytes arriving now begin the next request's head, not a body."""
        return self._answered == self._request_count and self._linger_ended is None

    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio reads the bool; aiohttp typed it None
        """Keep the way back open when a client half-closes after its request: it still gets its answer.

        aiohttp lets asyncio close the socket at any EOF, so a client that shuts down its sending
        side after a request (an HTTP/1.0 POST, ``nc -N``) got no answer. An EOF in the middle of
        a body is still a hang-up, handled as before.
        """
        if self._linger_ended is not None:  # the client is done sending: nothing is left to read, close now
            self._end_linger()
            return True
        if self._answered == self._request_count:  # nothing asked and unanswered: the client left, so close
            return False  # (returning True here kept every such socket open, half-closed, for aiohttp's hour)
        self._client_done = True
        request = self._current_request
        return request is None or request.content.is_eof()  # a request whose body is all here still gets its answer

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._stop_linger()
        super().connection_lost(exc)

    def _linger(self) -> asyncio.Future[None]:
        """Half-close, then read and drop what the client still sends; the future is done when the socket closes.

        The FIN goes out once the answer is flushed (``write_eof``), so the client reads the answer
        to its end, and the socket closes when the client's FIN comes (nothing unread: no reset),
        or after :data:`LINGER_S` or :data:`LINGER_MAX_BYTES`, whichever first. Reading is resumed
        (aiohttp pauses it while its queue or a body's buffer is full) and each chunk is dropped in
        :meth:`data_received`, so memory stays flat; callbacks and a timer, nothing blocks the loop.
        """
        ended = self._linger_ended = self._loop.create_future()
        transport = self.transport
        if transport is None or transport.is_closing():
            self._end_linger()
            return ended
        try:
            if transport.can_write_eof():
                transport.write_eof()
        except OSError:  # the client is gone already (it hung up mid-body): nothing to wait for
            self._end_linger()
            return ended
        self._linger_budget = LINGER_MAX_BYTES
        self._linger_timer = self._loop.call_later(LINGER_S, self._end_linger)
        transport.resume_reading()
        return ended

    def _end_linger(self) -> None:
        """The client's FIN, a bound or a gone client ended the linger: close (what is unread now gets the reset)."""
        self._stop_linger()
        self.force_close()

    def _stop_linger(self) -> None:
        """Drop the linger's timer and wake the answer waiting on it (the socket is closed or closing)."""
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if self._linger_ended is not None and not self._linger_ended.done():
            self._linger_ended.set_result(None)

    def _arm_head_timer(self, delay: float, *, after: str = "connecting") -> None:
        due = self._loop.time() + delay
        self._heads_before, self._head_from = self._request_count, after
        self._head_timer = self._loop.call_at(due, self._head_due, due)

    def _head_due(self, due: float) -> None:
        """408 problem+json and close, unless the loop was too busy to read what may have arrived."""
        self._head_timer = None
        if self._request_count > self._heads_before or self.transport is None or self.transport.is_closing():
            return
        if self._loop.time() - due > _LOOP_WAS_BUSY_S:
            self._arm_head_timer(0.1, after=self._head_from)  # read the socket first: a blocked kernel is not a slow client
            return
        detail = f"the request line and headers did not arrive within {HEAD_TIMEOUT_S:g} s of {self._head_from}"
        body = json.dumps({"type": "about:blank", "title": "Request Timeout", "status": 408, "detail": detail}).encode()
        head = (
            f"HTTP/1.1 408 Request Timeout\r\nContent-Type: {PROBLEM_JSON}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        self._linger()  # the transport sends what was written, then half-closes; a client still sending reads it


class ProblemServer(web.Server):
    """The runner's connection factory, making :class:`ProblemRequestHandler` connections."""

    def __call__(self) -> web.RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class ProblemAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer malformed HTTP as problem+json, with a head deadline and a lingering close."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = ProblemServer  # same state, one method different: aiohttp offers no factory argument
        return server
