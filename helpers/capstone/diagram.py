"""Read the learner's Mermaid diagram of the image pipeline and check the design it draws.

Lab 07, question q1, asks for the image pipeline as a Mermaid ``flowchart LR`` in a
Markdown cell. A picture is only checkable if its arrows say what kind of call they are,
so the lab fixes a small notation, and this module reads it. Pure Python and the
standard library: the check runs in the grader, where there is no browser to render
Mermaid.

The notation (what the lab quotes)
----------------------------------

- Draw one node for each part: the **User**, **Upload**, **Storage**, the
  **AI Image Processor** and **Notification**. The MQTT **Broker** may be a node of its
  own, or be left out.
- An arrow goes from the caller to the service it calls, or from the publisher to the
  broker and from the broker to each subscriber (without a broker node: from the
  publisher straight to the subscriber). Draw calls and messages, not answers.
- A **sync** call is a **solid arrow labelled HTTP ...**:
  ``Upload -->|HTTP PUT /originals| Storage``.
- An **async** message is a **dotted arrow labelled MQTT ...**:
  ``Upload -.->|MQTT image.uploaded| Processor`` (or ``Upload -.->|MQTT image.uploaded| Broker``
  and ``Broker -.->|MQTT image.uploaded| Processor``).
- Every arrow carries one of the two markings. An arrow whose line style and label word
  disagree (a solid arrow labelled MQTT, a dotted arrow labelled HTTP), a thick arrow
  (``==>``), or an arrow with neither word is reported by name.

The label word may stand anywhere in the label (``HTTP POST /images`` or
``POST /images (HTTP)``), in any case; HTTPS counts as HTTP.

Which node is which: the role comes from keywords in the node's label, case-insensitive
(:data:`ROLE_KEYWORDS`): user, client, browser; upload; storage, store, bucket, s3;
processor, process, ai, worker; notification (notif...), email, inbox; broker, mqtt,
queue, bus, mosquitto. When a label has keywords of two roles, the one that comes first wins
("Notification (MQTT consumer)" is Notification, "MQTT broker" is the Broker). A node
inside a ``subgraph`` whose own label names no role takes the subgraph's role, so the
processor may be drawn as a subgraph of several consumers. The AI Image Processor and the
Broker may have several nodes (consumers, topics); two nodes for the User, Upload,
Storage or Notification are reported as ambiguous.

What the design check wants (:func:`check_design`): User -> Upload sync; Upload ->
Storage sync; Upload to the AI Image Processor async (a direct dotted arrow, or through
the broker node); AI Image Processor -> Storage sync; AI Image Processor to Notification
async; and no chain of sync calls from Upload to the processor or to Notification (the
upload answers 202 at once: it must not wait for processing).

The parser (:func:`parse_flowchart`) reads the Mermaid flowchart syntax a learner
really writes; anything else raises :class:`DiagramError` with the line number, so the
learner reads one sentence about one line rather than a wrong verdict.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "ROLES",
    "ROLE_KEYWORDS",
    "ROLE_NAMES",
    "DiagramError",
    "Edge",
    "Finding",
    "Flowchart",
    "Node",
    "Subgraph",
    "check_design",
    "compare_with_observed",
    "edge_kinds",
    "find_mermaid",
    "find_mermaid_blocks",
    "marking_problem",
    "parse_flowchart",
    "roles",
]

ROLES = ("user", "upload", "storage", "processor", "notification", "broker")
"""Every role a node can have; all but the broker must be drawn."""

ROLE_NAMES = {
    "user": "User",
    "upload": "Upload",
    "storage": "Storage",
    "processor": "AI Image Processor",
    "notification": "Notification",
    "broker": "Broker",
}
"""How a message names a role that has no node to take the label from."""

ROLE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "user": ("user", "client", "browser"),
    "upload": ("upload",),
    "storage": ("storage", "store", "bucket", "s3"),
    "processor": ("processor", "process", "ai", "worker"),
    "notification": ("notif", "email", "e-mail", "inbox"),
    "broker": ("broker", "mqtt", "queue", "bus", "mosquitto"),
}
"""Label keywords per role. A keyword matches at the start of a word; the short ones
(ai, s3, bus) only as a whole word, so "mail" is no AI and "business" no bus."""

_WHOLE_WORD = {"ai", "s3", "bus"}
_REQUIRED = ("user", "upload", "storage", "processor", "notification")
_SEVERAL_ALLOWED = {"processor", "broker"}  # several consumers; several topics

SYNC, ASYNC = "sync", "async"


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

    ``arrow`` is the line style ("solid", "dotted", "thick"), ``kind`` what the notation
    makes of it ("sync", "async", or None when the marking is missing or inconsistent),
    ``head`` the end ("arrow", "none" for ``---``, "circle", "cross") and ``line`` the
    diagram line it was drawn on.
    """

    src: str
    dst: str
    label: str
    arrow: str
    kind: str | None
    head: str = "arrow"
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


@dataclass(frozen=True)
class Finding:
    """One line of feedback: ``ok``, the edge or node it is about (``subject``), and a sentence."""

    ok: bool
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.message}"


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

_HEADS = {"o": "circle", "x": "cross"}
# (pattern, line style, head); longest forms first so "--->" is one arrow, not "---" + ">".
_PLAIN_LINKS = (
    (re.compile(r"-{2,}>"), "solid", "arrow"),
    (re.compile(r"-{2,}[ox](?=[\s|])"), "solid", ""),
    (re.compile(r"-{3,}"), "solid", "none"),
    (re.compile(r"-\.+->"), "dotted", "arrow"),
    (re.compile(r"-\.+-[ox](?=[\s|])"), "dotted", ""),
    (re.compile(r"-\.+-"), "dotted", "none"),
    (re.compile(r"={2,}>"), "thick", "arrow"),
    (re.compile(r"={2,}[ox](?=[\s|])"), "thick", ""),
    (re.compile(r"={3,}"), "thick", "none"),
)
# Links with the text inside: "A -- text --> B", "A -. text .-> B", "A == text ==> B".
_TEXT_LINKS = (
    ("--", re.compile(r"\s*(-{2,}>|-{2,}[ox](?=\s)|-{3,})"), "solid"),
    ("-.", re.compile(r"\s*(\.-+>|\.-+[ox](?=\s)|\.-+)"), "dotted"),
    ("==", re.compile(r"\s*(={2,}>|={2,}[ox](?=\s)|={3,})"), "thick"),
)
_ENTITY = re.compile(r"#(\w+);")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def _head_of(token: str, default: str) -> str:
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


class _Parser:
    """One pass over the diagram's lines; builds a :class:`Flowchart`."""

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
        start = self._skip_front_matter(lines)
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

    def _skip_front_matter(self, lines: list[str]) -> int:
        """Lines taken by a ``---`` front matter block (title, config), which Mermaid allows first."""
        if not lines or lines[0].strip() != "---":
            return 0
        for i, line in enumerate(lines[1:], start=2):
            if line.strip() == "---":
                return i
        raise DiagramError(1, "the front matter opened with `---` is never closed with `---`")

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
                    kind = _kind(arrow, head, label)
                    self.chart.edges.append(Edge(src, dst, label, arrow, kind, head, self.line_no))
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

    def _link(self, line: str, pos: int) -> tuple[str, str, str, int] | None:
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
        """Say clearly what is wrong with links a learner may try that this notation cannot read."""
        rest = line[pos:]
        if re.match(r"<[-=.]", rest) or re.match(r"[ox][-=.]{2}", rest):
            raise self.fail("a two-headed arrow is not supported: draw one arrow from the caller to the callee")
        if rest.startswith("~~~"):
            raise self.fail("an invisible link `~~~` is not supported: leave it out")
        if rest.startswith("->"):
            raise self.fail(f"`{rest.split()[0]}` is not a Mermaid arrow: write `-->` (sync) or `-.->` (async)")

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

    def _text_link(self, line: str, pos: int, closer: re.Pattern[str], arrow: str, opener: str) -> tuple[str, str, str, int]:
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
        head = "arrow" if token.endswith(">") else _HEADS.get(token[-1], "none")
        return arrow, head, _clean_text(text), match.end()


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
    than guessing: a wrong guess would become a wrong verdict on the learner's design.
    """
    return _Parser().parse(text)


# --- the notation: sync, async, or a problem ------------------------------------------------------

_HTTP = re.compile(r"\bhttps?\b", re.IGNORECASE)
_MQTT = re.compile(r"\bmqtt\b", re.IGNORECASE)


def _protocols(label: str) -> tuple[bool, bool]:
    return bool(_HTTP.search(label)), bool(_MQTT.search(label))


def _kind(arrow: str, head: str, label: str) -> str | None:
    """Sync for a solid arrow labelled HTTP, async for a dotted arrow labelled MQTT, else None."""
    http, mqtt = _protocols(label)
    if head != "arrow" or http == mqtt:
        return None
    if arrow == "solid" and http:
        return SYNC
    if arrow == "dotted" and mqtt:
        return ASYNC
    return None


def marking_problem(chart: Flowchart, edge: Edge) -> str | None:
    """What is wrong with the edge's sync/async marking, as a sentence naming it; None if it is fine."""
    name = chart.edge_name(edge)
    http, mqtt = _protocols(edge.label)
    if edge.head != "arrow":
        return f"{name} has no arrowhead: draw an arrow from the caller to the service it calls"
    if edge.arrow == "thick":
        return f"{name}: a thick arrow (==>) is neither sync nor async: draw -->|HTTP ...| or -.->|MQTT ...|"
    if http and mqtt:
        return f"{name}: the label says both HTTP and MQTT: one arrow is one kind of call"
    if not http and not mqtt:
        return f"{name} has no sync/async marking: label a solid arrow `HTTP ...` (sync) or a dotted arrow `MQTT ...` (async)"
    if edge.arrow == "solid" and mqtt:
        return f"{name}: a solid arrow says sync, the label says MQTT"
    if edge.arrow == "dotted" and http:
        return f"{name}: a dotted arrow says async, the label says HTTP"
    return None


# --- roles ----------------------------------------------------------------------------------------


def _keyword_pattern(word: str) -> str:
    return rf"\b{re.escape(word)}\b" if word in _WHOLE_WORD else rf"\b{re.escape(word)}"


_ROLE_PATTERNS = {
    role: re.compile("|".join(_keyword_pattern(w) for w in words), re.IGNORECASE) for role, words in ROLE_KEYWORDS.items()
}


def _label_role(label: str) -> str | None:
    """The role whose keyword comes first in the label, or None."""
    hits = [(match.start(), role) for role, pattern in _ROLE_PATTERNS.items() if (match := pattern.search(label))]
    return min(hits)[1] if hits else None


def _enclosing(chart: Flowchart) -> dict[str, str]:
    """Node id -> id of the innermost subgraph it was first drawn in."""
    return {member: sub.id for sub in chart.subgraphs.values() for member in sub.members}


def roles(chart: Flowchart) -> dict[str, str]:
    """Node id -> role ("user", "upload", "storage", "processor", "notification", "broker").

    Nodes whose label (and enclosing subgraphs' titles) name no role are left out;
    :func:`check_design` reports missing and ambiguous roles.
    """
    inside = _enclosing(chart)
    found: dict[str, str] = {}
    for node in chart.nodes.values():
        role = _label_role(node.label)
        group = inside.get(node.id)
        while role is None and group is not None:
            role = _label_role(chart.subgraphs[group].label)
            group = chart.subgraphs[group].parent
        if role is not None:
            found[node.id] = role
    return found


def _nodes_by_role(chart: Flowchart, role_of: dict[str, str]) -> dict[str, list[str]]:
    by_role: dict[str, list[str]] = {role: [] for role in ROLES}
    for node_id, role in role_of.items():
        by_role[role].append(node_id)
    return by_role


def _role_name(chart: Flowchart, by_role: dict[str, list[str]], role: str) -> str:
    """How a message names a role: the label of its node, or the role's usual name."""
    ids = by_role.get(role, [])
    return chart.name(ids[0]) if len(ids) == 1 else ROLE_NAMES[role]


def _role_findings(chart: Flowchart, role_of: dict[str, str], by_role: dict[str, list[str]]) -> list[Finding]:
    unnamed = [chart.name(n) for n in chart.nodes if n not in role_of]
    findings = []
    for role in _REQUIRED:
        ids = by_role[role]
        if not ids:
            words = ", ".join(ROLE_KEYWORDS[role])
            extra = f" (nodes with no role: {', '.join(repr(u) for u in unnamed)})" if unnamed else ""
            message = f"no node for {ROLE_NAMES[role]}: add one whose label says {words}{extra}"
            findings.append(Finding(False, ROLE_NAMES[role], message))
        elif len(ids) > 1 and role not in _SEVERAL_ALLOWED:
            labels = " and ".join(repr(chart.name(n)) for n in ids)
            message = f"{labels} both look like {ROLE_NAMES[role]}: give each node one role"
            findings.append(Finding(False, ROLE_NAMES[role], message))
        else:
            names = ", ".join(chart.name(n) for n in ids)
            quoted = ", ".join(repr(chart.name(n)) for n in ids)
            findings.append(Finding(True, names, f"found {ROLE_NAMES[role]}: {quoted}"))
    return findings


# --- routes between roles ---------------------------------------------------------------------------


def _routes(chart: Flowchart, sources: Iterable[str], targets: set[str], via: set[str]) -> Iterator[list[Edge]]:
    """Every simple path from a source to a target whose inner nodes are all in ``via`` (broker nodes)."""

    def walk(at: str, path: list[Edge], seen: set[str]) -> Iterator[list[Edge]]:
        for edge in chart.edges:
            if edge.src != at or edge.dst in seen:
                continue
            if edge.dst in targets:
                yield [*path, edge]
            elif edge.dst in via:
                yield from walk(edge.dst, [*path, edge], seen | {edge.dst})

    for source in sources:
        yield from walk(source, [], {source})


def _route_kind(route: list[Edge]) -> str | None:
    """Sync if every hop is sync, async if every hop is async, "mixed" otherwise; None if a hop is unmarked."""
    kinds = {edge.kind for edge in route}
    if None in kinds:
        return None
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _route_name(chart: Flowchart, route: list[Edge]) -> str:
    return " -> ".join([chart.name(route[0].src), *(chart.name(edge.dst) for edge in route)])


def _sync_paths(chart: Flowchart, sources: list[str], targets: set[str]) -> dict[str, list[Edge]]:
    """The shortest all-sync path from any source to each reachable target (breadth first)."""
    paths: dict[str, list[Edge]] = {}
    frontier: list[tuple[str, list[Edge]]] = [(s, []) for s in sources]
    seen = set(sources)
    while frontier:
        next_frontier = []
        for at, path in frontier:
            for edge in chart.edges:
                if edge.src == at and edge.kind == SYNC and edge.dst not in seen:
                    seen.add(edge.dst)
                    route = [*path, edge]
                    if edge.dst in targets:
                        paths[edge.dst] = route
                    next_frontier.append((edge.dst, route))
        frontier = next_frontier
    return paths


# --- the design check ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """One required relation: from role, to role, the kind, and why (said when it is wrong)."""

    src: str
    dst: str
    kind: str
    why: str


_RULES = (
    _Rule("user", "upload", SYNC, "the user sends the image with an HTTP request and gets 202 back at once"),
    _Rule("upload", "storage", SYNC, "the upload stores the original with an HTTP call before it answers 202"),
    _Rule("upload", "processor", ASYNC, "the upload would wait for processing"),
    _Rule("processor", "storage", SYNC, "the processor fetches the original and stores its results with HTTP calls"),
    _Rule("processor", "notification", ASYNC, "the processor would wait for the notification to be sent"),
)


def _check_sync_rule(chart: Flowchart, by_role: dict[str, list[str]], rule: _Rule) -> Finding:
    """A sync rule needs a direct solid HTTP arrow from the caller to the callee."""
    src_name, dst_name = _role_name(chart, by_role, rule.src), _role_name(chart, by_role, rule.dst)
    subject = f"{src_name} -> {dst_name}"
    srcs, dsts = set(by_role[rule.src]), set(by_role[rule.dst])
    direct = [e for e in chart.edges if e.src in srcs and e.dst in dsts]
    if any(e.kind == SYNC for e in direct):
        return Finding(True, subject, f"{subject} is sync (HTTP)")
    if direct:
        kind = direct[0].kind
        if kind is None:
            return Finding(
                False, subject, f"{subject} has no valid sync/async marking, so it cannot be checked: it should be sync"
            )
        return Finding(False, subject, f"{subject} is drawn {kind}: it should be sync, {rule.why}")
    brokers = set(by_role["broker"])
    if brokers and any(True for _ in _routes(chart, srcs, dsts, brokers)):
        return Finding(False, subject, f"{subject} is drawn only through the broker: it should be sync, {rule.why}")
    if any(e.src in dsts and e.dst in srcs for e in chart.edges):
        message = f"{subject} is drawn the other way round ({dst_name} -> {src_name}): arrows go from the caller to the callee"
        return Finding(False, subject, message)
    return Finding(False, subject, f"there is no arrow {subject}: it should be sync, {rule.why}")


def _check_async_rule(chart: Flowchart, by_role: dict[str, list[str]], rule: _Rule) -> Finding:
    """An async rule needs a dotted MQTT arrow, direct or through broker nodes, and no sync route."""
    src_name, dst_name = _role_name(chart, by_role, rule.src), _role_name(chart, by_role, rule.dst)
    subject = f"{src_name} -> {dst_name}"
    routes = list(_routes(chart, by_role[rule.src], set(by_role[rule.dst]), set(by_role["broker"])))
    by_kind: dict[str | None, list[list[Edge]]] = {}
    for route in routes:
        by_kind.setdefault(_route_kind(route), []).append(route)
    if SYNC in by_kind:
        route = by_kind[SYNC][0]
        return Finding(False, subject, _sync_route_message(_route_name(chart, route), len(route), rule.why))
    if ASYNC in by_kind:
        via = ", through the broker" if len(by_kind[ASYNC][0]) > 1 else ""
        return Finding(True, subject, f"{subject} is async (MQTT{via})")
    if "mixed" in by_kind:
        name = _route_name(chart, by_kind["mixed"][0])
        return Finding(False, subject, f"{name} mixes sync and async hops: publish and subscribe with MQTT (dotted arrows)")
    if None in by_kind:
        name = _route_name(chart, by_kind[None][0])
        return Finding(False, subject, f"{name} has no valid sync/async marking, so it cannot be checked: it should be async")
    return Finding(
        False,
        subject,
        f"there is no arrow from {src_name} to {dst_name}: it should be async (MQTT), directly or through the broker",
    )


def _marking_findings(chart: Flowchart) -> list[Finding]:
    problems = [Finding(False, chart.edge_name(e), p) for e in chart.edges if (p := marking_problem(chart, e))]
    if problems or not chart.edges:
        return problems or [Finding(False, "arrows", "the diagram has no arrows")]
    return [Finding(True, "arrows", "every arrow is marked sync (HTTP) or async (MQTT)")]


def _sync_route_message(name: str, hops: int, consequence: str) -> str:
    """The same sentence from the rule and from the no-waiting check, so the finding is said once."""
    if hops == 1:
        return f"{name} is drawn sync: {consequence}"
    return f"{name} is a chain of sync calls: {consequence} (arrows go from the caller to the service it calls; draw no answers)"


def _no_waiting_findings(chart: Flowchart, by_role: dict[str, list[str]]) -> list[Finding]:
    """The design holds: no chain of sync calls from Upload to the processor or to Notification."""
    uploads = by_role["upload"]
    targets = set(by_role["processor"]) | set(by_role["notification"])
    if not uploads or not targets:
        return []
    findings = []
    for target, path in _sync_paths(chart, uploads, targets).items():
        what = "processing" if target in by_role["processor"] else "the notification"
        name = _route_name(chart, path)
        findings.append(Finding(False, name, _sync_route_message(name, len(path), f"the upload would wait for {what}")))
    if findings:
        return findings
    upload, processor, notification = (_role_name(chart, by_role, r) for r in ("upload", "processor", "notification"))
    message = f"no sync path from {upload} to {processor} or {notification}: the upload answers 202 at once"
    return [Finding(True, upload, message)]


def check_design(chart: Flowchart) -> list[Finding]:
    """Every finding about the drawn design, passes included, in reading order.

    Roles first (which node is which), then the markings of every arrow, then the five
    required relations, then the design's point: nothing makes the upload wait for
    processing or notification.
    """
    role_of = roles(chart)
    by_role = _nodes_by_role(chart, role_of)
    findings = _role_findings(chart, role_of, by_role)
    findings += _marking_findings(chart)
    for rule in _RULES:
        if by_role[rule.src] and by_role[rule.dst]:
            check = _check_sync_rule if rule.kind == SYNC else _check_async_rule
            findings.append(check(chart, by_role, rule))
    findings += _no_waiting_findings(chart, by_role)
    return _dedupe(findings)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """A direct sync Upload -> Processor arrow breaks a rule and the design: say it once."""
    seen: set[tuple[bool, str]] = set()
    unique = []
    for finding in findings:
        if (finding.ok, finding.message) not in seen:
            seen.add((finding.ok, finding.message))
            unique.append(finding)
    return unique


# --- the diagram against the wire -----------------------------------------------------------------------


def edge_kinds(chart: Flowchart) -> dict[tuple[str, str], str]:
    """(role, role) -> "sync" / "async" for every drawn relation between two roles, broker hops collapsed.

    Upload -.-> Broker -.-> Processor counts as ("upload", "processor"): "async". A route
    is sync only when every hop is sync (only then does the caller wait for the far end);
    when a pair has both, "sync" wins, since one waiting route is enough to make the
    caller wait. Unmarked arrows and nodes with no role are left out; so is the broker.
    With a single broker node, every publisher is paired with every subscriber.
    """
    role_of = roles(chart)
    brokers = {n for n, r in role_of.items() if r == "broker"}
    kinds: dict[tuple[str, str], str] = {}
    for src, src_role in role_of.items():
        if src_role == "broker":
            continue
        targets = {n for n, r in role_of.items() if r not in ("broker", src_role)}
        for route in _routes(chart, [src], targets, brokers):
            kind = _route_kind(route)
            if kind is None:
                continue
            pair = (src_role, role_of[route[-1].dst])
            route_kind = SYNC if kind == SYNC else ASYNC
            kinds[pair] = SYNC if SYNC in (kinds.get(pair), route_kind) else route_kind
    return kinds


_SAID = {SYNC: "sync (HTTP)", ASYNC: "async (MQTT)"}
_DID = {
    SYNC: "called it synchronously (HTTP / in the request)",
    ASYNC: "reached it asynchronously (a message through the broker)",
}
_HOW = {SYNC: "synchronously (HTTP / in the request)", ASYNC: "asynchronously (a message through the broker)"}


def compare_with_observed(chart: Flowchart, observed: dict[tuple[str, str], str]) -> list[Finding]:
    """One failing finding per relation where the diagram and the observed calls disagree; empty when they agree.

    ``observed`` has the shape of :func:`edge_kinds`: what a check saw on the wire. A
    relation drawn but not observed is not reported (the observation may not cover it,
    and a shared broker node pairs every publisher with every subscriber); a relation
    observed but not drawn is.
    """
    for pair, kind in observed.items():
        if kind not in _SAID or not all(role in ROLE_NAMES and role != "broker" for role in pair):
            raise ValueError(
                f"observed {pair!r}: {kind!r} is not a (role, role) -> 'sync' | 'async' entry (broker hops collapsed)"
            )
    drawn = edge_kinds(chart)
    by_role = _nodes_by_role(chart, roles(chart))
    findings = []
    for pair, kind in observed.items():
        name = f"{_role_name(chart, by_role, pair[0])} -> {_role_name(chart, by_role, pair[1])}"
        said = drawn.get(pair)
        if said is None:
            message = f"the running code reached {name} {_HOW[kind]}, but the diagram has no arrow {name}"
            findings.append(Finding(False, name, message))
        elif said != kind:
            message = f"the diagram says {name} is {_SAID[said]}, but the running code {_DID[kind]}"
            findings.append(Finding(False, name, message))
    return findings
