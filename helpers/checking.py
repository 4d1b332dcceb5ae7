"""Lab checks: instant feedback in the notebook, and the very same checks for the grader.

A lab is a notebook the learner completes; its checks *run the learner's code* (call
their handler over HTTP, push messages through a broker, measure their service) and
say, in one line each, what worked and what did not. The same check functions give
feedback in the notebook (``await check("q1")``) and score the submission in the
grader (``python -m helpers.grade``), which also runs the *hidden* ones.

Authoring a lab: the whole pattern
----------------------------------
1. Write ``solutions/NN_slug.ipynb`` (e.g. ``solutions/02_sync_chain.ipynb``). Its first
   code cell binds the checker::

       from helpers.checking import checker
       check = checker("02_sync_chain")        # the notebook's file name, no .ipynb

   Mark the learner's part of a cell; ``python -m helpers.labs`` writes the lab::

       async def hello(request):
           # BEGIN SOLUTION
           # HINT: request.query.get("name", "world")     <- HINT lines stay in the lab
           return web.json_response({"hello": request.query.get("name", "world")})
           # END SOLUTION

   becomes ``# HINT: ...`` + ``raise NotImplementedError("your code here")`` at the
   marker's indentation. A ``# LAB: <code>`` line inside the block replaces that
   ``raise`` with ``<code>`` (e.g. ``# LAB: p50_ms = ...``). A cell tagged
   ``solution_only`` is left out of the lab. In Markdown, text between
   ``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->`` becomes a prompt.
   After each question put a cell ``await check("q1")``.

2. Write ``helpers/labchecks/slug.py`` (the lab id without its number: ``sync_chain.py``)::

       from helpers.checking import Checks, Context, expect

       checks = Checks("02_sync_chain")

       @checks.check("q1", hint="call the inventory service with a 200 ms timeout")
       async def gateway_answers(ctx: Context) -> str:
           '''The gateway answers GET /product/1 with the product and its stock.'''
           svc = ctx.get("gateway")                        # the learner's object, or a clear failure
           answer = await ctx.http("GET", f"{svc.url}/product/1")
           expect(answer.status == 200, f"expected HTTP 200, got {answer.status}: {answer.text[:80]}")
           return "stock included"                         # optional: shown next to the tick

       @checks.check("q1", hidden=True, points=2)
       async def gateway_fails_fast(ctx: Context) -> None:
           '''Hidden: with inventory down the gateway answers within 300 ms.'''
           ...

   * A check is an ``async def`` taking a :class:`Context`; its docstring's first line
     is what the learner reads. It passes when it returns; it fails with the message
     of :func:`expect` / :class:`CheckFailed` (a plain ``assert cond, "msg"`` works too).
   * Test behaviour, never source text: call the learner's functions with
     ``await ctx.call("name", args...)`` (timeout + friendly errors), start your own
     services with ``await ctx.service(...)`` and a broker with ``await ctx.broker()``
     (both are stopped after the check), use fresh random inputs (``ctx.rng``,
     ``ctx.topic()``) so hard-coded answers fail.
   * ``hidden=True`` checks run only in the grader (they are not secret: the file is
     in the repo; an instructor who needs secret checks passes ``--checks DIR``).
   * ``points=`` weights a check (default 1); ``timeout=`` seconds (default 10).
   * Keep each check under ~2 s: the grader runs every check of every submission.
   * Timing bounds: generous (2 shared cores), compare against your own re-measurement.
   * The grader runs qN's checks right after the notebook's ``await check("qN")`` cell,
     so checks see what the learner's own check() sees (services still running, even if
     the last cell stops them). Checks of one question must not rely on another
     question's checks having run; they may rely on the learner's earlier cells.
   * Context tools: ``ctx.get(name)``, ``ctx.function(name)``, ``await ctx.call(...)``,
     ``await ctx.http(method, url)`` -> :class:`HttpAnswer`, ``await ctx.service(name,
     handler, faults=...)``, ``await ctx.broker()``, ``ctx.topic()``, ``ctx.rng``,
     ``ctx.on_cleanup(async_fn)``; :func:`finite` for measured numbers.

3. ``python -m helpers.labs`` (``make labs``) writes ``labs/NN_slug.ipynb``; execute
   the solution in place so its outputs are stored. ``pytest tests/test_labs.py
   tests/test_grader.py`` then proves, for every lab in solutions/: the lab is up to
   date, the lab as shipped scores ~0, the solution scores full marks in the grader,
   every ``check("qN")`` in the notebook has checks and every question has a visible one.

Checks run inside the learner's kernel (they need the learner's objects), on the
kernel's event loop, so they are async; ``check("q1")`` must be awaited.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import math
import os
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

DEFAULT_TIMEOUT_S = 10.0
"""A check that takes longer than this fails (a learner's function that never returns)."""

CHECKS_DIR = Path(__file__).resolve().parent / "labchecks"
"""Where ``helpers/labchecks/<slug>.py`` modules live."""

GRADING_ENV = "COURSE_GRADING"
"""Set by the grader in the submission's kernel: the learner's own check() cells are skipped
(the grader runs every check, from a fresh copy, after the notebook)."""

CheckFunc = Callable[["Context"], Awaitable[Any]]


class CheckFailed(AssertionError):
    """A check did not pass; the message is shown to the learner, so make it say what to fix."""


class LabError(ValueError):
    """A lab or its checks are mis-declared (an author error, not a learner one)."""


def expect(condition: object, message: str) -> None:
    """Fail the current check with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


def deadline(seconds: float) -> Any:
    """``async with deadline(5):`` raises asyncio.TimeoutError after 5 s.

    Unlike ``asyncio.wait_for`` it runs the body in the *current* task (Python 3.11+), so
    when the grader interrupts an endless loop the KeyboardInterrupt lands in the check,
    not in the event loop (which would kill the kernel).
    """
    if hasattr(asyncio, "timeout"):
        return asyncio.timeout(seconds)
    return _DeadlineFallback(seconds)  # pragma: no cover - Python 3.10


class _DeadlineFallback:  # pragma: no cover - Python 3.10 only
    """Python 3.10: cancel the current task after ``seconds`` (what asyncio.timeout does)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.expired, self.handle = seconds, False, None

    async def __aenter__(self) -> None:
        task = asyncio.current_task()

        def expire() -> None:
            self.expired = True
            if task is not None:
                task.cancel()

        self.handle = asyncio.get_running_loop().call_later(self.seconds, expire)

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if self.handle is not None:
            self.handle.cancel()
        if self.expired and exc_type is asyncio.CancelledError:
            raise asyncio.TimeoutError
        return False


# --------------------------------------------------------------------------- declaring


@dataclass(frozen=True)
class Check:
    """One behavioural check of one question."""

    question: str
    name: str
    description: str
    func: CheckFunc
    points: float = 1.0
    hidden: bool = False
    hint: str = ""
    timeout: float = DEFAULT_TIMEOUT_S


class Checks:
    """The checks of one lab, in declaration order. A checks module holds one, named ``checks``."""

    def __init__(self, lab: str) -> None:
        if not lab or not isinstance(lab, str):
            raise LabError("Checks needs the lab id, e.g. Checks('00_warmup') for solutions/00_warmup.ipynb")
        self.lab = lab
        self._checks: list[Check] = []

    def check(
        self,
        question: str,
        *,
        points: float = 1.0,
        hidden: bool = False,
        hint: str = "",
        timeout: float = DEFAULT_TIMEOUT_S,
        name: str | None = None,
    ) -> Callable[[CheckFunc], CheckFunc]:
        """Decorator: register an ``async def f(ctx)`` as a check of ``question``."""

        def register(func: CheckFunc) -> CheckFunc:
            if not inspect.iscoroutinefunction(func):
                raise LabError(f"check {func.__name__} must be 'async def {func.__name__}(ctx)'")
            if points < 0 or timeout <= 0:
                raise LabError(f"check {func.__name__}: points must be >= 0 and timeout > 0")
            check_name = name or func.__name__
            if any(c.name == check_name for c in self._checks):
                raise LabError(f"lab {self.lab} has two checks named {check_name!r}")
            doc = inspect.getdoc(func) or check_name.replace("_", " ")
            self._checks.append(
                Check(question, check_name, doc.strip().splitlines()[0].rstrip("."), func, float(points), hidden, hint, timeout)
            )
            return func

        return register

    def __iter__(self) -> Iterator[Check]:
        return iter(self._checks)

    def __len__(self) -> int:
        return len(self._checks)

    @property
    def questions(self) -> list[str]:
        """Question ids in declaration order."""
        return list(dict.fromkeys(c.question for c in self._checks))

    def of(self, question: str | None = None, *, hidden: bool = True) -> list[Check]:
        """The checks of ``question`` (all questions when None); hidden ones only if asked."""
        return [c for c in self._checks if (question is None or c.question == question) and (hidden or not c.hidden)]

    def max_points(self, question: str | None = None) -> float:
        """Points available for ``question`` (or the whole lab), hidden checks included."""
        return sum(c.points for c in self.of(question))


def slug_of(lab: str) -> str:
    """``02_sync_chain`` -> ``sync_chain``: the checks module's name for a lab id."""
    head, _, tail = lab.partition("_")
    return tail if head.isdigit() and tail else lab


def checks_path(lab: str, checks_dir: Path | str | None = None) -> Path:
    """Where the checks of ``lab`` live: ``helpers/labchecks/<slug>.py``."""
    return Path(checks_dir or CHECKS_DIR) / f"{slug_of(lab)}.py"


def load_module(path: Path | str, prefix: str = "_labchecks") -> ModuleType:
    """Execute ``path`` as a brand-new module with a unique name (never a cached copy)."""
    path = Path(path)
    mod_name = f"{prefix}_{path.stem}_{uuid.uuid4().hex[:12]}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise LabError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_checks(lab: str, checks_dir: Path | str | None = None) -> Checks:
    """A fresh copy of the checks of ``lab`` (edits to the checks file apply at once)."""
    path = checks_path(lab, checks_dir)
    if not path.is_file():
        raise LabError(f"no checks for lab {lab!r}: expected {path}")
    checks = getattr(load_module(path), "checks", None)
    if not isinstance(checks, Checks):
        raise LabError(f"{path} must define 'checks = Checks({lab!r})'")
    if checks.lab != lab:
        raise LabError(f"{path} declares Checks({checks.lab!r}) but is the checks file of {lab!r}")
    if not len(checks):
        raise LabError(f"{path} declares no checks")
    return checks


# --------------------------------------------------------------------------- running


@dataclass
class HttpAnswer:
    """What an HTTP call returned (status, headers, body), read in full."""

    status: int
    text: str
    headers: dict[str, str]

    def json(self) -> Any:
        """The body as JSON, or a check failure that says the body was not JSON."""
        try:
            return json.loads(self.text)
        except ValueError:
            raise CheckFailed(f"the answer is not JSON (HTTP {self.status}): {self.text[:80]!r}") from None


_MISSING = object()


class Context:
    """What a check gets: the learner's namespace plus tools that clean up after themselves."""

    def __init__(self, namespace: dict[str, Any], check: Check | None = None) -> None:
        self.ns = namespace
        self.check = check
        self.rng = random.Random()
        """Fresh randomness for inputs (unseeded on purpose: hard-coded answers must fail)."""
        self._cleanups: list[Callable[[], Awaitable[Any]]] = []

    # -- the learner's objects
    def get(self, name: str, default: Any = _MISSING) -> Any:
        """The learner's variable ``name``; a friendly failure if it is missing or still ``...``."""
        if name not in self.ns:
            if default is not _MISSING:
                return default
            raise CheckFailed(f"`{name}` is not defined: run the cell that creates it (is it spelled `{name}`?)")
        value = self.ns[name]
        if value is Ellipsis:
            raise CheckFailed(f"`{name}` is still `...`: replace it with your answer")
        return value

    def function(self, name: str) -> Callable[..., Any]:
        """The learner's function ``name`` (fails clearly if it is not callable)."""
        value = self.get(name)
        expect(callable(value), f"`{name}` should be a function, but it is a {type(value).__name__}")
        return value

    async def call(self, func: str | Callable[..., Any], *args: Any, timeout: float = 5.0, **kwargs: Any) -> Any:
        """Call a learner's function (sync or async) with a time limit; its errors become failures."""
        fn = self.function(func) if isinstance(func, str) else func
        label = func if isinstance(func, str) else getattr(func, "__name__", "your function")
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                async with deadline(timeout):
                    result = await result
        except NotImplementedError:
            raise CheckFailed(f"{label}() is not written yet (it raises NotImplementedError)") from None
        except asyncio.TimeoutError:
            raise CheckFailed(f"{label}() did not finish within {timeout:g} s") from None
        except CheckFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - any learner error is feedback, not a crash
            raise CheckFailed(f"{label}() raised {type(exc).__name__}: {exc}") from None
        return result

    # -- tools that are stopped after the check
    def on_cleanup(self, func: Callable[[], Awaitable[Any]]) -> None:
        """Run ``await func()`` after the check, pass or fail."""
        self._cleanups.append(func)

    async def service(self, name: str, target: Any, **kwargs: Any) -> Any:
        """Start a helper service for this check (``helpers.http.start_service``); stopped after."""
        from helpers.http import start_service

        svc = await start_service(f"check-{name}-{uuid.uuid4().hex[:6]}", target, **kwargs)
        self.on_cleanup(svc.stop)
        return svc

    async def broker(self) -> Any:
        """A started broker of the check's own (embedded, or MQTT_URL's); stopped after."""
        from helpers.broker import Broker

        broker = await Broker(name=f"check-{uuid.uuid4().hex[:8]}").start()
        self.on_cleanup(broker.stop)
        return broker

    def topic(self, prefix: str = "check") -> str:
        """A topic no one else uses."""
        return f"{prefix}/{uuid.uuid4().hex[:10]}"

    async def http(self, method: str, url: str, *, timeout: float = 5.0, **kwargs: Any) -> HttpAnswer:
        """One HTTP request; connection errors and timeouts become clear failures."""
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
                async with session.request(method, url, **kwargs) as response:
                    return HttpAnswer(response.status, await response.text(), dict(response.headers))
        except asyncio.TimeoutError:
            raise CheckFailed(f"{method} {url} got no answer within {timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise CheckFailed(f"{method} {url} failed ({type(exc).__name__}: {exc}): is the service running?") from None

    async def close(self) -> None:
        """Run the cleanups, newest first; never let one failing stop the others."""
        while self._cleanups:
            func = self._cleanups.pop()
            try:
                await asyncio.wait_for(func(), 5.0)
            except Exception:  # noqa: BLE001 - cleanup is best effort
                pass


@dataclass
class CheckResult:
    """The outcome of one check."""

    question: str
    name: str
    description: str
    passed: bool
    points: float
    max_points: float
    message: str = ""
    hint: str = ""
    hidden: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


async def run_check(check: Check, namespace: dict[str, Any], *, catch_interrupt: bool = False) -> CheckResult:
    """Run one check against ``namespace`` with its timeout; always returns a result."""
    ctx = Context(namespace, check)
    start = time.perf_counter()
    passed, message = False, ""
    try:
        async with deadline(check.timeout):
            detail = await check.func(ctx)
        passed, message = True, "" if detail is None else str(detail)
    except asyncio.TimeoutError:
        message = f"timed out after {check.timeout:g} s"
    except AssertionError as exc:  # CheckFailed, expect() and plain asserts
        message = str(exc) or "an assertion failed"
    except KeyboardInterrupt:
        if not catch_interrupt:
            raise
        message = "interrupted: the code under test did not give control back (an endless loop?)"
    except Exception as exc:  # noqa: BLE001 - a learner error surfacing inside the check
        message = f"{type(exc).__name__}: {exc}"
    finally:
        await ctx.close()
    return CheckResult(
        check.question,
        check.name,
        check.description,
        passed,
        check.points if passed else 0.0,
        check.points,
        message,
        check.hint,
        check.hidden,
        round(time.perf_counter() - start, 3),
    )


def _fmt_points(value: float) -> str:
    return f"{value:g}"


def format_report(results: list[CheckResult]) -> str:
    """The learner-facing text: one line per check, a hint under each failure."""
    lines: list[str] = []
    for question in dict.fromkeys(r.question for r in results):
        rows = [r for r in results if r.question == question]
        passed = sum(r.passed for r in rows)
        mark = "all passed" if passed == len(rows) else f"{passed}/{len(rows)} passed"
        lines.append(f"{question}: {mark}")
        for r in rows:
            tick = "\u2713" if r.passed else "\u2717"
            note = f" ({r.message})" if r.passed and r.message else ""
            lines.append(f"  {tick} {r.description}{note}")
            if not r.passed:
                lines.append(f"      why:  {r.message}")
                if r.hint:
                    lines.append(f"      hint: {r.hint}")
    return "\n".join(lines)


@dataclass
class Report:
    """What ``await check(...)`` returns: the results, already printed."""

    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every check that ran passed (False when none ran)."""
        return bool(self.results) and all(r.passed for r in self.results)

    def __str__(self) -> str:
        return format_report(self.results)

    def _ipython_display_(self) -> None:  # already printed: show nothing more in Out[]
        return None


class _PendingCheck:
    """``check("q1")`` before it is awaited: tells the learner to write ``await``."""

    def __init__(self, lab: str, question: str | None, namespace: dict[str, Any]) -> None:
        self.lab, self.question, self.namespace = lab, question, namespace

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._run().__await__()

    async def _run(self) -> Report:
        label = f'check("{self.question}")' if self.question else "check()"
        if os.environ.get(GRADING_ENV):
            print(f"{label} skipped while grading: the grader runs every check after the notebook.")
            return Report()
        checks = load_checks(self.lab)
        if self.question is not None and self.question not in checks.questions:
            known = ", ".join(checks.questions)
            print(f"{label}: lab {self.lab} has no question {self.question!r} (questions: {known})")
            return Report()
        results = [await run_check(c, self.namespace) for c in checks.of(self.question, hidden=False)]
        report = Report(results)
        print(report)
        return report

    def __repr__(self) -> str:
        q = f'"{self.question}"' if self.question else ""
        return f"check({q}) runs asynchronously: write  await check({q})"

    def _ipython_display_(self) -> None:
        print(repr(self))


def _caller_namespace(depth: int = 2) -> dict[str, Any]:
    """The globals of the notebook cell that called check() (the IPython user namespace)."""
    try:
        from IPython import get_ipython  # type: ignore[attr-defined]

        shell = get_ipython()
        if shell is not None:
            return shell.user_ns
    except ImportError:
        pass
    return sys._getframe(depth).f_globals


def checker(lab: str) -> Callable[..., _PendingCheck]:
    """``check = checker("00_warmup")`` in a lab's first cell; then ``await check("q1")``.

    ``await check()`` runs the visible checks of every question. The checks see the
    notebook's variables, and are reloaded from disk on every call.
    """
    checks_path(lab)  # fail fast on a bad id only when used; keep the first cell cheap

    def check(question: str | None = None) -> _PendingCheck:
        return _PendingCheck(lab, question, _caller_namespace())

    check.__doc__ = f"Run the visible checks of lab {lab}: `await check('q1')` (or `await check()` for all)."
    return check


def score(results: list[CheckResult]) -> tuple[float, float]:
    """(points earned, points available)."""
    return sum(r.points for r in results), sum(r.max_points for r in results)


def finite(value: Any) -> bool:
    """True for a real, finite number (not bool, not NaN): handy for measured answers."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
