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
kernel's event loop, so they are ``async``. This module declares, loads and runs them;
what a check is handed lives beside it and is re-exported here, so check authors import
everything from one place: the verdicts (:mod:`~helpers.grading.verdicts`), calling the
learner's code (:mod:`~helpers.grading.calls`), the context and its fixtures
(:mod:`~helpers.grading.context`) and the saved notebook (:mod:`~helpers.grading.saved`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from helpers.grading.calls import Outcome, forgot_await, outcome
from helpers.grading.context import Context, HttpAnswer, service_stopped
from helpers.grading.probes import LoopLag, blocking_message
from helpers.grading.saved import SAVE_FIRST, lab_notebooks, saved_markdown
from helpers.grading.verdicts import CheckFailed, LabError, deadline, expect, finite, format_points

__all__ = [
    "CHECKS_DIR",
    "DEFAULT_TIMEOUT_S",
    "GRADING_ENV",
    "SAVE_FIRST",
    "Check",
    "CheckFailed",
    "CheckFunc",
    "CheckResult",
    "Checks",
    "Context",
    "HttpAnswer",
    "LabError",
    "Outcome",
    "checks_path",
    "deadline",
    "expect",
    "finite",
    "forgot_await",
    "format_points",
    "lab_notebooks",
    "load_checks",
    "load_module",
    "outcome",
    "run_check",
    "saved_markdown",
    "score",
    "service_stopped",
    "slug_of",
]

DEFAULT_TIMEOUT_S = 10.0
"""A check that takes longer than this fails (a learner's function that never returns)."""

CHECKS_DIR = Path(__file__).resolve().parents[1] / "labchecks"
"""Where ``helpers/labchecks/<slug>.py`` modules live."""

GRADING_ENV = "COURSE_GRADING"
"""Set by the grader in the submission's kernel: the learner's own check() cells are skipped
(the grader runs every check, from a fresh copy, after the notebook)."""

CheckFunc = Callable[["Context"], Awaitable[Any]]


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
    """The check bounds a duration: in a parallel grading batch it runs alone (see ``helpers.grading.kernels.Gate``)."""


class Checks:
    """The checks of one lab, in declaration order. A checks module holds one, named ``checks``."""

    def __init__(self, lab: str) -> None:
        if not lab or not isinstance(lab, str):
            raise LabError("Checks needs the lab id, e.g. Checks('00_warmup') for solutions/00_warmup.ipynb")
        self.lab = lab
        self._checks: list[Check] = []

    def check(  # noqa: PLR0913  the check-writing API: every knob is a keyword a checks module passes
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
        in the notebook, ``await check("q4")`` runs it too (if it is visible), after q4's own.

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

    def include(self, part: Checks) -> None:
        """Add the checks of ``part`` here, in its order: a lab's checks split over modules.

        A lab whose checks outgrow one file keeps a question's checks in a module of their
        own (``helpers/labchecks/_<slug>_<topic>.py``, declaring ``part = Checks(lab)``) and
        includes them where that question's checks belong. Both must be of the same lab.
        """
        if part.lab != self.lab:
            raise LabError(f"checks of lab {part.lab!r} cannot be included in lab {self.lab!r}")
        for check in part:
            if any(c.name == check.name for c in self._checks):
                raise LabError(f"lab {self.lab} has two checks named {check.name!r}")
            self._checks.append(check)

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

    def run_at(self, question: str, *, hidden: bool = True) -> list[Check]:
        """The checks that run at ``question``'s check cell: its own, then other questions' declared ``after`` it.

        The notebook's ``await check("q4")`` and the grader both run them there (see
        :func:`runs_at`), so a check that needs later code is seen by the learner where
        that code exists (lab 07's Q1 diagram against the Q2-Q4 code, at ``check("q4")``).
        """
        questions = self.questions
        at = [c for c in self._checks if runs_at(c, questions) == question and (hidden or not c.hidden)]
        return [c for c in at if c.question == question] + [c for c in at if c.question != question]

    def max_points(self, question: str | None = None) -> float:
        """Points available for ``question`` (or the whole lab), hidden checks included."""
        return sum(c.points for c in self.of(question))


def runs_at(check: Check, questions: Sequence[str]) -> str:
    """The question whose check cell runs ``check``: its ``after`` question when the lab has it, else its own."""
    return check.after if check.after is not None and check.after in questions else check.question


def slug_of(lab: str) -> str:
    """``02_sync_chain`` -> ``sync_chain``: the checks module's name for a lab id."""
    head, _, tail = lab.partition("_")
    return tail if head.isdigit() and tail else lab


def checks_path(lab: str, checks_dir: Path | str | None = None) -> Path:
    """Where the checks of ``lab`` live: ``helpers/labchecks/<slug>.py``."""
    return Path(checks_dir or CHECKS_DIR) / f"{slug_of(lab)}.py"


def load_module(path: Path | str, prefix: str = "_labchecks") -> ModuleType:
    """Execute ``path`` as a brand-new module with a unique name (never a cached copy).

    The module is in ``sys.modules`` (under that unique name) while it executes, as an
    imported module would be, so a checks module may define a ``@dataclass`` (which looks
    its module up there); it is taken out again afterwards, so loading leaves nothing behind.
    """
    path = Path(path)
    mod_name = f"{prefix}_{path.stem}_{uuid.uuid4().hex[:12]}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise LabError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    with registered(module):
        spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def registered(module: ModuleType) -> Iterator[ModuleType]:
    """``with registered(module):`` the module is importable by its name (``sys.modules``) inside the block."""
    sys.modules[module.__name__] = module
    try:
        yield module
    finally:
        if sys.modules.get(module.__name__) is module:
            del sys.modules[module.__name__]


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
