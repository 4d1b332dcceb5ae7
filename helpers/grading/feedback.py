"""Feedback a learner can read on their own: one Markdown and one HTML file per submission.

``python -m helpers grade DIR --feedback OUT`` writes them. Each file holds one learner's
result and nothing else: their score per question, every failed visible check with its
message and its first-level hint, and the hidden checks as a count ("2 hidden checks
passed, 1 failed"), since naming them would give the hidden inputs away before the
deadline; ``--name-hidden`` names them (for after the deadline). Second-level hints (the
code) are never written: they are the answer. The instructor's tamper flags stay in the
instructor's CSV/JSON.

Both formats are rendered from one list of blocks (:func:`blocks`), so they say the same.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from pathlib import Path

from helpers.grading.checks import CheckResult, format_points
from helpers.grading.report import Result

Block = tuple[str, object]
"""("h1" | "h2" | "h3" | "p", text), ("ul", [text, ...]) or ("table", [[cell, ...], ...]) (first row: header)."""

HIDDEN_WHY = "Hidden checks test the same questions with inputs you have not seen."


def blocks(result: Result, *, name_hidden: bool = False) -> list[Block]:
    """What one learner's feedback says, in order, format-free."""
    name = Path(result.submission).name
    out: list[Block] = [("h1", f"Feedback: {result.lab or name}")]
    if result.status == "error":
        out.append(("p", f"Grading failed: {name} could not be graded: {result.error}"))
        out.append(
            (
                "p",
                "Nothing was scored: this is not a grade. If the reason is about your file (not a notebook, another lab), "
                "submit the lab notebook (.ipynb) itself again; otherwise your instructor grades it again.",
            )
        )
        return out
    pts = format_points
    out.append(("p", f"{name}: {pts(result.score)} of {pts(result.max_score)} points."))
    rows = [["question", "points"], *([q, f"{pts(p)} / {pts(m)}"] for q, (p, m) in result.questions.items())]
    out.append(("table", rows))
    visible = [c for c in result.checks if not c.hidden]
    failed = [c for c in visible if not c.passed]
    passed = len(visible) - len(failed)
    out.append(("h2", "What to fix" if failed else "Visible checks"))
    out.append(("p", f"{passed} of {len(visible)} visible checks passed."))
    for c in failed:
        out += _failed(c)
    out += _hidden([c for c in result.checks if c.hidden], name_hidden)
    if result.notes:
        out.append(("h2", "What happened while your notebook ran"))
        out.append(("ul", list(result.notes)))
    return out


def _failed(c: CheckResult) -> list[Block]:
    """One failed check: what it tests, what went wrong, the first hint (never the code hint)."""
    items = [f"What went wrong: {c.message or 'it did not pass'}"]
    if c.hint:
        items.append(f"Hint: {c.hint}")
    return [("h3", f"{c.question}: {c.description or c.name} ({c.name})"), ("ul", items)]


def _hidden(hidden: Sequence[CheckResult], named: bool) -> list[Block]:
    if not hidden:
        return []
    passed = sum(c.passed for c in hidden)
    count = f"{passed} hidden check{'s' if passed != 1 else ''} passed, {len(hidden) - passed} failed."
    out: list[Block] = [("h2", "Hidden checks"), ("p", f"{count} {HIDDEN_WHY}")]
    if named:
        out.append(
            ("ul", [f"{c.question}: {c.description or c.name} ({c.name}): {'passed' if c.passed else c.message}" for c in hidden])
        )
    return out


def to_markdown(parts: Iterable[Block]) -> str:
    """The blocks as Markdown."""
    lines: list[str] = []
    marks = {"h1": "#", "h2": "##", "h3": "###"}
    for kind, body in parts:
        if kind in marks:
            lines += [f"{marks[kind]} {body}", ""]
        elif kind == "p":
            lines += [str(body), ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in _items(body)] + [""]
        elif kind == "table":
            rows = [[str(cell).replace("|", "\\|") for cell in row] for row in _rows(body)]
            lines.append("| " + " | ".join(rows[0]) + " |")
            lines.append("|" + "---|" * len(rows[0]))
            lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def to_html(parts: Iterable[Block], title: str) -> str:
    """The blocks as one self-contained HTML page (no scripts, no external files)."""
    esc = html.escape
    body: list[str] = []
    for kind, content in parts:
        if kind in ("h1", "h2", "h3", "p"):
            body.append(f"<{kind}>{esc(str(content))}</{kind}>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in _items(content)) + "</ul>")
        elif kind == "table":
            rows = _rows(content)
            head = "".join(f"<th>{esc(str(c))}</th>" for c in rows[0])
            cells = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
    style = "body{font-family:sans-serif;max-width:50em;margin:2em auto}td,th{border:1px solid #ccc;padding:.2em .6em}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _items(body: object) -> list[str]:
    return [str(item) for item in body] if isinstance(body, list) else [str(body)]


def _rows(body: object) -> list[list[object]]:
    return [list(row) for row in body] if isinstance(body, list) else [[str(body)]]


def write_feedback(results: Sequence[Result], folder: Path | str, *, name_hidden: bool = False) -> list[Path]:
    """One ``<submission stem>.md`` and ``.html`` per result in ``folder``; the Markdown paths.

    Two submissions with the same file stem (from different folders) get ``-2``, ``-3``...
    so no learner's file overwrites another's.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    written = []
    for result in results:
        stem = Path(result.submission).stem or "submission"
        name, n = stem, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name)
        parts = blocks(result, name_hidden=name_hidden)
        (folder / f"{name}.md").write_text(to_markdown(parts), encoding="utf-8")
        (folder / f"{name}.html").write_text(to_html(parts, f"Feedback: {Path(result.submission).name}"), encoding="utf-8")
        written.append(folder / f"{name}.md")
    return written
