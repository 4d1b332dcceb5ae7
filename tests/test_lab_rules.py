"""Every rule labs 00, 02 and 04 state is judged by a check the learner sees.

``await check("qN")`` in the notebook runs only the visible checks; the grader adds the
hidden ones. A rule judged only by a hidden check lets a learner see "all passed" and
lose points at grading. So: each rule the lab's text states (quoted below, as the learner
reads it in labs/) names the visible check that judges it, and every hidden check is a
variant of such a rule (other inputs for the same rule), listed under it. A hidden check
that judges something the text does not state would go in ``UNSTATED`` with the reason;
there is none today.

This table is the rule audit of issue 21: add a rule here when a lab's text gains one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import nbformat
import pytest

from helpers.grading.checks import Check, load_checks
from helpers.grading.labgen import LABS


@dataclass(frozen=True)
class Rule:
    """One rule of a lab: where its text states it, and the checks that judge it."""

    question: str
    stated: str
    """Words of the lab as shipped (Markdown, given code or # HINT lines) that state the rule."""
    visible: str
    """The visible check of ``question`` that fails when the rule is broken."""
    hidden: tuple[str, ...] = ()
    """Hidden checks that judge the same rule with other inputs."""


RULES: dict[str, dict[str, Rule]] = {
    "00_warmup": {
        "the answer is JSON {hello: NAME}": Rule(
            "q1", 'answers **JSON** `{"hello": NAME}`', "service_greets_by_name", ("handler_works_as_a_new_service",)
        ),
        "world without ?name=": Rule("q1", '`"world"` when there is none', "service_greets_the_world"),
        "a service called hello, kept in svc": Rule(
            "q1",
            'start it as a service called `"hello"` with `start_service` and keep what it returns in `svc`',
            "service_greets_by_name",
        ),
        "subscribe before publishing": Rule(
            "q2", "a subscriber only gets messages published *after* it subscribed", "round_trip_returns_the_text"
        ),
        "the topic and text given": Rule("q2", "subscribe to `topic`, publish `text` on it", "round_trip_twice"),
        "published through the broker at QoS 1": Rule(
            "q2", "with **QoS 1**", "publishes_at_qos_1", ("message_crosses_the_broker",)
        ),
        "UTF-8 both ways": Rule("q2", "as **UTF-8** bytes", "unicode_text_survives"),
        "n requests, one after another": Rule(
            "q3", "send `n` GET requests to `url`, one after another", "sends_n_requests", ("respects_n",)
        ),
        "the median, not the mean": Rule("q3", "return the median latency (p50)", "median_not_mean", ("respects_n",)),
        "in milliseconds": Rule("q3", "**in milliseconds**", "p50_in_milliseconds"),
        "p50_ms measured on the hello service": Rule(
            "q3", "measure the hello service with 20 requests and keep the result in `p50_ms`", "notebook_p50_is_plausible"
        ),
    },
    "02_resilient_client": {
        "fetch returns the JSON": Rule("q1", "GET `url` and return its JSON", "fetch_returns_json"),
        "the timeout bounds the whole call": Rule(
            "q1",
            "it must raise `asyncio.TimeoutError`",
            "fetch_gives_up_at_its_timeout",
            ("fetch_uses_the_timeout_it_is_given",),
        ),
        "a 5xx raises ServiceError": Rule("q1", "raise `ServiceError(status, url)`", "fetch_raises_service_error_on_5xx"),
        "a 4xx raises aiohttp's error": Rule(
            "q1", "For a 4xx, `response.raise_for_status()` raises aiohttp's own error", "fetch_raises_a_4xx_as_a_client_error"
        ),
        "retry the RETRY_ON failures": Rule(
            "q2", "retry only the failures in `RETRY_ON`", "retries_until_success", ("retries_timeouts",)
        ),
        "a refused connection is retried": Rule("q2", "a refused or broken connection", "retries_until_success"),
        "anything else straight to the caller": Rule(
            "q2", "goes straight to the caller after one call", "does_not_retry_what_cannot_pass"
        ),
        "a 4xx is not retried": Rule("q2", "a bad request will not get better by retrying", "does_not_retry_a_4xx"),
        "the retry budget": Rule("q2", "make at most `attempts` calls (the *retry budget*)", "stops_at_the_retry_budget"),
        "full jitter under a capped exponential": Rule(
            "q2", "wait between attempts with **full jitter**", "waits_are_capped_exponential_with_full_jitter"
        ),
        "wait asynchronously": Rule("q2", "so never `time.sleep`", "waits_without_blocking_the_event_loop"),
        "the overall deadline": Rule("q2", "never take longer than `deadline_s` in total", "respects_the_deadline"),
        "open after failure_threshold in a row": Rule(
            "q3", "When the count reaches `failure_threshold`, go **open**", "opens_after_threshold_failures"
        ),
        "a success resets the count": Rule("q3", "a success resets it", "failures_must_be_consecutive"),
        "open refuses without calling": Rule(
            "q3", "raise `CircuitOpenError` at once, **without calling** `fn`", "refuses_while_open"
        ),
        "a successful trial closes": Rule("q3", "Success: **closed**", "half_open_trial_success_closes"),
        "a failed trial reopens with a fresh timer": Rule(
            "q3", "Failure: **open** again, with a fresh timer", "failed_trial_reopens"
        ),
        "one trial; others refused while it runs": Rule("q3", "refuse others while it runs", "one_trial_at_a_time"),
        "other exceptions do not count": Rule(
            "q3", "Any other exception (a bug, a 4xx) passes through and does not count", "other_errors_do_not_count"
        ),
        "a straggler gives no verdict": Rule(
            "q3", "its late success must not close the breaker", "a_straggler_does_not_close_the_breaker"
        ),
        "every attempt goes through the breaker": Rule(
            "q4", "every **attempt** goes through the breaker", "every_attempt_goes_through_the_breaker"
        ),
        "retries outside the breaker": Rule(
            "q4", "Order matters: retries *outside* the breaker", "every_attempt_goes_through_the_breaker"
        ),
        "each attempt uses the client's timeout": Rule(
            "q4", "every breaker call is one `fetch` with the client's timeout", "client_uses_its_timeout"
        ),
        "the client's retry budget": Rule("q4", "with the client's budget and deadline", "client_stays_within_the_retry_budget"),
        "the client's deadline": Rule("q4", "with the client's budget and deadline", "client_respects_the_deadline"),
        "an open breaker ends get() at once": Rule(
            "q4", "an open breaker ends `get()` at once", "client_stops_calling_while_open"
        ),
        "a gone service opens the breaker": Rule(
            "q4", "refused or broken: the service's process is gone", "client_opens_when_the_service_is_gone"
        ),
    },
    "04_reliable_consumer": {
        "a persistent session": Rule(
            "q1", "the same client id every time, `clean_session=False`", "orders_wait_for_an_offline_consumer"
        ),
        "the client id is the consumer's name": Rule(
            "q1", "with `name` as its client id", "orders_wait_for_an_offline_consumer", ("each_name_has_its_own_session",)
        ),
        "QoS 1": Rule("q1", "a delivery is capped by the subscription's QoS", "orders_wait_for_an_offline_consumer"),
        "no ack on receipt": Rule("q1", "the client must not acknowledge on receipt", "acknowledges_only_when_told"),
        "each event charged once, True or False": Rule(
            "q2", "return `True` if it charged, `False` if it skipped", "charges_each_event_once"
        ),
        "the ids survive a restart": Rule("q2", "so a *restarted* consumer still knows them", "remembers_after_a_restart"),
        "one store per workdir": Rule("q2", "another folder is another consumer", "stores_belong_to_their_folder"),
        "dedupe on the event id": Rule("q2", "Dedupe on the **event id** (`event.id`)", "dedupes_on_event_id"),
        "record after the charge": Rule("q2", "Record the id only **after** the charge succeeded", "records_only_after_charging"),
        "dead-letter with the reason, return None": Rule(
            "q3",
            "publish `dead_letter_payload(original_topic, payload, reason)` (QoS 1) to `dead_letter_topic` and return `None`",
            "malformed_goes_to_dead_letters",
            ("incomplete_and_binary_are_dead_lettered",),
        ),
        "the topic str()'d for JSON": Rule("q3", "The original topic is `str(message.topic)`", "malformed_goes_to_dead_letters"),
        "a valid event is returned": Rule("q3", "return the decoded event", "valid_event_passes_through"),
        "charge every order while running": Rule("q4", "which runs until it is cancelled", "charges_orders_while_running"),
        "ack only after the work, in arrival order": Rule(
            "q4", "and only then `ack(client, message)`", "acks_each_order_after_charging_it", ("killed_mid_stream",)
        ),
        "survive a kill and a restart": Rule(
            "q4", "let the checks kill and restart your consumer", "survives_a_restart", ("killed_mid_stream",)
        ),
        "dead letters, then carry on": Rule("q4", 'dead letters go to `f"{topic}/dead-letter"`', "dead_letters_and_keeps_going"),
    },
}

# --------------------------------------------------------------------------- lab 06 (its own block: labs merge apart)

RULES["06_hybrid_job"] = {
    "a bad body: 400 problem+json at once, no job": Rule(
        "q1", "A body that is not a valid task is answered at once with `400` problem+json", "rejects_a_bad_task_at_once"
    ),
    "the 400's type under PROBLEM_BASE": Rule("q1", "a `type` URI under `PROBLEM_BASE`", "rejects_a_bad_task_at_once"),
    "a retry with the key: the same job, nothing started": Rule(
        "q1",
        "A job with the same task means the client retried: answer that job's 202 again and start nothing",
        "a_retry_with_the_same_key_starts_nothing",
    ),
    "a retry with the key: the same job, the work run once": Rule(
        "q1",
        "A job with the same task means the client retried: answer that job's 202 again",
        "a_retry_with_the_same_key_gets_the_same_job",
    ),
    "a key reused for another task: 422": Rule(
        "q1", "A job with another task means the client reused a key by mistake: `422`", "a_key_reused_for_another_task_is_422"
    ),
    "otherwise a new job, started": Rule(
        "q1",
        "Otherwise create the job and start it.",
        "a_retry_with_the_same_key_gets_the_same_job",
        ("different_requests_make_different_jobs",),
    ),
    "no 202 when queuing fails": Rule(
        "q1",
        "If `jobs.create` or `jobs.start` raises, the work is not queued: let the error through",
        "no_202_when_queuing_fails",
        ("no_202_when_the_store_refuses",),
    ),
    "202 with job.accepted, Location and Retry-After": Rule(
        "q1",
        "Answer `202` with the body `job.accepted`, `Location: /jobs/{job_id}` and `Retry-After`",
        "answers_202_with_location_and_retry_after",
    ),
    "never wait for the work": Rule("q1", "Never wait for the work.", "kickoff_answers_before_the_work"),
    "never wait for the workers, slow or down": Rule("q1", "Never wait for the work.", "kickoff_never_waits_for_the_workers"),
    "a step started: running, at that step": Rule(
        "q2", "a worker began `step`: the job is `running`, at that step", "the_first_step_makes_the_job_running"
    ),
    "success: succeeded, every step done, the result kept": Rule(
        "q2", "the last step finished: `succeeded`, every step done, keep the result", "follows_a_job_to_success"
    ),
    "success before the last step_done: still every step done": Rule(
        "q2",
        "the last step finished: `succeeded`, every step done",
        "success_before_the_last_step_done_counts_every_step",
    ),
    "a failure: failed, with the step and the reason": Rule(
        "q2", "a step failed and the job stops there: `failed`, with the step and the reason", "a_failed_step_ends_the_job"
    ),
    "a repeated event counts once": Rule(
        "q2", "delivery is at least once: the same event can arrive twice", "a_repeated_event_counts_once"
    ),
    "out of order: progress never goes backwards": Rule(
        "q2", "events from different workers can arrive out of order", "a_repeated_event_counts_once"
    ),
    "an ended job stays as it ended": Rule(
        "q2",
        "a job that ended (or that the user cancelled) stays as it ended, whatever arrives later",
        "a_finished_job_never_moves",
    ),
    "an unknown job: 404": Rule("q3", "An unknown id: `404` problem+json.", "unknown_job_is_404_problem"),
    "succeeded: 303 to the result, not 302": Rule(
        "q3",
        "`303 See Other` with `Location: job.result_path`",
        "a_finished_job_answers_303_to_its_result",
        ("a_poll_and_the_stream_see_the_same_states",),
    ),
    "failed: 200 as problem+json": Rule(
        "q3",
        "A job that **failed**: `200` with the status document as `application/problem+json`",
        "a_failed_job_is_problem_json",
    ),
    "Retry-After while not final": Rule(
        "q3",
        "`200` with the status document, and `Retry-After` (`jobs.retry_after_s`) while the job is not final",
        "an_unfinished_job_reports_its_state",
        ("a_poll_and_the_stream_see_the_same_states",),
    ),
    "a cancelled job is final: no Retry-After": Rule(
        "q3", "A cancelled job is final: there is nothing to wait for", "a_cancelled_job_has_no_retry_after"
    ),
    "cancel an unknown job: 404": Rule("q4", "an unknown id: `404` problem+json", "cancel_of_an_unknown_job_is_404"),
    "cancel an ended job: 409, left as it ended": Rule(
        "q4",
        "a job that already ended (`job.final`): `409` problem+json, and the job stays as it ended",
        "cancel_of_a_finished_job_is_409",
    ),
    "a cancel reaches the workers": Rule(
        "q4",
        "so the worker running its step stops and later steps never start",
        "cancel_stops_the_running_step",
    ),
    "the cancel answers 200 with the status": Rule(
        "q4", "answer `200` with the job's status document", "cancel_stops_the_running_step"
    ),
}

# --------------------------------------------------------------------------- lab 07 (a block of its own)

RULES["07_image_pipeline"] = {
    "one node per part": Rule("q1", "Draw one node for each part", "draws_every_part"),
    "the Q1 answer cell's diagram is read": Rule("q1", "reads the diagram in that answer cell", "draws_every_part"),
    "every arrow marked sync or async": Rule("q1", "Every arrow carries one of the two markings", "marks_every_arrow"),
    "line style and label word agree": Rule("q1", "An arrow whose line style and label word disagree", "marks_every_arrow"),
    "only what comes before the 202 is sync": Rule("q1", "Only what must happen before the `202` is sync", "design_holds"),
    "calls and messages, not answers": Rule("q1", "Draw calls and\n>   messages, not answers.", "design_holds"),
    "a marking mistake costs the marking check only": Rule(
        "q1", "the design and that comparison read such an arrow by its label word", "design_holds"
    ),
    "draw what you build": Rule(
        "q1", "runs it and compares your arrows with the calls it really makes", "diagram_matches_the_running_code"
    ),
    "202 with lesson 06's body and Location": Rule(
        "q2", "`202 Accepted` with lesson 06's body", "answers_202_with_a_status_location"
    ),
    "only what must happen before the user hears back": Rule(
        "q2", "Your handler does only what must happen before the user hears back", "answers_before_processing"
    ),
    "the format from the bytes": Rule(
        "q2",
        "reads the format from the bytes (never from the file name or the `Content-Type` header)",
        "refuses_what_is_not_an_image",
        ("trusts_the_bytes_not_the_label",),
    ),
    "hostile uploads refused as problem+json": Rule(
        "q2", "Answer it with `problem_for(exc)`", "refuses_hostile_uploads", ("refuses_too_large_and_corrupt",)
    ),
    "a refusal leaves no trace": Rule(
        "q2", "A refused upload leaves no trace: nothing stored, nothing published.", "refuses_hostile_uploads"
    ),
    "a claim check, never the bytes": Rule("q2", "carrying a *claim check*, never the bytes", "publishes_a_claim_check"),
    "the job and its event through the outbox": Rule(
        "q2", "`jobs.queue` stores the job and its event in one SQLite transaction (the outbox)", "queues_through_the_outbox"
    ),
    "never a 202 for work that is not queued": Rule("q2", "never a 202 for work that is not queued", "queues_through_the_outbox"),
    "a failed upload frees its key for the retry": Rule(
        "q2", "frees the key, so the client's retry starts afresh", "queues_through_the_outbox"
    ),
    "a retry gets the same job": Rule(
        "q2",
        "must get the same job, with nothing stored or published twice",
        "repeated_idempotency_key_is_one_job",
        ("other_keys_are_other_jobs",),
    ),
    "a key belongs to one user and one request": Rule(
        "q2",
        "A key belongs to **one user** and to **one request**",
        "idempotency_is_per_user_with_a_fingerprint",
        ("other_keys_are_other_jobs",),
    ),
    "other bytes under a key: 422": Rule(
        "q2",
        "other bytes are a client bug, not a retry, and get `return key_reused(key)`",
        "idempotency_is_per_user_with_a_fingerprint",
    ),
    "fetch, process, store, announce": Rule(
        "q3", "Store each rendition under `result_key(job_id, rendition.name)`", "processes_an_image"
    ),
    "job.done's fixed event id": Rule("q3", "the event id `done_event_id(job_id)`", "processes_an_image"),
    "job.failed's fixed event id": Rule("q3", "id `failed_event_id(job_id)`", "failure_ends_failed_with_a_dead_letter"),
    "the marker first: a job done before is skipped": Rule(
        "q3",
        "If the job's **done marker** is in Storage",
        "same_event_twice_is_done_once",
        ("remembers_done_jobs_across_a_restart",),
    ),
    "the marker belongs to the job, not the event": Rule(
        "q3", "If the job's **done marker** is in Storage", "retried_upload_event_is_done_once"
    ),
    "the marker last": Rule("q3", "Write the done marker (any small JSON body", "marker_written_last"),
    "killed before the ack: delivered again, finished once": Rule(
        "q3",
        "If the worker dies before the ack, the broker delivers the image again; the marker makes sure it is finished once.",
        "marker_written_last",
    ),
    "CPU work in a thread": Rule("q3", "call it with `await asyncio.to_thread(...)`", "keeps_the_event_loop_free"),
    "ack last": Rule("q3", "and **then** `ack(client, message)`", "acks_after_storing"),
    "a failed fetch or transform ends failed": Rule(
        "q3", "If fetching or processing raises, the job ends as failed instead", "failure_ends_failed_with_a_dead_letter"
    ),
    "the marker on the failure path": Rule(
        "q3", "and write the marker too, so the user hears once", "failure_ends_failed_with_a_dead_letter"
    ),
    "a non-event is dead-lettered and acknowledged": Rule(
        "q3",
        "(A payload that is not an event goes to the dead-letter topic, and is acknowledged.)",
        "failure_ends_failed_with_a_dead_letter",
    ),
    "done or failed, one notification with its state": Rule(
        "q4", 'with the state `"done"` or `"failed"`', "notifies_each_user_once"
    ),
    "anything else is ignored": Rule("q4", "Anything else is acknowledged and ignored.", "notifies_each_user_once"),
    "a persistent session, the name, QoS 1": Rule(
        "q4",
        "a persistent session (`clean_session=False`, the client id `name`, every time)",
        "keeps_what_arrives_while_down",
    ),
    "the notified ids survive a restart": Rule(
        "q4",
        "Keep the notified job ids in a `SeenIds` file in `workdir`, so that a restarted notifier still knows them",
        "remembers_across_a_restart",
    ),
    "write, record, then ack": Rule("q4", "Write, record, then ack.", "acks_after_notifying"),
    "a burst: nobody waits for the processing": Rule("q5", "Does anyone wait for the processing?", "burst_of_uploads_stays_fast"),
    "a killed worker: processed again, heard once": Rule(
        "q5", "Is the image processed again? Does the user hear once?", "worker_killed_mid_image"
    ),
    "a notifier outage: nobody forgotten": Rule("q5", "Is anyone forgotten?", "notifier_outage_loses_nothing"),
}
"""Lab 07's rules. Q5's "in your words" answer states no rule: the lab says it is not graded (no check judges prose
fairly; the drills' checks judge the behavior it asks about)."""

UNSTATED: dict[str, dict[str, str]] = {lab: {} for lab in RULES}
"""Hidden checks of a rule the lab's text does not state: check name -> why it is fair to keep it hidden."""


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _lab_text(lab: str) -> str:
    """Everything the learner reads in the shipped lab: Markdown, the given code, the # HINT lines."""
    return _words("\n".join(cell.source for cell in nbformat.read(LABS / f"{lab}.ipynb", as_version=4).cells))


def _checks(lab: str) -> dict[str, Check]:
    return {check.name: check for check in load_checks(lab)}


@pytest.mark.parametrize("lab", sorted(RULES))
def test_every_stated_rule_is_judged_by_a_visible_check(lab: str) -> None:
    text, checks = _lab_text(lab), _checks(lab)
    for label, rule in RULES[lab].items():
        assert _words(rule.stated) in text, f"{lab}: the rule '{label}' is no longer stated as {rule.stated!r}"
        judge = checks.get(rule.visible)
        assert judge is not None, f"{lab}: the rule '{label}' names a check that does not exist: {rule.visible}"
        assert not judge.hidden, f"{lab}: the rule '{label}' is judged only by the hidden check {rule.visible}"
        assert judge.question == rule.question, f"{lab}: {rule.visible} is a check of {judge.question}, not {rule.question}"
        for name in rule.hidden:
            variant = checks.get(name)
            assert variant is not None, f"{lab}: {name} (listed under '{label}') is not a check"
            assert variant.hidden, f"{lab}: {name} (listed under '{label}') is not a hidden check"
            assert variant.question == rule.question, f"{lab}: {name} belongs to {variant.question}, '{label}' to {rule.question}"


@pytest.mark.parametrize("lab", sorted(RULES))
def test_every_hidden_check_varies_a_rule_a_visible_check_judges(lab: str) -> None:
    varied = {name for rule in RULES[lab].values() for name in rule.hidden}
    hidden = {check.name for check in load_checks(lab) if check.hidden}
    alone = hidden - varied - set(UNSTATED[lab])
    assert not alone, (
        f"{lab}: hidden checks {sorted(alone)} judge no rule a visible check judges: make the rule's check visible "
        "(or list the hidden check under its rule in RULES, or in UNSTATED with the reason)"
    )
    for name, why in UNSTATED[lab].items():
        assert name in hidden, f"{lab}: UNSTATED lists {name}, which is not a hidden check"
        assert why, f"{lab}: UNSTATED gives no reason for {name}"
