"""helpers.capstone.diagram: the lab 07 q1 diagram is read as Mermaid and its design checked.

Each classic mistake a learner makes in the drawing must be caught with a message that
names the edge by its labels; a correct drawing, with or without a broker node, must pass
every finding. The last test parses every flowchart the course already ships, so an
author learns about a syntax slip before the browser test does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.capstone.diagram import (
    DiagramError,
    Finding,
    check_design,
    compare_with_observed,
    edge_kinds,
    find_mermaid,
    find_mermaid_blocks,
    marking_problem,
    parse_flowchart,
    roles,
)

ROOT = Path(__file__).resolve().parent.parent

WITH_BROKER = """\
flowchart LR
    U[User] -->|HTTP POST /images| UP[Upload]
    UP -->|HTTP PUT /originals/id| S[(Storage)]
    UP -.->|MQTT image.uploaded| B((MQTT Broker))
    B -.->|MQTT image.uploaded| P["AI Image Processor"]
    P -->|HTTP GET /originals/id| S
    P -->|HTTP PUT /results/id| S
    P -.->|MQTT job.done| B
    B -.->|MQTT job.done| N[Notification]
    N -->|HTTP POST /push| U
"""

WITHOUT_BROKER = """\
flowchart LR
    user([User]) -->|HTTP POST /images| upload[Upload service]
    upload -->|HTTP PUT /originals/id| storage[(Storage)]
    upload -.->|MQTT image.uploaded| proc[AI Image Processor]
    proc -->|HTTP GET original, PUT results| storage
    proc -.->|MQTT job.done| notify[Notification]
    notify -.->|MQTT user/notifications| user
"""


def failures(text: str) -> list[str]:
    return [f.message for f in check_design(parse_flowchart(text)) if not f.ok]


def failing(text: str, fragment: str) -> str:
    """The one failing message that contains ``fragment`` (fails the test if there is none)."""
    hits = [m for m in failures(text) if fragment in m]
    assert hits, f"no failing finding mentions {fragment!r}; failures: {failures(text)}"
    return hits[0]


# --- finding the block ---------------------------------------------------------------------------


def test_find_mermaid_returns_the_first_block_body() -> None:
    markdown = "Intro\n\n```python\nx = 1\n```\n\n```mermaid\nflowchart LR\n  A --> B\n```\n\n```mermaid\ngraph TB\n```\n"
    assert find_mermaid(markdown) == "flowchart LR\n  A --> B"
    assert find_mermaid_blocks(markdown) == ["flowchart LR\n  A --> B", "graph TB"]


def test_find_mermaid_none_tilde_fences_and_an_unclosed_block() -> None:
    assert find_mermaid("no diagram here\n```\nflowchart LR\n```") is None
    assert find_mermaid("~~~~ Mermaid\nflowchart LR\n~~~~") == "flowchart LR"
    assert find_mermaid("```mermaid\nflowchart LR\n  A --> B") == "flowchart LR\n  A --> B"


# --- a correct design passes -------------------------------------------------------------------


@pytest.mark.parametrize("text", [WITH_BROKER, WITHOUT_BROKER], ids=["broker", "no-broker"])
def test_a_correct_diagram_passes_every_finding(text: str) -> None:
    findings = check_design(parse_flowchart(text))
    assert [str(f) for f in findings if not f.ok] == []
    messages = " | ".join(f.message for f in findings)
    for relation in ("User -> Upload", "-> Storage is sync", "AI Image Processor is async", "Notification is async"):
        assert relation in messages
    assert "the upload answers 202 at once" in messages


def test_the_processor_may_be_a_subgraph_of_consumers() -> None:
    text = """\
flowchart LR
    U[User] -->|HTTP POST /images| UP[Upload]
    UP -->|HTTP PUT original| S[(Storage)]
    UP -.->|MQTT image.uploaded| B((Broker))
    subgraph P[AI Image Processor]
        T[Thumbnails]
        C[Captions]
    end
    B -.->|MQTT image.uploaded| T & C
    T & C -->|HTTP GET original, PUT result| S
    C -.->|MQTT job.done| N[Notification]
"""
    chart = parse_flowchart(text)
    assert roles(chart)["T"] == roles(chart)["C"] == "processor"
    assert failures(text) == []


# --- each classic mistake is caught, naming the edge ------------------------------------------------


def test_upload_to_processor_drawn_sync() -> None:
    text = WITHOUT_BROKER.replace("upload -.->|MQTT image.uploaded| proc", "upload -->|HTTP POST /process| proc")
    message = failing(text, "Upload service -> AI Image Processor")
    assert message == "Upload service -> AI Image Processor is drawn sync: the upload would wait for processing"
    assert len([m for m in failures(text) if "would wait" in m]) == 1, "one mistake, said once"


def test_a_chain_of_sync_calls_makes_the_upload_wait() -> None:
    text = WITH_BROKER + "    S -->|HTTP POST /process| P\n"
    message = failing(text, "chain of sync calls")
    assert message.startswith("Upload -> Storage -> AI Image Processor is a chain of sync calls: the upload would wait")


def test_upload_to_notification_sync_is_caught() -> None:
    text = WITH_BROKER + "    UP -->|HTTP POST /notify| N\n"
    assert (
        failing(text, "Upload -> Notification")
        == "Upload -> Notification is drawn sync: the upload would wait for the notification"
    )


def test_processor_to_notification_drawn_sync() -> None:
    text = WITHOUT_BROKER.replace("proc -.->|MQTT job.done| notify", "proc -->|HTTP POST /notify| notify")
    message = failing(text, "AI Image Processor -> Notification")
    assert message == "AI Image Processor -> Notification is drawn sync: the processor would wait for the notification to be sent"


def test_missing_notification_node() -> None:
    text = "\n".join(line for line in WITHOUT_BROKER.splitlines() if "notify" not in line)
    assert failing(text, "Notification").startswith("no node for Notification: add one whose label says notif")


def test_an_unrecognized_node_is_named_when_a_role_is_missing() -> None:
    text = WITHOUT_BROKER.replace("proc[AI Image Processor]", "proc[Thumbnailer]")
    assert "nodes with no role: 'Thumbnailer'" in failing(text, "no node for AI Image Processor")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "upload -.->|MQTT image.uploaded| proc",
            "upload -->|MQTT image.uploaded| proc",
            "Upload service -> AI Image Processor: a solid arrow says sync, the label says MQTT",
        ),
        (
            "upload -->|HTTP PUT /originals/id| storage",
            "upload -.->|HTTP PUT /originals/id| storage",
            "Upload service -> Storage: a dotted arrow says async, the label says HTTP",
        ),
    ],
    ids=["solid-mqtt", "dotted-http"],
)
def test_label_and_arrow_mismatch(old: str, new: str, expected: str) -> None:
    assert failing(WITHOUT_BROKER.replace(old, new), expected) == expected


def test_an_edge_with_no_marking() -> None:
    text = WITH_BROKER.replace("N -->|HTTP POST /push| U", "N -->|email| U")
    message = failing(text, "Notification -> User")
    assert message.startswith("Notification -> User has no sync/async marking: label a solid arrow `HTTP ...`")


def test_an_unmarked_required_relation_cannot_be_checked() -> None:
    text = WITHOUT_BROKER.replace("|HTTP PUT /originals/id|", "")
    assert "Upload service -> Storage has no valid sync/async marking" in failing(text, "cannot be checked")


def test_thick_two_words_and_no_arrowhead_are_reported() -> None:
    chart = parse_flowchart("flowchart LR\n  A[Upload] ==>|HTTP| B[Storage]\n  A -->|HTTP or MQTT| B\n  A ---|HTTP| B")
    problems = [marking_problem(chart, edge) for edge in chart.edges]
    assert problems[0] is not None and problems[0].startswith("Upload -> Storage: a thick arrow (==>) is neither")
    assert problems[1] == "Upload -> Storage: the label says both HTTP and MQTT: one arrow is one kind of call"
    assert problems[2] is not None and "has no arrowhead" in problems[2]
    assert [edge.kind for edge in chart.edges] == [None, None, None]


def test_an_arrow_drawn_from_callee_to_caller() -> None:
    text = WITHOUT_BROKER.replace("proc -->|HTTP GET original, PUT results| storage", "storage -->|HTTP GET original| proc")
    assert "drawn the other way round (Storage -> AI Image Processor)" in failing(text, "AI Image Processor -> Storage")


def test_a_sync_relation_through_the_broker() -> None:
    text = WITH_BROKER.replace("UP -->|HTTP PUT /originals/id| S", "B -.->|MQTT image.uploaded| S")
    assert failing(text, "Upload -> Storage") == "Upload -> Storage is drawn only through the broker: it should be sync, " + (
        "the upload stores the original with an HTTP call before it answers 202"
    )


def test_a_missing_sync_relation() -> None:
    text = WITH_BROKER.replace("    UP -->|HTTP PUT /originals/id| S[(Storage)]\n", "")
    text = text.replace("    P -->|HTTP GET /originals/id| S\n", "    P -->|HTTP GET /originals/id| S[(Storage)]\n")
    assert failing(text, "Upload -> Storage") == "there is no arrow Upload -> Storage: it should be sync, " + (
        "the upload stores the original with an HTTP call before it answers 202"
    )


def test_two_nodes_for_one_role_are_ambiguous() -> None:
    text = WITHOUT_BROKER + "    upload -->|HTTP PUT copy| backup[Backup store]\n"
    assert failing(text, "look like Storage") == "'Storage' and 'Backup store' both look like Storage: give each node one role"


def test_a_finding_prints_as_one_ticked_line() -> None:
    assert str(Finding(True, "Upload -> Storage", "Upload -> Storage is sync (HTTP)")) == "✓ Upload -> Storage is sync (HTTP)"
    assert str(Finding(False, "Upload", "no node for Upload")).startswith("✗ ")


def test_a_diagram_without_arrows() -> None:
    assert "the diagram has no arrows" in failures("flowchart LR\n  U[User]")


# --- roles -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "role"),
    [
        ("Browser", "user"),
        ("Web client", "user"),
        ("Uploader (HTTP)", "upload"),
        ("S3 bucket", "storage"),
        ("Image store", "storage"),
        ("AI worker", "processor"),
        ("Notification (MQTT consumer)", "notification"),
        ("Email sender", "notification"),
        ("MQTT broker", "broker"),
        ("Event bus", "broker"),
        ("Mosquitto", "broker"),
        ("Mail relay", None),  # "ai" only as a whole word
        ("Business logic", None),  # "bus" only as a whole word
    ],
)
def test_roles_by_label_keywords(label: str, role: str | None) -> None:
    chart = parse_flowchart(f'flowchart LR\n  X["{label}"]')
    assert roles(chart).get("X") == role


# --- syntax a learner really writes ------------------------------------------------------------------------


def test_label_variety() -> None:
    text = """\
---
title: the image pipeline
---
%%{init: {"theme": "neutral"}}%%
graph LR;
    %% a comment line
    A["AI Image #quot;Processor#quot;"] --> B((Broker))
    C([stadium]) --> D{rhombus} & E[(Storage)];  F>flag] --> G[/para/]
    H[[sub]] --> I{{hex}} --> J(((double))) --> K(round)
    L[\\alt\\] --> M[/trap\\] --> N[\\trap alt/]
    O -- "GET /?name=Ada" --> P -. MQTT job.done .-> Q == thick ==> R
    S --->|long| T -.->|"quoted #35;1"| U & V ==> W
    X[line one<br/>line two] --o Y --x Z
    AA:::hot --- BB -.- CC === DD
    EE [spaced label] --> FF
    subgraph grp [A group]
        direction TB
        GG --> HH
    end
    classDef hot fill:#f96;
    class AA hot
    style BB fill:#bbf,stroke:#333
    click CC "https://example.com"
    linkStyle 0 stroke:red
"""
    chart = parse_flowchart(text)
    nodes = chart.nodes
    assert chart.direction == "LR"
    assert nodes["A"].label == 'AI Image "Processor"'
    shapes = {k: nodes[k].shape for k in "BCDEFGHIJKLMN"}
    assert shapes == {
        "B": "circle", "C": "stadium", "D": "rhombus", "E": "cylinder", "F": "asymmetric", "G": "parallelogram",
        "H": "subroutine", "I": "hexagon", "J": "double-circle", "K": "round", "L": "parallelogram-alt",
        "M": "trapezoid", "N": "trapezoid-alt",
    }  # fmt: skip
    assert nodes["X"].label == "line one line two" and nodes["EE"].label == "spaced label"
    edges = {(e.src, e.dst): e for e in chart.edges}
    assert edges[("O", "P")].label == "GET /?name=Ada" and edges[("O", "P")].arrow == "solid"
    assert edges[("P", "Q")].label == "MQTT job.done" and edges[("P", "Q")].kind == "async"
    assert edges[("Q", "R")].arrow == "thick" and edges[("Q", "R")].label == "thick"
    assert edges[("T", "U")].label == "quoted #1" and edges[("T", "V")].arrow == "dotted"
    assert ("U", "W") in edges and ("V", "W") in edges and ("C", "D") in edges and ("C", "E") in edges
    assert edges[("X", "Y")].head == "circle" and edges[("Y", "Z")].head == "cross"
    assert edges[("AA", "BB")].head == "none" and edges[("BB", "CC")].arrow == "dotted" and edges[("CC", "DD")].arrow == "thick"
    assert chart.subgraphs["grp"].label == "A group" and chart.subgraphs["grp"].members == ["GG", "HH"]
    assert len(chart.edges) == 24


def test_an_edge_to_a_subgraph_takes_its_title() -> None:
    chart = parse_flowchart('flowchart LR\n  U --> P\n  subgraph P["AI Image Processor"]\n    T[thumbnails]\n  end')
    assert chart.nodes["P"].label == "AI Image Processor" and chart.nodes["P"].shape == "subgraph"


def test_a_later_label_replaces_an_earlier_one() -> None:
    chart = parse_flowchart("flowchart LR\n  A --> B\n  B[Storage]")
    assert chart.nodes["A"].label == "A" and chart.nodes["B"].label == "Storage"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("flowchart LR\n  A --> B\n  A -> B", 3, "`->` is not a Mermaid arrow"),
        ("sequenceDiagram\n  A->>B: hi", 1, "expected `flowchart LR` or `graph LR`"),
        ("flowchart XY", 1, "`XY` is not a direction"),
        ("flowchart LR\n  A[Upload --> B", 2, "the label of `A` opened with `[` is never closed"),
        ('flowchart LR\n\n  A["Upload] --> B', 3, "a quoted label is never closed"),
        ("flowchart LR\n  subgraph S\n  A --> B", 2, "`subgraph S` is never closed with `end`"),
        ("flowchart LR\n  A --> B\n  end", 3, "`end` without a `subgraph`"),
        ("flowchart LR\n  A@{ shape: rect } --> B", 2, "shape syntax is not supported"),
        ("flowchart LR\n  A <--> B", 2, "two-headed arrow"),
        ("flowchart LR\n  A ~~~ B", 2, "invisible link"),
        ("flowchart LR\n  A -- Upload B", 2, "never closed with an arrow like `-->`"),
        ("flowchart LR\n  A -->|HTTP B", 2, "never closed with `|`"),
        ("flowchart LR\n  A --> B C --> D", 2, "cannot read `C --> D`"),
        ("%% only a comment\n", 1, "the diagram is empty"),
        ("flowchart LR\n    A --> B %% a note\n", 2, "must be on a line of its own"),
    ],
)
def test_unknown_syntax_names_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(DiagramError) as caught:
        parse_flowchart(text)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"line {line} of the diagram: ")
    assert fragment in str(caught.value)


# --- the diagram against what the code really does ------------------------------------------------------------


def test_edge_kinds_collapse_the_broker() -> None:
    with_broker = edge_kinds(parse_flowchart(WITH_BROKER))
    without = edge_kinds(parse_flowchart(WITHOUT_BROKER))
    core = {
        ("user", "upload"): "sync",
        ("upload", "storage"): "sync",
        ("upload", "processor"): "async",
        ("processor", "storage"): "sync",
        ("processor", "notification"): "async",
    }
    assert core.items() <= with_broker.items() and core.items() <= without.items()
    assert not any("broker" in pair for pair in with_broker)
    assert ("processor", "processor") not in with_broker


def test_edge_kinds_sync_wins_when_a_pair_is_drawn_both_ways() -> None:
    text = WITH_BROKER + "    UP -->|HTTP POST /process| P\n"
    assert edge_kinds(parse_flowchart(text))[("upload", "processor")] == "sync"


def test_compare_with_observed_agreeing() -> None:
    chart = parse_flowchart(WITH_BROKER)
    observed = {("upload", "storage"): "sync", ("upload", "processor"): "async", ("processor", "notification"): "async"}
    assert compare_with_observed(chart, observed) == []


def test_compare_with_observed_disagreeing() -> None:
    chart = parse_flowchart(WITH_BROKER)
    observed = {("upload", "processor"): "sync", ("upload", "storage"): "sync", ("storage", "notification"): "async"}
    found = compare_with_observed(chart, observed)
    assert found == [
        Finding(
            False,
            "Upload -> AI Image Processor",
            "the diagram says Upload -> AI Image Processor is async (MQTT), "
            "but the running code called it synchronously (HTTP / in the request)",
        ),
        Finding(
            False,
            "Storage -> Notification",
            "the running code reached Storage -> Notification asynchronously (a message through the broker), "
            "but the diagram has no arrow Storage -> Notification",
        ),
    ]


def test_compare_with_observed_rejects_a_malformed_observation() -> None:
    with pytest.raises(ValueError, match="not a \\(role, role\\)"):
        compare_with_observed(parse_flowchart(WITH_BROKER), {("upload", "database"): "sync"})
    with pytest.raises(ValueError, match="broker hops collapsed"):
        compare_with_observed(parse_flowchart(WITH_BROKER), {("upload", "broker"): "async"})
    with pytest.raises(ValueError, match="'maybe'"):
        compare_with_observed(parse_flowchart(WITH_BROKER), {("upload", "storage"): "maybe"})


# --- every flowchart the course ships parses ------------------------------------------------------------------


def _course_flowcharts() -> list[tuple[str, str]]:
    found = []
    for folder in ("notebooks", "labs", "solutions"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
            for index, cell in enumerate(cells):
                if cell["cell_type"] != "markdown":
                    continue
                source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                for n, block in enumerate(find_mermaid_blocks(source)):
                    if block.lstrip().startswith(("flowchart", "graph")):
                        found.append((f"{folder}/{path.name} cell {index} block {n}", block))
    return found


COURSE_FLOWCHARTS = _course_flowcharts()


def test_the_course_has_flowcharts_to_parse() -> None:
    assert len(COURSE_FLOWCHARTS) >= 5


@pytest.mark.parametrize("block", [b for _, b in COURSE_FLOWCHARTS], ids=[name for name, _ in COURSE_FLOWCHARTS])
def test_every_course_flowchart_parses(block: str) -> None:
    chart = parse_flowchart(block)
    assert chart.nodes, "a flowchart with no nodes"
