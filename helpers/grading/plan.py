"""The grader's plan: every option resolved once, at the edge of the batch, into a frozen record.

:class:`Options` is what a caller asks for (the command line's flags, a platform's
defaults): ``sandbox="auto"``, no seed, the folders to hide. :func:`resolve_plan` turns
it, once per batch, into a :class:`GradingPlan`: the sandbox mode probed (and its notice),
the seed drawn, every folder a sandboxed kernel must not see, the labs whose checks load.
Nothing downstream resolves or extends an option again: the runner, the kernels and the
report read the plan. How the grader runs a submission is in :mod:`helpers.grading.runner`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import nbformat

from helpers.grading import sandbox as boxes
from helpers.grading.checks import CHECKS_DIR, Check, Checks, load_module

HELPERS_DIR = Path(__file__).resolve().parents[1]
ROOT = HELPERS_DIR.parent

CELL_TIMEOUT_S = 15.0
TOTAL_TIMEOUT_S = 120.0
MAX_RESTARTS = 2
MAX_OUTPUT_BYTES = 1_000_000
"""What the grader keeps of one cell's output (the rest is dropped, with a note). Messages in
flight still cost memory while they are read: measured, a cell that prints 100 MB at once
raises the grader's peak to about 350 MB, 1 GB in 100 MB prints to about 1.8 GB. Not capped
further: ZeroMQ's MAXMSGSIZE drops the connection and IOPub never comes back."""
LABS_DIR = ROOT / "labs"
"""The labs as shipped: where a question's check("qN") cell belongs, when a submission deleted it."""

Alone = Literal["timing", "all"]
"""Which checks run alone in a parallel batch: those that say ``timing=True``, or all."""
SandboxMode = Literal["bwrap", "setpriv", "none"]
"""A resolved sandbox (``auto`` is resolved to one of these by :func:`resolve_plan`)."""
_MODES: tuple[SandboxMode, ...] = ("bwrap", "setpriv", "none")


@dataclass
class Options:
    """How long things may take, and where the checks come from."""

    cell_timeout: float = CELL_TIMEOUT_S
    total_timeout: float = TOTAL_TIMEOUT_S
    max_restarts: int = MAX_RESTARTS
    checks_dir: Path = CHECKS_DIR
    kernel_name: str = "python3"
    check_timeout: float | None = None
    """Cap on each check's own time limit (None: what the check declares, 10 s by default)."""
    jobs: int = 1
    """Submissions graded at the same time, each in its own kernel (see :class:`Gate`)."""
    sandbox: str = "auto"
    """``bwrap``, ``setpriv``, ``none``, or ``auto`` (bwrap where it works, else setpriv as root): see
    :mod:`helpers.grading.sandbox`."""
    limits: boxes.Limits = field(default_factory=boxes.Limits)
    hide: tuple[Path, ...] = ()
    """Folders a sandboxed kernel must not see even if they lie inside one it needs (the reports' folders);
    :func:`resolve_plan` adds the working folder, the home folder and every submission's folder."""
    labs_dir: Path | None = LABS_DIR
    max_output: int = MAX_OUTPUT_BYTES
    alone: Alone = "timing"
    """Which checks run alone in a parallel batch: ``timing`` (those that say so) or ``all``."""
    seed: str | None = None
    """The checks' random inputs are drawn from this seed (same seed, same inputs, same messages);
    :func:`resolve_plan` makes a secret one per batch when None, and the JSON report records it."""


def broker_label() -> str:
    """Which broker the submissions' kernels use (MQTT_URL is inherited), password hidden."""
    url = os.environ.get("MQTT_URL")
    if not url:
        return "embedded broker"
    try:
        from helpers.core.broker import parse_mqtt_url

        return f"MQTT_URL={parse_mqtt_url(url).url}"
    except Exception:  # noqa: BLE001 - a bad URL is the submissions' problem to report
        return "MQTT_URL=(unparseable)"


@dataclass(frozen=True)
class GradingPlan:
    """Every option of one batch, resolved: what the runner, the kernels and the report read.

    Made once by :func:`resolve_plan`; frozen, so no stage changes an option under another.
    """

    cell_timeout: float
    total_timeout: float
    max_restarts: int
    check_timeout: float | None
    """Cap on each check's own time limit (None: what the check declares)."""
    kernel_name: str
    jobs: int
    alone: Alone
    max_output: int
    checks_dir: Path
    labs_dir: Path | None
    labs: Mapping[str, Path]
    """The labs whose checks load: {lab id: checks file}."""
    broken: Mapping[str, str]
    """Checks files that cannot be loaded: {file name: why}."""
    sandbox: SandboxMode
    sandbox_notice: str
    """What the resolution said about the sandbox ('' when nothing): printed once, by the caller."""
    limits: boxes.Limits
    hide: tuple[Path, ...]
    """Every folder a sandboxed kernel must not see (reports, working folder, home, submissions)."""
    seed: str
    """The checks' random inputs are drawn from it (same seed, same inputs, same messages)."""

    def check_limit(self, check: Check) -> float:
        """The time limit of ``check``: its own, capped by ``--check-timeout``."""
        return check.timeout if self.check_timeout is None else min(check.timeout, self.check_timeout)

    def describe(self) -> dict[str, Any]:
        """How the grader ran, for the JSON report."""
        return {
            "cell_timeout_s": self.cell_timeout,
            "total_timeout_s": self.total_timeout,
            "broker": broker_label(),
            "jobs": self.jobs,
            "alone": self.alone,
            "seed": self.seed,
            "sandbox": boxes.describe(self.sandbox, self.limits),
        }


def resolve_plan(options: Options, submissions: Sequence[Path] = ()) -> GradingPlan:
    """Resolve ``options`` once for a batch of ``submissions``: the one place an option is decided.

    Raises :class:`~helpers.grading.sandbox.SandboxError` when the sandbox asked for cannot
    work here (the grader's setup, not a submission's fault).
    """
    mode, notice = boxes.resolve(options.sandbox)
    labs, broken = known_labs(options.checks_dir)
    folders = [Path(p).resolve().parent for p in submissions]
    hide = tuple(dict.fromkeys([*options.hide, *folders, Path.cwd(), Path.home()]))
    return GradingPlan(
        cell_timeout=options.cell_timeout,
        total_timeout=options.total_timeout,
        max_restarts=options.max_restarts,
        check_timeout=options.check_timeout,
        kernel_name=options.kernel_name,
        jobs=max(1, options.jobs),
        alone=options.alone,
        max_output=options.max_output,
        checks_dir=Path(options.checks_dir),
        labs_dir=options.labs_dir,
        labs=MappingProxyType(labs),
        broken=MappingProxyType(broken),
        sandbox=_mode(mode),
        sandbox_notice=notice,
        limits=options.limits,
        hide=hide,
        seed=options.seed or secrets.token_hex(8),
    )


def _mode(mode: str) -> SandboxMode:
    """``sandbox.resolve``'s answer, typed (it only ever answers one of the three)."""
    for known in _MODES:
        if mode == known:
            return known
    raise boxes.SandboxError(f"unexpected sandbox mode {mode!r}")


# --------------------------------------------------------------------------- labs


def known_labs(checks_dir: Path = CHECKS_DIR) -> tuple[dict[str, Path], dict[str, str]]:
    """({lab id: checks file}, {checks file name: why it cannot be loaded})."""
    labs: dict[str, Path] = {}
    broken: dict[str, str] = {}
    for path in sorted(Path(checks_dir).glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            checks = getattr(load_module(path), "checks", None)
            if not isinstance(checks, Checks):
                raise ValueError("it defines no 'checks = Checks(...)'")
            labs[checks.lab] = path
        except Exception as exc:  # noqa: BLE001 - one broken checks file must not stop grading others
            broken[path.name] = f"{type(exc).__name__}: {exc}"
    return labs, broken


def identify_lab(nb: nbformat.NotebookNode, path: Path, labs: Iterable[str]) -> tuple[str | None, str]:
    """The lab a notebook belongs to: its metadata first, then its file name. (lab, how or why not)."""
    ids = sorted(labs, key=len, reverse=True)
    meta = nb.get("metadata", {}).get("course_lab", {})
    claimed = meta.get("id") if isinstance(meta, dict) else None
    if isinstance(claimed, str) and claimed in ids:
        return claimed, "metadata"
    for lab in ids:
        if lab in path.stem:
            return lab, "file name"
    known = ", ".join(sorted(ids)) or "none"
    said = f"its metadata names lab {claimed!r}, which is unknown, and " if claimed else ""
    return None, f"unknown lab: {said}its file name contains no lab id (known labs: {known})"
