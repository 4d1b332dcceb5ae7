"""The check's context: the learner's namespace, calls into it, and fixtures cleaned up after the check.

A check gets one :class:`Context`. It reaches the learner's objects (``ctx.get``,
``ctx.function``, ``ctx.call``), the notebook's text (``ctx.markdown``), and fixtures of
its own that outlive no check: services and brokers, a scratch folder
(``ctx.tmp_path``), context managers entered for the check's length (``ctx.enter``,
``ctx.exit_stack``), callbacks (``ctx.on_cleanup``, ``ctx.callback``) and MQTT sessions to
end (``ctx.forget_session``). All of them form one exit stack, closed newest first after
the check, pass or fail, so no lab writes its own ``_folder`` or ``_forget_session``.
Re-exported by :mod:`helpers.grading.checks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import random
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from helpers.grading.calls import outcome
from helpers.grading.saved import saved_markdown
from helpers.grading.verdicts import CheckFailed, expect

CLEANUP_TIMEOUT_S = 5.0
"""The longest one cleanup may take (a stuck one must not hold up the others or the grader)."""


class _Lab(Protocol):
    """What the context needs of its check: the lab id (where the saved notebook is looked up)."""

    @property
    def lab(self) -> str: ...


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

    def __init__(self, namespace: dict[str, Any], check: _Lab | None = None, *, markdown: list[str] | None = None) -> None:
        self.ns = namespace
        self.check = check
        self.rng = random.Random()
        """Fresh randomness for inputs (unseeded on purpose: hard-coded answers must fail)."""
        self._cleanups: list[Callable[[], Any]] = []
        """The check's exit stack: callbacks (sync or async) run after the check, newest first."""
        self._markdown = None if markdown is None else [str(text) for text in markdown]

    # -- the notebook's text
    def markdown(self) -> list[str]:
        """The sources of the notebook's Markdown cells, in order (a diagram, a written answer).

        In the grader they come from the submitted file (the grader hands them to the
        checks; nothing the notebook's code defines can change them). In the notebook,
        ``await check("q1")`` reads the notebook as last saved: see :func:`~helpers.grading.saved.saved_markdown`.
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
    def on_cleanup(self, func: Callable[[], Any]) -> None:
        """Run ``func()`` after the check, pass or fail (awaited when it returns an awaitable)."""
        self._cleanups.append(func)

    def callback(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``func(*args, **kwargs)`` after the check, sync or async: the exit stack's ``callback``."""
        self._cleanups.append(lambda: func(*args, **kwargs))

    async def enter(self, manager: Any) -> Any:
        """Enter a context manager (async or sync) now and exit it after the check; returns what it gave.

        ``client = await ctx.enter(broker.client("check-shop"))`` replaces an ``async with``
        that would have to span the whole check.
        """
        if hasattr(manager, "__aenter__"):
            value = await manager.__aenter__()
            self.on_cleanup(lambda: manager.__aexit__(None, None, None))
        else:
            value = manager.__enter__()
            self.on_cleanup(lambda: manager.__exit__(None, None, None))
        return value

    def exit_stack(self) -> contextlib.AsyncExitStack:
        """A fresh ``AsyncExitStack`` closed after the check, at this point of the cleanup order."""
        stack = contextlib.AsyncExitStack()
        self.on_cleanup(stack.aclose)
        return stack

    def tmp_path(self, prefix: str = "check-") -> Path:
        """A new empty folder of the check's own, removed with everything in it after the check."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        self.callback(shutil.rmtree, path, ignore_errors=True)
        return path

    def forget_session(self, broker: Any, client_id: str) -> None:
        """After the check, end the MQTT persistent session ``client_id`` (keeps a shared broker tidy).

        Connecting once with a clean session makes the broker drop what it kept for that id.
        """

        async def forget() -> None:
            async with broker.client(client_id, clean_session=True):
                pass

        self.on_cleanup(forget)

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
                done = func()
                if inspect.isawaitable(done):
                    await asyncio.wait_for(done, CLEANUP_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - cleanup is best effort
                pass


def service_stopped(svc: Any) -> bool:
    """True when a service that ``start_service`` returned has been stopped (its listener is closed)."""
    runner = getattr(svc, "runner", None)
    return runner is not None and not getattr(runner, "sites", True)


def _last_cell_error() -> BaseException | None:
    """The exception the notebook's most recent failing cell raised (IPython keeps it in ``sys``), if any."""
    return getattr(sys, "last_value", None)
