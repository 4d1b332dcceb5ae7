"""helpers.capstone.diagram: the lab 07 q1 diagram is read as Mermaid and its design checked.

Each classic mistake a learner makes in the drawing must be caught with a message that
names the edge by its labels; a correct drawing, with or without a broker node, must pass
every finding. The parser itself (helpers.core.mermaid) is tested in test_mermaid.py;
here, the sync/async notation layered on top of it.
"""

from __future__ import annotations

import pytest

from helpers.capstone.diagram import (
    DiagramError,
    Finding,
    check_design,
    compare_with_observed,
    edge_kinds,
    kind_of,
    marking_problem,
    parse_flowchart,
    roles,
)

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


# --- a correct design passes -------------------------------------------------------------------


@pytest.mark.parametrize("text", [WITH_BROKER, WITHOUT_BROKER], ids=["broker", "no-broker"])
def test_a_correct_diagram_passes_every_finding(text: str) -> None:
    findings = check_design(parse_flowchart(text))
    assert [str(f) for f in findings if not f.ok] == []
    messages = " | ".join(f.message for f in findings)
    for relation in ("User -> Upload", "-> Storage is sync", "AI Image Processor is async", "Notification is async"):
        assert relation in messages
    assert "the upload answers 202 at once" in messages


@pytest.mark.parametrize(
    ("arrow", "answer"),
    [
        ("    UP -->|HTTP 202 Accepted| U\n", "Upload -> User: this is the answer to User's call (HTTP 202)"),
        ("    S -.->|MQTT response| UP\n", "Storage -> Upload: this is the answer to Upload's call (HTTP response)"),
        ("    S -->|HTTP bytes of the original| P\n", "Storage -> AI Image Processor: this is the answer to AI Image"),
    ],
)
def test_an_answer_drawn_as_an_arrow_is_named(arrow: str, answer: str) -> None:
    """Calls and messages only: a status or response label back along a drawn call, or HTTP back along a sync call."""
    assert answer in failing(WITH_BROKER + arrow, "this is the answer to")


def test_calls_back_between_two_parts_are_not_answers() -> None:
    """A message back along an async relation, with digits of an entity code (#123;) in its label, is a message."""
    events = "    proc -.->|MQTT job.done for #35;123| upload\n    user -->|HTTP GET /jobs/#123;id#125;| upload\n"
    assert failures(WITHOUT_BROKER + events) == []


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
    assert problems[0] is not None
    assert problems[0].startswith("Upload -> Storage: a thick arrow (==>) is neither")
    assert problems[1] == "Upload -> Storage: the label says both HTTP and MQTT: one arrow is one kind of call"
    assert problems[2] is not None
    assert "has no arrowhead" in problems[2]
    assert [kind_of(edge) for edge in chart.edges] == [None, None, None]


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


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "    UP -.->|MQTT original.stored| S\n",
            "Upload -> Storage is drawn both sync (HTTP) and async (MQTT): one relation is one kind of call: it should be "
            "sync, the upload stores the original with an HTTP call before it answers 202",
        ),
        (
            "    N -.->|MQTT user/notifications| U\n",
            "Notification -> User is drawn both sync (HTTP) and async (MQTT): one relation is one kind of call: keep the "
            "arrow of the call your code makes",
        ),
    ],
    ids=["a-rule's-relation", "any-relation"],
)
def test_a_dotted_arrow_that_contradicts_a_solid_one_is_named(extra: str, expected: str) -> None:
    assert failures(WITH_BROKER) == []
    assert failing(WITH_BROKER + extra, "drawn both") == expected


def test_a_contradiction_through_the_broker_is_named() -> None:
    text = WITH_BROKER + "    B -.->|MQTT original| S\n"
    assert "Upload -> Storage is drawn both sync (HTTP) and async (MQTT)" in failing(text, "Upload -> Storage is drawn both")


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


# --- the notation on top of the core parser ---------------------------------------------------------------


def test_kind_of_reads_line_style_and_label_word() -> None:
    chart = parse_flowchart(
        "flowchart LR\n  O -- GET /x --> P -. MQTT job.done .-> Q -->|HTTP PUT| R -.->|HTTP GET| S ==>|HTTP| T --o|HTTP| U"
    )
    assert [kind_of(edge) for edge in chart.edges] == [None, "async", "sync", None, None, None]


def test_the_lab_parser_says_which_arrow_is_sync() -> None:
    """The core parser's advice names line styles; lab 07's names the notation's kinds."""
    with pytest.raises(DiagramError, match=r"`->` is not a Mermaid arrow: write `-->` \(sync\) or `-\.->` \(async\)"):
        parse_flowchart("flowchart LR\n  A --> B\n  A -> B")


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
    assert core.items() <= with_broker.items()
    assert core.items() <= without.items()
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
            "but the diagram has no async route Storage -> Notification (all its hops dotted)",
        ),
    ]


def test_compare_with_observed_names_a_solid_hop_on_an_async_route() -> None:
    # Held-out submission: Processor -> Broker drawn solid, Broker -> Notification dotted; the old message said the
    # diagram had no arrow Processor -> Notification, sending the learner to look for an arrow that was there.
    chart = parse_flowchart(WITH_BROKER.replace("P -.->|MQTT job.done| B", "P -->|MQTT job.done| B"))
    [finding] = compare_with_observed(chart, {("processor", "notification"): "async"})
    assert "no async route AI Image Processor -> Notification (all its hops dotted)" in finding.message


def test_compare_with_observed_rejects_a_malformed_observation() -> None:
    with pytest.raises(ValueError, match="not a \\(role, role\\)"):
        compare_with_observed(parse_flowchart(WITH_BROKER), {("upload", "database"): "sync"})
    with pytest.raises(ValueError, match="broker hops collapsed"):
        compare_with_observed(parse_flowchart(WITH_BROKER), {("upload", "broker"): "async"})
    with pytest.raises(ValueError, match="'maybe'"):
        compare_with_observed(parse_flowchart(WITH_BROKER), {("upload", "storage"): "maybe"})
