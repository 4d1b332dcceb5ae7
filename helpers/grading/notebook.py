"""``check("q1")`` in a lab notebook: instant feedback from the lab's visible checks.

A lab's first code cell binds the checker, and each question ends with an awaited check::

    from helpers.grading.notebook import checker
    check = checker("00_warmup")        # the notebook's file name, without .ipynb

    await check("q1")                   # one question's visible checks, with the idea behind each failure
    await check("q1", hint=2)           # ... and the code-level hint too, for the learner who asks for it
    await check()                       # every question's visible checks

The checks are loaded from disk on every call (an edited checks file applies at once)
and see the notebook's variables. Under the grader (``COURSE_GRADING`` set) the cell
prints that it was skipped: the grader runs every check itself, hidden ones included,
from its own copy (see :mod:`helpers.grading.kernel`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from helpers.grading.checks import GRADING_ENV, CheckResult, checks_path, load_checks, run_check

HINT_LEVELS = (1, 2)
"""1: the idea behind a failing check (always shown); 2: the code as well (on request)."""


def _more_help(question: str | None) -> str:
    q = f'"{question}", ' if question else ""
    return f"want the code? run  await check({q}hint=2)"


def format_report(results: list[CheckResult], hint: int = 1) -> str:
    """The learner-facing text: one line per check; under each failure, why and the hint.

    ``hint=1`` gives the idea only (which concept, which rule), and says how to ask for
    more when a failing check has a code-level hint; ``hint=2`` adds that code.
    """
    lines: list[str] = []
    more: list[str] = []
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
                code_hint = getattr(r, "code_hint", "")
                if code_hint and hint >= 2:
                    lines.append(f"      code: {code_hint}")
                elif code_hint and question not in more:
                    more.append(question)
    if more:
        lines.append(_more_help(more[0] if len(more) == 1 else None))
    return "\n".join(lines)


@dataclass
class Report:
    """What ``await check(...)`` returns: the results, already printed."""

    results: list[CheckResult] = field(default_factory=list)
    hint: int = 1

    @property
    def passed(self) -> bool:
        """True when every check that ran passed (False when none ran)."""
        return bool(self.results) and all(r.passed for r in self.results)

    def __str__(self) -> str:
        return format_report(self.results, self.hint)

    def _ipython_display_(self) -> None:  # already printed: show nothing more in Out[]
        return None


class PendingCheck:
    """``check("q1")`` before it is awaited: tells the learner to write ``await``."""

    def __init__(self, lab: str, question: str | None, namespace: dict[str, Any], hint: Any = 1) -> None:
        self.lab, self.question, self.namespace, self.hint = lab, question, namespace, hint

    def __await__(self) -> Generator[Any, None, Report]:
        return self._run().__await__()

    async def _run(self) -> Report:
        label = f'check("{self.question}")' if self.question else "check()"
        if os.environ.get(GRADING_ENV):
            print(f"{label} skipped while grading: the grader runs every check after the notebook.")
            return Report()
        if isinstance(self.hint, bool) or self.hint not in HINT_LEVELS:
            print(f"{label}: hint={self.hint!r} is not a hint level: hint=1 gives the idea, hint=2 the code as well")
            return Report()
        checks = load_checks(self.lab)
        if self.question is not None and self.question not in checks.questions:
            known = ", ".join(checks.questions)
            print(f"{label}: lab {self.lab} has no question {self.question!r} (questions: {known})")
            return Report()
        due = checks.of(hidden=False) if self.question is None else checks.run_at(self.question, hidden=False)
        results = [await run_check(c, self.namespace) for c in due]
        report = Report(results, int(self.hint))
        print(report)
        return report

    def __repr__(self) -> str:
        args = [f'"{self.question}"'] if self.question else []
        if self.hint != 1:
            args.append(f"hint={self.hint!r}")
        call = f"check({', '.join(args)})"
        return f"{call} runs asynchronously: write  await {call}"

    def _ipython_display_(self) -> None:
        print(repr(self))


def _caller_namespace(depth: int = 2) -> dict[str, Any]:
    """The globals of the notebook cell that called check() (the IPython user namespace).

    ``depth`` counts frames from here: 2 is the caller of the function that called this one.
    """
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            namespace: dict[str, Any] = shell.user_ns
            return namespace
    except ImportError:
        pass
    return sys._getframe(depth).f_globals  # noqa: SLF001 - outside IPython, the caller's frame is the only way to its globals


def checker(lab: str) -> Callable[..., PendingCheck]:
    """``check = checker("00_warmup")`` in a lab's first cell; then ``await check("q1")``.

    ``await check()`` runs the visible checks of every question; ``hint=2`` adds the
    code-level hint under each failure (``hint=1``, the default, gives only the idea). The checks see the
    notebook's variables, and are reloaded from disk on every call.
    """
    checks_path(lab)  # fail fast on a bad id only when used; keep the first cell cheap

    def check(question: str | None = None, hint: int = 1) -> PendingCheck:
        return PendingCheck(lab, question, _caller_namespace(), hint)

    check.__doc__ = (
        f"Run the visible checks of lab {lab}: `await check('q1')` (or `await check()` for all). "
        "Each failure shows why and the idea to follow; `await check('q1', hint=2)` shows the code as well."
    )
    return check
