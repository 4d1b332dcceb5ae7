"""The course's measured claims (M1-M16), stated where a notebook measures them.

A notebook calls :func:`claim` right after it measures something the course promises
(``claim("M1", "5 hops take n x 50 ms plus a little", measured=f"{p50:.0f} ms", ...)``).
The learner reads one line that says what was expected, what this machine measured and
whether the claim holds. The same line carries a machine-readable copy (a JSON mime
bundle in the cell's output), so ``make run`` can collect every claim from the executed
notebooks into ``build/claims.json`` and ``build/report.html`` without re-measuring and
without a second list of numbers that could drift from the notebooks.

A claim that does not hold raises :class:`ClaimFailed` (an ``AssertionError``): the
notebook's tests fail, and the instructor report still shows the measured value, because
the output is displayed before the exception is raised.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

#: The mime type of a claim's machine-readable copy in a notebook output.
MIME = "application/vnd.sync-async-course.claim+json"

#: What each claim id promises (COURSE.md section 5), for the report's headings.
TITLES: dict[str, str] = {
    "M1": "latency grows with hops",
    "M2": "cascading failure and its cure",
    "M3": "retries can make it worse",
    "M4": "pool exhaustion",
    "M5": "the producer does not wait",
    "M6": "load leveling",
    "M7": "durability",
    "M8": "duplicates",
    "M9": "ordering",
    "M10": "eventual consistency",
    "M11": "scale by adding consumers",
    "M12": "traces show the difference",
    "M13": "the mini-challenge works",
    "M14": "sync vs async head to head",
    "M15": "the hybrid flow answers at once",
    "M16": "beyond one kernel",
}


class ClaimFailed(AssertionError):
    """A measured claim did not hold on this machine (the message says what was measured)."""


@dataclass(frozen=True)
class Claim:
    """One measured part of a claim: what was promised, what was measured, and the verdict."""

    id: str
    what: str
    measured: str
    expected: str
    holds: bool

    def line(self) -> str:
        """One Markdown line a learner reads under the measurement."""
        mark = "✅ holds" if self.holds else "❌ does not hold"
        return f"**{self.id}** {self.what}: measured **{self.measured}**, expected {self.expected} ({mark})"


_recorded: list[Claim] = []


def claim(claim_id: str, what: str, *, measured: str, expected: str, holds: bool) -> None:
    """State one measured claim: show it, keep it for the report, raise if it does not hold.

    It returns nothing, so a cell that ends with ``claim(...)`` shows the verdict line only
    (no ``Out[...]`` repr); :func:`recorded` has every claim stated so far.

    ``measured`` and ``expected`` are short human strings with units ("257 ms",
    "250-275 ms"); ``holds`` is the comparison the notebook computed from its own
    variables, so the verdict can never disagree with the numbers on screen.
    """
    if claim_id not in TITLES:
        raise ValueError(f"unknown claim id {claim_id!r}: use one of {', '.join(TITLES)}")
    result = Claim(claim_id, what, measured, expected, bool(holds))
    _recorded.append(result)
    _display(result)
    if not result.holds:
        raise ClaimFailed(f"{claim_id} {what}: measured {measured}, expected {expected}")


def recorded() -> list[Claim]:
    """Every claim stated in this process so far, oldest first."""
    return list(_recorded)


def from_outputs(cells: list[dict[str, Any]]) -> list[Claim]:
    """The claims a stored or executed notebook's outputs carry (its ``cells`` list)."""
    found: list[Claim] = []
    for cell in cells:
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = output.get("data", {}).get(MIME)
            if data is not None:
                found.append(Claim(**(json.loads(data) if isinstance(data, str) else data)))
    return found


def _display(result: Claim) -> None:
    """Markdown for people plus the JSON copy; plain print outside IPython."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython ships with the course's pins
        print(result.line())
        return
    if get_ipython() is None:
        print(result.line())
        return
    display({"text/markdown": result.line(), "text/plain": result.line(), MIME: asdict(result)}, raw=True)
