"""Checks of lab 07_image_pipeline: the capstone's image pipeline, drawn (q1), built (q2-q4), under faults (q5).

Every check runs the learner's code against a broker, a Storage and topics of its own,
with fresh names, users and counts each time, and judges what it sees from outside:

* Storage requests per caller (:class:`helpers.capstone.wire.RecordingStorage`
  serves one folder on a port per caller, so a request says who made it, and when);
* every MQTT message of the run (a wildcard subscriber on the run's prefix);
* the learner's MQTT clients on the wire (:class:`helpers.grading.probes.WireWatch`: their session settings, the
  QoS each message arrived at, and the moment each PUBACK left, with what was stored or
  notified by then);
* the kernel's event loop (:class:`helpers.grading.probes.LoopLag`: how long it went without running).

q1's diagram is read from the notebook's Markdown (``Context.markdown``): in the grader
from the submitted file, in the notebook from the file as last saved. One of its checks
runs the learner's q2-q4 code and compares the drawing with the calls it really made, so
it runs after q4's check cell (``after="q4"``): in the notebook at ``await check("q4")``,
in the grader right after it; it counts for q1.

One mistake costs one check: marks_every_arrow alone judges the notation (line style and
label word). The design and the comparison with the code read each arrow as meant
(:func:`read_as_meant`), and the comparison leaves out what draws_every_part and
design_holds already report.

q1 and q5 live here; q2-q4 each in a module of their own (``_image_pipeline_upload``,
``_image_pipeline_processor``, ``_image_pipeline_notifier``), included in place, and what
they share in ``_image_pipeline_harness``.
"""

from __future__ import annotations

import dataclasses
import re
import time

from helpers.capstone import diagram, images
from helpers.capstone.assembly import LearnerSystem
from helpers.capstone.drills import AnswersTooSlow, notifier_outage, upload_burst, worker_killed
from helpers.capstone.jobs import JOB_DONE, JOB_FAILED
from helpers.capstone.wire import RecordingStorage
from helpers.core.waiting import until
from helpers.grading.checks import SAVE_FIRST, CheckFailed, Checks, Context, expect, outcome
from helpers.labchecks import _image_pipeline_notifier, _image_pipeline_processor, _image_pipeline_upload
from helpers.labchecks._image_pipeline_harness import (
    REFERENCE_MAX_BYTES,
    a_user,
    kb,
    learner_system,
)

checks = Checks("07_image_pipeline")

# --------------------------------------------------------------------------- q1: the diagram

_FLOWCHART = re.compile(r"^\s*(flowchart|graph)\b", re.MULTILINE)
_QUESTION = re.compile(r"^\s*#{1,6}\s*Q(\d+)\b", re.MULTILINE)  # a question's heading: "## Q1 · Draw the pipeline"
_REQUIRED_ROLES = [role for role in diagram.ROLES if role != "broker"]


def q1_section(cells: list[str]) -> list[str] | None:
    """The Markdown cells of Q1, from its heading up to the next question's heading (None: no Q1 heading)."""
    start = None
    for i, text in enumerate(cells):
        heading = _QUESTION.search(text)
        if heading is None:
            continue
        if heading.group(1) == "1":
            start = i if start is None else start  # a heading of the learner's own in the answer ("### Q1") stays in
        elif start is not None:
            return cells[start:i]
    return None if start is None else cells[start:]


def _flowchart(ctx: Context) -> diagram.Flowchart:
    """The learner's Q1 diagram, parsed: the last ```mermaid flowchart of Q1's Markdown cells.

    A flowchart in a later answer is another question's: it never replaces the Q1 diagram.
    Only when the Q1 heading is gone is the notebook's first flowchart read.
    """
    section = q1_section(list(ctx.markdown()))
    cells = section if section is not None else list(ctx.markdown())
    blocks = [b for text in cells for b in diagram.find_mermaid_blocks(text) if _FLOWCHART.search(b)]
    if not blocks:
        raise CheckFailed(
            f"found no ```mermaid flowchart in Q1's answer cell (below 'Your diagram'): draw it there; if you did, {SAVE_FIRST}"
        )
    try:
        return diagram.parse_flowchart(blocks[-1] if section is not None else blocks[0])
    except diagram.DiagramError as exc:
        raise CheckFailed(f"your diagram could not be read: {exc}") from None


_WORD_OF_STYLE = {"solid": "HTTP", "dotted": "MQTT"}
"""Without one protocol word in its label, an arrow is read by its line style (the notation's other half)."""


def _as_meant(edge: diagram.Edge) -> diagram.Edge:
    """The arrow as its author meant it: the label's one protocol word decides, else the line style; else as drawn.

    ``processor -->|MQTT job.done| broker`` is a message (its label names the protocol
    and the event, a deliberate statement; ``-->`` for ``-.->`` is a slip of one
    character), and ``upload -.->|HTTP POST /process| processor`` is a call: read so, a
    style slip costs the notation's point only, and an arrow that really says the
    upload calls the processor still fails the design. A thick arrow without one
    protocol word says nothing and stays unreadable.
    """
    arrow = dataclasses.replace(edge, head="arrow")
    for drawn in (dataclasses.replace(arrow, arrow="solid"), dataclasses.replace(arrow, arrow="dotted")):
        if diagram.kind_of(drawn) == (diagram.SYNC if drawn.arrow == "solid" else diagram.ASYNC):
            return drawn
    if edge.arrow in _WORD_OF_STYLE:
        return dataclasses.replace(arrow, label=_WORD_OF_STYLE[edge.arrow])
    return edge


def read_as_meant(chart: diagram.Flowchart) -> diagram.Flowchart:
    """The chart with every arrow read as meant (:func:`_as_meant`): how design_holds and the comparison read it.

    marks_every_arrow reads the chart as drawn and names each marking problem; judging the
    design (and the code) on the raw marking too made one solid arrow labelled MQTT cost
    5 of Q1's 6 points (the notation, the design and the comparison each failing it).
    """
    return dataclasses.replace(chart, edges=[_as_meant(edge) for edge in chart.edges])


def _findings(chart: diagram.Flowchart) -> tuple[list[diagram.Finding], list[diagram.Finding], list[diagram.Finding]]:
    """check_design's findings as (parts, arrow markings, design): it reports one finding per part first."""
    findings = diagram.check_design(chart)
    parts, rest = findings[: len(_REQUIRED_ROLES)], findings[len(_REQUIRED_ROLES) :]
    problems = {problem for edge in chart.edges if (problem := diagram.marking_problem(chart, edge))}
    marks = [f for f in rest if f.subject == "arrows" or (not f.ok and f.message in problems)]
    return parts, marks, [f for f in rest if f not in marks]


def _verdict(findings: list[diagram.Finding]) -> None:
    wrong = [f.message for f in findings if not f.ok]
    expect(not wrong, "; ".join(wrong))


@checks.check(
    "q1",
    hint="one node per part, named by its label: User, Upload, Storage, AI Image Processor, Notification",
    code_hint="user([User]), upload[Upload], storage[(Storage)], processor[AI Image Processor], notification[Notification]",
)
async def draws_every_part(ctx: Context) -> str:
    """Your flowchart has a node for the User and each of the four services."""
    parts, _, _ = _findings(_flowchart(ctx))
    _verdict(parts)
    return "nodes: " + ", ".join(f.subject for f in parts)


@checks.check(
    "q1",
    hint="a solid arrow labeled HTTP ... is sync; a dotted arrow labeled MQTT ... is async",
    code_hint="upload -->|HTTP PUT original| storage  and  upload -.->|MQTT image.uploaded| broker",
)
async def marks_every_arrow(ctx: Context) -> str:
    """Every arrow is marked sync (solid, HTTP) or async (dotted, MQTT)."""
    chart = _flowchart(ctx)
    _, marks, _ = _findings(chart)
    _verdict(marks)
    return f"{len(chart.edges)} arrows, each marked"


@checks.check(
    "q1",
    points=2,
    hint="who waits for whom? only what must happen before the 202 is sync",
    code_hint="user -->|HTTP POST /images| upload; upload -.->|MQTT image.uploaded| broker; "
    "broker -.->|MQTT image.uploaded| processor",
)
async def design_holds(ctx: Context) -> str:
    """The design holds: the upload answers without waiting; processing and notification are reached asynchronously."""
    parts, _, design = _findings(read_as_meant(_flowchart(ctx)))
    missing = [f.message for f in parts if not f.ok]
    expect(not missing, f"the design can only be judged once every part is drawn: {'; '.join(missing)}")
    _verdict(design)
    return "; ".join(f.message for f in design)


def _processing_window(storage: RecordingStorage) -> float | None:
    """How long the processor took from fetching its first original to storing its first result (None if unseen)."""
    fetched = [c.ended for c in storage.requests("processor", "GET")]  # the original (a marker is looked up with HEAD)
    stored = [c.started for c in storage.requests("processor", "PUT")]
    if not fetched or not stored or min(stored) <= min(fetched):
        return None
    return min(stored) - min(fetched)


def _observe(
    system: LearnerSystem, job_id: str | None, posted: float, answered: float
) -> tuple[dict[tuple[str, str], str], list[str]]:
    """What the running code did, as (role, role) -> "sync" / "async", plus what the wire shows beyond that."""
    observed = {("user", "upload"): "sync"}  # the check itself sent POST /images and got an HTTP answer
    storage, topics = system.storage, system.topics
    upload_puts = [c for c in storage.requests("upload", "PUT") if posted <= c.started <= answered]
    if upload_puts:
        observed[("upload", "storage")] = "sync"
    uploaded = system.recorder.on(topics.uploaded)
    processed = [c.ended for c in storage.requests("processor", "PUT")]
    waited = bool(processed) and min(processed) < answered  # the processor stored results before the 202 left
    inline = not uploaded and len(upload_puts) > 1  # the upload stored results itself: it processed in the request
    took = _processing_window(storage)
    slow = took is not None and answered - posted > 0.5 * took  # the 202 took as long as processing an image
    if waited or inline or slow:
        observed[("upload", "processor")] = "sync"
    elif uploaded:
        observed[("upload", "processor")] = "async"
    if storage.requests("processor"):
        observed[("processor", "storage")] = "sync"
    ended = [e for _, e in system.events(job_id=job_id) if e.type in (JOB_DONE, JOB_FAILED)]
    if [note for note in system.inbox.entries() if job_id is None or note.job_id == job_id]:
        observed[("processor", "notification")] = "async" if ended else "sync"
    notes = []
    heavy = [r for r in uploaded if len(r.payload) > REFERENCE_MAX_BYTES]
    if heavy:
        notes.append(
            f"the image.uploaded event carries the image's bytes ({kb(len(heavy[0].payload))}), not a reference: "
            "your drawing has the processor fetch the original from Storage, your code sends it through the broker"
        )
    if not ended:
        notes.append(
            f"your pipeline did not finish the job (no job.done on {topics.done}), so the drawing was compared with part of it"
        )
    return observed, notes


def _mismatches(chart: diagram.Flowchart, observed: dict[tuple[str, str], str]) -> list[str]:
    """Where the diagram, read as meant, says other than the running code did; each mistake charged once.

    A part not drawn is draws_every_part's mistake and a relation drawn against the design
    is design_holds' (their findings name it ``Upload -> Storage``, as the comparison does):
    neither is charged here a second time. What is left is the rule of its own, "draw what
    you build": a drawing the design accepts that is not what the code does.
    """
    meant = read_as_meant(chart)
    drawn = set(diagram.roles(meant).values())
    compared = {pair: kind for pair, kind in observed.items() if set(pair) <= drawn}
    _, _, design = _findings(meant)
    wrong = {f.subject for f in design if not f.ok}
    return [f.message for f in diagram.compare_with_observed(meant, compared) if f.subject not in wrong]


@checks.check(
    "q1",
    points=2,
    after="q4",
    timeout=25,
    hint="draw what your code does: an HTTP call a solid arrow, a message a dotted one through the broker",
    code_hint="upload -->|HTTP PUT original| storage; upload -.->|MQTT image.uploaded| broker; "
    "broker -.->|MQTT image.uploaded| processor",
)
async def diagram_matches_the_running_code(ctx: Context) -> str:
    """Your Q1 diagram matches your Q2-Q4 code: sync where it calls over HTTP, async where it sends messages."""
    chart = _flowchart(ctx)
    system = await learner_system(ctx, work=1.0)  # an image's processing must dwarf an upload's 202, even on a busy machine
    posted = time.perf_counter()
    got = await outcome("POST /images", lambda: system.post(images.sample_photo(), a_user(ctx), timeout=8.0), 10.0)
    expect(got.error is None, f"your upload did not answer: {got.raised}")
    answer = got.value
    answered = posted + answer.seconds
    expect(answer.status == 202, f"your upload answered HTTP {answer.status}, so the pipeline could not be observed")
    job_id = answer.job_id
    await until(lambda: bool(system.inbox.entries()) or bool(system.crashed()), 8.0)
    await system.settle()
    observed, notes = _observe(system, job_id, posted, answered)
    problems = _mismatches(chart, observed) + notes
    expect(not problems, "; ".join(problems))
    return "it matches the running code: " + ", ".join(f"{a} -> {b} {kind}" for (a, b), kind in observed.items())


# --------------------------------------------------------------------------- q2-q4: the services, one module each

checks.include(_image_pipeline_upload.part)  # helpers/labchecks/_image_pipeline_upload.py
checks.include(_image_pipeline_processor.part)  # helpers/labchecks/_image_pipeline_processor.py
checks.include(_image_pipeline_notifier.part)  # helpers/labchecks/_image_pipeline_notifier.py


# --------------------------------------------------------------------------- q5: end to end, under faults


@checks.check(
    "q5",
    timeout=30,
    hint="the 202 does not wait for the processor: uploads stay fast however long the queue",
    code_hint="post_image publishes image.uploaded and answers; it never awaits the processing",
    timing=True,
)
async def burst_of_uploads_stays_fast(ctx: Context) -> str:
    """A burst of uploads gets every 202 quickly while the processor works through the queue; each user hears once."""
    system = await learner_system(ctx, work=0.2)  # the 202s are judged against processing 3-4 images: ~0.2 s each
    count = ctx.rng.randint(3, 4)
    users = [a_user(ctx) for _ in range(count)]
    photos = [images.sample_photo()] * count
    # 8 s to answer a handful of uploads is generous on a busy machine for an upload that only
    # stores and publishes; an upload that processes first needs count x the processing time.
    got = await outcome("the burst", lambda: upload_burst(system, photos, users, timeout=20, answer_within=8), 24)
    expect(
        not isinstance(got.error, AnswersTooSlow),
        f"processing inside the upload request: {got.raised}, while an upload that only stores and publishes answers "
        "in milliseconds; the 202 must not wait for processing",
    )
    expect(got.error is None, f"the burst did not complete: {got.raised}")
    burst = got.value
    expect(
        burst.slowest_upload_s < burst.all_done_s / 3,
        f"processing inside the upload request: the slowest of {count} uploads waited {burst.slowest_upload_s:.2f} s, and the "
        f"whole burst was processed after {burst.all_done_s:.2f} s; the 202 must not wait for processing",
    )
    expect(burst.notified == count, f"{count - burst.notified} of {count} users were never notified")
    expect(burst.duplicates == 0, f"{burst.duplicates} duplicate notification(s)")
    return f"{count} uploads: slowest 202 in {burst.slowest_upload_s * 1000:.0f} ms, all processed after {burst.all_done_s:.1f} s"


@checks.check(
    "q5",
    points=2,
    timeout=40,
    hint="ack only after the results are stored, and a restart resumes the same session",
    code_hint="process_job(...) then ack(client, message); the same name and clean_session=False on every start",
)
async def worker_killed_mid_image(ctx: Context) -> str:
    """The processor killed mid-image and restarted: the image is processed again, one job.done, the user notified once."""
    system = await learner_system(ctx, work=0.4)  # the kill comes within ~10 ms of the fetch: 0.4 leaves it mid-image
    got = await outcome("the drill", lambda: worker_killed(system, images.sample_photo(), a_user(ctx), timeout=10), 30)
    if isinstance(got.error, TimeoutError):
        raise CheckFailed(
            f"{got.raised}: the image was lost when the processor died; acknowledge the message only after the results are "
            "stored, and keep the session (the same name, clean_session=False) so the broker delivers it again"
        )
    expect(got.error is None, f"the drill did not complete: {got.raised}")
    drill = got.value
    expect(drill.killed_mid_image, "the image was finished before the processor could be killed in the middle of it")
    expect(drill.starts >= 2, "after the kill the image was not processed again")
    expect(drill.done_events == 1, f"{drill.done_events} job.done events for one image, expected 1")
    expect(drill.notifications == 1, f"the user was notified {drill.notifications} times, expected once")
    return "killed mid-image: processed again, 1 job.done, the user notified once"


@checks.check(
    "q5",
    timeout=30,
    hint="the notifier's persistent session keeps the job.done events while it is down",
    code_hint="broker.client(name, clean_session=False) with QoS 1, and the notified ids in SeenIds(Path(workdir) / ...)",
)
async def notifier_outage_loses_nothing(ctx: Context) -> str:
    """The notifier down while jobs finish, then restarted: every user notified, each once."""
    system = await learner_system(ctx, work=0.0)  # the drill is about notifications: the images may be quick
    count = ctx.rng.randint(2, 3)
    users = [a_user(ctx) for _ in range(count)]
    got = await outcome("the drill", lambda: notifier_outage(system, [images.sample_photo()] * count, users, timeout=15), 24)
    expect(got.error is None, f"the drill did not complete: {got.raised}")
    drill = got.value
    expect(drill.lost == 0, f"{drill.lost} of {count} users were never notified after the notifier's outage")
    expect(drill.duplicates == 0, f"{drill.duplicates} duplicate notification(s) after the outage")
    return f"{count} jobs done while it was down: {count} users notified once, 0 lost"
