"""Fill one lab's column of an exported Canvas gradebook, for re-import.

``python -m helpers grade DIR --canvas gradebook.csv --roster roster.csv`` writes a copy of
the export (``gradebook-filled.csv`` by default; the export itself is never changed) in
which the lab's assignment column holds each matched learner's score, and nothing else
differs by a single byte: the other cells, the quoting, the line endings, the byte-order
mark stay as Canvas wrote them, so the import changes only that column.

Canvas's export: ``Student, ID, SIS User ID, SIS Login ID, Section``, then one column per
assignment named ``Title (assignment_id)``, then Canvas's computed columns; a
``Points Possible`` row may follow the header. Scores are scaled to the assignment's points
possible when that row gives them (a 13-point lab in a 100-point assignment).

The roster says who is who: a CSV with a ``submission`` column (a submission's file stem,
or the username in it, e.g. ``alice`` for ``alice_00_warmup.ipynb``) and one of the
columns ``ID``, ``SIS Login ID`` or ``SIS User ID`` (Canvas's). Nothing is guessed:
submissions the roster does not name, students with no submission, submissions that could
not be graded and two submissions for one student are listed, and their cells left as
they were.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from helpers.grading.checks import format_points
from helpers.grading.report import Result

FIXED = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")
KEYS = ("ID", "SIS Login ID", "SIS User ID")
"""Roster columns that name a Canvas student, in the order they are tried."""
ASSIGNMENT = re.compile(r"\(\d+\)\s*$")
"""An assignment column's header ends with its id: ``Lab 00 warm-up (12345)``."""


class CanvasError(ValueError):
    """The gradebook, roster or column cannot be used (the message says why and what to do)."""


@dataclass
class Filled:
    """What :func:`fill` did: the column, the cells written, and everything it would not guess."""

    column: str
    out: Path
    written: dict[str, str] = field(default_factory=dict)
    """Canvas student (their ``Student`` cell) -> the value written."""
    unmatched: list[str] = field(default_factory=list)
    """Submissions the roster does not name, or names a student not in the gradebook."""
    missing: list[str] = field(default_factory=list)
    """Students in the gradebook with no graded submission (their cells are left as they were)."""
    not_graded: list[str] = field(default_factory=list)
    """Submissions that are error rows (not a notebook, ...): nothing written for them."""
    conflicts: list[str] = field(default_factory=list)
    """Students two submissions map to: nothing written for them."""

    def summary(self) -> str:
        """The report printed after filling: counts, then every name left out and why."""
        lines = [f"canvas: wrote {len(self.written)} score(s) into column {self.column!r} of {self.out}"]
        for title, names in (
            ("submissions the roster does not match to a student", self.unmatched),
            ("submissions not graded (cell left as it was)", self.not_graded),
            ("students with two or more submissions (cell left as it was)", self.conflicts),
            ("students without a graded submission (cell left as it was)", self.missing),
        ):
            if names:
                lines.append(f"  {title}: {', '.join(names)}")
        return "\n".join(lines)


def records(text: str) -> list[list[tuple[int, int]]]:
    """Where each field of each CSV record lies in ``text``: [(start, end), ...] per record.

    RFC 4180: fields separated by commas, records by CRLF or LF, a field in double quotes
    may hold commas, newlines and doubled quotes. Spans include the quotes, so a field can
    be replaced without touching a byte around it.
    """
    out: list[list[tuple[int, int]]] = []
    row: list[tuple[int, int]] = []
    i, n, start, quoted = 0, len(text), 0, False
    while i < n:
        ch = text[i]
        if quoted:
            if ch == '"' and i + 1 < n and text[i + 1] == '"':
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == ",":
            row.append((start, i))
            start = i + 1
        elif ch in "\r\n":
            row.append((start, i))
            out.append(row)
            if ch == "\r" and i + 1 < n and text[i + 1] == "\n":
                i += 1
            row, start = [], i + 1
        i += 1
    if start < n or row:
        row.append((start, n))
        out.append(row)
    return out


def value(raw: str) -> str:
    """A field's text, unquoted."""
    raw = raw.lstrip("\ufeff")
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1].replace('""', '"')
    return raw


def choose_column(header: Sequence[str], lab: str, asked: str | None) -> int:
    """The index of the lab's assignment column: the one asked for, else the one assignment naming the lab."""
    if asked is not None:
        if asked not in header:
            raise CanvasError(f"no column {asked!r} in the gradebook; its assignment columns: {_assignments(header)}")
        return header.index(asked)
    spelled = {lab, lab.replace("_", " "), lab.replace("_", "-")}
    hits = [i for i, h in enumerate(header) if ASSIGNMENT.search(h) and any(s.lower() in h.lower() for s in spelled)]
    if len(hits) != 1:
        found = "no assignment column names" if not hits else "several assignment columns name"
        raise CanvasError(f"{found} lab {lab}: pick one with --canvas-column (assignment columns: {_assignments(header)})")
    return hits[0]


def _assignments(header: Sequence[str]) -> str:
    return ", ".join(repr(h) for h in header if ASSIGNMENT.search(h)) or "none"


def read_roster(path: Path) -> dict[str, tuple[str, str]]:
    """submission key -> (Canvas column, value) from the roster CSV."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "submission" not in rows[0]:
        raise CanvasError(f"{path}: the roster needs a 'submission' column and one of {', '.join(KEYS)}")
    key = next((k for k in KEYS if k in rows[0]), None)
    if key is None:
        raise CanvasError(f"{path}: the roster needs one of the columns {', '.join(KEYS)} (Canvas's student ids)")
    return {r["submission"].strip(): (key, r[key].strip()) for r in rows if r["submission"].strip() and r[key].strip()}


def submission_keys(result: Result) -> list[str]:
    """How a roster may name a submission: its file stem, or that stem without the lab id (the username)."""
    stem = Path(result.submission).stem
    bare = stem.replace(result.lab, "").strip("_-. ") if result.lab else stem
    return list(dict.fromkeys(k for k in (stem, bare) if k))


def fill(gradebook: Path, roster: Path, results: Sequence[Result], out: Path | None = None, column: str | None = None) -> Filled:
    """Write a copy of ``gradebook`` with one lab's column filled from ``results``; the export is not changed."""
    out = out or gradebook.with_name(f"{gradebook.stem}-filled{gradebook.suffix}")
    if out.resolve() == gradebook.resolve():
        raise CanvasError("the filled gradebook must be a new file: the export stays as Canvas wrote it")
    labs = sorted({r.lab for r in results if r.lab})
    if len(labs) != 1:
        raise CanvasError(f"one Canvas column holds one lab; these results are of labs {', '.join(labs) or 'none'}")
    lab = labs[0]
    text = gradebook.read_bytes().decode("utf-8")
    spans = records(text)
    table = [[value(text[a:b]) for a, b in row] for row in spans]
    if not table or [h.strip() for h in table[0][:2]] != ["Student", "ID"]:
        raise CanvasError(f"{gradebook} does not look like a Canvas gradebook export (it starts with Student, ID, ...)")
    header = table[0]
    col = choose_column(header, lab, column)
    done = Filled(header[col], out)
    rows = [i for i, row in enumerate(table[1:], 1) if len(row) > col and row[1].strip() and not _special(row)]
    students = _Students(table, rows, ids={name: header.index(name) for name in KEYS if name in header})
    scale = _points_possible(table, col)
    targets, conflicted = _match(results, read_roster(roster), students, done)
    edits: dict[int, str] = {}
    for row, result in targets.items():
        score = result.score / result.max_score * scale if scale is not None and result.max_score else result.score
        edits[row] = format_points(round(score, 2))
        done.written[table[row][0]] = edits[row]
    done.missing = [table[i][0] for i in students.rows if i not in targets and i not in conflicted]
    pieces, last = [], 0
    for row in sorted(edits):
        a, b = spans[row][col]
        pieces += [text[last:a], edits[row]]
        last = b
    out.write_bytes(("".join(pieces) + text[last:]).encode("utf-8"))
    return done


def _special(row: Sequence[str]) -> bool:
    """Canvas's non-student rows: Points Possible, and the muted/read-only marker rows."""
    return row[0].strip() in ("Points Possible", "") or "Points Possible" in row[0]


def _points_possible(table: list[list[str]], col: int) -> float | None:
    for row in table[1:3]:
        if row and "Points Possible" in row[0] and len(row) > col:
            try:
                return float(row[col])
            except ValueError:
                return None
    return None


@dataclass(frozen=True)
class _Students:
    """The gradebook's student rows, and where each of Canvas's id columns is."""

    table: list[list[str]]
    rows: list[int]
    """Indexes into ``table`` of the rows that are students (not the header or Canvas's special rows)."""
    ids: dict[str, int]
    """Canvas id column (one of :data:`KEYS`) -> its index in a row."""

    def row_of(self, who: tuple[str, str]) -> int | None:
        """The one student row whose id column ``who[0]`` holds ``who[1]``; None when none or several do."""
        column, wanted = who
        if column not in self.ids:
            return None
        rows = [i for i in self.rows if self.table[i][self.ids[column]].strip() == wanted]
        return rows[0] if len(rows) == 1 else None


def _match(
    results: Sequence[Result], roster: dict[str, tuple[str, str]], students: _Students, done: Filled
) -> tuple[dict[int, Result], set[int]]:
    """(gradebook row -> the graded result for it, rows two submissions claim); what cannot be
    matched goes into ``done``'s lists."""
    found: dict[int, list[Result]] = {}
    for result in results:
        name = Path(result.submission).name
        if result.status != "graded":
            done.not_graded.append(f"{name} ({result.error})")
            continue
        who = next((roster[k] for k in submission_keys(result) if k in roster), None)
        where = students.row_of(who) if who else None
        if where is None:
            done.unmatched.append(name if who is None else f"{name} ({who[0]} {who[1]} is not in the gradebook)")
            continue
        found.setdefault(where, []).append(result)
    conflicted = {row for row, hits in found.items() if len(hits) > 1}
    for row in sorted(conflicted):
        names = ", ".join(Path(r.submission).name for r in found[row])
        done.conflicts.append(f"{students.table[row][0]} ({names})")
    return {row: hits[0] for row, hits in found.items() if row not in conflicted}, conflicted
