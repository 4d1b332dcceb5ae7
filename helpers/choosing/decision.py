"""Lesson 06's decision walk: describe an interaction, let a five-question function recommend a style.

The walk itself (``decide``) is the lesson's on-screen code: five questions, asked in
order, each adding a reason. This module holds what surrounds it, so the notebook cell
stays short:

* :class:`Interaction`: what we know about one interaction between a caller and the
  service that does the work (the facts the five questions ask about);
* :class:`Recommendation`: the style the walk picks (``sync``, ``async`` or
  ``hybrid 202``) with its reasons, and the flow to draw for it;
* :data:`EXAMPLES`: seven everyday interactions, from a login to a multi-step AI agent task;
* :func:`recommendation_rows`: runs any ``decide`` function over a list of interactions and
  gives the rows for :func:`helpers.core.tables.show`.

Plain data and no I/O: importing this module pulls in neither aiohttp nor aiomqtt.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

Style = Literal["sync", "async", "hybrid 202"]
"""The three answers the walk can give."""
SYNC: Final = "sync"
ASYNC: Final = "async"
HYBRID: Final = "hybrid 202"
STYLES: tuple[Style, ...] = (SYNC, ASYNC, HYBRID)

PATIENCE_S = 2.0
"""How long a caller should hold a request open for an answer. Past a couple of seconds a
person starts to wonder whether it broke (and clicks again), and a calling service has to
stretch its own deadline and every timeout on the way."""

BUSY_PER_S = 1_000.0
"""Requests per second at peak above which the volume alone is worth a queue in front of the workers."""

FLOWS: dict[Style, str] = {
    SYNC: "caller -> service: request ... response (the caller waits, with a timeout)",
    ASYNC: "producer -> broker -> worker(s): publish an event, answer at once, nobody waits",
    HYBRID: "POST -> 202 + Location; workers over the broker; GET status (Retry-After) or a push; 303 -> result",
}
"""Step 5: the flow to draw for each style."""


@dataclass(frozen=True)
class Interaction:
    """One interaction between a caller and the service that does the work, as the five questions see it."""

    name: str
    needs_answer_now: bool
    """The caller cannot go on without the outcome (a login, a price, an authorization)."""
    wants_result: bool
    """Someone wants to learn the outcome eventually (a report to download, an encoded video)."""
    work_s: float
    """How long the work typically takes, in seconds."""
    must_survive_outage: bool
    """The request must not be lost while the worker, or a service it needs, is down."""
    per_second: float = 1.0
    """Requests per second at peak."""
    scale_apart: bool = False
    """The callers and the workers must scale independently (the work is heavy, or spiky, or both)."""
    note: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an interaction needs a name, e.g. Interaction('login', ...)")
        for label, value in (("work_s", self.work_s), ("per_second", self.per_second)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{label} is a number >= 0, got {value!r} for {self.name!r}")


@dataclass(frozen=True)
class Recommendation:
    """What the walk recommends for one interaction, and why."""

    style: Style
    reasons: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"a recommendation is one of {', '.join(STYLES)}, got {self.style!r}")

    @property
    def flow(self) -> str:
        """Step 5: the flow to draw."""
        return FLOWS[self.style]


EXAMPLES: tuple[Interaction, ...] = (
    Interaction("login", needs_answer_now=True, wants_result=True, work_s=0.05, must_survive_outage=False, per_second=200),
    Interaction("add to cart", needs_answer_now=True, wants_result=True, work_s=0.03, must_survive_outage=False, per_second=500),
    Interaction(
        "payment authorization", needs_answer_now=True, wants_result=True, work_s=1.5, must_survive_outage=False, per_second=50
    ),
    Interaction(
        "report generation", needs_answer_now=False, wants_result=True, work_s=45, must_survive_outage=False, per_second=0.5
    ),
    Interaction(
        "video encoding",
        needs_answer_now=False,
        wants_result=True,
        work_s=600,
        must_survive_outage=True,
        per_second=2,
        scale_apart=True,
    ),
    Interaction(
        "millions of notification emails",
        needs_answer_now=False,
        wants_result=False,
        work_s=0.2,
        must_survive_outage=True,
        per_second=5_000,
        scale_apart=True,
    ),
    Interaction(
        "multi-step AI agent task",
        needs_answer_now=False,
        wants_result=True,
        work_s=90,
        must_survive_outage=True,
        per_second=1,
        scale_apart=True,
    ),
)
"""The lesson's table of everyday interactions."""


def by_name(name: str, interactions: Iterable[Interaction] = EXAMPLES) -> Interaction:
    """The interaction called ``name``."""
    for interaction in interactions:
        if interaction.name == name:
            return interaction
    raise KeyError(f"no interaction named {name!r}")


def recommendation_rows(
    decide: Callable[[Interaction], Recommendation], interactions: Iterable[Interaction] = EXAMPLES
) -> list[dict[str, object]]:
    """Rows for :func:`helpers.core.tables.show`: each interaction's facts, the style ``decide`` picked and its
    reasons, one reason per row (the facts only on the first, so the table stays narrow)."""
    rows: list[dict[str, object]] = []
    for interaction in interactions:
        verdict = decide(interaction)
        if not isinstance(verdict, Recommendation):
            raise TypeError(f"decide() should return a Recommendation, got {type(verdict).__name__} for {interaction.name!r}")
        facts: dict[str, object] = {
            "interaction": interaction.name,
            "answer now": "yes" if interaction.needs_answer_now else "no",
            "work": _duration(interaction.work_s),
            "outage-proof": "yes" if interaction.must_survive_outage else "no",
            "peak/s": _rate(interaction.per_second),
            "style": verdict.style,
        }
        for i, reason in enumerate(verdict.reasons or ["(no reason given)"]):
            rows.append({**(facts if i == 0 else dict.fromkeys(facts, "")), "why": reason})
    return rows


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:g} s"
    return f"{seconds / 60:g} min"


def _rate(per_second: float) -> str:
    return f"{per_second:,.0f}" if per_second >= 1 else f"{per_second:g}"
