"""The check-authoring API: what a lab's checks module is written with.

A lab's checks *run the learner's code* (call their handler over HTTP, push messages
through a broker, measure their service) and say, in one line each, what worked and
what did not. The same check functions give feedback in the notebook (``await
check("q1")``, see :mod:`helpers.grading.notebook`) and score the submission in the
grader (``python -m helpers grade``, see :mod:`helpers.grading.runner`), which also runs
the hidden ones. CONTRIBUTING.md ("Writing checks") is the guide; in short::

    from helpers.grading.checks import Checks, Context, expect

    checks = Checks("02_sync_chain")

    @checks.check("q1", hint="call the inventory service with a 200 ms timeout")
    async def gateway_answers(ctx: Context) -> str:
        '''The gateway answers GET /product/1 with the product and its stock.'''
        answer = await ctx.http("GET", f"{ctx.get('gateway').url}/product/1")
        expect(answer.status == 200, f"expected HTTP 200, got {answer.status}")
        return "stock included"

Checks run inside the learner's kernel (they need the learner's objects), on the
kernel's event loop, so they are ``async``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import math
import random
import re
import sys
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from helpers.grading.probes import LoopLag, blocking_message

DEFAULT_TIMEOUT_S = 10.0
"""A check that takes longer than this fails (a learner's function that never returns)."""

CHECKS_DIR = Path(__file__).resolve().parents[1] / "labchecks"
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


def finite(value: Any) -> bool:
    """True for a real, finite number (not bool, not NaN): handy for measured answers."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def deadline(seconds: float) -> asyncio.Timeout:
    """``async with deadline(5):`` raises TimeoutError after 5 s.

    Unlike ``asyncio.wait_for`` it runs the body in the *current* task, so when the grader
    interrupts an endless loop the KeyboardInterrupt lands in the check, not in the event
    loop (which would kill the kernel). ``.expired()`` says whether it was this deadline
    that ended the body (and not a TimeoutError of the code under test).
    """
    return asyncio.timeout(seconds)


def format_points(value: float) -> str:
    """Points as people write them: ``3``, ``0.5``, ``2.25`` (never ``3.0``)."""
    return f"{value:g}"


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
    lab: str = ""
    """The lab id (set by :class:`Checks`): where :meth:`Context.markdown` looks for the saved notebook."""
    after: str | None = None
    """In the grader, run with the checks of this later question (the check needs code written there)."""
    code_hint: str = ""
    """The second-level hint: the code itself, shown only on request (``await check("q1", hint=2)``)."""
    timing: bool = False
    """The check bounds a duration: in a parallel grading batch it runs alone (see ``helpers.grading.runner.Gate``)."""


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
        after: str | None = None,
        code_hint: str = "",
        timing: bool = False,
    ) -> Callable[[CheckFunc], CheckFunc]:
        """Decorator: register an ``async def f(ctx)`` as a check of ``question``.

        Hints come in two levels. ``hint`` is the idea (which concept, which rule, where to
        look), shown under every failure; it never spells out the answer. ``code_hint`` is
        the code (the call, the line), shown only when the learner asks for it with
        ``await check("q1", hint=2)``.

        ``after="q4"``: the grader runs this check right after question q4's check cell
        instead of q1's, because it needs code the learner writes later (a diagram drawn in
        q1 compared with the services built in q2-q4). It still counts for ``question``;
        in the notebook, ``await check("q1")`` runs it with q1 (if it is visible).

        ``timing=True``: the check bounds a duration (a timeout, a deadline, "answers within
        50 ms"), so load from other submissions could change its verdict; a parallel grader
        runs it while nothing else runs.
        """

        def register(func: CheckFunc) -> CheckFunc:
            if not inspect.iscoroutinefunction(func):
                raise LabError(f"check {func.__name__} must be 'async def {func.__name__}(ctx)'")
            if points < 0 or timeout <= 0:
                raise LabError(f"check {func.__name__}: points must be >= 0 and timeout > 0")
            check_name = name or func.__name__
            if any(c.name == check_name for c in self._checks):
                raise LabError(f"lab {self.lab} has two checks named {check_name!r}")
            doc = inspect.getdoc(func) or check_name.replace("_", " ")
            description = doc.strip().splitlines()[0].rstrip(".")
            self._checks.append(
                Check(
                    question,
                    check_name,
                    description,
                    func,
                    float(points),
                    hidden,
                    hint,
                    timeout,
                    self.lab,
                    after,
                    code_hint,
                    timing,
                )
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
    for check in checks:
        if check.after is not None and check.after not in checks.questions:
            raise LabError(f"check {check.name} runs after question {check.after!r}, which {lab} does not have")
    return checks


# --------------------------------------------------------------------------- calling the learner's code


@dataclass(frozen=True)
class Outcome:
    """What one call of the learner's code did: its value, or the exception it raised, and how long it took."""

    value: Any = None
    error: Exception | None = None
    seconds: float = 0.0
    stalled_s: float = 0.0
    """The longest the event loop stood still during the call (a blocking call shows here)."""
    unawaited: tuple[str, ...] = ()
    """Coroutines the call created and dropped without awaiting (a missing ``await``), by name."""

    @property
    def raised(self) -> str:
        """The exception as the learner should read it (``ValueError: bad``), or ``no exception``."""
        if self.error is None:
            return "no exception"
        text = str(self.error)
        told = f"{type(self.error).__name__}: {text}" if text else type(self.error).__name__
        if self.unawaited:
            told += f" ({forgot_await(self.unawaited)})"
        elif "'coroutine' object" in text:
            told += " (a coroutine was used as a value: an `await` is missing)"
        return told


_UNAWAITED = re.compile(r"coroutine '([^']+)' was never awaited")

_capture = {"on": False}
"""Whether some outcome() is recording warnings right now (see :func:`_recording_warnings`)."""


@contextlib.contextmanager
def _recording_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record the warnings given while the learner's code runs (a dropped coroutine's among them).

    ``warnings.catch_warnings`` swaps module-wide state and restores it on exit, so two that
    overlap in time (two checks' calls running as concurrent tasks) would restore each other
    out of order and leave warnings swallowed for the rest of the kernel. Only the first of
    overlapping calls records; the others get an empty list (they miss a name, nothing worse).
    """
    if _capture["on"]:
        yield []
        return
    _capture["on"] = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)  # every dropped coroutine, even one warned about before
            yield caught
    finally:
        _capture["on"] = False


def forgot_await(names: tuple[str, ...] | list[str]) -> str:
    """The words for coroutines created and never awaited: what the learner forgot."""
    calls = ", ".join(f"{name.rsplit('.', 1)[-1]}()" for name in dict.fromkeys(names))
    return f"the coroutine {calls} was never awaited: write `await` before the call"


def _unawaited(caught: list[warnings.WarningMessage]) -> tuple[str, ...]:
    """The coroutine names among ``caught``; every other warning is shown as it would have been."""
    names: list[str] = []
    for warning in caught:
        found = _UNAWAITED.search(str(warning.message))
        if found and issubclass(warning.category, RuntimeWarning):
            names.append(found.group(1))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno, source=warning.source)
    return tuple(names)


async def outcome(label: str, call: Callable[[], Any], timeout: float = 5.0) -> Outcome:
    """Run ``call()`` (the learner's code, sync or async) for a check, at most ``timeout`` s.

    A few things end the check at once, with the same message in every lab: code that is
    not written yet (``NotImplementedError``: "``label`` is not written yet"); code that
    does not finish within ``timeout``, told apart by why: it blocked the event loop
    (``time.sleep``, a blocking client, a CPU loop: measured with a
    :class:`~helpers.grading.probes.LoopLag`), it dropped a coroutine without awaiting it
    (the warning Python gives is caught and named), or it is simply too slow; and code that
    returns a coroutine instead of a value (a ``return`` without ``await``). Any other
    exception is returned in the :class:`Outcome` for the check to judge: a retry helper
    *should* raise the service's error in the end, a fetch with a timeout *should* raise
    its own TimeoutError. ``label`` names the call the way the learner knows it, e.g. ``"fetch()"``.
    """
    limit = deadline(timeout)
    lag = LoopLag().start()
    started = time.perf_counter()
    value: Any = None
    error: Exception | None = None
    stuck = False
    with _recording_warnings() as caught:
        try:
            async with limit:
                value = call()
                if inspect.isawaitable(value):
                    value = await value
        except NotImplementedError:
            raise CheckFailed(f"{label} is not written yet (it raises NotImplementedError)") from None
        except CheckFailed:
            raise
        except TimeoutError as exc:
            stuck = limit.expired()
            error = None if stuck else exc  # otherwise the code under test timed out by itself
        except Exception as exc:  # noqa: BLE001 - the learner's exception is what the check inspects
            error = exc
        finally:
            lag.stop()
    seconds = time.perf_counter() - started
    dropped = _unawaited(caught)
    if stuck:
        raise CheckFailed(_stuck(label, timeout, lag.longest, dropped))
    if lag.longest >= timeout:  # a call that never let the deadline fire: it held the loop the whole time
        raise CheckFailed(blocking_message(label, lag.longest))
    if error is None and inspect.iscoroutine(value):
        value.close()  # never run: close it so Python does not warn a second time
        raise CheckFailed(
            f"{label} returned a coroutine ({getattr(value, '__qualname__', 'a coroutine')}) instead of its result: "
            "write `return await ...`, not `return ...`"
        )
    return Outcome(value, error, seconds, lag.longest, dropped)


def _stuck(label: str, timeout: float, stalled_s: float, dropped: tuple[str, ...]) -> str:
    """Why ``label`` did not finish within ``timeout``: blocking, a missing await, or slowness."""
    if stalled_s >= min(1.0, timeout / 2):
        return blocking_message(label, stalled_s)
    if dropped:
        return f"{label} did not finish within {timeout:g} s, and {forgot_await(dropped)}"
    return f"{label} did not finish within {timeout:g} s"


# --------------------------------------------------------------------------- the check's context


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

    def __init__(self, namespace: dict[str, Any], check: Check | None = None, *, markdown: list[str] | None = None) -> None:
        self.ns = namespace
        self.check = check
        self.rng = random.Random()
        """Fresh randomness for inputs (unseeded on purpose: hard-coded answers must fail)."""
        self._cleanups: list[Callable[[], Awaitable[Any]]] = []
        self._markdown = None if markdown is None else [str(text) for text in markdown]

    # -- the notebook's text
    def markdown(self) -> list[str]:
        """The sources of the notebook's Markdown cells, in order (a diagram, a written answer).

        In the grader they come from the submitted file (the grader hands them to the
        checks; nothing the notebook's code defines can change them). In the notebook,
        ``await check("q1")`` reads the notebook as last saved: see :func:`saved_markdown`.
        """
        if self._markdown is not None:
            return list(self._markdown)
        return saved_markdown(self.check.lab if self.check is not None else "", Path.cwd())

    # -- the learner's objects
    def get(self, name: str, default: Any = _MISSING) -> Any:
        """The learner's variable ``name``; a friendly failure if it is missing or still ``...``."""
        if name not in self.ns:
            if default is not _MISSING:
                return default
            if isinstance(_last_cell_error(), NotImplementedError):
                raise CheckFailed(
                    f"`{name}` is not defined yet: a cell stopped at `raise NotImplementedError`; write your code in "
                    f"place of that line, then run the cell (it creates `{name}`)"
                )
            raise CheckFailed(f"`{name}` is not defined: run the cell that creates it (is it spelled `{name}`?)")
        value = self.ns[name]
        if value is Ellipsis:
            raise CheckFailed(f"`{name}` is still `...`: replace it with your answer")
        return value

    def running_service(self, name: str) -> Any:
        """The learner's HTTP service ``name`` (what ``start_service`` returned), checked to be still running.

        A service stopped by the notebook's clean-up cell fails with that reason, instead of
        every request to it failing (or the learner's number being blamed).
        """
        svc = self.get(name)
        expect(
            hasattr(svc, "url") and hasattr(svc, "runner"),
            f"`{name}` should be what start_service(...) returned (it has a .url), got {type(svc).__name__}",
        )
        expect(
            not service_stopped(svc),
            f"`{name}` was stopped (did the clean-up cell run?): run the cells that start it again, then check",
        )
        return svc

    def function(self, name: str) -> Callable[..., Any]:
        """The learner's function ``name`` (fails clearly if it is not callable)."""
        value = self.get(name)
        expect(callable(value), f"`{name}` should be a function, but it is a {type(value).__name__}")
        return value

    async def call(self, func: str | Callable[..., Any], *args: Any, timeout: float = 5.0, **kwargs: Any) -> Any:
        """Call a learner's function (sync or async) with a time limit; any error it raises fails the check.

        Use :func:`outcome` instead when raising is the behaviour under test.
        """
        fn = self.function(func) if isinstance(func, str) else func
        label = f"{func if isinstance(func, str) else getattr(func, '__name__', 'your function')}()"
        done = await outcome(label, lambda: fn(*args, **kwargs), timeout)
        if done.error is not None:
            raise CheckFailed(f"{label} raised {done.raised}")
        return done.value

    # -- tools that are stopped after the check
    def on_cleanup(self, func: Callable[[], Awaitable[Any]]) -> None:
        """Run ``await func()`` after the check, pass or fail."""
        self._cleanups.append(func)

    async def service(self, name: str, target: Any, **kwargs: Any) -> Any:
        """Start a helper service for this check (``helpers.core.http.start_service``); stopped after."""
        from helpers.core.http import start_service

        svc = await start_service(f"check-{name}-{uuid.uuid4().hex[:6]}", target, **kwargs)
        self.on_cleanup(svc.stop)
        return svc

    async def broker(self) -> Any:
        """A started broker of the check's own (embedded, or MQTT_URL's); stopped after."""
        from helpers.core.broker import Broker

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
        except TimeoutError:
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


def service_stopped(svc: Any) -> bool:
    """True when a service that ``start_service`` returned has been stopped (its listener is closed)."""
    runner = getattr(svc, "runner", None)
    return runner is not None and not getattr(runner, "sites", True)


def _last_cell_error() -> BaseException | None:
    """The exception the notebook's most recent failing cell raised (IPython keeps it in ``sys``), if any."""
    return getattr(sys, "last_value", None)


# --------------------------------------------------------------------------- the saved notebook

SAVE_FIRST = "save the notebook (Ctrl+S), then check again"
"""What to do when the saved notebook lacks what the learner just typed (Markdown is read from the file)."""


def _lab_of(doc: Any) -> str | None:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    lab = meta.get("course_lab") if isinstance(meta, dict) else None
    claimed = lab.get("id") if isinstance(lab, dict) else None
    return claimed if isinstance(claimed, str) else None


def _markdown_cells(doc: dict[str, Any]) -> list[str]:
    texts = []
    for cell in doc.get("cells") or []:
        if isinstance(cell, dict) and cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            texts.append("".join(map(str, source)) if isinstance(source, list) else str(source or ""))
    return texts


def lab_notebooks(lab: str, folder: Path | str) -> list[Path]:
    """The notebooks of ``lab`` in ``folder``, newest first.

    A notebook belongs to the lab when its ``metadata.course_lab.id`` says so (the lab
    generator writes it), or, without that metadata (a solution), when its file name
    contains the lab id: the grader's own two rules (``runner.identify_lab``).
    """
    found: list[tuple[float, Path]] = []
    for path in Path(folder).glob("*.ipynb"):
        try:
            claimed = _lab_of(json.loads(path.read_text(encoding="utf-8")))
            modified = path.stat().st_mtime
        except (OSError, ValueError):
            continue  # unreadable, half-written or not a notebook: not the learner's lab
        if claimed == lab or (claimed is None and lab and lab in path.stem):
            found.append((modified, path))
    return [path for _, path in sorted(found, key=lambda item: item[0], reverse=True)]


def saved_markdown(lab: str, folder: Path | str) -> list[str]:
    """The Markdown cells of the newest saved notebook of ``lab`` in ``folder`` (the kernel's working folder).

    Raises :class:`CheckFailed` (telling the learner to save) when there is none: a
    kernel cannot see what the browser has not saved yet.
    """
    for path in lab_notebooks(lab, folder):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # replaced or removed since it was listed: try the next one
        if isinstance(doc, dict):
            return _markdown_cells(doc)
    raise CheckFailed(f"found no saved notebook of lab {lab or '?'} in {Path(folder)}: {SAVE_FIRST}")


# --------------------------------------------------------------------------- running and results


@dataclass
class CheckResult:
    """The outcome of one check: what the notebook prints and the grader records."""

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
    code_hint: str = ""
    """The second-level hint (the code), shown by ``await check("q1", hint=2)``."""

    @classmethod
    def failed(cls, check: Check, message: str) -> CheckResult:
        """A zero-point result for ``check`` that did not run or did not pass, saying why."""
        return cls(
            check.question,
            check.name,
            check.description,
            False,
            0.0,
            check.points,
            message,
            check.hint,
            check.hidden,
            code_hint=check.code_hint,
        )

    @classmethod
    def from_dict(cls, data: object) -> CheckResult:
        """The result :meth:`to_dict` wrote; ValueError when ``data`` is not one."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        if not isinstance(data, Mapping) or not required <= set(data):
            raise ValueError(f"not a check result: {data!r:.200}")
        result = cls(**{k: v for k, v in data.items() if k in names})
        if not isinstance(result.passed, bool) or not finite(result.points) or not finite(result.max_points):
            raise ValueError(f"not a check result: {data!r:.200}")
        return result

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


async def run_check(
    check: Check, namespace: dict[str, Any], *, catch_interrupt: bool = False, markdown: list[str] | None = None
) -> CheckResult:
    """Run one check against ``namespace`` with its timeout; always returns a result.

    ``markdown``: the notebook's Markdown cell sources, when the caller has them (the
    grader, from the submitted file); None makes :meth:`Context.markdown` read the saved notebook.
    """
    ctx = Context(namespace, check, markdown=markdown)
    start = time.perf_counter()
    passed, message = False, ""
    lag = LoopLag().start()  # a timeout or an interrupt caused by a blocking call is reported as such
    try:
        async with deadline(check.timeout):
            detail = await check.func(ctx)
        passed, message = True, "" if detail is None else str(detail)
    except TimeoutError:
        lag.stop()
        stalled = lag.longest >= min(1.0, check.timeout / 2)
        message = blocking_message("the code under test", lag.longest) if stalled else f"timed out after {check.timeout:g} s"
    except AssertionError as exc:  # CheckFailed, expect() and plain asserts
        message = str(exc) or "an assertion failed"
    except KeyboardInterrupt:
        if not catch_interrupt:
            raise
        message = (
            "interrupted: the code under test did not give control back (an endless loop, or a blocking call such as "
            "time.sleep() or requests in async code?)"
        )
    except Exception as exc:  # noqa: BLE001 - a learner error surfacing inside the check
        message = f"{type(exc).__name__}: {exc}"
    finally:
        await lag.close()
        await ctx.close()
    # Built field by field, under the module's own name: the grader notices when code
    # under test replaces ``CheckResult`` (see helpers.grading.kernel).
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
        check.code_hint,
    )


def score(results: list[CheckResult]) -> tuple[float, float]:
    """(points earned, points available)."""
    return sum(r.points for r in results), sum(r.max_points for r in results)
