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
async; no relation drawn both sync and async (a solid HTTP arrow and a dotted MQTT one
between the same two parts); and no chain of sync calls from Upload to the processor or to
Notification (the upload answers 202 at once: it must not wait for processing).

The flowchart syntax is read by :mod:`helpers.core.mermaid` (the parser every diagram
of the course goes through); this module adds the notation on top: :func:`kind_of` says
what an arrow means, and :func:`parse_flowchart` gives the notation's advice for an arrow
Mermaid does not draw. Anything the parser does not read raises :class:`DiagramError`
with the line number, so the learner reads one sentence about one line rather than a
wrong verdict.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from helpers.core.mermaid import (
    DiagramError,
    Edge,
    Flowchart,
    FlowchartParser,
    Node,
    Subgraph,
    find_mermaid,
    find_mermaid_blocks,
)

__all__ = [
    "ASYNC",
    "ROLES",
    "ROLE_KEYWORDS",
    "ROLE_NAMES",
    "SYNC",
    "DiagramError",
    "Edge",
    "Finding",
    "Flowchart",
    "Kind",
    "Node",
    "Subgraph",
    "check_design",
    "compare_with_observed",
    "edge_kinds",
    "find_mermaid",
    "find_mermaid_blocks",
    "kind_of",
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

Kind = Literal["sync", "async"]
"""What an arrow of the notation is: a sync call (solid, HTTP) or an async message (dotted, MQTT)."""

RouteKind = Literal["sync", "async", "mixed"]
"""A route through broker nodes: every hop sync, every hop async, or both kinds ("mixed")."""

SYNC: Final = "sync"
ASYNC: Final = "async"


@dataclass(frozen=True)
class Finding:
    """One line of feedback: ``ok``, the edge or node it is about (``subject``), and a sentence."""

    ok: bool
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.message}"


# --- parsing: the core parser, with the notation's advice ------------------------------------------


class _NotationParser(FlowchartParser):
    """The core parser; a one-dash arrow is answered in the lab's words (which arrow is which kind)."""

    def wrong_arrow(self, token: str) -> str:
        return f"`{token}` is not a Mermaid arrow: write `-->` (sync) or `-.->` (async)"


def parse_flowchart(text: str) -> Flowchart:
    """Parse a Mermaid flowchart (the body of a ```` ```mermaid ```` block) with :mod:`helpers.core.mermaid`.

    Raises :class:`DiagramError` naming the line for syntax it does not read, rather
    than guessing: a wrong guess would become a wrong verdict on the learner's design.
    """
    return _NotationParser().parse(text)


# --- the notation: sync, async, or a problem ------------------------------------------------------

_HTTP = re.compile(r"\bhttps?\b", re.IGNORECASE)
_MQTT = re.compile(r"\bmqtt\b", re.IGNORECASE)


def _protocols(label: str) -> tuple[bool, bool]:
    return bool(_HTTP.search(label)), bool(_MQTT.search(label))


def kind_of(edge: Edge) -> Kind | None:
    """Sync for a solid arrow labelled HTTP, async for a dotted arrow labelled MQTT, else None."""
    http, mqtt = _protocols(edge.label)
    if edge.head != "arrow" or http == mqtt:
        return None
    if edge.arrow == "solid" and http:
        return SYNC
    if edge.arrow == "dotted" and mqtt:
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


def _route_kind(route: list[Edge]) -> RouteKind | None:
    """Sync if every hop is sync, async if every hop is async, "mixed" otherwise; None if a hop is unmarked."""
    kinds = {kind_of(edge) for edge in route}
    if None in kinds:
        return None
    return "mixed" if len(kinds) > 1 else kinds.pop()


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
                if edge.src == at and kind_of(edge) == SYNC and edge.dst not in seen:
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
    kind: Kind
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
    if any(kind_of(e) == SYNC for e in direct):
        return Finding(True, subject, f"{subject} is sync (HTTP)")
    if direct:
        kind = kind_of(direct[0])
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
    by_kind: dict[RouteKind | None, list[list[Edge]]] = {}
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
    required relations, then any relation drawn both sync and async, then the design's
    point: nothing makes the upload wait for processing or notification.
    """
    role_of = roles(chart)
    by_role = _nodes_by_role(chart, role_of)
    findings = _role_findings(chart, role_of, by_role)
    findings += _marking_findings(chart)
    for rule in _RULES:
        if by_role[rule.src] and by_role[rule.dst]:
            check = _check_sync_rule if rule.kind == SYNC else _check_async_rule
            findings.append(check(chart, by_role, rule))
    findings += _contradiction_findings(chart, role_of, by_role)
    findings += _answer_findings(chart, role_of, by_role)
    findings += _no_waiting_findings(chart, by_role)
    return _dedupe(findings)


_ANSWER_WORDS = re.compile(
    r"(?<![#/\w.:-])[1-5]\d\d\b|\b(?:ok|accepted|created|no content|responses?|responds?|repl(?:y|ies)|answers?)\b",
    re.IGNORECASE,
)
"""What labels an answer: an HTTP status (202, "OK", "Accepted", "Created") or the words response, reply, answer.
A number after ``#`` or ``/`` (job #123, /jobs/123) is an id, not a status."""

_ENTITY = re.compile(r"#\w+;")
"""A Mermaid entity code (``#123;`` for ``{``): its digits are no HTTP status."""
_SYNC_CALLS = {(rule.src, rule.dst) for rule in _RULES if rule.kind == SYNC}
_CALLS = {(rule.src, rule.dst) for rule in _RULES}


def _answer_findings(chart: Flowchart, role_of: dict[str, str], by_role: dict[str, list[str]]) -> list[Finding]:
    """An answer drawn as an arrow: B -> A, where A -> B is drawn and B -> A is no call of the design.

    The notation draws calls and messages only; the answer travels back on the call's own
    connection. An answer arrow claims a call that does not exist (Upload calling the User),
    and without this finding a diagram that draws every call plus its answers passed
    everything. It is an answer when its label says so (an HTTP status, "OK", "response",
    "reply", "answer"), or when it is a solid HTTP arrow back along a required sync call.
    A call of the design the other way (Notification -> User, User -> Upload ``GET /jobs``,
    the processor's job events to the Upload) is never one: only the reverse of a drawn
    arrow, between parts that have no call that way, is judged.
    """
    findings = []
    for edge in chart.edges:
        answerer, caller = role_of.get(edge.src), role_of.get(edge.dst)
        if answerer is None or caller is None or "broker" in (answerer, caller) or answerer == caller:
            continue
        if (answerer, caller) in _CALLS:
            continue
        called = any(role_of.get(e.src) == caller and role_of.get(e.dst) == answerer for e in chart.edges)
        status = _ANSWER_WORDS.search(_ENTITY.sub(" ", edge.label))
        back_along_a_call = (caller, answerer) in _SYNC_CALLS and kind_of(edge) == SYNC
        if not called or not (status or back_along_a_call):
            continue
        name = f"{_role_name(chart, by_role, answerer)} -> {_role_name(chart, by_role, caller)}"
        said = f"HTTP {status.group(0)}" if status else edge.label.strip()
        message = (
            f"{name}: this is the answer to {_role_name(chart, by_role, caller)}'s call ({said}); draw the call only "
            "(an answer goes back on the call's own connection: no arrow)"
        )
        findings.append(Finding(False, name, message))
    return findings


_SAID_ELSEWHERE = {(rule.src, rule.dst) for rule in _RULES if rule.kind == ASYNC} | {("upload", "notification")}
"""Relations whose sync route the async rules and the no-waiting finding already report."""


def _contradiction_findings(chart: Flowchart, role_of: dict[str, str], by_role: dict[str, list[str]]) -> list[Finding]:
    """A relation drawn both sync (a solid HTTP arrow) and async (a dotted MQTT arrow, or through the broker).

    One relation is one kind of call. A sync route the async rules or the no-waiting finding
    already report (:data:`_SAID_ELSEWHERE`) is not said twice.
    """
    findings = []
    for pair, kinds in sorted(_pair_kinds(chart, role_of).items()):
        if {SYNC, ASYNC} <= kinds and pair not in _SAID_ELSEWHERE:
            name = f"{_role_name(chart, by_role, pair[0])} -> {_role_name(chart, by_role, pair[1])}"
            rule = next((r for r in _RULES if (r.src, r.dst) == pair), None)
            should = f": it should be sync, {rule.why}" if rule is not None else ": keep the arrow of the call your code makes"
            message = f"{name} is drawn both sync (HTTP) and async (MQTT): one relation is one kind of call{should}"
            findings.append(Finding(False, name, message))
    return findings


def _pair_kinds(chart: Flowchart, role_of: dict[str, str]) -> dict[tuple[str, str], set[Kind]]:
    """(role, role) -> the kinds its routes are drawn with (direct, or through broker nodes); unmarked ones left out."""
    brokers = {n for n, r in role_of.items() if r == "broker"}
    kinds: dict[tuple[str, str], set[Kind]] = {}
    for src, src_role in role_of.items():
        if src_role == "broker":
            continue
        targets = {n for n, r in role_of.items() if r not in ("broker", src_role)}
        for route in _routes(chart, [src], targets, brokers):
            kind = _route_kind(route)
            if kind is not None:  # a mixed route counts as async: the caller does not wait for the far end
                kinds.setdefault((src_role, role_of[route[-1].dst]), set()).add(SYNC if kind == SYNC else ASYNC)
    return kinds


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


def edge_kinds(chart: Flowchart) -> dict[tuple[str, str], Kind]:
    """(role, role) -> "sync" / "async" for every drawn relation between two roles, broker hops collapsed.

    Upload -.-> Broker -.-> Processor counts as ("upload", "processor"): "async". A route
    is sync only when every hop is sync (only then does the caller wait for the far end);
    when a pair has both, "sync" wins, since one waiting route is enough to make the
    caller wait. Unmarked arrows and nodes with no role are left out; so is the broker.
    With a single broker node, every publisher is paired with every subscriber.
    """
    return {pair: SYNC if SYNC in found else ASYNC for pair, found in _pair_kinds(chart, roles(chart)).items()}


_SAID = {SYNC: "sync (HTTP)", ASYNC: "async (MQTT)"}
_HOW = {SYNC: "synchronously (HTTP / in the request)", ASYNC: "asynchronously (a message through the broker)"}
_DID = {SYNC: f"called it {_HOW[SYNC]}", ASYNC: f"reached it {_HOW[ASYNC]}"}


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
            missing = f"no arrow {name}" if kind == SYNC else f"no async route {name} (all its hops dotted)"
            message = f"the running code reached {name} {_HOW[kind]}, but the diagram has {missing}"
            findings.append(Finding(False, name, message))
        elif said != kind:
            message = f"the diagram says {name} is {_SAID[said]}, but the running code {_DID[kind]}"
            findings.append(Finding(False, name, message))
    return findings
