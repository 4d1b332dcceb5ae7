"""The capstone's job record: topics, event types, and the store behind ``GET /jobs/{id}``.

An upload becomes a *job*. The Upload service creates it (state ``accepted``) and then
never touches the image again: the AI Image Processor does the work and announces what
happened as events (``job.progress``, ``job.done``, ``job.failed``), and the Upload
service's own consumer applies those events to this store. So the status resource is
**eventually consistent**: right after the processor finished, ``GET /jobs/{id}`` may
still say ``running`` for a few milliseconds. Nothing is lost by that, and it is the
price of the Upload service never calling the processor.

The store is the course's async-job kit (:mod:`helpers.core.jobkit.store`), the same one
lesson 06's jobs service uses: one SQLite file in the Upload service's work folder, the
states of :class:`~helpers.core.jobkit.store.JobState` (``accepted``, ``running``,
``succeeded``, ``failed``), which only move forward, and the ``Idempotency-Key`` index
per user with a fingerprint of the uploaded bytes. A restart of the Upload service keeps
every job, and every key, answering.

Applying an event is idempotent and never goes backwards: a duplicate ``job.done``
(at-least-once delivery) changes nothing, and a late ``job.progress`` that arrives after
``job.done`` is ignored, whatever order the broker delivered them in.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helpers.core.jobkit import http as jobhttp
from helpers.core.jobkit import store as kit
from helpers.core.jobkit.store import FINAL, JobRecord, JobState
from helpers.core.messaging import Event
from helpers.core.timestamps import iso

IMAGE_UPLOADED = "image.uploaded"
"""The Upload service stored an original and asks for it to be processed (data: a claim check)."""
JOB_PROGRESS = "job.progress"
"""The processor finished one step of a job (data: ``job_id``, ``step``, ``done``, ``total``)."""
JOB_DONE = "job.done"
"""Every rendition of a job is stored (data: ``job_id``, ``user``, ``results`` {name: key}, ``caption``)."""
JOB_FAILED = "job.failed"
"""The processor gave up on a job (data: ``job_id``, ``user``, ``reason``)."""

ACCEPTED, RUNNING, SUCCEEDED, FAILED = JobState.ACCEPTED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED
STATES = (ACCEPTED, RUNNING, SUCCEEDED, FAILED)
"""The states an upload's job goes through (the kit's vocabulary; an upload cannot be cancelled)."""
DONE = SUCCEEDED
"""The processor's word for a finished run (:mod:`helpers.capstone.processor`) is the job's: ``succeeded``."""

CONSISTENCY_NOTE = "eventual: built from the processor's job events, so it may lag the processor by a moment"
DEADLINE_S = 600.0
"""An unfinished job is failed this many seconds after it was accepted, with the reason: never "running" forever."""
STORE_FILE = "jobs.sqlite3"
"""The Upload service's job store, in its work folder."""


@dataclass(frozen=True)
class Topics:
    """Every topic of one pipeline run, under one prefix (so runs on a shared broker never mix)."""

    prefix: str

    @classmethod
    def fresh(cls, base: str = "capstone") -> Topics:
        """Topics under ``base/<random id>``: a prefix no earlier run (or other test) used."""
        return cls(f"{base}/{uuid.uuid4().hex[:8]}")

    @property
    def uploaded(self) -> str:
        return f"{self.prefix}/images/uploaded"

    @property
    def progress(self) -> str:
        return f"{self.prefix}/jobs/progress"

    @property
    def done(self) -> str:
        return f"{self.prefix}/jobs/done"

    @property
    def failed(self) -> str:
        return f"{self.prefix}/jobs/failed"

    @property
    def jobs(self) -> str:
        """A filter for the three job topics (progress, done, failed)."""
        return f"{self.prefix}/jobs/+"

    @property
    def dead_letter(self) -> str:
        """Where the processor files the images it gave up on, with the reason."""
        return f"{self.prefix}/dead-letter/images"

    @property
    def everything(self) -> str:
        """A filter for every topic of the run (for recorders and debugging)."""
        return f"{self.prefix}/#"

    def client_id(self, role: str) -> str:
        """A fixed MQTT client id for ``role`` in this run: a restart with the same topics resumes its session."""
        return f"{role}-{self.prefix.replace('/', '-')}"


def now() -> datetime:
    return datetime.now(UTC)


def done_event_id(job_id: str) -> str:
    """The id of a job's ``job.done`` event: fixed, so a republished copy is recognisably the same event."""
    return f"{job_id}.done"


def failed_event_id(job_id: str) -> str:
    """The id of a job's ``job.failed`` event (fixed, like :func:`done_event_id`)."""
    return f"{job_id}.failed"


def job_path(job_id: str) -> str:
    """The job's status resource (relative: never built from the client's Host header)."""
    return f"/jobs/{job_id}"


def result_path(job_id: str) -> str:
    """Where a job that succeeded keeps its result (the status resource answers 303 to it)."""
    return f"{job_path(job_id)}/result"


@dataclass
class Job:
    """One upload's job, as the Upload service knows it (a view of the kit's :class:`JobRecord`)."""

    job_id: str
    user: str
    total: int
    """Steps the processor reports progress for."""
    digest: str
    """sha256 of the uploaded bytes (the request's fingerprint): tells a retry from a reused Idempotency-Key."""
    idempotency_key: str | None = None
    state: JobState = ACCEPTED
    created: datetime = field(default_factory=now)
    updated: datetime = field(default_factory=now)
    done_steps: int = 0
    results: dict[str, str] = field(default_factory=dict)
    """Rendition name -> storage key (the result resource turns keys into URLs)."""
    caption: str | None = None
    reason: str | None = None
    accepted_body: dict[str, Any] = field(default_factory=dict)
    """The 202 body this job was first answered with: a repeated request gets exactly this."""
    deadline: float | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the request that made the job (the SHA-256 of its bytes, hex)."""
        return self.digest

    @property
    def path(self) -> str:
        return job_path(self.job_id)

    @property
    def result_path(self) -> str:
        return result_path(self.job_id)

    def to_json(self) -> dict[str, Any]:
        """The ``GET /jobs/{id}`` document, shaped like lesson 06's; a failed job's is a problem details object (RFC 9457).

        It has no ``status`` member: reading the status of a failed job is itself a success (200).
        """
        body: dict[str, Any] = {
            "job_id": self.job_id,
            "user": self.user,
            "state": str(self.state),
            "progress": {"done": self.done_steps, "total": self.total},
            "created": iso(self.created),
            "updated": iso(self.updated),
            "links": {"self": self.path},
            "consistency": CONSISTENCY_NOTE,
        }
        if self.state == SUCCEEDED:
            body["links"]["result"] = self.result_path
        if self.state == FAILED:
            return jobhttp.failed_document(body, f"the image could not be processed: {self.reason}", reason=self.reason)
        return body

    def result_json(self, url_of: Callable[[str], str]) -> dict[str, Any]:
        """The ``GET /jobs/{id}/result`` document: the status plus each rendition's URL (``url_of`` turns a key into one)."""
        return {**self.to_json(), "results": {name: url_of(key) for name, key in self.results.items()}, "caption": self.caption}

    def record(self) -> JobRecord:
        """The job as the kit's store keeps it."""
        data = {"total": self.total, "done": self.done_steps, "accepted": self.accepted_body}
        result = {"results": self.results, "caption": self.caption} if self.state == SUCCEEDED else None
        return JobRecord(
            self.job_id, {"sha256": self.digest}, self.user, self.idempotency_key, self.digest, self.state, data,
            result, self.reason, self.created.timestamp(), self.updated.timestamp(), self.deadline,
        )  # fmt: skip

    @classmethod
    def of(cls, record: JobRecord) -> Job:
        """The job a stored record describes."""
        data, result = record.data, record.result or {}
        return cls(
            record.job_id, record.caller, int(data.get("total", 0)), record.fingerprint, record.key, record.state,
            datetime.fromtimestamp(record.created, UTC), datetime.fromtimestamp(record.updated, UTC),
            int(data.get("done", 0)), dict(result.get("results") or {}), result.get("caption"), record.reason,
            dict(data.get("accepted") or {}), record.deadline,
        )  # fmt: skip


class UploadJobs:
    """The Upload service's jobs in the kit's SQLite store (one kernel, one event loop: no locks needed).

    Every method that checks and then changes the store does so without an ``await`` in
    between, so two concurrent requests with one Idempotency-Key cannot both create a job
    (the second gets :class:`~helpers.core.jobkit.store.KeyInUse`).
    """

    def __init__(self, path: str | Path, *, deadline_s: float = DEADLINE_S) -> None:
        self.store = kit.JobStore(path)
        self.deadline_s = deadline_s
        self.applied = 0
        """Events that changed a job (this process)."""
        self.ignored = 0
        """Events that changed nothing: duplicates, late progress, unknown jobs."""

    def close(self) -> None:
        self.store.close()

    def __len__(self) -> int:
        return len(self.store)

    def __iter__(self) -> Iterator[Job]:
        return iter([job for job_id in self.store.job_ids() if (job := self.get(job_id)) is not None])

    def get(self, job_id: str) -> Job | None:
        record = self.store.get(job_id)
        return Job.of(record) if record is not None else None

    def by_key(self, user: str, key: str) -> Job | None:
        """The job ``user`` created with Idempotency-Key ``key``, if any (keys are per user)."""
        record = self.store.by_key(user, key)
        return Job.of(record) if record is not None else None

    def admit(self, user: str, key: str | None, digest: str) -> kit.Admitted:
        """What ``key`` says about an upload of bytes with sha256 ``digest`` (new, replay, mismatch, in flight)."""
        return self.store.admit(user, key, digest)

    def create(self, job: Job, outbox: Iterable[tuple[str, bytes]]) -> Job:
        """Store a new job with its key (in flight until :meth:`answered`) and the messages to publish: one transaction."""
        job.deadline = time.time() + self.deadline_s
        self.store.accept(job.record(), job.to_json(), outbox)
        return job

    def answered(self, job: Job) -> None:
        """The first request with the job's key was answered: a retry is a replay from now on."""
        self.store.answered(job.user, job.idempotency_key)

    def apply(self, event: Event) -> bool:
        """Apply one job event; True if it changed the job. Never moves a job backwards."""
        data = event.data if isinstance(event.data, dict) else {}
        job = self.get(str(data.get("job_id")))
        changed = job is not None and not job.final and self._change(job, event.type, data)
        if job is not None and changed:
            job.updated = now()
            try:
                self.store.update(job.record(), job.to_json())
            except kit.StateMovedBack:  # another writer finished it first: nothing new
                changed = False
        if changed:
            self.applied += 1
        else:
            self.ignored += 1
        return changed

    @staticmethod
    def _change(job: Job, kind: str, data: dict[str, Any]) -> bool:
        """Change ``job`` (not yet final) by one event; False when the event says nothing new."""
        if kind == JOB_PROGRESS:
            done = int(data.get("done", 0))
            if done <= job.done_steps and job.state == RUNNING:
                return False
            job.state, job.done_steps = RUNNING, max(job.done_steps, min(done, job.total))
            return True
        if kind == JOB_DONE:
            job.state, job.done_steps = SUCCEEDED, job.total
            job.results = {str(name): str(key) for name, key in dict(data.get("results") or {}).items()}
            job.caption = data.get("caption")
            return True
        if kind == JOB_FAILED:
            job.state, job.reason = FAILED, str(data.get("reason") or "no reason given")
            return True
        return False

    def expire(self) -> list[Job]:
        """Fail every unfinished job past its deadline, with the reason (a job never stays "running" forever)."""
        expired = []
        for record in self.store.overdue():
            job = Job.of(record)
            job.state, job.updated = FAILED, now()
            job.reason = f"not processed within its deadline of {self.deadline_s:g} s ({job.done_steps}/{job.total} steps done)"
            self.store.update(job.record(), job.to_json())
            expired.append(job)
        return expired

    def finished(self, job_ids: Iterable[str]) -> bool:
        """True when every job in ``job_ids`` succeeded or failed."""
        return all((record := self.store.get(job_id)) is not None and record.final for job_id in job_ids)

    def states(self) -> dict[str, int]:
        """How many jobs are in each state, for a quick look in a notebook."""
        return {**dict.fromkeys(map(str, STATES), 0), **self.store.states()}
