"""Checks of lab 07_image_pipeline: the capstone's image pipeline, drawn (q1), built (q2-q4), under faults (q5).

Every check runs the learner's code against a broker, a Storage and topics of its own,
with fresh names, users and counts each time, and judges what it sees from outside:

* Storage requests per caller (:class:`helpers.capstone.wire.RecordingStorage`
  serves one folder on a port per caller, so a request says who made it, and when);
* every MQTT message of the run (a wildcard subscriber on the run's prefix);
* the learner's MQTT clients on the wire (:class:`_Watch`: their session settings, the
  QoS each message arrived at, and the moment each PUBACK left, with what was stored or
  notified by then), like lab 04's ``_AckWatch``;
* the kernel's event loop (:class:`helpers.grading.probes.LoopLag`: how long it went without running).

q1's diagram is read from the notebook's Markdown (``Context.markdown``): in the grader
from the submitted file, in the notebook from the file as last saved. Its hidden check
runs the learner's q2-q4 code and compares the drawing with the calls it really made,
so it runs in the grader after q4's check cell (``after="q4"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from helpers.capstone import diagram, images
from helpers.capstone.assembly import LearnerSystem, UploadServer, serve_upload, start_system
from helpers.capstone.drills import AnswersTooSlow, notifier_outage, upload_burst, worker_killed
from helpers.capstone.jobs import IMAGE_UPLOADED, JOB_DONE, JOB_FAILED, JOB_PROGRESS, Topics, done_event_id, failed_event_id
from helpers.capstone.notifier import Inbox
from helpers.capstone.wire import Record, Recorder, RecordingStorage, start_recorder
from helpers.core import internals, lifecycle
from helpers.core.messaging import Event, InvalidEvent, decode, make_event, publish
from helpers.core.problems import PROBLEM_JSON
from helpers.core.waiting import until, until_quiet
from helpers.grading.checks import SAVE_FIRST, CheckFailed, Checks, Context, HttpAnswer, expect, outcome
from helpers.grading.probes import LoopLag, blocking_message

checks = Checks("07_image_pipeline")

START_S = 8.0
"""Time limit for starting one of the learner's loops (lifecycle.start gives up on `ready` after 5 s)."""
QUIET_S = 0.2
""""And then nothing more happens": how long messages, Storage calls and notifications must stay still."""
REFERENCE_MAX_BYTES = 4096
"""An image.uploaded event that carries a reference is well under 1 KB; the sample photo alone is 61 KB."""
RENDITIONS = (*(f"thumb-{size}" for size in images.THUMBNAIL_SIZES), images.FILTER_NAME)
"""The renditions process_image returns, by name: job.done's ``results`` maps each to its storage key."""
SERVICES = "make_upload_handler(), run_processor() or run_notifier()"
HOSTILE_HEADERS = {"Content-Type": "image/jpeg", "Content-Disposition": 'attachment; filename="holiday.jpg"'}


def _folder(ctx: Context) -> Path:
    path = Path(tempfile.mkdtemp(prefix="check07-"))

    async def remove() -> None:
        shutil.rmtree(path, ignore_errors=True)

    ctx.on_cleanup(remove)
    return path


def _stack(ctx: Context) -> contextlib.AsyncExitStack:
    """An exit stack closed after the check (clients, tasks)."""
    stack = contextlib.AsyncExitStack()
    ctx.on_cleanup(stack.aclose)
    return stack


def _user(ctx: Context) -> str:
    return f"{ctx.rng.choice(['ada', 'bea', 'cyd', 'dev', 'eli', 'fox'])}{ctx.rng.randint(10, 9999)}"


def _forget_session(ctx: Context, broker: Any, name: str) -> None:
    """After the check, drop the persistent session ``name`` (keeps a shared broker tidy)."""

    async def forget() -> None:
        async with broker.client(name, clean_session=True):
            pass

    ctx.on_cleanup(forget)


async def _recorder(ctx: Context, broker: Any, topics: Topics) -> Recorder:
    """Every message on the run's topics, from now until the check ends."""
    wire = await start_recorder(broker, topics, name=f"check-recorder-{uuid.uuid4().hex[:8]}")
    ctx.on_cleanup(wire.stop)
    return wire.recorder


def _on(recorder: Recorder, topic: str) -> list[Record]:
    return recorder.on(topic)


def _kb(size: int) -> str:
    return f"{size / 1024:.0f} KB" if size >= 1024 else f"{size} bytes"


def _job_of(payload: bytes) -> str | None:
    """The job id an event's data names (None for anything else)."""
    try:
        data = decode(payload).data
    except InvalidEvent:
        return None
    job_id = data.get("job_id") if isinstance(data, dict) else None
    return job_id if isinstance(job_id, str) else None


# --------------------------------------------------------------------------- watching the learner's clients


class _Delivery:
    """One message a learner's client received, and when (if ever) it sent the PUBACK.

    (A plain class: the grader loads this module under a random name, outside
    ``sys.modules``, where ``@dataclass`` cannot resolve its annotations.)
    """

    def __init__(self, client_id: str, topic: str, payload: bytes, qos: int) -> None:
        self.client_id, self.topic, self.payload, self.qos = client_id, topic, payload, qos
        self.received = time.perf_counter()
        self.acked: float | None = None
        self.seen_at_ack: Any = None
        """What the watch's ``snapshot()`` said when the PUBACK left: what was stored or notified by then."""


class _Client:
    """A client the learner's code made: its id, its session setting, the client itself."""

    def __init__(self, client_id: str, clean_session: bool, client: Any) -> None:
        self.client_id, self.clean_session, self.client = client_id, clean_session, client


class _Watch:
    """The broker as the learner's code sees it: every client it makes is watched on the wire.

    It notes each client's id and session setting, each message it receives (with the QoS
    it arrived at), and for each PUBACK the moment it left and ``snapshot()`` at that
    moment. That shows an acknowledgement sent before the work on any broker, whether or
    not the broker would resend.
    """

    def __init__(self, broker: Any, snapshot: Callable[[], Any]) -> None:
        self._broker, self._snapshot = broker, snapshot
        self.clients: list[_Client] = []
        self.deliveries: list[_Delivery] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def client(self, name: str | None = None, *, clean_session: bool = True, **kwargs: Any) -> Any:
        client = self._broker.client(name, clean_session=clean_session, **kwargs)
        seen = _Client(str(client.identifier), clean_session, client)
        in_flight: dict[int, _Delivery] = {}

        def received(message: Any) -> None:
            delivery = _Delivery(seen.client_id, str(message.topic), bytes(message.payload), int(message.qos))
            self.deliveries.append(delivery)
            if delivery.qos > 0:
                in_flight[message.mid] = delivery

        def acked(mid: int) -> None:
            delivery = in_flight.pop(mid, None)
            if delivery is not None:
                delivery.acked, delivery.seen_at_ack = time.perf_counter(), self._snapshot()

        internals.on_receive(client, received)
        internals.on_puback(client, acked)
        self.clients.append(seen)
        return client

    def of_job(self, topic: str, job_id: str) -> list[_Delivery]:
        return [d for d in self.deliveries if d.topic == topic and _job_of(d.payload) == job_id]

    def auto_acking(self) -> bool:
        """True when a client that received messages acknowledges them on receipt (no manual_ack)."""
        receivers = {d.client_id for d in self.deliveries}
        return any(not internals.acks_manually(c.client) for c in self.clients if c.client_id in receivers)


def _session_problem(watch: _Watch, name: str) -> str | None:
    """Why a restarted consumer lost what was published while it was down, if the wire says so."""
    receivers = [c for c in watch.clients if c.client_id in {d.client_id for d in watch.deliveries}] or watch.clients
    if any(c.clean_session for c in receivers):
        return (
            "a clean session forgets what was sent while it was down: connect with "
            f"broker.client(name, clean_session=False) so the broker keeps the messages for the session {name!r}"
        )
    ids = sorted({c.client_id for c in receivers})
    if ids and ids != [name]:
        return (
            f"your client id was {', '.join(repr(i) for i in ids)} rather than the name given ({name!r}): the broker "
            "keeps messages for a session, and a new client id is a new session"
        )
    if any(d.qos == 0 for d in watch.deliveries):
        return (
            "messages arrived at QoS 0, which the broker neither keeps for an offline session nor resends: subscribe with qos=1"
        )
    return None


# --------------------------------------------------------------------------- q1: the diagram

_FLOWCHART = re.compile(r"^\s*(flowchart|graph)\b", re.MULTILINE)
_REQUIRED_ROLES = [role for role in diagram.ROLES if role != "broker"]


def _flowchart(ctx: Context) -> diagram.Flowchart:
    """The learner's diagram: the last ```mermaid flowchart in the notebook's Markdown cells, parsed."""
    blocks = [b for text in ctx.markdown() for b in diagram.find_mermaid_blocks(text) if _FLOWCHART.search(b)]
    if not blocks:
        raise CheckFailed(
            "found no ```mermaid flowchart in the notebook's Markdown cells: draw it in the Q1 answer cell; "
            f"if you did, {SAVE_FIRST}"
        )
    try:
        return diagram.parse_flowchart(blocks[-1])
    except diagram.DiagramError as exc:
        raise CheckFailed(f"your diagram could not be read: {exc}") from None


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
    parts, _, design = _findings(_flowchart(ctx))
    missing = [f.message for f in parts if not f.ok]
    expect(not missing, f"the design can only be judged once every part is drawn: {'; '.join(missing)}")
    _verdict(design)
    return "; ".join(f.message for f in design)


async def _system(ctx: Context, work: float) -> LearnerSystem:
    """The learner's three services composed (start_system), on a broker and folder of the check's own."""
    broker = await ctx.broker()
    upload, processor, notifier = (ctx.function(n) for n in ("make_upload_handler", "run_processor", "run_notifier"))
    name = f"check07-{uuid.uuid4().hex[:6]}"
    folder = _folder(ctx)
    started = await outcome(
        SERVICES,
        lambda: start_system(
            broker, folder, upload=upload, processor=processor, notifier=notifier, work=work, prefix="check07", name=name
        ),
        2 * START_S,
    )
    expect(started.error is None, f"your services could not start: {started.raised}")
    system: LearnerSystem = started.value
    ctx.on_cleanup(system.stop)
    return system


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
    uploaded = _on(system.recorder, topics.uploaded)
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
            f"the image.uploaded event carries the image's bytes ({_kb(len(heavy[0].payload))}), not a reference: "
            "your drawing has the processor fetch the original from Storage, your code sends it through the broker"
        )
    if not ended:
        notes.append(
            f"your pipeline did not finish the job (no job.done on {topics.done}), so the drawing was compared with part of it"
        )
    return observed, notes


@checks.check(
    "q1", hidden=True, points=2, after="q4", timeout=25, hint="draw what your code does: HTTP calls solid, messages dotted"
)
async def diagram_matches_the_running_code(ctx: Context) -> str:
    """Hidden: your diagram says sync where your code calls over HTTP, and async where it sends messages."""
    chart = _flowchart(ctx)
    system = await _system(ctx, work=1.0)  # an image's processing must dwarf an upload's 202, even on a busy machine
    posted = time.perf_counter()
    got = await outcome("POST /images", lambda: system.post(images.sample_photo(), _user(ctx), timeout=8.0), 10.0)
    expect(got.error is None, f"your upload did not answer: {got.raised}")
    answer = got.value
    answered = posted + answer.seconds
    expect(answer.status == 202, f"your upload answered HTTP {answer.status}, so the pipeline could not be observed")
    job_id = answer.job_id
    await until(lambda: bool(system.inbox.entries()) or bool(system.crashed()), 8.0)
    await system.settle()
    observed, notes = _observe(system, job_id, posted, answered)
    problems = [f.message for f in diagram.compare_with_observed(chart, observed)] + notes
    expect(not problems, "; ".join(problems))
    return "it matches the running code: " + ", ".join(f"{a} -> {b} {kind}" for (a, b), kind in observed.items())


# --------------------------------------------------------------------------- q2: the upload


class _UploadRig:
    """The learner's upload handler, served with a broker, Storage and recorder of the check's own."""

    recorder: Recorder
    server: UploadServer

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.topics = Topics.fresh("check07")
        self.storage = RecordingStorage(_folder(ctx) / "storage")
        ctx.on_cleanup(self.storage.stop)

    @classmethod
    async def start(cls, ctx: Context) -> _UploadRig:
        rig = cls(ctx)
        broker = await ctx.broker()
        rig.recorder = await _recorder(ctx, broker, rig.topics)
        url = await rig.storage.url("upload")
        make = ctx.function("make_upload_handler")
        name = f"check-upload-{uuid.uuid4().hex[:8]}"
        started = await outcome("make_upload_handler()", lambda: serve_upload(make, broker, rig.topics, url, name=name), 5.0)
        expect(started.error is None, f"make_upload_handler() failed: {started.raised}")
        rig.server = started.value
        ctx.on_cleanup(rig.server.stop)
        return rig

    async def post(
        self,
        data: bytes,
        user: str,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 4.0,
        on_timeout: str | None = None,
    ) -> tuple[HttpAnswer, float]:
        """POST /images?user=USER; the answer (header names in lower case) and how long it took.

        ``on_timeout``: the message when no answer comes within ``timeout`` (a check that
        knows why an answer is late says so)."""
        sent = {"Content-Type": "application/octet-stream", **(headers or {})}
        if key is not None:
            sent["Idempotency-Key"] = key
        began = time.perf_counter()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
                async with session.post(f"{self.server.url}/images", params={"user": user}, data=data, headers=sent) as response:
                    text = await response.text()
                    answer = HttpAnswer(response.status, text, {k.lower(): v for k, v in response.headers.items()})
        except TimeoutError:
            raise CheckFailed(
                on_timeout
                or f"POST /images got no answer within {timeout:g} s: the upload must answer 202 without waiting for processing"
            ) from None
        seconds = time.perf_counter() - began
        if answer.status == 500 and self.server.errors:
            error = self.server.errors[-1]
            if error.startswith("NotImplementedError"):
                raise CheckFailed("your upload handler is not written yet (it raises NotImplementedError)")
            raise CheckFailed(f"your upload handler raised {error}")
        return answer, seconds

    def uploaded(self) -> list[Record]:
        return _on(self.recorder, self.topics.uploaded)

    async def quiet(self) -> None:
        """Until no message and no Storage call happened for a moment (an event published late shows up)."""
        await until_quiet(lambda: (len(self.recorder.records), len(self.storage.calls)), QUIET_S, 2.0)


def _body(answer: HttpAnswer) -> dict[str, Any]:
    body = answer.json()
    expect(isinstance(body, dict), f"the answer's body should be a JSON object, got {answer.text[:80]!r}")
    return body


def _accepted(answer: HttpAnswer, what: str = "POST /images") -> str:
    """The job id of a 202 answer; fails with what was wrong."""
    expect(answer.status == 202, f"{what} answered HTTP {answer.status}, expected 202 Accepted: {answer.text[:120]}")
    job_id = _body(answer).get("job_id")
    expect(
        isinstance(job_id, str) and job_id, f"the 202 body should name the job: {{'job_id': ..., ...}}, got {answer.text[:120]}"
    )
    return str(job_id)


def _problem(answer: HttpAnswer, status: int) -> str | None:
    """What is wrong with ``answer`` as an RFC 9457 problem with ``status``; None if it is one."""
    if answer.status != status:
        return f"HTTP {answer.status}"
    content_type = answer.headers.get("content-type", "")
    if not content_type.startswith(PROBLEM_JSON):
        return f"HTTP {status} with Content-Type {content_type or 'none'}, not {PROBLEM_JSON} (answer problem_for(exc))"
    try:
        body = json.loads(answer.text)
    except ValueError:
        return f"HTTP {status} whose body is not JSON"
    missing = [k for k in ("type", "title", "status", "detail") if not isinstance(body, dict) or k not in body]
    if missing:
        return f"HTTP {status}, but the problem body lacks {', '.join(missing)}"
    return None


async def _refused(rig: _UploadRig, cases: list[tuple[str, bytes, int, dict[str, str]]], user: str) -> list[str]:
    """Send each hostile upload; what went wrong (empty when each got its problem+json and left no trace)."""
    answers = [(label, (await rig.post(data, user, headers=headers))[0], status) for label, data, status, headers in cases]
    return await _no_trace(rig, answers)


async def _no_trace(rig: _UploadRig, answers: list[tuple[str, HttpAnswer, int]]) -> list[str]:
    """What went wrong with refused uploads: the wrong answer, or an event or object they left behind."""
    wrong = []
    for label, answer, status in answers:
        problem = _problem(answer, status)
        if problem is not None:
            wrong.append(f"{label} got {problem}, expected {status} problem+json")
    await rig.quiet()
    if rig.uploaded():
        wrong.append(
            f"{len(rig.uploaded())} image.uploaded event(s) were published for refused uploads: validate before publishing"
        )
    if rig.storage.stored("upload"):
        wrong.append("refused uploads were stored in Storage: validate before storing")
    return wrong


@checks.check(
    "q2",
    hint="202 means accepted, not done: say where to ask (Location) and when (Retry-After); the job store's 202 does both",
    code_hint="job = jobs.new(user, key, fingerprint); ...; return jobs.accepted(job)",
)
async def answers_202_with_a_status_location(ctx: Context) -> str:
    """An image gets 202 Accepted with Location, Retry-After and a JSON body naming the job; the Location answers."""
    rig = await _UploadRig.start(ctx)
    answer, _ = await rig.post(images.sample_photo(), _user(ctx))
    job_id = _accepted(answer)
    body = _body(answer)
    location = answer.headers.get("location", "")
    expect(
        location.endswith(f"/jobs/{job_id}"),
        f"Location should be /jobs/{job_id} (where the job's status lives), got {location!r}",
    )
    retry = answer.headers.get("retry-after", "")
    expect(
        retry.strip().isdigit() and int(retry) >= 1,
        f"Retry-After should say in how many seconds to ask again (e.g. 1), got {retry!r}",
    )
    expect(body.get("state") == "accepted", f"the body's state should be 'accepted', got {body.get('state')!r}")
    status, state = await _status(rig, location)
    expect(
        status == 200 and state in ("accepted", "running"),
        f"GET {location} (the 202's Location) answered HTTP {status}, state {state!r}: the job must be in the store the "
        "status resource reads; make it with jobs.new(user, key, fingerprint), not an id of your own",
    )
    return f"Location {location} answers {state!r}, Retry-After {retry}"


async def _status(rig: _UploadRig, location: str) -> tuple[int, str | None]:
    """What the status resource behind ``location`` says (HTTP status, the job's state), without following a 303."""
    url = location if location.startswith("http") else f"{rig.server.url}{location}"
    async with aiohttp.ClientSession() as session, session.get(url, allow_redirects=False) as response:
        body = await response.json(content_type=None)
    return response.status, body.get("state") if isinstance(body, dict) else None


def _processing_time(work: float) -> float:
    began = time.perf_counter()
    images.process_image(images.sample_photo(), work=work)
    return time.perf_counter() - began


@checks.check(
    "q2",
    timeout=30,  # an upload that processes first costs up to 4 x the processing time, more on a busy machine
    hint="the upload only validates, stores and publishes; the processor does the work later",
    code_hint="inspect_upload (in a thread), storage.put(original_key(job_id), ...), "
    "mqtt.publish(topics.uploaded, ...), then the 202",
)
async def answers_before_processing(ctx: Context) -> str:
    """The 202 comes back in a fraction of the time processing one image takes."""
    rig = await _UploadRig.start(ctx)
    baseline = await asyncio.to_thread(_processing_time, 1.0)
    slow = (
        f"processing inside the upload request: no 202 within {{:.2f}} s, longer than processing one image takes here "
        f"({baseline:.2f} s); store the original, publish image.uploaded and answer 202 at once"
    )
    times: list[float] = []
    while len(times) < 3 and (not times or min(times) >= baseline / 3):  # up to 3 tries; one fast answer is enough
        limit = 1.5 * baseline + 1.0
        answer, seconds = await rig.post(images.sample_photo(), _user(ctx), timeout=limit, on_timeout=slow.format(limit))
        _accepted(answer)
        times.append(seconds)
    fastest = min(times)
    expect(
        fastest < baseline / 3,
        f"processing inside the upload request: the fastest of {len(times)} uploads took {fastest:.2f} s, about as long as "
        f"processing one image ({baseline:.2f} s here); store the original, publish image.uploaded and answer 202 at once",
    )
    return f"202 in {fastest * 1000:.0f} ms; processing one image takes {baseline:.2f} s here"


@checks.check(
    "q2",
    points=2,
    hint="store the bytes in Storage; the event carries only the key (a claim check)",
    code_hint='make_event(IMAGE_UPLOADED, {"job_id": ..., "user": ..., "original": {"key": key, "etag": '
    'etag, "content_type": info.content_type}}, source="/upload")',
)
async def publishes_a_claim_check(ctx: Context) -> str:
    """One image.uploaded event per upload, carrying a reference to the stored original, never the bytes."""
    rig = await _UploadRig.start(ctx)
    photo, user = images.sample_photo(), _user(ctx)
    answer, _ = await rig.post(photo, user)
    job_id = _accepted(answer)
    await until(lambda: bool(rig.uploaded()), 2.0)
    await rig.quiet()
    records = rig.uploaded()
    expect(records, f"no message arrived on {rig.topics.uploaded} (topics.uploaded): publish the image.uploaded event there")
    expect(len(records) == 1, f"{len(records)} messages on topics.uploaded for one upload, expected 1")
    size = len(records[0].payload)
    expect(
        size <= REFERENCE_MAX_BYTES,
        f"publishing the bytes instead of a reference: the event is {_kb(size)} for a {_kb(len(photo))} image; store the "
        "original in Storage and publish its key (a claim check): a broker is no place for files",
    )
    try:
        event = decode(records[0].payload)
    except InvalidEvent as exc:
        raise CheckFailed(f"the message is not an event ({exc}): publish make_event(IMAGE_UPLOADED, data, ...)") from None
    expect(event.type == IMAGE_UPLOADED, f"the event's type is {event.type!r}, expected {IMAGE_UPLOADED!r}")
    data = event.data if isinstance(event.data, dict) else {}
    expect(data.get("job_id") == job_id, f"the event's data.job_id is {data.get('job_id')!r}, the 202 said {job_id!r}")
    expect(data.get("user") == user, f"the event's data.user is {data.get('user')!r}, expected the uploader {user!r}")
    original = data.get("original")
    key = original.get("key") if isinstance(original, dict) else None
    expect(isinstance(key, str), f"the event's data should hold original.key, the original's storage key; got {data!r:.160}")
    expect(rig.storage.read(str(key)) == photo, f"original.key {key!r} does not hold the uploaded bytes in Storage")
    puts = rig.storage.requests("upload", "PUT", key=str(key))
    expect(
        not puts or puts[0].ended < records[0].t,
        "the event was published before the original was stored: a quick processor would find nothing; store, then publish",
    )
    return f"{size} bytes, original.key {key!r}"


@checks.check(
    "q2",
    hint="the format comes from the bytes (images.inspect_upload), never from the name or Content-Type",
    code_hint="info = await asyncio.to_thread(images.inspect_upload, data)  # then info.content_type",
)
async def refuses_what_is_not_an_image(ctx: Context) -> str:
    """Text named holiday.jpg, sent as image/jpeg, gets 415 problem+json and leaves no trace."""
    rig = await _UploadRig.start(ctx)
    answer, _ = await rig.post(images.not_an_image(), _user(ctx), headers=HOSTILE_HEADERS)
    expect(
        not 200 <= answer.status < 300,
        f"trusting the file extension/content type: text named holiday.jpg, sent as image/jpeg, got HTTP {answer.status}; "
        "read the format from the bytes with images.inspect_upload",
    )
    wrong = await _no_trace(rig, [("text named holiday.jpg", answer, 415)])
    expect(not wrong, "; ".join(wrong))
    return "415 application/problem+json, nothing stored or published"


@checks.check(
    "q2",
    hint="a refused upload is answered with the problem its rejection carries, before anything is stored",
    code_hint="except images.ImageRejected as exc: return problem_for(exc)  # before storage.put",
)
async def refuses_hostile_uploads(ctx: Context) -> str:
    """An empty upload gets 400, a decompression bomb 413, a truncated JPEG 422, each as problem+json, leaving no trace."""
    rig = await _UploadRig.start(ctx)
    cases: list[tuple[str, bytes, int, dict[str, str]]] = [
        ("an empty upload", b"", 400, {}),
        (
            "a decompression bomb",
            images.decompression_bomb(ctx.rng.randint(20_000, 40_000), ctx.rng.randint(20_000, 40_000)),
            413,
            {},
        ),
        ("a truncated JPEG", images.truncated_jpeg(), 422, {}),
    ]
    wrong = await _refused(rig, cases, _user(ctx))
    expect(not wrong, "; ".join(wrong))
    return "400, 413, 422 as problem+json; nothing stored or published"


@checks.check(
    "q2",
    hint="look the key up for this user before anything else; a repeat gets the first job's 202 again",
    code_hint="if key is not None and (job := jobs.find(user, key)) is not None: return jobs.accepted(job, replayed=True)",
)
async def repeated_idempotency_key_is_one_job(ctx: Context) -> str:
    """The same Idempotency-Key twice gives the same job and one image.uploaded event."""
    rig = await _UploadRig.start(ctx)
    key, user = uuid.uuid4().hex, _user(ctx)
    first, _ = await rig.post(images.sample_photo(), user, key=key)
    second, _ = await rig.post(images.sample_photo(), user, key=key)
    ids = [_accepted(first, "the first POST"), _accepted(second, "the repeated POST")]
    await until(lambda: bool(rig.uploaded()), 2.0)
    await rig.quiet()
    events = len(rig.uploaded())
    expect(
        ids[0] == ids[1] and events == 1,
        f"no idempotency: one Idempotency-Key, sent twice, made {len(set(ids))} job(s) and {events} image.uploaded event(s); "
        "a retried request must get the first answer again, not a second job",
    )
    return f"job {ids[0][:8]} twice, 1 event"


@checks.check(
    "q2",
    hint="a key belongs to one user and one request: compare the fingerprint (SHA-256 of the bytes) with the first one's",
    code_hint="if job.fingerprint != hashlib.sha256(data).hexdigest(): return key_reused(key)  # 422 problem+json",
)
async def idempotency_is_per_user_with_a_fingerprint(ctx: Context) -> str:
    """The same key with other bytes gets 422 problem+json; the same key from another user is that user's own new job."""
    rig = await _UploadRig.start(ctx)
    key, user = uuid.uuid4().hex, _user(ctx)
    other_user = f"{user}-2"
    photo = images.sample_photo()
    other = images.generated_image(ctx.rng.randint(1, 10**6), (ctx.rng.randint(120, 240), ctx.rng.randint(120, 240)))
    first, _ = await rig.post(photo, user, key=key)
    first_id = _accepted(first, "the first POST")
    changed, _ = await rig.post(other, user, key=key)
    someone, _ = await rig.post(photo, other_user, key=key)
    await rig.quiet()
    returned = _body(changed).get("job_id") if changed.status == 202 else None
    unscoped = (
        " (an unscoped dict Idempotency-Key -> 202 body returns someone else's job: keep the key per user and "
        "compare the request's fingerprint)"
    )
    expect(
        changed.status != 202 or returned != first_id,
        f"the same key with other bytes got 202 with the first upload's job {first_id[:8]}: that is someone else's "
        f"job for these bytes, expected 422{unscoped}",
    )
    problem = _problem(changed, 422)
    expect(problem is None, f"the same key with other bytes got {problem}, expected 422 problem+json (key_reused(key))")
    someone_id = _accepted(someone, f"the same key from another user ({other_user})")
    expect(
        someone_id != first_id,
        f"the same key from another user got the first user's job {first_id[:8]}: that is someone else's job, "
        f"expected a 202 with a new job (keys belong to one user; a reuse with other bytes is a 422){unscoped}",
    )
    events = [(decode(r.payload).data or {}).get("job_id") for r in rig.uploaded()]
    expect(
        sorted(map(str, events)) == sorted([first_id, someone_id]),
        f"expected one image.uploaded for each of the 2 jobs, got {len(events)}: a refused request publishes nothing",
    )
    return "other bytes: 422; another user: a job of their own"


@checks.check("q2", hidden=True, hint="inspect_upload reads the format from the bytes; store under info.content_type")
async def trusts_the_bytes_not_the_label(ctx: Context) -> None:
    """Hidden: a PNG named notes.txt, sent as text/plain, is accepted and stored as image/png; a GIF is refused (415)."""
    rig = await _UploadRig.start(ctx)
    png = images.generated_image(ctx.rng.randint(1, 10**6), (ctx.rng.randint(200, 400), ctx.rng.randint(200, 400)))
    label = {"Content-Type": "text/plain", "Content-Disposition": 'attachment; filename="notes.txt"'}
    answer, _ = await rig.post(png, _user(ctx), headers=label)
    expect(
        answer.status == 202,
        f"trusting the file extension/content type: a real PNG named notes.txt, sent as text/plain, got HTTP {answer.status}",
    )
    await until(lambda: bool(rig.uploaded()), 2.0)
    records = rig.uploaded()
    expect(len(records) == 1, f"{len(records)} image.uploaded events for one accepted upload")
    original = (decode(records[0].payload).data or {}).get("original") or {}
    stored = rig.storage.head(str(original.get("key")))
    expect(stored is not None, "the original named by the event is not in Storage")
    expect(
        stored is not None and stored.content_type == "image/png",
        f"the PNG was stored as {stored.content_type if stored else None!r}: store it under the type read from the bytes "
        "(info.content_type), not the client's header",
    )
    gif = images.generated_image(ctx.rng.randint(1, 10**6), (64, 64), "GIF")
    answer, _ = await rig.post(gif, _user(ctx), headers={"Content-Type": "image/png"})
    trusted = "trusting the file extension/content type: " if 200 <= answer.status < 300 else ""
    problem = _problem(answer, 415)
    expect(problem is None, f"{trusted}a GIF (an image, not an accepted format) sent as image/png got {problem}, expected 415")


@checks.check("q2", hidden=True, hint="ImageRejected.status is the HTTP status; validate before storing or publishing")
async def refuses_too_large_and_corrupt(ctx: Context) -> None:
    """Hidden: an upload over the byte limit gets 413, a corrupt PNG 422, as problem+json, leaving no trace."""
    rig = await _UploadRig.start(ctx)
    too_large = bytes(images.MAX_UPLOAD_BYTES + ctx.rng.randint(1, 1000))
    cases: list[tuple[str, bytes, int, dict[str, str]]] = [
        ("an upload over the byte limit", too_large, 413, {}),
        ("a corrupt PNG", images.corrupt_png(), 422, {}),
    ]
    wrong = await _refused(rig, cases, _user(ctx))
    expect(not wrong, "; ".join(wrong))


@checks.check("q2", hidden=True, hint="the key identifies the request, not the bytes: two keys are two uploads")
async def other_keys_are_other_jobs(ctx: Context) -> None:
    """Hidden: the same bytes under two Idempotency-Keys, or with none twice, are separate jobs."""
    rig = await _UploadRig.start(ctx)
    photo, user = images.sample_photo(), _user(ctx)
    ids = []
    for key in (uuid.uuid4().hex, uuid.uuid4().hex, None, None):
        answer, _ = await rig.post(photo, user, key=key)
        ids.append(_accepted(answer))
    await until(lambda: len(rig.uploaded()) >= 4, 2.0)
    await rig.quiet()
    expect(len(set(ids)) == 4, f"4 uploads (two keys, then two without one) made {len(set(ids))} distinct jobs, expected 4")
    expect(len(rig.uploaded()) == 4, f"4 uploads published {len(rig.uploaded())} image.uploaded events, expected 4")


# --------------------------------------------------------------------------- q3: the processor


class _Loop:
    """One of the learner's consumer loops under test, started, killed and restarted like a process.

    A :class:`helpers.core.lifecycle.Restartable` keeps the task and what it died of; a
    crash is named (a loop that is not written yet raises NotImplementedError: not a crash).
    """

    def __init__(self, ctx: Context, function: str) -> None:
        self.ctx, self.function = ctx, function
        self.life = lifecycle.Restartable()

    async def launch(self, *args: Any, **kwargs: Any) -> None:
        run = self.ctx.function(self.function)
        began = await outcome(f"{self.function}()", lambda: self.life.launch(run, *args, **kwargs), START_S)
        if isinstance(began.error, TimeoutError):  # lifecycle.start's own: it says the loop never set `ready`
            raise CheckFailed(str(began.error))
        expect(began.error is None, f"{self.function}() failed while starting: {began.raised}")

    async def stop(self) -> None:
        error = await self.life.kill()
        if error is not None and not isinstance(error, NotImplementedError):
            raise CheckFailed(f"{self.function}() crashed: {type(error).__name__}: {error}")

    def crashed(self) -> BaseException | None:
        return self.life.crashed()


class _ProcessorRig:
    """The learner's run_processor under test: started, killed and restarted like a process, watched on the wire."""

    shop: Any
    """The check's own MQTT client, publishing image.uploaded events as the upload service would."""

    def __init__(self, ctx: Context, broker: Any, work: float) -> None:
        self.ctx, self.broker, self.work = ctx, broker, work
        self.topics = Topics.fresh("check07")
        self.storage = RecordingStorage(_folder(ctx) / "storage")
        ctx.on_cleanup(self.storage.stop)
        self.watch = _Watch(broker, lambda: self.storage.stored("processor"))
        self.name = f"processor-{uuid.uuid4().hex[:8]}"
        self.loop = _Loop(ctx, "run_processor")
        self.recorder: Recorder | None = None
        self.stack = _stack(ctx)
        _forget_session(ctx, broker, self.name)
        ctx.on_cleanup(self.stop)

    @classmethod
    async def started(cls, ctx: Context, work: float) -> _ProcessorRig:
        rig = cls(ctx, await ctx.broker(), work)
        rig.recorder = await _recorder(ctx, rig.broker, rig.topics)
        rig.shop = await rig.stack.enter_async_context(rig.broker.client(f"check-upload-{uuid.uuid4().hex[:8]}"))
        await rig.start()
        return rig

    async def start(self) -> None:
        await self.loop.launch(self.watch, self.topics, await self.storage.url("processor"), self.name, work=self.work)

    async def stop(self) -> None:
        await self.loop.stop()

    def crashed(self) -> BaseException | None:
        return self.loop.crashed()

    async def job(self, data: bytes | None = None, user: str | None = None) -> Event:
        """An image.uploaded event for a new job whose original is stored (as the upload would do it)."""
        job_id = uuid.uuid4().hex
        key = f"originals/{job_id}"
        etag = await self.storage.put(key, data if data is not None else images.sample_photo(), "image/jpeg")
        claim = {"key": key, "etag": etag, "content_type": "image/jpeg"}
        data_ = {"job_id": job_id, "user": user or _user(self.ctx), "original": claim}
        return make_event(IMAGE_UPLOADED, data_, source="/upload")

    async def send(self, *events: Event) -> None:
        for event in events:
            await publish(self.shop, self.topics.uploaded, event, qos=1)

    def events(self, kind: str, job_id: str) -> list[Event]:
        assert self.recorder is not None, "started() makes the recorder"
        return [e for _, e in self.recorder.events(kind, job_id)]

    def dead_letters(self) -> list[Any]:
        assert self.recorder is not None, "started() makes the recorder"
        found = []
        for record in _on(self.recorder, self.topics.dead_letter):
            try:
                found.append(json.loads(record.payload))
            except ValueError:
                found.append(record.payload)
        return found

    async def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Until ``condition()``; a crash of the learner's loop fails the check at once, with its error."""
        await until(lambda: condition() or self.crashed() is not None, timeout)
        error = self.crashed()
        if error is not None:
            raise CheckFailed(f"run_processor() crashed: {type(error).__name__}: {error}")
        return condition()

    async def wait_done(self, job_id: str, timeout: float = 6.0) -> Event:
        if not await self.wait(lambda: bool(self.events(JOB_DONE, job_id)), timeout):
            stored = len(self.storage.stored("processor"))
            raise CheckFailed(
                f"no job.done for the job on topics.done within {timeout:g} s ({stored} object(s) stored by the processor): "
                "fetch the original, process it, store each rendition, then publish job.done"
            )
        return self.events(JOB_DONE, job_id)[0]

    async def wait_handled(self, job_id: str, deliveries: int, timeout: float = 4.0) -> None:
        """Until the processor acknowledged ``deliveries`` messages of the job (or ``timeout``), then quiet."""
        await self.wait(
            lambda: sum(d.acked is not None for d in self.watch.of_job(self.topics.uploaded, job_id)) >= deliveries, timeout
        )
        await self.quiet()

    async def quiet(self) -> None:
        assert self.recorder is not None, "started() makes the recorder"
        recorder = self.recorder
        await until_quiet(lambda: (len(recorder.records), len(self.storage.calls)), QUIET_S, 3.0)

    def result_writes(self, results: dict[str, Any]) -> int:
        keys = {str(k) for k in results.values()}
        return sum(c.key in keys for c in self.storage.requests("processor", "PUT"))


def _results(event: Event) -> dict[str, Any]:
    data = event.data if isinstance(event.data, dict) else {}
    results = data.get("results")
    expect(isinstance(results, dict), f"job.done's data should hold results: {{rendition name: storage key}}, got {data!r:.160}")
    return dict(results) if isinstance(results, dict) else {}


@checks.check(
    "q3",
    points=2,
    timeout=15,
    hint="fetch the original by its key, process it, store each rendition, then announce job.done",
    code_hint="data, _, _ = await storage.get(key); renditions, caption = await "
    "asyncio.to_thread(images.process_image, data, work=work)",
)
async def processes_an_image(ctx: Context) -> str:
    """An image.uploaded event becomes stored renditions and one job.done naming them."""
    rig = await _ProcessorRig.started(ctx, work=0.2)
    user = _user(ctx)
    event = await rig.job(user=user)
    job_id = event.data["job_id"]
    await rig.send(event)
    done = await rig.wait_done(job_id)
    await rig.quiet()
    expect(len(rig.events(JOB_DONE, job_id)) == 1, f"{len(rig.events(JOB_DONE, job_id))} job.done events for one job, expected 1")
    data = done.data if isinstance(done.data, dict) else {}
    expect(data.get("user") == user, f"job.done's data.user is {data.get('user')!r}, expected {user!r} (the notifier needs it)")
    results = _results(done)
    missing = [name for name in RENDITIONS if name not in results]
    expect(not missing, f"job.done's results lack {', '.join(missing)}: name every rendition process_image returned")
    stored = rig.storage.stored("processor")
    absent = [str(key) for key in results.values() if key not in stored or not rig.storage.read(str(key))]
    expect(not absent, f"job.done names keys the processor never stored: {', '.join(absent[:3])}")
    caption = data.get("caption")
    expect(isinstance(caption, str) and caption, "job.done's data should hold the caption process_image returned")
    return f"{len(results)} renditions stored, 1 job.done"


@checks.check(
    "q3",
    timeout=15,
    hint="the ack promises the work is done: QoS 1, acks only when you say so, and say so last",
    code_hint="await process_job(...); ack(client, message)  # client = manual_ack(broker.client(name, clean_session=False))",
)
async def acks_after_storing(ctx: Context) -> str:
    """Each image.uploaded arrives at QoS 1 and is acknowledged only once its results are stored."""
    rig = await _ProcessorRig.started(ctx, work=0.1)
    events = [await rig.job(), await rig.job()]
    await rig.send(*events)
    done = {e.data["job_id"]: await rig.wait_done(e.data["job_id"]) for e in events}
    for job_id in done:
        await rig.wait_handled(job_id, 1, 2.0)
    deliveries = [d for d in rig.watch.deliveries if d.topic == rig.topics.uploaded]
    expect(
        not any(d.qos == 0 for d in deliveries),
        "image.uploaded arrived at QoS 0: a QoS 0 message is never acknowledged nor resent, so a crash loses it "
        "(subscribe with qos=1)",
    )
    early, never = [], []
    for job_id, event in done.items():
        delivery = rig.watch.of_job(rig.topics.uploaded, job_id)[0]
        if delivery.acked is None:
            never.append(job_id)
        elif not {str(k) for k in _results(event).values()} <= set(delivery.seen_at_ack or ()):
            early.append(job_id)
    how = " (the client acknowledges on receipt: wrap it with manual_ack(...))" if rig.watch.auto_acking() else ""
    expect(
        not early,
        f"ack before storing: {len(early)} of {len(done)} images were acknowledged before their results were stored{how}; "
        "if the worker dies in between, the broker forgets the image and it is never processed",
    )
    expect(
        not never, f"{len(never)} of {len(done)} messages were never acknowledged: call ack(client, message) once the job is done"
    )
    return f"{len(done)} images, each acknowledged after its results were stored"


@checks.check(
    "q3",
    timeout=15,
    hint="before the work, look for the job's done marker in Storage; write it after job.done",
    code_hint="if await storage.exists(done_marker(job_id)): return  ...  await "
    'storage.put(done_marker(job_id), b\'{"state": "done"}\', ...)',
)
async def same_event_twice_is_done_once(ctx: Context) -> str:
    """The same image.uploaded event delivered twice is processed once: one set of results, one job.done."""
    rig = await _ProcessorRig.started(ctx, work=0.1)
    event = await rig.job()
    job_id = event.data["job_id"]
    await rig.send(event)
    results = _results(await rig.wait_done(job_id))
    await rig.wait_handled(job_id, 1)
    await rig.send(event)  # the broker delivers it again: a redelivery after a crash looks exactly like this
    await rig.wait_handled(job_id, 2)
    dones, writes = len(rig.events(JOB_DONE, job_id)), rig.result_writes(results)
    expect(
        dones == 1 and writes == len(results),
        f"no idempotency: the same image.uploaded event, delivered twice, was processed twice ({dones} job.done, {writes} "
        f"result writes for {len(results)} renditions); check the job's done marker in Storage before doing the work",
    )
    return "1 job.done, 1 set of results for 2 deliveries"


@checks.check(
    "q3",
    timeout=15,
    hint="a failed image is an outcome, not a crash: job.failed and a dead letter, then carry on",
    code_hint="except Exception as exc: publish dead_letter_payload(...) on topics.dead_letter, "
    "job.failed on topics.failed, write the marker",
)
async def failure_ends_failed_with_a_dead_letter(ctx: Context) -> str:
    """An image that cannot be processed ends as job.failed plus a dead letter, and the next image is still processed."""
    rig = await _ProcessorRig.started(ctx, work=0.1)
    bad, good = await rig.job(images.truncated_jpeg()), await rig.job()
    bad_id, good_id = bad.data["job_id"], good.data["job_id"]
    await rig.send(bad, good)
    await rig.wait(lambda: bool(rig.events(JOB_FAILED, bad_id) and rig.events(JOB_DONE, good_id) and rig.dead_letters()), 6.0)
    await rig.quiet()
    failed = rig.events(JOB_FAILED, bad_id)
    expect(failed, "no job.failed on topics.failed for the image that cannot be processed (a truncated JPEG): the user must hear")
    expect(len(failed) == 1, f"{len(failed)} job.failed events for one job, expected 1")
    reason = (failed[0].data or {}).get("reason")
    expect(isinstance(reason, str) and reason, "job.failed's data should say why (a 'reason')")
    expect(not rig.events(JOB_DONE, bad_id), "the image that cannot be processed got a job.done")
    dead = rig.dead_letters()
    expect(
        len(dead) == 1, f"{len(dead)} dead letters on topics.dead_letter, expected 1 (dead_letter_payload(...) with the reason)"
    )
    expect(
        isinstance(dead[0], dict) and dead[0].get("reason"),
        f"the dead letter should be dead_letter_payload(...) with a reason, got {dead[0]!r:.120}",
    )
    expect(rig.events(JOB_DONE, good_id), "the next image was not processed after the failing one: the worker must carry on")
    return f"job.failed ({str(reason)[:60]}), 1 dead letter, the next image done"


@checks.check(
    "q3",
    timeout=15,
    hint="CPU work belongs in a thread: the event loop must keep serving everything else meanwhile",
    code_hint="await asyncio.to_thread(images.process_image, data, work=work)",
)
async def keeps_the_event_loop_free(ctx: Context) -> str:
    """While an image is processed, the event loop keeps running (the work is in a thread)."""
    rig = await _ProcessorRig.started(ctx, work=0.8)  # long enough that a pause of half of it is no scheduling hiccup
    ticker = LoopLag().start()
    ctx.on_cleanup(ticker.close)
    event = await rig.job()
    job_id, key = event.data["job_id"], event.data["original"]["key"]
    await rig.send(event)
    results = _results(await rig.wait_done(job_id, 10.0))
    ticker.stop()
    fetched = rig.storage.requests("processor", "GET", key=key)
    stores = [c.started for c in rig.storage.requests("processor", "PUT") if c.key in {str(k) for k in results.values()}]
    expect(fetched and stores, "could not see the processing: fetch the original from Storage and store the renditions there")
    start, end = fetched[0].ended, min(stores)
    length = end - start
    expect(length > 0, "the results were stored before the original was fetched")
    pause = ticker.longest_between(start, end)
    expect(
        pause < 0.5 * length,
        blocking_message(f"your processor, working on the image for {length:.2f} s,", pause)
        + " (here: run process_image with await asyncio.to_thread(...))",
    )
    return f"longest pause {pause * 1000:.0f} ms while the image took {length:.2f} s"


@checks.check("q3", hidden=True, timeout=15, hint="dedupe on the job (its done marker), not on the event id")
async def retried_upload_event_is_done_once(ctx: Context) -> None:
    """Hidden: the same job's image.uploaded sent again as a new event (a publisher retry) is processed once."""
    rig = await _ProcessorRig.started(ctx, work=0.1)
    event = await rig.job()
    job_id = event.data["job_id"]
    await rig.send(event)
    results = _results(await rig.wait_done(job_id))
    await rig.wait_handled(job_id, 1)
    await rig.send(make_event(IMAGE_UPLOADED, event.data, source="/upload"))  # same job, a new event id
    await rig.wait_handled(job_id, 2)
    dones, writes = len(rig.events(JOB_DONE, job_id)), rig.result_writes(results)
    expect(
        dones == 1 and writes == len(results),
        f"no idempotency: the same job, published again as a new event, was processed again ({dones} job.done); "
        "the done marker belongs to the job, not to one event",
    )


@checks.check("q3", hidden=True, timeout=20, hint="the done marker lives in Storage, so a restarted processor still sees it")
async def remembers_done_jobs_across_a_restart(ctx: Context) -> None:
    """Hidden: after a restart, an event for a job done before the restart is not processed again."""
    rig = await _ProcessorRig.started(ctx, work=0.1)
    event = await rig.job()
    job_id = event.data["job_id"]
    await rig.send(event)
    await rig.wait_done(job_id)
    await rig.wait_handled(job_id, 1)
    await rig.stop()  # killed
    await rig.start()  # and back, with an empty memory
    await rig.send(event)
    await rig.wait_handled(job_id, 2)
    dones = len(rig.events(JOB_DONE, job_id))
    expect(
        dones == 1,
        f"after a restart the same job was processed again ({dones} job.done): keep the done marker in Storage, not in memory",
    )


# --------------------------------------------------------------------------- q4: the notifier


class _NotifierRig:
    """The learner's run_notifier under test: started, killed and restarted like a process, watched on the wire."""

    processor: Any
    """The check's own MQTT client, publishing job.done and job.failed as the processor would."""

    def __init__(self, ctx: Context, broker: Any) -> None:
        self.ctx, self.broker = ctx, broker
        self.topics = Topics.fresh("check07")
        self.folder = _folder(ctx)
        self.inbox = Inbox(self.folder)
        self.watch = _Watch(broker, lambda: set(self.inbox.per_job()))
        self.name = f"notifier-{uuid.uuid4().hex[:8]}"
        self.loop = _Loop(ctx, "run_notifier")
        self.stack = _stack(ctx)
        _forget_session(ctx, broker, self.name)
        ctx.on_cleanup(self.stop)

    @classmethod
    async def started(cls, ctx: Context) -> _NotifierRig:
        rig = cls(ctx, await ctx.broker())
        rig.processor = await rig.stack.enter_async_context(rig.broker.client(f"check-processor-{uuid.uuid4().hex[:8]}"))
        await rig.start()
        return rig

    async def start(self) -> None:
        await self.loop.launch(self.watch, self.topics, self.folder, self.name)

    async def stop(self) -> None:
        await self.loop.stop()

    def crashed(self) -> BaseException | None:
        return self.loop.crashed()

    def jobs(self, count: int, state: str = "done") -> list[tuple[str, str, str]]:
        return [(uuid.uuid4().hex, _user(self.ctx), state) for _ in range(count)]

    @staticmethod
    def event(job: tuple[str, str, str]) -> Event:
        job_id, user, state = job
        if state == "done":
            data = {"job_id": job_id, "user": user, "results": {"thumb-128": f"results/{job_id}/thumb-128"}, "caption": "a photo"}
            return make_event(JOB_DONE, data, source="/processor", id=done_event_id(job_id))
        return make_event(
            JOB_FAILED,
            {"job_id": job_id, "user": user, "reason": "the caption model crashed"},
            source="/processor",
            id=failed_event_id(job_id),
        )

    async def finish(self, *jobs: tuple[str, str, str]) -> None:
        """Publish each job's job.done (or job.failed), as the processor would."""
        for job in jobs:
            await publish(self.processor, self.topics.done if job[2] == "done" else self.topics.failed, self.event(job), qos=1)

    async def wait_notified(self, job_ids: list[str], timeout: float = 3.0) -> None:
        await until(lambda: set(job_ids) <= set(self.inbox.per_job()) or self.crashed() is not None, timeout)
        error = self.crashed()
        if error is not None:
            raise CheckFailed(f"run_notifier() crashed: {type(error).__name__}: {error}")
        await until_quiet(lambda: (len(self.inbox), len(self.watch.deliveries)), QUIET_S, 2.0)  # a late duplicate shows up


def _once_each(inbox: Inbox, jobs: list[tuple[str, str, str]], label: str) -> None:
    counts = inbox.per_job()
    missing = [j for j, _, _ in jobs if counts[j] == 0]
    doubled = [j for j, _, _ in jobs if counts[j] > 1]
    expect(not missing, f"{label}: {len(missing)} of {len(jobs)} finished jobs were never notified")
    expect(not doubled, f"{label}: {len(doubled)} job(s) were notified more than once: remember the notified job ids")


@checks.check(
    "q4",
    hint="one notification per finished job (done or failed), to the job's user; progress is not news",
    code_hint='if event.type in (JOB_DONE, JOB_FAILED): Inbox(workdir).notify(event.data["user"], job_id, "done" or "failed")',
)
async def notifies_each_user_once(ctx: Context) -> str:
    """Each finished job's user is notified once, with the job's state, even when its event comes twice."""
    rig = await _NotifierRig.started(ctx)
    jobs = rig.jobs(ctx.rng.randint(2, 4)) + rig.jobs(1, "failed")
    await rig.finish(*jobs)
    await rig.finish(jobs[0])  # a redelivered job.done
    progress = make_event(
        JOB_PROGRESS, {"job_id": uuid.uuid4().hex, "step": "thumbnails", "done": 2, "total": 4}, source="/processor"
    )
    await publish(rig.processor, rig.topics.progress, progress, qos=1)
    await rig.wait_notified([j for j, _, _ in jobs])
    _once_each(rig.inbox, jobs, "while running")
    by_job = {note.job_id: note for note in rig.inbox.entries()}
    for job_id, user, state in jobs:
        note = by_job[job_id]
        expect(note.user == user, f"job {job_id[:8]}'s notification went to {note.user!r}, not its user {user!r}")
        expect(note.state == state, f"job {job_id[:8]} ended {state!r}, its notification says {note.state!r}")
    extra = set(by_job) - {j for j, _, _ in jobs}
    expect(not extra, "a job.progress event became a notification: notify only job.done and job.failed")
    return f"{len(jobs)} jobs, {len(jobs)} notifications"


@checks.check(
    "q4",
    points=2,
    timeout=15,
    hint="the same client id every time, a session that outlives the connection, an acknowledged QoS: the broker keeps it all",
    code_hint="manual_ack(broker.client(name, clean_session=False)); "
    "subscribed_messages(client, topics.jobs, qos=1, ready=ready)",
)
async def keeps_what_arrives_while_down(ctx: Context) -> str:
    """Jobs that finish while the notifier is down are notified once it is back, each once."""
    rig = await _NotifierRig.started(ctx)
    await rig.stop()  # killed
    jobs = rig.jobs(ctx.rng.randint(3, 5))
    await rig.finish(*jobs)
    await rig.start()  # back, with the same name
    await rig.wait_notified([j for j, _, _ in jobs])
    counts = rig.inbox.per_job()
    lost = [j for j, _, _ in jobs if counts[j] == 0]
    if lost:
        why = _session_problem(rig.watch, rig.name) or "use a persistent session (clean_session=False, the given name) and QoS 1"
        raise CheckFailed(f"{len(lost)} of {len(jobs)} jobs that finished while the notifier was down were never notified: {why}")
    _once_each(rig.inbox, jobs, "after the restart")
    return f"{len(jobs)} jobs finished while it was down, {len(jobs)} users notified once"


@checks.check("q4", hidden=True, timeout=15, hint="write the notification first, acknowledge second")
async def acks_after_notifying(ctx: Context) -> None:
    """Hidden: each job.done is acknowledged only after its notification is written."""
    rig = await _NotifierRig.started(ctx)
    jobs = rig.jobs(ctx.rng.randint(2, 4))
    await rig.finish(*jobs)
    await rig.wait_notified([j for j, _, _ in jobs])
    early = []
    for job_id, _, _ in jobs:
        deliveries = rig.watch.of_job(rig.topics.done, job_id)
        if deliveries and deliveries[0].acked is not None and job_id not in (deliveries[0].seen_at_ack or set()):
            early.append(job_id)
    how = " (the client acknowledges on receipt: wrap it with manual_ack(...))" if rig.watch.auto_acking() else ""
    expect(
        not early,
        f"ack before notifying: {len(early)} of {len(jobs)} job.done events were acknowledged before the user was told{how}",
    )


@checks.check("q4", hidden=True, timeout=15, hint="keep the notified job ids in a file in workdir (SeenIds), not in memory")
async def remembers_across_a_restart(ctx: Context) -> None:
    """Hidden: a job notified before a restart is not notified again when its job.done comes again after it."""
    rig = await _NotifierRig.started(ctx)
    first, later = rig.jobs(1)[0], rig.jobs(1)[0]
    await rig.finish(first)
    await rig.wait_notified([first[0]])
    await rig.stop()
    await rig.start()
    await rig.finish(first, later)  # the processor republished first's job.done (say, after its own crash)
    await rig.wait_notified([first[0], later[0]])
    count = rig.inbox.per_job()[first[0]]
    expect(count == 1, f"after a restart a job's user was notified again ({count} notifications): keep the notified ids on disk")


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
    system = await _system(ctx, work=0.3)
    count = ctx.rng.randint(4, 6)
    users = [_user(ctx) for _ in range(count)]
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
    system = await _system(ctx, work=1.0)
    got = await outcome("the drill", lambda: worker_killed(system, images.sample_photo(), _user(ctx), timeout=10), 30)
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
    system = await _system(ctx, work=0.1)
    count = ctx.rng.randint(2, 4)
    users = [_user(ctx) for _ in range(count)]
    got = await outcome("the drill", lambda: notifier_outage(system, [images.sample_photo()] * count, users, timeout=15), 24)
    expect(got.error is None, f"the drill did not complete: {got.raised}")
    drill = got.value
    expect(drill.lost == 0, f"{drill.lost} of {count} users were never notified after the notifier's outage")
    expect(drill.duplicates == 0, f"{drill.duplicates} duplicate notification(s) after the outage")
    return f"{count} jobs done while it was down: {count} users notified once, 0 lost"
