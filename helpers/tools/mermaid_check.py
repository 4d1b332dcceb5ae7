"""Check every Mermaid diagram of the course in a second, without a browser.

    python -m helpers diagrams                 # every notebook, lab and solution
    python -m helpers diagrams notebooks/06_choosing_and_hybrid.ipynb

The browser test (tests/test_browser.py) is the authority on whether a diagram renders:
it draws each one with the Mermaid that JupyterLab ships. It needs Chromium and a
minute or two, though, so authors get this quick check first, which runs with the other
fast tests. It is strict: it accepts the part of Mermaid the course writes and says,
naming the notebook, cell and line, what it does not accept, including mistakes that
JupyterLab does render but draw something else than meant.

No maintained Python parser of Mermaid fitted (the ones on PyPI run Mermaid's
JavaScript through Node.js, SpiderMonkey or an embedded QuickJS with a DOM stand-in),
so this is the course's own, for the two kinds of diagram it uses:

- ``flowchart`` / ``graph``: :func:`helpers.core.mermaid.parse_flowchart` (the parser lab
  07's check uses too, which reads the syntax and names the line), plus the quote and
  comment rules below.
- ``sequenceDiagram``: :func:`check_sequence`, for participants and actors (with ``as``
  aliases), messages ``->>`` ``-->>`` ``->`` ``-->`` ``-)`` ``--)`` ``-x`` ``--x`` (with
  ``+``/``-`` activation), notes, ``activate``/``deactivate``, ``autonumber``, ``title``,
  and ``loop``, ``alt``/``else``, ``opt``, ``par``/``and``, ``critical``/``option``,
  ``break`` and ``rect`` blocks closed by ``end``.

Rules beyond plain syntax, each a way a diagram broke or misled in practice:

- **Quotes in flowchart labels.** ``A["{"id": 1}"]`` and ``A[say "hi"]`` are parse
  errors in JupyterLab 4.6 (Mermaid 11): a label's own quotes are written ``#quot;``.
- **Comments on their own line.** ``A --> B %% why`` is a parse error in a flowchart
  (the flowchart parser reads it, JupyterLab does not).
- **A ``;`` in a sequence message or note** ends the statement in Mermaid, so the rest of
  the line is a parse error: write ``#59;`` or a comma.
- **Blocks balance**: every ``loop``/``alt``/... has its ``end``, ``else`` only inside
  ``alt``, ``and`` only inside ``par``, ``option`` only inside ``critical``.
- **Activations balance**: ``deactivate`` (or ``-``) only for an active participant, and
  nothing left active at the end.
- **Declared participants**: once a diagram declares its participants, a message to an
  undeclared name is a typo (Mermaid would silently draw a new participant).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from helpers.core.mermaid import DiagramError, comment_at, find_mermaid_blocks, front_matter_lines, parse_flowchart

__all__ = [
    "COURSE_FOLDERS",
    "SEQUENCE_ARROWS",
    "Diagram",
    "DiagramError",
    "check_course",
    "check_diagram",
    "check_flowchart_rules",
    "check_sequence",
    "diagrams_in",
    "main",
]

COURSE_FOLDERS = ("notebooks", "labs", "solutions")

SEQUENCE_ARROWS = ("-->>", "->>", "--)", "-)", "--x", "-x", "-->", "->")
"""The message arrows :func:`check_sequence` accepts, longest first (``-->>`` before ``->>``)."""

_ID = r"\w+(?:-\w+)*"
_PARTICIPANT = re.compile(rf"^(participant|actor)\s+({_ID})(?:\s+as\s+(.+))?$")
_ARROW = "|".join(re.escape(a) for a in SEQUENCE_ARROWS)
_MESSAGE = re.compile(rf"^({_ID})\s*({_ARROW})\s*([+-]?)\s*({_ID})\s*(:?)(.*)$")
_NOTE = re.compile(rf"^[Nn]ote\s+(left of|right of|over)\s+({_ID}(?:\s*,\s*{_ID})?)\s*(:?)(.*)$")
_ACTIVATION = re.compile(rf"^(activate|deactivate)\s+({_ID})$")
_AUTONUMBER = re.compile(r"^autonumber(?:\s+off|(?:\s+\d+){0,2})$")
_META = re.compile(r"^(?:title(?:\s*:|\s)|accTitle\s*:|accDescr\s*:)")
# block keyword -> the keyword that may split it (else, and, option), or None
_BLOCKS: dict[str, str | None] = {
    "loop": None,
    "alt": "else",
    "opt": None,
    "par": "and",
    "critical": "option",
    "break": None,
    "rect": None,
}
_SPLITTERS = {splitter: block for block, splitter in _BLOCKS.items() if splitter}
_ENTITY = re.compile(r"#\w+;")
_NEAR_ARROW = re.compile(rf"^{_ID}\s*([-=<>.x)+]{{2,}})")


@dataclass(frozen=True)
class Diagram:
    """One ```mermaid block: the file (relative to the course root), the cell index, the block's place in the cell."""

    path: str
    cell: int
    block: int
    text: str

    def where(self) -> str:
        """``notebooks/06_x.ipynb cell 12``, with ``diagram 2`` (3, ...) for a later block of the same cell."""
        return f"{self.path} cell {self.cell}" + (f" diagram {self.block + 1}" if self.block else "")


# --- the lines of a diagram ----------------------------------------------------------------------------


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for each line that is not blank, a ``%%`` comment or front matter."""
    lines = text.splitlines()
    start = front_matter_lines(lines)
    for number, raw in enumerate(lines[start:], start=start + 1):
        line = raw.strip()
        if line and not line.startswith("%%"):
            yield number, line


def check_diagram(text: str) -> None:
    """Raise :class:`DiagramError` (naming the line) unless the diagram is a flowchart or sequence diagram this check accepts."""
    first = next(_lines(text), None)
    if first is None:
        raise DiagramError(1, "the diagram is empty")
    kind = first[1].split()[0].rstrip(";")
    if kind in ("flowchart", "graph"):
        check_flowchart_rules(text)  # first: a stray quote also confuses the parser, whose message would mislead
        parse_flowchart(text)
    elif kind == "sequenceDiagram":
        check_sequence(text)
    else:
        raise DiagramError(
            first[0],
            f"`{kind}` diagrams are not checked here (the course draws flowchart and sequenceDiagram): "
            "add it to helpers/tools/mermaid_check.py, or rely on the browser test",
        )


# --- flowcharts: quotes ---------------------------------------------------------------------------------

# A quoted label opens right after one of these (ignoring spaces) and closes right before one of the others.
_QUOTE_OPENS = ("[", "(", "{", "|", ">", "/", "\\", "--", "-.", "==", "subgraph")
_QUOTE_CLOSES = ("]", ")", "}", "|", "/", "\\", "-", ".", "=", ";")
# Lines whose quotes are not labels (a link's URL, a tooltip) or that have none to check.
_NOT_LABELS = re.compile(r"^(?:click|style|classDef|class|linkStyle|accTitle|accDescr)\b")


def check_flowchart_rules(text: str) -> None:
    """What JupyterLab's Mermaid rejects and the flowchart parser lets through: stray quotes, trailing comments.

    A ``"`` may only open or close a whole label; one inside a label is a parse error.
    A ``%%`` comment must have its line to itself: after a statement it is a parse error.
    """
    for number, line in _lines(text):
        if _NOT_LABELS.match(line):
            continue
        if (comment := comment_at(line)) >= 0:
            raise DiagramError(
                number, f"a `%%` comment after a statement (`{_around(line, comment)}`): put it on a line of its own"
            )
        pos = 0
        while (start := line.find('"', pos)) >= 0:
            before = line[:start].rstrip()
            if not before.endswith(_QUOTE_OPENS):
                raise DiagramError(number, f'a `"` inside a label (`{_around(line, start)}`): write it as #quot;')
            end = line.find('"', start + 1)
            if end < 0:
                raise DiagramError(number, 'a quoted label is never closed with `"` (write a quote inside a label as #quot;)')
            after = line[end + 1 :].lstrip()
            if after and not after.startswith(_QUOTE_CLOSES):
                raise DiagramError(
                    number, f'a `"` inside a quoted label (`{_around(line, end)}`): write the inner quotes as #quot;'
                )
            pos = end + 1


def _around(line: str, pos: int, width: int = 12) -> str:
    """The text around ``pos``, for a message that shows where."""
    return line[max(0, pos - width) : pos + width].strip()


# --- sequence diagrams ----------------------------------------------------------------------------------


class _Sequence:
    """One pass over a sequence diagram: blocks, activations and participants as they are drawn."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, int]] = []  # (keyword, line it opened on)
        self.active: dict[str, list[int]] = {}  # participant -> lines where activations still open began
        self.declared: dict[str, int] = {}  # participant id -> line
        self.used: list[tuple[str, int]] = []  # (participant id, line) in messages, notes, activations

    def line(self, number: int, line: str) -> None:
        keyword = line.split()[0]
        if _PARTICIPANT.match(line):
            self._participant(number, line)
        elif keyword in _BLOCKS:
            self.blocks.append((keyword, number))
            self._no_semicolon(number, line)
        elif keyword in _SPLITTERS:
            block = _SPLITTERS[keyword]
            if not self.blocks or self.blocks[-1][0] != block:
                inside = f"inside `{self.blocks[-1][0]}`" if self.blocks else "outside any block"
                raise DiagramError(number, f"`{keyword}` belongs in an `{block}` block, not {inside}")
            self._no_semicolon(number, line)
        elif line == "end":
            if not self.blocks:
                raise DiagramError(number, "`end` without a block (loop, alt, opt, par, critical, break, rect) to close")
            self.blocks.pop()
        elif match := _ACTIVATION.match(line):
            self._activation(number, match.group(1), match.group(2))
        elif _AUTONUMBER.match(line) or _META.match(line):
            return
        elif keyword.lower() == "note":
            self._note(number, line)
        else:
            self._message(number, line)

    def _participant(self, number: int, line: str) -> None:
        match = _PARTICIPANT.match(line)
        assert match is not None
        name, alias = match.group(2), match.group(3)
        if name in self.declared:
            raise DiagramError(number, f"`{name}` is declared twice (first on line {self.declared[name]})")
        if alias is not None:
            self._no_semicolon(number, alias)
        self.declared[name] = number

    def _message(self, number: int, line: str) -> None:
        match = _MESSAGE.match(line)
        if match is None:
            near = _NEAR_ARROW.match(line)
            if near and near.group(1).rstrip("+-") not in SEQUENCE_ARROWS:
                raise DiagramError(
                    number, f"`{near.group(1)}` is not a sequence arrow: use ->> (a call), -->> (a reply) or -) (async)"
                )
            raise DiagramError(
                number,
                f"cannot read `{line}`: expected a message like `A->>B: text`, a Note, participant, actor, "
                "activate, deactivate, autonumber, or loop/alt/opt/par/critical/break/rect ... end",
            )
        sender, _arrow, mark, receiver, colon, text = match.groups()
        if not colon:
            raise DiagramError(number, f"the message `{line}` needs `: text` after the receiver")
        if not text.strip():
            raise DiagramError(number, f"the message `{line}` has no text after `:`: say what is sent")
        self._no_semicolon(number, text)
        self.used += [(sender, number), (receiver, number)]
        if mark == "+":
            self.active.setdefault(receiver, []).append(number)
        elif mark == "-":
            self._deactivate(number, sender)

    def _note(self, number: int, line: str) -> None:
        match = _NOTE.match(line)
        if match is None:
            raise DiagramError(number, f"cannot read the note `{line}`: write `Note over A: text` (or left of / right of)")
        where, names, colon, text = match.groups()
        if not colon or not text.strip():
            raise DiagramError(number, f"the note `{line}` needs `: text`")
        self._no_semicolon(number, text)
        self.used += [(name.strip(), number) for name in names.split(",")]

    def _activation(self, number: int, verb: str, name: str) -> None:
        self.used.append((name, number))
        if verb == "activate":
            self.active.setdefault(name, []).append(number)
        else:
            self._deactivate(number, name)

    def _deactivate(self, number: int, name: str) -> None:
        if not self.active.get(name):
            raise DiagramError(number, f"`{name}` is deactivated but is not active (Mermaid fails: an inactive participant)")
        self.active[name].pop()

    def _no_semicolon(self, number: int, text: str) -> None:
        if ";" in _ENTITY.sub("", text):  # #quot; and #59; are Mermaid's escapes, not statement ends
            raise DiagramError(number, f"a `;` ends a statement in Mermaid (`{text.strip()}`): write #59; or a comma")

    def finish(self) -> None:
        if self.blocks:
            keyword, opened = self.blocks[-1]
            raise DiagramError(opened, f"`{keyword}` is never closed with `end`")
        for name, still_open in self.active.items():
            if still_open:
                raise DiagramError(still_open[-1], f"`{name}` is activated here and never deactivated")
        if self.declared:
            for name, number in self.used:
                if name not in self.declared:
                    known = ", ".join(self.declared)
                    raise DiagramError(
                        number, f"`{name}` is not a declared participant ({known}): a typo would draw a new participant"
                    )


def check_sequence(text: str) -> None:
    """Raise :class:`DiagramError` naming the line for anything outside the course's sequenceDiagram subset."""
    lines = iter(_lines(text))
    first = next(lines, None)
    if first is None or first[1] != "sequenceDiagram":
        raise DiagramError(first[0] if first else 1, "expected `sequenceDiagram` alone on the first line")
    state = _Sequence()
    for number, line in lines:
        state.line(number, line)
    state.finish()


# --- the course's notebooks --------------------------------------------------------------------------------


def diagrams_in(path: Path, root: Path | None = None) -> list[Diagram]:
    """Every ```mermaid block in the Markdown cells of one notebook; ``path`` is shown relative to ``root`` (default: here)."""
    root = Path.cwd() if root is None else root
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    try:
        shown = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        shown = str(path)
    found = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        found += [Diagram(shown, index, n, block) for n, block in enumerate(find_mermaid_blocks(source))]
    return found


def check_course(paths: list[Path] | None = None, root: Path | None = None) -> tuple[int, list[str]]:
    """Check the diagrams of ``paths`` (default: every notebook, lab and solution under ``root``, default here).

    Returns (diagrams checked, one line per problem naming notebook, cell and line).
    """
    root = Path.cwd() if root is None else root
    if paths is None:
        paths = [p for folder in COURSE_FOLDERS for p in sorted((root / folder).glob("*.ipynb"))]
    checked, problems = 0, []
    for path in paths:
        for diagram in diagrams_in(path, root):
            checked += 1
            try:
                check_diagram(diagram.text)
            except DiagramError as error:
                problems.append(f"{diagram.where()}: {error}")
    return checked, problems


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers diagrams [NOTEBOOK ...]``: exit 1 and print each problem, one line each."""
    parser = argparse.ArgumentParser(prog="python -m helpers diagrams", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to check (default: the whole course)")
    args = parser.parse_args(argv)
    if not args.notebooks and not any((Path.cwd() / folder).is_dir() for folder in COURSE_FOLDERS):
        print(f"no {', '.join(COURSE_FOLDERS)} folder here: run it from the course folder, or name notebooks", file=sys.stderr)
        return 2
    checked, problems = check_course(args.notebooks or None)
    for problem in problems:
        print(problem)
    print(f"{checked} diagrams checked, {len(problems)} with problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
