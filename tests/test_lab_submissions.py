"""Learner submissions to labs 00, 02 and 04 are judged right, and a mistake is named where the learner sees it.

Each submission is the real solution notebook's code with a learner's edit (see
``lab_submissions``): either a correct alternative, which must get every point of its
question (hidden checks included), or one mistake, which must fail a *visible* check
(the learner's own ``await check("qN")`` shows it before grading) whose message names
the rule that was broken.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from lab_submissions import (
    Edit,
    edited,
    markdown_cells,
    notebook_definitions,
    replaced,
    solution_source,
    submission,
    warmup_kernel,
)

from helpers.grading.checks import CheckResult, load_checks, run_check


@dataclass(frozen=True)
class Variant:
    """One learner's answer to one question: the solution with ``edits``."""

    lab: str
    question: str
    edits: tuple[Edit, ...]
    fails: str | None = None
    """The visible check that must fail (None: a correct alternative, which gets every point)."""
    says: str = ""
    """Words the failing check's message must contain: the rule, named."""


# --------------------------------------------------------------------------- lab 00

JSON_BY_HAND = ('    return web.json_response({"hello": name})', '    return web.Response(text=json.dumps({"hello": name}))')
MORE_IMPORTS = ("import asyncio\n", "import asyncio\nimport json\nimport statistics\n")
P50 = "    return run.summary().p50_ms"
DECODE = "            return message.payload.decode()"
NAME = '    name = request.query.get("name", "world")'

LAB00 = {
    "00 correct: JSON built by hand, labelled as JSON": Variant(
        "00_warmup",
        "q1",
        (MORE_IMPORTS, (JSON_BY_HAND[0], JSON_BY_HAND[1][:-1] + ', content_type="application/json")')),
    ),
    "00 correct: payload read with str(..., 'utf-8')": Variant(
        "00_warmup", "q2", ((DECODE, '            return str(message.payload, "utf-8")'),)
    ),
    "00 correct: statistics.median of the latencies": Variant(
        "00_warmup", "q3", (MORE_IMPORTS, (P50, "    return statistics.median(run.latencies_ms)"))
    ),
    "00 mistake: JSON text labelled text/plain": Variant(
        "00_warmup", "q1", (MORE_IMPORTS, JSON_BY_HAND), "service_greets_by_name", "application/json"
    ),
    "00 mistake: published at QoS 0": Variant(
        "00_warmup",
        "q2",
        (("text.encode(), qos=1)", "text.encode())"),),
        "publishes_at_qos_1",
        "QoS 1",
    ),
    "00 mistake: payload decoded as Latin-1": Variant(
        "00_warmup",
        "q2",
        ((DECODE, '            return message.payload.decode("latin-1")'),),
        "unicode_text_survives",
        "UTF-8",
    ),
    "00 mistake: a mean for a median": Variant(
        "00_warmup",
        "q3",
        (MORE_IMPORTS, (P50, "    return statistics.mean(run.latencies_ms)")),
        "median_not_mean",
        "the median",
    ),
    "00 mistake: no default name (only Q1 loses points)": Variant(
        "00_warmup",
        "q1",
        ((NAME, '    name = request.query["name"]'),),
        "service_greets_the_world",
        "answered HTTP 500",
    ),
    "00 mistake: p50 in seconds": Variant(
        "00_warmup", "q3", ((P50, "    return run.summary().p50_ms / 1000"),), "p50_in_milliseconds", "return milliseconds"
    ),
}

# --------------------------------------------------------------------------- lab 02

TENACITY_LOOP = """    async def attempt_all():
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait_random_exponential(multiplier=base_s, max=cap_s),
            retry=retry_if_exception_type(RETRY_ON),
            reraise=True,
        ):
            with attempt:
                return await call()
"""
TENACITY_DECORATOR = """    @retry(
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=base_s, max=cap_s),
        retry=retry_if_exception_type(RETRY_ON),
        reraise=True,
    )
    async def attempt_all():
        return await call()
"""
CLOSES = """        if trial or self.state == "closed":  # a late success of a straggler must not close an open breaker
            self.state, self.failures = "closed", 0
"""
BREAKER_BODY = (
    """        if self.state == "open" and time.monotonic() - self.opened_at >= self.reset_timeout_s:
            self.state = "half-open"
        if self.state == "open" or (self.state == "half-open" and self.trial_running):
            raise CircuitOpenError(f"circuit open, retry after {self.reset_timeout_s} s")
        trial = self.state == "half-open"
        self.trial_running = trial
        try:
            result = await fn()
        except RETRY_ON:
            if trial or self.state == "closed":  # a straggler that began before the breaker opened: no verdict
                self.failures += 1
                if trial or self.failures >= self.failure_threshold:
                    self.state, self.opened_at, self.failures = "open", time.monotonic(), 0
            raise
        finally:
            if trial:
                self.trial_running = False
"""
    + CLOSES
)
BREAKER_BY_OPENING_TIME = """        if self.state == "open" and time.monotonic() - self.opened_at >= self.reset_timeout_s:
            self.state = "half-open"
        if self.state == "open" or (self.state == "half-open" and self.trial_running):
            raise CircuitOpenError("refused: the breaker is open")
        opened_before, trial = self.opened_at, self.state == "half-open"
        self.trial_running = self.trial_running or trial
        try:
            result = await fn()
        except RETRY_ON:
            if self.opened_at == opened_before:  # the breaker has not (re)opened since this call began
                self.failures += 1
                if trial or self.failures >= self.failure_threshold:
                    self.state, self.opened_at, self.failures = "open", time.monotonic(), 0
            raise
        finally:
            if trial:
                self.trial_running = False
        if self.opened_at == opened_before:
            self.state, self.failures = "closed", 0
"""

RETRIES_OUTSIDE = """        return await with_retries(
            lambda: self.breaker.call(lambda: fetch(self.session, url, self.timeout_s)),
            attempts=self.attempts,
            deadline_s=self.deadline_s,
        )
"""
RETRIES_INSIDE = """        return await self.breaker.call(
            lambda: with_retries(
                lambda: fetch(self.session, url, self.timeout_s), attempts=self.attempts, deadline_s=self.deadline_s
            )
        )
"""
FIVE_XX = "        if response.status >= 500:"

LAB02 = {
    "02 correct: tenacity's @retry decorator": Variant(
        "02_resilient_client",
        "q2",
        (
            ("from tenacity import AsyncRetrying,", "from tenacity import retry, AsyncRetrying,"),
            (TENACITY_LOOP, TENACITY_DECORATOR),
        ),
    ),
    "02 correct: a breaker that tells stragglers by the time it opened": Variant(
        "02_resilient_client", "q3", ((BREAKER_BODY, BREAKER_BY_OPENING_TIME),)
    ),
    "02 mistake: a breaker that closes on a straggler": Variant(
        "02_resilient_client",
        "q3",
        ((CLOSES, '        self.state, self.failures = "closed", 0\n'),),
        "a_straggler_does_not_close_the_breaker",
        "began before the breaker opened",
    ),
    "02 mistake: a success does not reset the count": Variant(
        "02_resilient_client",
        "q3",
        ((CLOSES, '        if trial:\n            self.state = "closed"\n'),),
        "failures_must_be_consecutive",
        "a success resets",
    ),
    "02 mistake: every caller is a half-open trial": Variant(
        "02_resilient_client",
        "q3",
        (
            (
                '        if self.state == "open" or (self.state == "half-open" and self.trial_running):',
                '        if self.state == "open":',
            ),
        ),
        "one_trial_at_a_time",
        "exactly one trial",
    ),
    "02 mistake: the breaker counts bugs": Variant(
        "02_resilient_client",
        "q3",
        (("        except RETRY_ON:\n", "        except Exception:\n"),),
        "other_errors_do_not_count",
        "bugs say nothing about the service",
    ),
    "02 mistake: CircuitOpenError retried": Variant(
        "02_resilient_client",
        "q2",
        (("retry=retry_if_exception_type(RETRY_ON),", "retry=retry_if_exception_type(Exception),"),),
        "does_not_retry_what_cannot_pass",
        "straight to the caller",
    ),
    "02 mistake: refused connections not in RETRY_ON": Variant(
        "02_resilient_client",
        "q4",
        (("    aiohttp.ClientConnectionError,  # refused or broken: the service's process is gone\n", ""),),
        "client_opens_when_the_service_is_gone",
        "a refused connection must count as a failure",
    ),
    "02 mistake: retries inside the breaker": Variant(
        "02_resilient_client",
        "q4",
        ((RETRIES_OUTSIDE, RETRIES_INSIDE),),
        "every_attempt_goes_through_the_breaker",
        "with the retries outside it",
    ),
    "02 mistake: a 4xx raised as ServiceError (only Q1 loses points)": Variant(
        "02_resilient_client",
        "q1",
        ((FIVE_XX, FIVE_XX.replace("500", "400")),),
        "fetch_raises_a_4xx_as_a_client_error",
        "a 4xx must not be retried",
    ),
    "02 mistake: one retry too many (only Q2 loses points)": Variant(
        "02_resilient_client",
        "q2",
        (("stop=stop_after_attempt(attempts),", "stop=stop_after_attempt(attempts + 1),"),),
        "stops_at_the_retry_budget",
        "but the call was made",
    ),
    "02 mistake: the client ignores its timeout": Variant(
        "02_resilient_client",
        "q4",
        (("fetch(self.session, url, self.timeout_s)", "fetch(self.session, url)"),),
        "client_uses_its_timeout",
        "the client's timeout_s",
    ),
}

# --------------------------------------------------------------------------- lab 04

APPLY = """    if event.id in applied:
        return False
    ledger.charge(event)
    applied.add(event.id)
    return True
"""
STORE = '    return SeenIds(Path(workdir) / "applied-ids.txt")'
SQLITE_STORE = '''import sqlite3


class SqliteIds:
    """The applied ids in a SQLite table, with the `in` and .add() of SeenIds."""

    def __init__(self, path):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("CREATE TABLE IF NOT EXISTS applied (id TEXT PRIMARY KEY)")

    def __contains__(self, event_id):
        return self.db.execute("SELECT 1 FROM applied WHERE id = ?", (event_id,)).fetchone() is not None

    def add(self, event_id):
        self.db.execute("INSERT OR IGNORE INTO applied VALUES (?)", (event_id,))


def open_applied_ids(workdir):'''
CLIENT04 = "    return manual_ack(broker.client(name, clean_session=False))"
DEAD_LETTER = 'record = dead_letter_payload(str(message.topic), payload, f"malformed: {exc}")'

LAB04 = {
    "04 correct: a SQLite store of applied ids": Variant(
        "04_reliable_consumer",
        "q2",
        (("def open_applied_ids(workdir):", SQLITE_STORE), (STORE, '    return SqliteIds(Path(workdir) / "applied.db")')),
    ),
    "04 correct: apply_once written the other way round": Variant(
        "04_reliable_consumer",
        "q2",
        (
            (
                APPLY,
                "    if event.id not in applied:\n        ledger.charge(event)\n        applied.add(event.id)\n"
                "        return True\n    return False\n",
            ),
        ),
    ),
    "04 correct: the topic's .value and the bare reason": Variant(
        "04_reliable_consumer",
        "q3",
        ((DEAD_LETTER, "record = dead_letter_payload(message.topic.value, payload, str(exc))"),),
    ),
    "04 mistake: a consumer at QoS 0": Variant(
        "04_reliable_consumer", "q1", (("QOS = 1\n", "QOS = 0\n"),), "orders_wait_for_an_offline_consumer", "QoS 1"
    ),
    "04 mistake: one client id for every consumer": Variant(
        "04_reliable_consumer",
        "q1",
        (("broker.client(name, clean_session=False)", 'broker.client("payments", clean_session=False)'),),
        "orders_wait_for_an_offline_consumer",
        "use the consumer's name",
    ),
    "04 mistake: a dedupe on the order id": Variant(
        "04_reliable_consumer",
        "q2",
        ((APPLY, APPLY.replace("event.id", 'event.data["order_id"]')),),
        "dedupes_on_event_id",
        "not on the order id",
    ),
    "04 mistake: the id recorded before the charge": Variant(
        "04_reliable_consumer",
        "q2",
        (("    ledger.charge(event)\n    applied.add(event.id)\n", "    applied.add(event.id)\n    ledger.charge(event)\n"),),
        "records_only_after_charging",
        "record the event id only after the charge",
    ),
    "04 mistake: one store for every workdir": Variant(
        "04_reliable_consumer",
        "q2",
        (
            ("def open_applied_ids(workdir):", "SHARED_IDS = set()\n\n\ndef open_applied_ids(workdir):"),
            (STORE, "    return SHARED_IDS"),
        ),
        "stores_belong_to_their_folder",
        "shared between folders",
    ),
    "04 mistake: a client that acks on receipt (held-out uma_noack; only Q1 loses points)": Variant(
        "04_reliable_consumer",
        "q1",
        (
            (
                CLIENT04,
                CLIENT04.replace(
                    "manual_ack(broker.client(name, clean_session=False))", "broker.client(name, clean_session=False)"
                ),
            ),
        ),
        "acknowledges_only_when_told",
        "wrap it with manual_ack",
    ),
    "04 mistake: the Topic put into JSON as it is": Variant(
        "04_reliable_consumer",
        "q3",
        ((DEAD_LETTER, DEAD_LETTER.replace("str(message.topic)", "message.topic")),),
        "malformed_goes_to_dead_letters",
        "str(message.topic)",
    ),
}

VARIANTS: dict[str, Variant] = {**LAB00, **LAB02, **LAB04}


def _uses_a_broker(variant: Variant) -> bool:
    return variant.lab == "04_reliable_consumer" or (variant.lab, variant.question) == ("00_warmup", "q2")


@asynccontextmanager
async def _kernel(variant: Variant) -> AsyncIterator[dict[str, Any]]:
    """The learner's namespace after Run All: for lab 00, the hello service and the p50 the notebook measured."""
    ns = submission(variant.lab, *variant.edits)
    if variant.lab != "00_warmup":
        yield ns
        return
    async with warmup_kernel(ns):
        yield ns


async def _judge(variant: Variant) -> dict[str, CheckResult]:
    """Every check of the variant's question, hidden ones included, as the grader runs them."""
    async with _kernel(variant) as ns:
        return {c.name: await run_check(c, ns) for c in load_checks(variant.lab).of(variant.question)}


def assert_judged_right(label: str, fails: str | None, says: str, got: dict[str, CheckResult]) -> None:
    """A correct submission fails no check; a mistake fails the VISIBLE check that names it, saying ``says``."""
    if fails is None:
        assert {name: r.message for name, r in got.items() if not r.passed} == {}, f"{label} loses points"
        return
    result = got[fails]
    assert not result.passed, f"{label} passes {fails}"
    assert not result.hidden, f"{label} is caught only by a hidden check: the learner would see 'all passed'"
    assert says in result.message, result.message


@pytest.mark.parametrize(
    "label", [pytest.param(label, marks=[pytest.mark.broker] if _uses_a_broker(v) else []) for label, v in VARIANTS.items()]
)
async def test_each_submission_is_judged_right(label: str) -> None:
    variant = VARIANTS[label]
    got = await _judge(variant)
    assert_judged_right(label, variant.fails, variant.says, got)


LAB04_Q1_MISTAKES = (
    "04 mistake: a client that acks on receipt (held-out uma_noack; only Q1 loses points)",
    "04 mistake: a consumer at QoS 0",
)
"""Q1 mistakes whose Q2-Q4 code is right. uma_noack (no manual_ack) lost 3 of Q4's 6 points although its run_consumer
acks after apply_once; QOS = 0 lost Q4's "acknowledged after charging" check, its loop subscribing with qos=QOS."""


@pytest.mark.broker
@pytest.mark.parametrize("label", LAB04_Q1_MISTAKES)
async def test_a_lab04_q1_mistake_loses_no_point_in_q2_to_q4(label: str) -> None:
    """Q4's checks run the learner's loop with the course's Q1 answer (its client and its QOS): one mistake, one question."""
    variant = VARIANTS[label]
    ns = submission(variant.lab, *variant.edits)
    later = [c for c in load_checks(variant.lab) if c.question != "q1"]
    got = {c.name: await run_check(c, ns) for c in later}
    assert {name: r.message for name, r in got.items() if not r.passed} == {}
    assert sum(r.points for r in got.values()) == sum(c.points for c in later)


def test_every_lab_has_six_submissions_with_alternatives_and_mistakes() -> None:
    per_lab = Counter(v.lab for v in VARIANTS.values())
    assert set(per_lab) == {"00_warmup", "02_resilient_client", "04_reliable_consumer"}
    assert all(n >= 6 for n in per_lab.values()), per_lab
    for lab in per_lab:
        kinds = {v.fails is None for v in VARIANTS.values() if v.lab == lab}
        assert kinds == {True, False}, f"{lab} needs correct alternatives and mistakes"


def test_the_classic_mistakes_are_among_them() -> None:
    for label in (
        "00 mistake: a mean for a median",
        "02 mistake: a breaker that closes on a straggler",
        "04 mistake: a consumer at QoS 0",
        "04 mistake: a dedupe on the order id",
    ):
        assert VARIANTS[label].fails, label


async def _every_check(variant: Variant) -> dict[str, CheckResult]:
    """Every check of the variant's lab, all questions, hidden ones included: what a whole submission is graded on."""
    async with _kernel(variant) as ns:
        return {c.name: await run_check(c, ns) for c in load_checks(variant.lab)}


def _lost(got: dict[str, CheckResult]) -> dict[str, str]:
    return {name: r.message for name, r in got.items() if not r.passed}


@pytest.mark.broker
async def test_a_lab00_q1_mistake_loses_no_point_in_q2_or_q3() -> None:
    """No "world" default: GET / answers 500, so the notebook's p50_ms is nan. Q3's code is right: only Q1 loses points
    (held-out eli_nodefault lost a Q3 point to "p50_ms should be a positive number of ms, got nan")."""
    variant = LAB00["00 mistake: no default name (only Q1 loses points)"]
    got = await _every_check(variant)
    assert {got[name].question for name in _lost(got)} == {"q1"}, _lost(got)
    plausible = got["notebook_p50_is_plausible"]
    assert "HTTP 500" in plausible.message, plausible.message
    assert "Q1" in plausible.message, plausible.message


async def test_lab02_retries_inside_the_breaker_fail_that_check_and_nothing_else() -> None:
    """breaker.call(lambda: with_retries(...)) passed all of Q4 (held-out pia_retryinside): now one visible check fails."""
    got = await _every_check(LAB02["02 mistake: retries inside the breaker"])
    assert set(_lost(got)) == {"every_attempt_goes_through_the_breaker"}, _lost(got)


LAB02_EARLIER_MISTAKES = (
    "02 mistake: a 4xx raised as ServiceError (only Q1 loses points)",
    "02 mistake: one retry too many (only Q2 loses points)",
)
"""Mistakes of Q1 or Q2 whose get() is right. Q4 ran the learner's fetch and with_retries, so each cost points twice
(the 4xx one failed Q4's 4xx check, the off-by-one its retry budget); Q4 now runs get() with the course's parts."""


@pytest.mark.parametrize("label", LAB02_EARLIER_MISTAKES)
async def test_lab02_a_q1_or_q2_mistake_loses_no_point_in_q4(label: str) -> None:
    variant = LAB02[label]
    got = await _every_check(variant)
    assert {got[name].question for name in _lost(got)} == {variant.question}, _lost(got)
    q4 = [r for r in got.values() if r.question == "q4"]
    assert all(r.passed for r in q4)
    assert sum(r.points for r in q4) == sum(c.points for c in load_checks(variant.lab).of("q4"))


# --------------------------------------------------------------------------- lab 07 (a block of its own)

LAB07 = "07_image_pipeline"
SEP = "\n\x00 next Markdown cell \x00\n"
"""Joins the Markdown cells so that a Markdown edit, like a code edit, must find its text exactly once."""


@dataclass(frozen=True)
class MarkdownVariant(Variant):
    """A lab 07 answer: code edits, and edits of the Markdown the grader gives the checks (the Q1 diagram, an answer)."""

    markdown: tuple[Edit, ...] = ()


Q1_DIAGRAM = """flowchart LR
    user([User]) -->|HTTP POST /images| upload[Upload]
    upload -->|HTTP PUT original| storage[(Storage)]
    upload -.->|MQTT image.uploaded| broker((MQTT broker))
    broker -.->|MQTT image.uploaded| processor[AI Image Processor]
    processor -->|HTTP GET original, PUT renditions| storage
    processor -.->|MQTT job.done / job.failed| broker
    broker -.->|MQTT job.done / job.failed| notification[Notification]
    notification -->|HTTP push: your image is ready| user
"""
OTHER_WORDS = """flowchart LR
    client([Browser]) -->|POST /images over HTTPS| up[Upload service]
    up -->|HTTP PUT originals| s3[(S3 bucket)]
    up -.->|MQTT image.uploaded| ai[AI worker]
    ai -->|HTTP GET and PUT| s3
    ai -.->|MQTT job.done| mail[Email notifier]
    mail -->|HTTP push| client
"""
Q5_ANSWER_END = "`SeenIds` file, so a second `job.done` would notify nobody.\n"
LATER_DIAGRAM = "\n```mermaid\nflowchart LR\n    worker[Worker] -.->|MQTT job.done| inbox[Inbox]\n```\n"
STORE_RESULTS = """    results = {}
    for rendition in renditions:
        await storage.put(result_key(job_id, rendition.name), rendition.data, rendition.content_type)
        results[rendition.name] = result_key(job_id, rendition.name)
"""
DONE_PUBLISH = (
    '    await publish(client, topics.done, make_event(JOB_DONE, done, source="/processor", id=done_event_id(job_id)))\n'
)
DONE_MARK = '    await storage.put(done_marker(job_id), b\'{"state": "done"}\', "application/json")\n'
FETCH = '        data, _, _ = await storage.get(job["original"]["key"])\n'
NOTIFIER_DECODE = "            try:\n                event = decode(message.payload)\n            except InvalidEvent:\n"
NOTIFIER_ACK = '                notified.add(event.data["job_id"])\n            ack(client, message)'
QUEUE = "        await jobs.queue(job, topics.uploaded, event)  # the job and its event in one transaction, published after it\n"
PUBLISH_DIRECTLY = "        await publish(mqtt, topics.uploaded, event, qos=1)\n"
"""The lab's first version: the event published straight after storing (a dual write), the job stored at the 202."""

LAB07_VARIANTS: dict[str, MarkdownVariant] = {
    "07 correct: the diagram without a broker node, in other words": MarkdownVariant(
        LAB07, "q1", (), markdown=((Q1_DIAGRAM, OTHER_WORDS),)
    ),
    "07 correct: a second flowchart in a later answer": MarkdownVariant(
        LAB07, "q1", (), markdown=((Q5_ANSWER_END, Q5_ANSWER_END + LATER_DIAGRAM),)
    ),
    "07 correct: the renditions stored at once with asyncio.gather": MarkdownVariant(
        LAB07,
        "q3",
        (
            (
                STORE_RESULTS,
                "    results = {r.name: result_key(job_id, r.name) for r in renditions}\n"
                "    await asyncio.gather(*(storage.put(results[r.name], r.data, r.content_type) for r in renditions))\n",
            ),
        ),
    ),
    "07 mistake: a dotted arrow that contradicts a solid one": MarkdownVariant(
        LAB07,
        "q1",
        (),
        "design_holds",
        "Upload -> Storage is drawn both sync (HTTP) and async (MQTT)",
        markdown=(
            (
                "    upload -->|HTTP PUT original| storage[(Storage)]\n",
                "    upload -->|HTTP PUT original| storage[(Storage)]\n    upload -.->|MQTT original| storage\n",
            ),
        ),
    ),
    "07 mistake: every call drawn, and the answers too (held-out)": MarkdownVariant(
        LAB07,
        "q1",
        (),
        "design_holds",
        "Upload -> User: this is the answer to User's call (HTTP 202); draw the call only",
        markdown=(
            (
                "flowchart LR\n    user([User]) -->|HTTP POST /images| upload[Upload]\n",
                "flowchart LR\n    user([User]) -->|HTTP POST /images| upload[Upload]\n    upload -->|HTTP 202 Accepted| user\n",
            ),
            (
                "    upload -->|HTTP PUT original| storage[(Storage)]\n",
                "    upload -->|HTTP PUT original| storage[(Storage)]\n    storage -->|HTTP 201| upload\n",
            ),
        ),
    ),
    "07 mistake: one solid arrow labelled MQTT (only the notation's point)": MarkdownVariant(
        LAB07,
        "q1",
        (),
        "marks_every_arrow",
        "a solid arrow says sync, the label says MQTT",
        markdown=(
            (
                "    processor -.->|MQTT job.done / job.failed| broker\n",
                "    processor -->|MQTT job.done / job.failed| broker\n",
            ),
        ),
    ),
    "07 mistake: an upload that calls the processor, drawn dotted": MarkdownVariant(
        LAB07,
        "q1",
        (),
        "design_holds",
        "Upload -> AI Image Processor is drawn sync: the upload would wait for processing",
        markdown=(("upload -.->|MQTT image.uploaded| broker", "upload -.->|HTTP POST /process| processor"),),
    ),
    "07 mistake: the upload publishes itself instead of queueing through the outbox": MarkdownVariant(
        LAB07, "q2", ((QUEUE, PUBLISH_DIRECTLY),), "queues_through_the_outbox", "dual write"
    ),
    "07 mistake: the done marker before job.done": MarkdownVariant(
        LAB07, "q3", ((DONE_PUBLISH + DONE_MARK, DONE_MARK + DONE_PUBLISH),), "marker_written_last", "before job.done"
    ),
    "07 mistake: no done marker when the image failed": MarkdownVariant(
        LAB07,
        "q3",
        (('        await storage.put(done_marker(job_id), b\'{"state": "failed"}\', "application/json")\n', ""),),
        "failure_ends_failed_with_a_dead_letter",
        "failed again",
    ),
    "07 mistake: a failing fetch crashes the worker": MarkdownVariant(
        LAB07,
        "q3",
        (("    try:\n" + FETCH, FETCH.removeprefix("    ") + "    try:\n"),),
        "failure_ends_failed_with_a_dead_letter",
        "crashed",
    ),
    "07 mistake: the notifier acks before notifying": MarkdownVariant(
        LAB07,
        "q4",
        (
            (NOTIFIER_DECODE, "            ack(client, message)  # before the work\n" + NOTIFIER_DECODE),
            (NOTIFIER_ACK, NOTIFIER_ACK.removesuffix("\n            ack(client, message)")),
        ),
        "acks_after_notifying",
        "ack before notifying",
    ),
}


def lab07_markdown(variant: MarkdownVariant) -> list[str]:
    """The solution's Markdown cells with the variant's edits, as the grader gives them to the checks."""
    joined = SEP.join(markdown_cells(LAB07))
    return edited(joined, *variant.markdown, what="the solution's Markdown").split(SEP)


@pytest.mark.broker
@pytest.mark.parametrize("label", list(LAB07_VARIANTS))
async def test_each_lab07_submission_is_judged_right(label: str) -> None:
    variant = LAB07_VARIANTS[label]
    ns, markdown = submission(variant.lab, *variant.edits), lab07_markdown(variant)
    got = {c.name: await run_check(c, ns, markdown=markdown) for c in load_checks(LAB07).of(variant.question)}
    assert_judged_right(label, variant.fails, variant.says, got)


def test_lab07_has_six_submissions_with_alternatives_and_mistakes() -> None:
    assert len(LAB07_VARIANTS) >= 6
    assert {v.fails is None for v in LAB07_VARIANTS.values()} == {True, False}
    for label, variant in LAB07_VARIANTS.items():
        assert submission(variant.lab, *variant.edits), label  # each still an edit of today's solution
        assert lab07_markdown(variant) != markdown_cells(LAB07) or variant.edits, f"{label} changes nothing"


# --------------------------------------------------------------------------- drift between a solution and its tests

CHECK_TESTS = ("test_lab00_checks", "test_lab04_checks", "test_lab06_checks", "test_lab07_checks")


@pytest.mark.parametrize("module", CHECK_TESTS)
def test_every_mistake_of_the_check_tests_is_still_an_edit_of_the_solution(module: str) -> None:
    """Without a broker: each classic mistake's edits still find their text in today's solution notebook."""
    tests = importlib.import_module(module)
    assert tests.EDITS, f"{module} has no mistakes"
    source = solution_source(tests.LAB)
    for name, edits in tests.EDITS.items():
        assert edited(source, *edits) != source, f"{module}: {name!r} changes nothing"
        assert submission(tests.LAB, *edits), name  # and the edited code still runs


def test_every_submission_here_is_still_an_edit_of_the_solution() -> None:
    for label, variant in VARIANTS.items():
        assert submission(variant.lab, *variant.edits), label


def test_an_edit_the_solution_does_not_have_fails_loudly() -> None:
    with pytest.raises(AssertionError, match="occurs 0 times"):
        submission("04_reliable_consumer", ("QOS = 7\n", "QOS = 0\n"))
    with pytest.raises(AssertionError, match="occurs 2 times"):
        edited("ack(); ack()", ("ack()", "pass"))


def test_a_function_the_solution_does_not_define_cannot_be_swapped_in() -> None:
    ns = submission("04_reliable_consumer")
    with pytest.raises(AssertionError, match="no longer defines"):
        replaced(ns, run_consumerr=lambda: None)
    assert replaced(ns, apply_once=len)["apply_once"] is len


def test_a_lesson_cell_that_is_gone_fails_loudly() -> None:
    from lesson04_fixes import NOTEBOOK

    assert set(notebook_definitions(NOTEBOOK, ["partition_for"])) >= {"partition_for", "zlib"}
    with pytest.raises(AssertionError, match="changed"):
        notebook_definitions(NOTEBOOK, ["partition_for", "no_such_fix"])


# --------------------------------------------------------------------------- lab 06 (its own block: labs merge apart)

LOCATION = 'headers={"Location": f"/jobs/{job.job_id}", "Retry-After": str(jobs.retry_after_s)}'
START06 = "        await jobs.start(job)\n"
CREATE06 = "        job = jobs.create(task, key)\n"
DONE06 = '        job.state, job.done = RUNNING, max(job.done, data["done"])'

LAB06 = {
    "06 correct: an absolute Location": Variant(
        "06_hybrid_job", "q1", ((LOCATION, LOCATION.replace('f"/jobs/{job.job_id}"', "str(request.url.with_path(job.path))")),)
    ),
    "06 correct: a 503 problem of its own when queuing fails": Variant(
        "06_hybrid_job",
        "q1",
        (
            (
                START06,
                "        try:\n    " + START06 + "        except Exception as exc:  # noqa: BLE001\n"
                '            return problem(503, "Not queued", str(exc), f"{PROBLEM_BASE}not-queued")\n',
            ),
        ),
    ),
    "06 correct: the count moved forward with an if": Variant(
        "06_hybrid_job",
        "q2",
        ((DONE06, '        job.state = RUNNING\n        if data["done"] > job.done:\n            job.done = data["done"]'),),
    ),
    "06 mistake: 200 instead of 202 in Q1 (only Q1 loses points)": Variant(
        "06_hybrid_job",
        "q1",
        (("json_response(job.accepted, status=202,", "json_response(job.accepted, status=200,"),),
        "answers_202_with_location_and_retry_after",
        "which is 202 Accepted",
    ),
    "06 mistake: a keyed retry that starts its job again (held-out cy_restart)": Variant(
        "06_hybrid_job",
        "q1",
        ((CREATE06 + START06, CREATE06 + "    await jobs.start(job)  # also for a retry: 'start() only relays the outbox'\n"),),
        "a_retry_with_the_same_key_starts_nothing",
        "starts nothing",
    ),
    "06 mistake: a count that goes backwards": Variant(
        "06_hybrid_job",
        "q2",
        ((DONE06, '        job.state, job.done = RUNNING, data["done"]'),),
        "a_repeated_event_counts_once",
        "progress never goes backwards",
    ),
    "06 mistake: a kickoff that waits until the job runs": Variant(
        "06_hybrid_job",
        "q1",
        ((START06, START06 + "        await until(lambda: job.state != ACCEPTED, 10)\n"),),
        "kickoff_never_waits_for_the_workers",
        "the kickoff waits for them",
    ),
    "06 mistake: a 202 although jobs.start raised": Variant(
        "06_hybrid_job",
        "q1",
        (
            (
                START06,
                "        try:\n    " + START06 + "        except Exception:\n            pass  # 'the outbox sends it later'\n",
            ),
        ),
        "no_202_when_queuing_fails",
        "a promise that the work will run",
    ),
    "06 mistake: the first step not reported": Variant(
        "06_hybrid_job",
        "q2",
        (('    if event.type == STEP_STARTED:\n        job.state, job.step = RUNNING, data["step"]\n    elif', "    if"),),
        "the_first_step_makes_the_job_running",
        "a step started means 'running'",
    ),
    "06 mistake: job.succeeded that leaves job.done as it was (held-out; only Q2 loses points)": Variant(
        "06_hybrid_job",
        "q2",
        (
            (
                'job.state, job.done, job.result = SUCCEEDED, job.total, data["result"]',
                'job.state, job.result = SUCCEEDED, data["result"]',
            ),
        ),
        "success_before_the_last_step_done_counts_every_step",
        "a succeeded job has every step done",
    ),
    "06 mistake: Retry-After '1s'": Variant(
        "06_hybrid_job",
        "q1",
        ((LOCATION, LOCATION.replace("str(jobs.retry_after_s)", 'f"{jobs.retry_after_s}s"')),),
        "answers_202_with_location_and_retry_after",
        "not a whole number of seconds",
    ),
    "06 mistake: a cancel answered 204": Variant(
        "06_hybrid_job",
        "q4",
        (
            (
                "    await jobs.cancel(job)\n    return web.json_response(job.to_json())",
                "    await jobs.cancel(job)\n    return web.Response(status=204)",
            ),
        ),
        "cancel_stops_the_running_step",
        "expected 200 with its status",
    ),
}


@pytest.mark.broker
@pytest.mark.parametrize("label", list(LAB06))
async def test_each_lab06_submission_is_judged_right(label: str) -> None:
    variant = LAB06[label]
    got = await _judge(variant)
    assert_judged_right(label, variant.fails, variant.says, got)


@pytest.mark.broker
async def test_a_lab06_q1_mistake_loses_no_point_in_q2_to_q4() -> None:
    """A kickoff answering 200 cost 11 of the 15 points of Q2-Q4, whose code was right: now they use the course's kickoff."""
    variant = LAB06["06 mistake: 200 instead of 202 in Q1 (only Q1 loses points)"]
    ns = submission(variant.lab, *variant.edits)
    later = [c for c in load_checks(variant.lab) if c.question != "q1"]
    got = {c.name: await run_check(c, ns) for c in later}
    assert {name: r.message for name, r in got.items() if not r.passed} == {}
    assert sum(r.points for r in got.values()) == sum(c.points for c in later) == 17  # 16 before the out-of-order success check


@pytest.mark.broker
async def test_a_keyed_retry_that_starts_its_job_again_fails_that_check_only() -> None:
    """Held-out cy_restart got 9/9 in Q1: nothing saw the retry call jobs.start again. Now one visible check does, and only it."""
    variant = LAB06["06 mistake: a keyed retry that starts its job again (held-out cy_restart)"]
    ns = submission(variant.lab, *variant.edits)
    got = {c.name: await run_check(c, ns) for c in load_checks(variant.lab)}
    assert {name for name, r in got.items() if not r.passed} == {"a_retry_with_the_same_key_starts_nothing"}, {
        name: r.message for name, r in got.items() if not r.passed
    }


@pytest.mark.broker
async def test_lab06_a_success_that_leaves_steps_undone_loses_q2_points_only() -> None:
    """It passed every check: none delivered job.succeeded before the last job.step_done. Now one Q2 check does, only it."""
    variant = LAB06["06 mistake: job.succeeded that leaves job.done as it was (held-out; only Q2 loses points)"]
    ns = submission(variant.lab, *variant.edits)
    got = {c.name: await run_check(c, ns) for c in load_checks(variant.lab)}
    lost = {name: r.message for name, r in got.items() if not r.passed}
    assert set(lost) == {"success_before_the_last_step_done_counts_every_step"}, lost
    assert {c.question for c in load_checks(variant.lab) if c.name in lost} == {"q2"}


def test_lab06_has_six_submissions_with_alternatives_and_mistakes() -> None:
    assert len(LAB06) >= 6
    assert {v.fails is None for v in LAB06.values()} == {True, False}
    for label, variant in LAB06.items():
        assert submission(variant.lab, *variant.edits), label  # still an edit of today's solution
