"""Malformed HTTP answered as problem+json, and a deadline on a request's head (helpers/core/connections.py).

Found by the outside probe of issue 19: aiohttp answered 41 kinds of malformed request with
its own text/plain 400 before any course code ran, and a head that never completed held its
connection for minutes. A client still sending when such an answer closed its connection got a
reset instead of the answer (a lingering close fixes it, bounded in time and bytes). These run
against a real service on 127.0.0.1, over raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from helpers.core import connections, http
from helpers.core.http import Service, start_service
from helpers.core.problems import PROBLEM_JSON
from helpers.core.waiting import until

HEAD_TIMEOUT = 0.3


@pytest.fixture
async def service(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Service]:
    monkeypatch.setattr(connections, "HEAD_TIMEOUT_S", HEAD_TIMEOUT)

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def bug(request: web.Request) -> web.Response:
        raise RuntimeError("a bug in a handler")

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/bug", bug)
    running = await start_service("wire-test", app)
    yield running
    await running.stop()


async def exchange(port: int, data: bytes, *, wait: float = 5.0) -> tuple[int, str, dict[str, object], float]:
    """Send ``data`` on a new connection; the status, content type, JSON body and seconds until the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.perf_counter()
    writer.write(data)
    answer = await asyncio.wait_for(reader.read(), wait)
    took = time.perf_counter() - began
    writer.close()
    return (*parse(answer), took)


def parse(answer: bytes) -> tuple[int, str, dict[str, object]]:
    """Status, content type and JSON body of one HTTP/1.1 answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers.get("Content-Type", ""), json.loads(body)


MALFORMED = {
    "a space in the method": b"GE T / HTTP/1.1\r\nHost: a\r\n\r\n",
    "a NUL in the request line": b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
    "an HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "a header value over 8,190 bytes": b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
    "Content-Length and Transfer-Encoding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc"
    ),
    "a negative Content-Length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
    "two different Content-Lengths": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "obsolete line folding": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    "a space before the colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_http_gets_a_400_problem_json(service: Service, data: bytes) -> None:
    status, content_type, body, _ = await exchange(service.port, data)
    assert status == 400, body
    assert content_type.startswith(PROBLEM_JSON), content_type  # was aiohttp's text/plain
    assert body["status"] == 400
    assert body["title"] == "Bad Request"
    assert 0 < len(str(body["detail"])) <= 300, body  # says what was wrong, without echoing 9 KB back


@pytest.mark.parametrize("data", [b"POST /images?user=a HTTP/1.1\r\nHost: a\r\n", b"GET /\r\n", b""])
async def test_a_head_that_never_completes_gets_a_408_after_the_deadline(service: Service, data: bytes) -> None:
    status, content_type, body, took = await exchange(service.port, data)
    assert status == 408, body
    assert content_type.startswith(PROBLEM_JSON)
    assert "did not arrive" in str(body["detail"])
    assert took >= HEAD_TIMEOUT * 0.9, took  # the deadline, not earlier
    assert took < HEAD_TIMEOUT + 3, took  # was: held until the client gave up (150 s in the probe)


async def test_a_kernel_busy_past_the_deadline_is_not_a_slow_client(service: Service) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    await asyncio.sleep(0.05)  # the server accepts the connection: its deadline runs
    time.sleep(3 * HEAD_TIMEOUT)  # a cell blocks the event loop, so this client cannot send yet  # noqa: ASYNC251
    await asyncio.sleep(0)  # one turn of the loop: the server's timer fires, late
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


async def test_a_kept_alive_connection_waits_longer_than_the_head_deadline(service: Service) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        async with session.get(f"{service.url}/") as first:
            assert first.status == 200
        await asyncio.sleep(2 * HEAD_TIMEOUT)  # idle between two requests: keep-alive's timer, not the head's
        async with session.get(f"{service.url}/") as second:
            assert second.status == 200


async def test_a_second_head_that_never_completes_on_a_kept_alive_connection_gets_a_408(service: Service) -> None:
    """The deadline holds for every request's head, not only the first: the probe parked 200 connections so."""
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b'{"ok": true}'), 5)
    assert first.startswith(b"HTTP/1.1 200"), first[:100]
    await asyncio.sleep(2 * HEAD_TIMEOUT)  # idle: keep-alive's time, no deadline runs
    began = time.perf_counter()
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Unfinished: ")
    answer = await asyncio.wait_for(reader.read(), 5)
    took = time.perf_counter() - began
    writer.close()
    status, content_type, body = parse(answer)
    assert (status, content_type.startswith(PROBLEM_JSON)) == (408, True), answer[:200]
    assert "of its first byte" in str(body["detail"])
    assert HEAD_TIMEOUT * 0.9 <= took < HEAD_TIMEOUT + 3, took


async def test_a_bug_in_a_handler_is_a_500_problem_json_and_its_traceback_goes_to_the_log(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        status, content_type, body, _ = await exchange(service.port, b"GET /bug HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 500
    assert content_type.startswith(PROBLEM_JSON)
    assert "a bug in a handler" not in json.dumps(body)  # no internals in the answer
    assert "a bug in a handler" in caplog.text  # they are in the server's log


async def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(service: Service) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    writer.write(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
    writer.write_eof()  # done sending (HTTP/1.0 style, or nc -N): the answer must still come back
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.0 200") or answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert answer.endswith(b'{"ok": true}'), answer[-200:]


@pytest.mark.parametrize("keep_alive", [True, False], ids=["HTTP/1.1 kept alive", "HTTP/1.0 half-closed"])
async def test_a_connection_the_client_closed_is_closed_by_the_server_too(service: Service, keep_alive: bool) -> None:
    """The probe's descriptor leak: 234 clients that read their answer and left exhausted a 256-descriptor limit."""
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        version = b"1.1" if keep_alive else b"1.0"
        writer.write(b"GET /nope HTTP/" + version + b"\r\nHost: a\r\n\r\n")  # a 404, as the probe asked
        if not keep_alive:
            writer.write_eof()
        await asyncio.wait_for(reader.readuntil(b"404: Not Found"), 5)  # the body: the whole answer is read
        writer.close()
        await writer.wait_closed()
    assert await until(lambda: not open_connections(service), timeout=5), f"{len(open_connections(service))} of 20 still open"


async def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "KEEPALIVE_S", 0.5)  # aiohttp's default held it an hour
    running = await start_service("keep-alive-test", web.Application())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"404: Not Found"), 5)  # the body: the whole answer is read
        began = time.perf_counter()
        assert await asyncio.wait_for(reader.read(), 10) == b"", "the server closes it: EOF, nothing else"
        assert 0.4 <= time.perf_counter() - began < 5
        writer.close()
    finally:
        await running.stop()


# --- lingering close: a client still sending when its error answer goes out still reads it ---------

OVERSIZED_HEAD = b"GET / HTTP/1.1\r\nHost: a\r\nX: "
FILLER = b"a" * 65536


def send_whole_request_then_read(port: int, head_bytes: int) -> bytes:
    """A blocking client as most are written: send the whole request (a ``head_bytes`` header), only then read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(OVERSIZED_HEAD)
        for _ in range(head_bytes // len(FILLER)):
            sock.sendall(FILLER)
        sock.sendall(b"\r\n\r\n")
        return read_to_eof(sock)


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes its side."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_a_client_still_sending_a_huge_head_reads_its_400_instead_of_a_reset(service: Service) -> None:
    for attempt in range(5):  # the old close raced the client's sends: whether the reset won depends on timing
        answer = await asyncio.to_thread(send_whole_request_then_read, service.port, 10 * 2**20)
        status, content_type, body = parse(answer)
        assert (status, body["status"]) == (400, 400), (attempt, body)
        assert content_type.startswith(PROBLEM_JSON)


def keep_sending(port: int, head: bytes, chunk: bytes, pause: float, give_up: float) -> tuple[float, int]:
    """Send ``head``, then ``chunk`` every ``pause`` s without reading, until the server cuts the connection.

    Seconds from the first byte until the cut, and the bytes sent after ``head``; a server that stops
    reading makes a send time out (raised), one that never cuts is given up after ``give_up`` s.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        began = time.perf_counter()
        sock.sendall(head)
        sent = 0
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # the cut: what a closed socket answers
            while time.perf_counter() - began < give_up:
                sock.sendall(chunk)
                sent += len(chunk)
                time.sleep(pause)
        return time.perf_counter() - began, sent


def open_connections(service: Service) -> list[web.RequestHandler]:
    """The service's connections the server still holds (a lingering one included)."""
    server = service.runner.server
    assert server is not None
    return list(server.connections)


def lingering(service: Service) -> bool:
    """Whether one of the service's connections is in its lingering close."""
    return any(isinstance(c, connections.ProblemRequestHandler) and c.lingering for c in open_connections(service))


async def test_a_client_that_never_stops_sending_is_cut_off_after_the_linger_and_others_are_served_meanwhile(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connections, "LINGER_S", 0.5)
    garbage = asyncio.ensure_future(asyncio.to_thread(keep_sending, service.port, OVERSIZED_HEAD, b"x" * 1024, 0.01, give_up=30))
    assert await until(lambda: lingering(service)), "the 400 was never followed by a linger"
    status, _, _, _ = await exchange(service.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status == 200
    assert lingering(service)  # answered while the linger ran: the linger does not block the loop
    assert not garbage.done()
    took, _ = await garbage
    assert connections.LINGER_S <= took < 4 * connections.LINGER_S, took  # was cut at once (and lost its 400)


async def test_a_flood_after_the_answer_is_dropped_as_it_comes_and_cut_at_the_byte_bound(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connections, "LINGER_S", 30.0)  # so only the byte bound can end this linger early
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        took, sent = await asyncio.to_thread(keep_sending, service.port, OVERSIZED_HEAD, FILLER, 0.0, give_up=20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert took < connections.LINGER_S / 2, took  # cut before the time bound: the server read past the byte bound
    assert sent >= connections.LINGER_MAX_BYTES, sent
    assert peak - before < connections.LINGER_MAX_BYTES / 8, (peak - before, sent)  # read and dropped, never kept


async def test_stopping_a_service_cuts_its_lingering_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connections, "LINGER_S", 30.0)
    running = await start_service("wire-test-stop", web.Application())
    garbage = asyncio.ensure_future(asyncio.to_thread(keep_sending, running.port, OVERSIZED_HEAD, b"x", 0.01, give_up=20))
    try:
        assert await until(lambda: lingering(running))
    finally:
        await running.stop()  # a notebook re-running its cells restarts services: no linger may outlive them
    took, _ = await garbage
    assert took < connections.LINGER_S / 2, took


def trickle_then_read(port: int, head: bytes, seconds: float) -> bytes:
    """Send ``head``, then one byte every 20 ms for ``seconds`` without reading; then read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            sock.sendall(b"a")
            time.sleep(0.02)
        return read_to_eof(sock)


async def test_a_client_still_sending_its_head_after_the_deadline_reads_its_408(service: Service) -> None:
    answer = await asyncio.to_thread(trickle_then_read, service.port, b"GET / HTTP/1.1\r\nX: ", 3 * HEAD_TIMEOUT)
    status, content_type, body = parse(answer)
    assert status == 408, body
    assert content_type.startswith(PROBLEM_JSON)


async def test_a_connection_ending_answer_to_an_unfinished_body_ends_at_once_not_after_aiohttps_10_s(
    service: Service,
) -> None:
    stalled = b"GET /bug HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n0123456789"  # the rest never comes
    status, content_type, _, took = await exchange(service.port, stalled, wait=15)
    assert status == 500
    assert content_type.startswith(PROBLEM_JSON)
    assert took < connections.LINGER_S, took  # the answer and its FIN at once, the linger after (was: EOF at 10 s)
    assert await until(lambda: not open_connections(service), timeout=4 * connections.LINGER_S)  # its FIN ends it


def test_the_linger_byte_bound_is_twice_the_largest_upload() -> None:
    from helpers.capstone.images import MAX_UPLOAD_BYTES  # core may not import a lesson package; its test checks the pair

    assert connections.LINGER_MAX_BYTES == 2 * MAX_UPLOAD_BYTES  # what LINGER_MAX_BYTES's docstring says


async def test_a_client_gone_before_its_answer_ends_no_linger_and_logs_no_error(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(20):  # the answer races the client's hang-up: either order must end quietly
        _, writer = await asyncio.open_connection("127.0.0.1", service.port)
        writer.write(b"GET /bug HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + bytes(1000))
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    assert await until(lambda: not open_connections(service), timeout=4 * connections.LINGER_S)
    assert "Unhandled exception" not in caplog.text  # was: write_eof's OSError on a socket the client reset
