"""Checks of lab 00_warmup: a service, a message, a measurement.

Every check runs the learner's code for real: it calls their service over HTTP, starts
their handler as a fresh service, sends text through a broker of its own, and points
their measuring function at services whose latency it controls. Inputs are random on
each run, so an answer typed in by hand does not pass.
"""

from __future__ import annotations

import asyncio
import string
from typing import Any

from aiohttp import web

from helpers.grading.checks import CheckFailed, Checks, Context, expect, finite, outcome

checks = Checks("00_warmup")


def _name(ctx: Context) -> str:
    return "".join(ctx.rng.choice(string.ascii_letters) for _ in range(8))


# --------------------------------------------------------------------------- q1: a service


def _why(status: int) -> str:
    return " (500 means the handler raised: see the error printed under your cell)" if status == 500 else ""


async def _svc(ctx: Context) -> Any:
    """The learner's running hello service, or the reason it is not there (unwritten handler, stopped)."""
    if "svc" not in ctx.ns and callable(ctx.ns.get("hello")):
        from aiohttp.test_utils import make_mocked_request

        handler = ctx.ns["hello"]
        try:
            await outcome("hello()", lambda: handler(make_mocked_request("GET", "/?name=Ada")), 2.0)
        except CheckFailed as exc:
            if "not written yet" in str(exc):
                raise CheckFailed(
                    "write the handler `hello` first (it still raises NotImplementedError); its cell then starts "
                    "the service and keeps it in `svc`"
                ) from None
            raise
    svc = ctx.running_service("svc")
    name = getattr(svc, "name", "hello")
    expect(name == "hello", f'the lab asks for a service called "hello", but `svc` is the service {name!r}')
    return svc


async def _greeting(ctx: Context, url: str, params: dict[str, str] | None = None) -> object:
    answer = await ctx.http("GET", url, params=params)
    expect(answer.status == 200, f"GET {url} answered HTTP {answer.status}, expected 200{_why(answer.status)}")
    _is_json(answer.headers)
    return answer.json()


def _is_json(headers: dict[str, str]) -> None:
    kind = headers.get("Content-Type", "")
    expect(
        kind.startswith("application/json"),
        f"the answer is labelled {kind or 'with no Content-Type'}, not application/json: answer with a JSON response",
    )


@checks.check(
    "q1",
    hint="the name comes from the query string, with a default; the answer is JSON",
    code_hint='name = request.query.get("name", "world"); return web.json_response({"hello": name})',
)
async def service_greets_by_name(ctx: Context) -> None:
    """`svc` answers GET /?name=X with the JSON {"hello": X} (Content-Type application/json)."""
    svc = await _svc(ctx)
    name = _name(ctx)
    body = await _greeting(ctx, f"{svc.url}/", {"name": name})
    expect(body == {"hello": name}, f"for ?name={name} expected {{'hello': '{name}'}}, got {body!r}")


@checks.check(
    "q1",
    hint="without ?name= there is nothing to read: fall back to the default the lab names",
    code_hint='request.query.get("name", "world")',
)
async def service_greets_the_world(ctx: Context) -> None:
    """Without ?name= the service answers {"hello": "world"}."""
    svc = await _svc(ctx)
    body = await _greeting(ctx, f"{svc.url}/")
    expect(body == {"hello": "world"}, f'expected {{"hello": "world"}}, got {body!r}')


@checks.check(
    "q1",
    hidden=True,
    hint="the handler must work for any name, started under any service name",
    code_hint='web.json_response({"hello": request.query.get("name", "world")})',
)
async def handler_works_as_a_new_service(ctx: Context) -> None:
    """Hidden: `hello` started as a brand-new service greets an unusual name, as JSON."""
    from aiohttp.test_utils import make_mocked_request

    handler = ctx.function("hello")
    await outcome("hello()", lambda: handler(make_mocked_request("GET", "/?name=Ada")), 2.0)  # unwritten: say so
    svc = await ctx.service("hello", handler)
    name = f"Zo\u00eb O'Neil {_name(ctx)}"
    answer = await ctx.http("GET", f"{svc.url}/", params={"name": name})
    expect(answer.status == 200, f"hello answered HTTP {answer.status}, expected 200{_why(answer.status)}")
    _is_json(answer.headers)
    expect(answer.json() == {"hello": name}, f"for {name!r} got {answer.json()!r}")


# --------------------------------------------------------------------------- q2: a message


class _Watched:
    """The broker as round_trip sees it: real clients, whose subscribe and publish calls are noted in order."""

    def __init__(self, broker: Any) -> None:
        self._broker = broker
        self.calls: list[tuple[str, str, int]] = []  # (what, topic, qos)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def client(self, *args: Any, **kwargs: Any) -> Any:
        client = self._broker.client(*args, **kwargs)
        subscribe, publish = client.subscribe, client.publish

        async def watched_subscribe(topic: Any, *rest: Any, **options: Any) -> Any:
            self.calls.append(("subscribe", str(topic), int(options.get("qos", rest[0] if rest else 0))))
            return await subscribe(topic, *rest, **options)

        async def watched_publish(topic: Any, *rest: Any, **options: Any) -> Any:
            self.calls.append(("publish", str(topic), int(options.get("qos", rest[1] if len(rest) > 1 else 0))))
            return await publish(topic, *rest, **options)

        # the learner reads these names when an `await` is missing: "the coroutine subscribe() was never awaited"
        watched_subscribe.__qualname__, watched_publish.__qualname__ = "Client.subscribe", "Client.publish"
        client.subscribe, client.publish = watched_subscribe, watched_publish  # noted, then passed on
        return client

    def published_first(self, topic: str) -> bool:
        """True when ``topic`` was published before anything subscribed to it (or with no subscribe at all)."""
        order = [what for what, t, _ in self.calls if t == topic]
        return "publish" in order and ("subscribe" not in order or order.index("publish") < order.index("subscribe"))


async def _round_trip(ctx: Context, broker: Any, topic: str, text: str) -> _Watched:
    watched = _Watched(broker)
    try:
        got = await ctx.call("round_trip", watched, topic, text, timeout=5.0)
    except CheckFailed as exc:
        if watched.published_first(topic) and "never awaited" not in str(exc):
            raise CheckFailed(
                f"round_trip published on {topic!r} before subscribing to it, so the subscriber never got the text: "
                "a subscriber only receives what is published after it subscribed"
            ) from None
        raise exc
    if isinstance(got, (bytes, bytearray)):
        raise AssertionError(f"round_trip returned bytes {bytes(got)!r}: decode the payload to a str")
    expect(got == text, f"sent {text!r} on {topic!r} but round_trip returned {got!r}")
    return watched


@checks.check(
    "q2",
    hint="two clients, one subscribing and one publishing; the subscriber must be listening before the text is sent",
    code_hint="await subscriber.subscribe(topic, qos=1); await publisher.publish(topic, text.encode(), qos=1); "
    "async for message in subscriber.messages: return message.payload.decode()",
)
async def round_trip_returns_the_text(ctx: Context) -> None:
    """round_trip(broker, topic, text) returns the text a subscriber received."""
    broker = await ctx.broker()
    await _round_trip(ctx, broker, ctx.topic("warmup"), f"hello {_name(ctx)}")


@checks.check(
    "q2",
    hint="use the topic and text you are given, do not keep a value from an earlier call",
    code_hint="subscribe and publish on `topic`, publish `text`",
)
async def round_trip_twice(ctx: Context) -> None:
    """Two calls on two topics each return their own text."""
    broker = await ctx.broker()
    for _ in range(2):
        await _round_trip(ctx, broker, ctx.topic("warmup"), f"again {_name(ctx)}")


@checks.check(
    "q2",
    hidden=True,
    hint="publish the text on the broker you are given, on the topic you are given",
    code_hint="async with broker.client() as publisher: await publisher.publish(topic, text.encode(), qos=1)",
)
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


@checks.check(
    "q2",
    hint="the lab asks for QoS 1: the broker confirms it has the message",
    code_hint="await publisher.publish(topic, text.encode(), qos=1)",
)
async def publishes_at_qos_1(ctx: Context) -> str:
    """The text is published with QoS 1, through the broker round_trip is given."""
    broker = await ctx.broker()
    topic = ctx.topic("warmup")
    watched = await _round_trip(ctx, broker, topic, f"qos {_name(ctx)}")
    levels = [qos for what, t, qos in watched.calls if what == "publish" and t == topic]
    expect(levels, "round_trip returned the text without publishing it through the broker it was given")
    expect(all(q == 1 for q in levels), f"round_trip published with QoS {levels[0]}: the lab asks for QoS 1 (qos=1)")
    return "published at QoS 1"


@checks.check(
    "q2",
    hint="MQTT carries bytes: encode the text as UTF-8 on the way in, decode it as UTF-8 on the way out",
    code_hint="text.encode() to publish, message.payload.decode() to read",
)
async def unicode_text_survives(ctx: Context) -> str:
    """Non-ASCII text (gr\u00fc\u00dfe \u2713) arrives unchanged: UTF-8 both ways."""
    broker = await ctx.broker()
    text = f"gr\u00fc\u00dfe \u2713 {_name(ctx)}"
    try:
        await _round_trip(ctx, broker, ctx.topic("warmup"), text)
    except AssertionError as exc:  # CheckFailed included: when the text is what broke, say which rule
        if not any(sign in str(exc) for sign in ("Unicode", "codec", "returned")):
            raise
        raise CheckFailed(f"{exc}: the lab asks for UTF-8, so encode the text as UTF-8 and decode it as UTF-8") from None
    return f"{text!r} arrived unchanged"


# --------------------------------------------------------------------------- q3: a measurement


class _Counted:
    """A check's own service that takes ``latency`` s per request and notes how many requests overlapped."""

    def __init__(self, latency: float) -> None:
        self.latency, self.requests, self.in_flight, self.most_at_once = latency, 0, 0, 0

    async def handle(self, _: web.Request) -> web.Response:
        """The request handler (a bound coroutine method: aiohttp deprecates callable objects as handlers)."""
        self.requests += 1
        self.in_flight += 1
        self.most_at_once = max(self.most_at_once, self.in_flight)
        try:
            await asyncio.sleep(self.latency)  # the fake service's latency: what the learner measures
        finally:
            self.in_flight -= 1
        return web.json_response({"ok": True})


async def _measure(ctx: Context, latency: float, n: int, high: float = float("inf")) -> tuple[float, _Counted]:
    """The learner's p50 of ``n`` calls to a service of ``latency`` s, and what that service saw.

    A stall of this machine only ever raises a p50, so one above ``high`` is measured again, at
    most 3 times: a mistake that reports too much (a total, a sum) is too high in every run.
    """
    counted = _Counted(latency)
    svc = await ctx.service("measured", counted.handle)
    for _ in range(3):
        counted.requests = 0  # the last run's count: each run must send n
        p50 = await ctx.call("measure_p50", svc.url, n, timeout=8.0)
        expect(finite(p50), f"measure_p50 should return a number of milliseconds, got {p50!r}")
        if float(p50) <= high:
            break
    return float(p50), counted


def _one_after_another(counted: _Counted) -> None:
    expect(
        counted.most_at_once <= 1,
        f"{counted.most_at_once} requests were in flight at once: the lab asks for requests one after another "
        "(each one's latency alone, not the service under a burst)",
    )


@checks.check(
    "q3",
    hint="time_calls calls your one-request function n times, one after another",
    code_hint="run = await time_calls(one_request, n)",
)
async def sends_n_requests(ctx: Context) -> str:
    """measure_p50(url, 20) sends exactly 20 requests to url, one after another."""
    _, counted = await _measure(ctx, 0.01, 20)
    expect(counted.requests == 20, f"the service saw {counted.requests} requests, expected 20")
    _one_after_another(counted)
    return "20 requests seen, one at a time"


@checks.check(
    "q3",
    hint="the summary's percentiles are already in milliseconds",
    code_hint="return run.summary().p50_ms",
)
async def p50_in_milliseconds(ctx: Context) -> str:
    """Against a service that takes 50 ms, measure_p50 reports 50-300 ms."""
    p50, _ = await _measure(ctx, 0.05, 10, high=300)
    expect(p50 >= 1 or p50 <= 0, f"p50 = {p50:g}: that looks like seconds, return milliseconds")
    expect(50 <= p50 <= 300, f"the service takes 50 ms per request but you measured p50 = {p50:.1f} ms")
    return f"measured {p50:.0f} ms"


async def _hello_fails(ctx: Context) -> str:
    """When GET / of the hello service fails (a Q1 bug), why `p50_ms` is no number; "" when it answers.

    Q3 loses no point for it: its own checks measure services of theirs. The learner's
    measure_p50 must still give no number for that service (the notebook kept what it returned).
    """
    svc = await _svc(ctx)
    answer = await ctx.http("GET", f"{svc.url}/")
    if answer.status == 200:
        return ""
    again = await ctx.call("measure_p50", f"{svc.url}/", 20, timeout=8.0)
    expect(not finite(again), f"`p50_ms` is {ctx.ns.get('p50_ms')!r}, but measure_p50 of the hello service gives {again!r}")
    return (
        f"every request failed: the hello service answers GET / with HTTP {answer.status} (see Q1's checks), so "
        "`p50_ms` is nan; no point lost here, fix Q1 and measure again"
    )


@checks.check(
    "q3",
    hint="measure the hello service itself, and keep the number your function returned",
    code_hint='p50_ms = await measure_p50(f"{svc.url}/", 20)',
    timing=True,
)
async def notebook_p50_is_plausible(ctx: Context) -> str:
    """`p50_ms` in the notebook agrees with a fresh measurement of `svc`."""
    from helpers.core.measure import time_calls

    reported = ctx.get("p50_ms")
    if not finite(reported):
        failed = await _hello_fails(ctx)
        if failed:
            return failed
    expect(finite(reported) and reported > 0, f"`p50_ms` should be a positive number of ms, got {reported!r}")
    svc = await _svc(ctx)
    run = await time_calls(lambda: ctx.http("GET", f"{svc.url}/"), 20)
    ours = run.summary().p50_ms
    expect(reported <= max(10 * ours, ours + 50), f"you report {reported:.1f} ms but the service answers in ~{ours:.1f} ms")
    return f"you: {reported:.2f} ms, re-measured: {ours:.2f} ms"


@checks.check("q3", hidden=True, hint="use the n you are given", code_hint="await time_calls(one_request, n)")
async def respects_n(ctx: Context) -> None:
    """Hidden: measure_p50(url, 7) against a 100 ms service: 7 requests one at a time, p50 100-400 ms."""
    p50, counted = await _measure(ctx, 0.1, 7, high=400)
    expect(counted.requests == 7, f"measure_p50(url, 7) sent {counted.requests} requests")
    _one_after_another(counted)
    expect(100 <= p50 <= 400, f"p50 = {p50:.1f} ms for a 100 ms service")


@checks.check(
    "q3",
    hint="the median (p50), not the mean: a few slow answers must not move it",
    code_hint="return run.summary().p50_ms",
)
async def median_not_mean(ctx: Context) -> str:
    """3 slow answers (400 ms) out of 10 do not move the median: it stays under 100 ms."""
    calls = [0]

    async def mostly_fast(_: web.Request) -> web.Response:
        calls[0] += 1
        if calls[0] % 10 in (3, 6, 9):
            await asyncio.sleep(0.4)  # the fake service's slow answers: the latency the median must ignore
        return web.json_response({"ok": True})

    svc = await ctx.service("mostly-fast", mostly_fast)
    for _ in range(3):  # a stall raises a median once; the mean (about 120 ms) is over 100 ms in every run
        p50 = await ctx.call("measure_p50", svc.url, 10, timeout=8.0)
        expect(finite(p50), f"measure_p50 should return a number, got {p50!r}")
        if p50 < 100:
            break
    expect(
        p50 < 100,
        f"7 of 10 answers were instant and 3 took 400 ms, but you report {p50:.1f} ms: that is near the mean "
        "(about 120 ms); the lab asks for the median (p50), which the 3 slow answers do not move",
    )
    return f"p50 {p50:.1f} ms"
