"""Read a Mermaid flowchart in pure Python: nodes, arrows, subgraphs, and the line of any mistake.

Two users, one parser: ``python -m helpers diagrams`` (:mod:`helpers.tools.mermaid_check`)
checks every diagram of the course without a browser, and lab 07's check
(:mod:`helpers.capstone.diagram`) reads the learner's drawing of the image pipeline. It
knows no notation of its own: an :class:`Edge` says how it is drawn (line style, head,
label); what a solid or dotted arrow *means* is for the module that layers a notation on
top (lab 07's sync/async, in :mod:`helpers.capstone.diagram`).

It reads the Mermaid flowchart syntax an author or learner really writes; anything else
raises :class:`DiagramError` with the line number, so the reader gets one sentence about
one line rather than a wrong picture. Standard library only: it runs in the grader,
where there is no browser to render Mermaid.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Arrow",
    "DiagramError",
    "Edge",
    "Flowchart",
    "FlowchartParser",
    "Head",
    "Node",
    "Subgraph",
    "comment_at",
    "find_mermaid",
    "find_mermaid_blocks",
    "front_matter_lines",
    "parse_flowchart",
]

Arrow = Literal["solid", "dotted", "thick"]
"""An arrow's line style: ``-->``, ``-.->``, ``==>``."""

Head = Literal["arrow", "none", "circle", "cross"]
"""An arrow's end: ``-->``, ``---``, ``--o``, ``--x``."""


class DiagramError(ValueError):
    """The diagram uses syntax this checker does not read; ``line`` is 1-based within the diagram."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line} of the diagram: {message}")
        self.line = line


@dataclass(frozen=True)
class Node:
    """A node: its Mermaid id, its label as displayed, and its shape ("rect", "circle", "cylinder", ...)."""

    id: str
    label: str
    shape: str


@dataclass(frozen=True)
class Edge:
    """One arrow from ``src`` to ``dst`` (node ids).

    ``arrow`` is the line style ("solid", "dotted", "thick"), ``head`` the end ("arrow",
    "none" for ``---``, "circle", "cross"), ``label`` the text on it as displayed and
    ``line`` the diagram line it was drawn on. What the arrow means is not the parser's
    business: a notation reads it from these fields.
    """

    src: str
    dst: str
    label: str
    arrow: Arrow
    head: Head = "arrow"
    line: int = 0


@dataclass
class Subgraph:
    """A ``subgraph ... end`` block: its id, title, enclosing subgraph and the nodes first drawn in it."""

    id: str
    label: str
    parent: str | None = None
    members: list[str] = field(default_factory=list)


@dataclass
class Flowchart:
    """A parsed flowchart: direction ("LR", "TB", ...), nodes by id, edges in drawing order."""

    direction: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    subgraphs: dict[str, Subgraph] = field(default_factory=dict)

    def name(self, node_id: str) -> str:
        """The node's label: messages name nodes the way the learner sees them."""
        node = self.nodes.get(node_id)
        return node.label if node else node_id

    def edge_name(self, edge: Edge) -> str:
        """``Upload -> Storage``, with labels."""
        return f"{self.name(edge.src)} -> {self.name(edge.dst)}"


# --- finding the diagram in a Markdown cell ------------------------------------------------------

_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*mermaid\b.*$", re.IGNORECASE)


def find_mermaid_blocks(markdown: str) -> list[str]:
    """The bodies of every ```` ```mermaid ```` fenced block, in order (CommonMark fences: ``` or ~~~)."""
    blocks: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        opened = _FENCE_OPEN.match(lines[i])
        i += 1
        if not opened:
            continue
        fence = opened.group(1)
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body: list[str] = []
        while i < len(lines) and not closing.match(lines[i]):
            body.append(lines[i])
            i += 1
        i += 1  # past the closing fence (an unclosed block runs to the end, as in CommonMark)
        blocks.append("\n".join(body))
    return blocks


def find_mermaid(markdown: str) -> str | None:
    """The body of the first ```` ```mermaid ```` block in a Markdown text, or None if there is none."""
    blocks = find_mermaid_blocks(markdown)
    return blocks[0] if blocks else None


# --- parsing ------------------------------------------------------------------------------------

_DIRECTIONS = {"LR", "RL", "TB", "TD", "BT"}
_HEADER = re.compile(r"^(flowchart|graph)(?:[ \t]+([^\s;]+))?[ \t]*(?:;(.*))?$")
# Styling, links and accessibility lines say nothing about calls: skipped whole.
_IGNORED = re.compile(r"^(?:(?:classDef|class|style|click|linkStyle|direction)\s+\S|(?:accTitle|accDescr)\s*:)")
_ID = re.compile(r"\w+(?:-\w+)*")
_SUBGRAPH_ID_TITLE = re.compile(r"^(\w+(?:-\w+)*)\s*\[(.*)\]$")

# (opener, closer, shape), longest openers first; openers shared by two shapes are told
# apart by which closer comes first.
_SHAPES = (
    ("(((", ")))", "double-circle"),
    ("((", "))", "circle"),
    ("([", "])", "stadium"),
    ("[[", "]]", "subroutine"),
    ("[(", ")]", "cylinder"),
    ("[/", "/]", "parallelogram"),
    ("[/", "\\]", "trapezoid"),
    ("[\\", "\\]", "parallelogram-alt"),
    ("[\\", "/]", "trapezoid-alt"),
    ("{{", "}}", "hexagon"),
    ("[", "]", "rect"),
    ("(", ")", "round"),
    ("{", "}", "rhombus"),
    (">", "]", "asymmetric"),
)

_HEADS: dict[str, Head] = {"o": "circle", "x": "cross"}
# (pattern, line style, head); longest forms first so "--->" is one arrow, not "---" + ">".
_PLAIN_LINKS: tuple[tuple[re.Pattern[str], Arrow, Head | None], ...] = (
    (re.compile(r"-{2,}>"), "solid", "arrow"),
    (re.compile(r"-{2,}[ox](?=[\s|])"), "solid", None),
    (re.compile(r"-{3,}"), "solid", "none"),
    (re.compile(r"-\.+->"), "dotted", "arrow"),
    (re.compile(r"-\.+-[ox](?=[\s|])"), "dotted", None),
    (re.compile(r"-\.+-"), "dotted", "none"),
    (re.compile(r"={2,}>"), "thick", "arrow"),
    (re.compile(r"={2,}[ox](?=[\s|])"), "thick", None),
    (re.compile(r"={3,}"), "thick", "none"),
)
# Links with the text inside: "A -- text --> B", "A -. text .-> B", "A == text ==> B".
_TEXT_LINKS: tuple[tuple[str, re.Pattern[str], Arrow], ...] = (
    ("--", re.compile(r"\s*(-{2,}>|-{2,}[ox](?=\s)|-{3,})"), "solid"),
    ("-.", re.compile(r"\s*(\.-+>|\.-+[ox](?=\s)|\.-+)"), "dotted"),
    ("==", re.compile(r"\s*(={2,}>|={2,}[ox](?=\s)|={3,})"), "thick"),
)
_ENTITY = re.compile(r"#(\w+);")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def _head_of(token: str, default: Head | None) -> Head:
    """The end of a link token: the given default, or circle/cross for ``--o`` / ``--x``."""
    return default or _HEADS[token[-1]]


def _clean_text(text: str) -> str:
    """A label as displayed: entities (``#quot;``, ``#35;``) decoded, ``<br/>`` as a space, markdown quotes off."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == "`":
        text = text[1:-1]

    def decode(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.isdigit():
            return chr(int(name))
        decoded = html.unescape(f"&{name};")
        return match.group(0) if decoded == f"&{name};" else decoded

    text = _BR.sub(" ", _ENTITY.sub(decode, text))
    return " ".join(text.split())


class FlowchartParser:
    """One pass over the diagram's lines; builds a :class:`Flowchart`.

    A notation that wants its own advice for a wrong arrow overrides :meth:`wrong_arrow`
    (lab 07 says which arrow is sync and which async); nothing else is meant to change.
    """

    def __init__(self) -> None:
        self.chart = Flowchart(direction="TB")
        self.labelled: set[str] = set()  # ids given a label (not just referenced)
        self.open_subgraphs: list[tuple[str, int]] = []  # (id, line where it opened)
        self.line_no = 0

    def fail(self, message: str) -> DiagramError:
        return DiagramError(self.line_no, message)

    # -- lines -----------------------------------------------------------------------------------

    def parse(self, text: str) -> Flowchart:
        lines = text.splitlines()
        start = front_matter_lines(lines)
        header_seen = False
        for line_no, raw in enumerate(lines[start:], start=start + 1):
            self.line_no = line_no
            line = _strip_comment(raw).strip()
            if not line:
                continue
            if line != raw.strip() and not raw.strip().startswith("%%{"):
                raise self.fail("a `%%` comment must be on a line of its own: JupyterLab cannot draw `A --> B %% note`")
            if not header_seen:
                line = self._header(line)
                header_seen = True
                if not line:
                    continue
            self._line(line)
        if not header_seen:
            raise DiagramError(max(len(lines), 1), "the diagram is empty: it should start with `flowchart LR`")
        if self.open_subgraphs:
            sub_id, opened = self.open_subgraphs[-1]
            raise DiagramError(opened, f"`subgraph {sub_id}` is never closed with `end`")
        self._link_subgraph_nodes()
        return self.chart

    def _header(self, line: str) -> str:
        """Read ``flowchart LR`` / ``graph LR``; return what follows a ``;`` on the same line."""
        match = _HEADER.match(line)
        if not match:
            raise self.fail(f"expected `flowchart LR` or `graph LR` as the first line, got `{line}`")
        direction = match.group(2) or "TB"
        if direction not in _DIRECTIONS:
            raise self.fail(f"`{direction}` is not a direction: use LR (or TB, TD, RL, BT)")
        self.chart.direction = direction
        return (match.group(3) or "").strip()

    def _line(self, line: str) -> None:
        if _IGNORED.match(line):
            return
        if line == "end" or line == "end;":
            self._end()
            return
        if line.startswith("subgraph ") or line == "subgraph":
            self._subgraph(line[len("subgraph") :].strip().rstrip(";").strip())
            return
        pos = 0
        while pos < len(line):
            pos = self._statement(line, pos)
            pos = _skip_ws(line, pos)
            if pos < len(line):
                if line[pos] != ";":
                    raise self.fail(_unexpected(line, pos))
                pos = _skip_ws(line, pos + 1)

    def _subgraph(self, rest: str) -> None:
        if not rest:
            raise self.fail("`subgraph` needs a name, e.g. `subgraph P[AI Image Processor]`")
        titled = _SUBGRAPH_ID_TITLE.match(rest)
        if titled:
            sub_id, title = titled.group(1), _unquote(titled.group(2))
        elif rest.startswith('"'):
            sub_id = title = _unquote(rest)
        else:
            sub_id = title = rest
        parent = self.open_subgraphs[-1][0] if self.open_subgraphs else None
        self.chart.subgraphs[sub_id] = Subgraph(sub_id, _clean_text(title), parent)
        self.open_subgraphs.append((sub_id, self.line_no))

    def _end(self) -> None:
        if not self.open_subgraphs:
            raise self.fail("`end` without a `subgraph` to close")
        self.open_subgraphs.pop()

    def _link_subgraph_nodes(self) -> None:
        """An edge to a subgraph's id points at the whole box: give that node the subgraph's title."""
        for sub in self.chart.subgraphs.values():
            if sub.id in self.chart.nodes and sub.id not in self.labelled:
                self.chart.nodes[sub.id] = Node(sub.id, sub.label, "subgraph")

    # -- statements: node groups joined by links --------------------------------------------------

    def _statement(self, line: str, pos: int) -> int:
        sources, pos = self._node_group(line, pos)
        while True:
            pos = _skip_ws(line, pos)
            link = self._link(line, pos)
            if link is None:
                return pos
            arrow, head, label, pos = link
            targets, pos = self._node_group(line, _skip_ws(line, pos))
            for src in sources:
                for dst in targets:
                    self.chart.edges.append(Edge(src, dst, label, arrow, head, self.line_no))
            sources = targets

    def _node_group(self, line: str, pos: int) -> tuple[list[str], int]:
        """``A``, ``A[label]``, or ``A & B[label] & C``."""
        ids = []
        while True:
            node_id, pos = self._node(line, pos)
            ids.append(node_id)
            after = _skip_ws(line, pos)
            if after < len(line) and line[after] == "&":
                pos = _skip_ws(line, after + 1)
                continue
            return ids, pos

    def _node(self, line: str, pos: int) -> tuple[str, int]:
        match = _ID.match(line, pos)
        if not match:
            raise self.fail(_unexpected(line, pos, wanted="a node id"))
        node_id, pos = match.group(0), match.end()
        if line.startswith("@{", pos):
            raise self.fail(f"the `{node_id}@{{ ... }}` shape syntax is not supported: write `{node_id}[label]`")
        shaped = _skip_ws(line, pos)  # Mermaid tolerates `A [label]`
        if line.startswith(">", pos) or line[shaped : shaped + 1] in ("[", "(", "{"):
            label, shape, pos = self._shape(line, node_id, pos if line.startswith(">", pos) else shaped)
            self._declare(node_id, label, shape)
        else:
            self._declare(node_id, None, None)
        class_ref = re.match(r":::[\w-]+", line[pos:])
        return node_id, pos + (class_ref.end() if class_ref else 0)

    def _shape(self, line: str, node_id: str, pos: int) -> tuple[str, str, int]:
        """Read ``[label]``, ``((label))``, ``[(label)]``, ... at ``pos``; the longest opener that closes wins."""
        for size in (3, 2, 1):
            opener = line[pos : pos + size]
            candidates = [(closer, shape) for o, closer, shape in _SHAPES if o == opener]
            if not candidates:
                continue
            found = self._shape_text(line, pos + size, candidates)
            if found is not None:
                return found
        raise self.fail(f"the label of `{node_id}` opened with `{line[pos]}` is never closed")

    def _shape_text(self, line: str, pos: int, candidates: list[tuple[str, str]]) -> tuple[str, str, int] | None:
        """The label and shape if one of the candidate closers ends it, else None (try a shorter opener)."""
        if line.startswith('"', pos):
            end = line.find('"', pos + 1)
            if end < 0:
                raise self.fail('a quoted label is never closed with `"` (write a quote inside a label as #quot;)')
            after = _skip_ws(line, end + 1)
            for closer, shape in candidates:
                if line.startswith(closer, after):
                    return _clean_text(line[pos + 1 : end]), shape, after + len(closer)
            return None
        best: tuple[int, str, str] | None = None
        for closer, shape in candidates:
            at = line.find(closer, pos)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, closer, shape)
        if best is None:
            return None
        at, closer, shape = best
        return _clean_text(line[pos:at]), shape, at + len(closer)

    def _declare(self, node_id: str, label: str | None, shape: str | None) -> None:
        """Record a node; a later label replaces an earlier one, as in Mermaid."""
        known = node_id in self.chart.nodes
        if label is not None and shape is not None:
            self.chart.nodes[node_id] = Node(node_id, label or node_id, shape)
            self.labelled.add(node_id)
        elif not known:
            self.chart.nodes[node_id] = Node(node_id, node_id, "rect")
        if not known and self.open_subgraphs:
            self.chart.subgraphs[self.open_subgraphs[-1][0]].members.append(node_id)

    # -- links ------------------------------------------------------------------------------------

    def _link(self, line: str, pos: int) -> tuple[Arrow, Head, str, int] | None:
        """The link at ``pos`` as (line style, head, label, end), or None if no link starts here."""
        self._refuse_odd_links(line, pos)
        for pattern, arrow, head in _PLAIN_LINKS:
            match = pattern.match(line, pos)
            if match:
                label, end = self._pipe_label(line, match.end())
                return arrow, _head_of(match.group(0), head), label, end
        for opener, closer, arrow in _TEXT_LINKS:
            if line.startswith(opener, pos):
                return self._text_link(line, pos + len(opener), closer, arrow, opener)
        return None

    def _refuse_odd_links(self, line: str, pos: int) -> None:
        """Say clearly what is wrong with links an author may try that this parser does not read."""
        rest = line[pos:]
        if re.match(r"<[-=.]", rest) or re.match(r"[ox][-=.]{2}", rest):
            raise self.fail("a two-headed arrow is not supported: draw one arrow from the caller to the callee")
        if rest.startswith("~~~"):
            raise self.fail("an invisible link `~~~` is not supported: leave it out")
        if rest.startswith("->"):
            raise self.fail(self.wrong_arrow(rest.split()[0]))

    def wrong_arrow(self, token: str) -> str:
        """What to say of ``->`` (and other one-dash arrows), which Mermaid does not draw."""
        return f"`{token}` is not a Mermaid arrow: write `-->` (solid) or `-.->` (dotted)"

    def _pipe_label(self, line: str, pos: int) -> tuple[str, int]:
        """The ``|label|`` after an arrow, if any."""
        at = _skip_ws(line, pos)
        if not line.startswith("|", at):
            return "", pos
        if line.startswith('"', at + 1):
            end = line.find('"', at + 2)
            close = _skip_ws(line, end + 1) if end >= 0 else -1
            if end < 0 or not line.startswith("|", close):
                raise self.fail('an arrow label `|"...` is not closed with `"|`')
            return _clean_text(line[at + 2 : end]), close + 1
        end = line.find("|", at + 1)
        if end < 0:
            raise self.fail("an arrow label opened with `|` is never closed with `|`")
        return _clean_text(line[at + 1 : end]), end + 1

    def _text_link(self, line: str, pos: int, closer: re.Pattern[str], arrow: Arrow, opener: str) -> tuple[Arrow, Head, str, int]:
        """``-- text -->`` and friends: the text runs to the first closing arrow."""
        start = _skip_ws(line, pos)
        if line.startswith('"', start):
            end = line.find('"', start + 1)
            match = closer.match(line, end + 1) if end >= 0 else None
            text = line[start + 1 : end]
        else:
            match = closer.search(line, start)
            text = line[start : match.start()] if match else ""
        if match is None or not text.strip():
            raise self.fail(f"an arrow label opened with `{opener}` is never closed with an arrow like `{opener}>`")
        token = match.group(1)
        head: Head = "arrow" if token.endswith(">") else _HEADS.get(token[-1], "none")
        return arrow, head, _clean_text(text), match.end()


def front_matter_lines(lines: list[str]) -> int:
    """How many lines a ``---`` front matter block (title, config) takes; Mermaid allows one first in any diagram."""
    if not lines or lines[0].strip() != "---":
        return 0
    for i, line in enumerate(lines[1:], start=2):
        if line.strip() == "---":
            return i
    raise DiagramError(1, "the front matter opened with `---` is never closed with `---`")


def comment_at(line: str) -> int:
    """Where a ``%%`` comment (or ``%%{init}%%`` directive) outside quotes starts in ``line``, or -1."""
    in_quotes = False
    for i, char in enumerate(line):
        if char == '"':
            in_quotes = not in_quotes
        elif not in_quotes and line.startswith("%%", i):
            return i
    return -1


def _strip_comment(line: str) -> str:
    """Drop a ``%%`` comment (and ``%%{init}%%`` directives), except inside quotes."""
    at = comment_at(line)
    return line if at < 0 else line[:at]


def _skip_ws(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in " \t":
        pos += 1
    return pos


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _unexpected(line: str, pos: int, wanted: str = "") -> str:
    """One sentence about where the line stopped making sense."""
    rest = line[pos:]
    shown = rest if len(rest) <= 30 else rest[:27] + "..."
    if wanted:
        return f"expected {wanted} at `{shown}` in `{line}`"
    return f"cannot read `{shown}` in `{line}`: expected an arrow (`-->`, `-.->`), `&` or `;`"


def parse_flowchart(text: str) -> Flowchart:
    """Parse a Mermaid flowchart (the body of a ```` ```mermaid ```` block).

    Raises :class:`DiagramError` naming the line for syntax it does not read, rather
    than guessing: a wrong guess would become a wrong verdict on what was drawn.
    """
    return FlowchartParser().parse(text)
