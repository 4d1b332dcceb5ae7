"""What the grader reports: one :class:`Result` per submission, as text, CSV and JSON."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helpers.grading.checks import CheckResult, format_points


@dataclass
class Result:
    """One submission's grade."""

    submission: str
    lab: str = ""
    status: str = "graded"
    """``graded``, or ``error`` when the file could not be graded at all (see ``error``)."""
    score: float = 0.0
    max_score: float = 0.0
    questions: dict[str, list[float]] = field(default_factory=dict)
    """question -> [points, max points]"""
    checks: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What happened while the notebook ran (errors, timeouts, restarts)."""
    flags: list[str] = field(default_factory=list)
    """Signs of tampering, for a human to look at; they do not change the score."""
    error: str = ""
    seconds: float = 0.0
    sandbox: str = ""
    """How the submission's kernel was isolated: ``bwrap`` or ``none`` (see helpers.grading.sandbox)."""

    @classmethod
    def graded(cls, submission: str, lab: str, checks: list[CheckResult], **details: Any) -> Result:
        """A graded submission: points per question and the total, from its check results."""
        questions: dict[str, list[float]] = {}
        for check in checks:
            got = questions.setdefault(check.question, [0.0, 0.0])
            got[0] += float(check.points)
            got[1] += float(check.max_points)
        return cls(
            submission,
            lab=lab,
            score=sum(q[0] for q in questions.values()),
            max_score=sum(q[1] for q in questions.values()),
            questions=questions,
            checks=checks,
            **details,
        )

    @property
    def full_marks(self) -> bool:
        """True when graded and every point was earned."""
        return self.status == "graded" and self.max_score > 0 and self.score >= self.max_score

    def failures(self) -> list[str]:
        """One line per failed check: question, name, reason."""
        return [f"{c.question} {c.name}{' (hidden)' if c.hidden else ''}: {c.message}" for c in self.checks if not c.passed]


def question_columns(results: Sequence[Result]) -> list[str]:
    """Every question id across the batch, in first-seen order."""
    return list(dict.fromkeys(q for r in results for q in r.questions))


def format_row(result: Result) -> str:
    """One submission as one line, plus its failure reasons."""
    if result.status == "error":
        return f"{result.submission}\n    ERROR: {result.error}"
    pts = format_points
    per_q = "  ".join(f"{q} {pts(p)}/{pts(m)}" for q, (p, m) in result.questions.items())
    head = f"{result.submission}  [{result.lab}]  {pts(result.score)}/{pts(result.max_score)}  {per_q}  ({result.seconds:.1f} s)"
    lines = [head]
    lines += [f"    - {f}" for f in result.failures()]
    lines += [f"    note: {n}" for n in result.notes]
    lines += [f"    FLAG: {f}" for f in result.flags]
    return "\n".join(lines)


def write_csv(results: Sequence[Result], path: Path | str) -> None:
    """One row per submission: score, points per question, failures, notes, flags, errors."""
    questions = question_columns(results)
    header = [
        "submission",
        "lab",
        "status",
        "score",
        "max_score",
        "percent",
        *questions,
        "failed",
        "notes",
        "flags",
        "error",
        "seconds",
        "sandbox",
    ]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r in results:
            percent = round(100 * r.score / r.max_score, 1) if r.max_score else 0.0
            per_q = [format_points(r.questions[q][0]) if q in r.questions else "" for q in questions]
            writer.writerow(
                [
                    r.submission,
                    r.lab,
                    r.status,
                    format_points(r.score),
                    format_points(r.max_score),
                    percent,
                    *per_q,
                    " | ".join(r.failures()),
                    " | ".join(r.notes),
                    " | ".join(r.flags),
                    r.error,
                    r.seconds,
                    r.sandbox,
                ]
            )


def write_json(results: Sequence[Result], path: Path | str, grader: Mapping[str, Any]) -> None:
    """Everything, per check, for tools and for feedback to learners; ``grader`` says how it ran."""
    doc = {
        "grader": dict(grader),
        "submissions": [{**asdict(r), "full_marks": r.full_marks} for r in results],
    }
    Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
