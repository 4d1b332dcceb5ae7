"""Toy HTTP services that run inside the notebook's event loop (aiohttp).

A lesson needs several services that call each other, that it can make slow, flaky or
dead while they run, and that it can count. Each service is an aiohttp app on
127.0.0.1 with a free port, started with AppRunner + TCPSite so it shares the kernel's
loop. A registry keyed by name means re-running a cell replaces the old service
instead of failing with "address in use".

    inventory = await start_service("inventory", handler)
    inventory.faults.latency = 0.2     # every request now takes 200 ms longer
    inventory.faults.down = True       # now it answers 503 at once

A service that takes bodies from clients it cannot trust reads them with :func:`read_body`:
a limit on the bytes (413), deadlines instead of waiting for a client that stopped sending
(408), a clear 400 for a Content-Encoding that does not decode, and a 415 for one it does not know (an app
made with ``handler_args=DECODES_ITSELF`` leaves the decoding to it, under the body's limit).
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import hdrs, web

from helpers.core.connections import ProblemAppRunner
from helpers.core.problems import PROBLEM_BASE, problem_for

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AppLike = web.Application | web.RouteTableDef | Handler

SHUTDOWN_TIMEOUT_S = 0.25
"""aiohttp waits 60 s for slow handlers on shutdown by default; a lesson cannot."""
KEEPALIVE_S = 15.0
"""How long an idle kept-alive connection stays open (aiohttp's default is an hour: an idle client that never closes
held a descriptor that long, and a few hundred of them exhaust a 256-descriptor limit). 15 s is what aiohttp's own
client keeps a connection for, so a client reusing it meets no surprise."""

_services: dict[str, Service] = {}


@dataclass
class Faults:
    """Knobs a lesson turns while the service runs; read on every request."""

    latency: float = 0.0
    """Seconds added before the handler runs."""
    jitter: float = 0.0
    """Up to this many extra seconds, uniformly random, on top of ``latency``."""
    error_rate: float = 0.0
    """Fraction (0..1) of requests answered with HTTP 500."""
    down: bool = False
    """When True the service answers 503 at once, as a sick instance behind a proxy would."""
    seed: int | None = None
    """Seed for the jitter and error draws, so a lesson's numbers repeat."""
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self.validate()
        if self.seed is not None:
            self._rng.seed(self.seed)

    def validate(self) -> None:
        """Reject knob values that make no sense, with a message that says which."""
        if self.latency < 0 or self.jitter < 0:
            raise ValueError(f"latency and jitter are seconds >= 0, got latency={self.latency}, jitter={self.jitter}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate is a fraction between 0 and 1, got {self.error_rate}")

    def delay(self) -> float:
        """The added delay for one request."""
        return self.latency + (self._rng.uniform(0, self.jitter) if self.jitter else 0.0)

    def should_fail(self) -> bool:
        """Draw whether this request gets an injected 500."""
        return self.error_rate > 0 and self._rng.random() < self.error_rate

    def reset(self) -> None:
        """Back to a healthy service."""
        self.latency = self.jitter = self.error_rate = 0.0
        self.down = False


@dataclass
class Stats:
    """What the service saw: how many requests arrived, when, and how many at once."""

    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    arrivals: list[float] = field(default_factory=list)
    """``time.perf_counter()`` of each arrival, for retry-storm histograms."""

    def reset(self) -> None:
        """Zero the counters between experiments."""
        self.requests = self.errors = self.in_flight = self.max_in_flight = 0
        self.arrivals.clear()


FAULTS = web.AppKey("faults", Faults)
STATS = web.AppKey("stats", Stats)


@web.middleware
async def _fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    faults, stats = request.app[FAULTS], request.app[STATS]
    stats.requests += 1
    stats.arrivals.append(time.perf_counter())
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    try:
        if faults.down:
            stats.errors += 1
            return web.json_response({"error": "service down"}, status=503)
        delay = faults.delay()
        if delay:
            await asyncio.sleep(delay)
        if faults.should_fail():
            stats.errors += 1
            return web.json_response({"error": "injected failure"}, status=500)
        return await handler(request)
    finally:
        stats.in_flight -= 1


def as_app(target: AppLike) -> web.Application:
    """An aiohttp app with the course's fault knobs, from a handler, a RouteTableDef or an app."""
    if isinstance(target, web.Application):
        if target.frozen:
            raise ValueError("this web.Application was already started once; build a fresh one for each start")
        target.middlewares.insert(0, _fault_middleware)
        return target
    app = web.Application(middlewares=[_fault_middleware])
    if isinstance(target, web.RouteTableDef):
        app.add_routes(target)
    elif callable(target):
        app.router.add_route("*", "/{tail:.*}", target)
    else:
        raise TypeError(f"start_service needs a handler, a RouteTableDef or a web.Application, got {type(target).__name__}")
    return app


@dataclass
class Service:
    """A running service: its URL, its fault knobs and its counters."""

    name: str
    runner: web.AppRunner
    port: int
    faults: Faults
    stats: Stats

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:41234"""
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Close the listener and cut in-flight requests after a short grace period."""
        await self.runner.cleanup()
        if _services.get(self.name) is self:
            del _services[self.name]

    def __repr__(self) -> str:
        return f"<Service {self.name} {self.url} faults={self.faults}>"


async def start_service(name: str, target: AppLike, *, faults: Faults | None = None, port: int = 0) -> Service:
    """Start ``target`` on 127.0.0.1 as service ``name``, replacing any old one.

    ``port`` 0 takes a free port; a service restarted on the port it had keeps its address
    (what a real deployment keeps behind its load balancer).
    """
    if not name or not isinstance(name, str):
        raise ValueError("a service needs a non-empty name, e.g. start_service('inventory', handler)")
    app = as_app(target)  # a bad target fails here, before the old service is stopped
    old = _services.pop(name, None)
    if old is not None:
        await old.stop()
    app[FAULTS] = faults or Faults()
    app[STATS] = Stats()
    runner = ProblemAppRunner(  # malformed HTTP: problem+json
        app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S, keepalive_timeout=KEEPALIVE_S
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    port = runner.addresses[0][1]
    service = Service(name, runner, port, app[FAULTS], app[STATS])
    _services[name] = service
    return service


def get_service(name: str) -> Service:
    """The running service called ``name``."""
    try:
        return _services[name]
    except KeyError:
        known = ", ".join(sorted(_services)) or "none"
        raise KeyError(f"no service named {name!r} is running (running: {known})") from None


def running_services() -> dict[str, Service]:
    """A copy of the registry, for a quick look at what is up."""
    return dict(_services)


async def stop_all() -> None:
    """Stop every service this kernel started (the last cell of each notebook calls it)."""
    for service in list(_services.values()):
        await service.stop()


# --- reading a request body from a client that may be hostile ------------------------------

BODY_IDLE_TIMEOUT_S = 1.0
"""Longest wait for the next bytes of a body. The course's services talk over 127.0.0.1, where a body's bytes
follow each other within microseconds, so a second of silence is a stalled or hostile client (a declared 1 MB
with 100 bytes sent, a chunk that never comes). Behind a real proxy this would be tens of seconds (nginx: 60 s)."""
BODY_TOTAL_TIMEOUT_S = 10.0
"""Longest time a whole body may take, so a client that sends a byte just often enough cannot hold a handler."""
BODY_CHUNK = 64 * 1024
"""Bytes read at a time: a body is never buffered past its limit by more than this."""
T = TypeVar("T")


class BodyRefused(Exception):
    """A request body that was not read: too large (413), too slow (408) or undecodable (400); problem+json fields."""

    def __init__(self, status: int, title: str, detail: str, slug: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.type = PROBLEM_BASE + slug


class BodyTooLarge(BodyRefused):
    """The body is (or declares to be) longer than the service's limit: 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "Body too large", f"The body is larger than the limit of {limit:,} bytes.", "too-large")
        self.limit = limit


class BodyTimedOut(BodyRefused):
    """The client stopped sending before the body was complete: 408 (RFC 9110 15.5.9), and the connection is closed."""


class BodyUndecodable(BodyRefused):
    """The body could not be read as framed and encoded: bad gzip/deflate, a broken chunk, broken multipart: 400."""


class BodyAbandoned(BodyRefused):
    """The client closed the connection before its body was complete: a 400 nobody reads, not a server error (500)
    with a traceback in the log for every client that gives up."""


ACCEPTED_ENCODINGS = ("gzip", "deflate", "identity")
"""The Content-Encodings :func:`read_body` decodes (``x-gzip`` is gzip's old name); any other is a 415."""
DECODES_ITSELF = {"auto_decompress": False}
"""``web.Application(handler_args=DECODES_ITSELF)`` for an app that reads bodies with :func:`read_body`: aiohttp
then leaves Content-Encoding to it (under the body's limit, 415 problem+json for an encoding it does not know),
instead of answering a ``br`` or ``zstd`` body with a plain-text 400 before any handler runs."""


class BodyEncodingUnsupported(BodyRefused):
    """The body declares a Content-Encoding the service does not decode (``br``, ``zstd``, ...): 415 (RFC 9110 15.5.16)."""

    def __init__(self, coding: str) -> None:
        accepted = ", ".join(ACCEPTED_ENCODINGS)
        super().__init__(
            415,
            "Content-Encoding not supported",
            f"The body's Content-Encoding {coding!r} is not supported here; send it as one of {accepted}"
            " (identity: no Content-Encoding header at all).",
            "unsupported-encoding",
        )
        self.coding = coding


def content_codings(request: web.BaseRequest) -> list[str]:
    """The body's Content-Encodings in the order they were applied (``identity`` left out); 415 for one not accepted.

    Empty list elements (``Content-Encoding:`` with no value, ``gzip,,``) are skipped, as RFC 9110 5.6.1 asks of
    a recipient: they name no coding."""
    codings = []
    for value in request.headers.getall(hdrs.CONTENT_ENCODING, []):
        for item in value.split(","):
            coding = item.strip().lower()
            if not coding:
                continue
            coding = "gzip" if coding == "x-gzip" else coding
            if coding not in ACCEPTED_ENCODINGS:
                raise BodyEncodingUnsupported(item.strip()[:40])
            if coding != "identity":
                codings.append(coding)
    return codings


class _Inflater:
    """One gzip or deflate layer of a body, decoded as the bytes arrive and never past ``limit`` bytes (a bomb: 413)."""

    def __init__(self, coding: str, limit: int) -> None:
        self.coding, self.limit = coding, limit
        self.size = 0
        self._inflate: zlib._Decompress | None = None
        self._fed = False

    def _refused(self, why: str) -> BodyUndecodable:
        return BodyUndecodable(
            400,
            "Body could not be decoded",
            f"The body could not be read ({why}); it declares Content-Encoding: {self.coding}, so it must really be"
            f" encoded that way, else send it without one.",
            "undecodable-body",
        )

    def _start(self, first: bytes) -> zlib._Decompress:
        if self.coding == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # "deflate" is meant to be zlib-wrapped (RFC 9110 8.4.1.2), but some clients send raw deflate, as aiohttp accepts
        return zlib.decompressobj(zlib.MAX_WBITS if first[0] & 0x0F == 8 else -zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bytes:
        out = b""
        while data:
            if self._inflate is None or (self._inflate.eof and self.coding == "gzip"):  # gzip may have several members
                self._inflate = self._start(data)
            elif self._inflate.eof:
                raise self._refused("bytes follow the end of the compressed data")
            self._fed = True
            try:
                piece = self._inflate.decompress(data, self.limit - self.size + 1)
            except zlib.error as exc:
                raise self._refused(f"{self.coding}: {exc}") from None
            self.size += len(piece)
            if self.size > self.limit:
                raise BodyTooLarge(self.limit)
            out += piece
            data = self._inflate.unused_data
        return out

    def finish(self) -> None:
        if self._fed and self._inflate is not None and not self._inflate.eof:
            raise self._refused(f"{self.coding}: the body ended inside the compressed data")


class BodyClock:
    """The deadlines of one body: every wait for bytes ends after ``idle`` s of silence or at ``total`` s overall.

    One clock per request: a multipart body's headers, parts and boundaries all count against the same deadline.
    """

    def __init__(self, idle: float | None = None, total: float | None = None) -> None:
        self.idle = BODY_IDLE_TIMEOUT_S if idle is None else idle
        self.total = BODY_TOTAL_TIMEOUT_S if total is None else total
        self._loop = asyncio.get_running_loop()
        self.deadline = self._loop.time() + self.total

    async def wait(self, step: Awaitable[T]) -> T:
        """``await step`` within the deadlines; aiohttp's payload errors become :class:`BodyUndecodable`."""
        left = self.deadline - self._loop.time()
        try:
            async with asyncio.timeout(max(0.0, min(self.idle, left))):
                return await step
        except TimeoutError:
            overall = left <= self.idle
            detail = (
                f"The body was not complete within {self.total:g} s."
                if overall
                else f"No bytes of the body arrived for {self.idle:g} s; send the whole body at once."
            )
            raise BodyTimedOut(408, "Body not received in time", detail, "body-timeout") from None
        except ConnectionResetError:  # aiohttp's word for "the client hung up" while a body was being read
            raise BodyAbandoned(
                400, "Body incomplete", "The connection was closed before the body was complete.", "body-incomplete"
            ) from None
        except web.RequestPayloadError as exc:  # aiohttp's error for a body it cannot decode or de-chunk
            raise BodyUndecodable(
                400,
                "Body could not be decoded",
                f"The body could not be read ({exc}); if it declares a Content-Encoding (gzip, deflate),"
                " it must really be encoded that way, else send it without one.",
                "undecodable-body",
            ) from None


async def read_chunks(read: Callable[[int], Awaitable[bytes]], limit: int, clock: BodyClock) -> bytes:
    """Everything ``read(size)`` gives until it gives b"", refused with :class:`BodyTooLarge` past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await clock.wait(read(BODY_CHUNK)):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(request: web.Request, limit: int, clock: BodyClock | None = None) -> bytes:
    """The request body, decoded as its Content-Encoding says, refused (:class:`BodyRefused`) rather than waited for.

    A declared Content-Length over ``limit`` is refused before a byte is read; a body that
    grows past it while arriving (chunked, or decompressed) is refused as soon as it does.
    gzip and deflate are decoded here when aiohttp left them alone (:data:`DECODES_ITSELF`);
    any other Content-Encoding is :class:`BodyEncodingUnsupported` (415).
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    codings = content_codings(request)  # 415 for one it does not know, before a byte is read
    clock = clock or BodyClock()
    if not codings:  # what aiohttp decoded itself, in an app that lets it (one without DECODES_ITSELF)
        return await read_chunks(request.content.read, limit, clock)
    layers = [_Inflater(coding, limit) for coding in reversed(codings)]  # the last one applied comes off first
    chunks: list[bytes] = []
    while raw := await clock.wait(request.content.read(BODY_CHUNK)):
        for layer in layers:
            raw = layer.feed(raw)
        chunks.append(raw)
    for layer in layers:
        layer.finish()
    return b"".join(chunks)


def body_problem(error: BodyRefused) -> web.Response:
    """The problem+json answer to a refused body; after a 408 or a 400 the connection is closed.

    A stalled client (408) would otherwise hold the connection through aiohttp's "lingering"
    read (up to 10 s; closed, it gets the course's bounded linger of
    :mod:`helpers.core.connections` instead: the answer, a FIN, at most ``LINGER_S`` of
    discarded bytes), and a body that failed to decode (400) cannot be read on. A 413 keeps
    the lingering read: a client still sending a big body must get to read the answer, and
    closing a socket with unread bytes makes the kernel send a reset that can destroy it. A 415 (an
    encoding it does not decode) is answered before a byte is read too, and keeps it the same way.
    """
    response = problem_for(error)
    if isinstance(error, BodyEncodingUnsupported):
        response.headers[hdrs.ACCEPT_ENCODING] = ", ".join(ACCEPTED_ENCODINGS)  # what RFC 9110 15.5.16 asks a 415 to say
    if not isinstance(error, BodyTooLarge | BodyEncodingUnsupported):  # both refused before reading: let it linger
        response.force_close()
    return response
