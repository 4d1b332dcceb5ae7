"""Checks of lab 00_warmup: a service, a message, a measurement.

Every check runs the learner's code for real: it calls their service over HTTP, starts
their handler as a fresh service, sends text through a broker of its own, and points
their measuring function at services whose latency it controls. Inputs are random on
each run, so an answer typed in by hand does not pass.
"""

from __future__ import annotations

import asyncio
import string

from aiohttp import web

from helpers.grading.checks import Checks, Context, expect, finite

checks = Checks("00_warmup")


def _name(ctx: Context) -> str:
    return "".join(ctx.rng.choice(string.ascii_letters) for _ in range(8))


# --------------------------------------------------------------------------- q1: a service


def _why(status: int) -> str:
    return " (500 means the handler raised: see the error printed under your cell)" if status == 500 else ""


async def _greeting(ctx: Context, url: str, params: dict[str, str] | None = None) -> object:
    answer = await ctx.http("GET", url, params=params)
    expect(answer.status == 200, f"GET {url} answered HTTP {answer.status}, expected 200{_why(answer.status)}")
    return answer.json()


@checks.check("q1", hint='read the name with request.query.get("name", "world") and answer web.json_response({...})')
async def service_greets_by_name(ctx: Context) -> None:
    """`svc` answers GET /?name=X with the JSON {"hello": X}."""
    svc = ctx.get("svc")
    expect(hasattr(svc, "url"), "`svc` should be what start_service(...) returned (it has a .url)")
    name = _name(ctx)
    body = await _greeting(ctx, f"{svc.url}/", {"name": name})
    expect(body == {"hello": name}, f"for ?name={name} expected {{'hello': '{name}'}}, got {body!r}")


@checks.check("q1", hint='the default is "world" when there is no ?name=')
async def service_greets_the_world(ctx: Context) -> None:
    """Without ?name= the service answers {"hello": "world"}."""
    svc = ctx.get("svc")
    expect(hasattr(svc, "url"), "`svc` should be what start_service(...) returned (it has a .url)")
    body = await _greeting(ctx, f"{svc.url}/")
    expect(body == {"hello": "world"}, f'expected {{"hello": "world"}}, got {body!r}')


@checks.check("q1", hidden=True, hint="hello(request) must work for any name, started under any service name")
async def handler_works_as_a_new_service(ctx: Context) -> None:
    """Hidden: `hello` started as a brand-new service greets an unusual name, as JSON."""
    handler = ctx.function("hello")
    svc = await ctx.service("hello", handler)
    name = f"Zo\u00eb O'Neil {_name(ctx)}"
    answer = await ctx.http("GET", f"{svc.url}/", params={"name": name})
    expect(answer.status == 200, f"hello answered HTTP {answer.status}, expected 200{_why(answer.status)}")
    expect(answer.headers.get("Content-Type", "").startswith("application/json"), "the answer should be JSON")
    expect(answer.json() == {"hello": name}, f"for {name!r} got {answer.json()!r}")


# --------------------------------------------------------------------------- q2: a message


async def _round_trip(ctx: Context, broker: object, topic: str, text: str) -> None:
    got = await ctx.call("round_trip", broker, topic, text, timeout=5.0)
    if isinstance(got, (bytes, bytearray)):
        raise AssertionError(f"round_trip returned bytes {bytes(got)!r}: decode the payload to a str")
    expect(got == text, f"sent {text!r} on {topic!r} but round_trip returned {got!r}")


@checks.check("q2", hint="subscribe first, then publish, then read one message from client.messages")
async def round_trip_returns_the_text(ctx: Context) -> None:
    """round_trip(broker, topic, text) returns the text a subscriber received."""
    broker = await ctx.broker()
    await _round_trip(ctx, broker, ctx.topic("warmup"), f"hello {_name(ctx)}")


@checks.check("q2", hint="use the topic and text you are given, do not keep a value from an earlier call")
async def round_trip_twice(ctx: Context) -> None:
    """Two calls on two topics each return their own text."""
    broker = await ctx.broker()
    for _ in range(2):
        await _round_trip(ctx, broker, ctx.topic("warmup"), f"again {_name(ctx)}")


@checks.check("q2", hidden=True, hint="publish the text on the broker you are given, on the topic you are given")
async def message_crosses_the_broker(ctx: Context) -> None:
    """Hidden: an independent subscriber sees the message on the broker."""
    broker = await ctx.broker()
    topic, text = ctx.topic("warmup"), f"observed {_name(ctx)}"
    async with broker.client() as observer:
        await observer.subscribe(topic, qos=1)
        await _round_trip(ctx, broker, topic, text)
        try:
            message = await asyncio.wait_for(anext(aiter(observer.messages)), 3.0)
        except TimeoutError:
            raise AssertionError(f"no message reached the broker on {topic!r}: round_trip never published") from None
        expect(message.payload == text.encode(), f"the broker carried {message.payload!r}, not {text!r}")


@checks.check("q2", hidden=True, hint="encode with text.encode() and decode with payload.decode() (UTF-8)")
async def unicode_text_survives(ctx: Context) -> None:
    """Hidden: non-ASCII text arrives unchanged (UTF-8 both ways)."""
    broker = await ctx.broker()
    await _round_trip(ctx, broker, ctx.topic("warmup"), f"gr\u00fc\u00dfe \u2713 {_name(ctx)}")


# --------------------------------------------------------------------------- q3: a measurement


async def _measure(ctx: Context, latency: float, n: int) -> tuple[float, int]:
    from helpers.core.http import Faults

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    svc = await ctx.service("measured", ok, faults=Faults(latency=latency))
    p50 = await ctx.call("measure_p50", svc.url, n, timeout=8.0)
    expect(finite(p50), f"measure_p50 should return a number of milliseconds, got {p50!r}")
    return float(p50), svc.stats.requests


@checks.check("q3", hint="time_calls(call, n) sends the requests one after another")
async def sends_n_requests(ctx: Context) -> str:
    """measure_p50(url, 20) sends exactly 20 requests to url."""
    _, seen = await _measure(ctx, 0.01, 20)
    expect(seen == 20, f"the service saw {seen} requests, expected 20")
    return "20 requests seen"


@checks.check("q3", hint="summary().p50_ms is already in milliseconds")
async def p50_in_milliseconds(ctx: Context) -> str:
    """Against a service that takes 50 ms, measure_p50 reports 50-300 ms."""
    p50, _ = await _measure(ctx, 0.05, 10)
    expect(p50 >= 1 or p50 <= 0, f"p50 = {p50:g}: that looks like seconds, return milliseconds")
    expect(50 <= p50 <= 300, f"the service takes 50 ms per request but you measured p50 = {p50:.1f} ms")
    return f"measured {p50:.0f} ms"


@checks.check("q3", hint="p50_ms = await measure_p50(svc.url, 20)")
async def notebook_p50_is_plausible(ctx: Context) -> str:
    """`p50_ms` in the notebook agrees with a fresh measurement of `svc`."""
    from helpers.core.measure import time_calls

    reported, svc = ctx.get("p50_ms"), ctx.get("svc")
    expect(finite(reported) and reported > 0, f"`p50_ms` should be a positive number of ms, got {reported!r}")
    expect(hasattr(svc, "url"), "`svc` should be the hello service")
    run = await time_calls(lambda: ctx.http("GET", f"{svc.url}/"), 20)
    ours = run.summary().p50_ms
    expect(reported <= max(10 * ours, ours + 50), f"you report {reported:.1f} ms but the service answers in ~{ours:.1f} ms")
    return f"you: {reported:.2f} ms, re-measured: {ours:.2f} ms"


@checks.check("q3", hidden=True, hint="use the n you are given")
async def respects_n(ctx: Context) -> None:
    """Hidden: measure_p50(url, 7) against a 100 ms service: 7 requests, p50 100-400 ms."""
    p50, seen = await _measure(ctx, 0.1, 7)
    expect(seen == 7, f"measure_p50(url, 7) sent {seen} requests")
    expect(100 <= p50 <= 400, f"p50 = {p50:.1f} ms for a 100 ms service")


@checks.check("q3", hidden=True, hint="the median (p50), not the mean: one slow request must not move it")
async def median_not_mean(ctx: Context) -> None:
    """Hidden: 3 slow answers out of 10 do not move the median."""
    calls = [0]

    async def mostly_fast(_: web.Request) -> web.Response:
        calls[0] += 1
        if calls[0] % 10 in (3, 6, 9):
            await asyncio.sleep(0.4)  # the fake service's slow answers: the latency the median must ignore
        return web.json_response({"ok": True})

    svc = await ctx.service("mostly-fast", mostly_fast)
    p50 = await ctx.call("measure_p50", svc.url, 10, timeout=8.0)
    expect(finite(p50), f"measure_p50 should return a number, got {p50!r}")
    expect(p50 < 100, f"7 of 10 answers were instant but p50 = {p50:.1f} ms (is that the mean?)")
