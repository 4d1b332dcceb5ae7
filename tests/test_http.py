"""helpers.core.http: in-loop services, the name registry, fault knobs turned while running, stats."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from helpers.core import http
from helpers.core.http import Faults, Stats, get_service, running_services, start_service, stop_all
from helpers.core.problems import PROBLEM_BASE, PROBLEM_JSON


async def ok(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, float]:
    """Status and seconds taken for one GET."""
    start = time.perf_counter()
    async with session.get(url) as response:
        await response.read()
        return response.status, time.perf_counter() - start


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- Faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"latency": -0.1}, "latency and jitter are seconds >= 0"),
        ({"jitter": -1}, "latency and jitter are seconds >= 0"),
        ({"error_rate": 1.5}, "error_rate is a fraction between 0 and 1"),
        ({"error_rate": -0.01}, "error_rate is a fraction between 0 and 1"),
    ],
)
def test_faults_reject_nonsense(kwargs: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Faults(**kwargs)


def test_faults_validate_catches_later_changes() -> None:
    faults = Faults()
    faults.error_rate = 2
    with pytest.raises(ValueError, match="error_rate"):
        faults.validate()


def test_seeded_faults_repeat_and_stay_in_range() -> None:
    a, b = Faults(latency=0.1, jitter=0.05, error_rate=0.3, seed=7), Faults(latency=0.1, jitter=0.05, error_rate=0.3, seed=7)
    draws_a = [(a.delay(), a.should_fail()) for _ in range(200)]
    assert draws_a == [(b.delay(), b.should_fail()) for _ in range(200)]
    assert all(0.1 <= d <= 0.15 for d, _ in draws_a)
    failures = sum(f for _, f in draws_a)
    assert 30 <= failures <= 90, f"error_rate 0.3 gave {failures}/200 failures"


def test_faults_reset_and_defaults() -> None:
    faults = Faults(latency=1, jitter=1, error_rate=1, down=True)
    faults.reset()
    assert (faults.latency, faults.jitter, faults.error_rate, faults.down) == (0, 0, 0, False)
    assert faults.delay() == 0
    assert not faults.should_fail()


# --- start_service and the registry ----------------------------------------------------------------


async def test_handler_service_answers_every_path(session: aiohttp.ClientSession) -> None:
    svc = await start_service("plain", ok)
    assert svc.url.startswith("http://127.0.0.1:")
    for path in ("/", "/a/b?c=1"):
        status, _ = await get(session, svc.url + path)
        assert status == 200
    assert svc.stats.requests == 2
    assert svc.stats.errors == 0
    assert "plain" in repr(svc)


async def test_route_table_and_application_targets(session: aiohttp.ClientSession) -> None:
    routes = web.RouteTableDef()

    @routes.get("/items/{n}")
    async def item(request: web.Request) -> web.Response:
        return web.json_response({"n": int(request.match_info["n"])})

    svc = await start_service("routes", routes)
    async with session.get(svc.url + "/items/3") as response:
        assert await response.json() == {"n": 3}
    status, _ = await get(session, svc.url + "/nope")
    assert status == 404

    app = web.Application()
    app.router.add_get("/hello", ok)
    svc2 = await start_service("app", app, faults=Faults(down=True))
    status, _ = await get(session, svc2.url + "/hello")
    assert status == 503, "the fault middleware must wrap a ready-made Application too"


@pytest.mark.parametrize("name", ["", None])
async def test_service_needs_a_name(name: object) -> None:
    with pytest.raises(ValueError, match="non-empty name"):
        await start_service(name, ok)  # type: ignore[arg-type]  # a bad argument on purpose


@pytest.mark.parametrize("target", [42, "not a handler", None])
async def test_bad_target_is_a_clear_type_error(target: object) -> None:
    with pytest.raises(TypeError, match="needs a handler, a RouteTableDef or a web.Application"):
        await start_service("bad", target)  # type: ignore[arg-type]  # a bad argument on purpose
    assert "bad" not in running_services()


async def test_bad_target_leaves_the_running_service_alone(session: aiohttp.ClientSession) -> None:
    """Re-running a cell with a typo must not take the working service down."""
    svc = await start_service("inventory", ok)
    with pytest.raises(TypeError):
        await start_service("inventory", 42)  # type: ignore[arg-type]  # a bad argument on purpose
    assert get_service("inventory") is svc
    assert (await get(session, svc.url))[0] == 200


async def test_started_application_cannot_be_reused() -> None:
    app = web.Application()
    app.router.add_get("/", ok)
    await start_service("once", app)
    with pytest.raises(ValueError, match="already started once"):
        await start_service("twice", app)


async def test_same_name_replaces_and_frees_the_old_port(session: aiohttp.ClientSession) -> None:
    old = await start_service("inventory", ok)
    old_port = old.port
    assert accepts(old_port)
    new = await start_service("inventory", ok)
    assert new.port != old_port
    assert not accepts(old_port), "the replaced service still listens"
    assert running_services() == {"inventory": new}
    assert get_service("inventory") is new
    status, _ = await get(session, new.url)
    assert status == 200


async def test_get_service_unknown_lists_running() -> None:
    await start_service("alpha", ok)
    with pytest.raises(KeyError, match="no service named 'beta'.*running: alpha"):
        get_service("beta")


async def test_stop_and_stop_all() -> None:
    a, b = await start_service("a", ok), await start_service("b", ok)
    await a.stop()
    assert not accepts(a.port)
    assert set(running_services()) == {"b"}
    await stop_all()
    assert running_services() == {}
    assert not accepts(b.port)


async def test_stop_does_not_wait_for_slow_handlers(session: aiohttp.ClientSession) -> None:
    entered = asyncio.Event()

    async def stuck(_: web.Request) -> web.Response:
        entered.set()
        await asyncio.sleep(60)
        return web.Response()

    svc = await start_service("stuck", stuck)
    request = asyncio.ensure_future(get(session, svc.url))
    await asyncio.wait_for(entered.wait(), 5)
    start = time.perf_counter()
    await svc.stop()
    assert time.perf_counter() - start < 3, "shutdown should cut in-flight requests after a short grace"
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(request, 5)


# --- fault knobs while running --------------------------------------------------------------------------


async def test_latency_knob_adds_measurable_delay(session: aiohttp.ClientSession) -> None:
    svc = await start_service("slow", ok)
    base = min([(await get(session, svc.url))[1] for _ in range(3)])
    svc.faults.latency = 0.2
    slowed = [(await get(session, svc.url))[1] for _ in range(3)]
    assert min(slowed) >= 0.2
    assert min(slowed) - base >= 0.15
    svc.faults.latency = 0
    assert (await get(session, svc.url))[1] < 0.15


async def test_jitter_spreads_latency(session: aiohttp.ClientSession) -> None:
    svc = await start_service("jittery", ok, faults=Faults(latency=0.01, jitter=0.1, seed=3))
    times = [(await get(session, svc.url))[1] for _ in range(8)]
    assert min(times) >= 0.01
    assert max(times) - min(times) > 0.02, f"jitter 0.1 s gave a spread of only {max(times) - min(times):.3f} s"


async def test_error_rate_one_gives_500s_then_recovers(session: aiohttp.ClientSession) -> None:
    svc = await start_service("flaky", ok)
    svc.faults.error_rate = 1.0
    assert [(await get(session, svc.url))[0] for _ in range(5)] == [500] * 5
    svc.faults.error_rate = 0.0
    assert (await get(session, svc.url))[0] == 200
    assert (svc.stats.requests, svc.stats.errors) == (6, 5)


async def test_down_gives_503_at_once_even_with_latency(session: aiohttp.ClientSession) -> None:
    svc = await start_service("sick", ok, faults=Faults(latency=1.0))
    svc.faults.down = True
    status, seconds = await get(session, svc.url)
    assert status == 503
    assert seconds < 0.5
    async with session.get(svc.url) as response:
        assert await response.json() == {"error": "service down"}
    svc.faults.reset()
    assert (await get(session, svc.url))[0] == 200


# --- stats ------------------------------------------------------------------------------------------------


async def test_stats_count_requests_arrivals_and_concurrency(session: aiohttp.ClientSession) -> None:
    gate = asyncio.Event()
    inside = 0
    all_in = asyncio.Event()

    async def held(_: web.Request) -> web.Response:
        nonlocal inside
        inside += 1
        if inside == 5:
            all_in.set()
        await gate.wait()
        return web.Response(text="done")

    svc = await start_service("held", held)
    calls = [asyncio.ensure_future(get(session, svc.url)) for _ in range(5)]
    await asyncio.wait_for(all_in.wait(), 5)
    assert svc.stats.in_flight == 5
    gate.set()
    assert [status for status, _ in await asyncio.gather(*calls)] == [200] * 5
    stats = svc.stats
    assert (stats.requests, stats.errors, stats.in_flight, stats.max_in_flight) == (5, 0, 0, 5)
    assert len(stats.arrivals) == 5
    assert stats.arrivals == sorted(stats.arrivals)
    stats.reset()
    assert stats == Stats()


# --- read_body: Content-Encoding decoded under the limit -------------------------------------------

BODY_LIMIT = 100_000


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    """A service that reads its body with read_body (limit BODY_LIMIT) and answers its length and first bytes."""

    async def echo(request: web.Request) -> web.Response:
        try:
            data = await http.read_body(request, BODY_LIMIT)
        except http.BodyRefused as exc:
            return http.body_problem(exc)
        return web.json_response({"size": len(data), "head": data[:8].hex()})

    app = web.Application(handler_args=http.DECODES_ITSELF)
    app.router.add_post("/", echo)
    service = await start_service("echo-body", app)
    try:
        yield service.url
    finally:
        await service.stop()


BODY = bytes(range(256)) * 100
DECODED = {
    "gzip": gzip.compress(BODY),
    "x-gzip": gzip.compress(BODY),
    "GZIP": gzip.compress(BODY),
    "deflate": zlib.compress(BODY),
    "identity": BODY,
    "gzip, identity": gzip.compress(BODY),
    "deflate, gzip": gzip.compress(zlib.compress(BODY)),
    "": BODY,  # an empty list element names no coding (RFC 9110 5.6.1): the body as sent
    ",,,": BODY,
    "gzip, ,": gzip.compress(BODY),
}


@pytest.mark.parametrize("encoding", list(DECODED))
async def test_read_body_decodes_gzip_and_deflate_itself(session: aiohttp.ClientSession, echo_url: str, encoding: str) -> None:
    async with session.post(echo_url, data=DECODED[encoding], headers={"Content-Encoding": encoding}) as response:
        assert response.status == 200, await response.text()
        assert await response.json() == {"size": len(BODY), "head": BODY[:8].hex()}


async def test_read_body_takes_raw_deflate_and_a_gzip_of_two_members(session: aiohttp.ClientSession, echo_url: str) -> None:
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for encoding, data in (
        ("deflate", raw.compress(BODY) + raw.flush()),
        ("gzip", gzip.compress(BODY[:1000]) + gzip.compress(BODY[1000:])),
    ):
        async with session.post(echo_url, data=data, headers={"Content-Encoding": encoding}) as response:
            assert (await response.json())["size"] == len(BODY)


REFUSED_BODIES = {
    "br": (b"\x0b\x02\x80hello\x03", 415, "unsupported-encoding"),
    "gzip, zstd": (b"x", 415, "unsupported-encoding"),
    "gzip": (gzip.compress(bytes(BODY_LIMIT + 1)), 413, "too-large"),  # a bomb: refused at the limit, never inflated
    "deflate": (zlib.compress(BODY)[:-20], 400, "undecodable-body"),  # cut short
    "x-gzip": (b"not gzip at all", 400, "undecodable-body"),
}


@pytest.mark.parametrize("encoding", list(REFUSED_BODIES))
async def test_read_body_refuses_what_it_cannot_decode(session: aiohttp.ClientSession, echo_url: str, encoding: str) -> None:
    data, status, slug = REFUSED_BODIES[encoding]
    async with session.post(echo_url, data=data, headers={"Content-Encoding": encoding}) as response:
        body = await response.json(content_type=None)
        assert response.status == status, body
        assert response.content_type == PROBLEM_JSON
        assert body["type"] == PROBLEM_BASE + slug
    if status == 415:
        assert response.headers["Accept-Encoding"] == "gzip, deflate, identity"
        assert "gzip, deflate, identity" in body["detail"]
