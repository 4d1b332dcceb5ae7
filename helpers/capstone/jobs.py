"""The capstone's job record: topics, event types, and the store behind ``GET /jobs/{id}``.

An upload becomes a *job*. The Upload service creates it (state ``accepted``) and then
never touches the image again: the AI Image Processor does the work and announces what
happened as events (``job.progress``, ``job.done``, ``job.failed``), and the Upload
service's own consumer applies those events to this store. So the status resource is
**eventually consistent**: right after the processor finished, ``GET /jobs/{id}`` may
still say ``processing`` for a few milliseconds. Nothing is lost by that, and it is the
price of the Upload service never calling the processor.

The store is also where the ``Idempotency-Key`` lives: the same key from the same user
returns the job it first created, and the same key with other bytes is a conflict.

Applying an event is idempotent and never goes backwards: a duplicate ``job.done``
(at-least-once delivery) changes nothing, and a late ``job.progress`` that arrives after
``job.done`` is ignored, whatever order the broker delivered them in.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from helpers.core.events import iso
from helpers.core.messaging import Event

IMAGE_UPLOADED = "image.uploaded"
"""The Upload service stored an original and asks for it to be processed (data: a claim check)."""
JOB_PROGRESS = "job.progress"
"""The processor finished one step of a job (data: ``job_id``, ``step``, ``done``, ``total``)."""
JOB_DONE = "job.done"
"""Every rendition of a job is stored (data: ``job_id``, ``user``, ``results`` {name: key}, ``caption``)."""
JOB_FAILED = "job.failed"
"""The processor gave up on a job (data: ``job_id``, ``user``, ``reason``)."""

ACCEPTED, PROCESSING, DONE, FAILED = "accepted", "processing", "done", "failed"
STATES = (ACCEPTED, PROCESSING, DONE, FAILED)
FINAL = frozenset({DONE, FAILED})
"""A job in one of these states never changes again."""

CONSISTENCY_NOTE = "eventual: built from the processor's job events, so it may lag the processor by a moment"


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


def now() -> datetime:
    return datetime.now(UTC)


def done_event_id(job_id: str) -> str:
    """The id of a job's ``job.done`` event: fixed, so a republished copy is recognisably the same event."""
    return f"{job_id}.done"


def failed_event_id(job_id: str) -> str:
    """The id of a job's ``job.failed`` event (fixed, like :func:`done_event_id`)."""
    return f"{job_id}.failed"


class IdempotencyConflict(ValueError):
    """The same Idempotency-Key came back with different bytes: the client reused a key by mistake."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"Idempotency-Key {job.idempotency_key!r} was first used for job {job.job_id} with other bytes")
        self.job = job


@dataclass
class Job:
    """One upload's job, as the Upload service knows it."""

    job_id: str
    user: str
    total: int
    """Steps the processor reports progress for."""
    digest: str
    """sha256 of the uploaded bytes: tells a repeated request from a reused Idempotency-Key."""
    idempotency_key: str | None = None
    state: str = ACCEPTED
    created: datetime = field(default_factory=now)
    updated: datetime = field(default_factory=now)
    done_steps: int = 0
    results: dict[str, str] = field(default_factory=dict)
    """Rendition name -> storage key (the status resource turns keys into URLs)."""
    caption: str | None = None
    reason: str | None = None
    queued: bool = False
    """True once the original is stored and ``image.uploaded`` is published (before that a repeat is told to wait)."""
    accepted_body: dict[str, Any] = field(default_factory=dict)
    """The 202 body this job was first answered with: a repeated request gets exactly this."""

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def to_json(self, url_of: Callable[[str], str]) -> dict[str, Any]:
        """The ``GET /jobs/{id}`` body; ``url_of`` turns a storage key into a URL that serves it."""
        body: dict[str, Any] = {
            "job_id": self.job_id,
            "user": self.user,
            "state": self.state,
            "created": iso(self.created),
            "updated": iso(self.updated),
            "progress": {"done": self.done_steps, "total": self.total},
        }
        if self.state == DONE:
            body["results"] = {name: url_of(key) for name, key in self.results.items()}
            body["caption"] = self.caption
        if self.state == FAILED:
            body["reason"] = self.reason
        body["consistency"] = CONSISTENCY_NOTE
        return body


class JobStore:
    """The Upload service's jobs, in memory (one kernel, one event loop: no locks needed).

    Every method that checks and then changes the store does so without an ``await`` in
    between, so two concurrent requests with one Idempotency-Key cannot both create a job.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        self.applied = 0
        """Events that changed a job."""
        self.ignored = 0
        """Events that changed nothing: duplicates, late progress, unknown jobs."""

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs.values()))

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def by_key(self, user: str, key: str) -> Job | None:
        """The job ``user`` created with Idempotency-Key ``key``, if any (keys are per user)."""
        job_id = self._by_key.get((user, key))
        return self._jobs.get(job_id) if job_id else None

    def create(self, user: str, digest: str, total: int, *, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """A new job, or ``(existing, False)`` when this user already used ``idempotency_key`` for these bytes.

        Raises :class:`IdempotencyConflict` when the key was used for other bytes.
        """
        if idempotency_key is not None:
            existing = self.by_key(user, idempotency_key)
            if existing is not None:
                if existing.digest != digest:
                    raise IdempotencyConflict(existing)
                return existing, False
        job = Job(uuid.uuid4().hex, user, total, digest, idempotency_key)
        self._jobs[job.job_id] = job
        if idempotency_key is not None:
            self._by_key[(user, idempotency_key)] = job.job_id
        return job, True

    def discard(self, job_id: str) -> None:
        """Forget a job that was never queued (its upload failed half-way), key included, so a retry starts afresh."""
        job = self._jobs.pop(job_id, None)
        if job is not None and job.idempotency_key is not None:
            self._by_key.pop((job.user, job.idempotency_key), None)

    def apply(self, event: Event) -> bool:
        """Apply one job event; True if it changed the job. Never moves a job backwards."""
        data = event.data if isinstance(event.data, dict) else {}
        job = self._jobs.get(str(data.get("job_id")))
        changed = job is not None and not job.final and self._change(job, event.type, data)
        if job is not None and changed:
            job.updated = now()
            self.applied += 1
        else:
            self.ignored += 1
        return changed

    @staticmethod
    def _change(job: Job, kind: str, data: dict[str, Any]) -> bool:
        """Change ``job`` (not yet final) by one event; False when the event says nothing new."""
        if kind == JOB_PROGRESS:
            done = int(data.get("done", 0))
            if done <= job.done_steps and job.state == PROCESSING:
                return False
            job.state, job.done_steps = PROCESSING, max(job.done_steps, min(done, job.total))
            return True
        if kind == JOB_DONE:
            job.state, job.done_steps = DONE, job.total
            job.results = {str(name): str(key) for name, key in dict(data.get("results") or {}).items()}
            job.caption = data.get("caption")
            return True
        if kind == JOB_FAILED:
            job.state, job.reason = FAILED, str(data.get("reason") or "no reason given")
            return True
        return False

    def finished(self, job_ids: Iterable[str]) -> bool:
        """True when every job in ``job_ids`` is done or failed."""
        return all((job := self._jobs.get(job_id)) is not None and job.final for job_id in job_ids)

    def states(self) -> dict[str, int]:
        """How many jobs are in each state, for a quick look in a notebook."""
        counts = dict.fromkeys(STATES, 0)
        for job in self._jobs.values():
            counts[job.state] += 1
        return counts
