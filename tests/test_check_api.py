"""The check API's answers to the learner's classic asyncio mistakes, and the two hint levels.

A check calls the learner's code through ``outcome`` (or ``ctx.call``); what goes wrong
there must be named: a blocking call (``time.sleep``, CPU work) is not "too slow", a
forgotten ``await`` is not "did not finish", a returned coroutine is not a wrong value.
Hints come in two levels: the idea under every failure, the code on request.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.grading.checks import CheckFailed, Checks, Context, expect, load_checks, outcome, run_check, service_stopped
from helpers.grading.notebook import checker, format_report
from helpers.grading.probes import LoopLag


async def test_a_blocking_call_is_named_not_reported_as_slow() -> None:
    def sleeps(seconds: float) -> Any:
        async def learner() -> None:
            time.sleep(seconds)  # noqa: ASYNC251 - the mistake under test: a blocking sleep in async code

        return learner

    with pytest.raises(CheckFailed, match=r"blocked the event loop for .*time\.sleep\(\)"):
        await outcome("wait_a_bit()", sleeps(0.6), timeout=0.5)  # blocks past the limit: the deadline never fired
    long_enough = await outcome("wait_a_bit()", sleeps(0.3), timeout=2.0)  # finished in time: the check judges
    assert long_enough.error is None
    assert long_enough.stalled_s >= 0.25


async def test_a_blocking_loop_that_then_hangs_is_named() -> None:
    async def blocks_then_waits() -> None:
        time.sleep(0.5)  # noqa: ASYNC251 - the mistake under test
        await asyncio.sleep(30)

    with pytest.raises(CheckFailed, match="blocked the event loop"):
        await outcome("consume()", blocks_then_waits, timeout=0.8)


async def test_a_forgotten_await_is_named() -> None:
    async def publish() -> None:
        await asyncio.sleep(0)

    async def learner() -> None:
        publish()  # type: ignore[unused-coroutine] # the mistake under test: the call is never awaited
        await asyncio.Event().wait()  # ...so what it should have done never happens, and this waits forever

    with pytest.raises(CheckFailed, match=r"publish\(\) was never awaited: write `await`"):
        await outcome("round_trip()", learner, timeout=0.3)


async def test_a_returned_coroutine_is_named() -> None:
    async def answer() -> int:
        return 42

    async def learner() -> Any:
        return answer()  # the mistake under test: `return await answer()` was meant

    with pytest.raises(CheckFailed, match=r"returned a coroutine .*`return await \.\.\.`"):
        await outcome("fetch()", learner)


async def test_a_coroutine_used_as_a_value_says_await_is_missing() -> None:
    async def body() -> dict[str, int]:
        return {"a": 1}

    async def learner() -> Any:
        return body()["a"]  # type: ignore[index] # the mistake under test: TypeError, 'coroutine' object is not subscriptable

    got = await outcome("fetch()", learner)
    assert isinstance(got.error, TypeError)
    assert "await" in got.raised


async def test_a_correct_call_is_not_blamed() -> None:
    async def learner() -> int:
        await asyncio.sleep(0.05)
        return 7

    got = await outcome("fine()", learner, timeout=2.0)
    assert got.value == 7
    assert got.error is None
    assert got.unawaited == ()
    assert got.stalled_s < 0.05 + 0.5


async def test_slow_async_code_still_reads_as_too_slow() -> None:
    async def learner() -> None:
        await asyncio.sleep(5)

    with pytest.raises(CheckFailed, match=r"did not finish within 0\.2 s$"):
        await outcome("slow()", learner, timeout=0.2)


async def test_a_check_that_times_out_on_a_blocking_call_says_so() -> None:
    demo = Checks("77_demo")

    @demo.check("q1", timeout=0.3)
    async def stuck(ctx: Context) -> None:
        """The learner's code gives control back."""
        await ctx.function("work")()

    async def work() -> None:
        time.sleep(0.7)  # noqa: ASYNC251 - the mistake under test: blocks past the check's limit...
        await asyncio.sleep(30)  # ...so the check's deadline fires only at this await

    result = await run_check(next(iter(demo)), {"work": work})
    assert not result.passed, result.message
    assert "blocked the event loop" in result.message, result.message


async def test_loop_lag_sees_blocking_and_not_waiting() -> None:
    async with LoopLag() as idle:
        await asyncio.sleep(0.2)
    assert idle.blocked < 0.1
    assert idle.blocked_fraction() < 0.5
    async with LoopLag() as busy:
        await asyncio.sleep(0.01)
        time.sleep(0.2)  # noqa: ASYNC251 - what the probe must see
    assert busy.longest >= 0.2
    assert busy.blocked >= 0.15
    assert busy.blocked_fraction() > 0.5


async def test_a_stopped_service_is_told_apart() -> None:
    from aiohttp import web

    from helpers.core.http import start_service

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({})

    svc = await start_service("api-probe", ok)
    ctx = Context({"svc": svc})
    assert ctx.running_service("svc") is svc
    assert not service_stopped(svc)
    await svc.stop()
    assert service_stopped(svc)
    with pytest.raises(CheckFailed, match="was stopped"):
        ctx.running_service("svc")


# --------------------------------------------------------------------------- two hint levels


def _hinted() -> Checks:
    demo = Checks("00_warmup")  # the id of a real lab, so checker() accepts it; the checks are this test's

    @demo.check("q1", hint="twice the input", code_hint="return 2 * x")
    async def doubles(ctx: Context) -> None:
        """double(2) is 4."""
        got = await ctx.call("double", 2)
        expect(got == 4, f"double(2) returned {got!r}")

    return demo


async def test_level_one_gives_the_idea_and_says_how_to_get_the_code() -> None:
    result = await run_check(next(iter(_hinted())), {"double": lambda x: x})
    text = format_report([result])
    assert "hint: twice the input" in text
    assert "return 2 * x" not in text
    assert 'await check("q1", hint=2)' in text
    code = format_report([result], hint=2)
    assert "hint: twice the input" in code
    assert "code: return 2 * x" in code
    assert "hint=2)" not in code


async def test_a_passing_check_shows_no_hint() -> None:
    result = await run_check(next(iter(_hinted())), {"double": lambda x: 2 * x})
    assert "hint" not in format_report([result], hint=2)


async def test_check_takes_a_hint_level_and_refuses_others(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import helpers.grading.notebook as notebook

    monkeypatch.setattr(notebook, "load_checks", lambda lab: _hinted())
    monkeypatch.delenv("COURSE_GRADING", raising=False)
    check = checker("00_warmup")
    report = await notebook.PendingCheck("00_warmup", "q1", {"double": lambda x: x}, 2)
    assert not report.passed
    assert "code: return 2 * x" in capsys.readouterr().out
    assert "hint=2" in repr(check("q1", hint=2))
    refused = await notebook.PendingCheck("00_warmup", "q1", {"double": lambda x: x}, 3)
    assert refused.results == []
    assert "hint=1 gives the idea, hint=2 the code" in capsys.readouterr().out


async def test_overlapping_calls_leave_the_warnings_module_as_it_was() -> None:
    """Two checks' calls in concurrent tasks, ending out of order, must not leave warnings swallowed."""
    import warnings

    before = (warnings.showwarning, getattr(warnings, "_showwarnmsg_impl", None), list(warnings.filters))
    second_started, first_done = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        await second_started.wait()  # the second call starts while this one runs...

    async def second() -> None:
        second_started.set()
        await first_done.wait()  # ...and ends after it: the calls overlap, not nest

    async def run_first() -> None:
        await outcome("first()", first, timeout=2.0)
        first_done.set()

    async def run_second() -> None:
        await asyncio.sleep(0)  # let the first call start first
        await outcome("second()", second, timeout=2.0)

    await asyncio.gather(run_first(), run_second())
    after = (warnings.showwarning, getattr(warnings, "_showwarnmsg_impl", None), list(warnings.filters))
    assert after == before


# --------------------------------------------------------------------------- fixtures from the context


async def test_context_fixtures_are_closed_newest_first_even_when_the_check_fails() -> None:
    """tmp_path, enter, callback and on_cleanup form one exit stack, closed in reverse after a failing check."""
    closed: list[str] = []
    seen: dict[str, Any] = {}

    class Sync:
        def __enter__(self) -> str:
            return "sync"

        def __exit__(self, *exc: object) -> None:
            closed.append("sync manager")

    class Async:
        async def __aenter__(self) -> str:
            return "async"

        async def __aexit__(self, *exc: object) -> None:
            closed.append("async manager")

    async def async_callback() -> None:
        closed.append("async callback")

    checks = Checks("00_fixtures")

    @checks.check("q1")
    async def uses_fixtures(ctx: Context) -> None:
        """Uses every fixture, then fails."""
        seen["folder"] = folder = ctx.tmp_path("fixture-")
        (folder / "scratch.txt").write_text("kept until the check ends")
        seen["entered"] = (await ctx.enter(Sync()), await ctx.enter(Async()))
        ctx.callback(closed.append, "sync callback")
        ctx.on_cleanup(async_callback)
        stack = ctx.exit_stack()
        stack.callback(closed.append, "stack")
        expect(False, "the check fails after taking its fixtures")

    result = await run_check(checks.of("q1")[0], {})
    assert not result.passed, result
    assert "fixtures" in result.message, result.message
    assert seen["entered"] == ("sync", "async")
    assert closed == ["stack", "async callback", "sync callback", "async manager", "sync manager"], closed
    assert not seen["folder"].exists(), "tmp_path must be removed after the check"


async def test_a_failing_cleanup_does_not_stop_the_others() -> None:
    closed: list[str] = []
    ctx = Context({})
    ctx.callback(closed.append, "first")

    def broken() -> None:
        raise RuntimeError("cleanup failed")

    ctx.on_cleanup(broken)
    await ctx.close()
    assert closed == ["first"]


async def test_forget_session_connects_once_with_a_clean_session_after_the_check() -> None:
    """ctx.forget_session(broker, id) ends the persistent session ``id`` when the check is over, not before."""
    connects: list[tuple[str, bool]] = []

    class FakeBroker:
        def client(self, client_id: str, *, clean_session: bool) -> Any:
            connects.append((client_id, clean_session))
            return _Nothing()

    class _Nothing:
        async def __aenter__(self) -> None:
            return None

        async def __aexit__(self, *exc: object) -> None:
            return None

    ctx = Context({})
    ctx.forget_session(FakeBroker(), "payments-1")
    assert connects == [], "the session is ended after the check, not when asked"
    await ctx.close()
    assert connects == [("payments-1", True)]


def test_a_checks_module_may_define_a_dataclass(tmp_path: Path) -> None:
    """load_module registers the module while it runs (dataclasses look it up), and removes it afterwards."""
    (tmp_path / "dc_lab.py").write_text(
        "from __future__ import annotations\n"
        "from dataclasses import dataclass, field\n"
        "from typing import ClassVar\n"
        "from helpers.grading.checks import Checks, Context, expect\n"
        "checks = Checks('95_dc_lab')\n\n"
        "@dataclass(frozen=True)\n"
        "class Probe:\n"
        "    name: str\n"
        "    seen: list[int] = field(default_factory=list)\n"
        "    kind: ClassVar[str] = 'probe'\n\n"
        "@checks.check('q1')\n"
        "async def uses_a_dataclass(ctx: Context) -> str:\n"
        "    '''A dataclass of the checks module works.'''\n"
        "    probe = Probe('p')\n"
        "    expect(probe.seen == [] and Probe.kind == 'probe', 'dataclass defaults')\n"
        "    return probe.name\n"
    )
    before = set(sys.modules)
    checks = load_checks("95_dc_lab", tmp_path)
    assert not {name for name in set(sys.modules) - before if name.startswith("_labchecks")}, "nothing left behind"
    result = asyncio.run(run_check(checks.of("q1")[0], {}))
    assert result.passed, result
    assert result.message == "p", result


async def test_wire_watch_sees_what_each_client_received_and_acknowledged(broker: Any, topic: str) -> None:
    """WireWatch records each delivery, and for each PUBACK what the snapshot said when it left."""
    from helpers.core.messaging import ack, manual_ack
    from helpers.core.receive import collect
    from helpers.grading.probes import WireWatch

    done: list[str] = []
    watch = WireWatch(broker, snapshot=lambda: list(done))
    async with manual_ack(watch.client("watched-manual", clean_session=True)) as client:
        await client.subscribe(topic, qos=1)
        async with broker.client() as sender:
            for text in ("one", "two"):
                await sender.publish(topic, text.encode(), qos=1)
        got = await collect(client, expected=2, idle=0.2, timeout=5)
        for message in got:
            done.append(bytes(message.payload).decode())  # the work, then the ack
            ack(client, message)
    assert [c.client_id for c in watch.clients] == ["watched-manual"]
    assert watch.clients[0].clean_session
    assert [(d.topic, d.payload, d.qos) for d in watch.on(topic)] == [(topic, b"one", 1), (topic, b"two", 1)]
    assert [d.seen_at_ack for d in watch.acked()] == [["one"], ["one", "two"]], "each ack sees the work done before it"
    assert not any(d.out_of_order for d in watch.deliveries)
    assert not watch.auto_acking()
    auto = WireWatch(broker)
    async with auto.client() as client:
        await client.subscribe(topic, qos=1)
        async with broker.client() as sender:
            await sender.publish(topic, b"three", qos=1)
        await collect(client, expected=1, idle=0.2, timeout=5)
    assert auto.auto_acking(), "a client that acknowledges on receipt is told apart"


def test_a_lab_split_over_modules_includes_its_parts_in_place() -> None:
    """checks.include(part) adds a part's checks where it is called; a part of another lab, or a name twice, is refused."""
    from helpers.grading.checks import LabError

    checks, part = Checks("96_split"), Checks("96_split")

    async def noop(ctx: Context) -> None:
        """Does nothing."""

    checks.check("q1", name="first")(noop)
    part.check("q2", name="second")(noop)
    checks.include(part)
    checks.check("q3", name="third")(noop)
    assert [c.name for c in checks] == ["first", "second", "third"]
    assert checks.questions == ["q1", "q2", "q3"]
    assert all(c.lab == "96_split" for c in checks)
    with pytest.raises(LabError, match="two checks named 'second'"):
        checks.include(part)
    with pytest.raises(LabError, match="cannot be included"):
        checks.include(Checks("97_other"))
