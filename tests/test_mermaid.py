"""helpers.core.mermaid: the flowchart parser every diagram of the course goes through.

It reads the syntax authors and learners really write (shapes, quoted labels, entities,
text links, subgraphs, styling lines) and names the line of anything it does not read.
It knows no notation: lab 07's sync/async reading is tested in test_capstone_diagram.py.
The last test parses every flowchart the course ships, so an author learns about a
syntax slip before the browser test does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.core.mermaid import (
    DiagramError,
    FlowchartParser,
    find_mermaid,
    find_mermaid_blocks,
    front_matter_lines,
    parse_flowchart,
)
from helpers.tools.mermaid_check import COURSE_FOLDERS, Diagram, check_diagram, diagrams_in

ROOT = Path(__file__).resolve().parent.parent


# --- finding the block ---------------------------------------------------------------------------


def test_find_mermaid_returns_the_first_block_body() -> None:
    markdown = "Intro\n\n```python\nx = 1\n```\n\n```mermaid\nflowchart LR\n  A --> B\n```\n\n```mermaid\ngraph TB\n```\n"
    assert find_mermaid(markdown) == "flowchart LR\n  A --> B"
    assert find_mermaid_blocks(markdown) == ["flowchart LR\n  A --> B", "graph TB"]


def test_find_mermaid_none_tilde_fences_and_an_unclosed_block() -> None:
    assert find_mermaid("no diagram here\n```\nflowchart LR\n```") is None
    assert find_mermaid("~~~~ Mermaid\nflowchart LR\n~~~~") == "flowchart LR"
    assert find_mermaid("```mermaid\nflowchart LR\n  A --> B") == "flowchart LR\n  A --> B"


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
    assert nodes["X"].label == "line one line two"
    assert nodes["EE"].label == "spaced label"
    edges = {(e.src, e.dst): e for e in chart.edges}
    assert edges[("O", "P")].label == "GET /?name=Ada"
    assert edges[("O", "P")].arrow == "solid"
    assert edges[("P", "Q")].label == "MQTT job.done"
    assert edges[("P", "Q")].arrow == "dotted"
    assert edges[("Q", "R")].arrow == "thick"
    assert edges[("Q", "R")].label == "thick"
    assert edges[("T", "U")].label == "quoted #1"
    assert edges[("T", "V")].arrow == "dotted"
    assert ("U", "W") in edges
    assert ("V", "W") in edges
    assert ("C", "D") in edges
    assert ("C", "E") in edges
    assert edges[("X", "Y")].head == "circle"
    assert edges[("Y", "Z")].head == "cross"
    assert edges[("AA", "BB")].head == "none"
    assert edges[("BB", "CC")].arrow == "dotted"
    assert edges[("CC", "DD")].arrow == "thick"
    assert chart.subgraphs["grp"].label == "A group"
    assert chart.subgraphs["grp"].members == ["GG", "HH"]
    assert len(chart.edges) == 24


def test_an_edge_to_a_subgraph_takes_its_title() -> None:
    chart = parse_flowchart('flowchart LR\n  U --> P\n  subgraph P["AI Image Processor"]\n    T[thumbnails]\n  end')
    assert chart.nodes["P"].label == "AI Image Processor"
    assert chart.nodes["P"].shape == "subgraph"


def test_a_later_label_replaces_an_earlier_one() -> None:
    chart = parse_flowchart("flowchart LR\n  A --> B\n  B[Storage]")
    assert chart.nodes["A"].label == "A"
    assert chart.nodes["B"].label == "Storage"


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


def test_a_wrong_arrow_is_answered_in_line_styles_unless_a_notation_says_more() -> None:
    class Notation(FlowchartParser):
        def wrong_arrow(self, token: str) -> str:
            return f"{token}: say it the notation's way"

    text = "flowchart LR\n  A -> B"
    with pytest.raises(DiagramError, match=r"write `-->` \(solid\) or `-\.->` \(dotted\)"):
        parse_flowchart(text)
    with pytest.raises(DiagramError, match="->: say it the notation's way"):
        Notation().parse(text)


def test_an_edge_carries_how_it_is_drawn_and_no_meaning() -> None:
    (edge,) = parse_flowchart("flowchart LR\n  A -.->|MQTT x| B").edges
    assert (edge.src, edge.dst, edge.label, edge.arrow, edge.head, edge.line) == ("A", "B", "MQTT x", "dotted", "arrow", 2)
    assert not hasattr(edge, "kind")


# --- every flowchart the course ships parses ------------------------------------------------------------------


def _course_flowcharts() -> list[Diagram]:
    paths = [path for folder in COURSE_FOLDERS for path in sorted((ROOT / folder).glob("*.ipynb"))]
    found = [diagram for path in paths for diagram in diagrams_in(path, ROOT)]
    return [diagram for diagram in found if diagram.text.lstrip().startswith(("flowchart", "graph"))]


COURSE_FLOWCHARTS = _course_flowcharts()


def test_the_course_has_flowcharts_to_parse() -> None:
    assert len(COURSE_FLOWCHARTS) >= 5


@pytest.mark.parametrize("diagram", COURSE_FLOWCHARTS, ids=[d.where() for d in COURSE_FLOWCHARTS])
def test_every_course_flowchart_parses(diagram: Diagram) -> None:
    chart = parse_flowchart(diagram.text)
    assert chart.nodes, "a flowchart with no nodes"


def test_front_matter_is_skipped_and_an_unclosed_one_is_named_in_every_kind_of_diagram() -> None:
    assert front_matter_lines(["---", "title: t", "---", "flowchart LR"]) == 3
    assert front_matter_lines(["flowchart LR"]) == 0
    for kind in ("flowchart LR", "sequenceDiagram"):
        with pytest.raises(DiagramError, match="line 1 of the diagram: the front matter opened with `---` is never closed"):
            check_diagram(f"---\ntitle: t\n{kind}\n")
