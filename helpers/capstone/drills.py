"""The capstone's drills, written once: lesson 07 runs them on the reference system, lab 07's checks on the learner's.

Each drill takes a running :class:`~helpers.capstone.system.CapstoneSystem`, does what a
client or an operator would do (upload, kill a service, start it again), and judges what
it sees from outside: HTTP answers, the messages on the run's topics, Storage's requests
per caller, the inbox. Each returns one frozen result with ``as_row()`` for
:func:`helpers.core.tables.show`; its plot, when it has one, is in :mod:`helpers.capstone.plots`.

* :func:`upload_burst`: many uploads at once; the 202s stay fast while the work queues;
* :func:`slow_image_first`: one pathological image, then normal ones (head-of-line blocking);
* :func:`worker_killed`: the processor killed mid-image and restarted: processed again, announced once;
* :func:`notifier_outage`: jobs finish while the notifier is down; every user hears once after it returns;
* :func:`failing_transform`: a transform that always fails ends ``failed`` with a dead letter; the next job is fine;
* :func:`upload_restarted`: the Upload service stopped mid-burst and started again on its folder and port.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from helpers.capstone.jobs import IMAGE_UPLOADED, JOB_DONE, JOB_FAILED, JOB_PROGRESS
from helpers.capstone.notifier import Notification
from helpers.capstone.system import CapstoneSystem
from helpers.capstone.wire import UploadAnswer
from helpers.core.waiting import until

SLOW_USER = "pathological"
"""The user whose image the lesson's head-of-line run makes ``slow_work`` times as costly."""
FAILING_USER = "unlucky"
"""The user whose image the lesson's failing transform makes fail in every attempt."""


def _job_id(answer: UploadAnswer) -> str:
    if answer.status != 202 or answer.job_id is None:
        raise RuntimeError(f"the upload was not accepted: HTTP {answer.status} {answer.body}")
    return answer.job_id


def _users(count: int, users: Sequence[str] | None) -> list[str]:
    return list(users) if users is not None else [f"user{i}" for i in range(count)]


def original_of(system: CapstoneSystem, job_id: str) -> str | None:
    """The storage key the job's ``image.uploaded`` event refers to (None until it was seen)."""
    for _, event in system.events(IMAGE_UPLOADED, job_id):
        original = (event.data or {}).get("original")
        if isinstance(original, dict) and isinstance(original.get("key"), str):
            return str(original["key"])
    return None


async def _original(system: CapstoneSystem, job_id: str, timeout: float) -> str:
    if not await until(lambda: original_of(system, job_id) is not None, timeout):
        raise TimeoutError(f"no image.uploaded event with an original.key for job {job_id} within {timeout:g} s")
    return str(original_of(system, job_id))


async def _final_status(system: CapstoneSystem, job_id: str, within: float = 5.0) -> tuple[int, dict[str, Any]]:
    """``GET /jobs/{id}`` until the job is final there (the Upload service hears the news a moment after the wire)."""
    answer: tuple[int, dict[str, Any]] = (0, {})

    async def final() -> bool:
        nonlocal answer
        answer = await system.status(job_id)
        return answer[1].get("state") in ("succeeded", "failed")

    await until(final, within, poll=0.05)
    return answer


def _ended_at(system: CapstoneSystem, job_ids: Sequence[str]) -> dict[str, float]:
    """When each job's first ``job.done`` or ``job.failed`` arrived on the wire (``time.perf_counter()``)."""
    wanted, ended = set(job_ids), dict[str, float]()
    for t, event in system.events():
        job_id = (event.data or {}).get("job_id")
        if event.type in (JOB_DONE, JOB_FAILED) and job_id in wanted:
            ended.setdefault(str(job_id), t)
    return ended


# --- a burst of uploads --------------------------------------------------------------------------


@dataclass(frozen=True)
class BurstDrill:
    """A burst of uploads at once: how long the users waited for the 202, and for the whole burst's work."""

    uploads: int
    slowest_upload_s: float
    median_upload_s: float
    all_done_s: float
    """From the first POST to the last ``job.done`` (or ``job.failed``) on the wire."""
    notified: int
    """Jobs whose user got a notification."""
    duplicates: int
    """Notifications beyond one per job."""

    def as_row(self) -> dict[str, object]:
        return {
            "uploads": self.uploads,
            "slowest 202 (s)": round(self.slowest_upload_s, 3),
            "median 202 (s)": round(self.median_upload_s, 3),
            "all processed after (s)": round(self.all_done_s, 2),
            "users notified": self.notified,
            "duplicates": self.duplicates,
        }


class AnswersTooSlow(TimeoutError):
    """The burst's uploads were not all answered in time: the upload waits for something slow."""


async def upload_burst(
    system: CapstoneSystem,
    photos: Sequence[bytes],
    users: Sequence[str],
    *,
    timeout: float = 60.0,
    answer_within: float | None = None,
) -> BurstDrill:
    """Upload every photo at once (one user each), wait until all are processed and notified.

    ``answer_within``: raise :class:`AnswersTooSlow` when the uploads' answers take longer
    than that, before waiting for any processing (a check names the cause, whatever the load).
    """
    began = time.perf_counter()
    posts = asyncio.gather(*(system.post(photo, user) for photo, user in zip(photos, users, strict=True)))
    try:
        answers = await asyncio.wait_for(posts, answer_within)
    except TimeoutError:
        raise AnswersTooSlow(f"the {len(photos)} uploads were not all answered within {answer_within:g} s") from None
    ids = [_job_id(answer) for answer in answers]
    if not await system.wait_finished(ids, timeout):
        raise TimeoutError(f"the burst's {len(ids)} jobs were not all processed within {timeout:g} s")
    ended = max(_ended_at(system, ids).values())
    await system.wait_notified(ids, timeout)
    await system.settle()
    counts = system.inbox.per_job()
    seconds = [answer.seconds for answer in answers]
    return BurstDrill(
        len(ids),
        max(seconds),
        statistics.median(seconds),
        ended - began,
        sum(counts[j] > 0 for j in ids),
        sum(max(0, counts[j] - 1) for j in ids),
    )


# --- head-of-line blocking --------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """One image in a head-of-line run: was it the slow one, when did work on it start and end (s since the burst)."""

    job_id: str
    slow: bool
    started_s: float
    """When the processor first fetched its original from Storage."""
    done_s: float
    """When its ``job.done`` arrived on the wire."""


async def slow_image_first(
    system: CapstoneSystem, photo: bytes, *, normal: int, timeout: float = 120.0
) -> tuple[Completion, ...]:
    """Upload the pathological user's image (:data:`SLOW_USER`), then ``normal`` others right behind it; when was each done?

    The system decides what makes the first image slow (the reference: ``work_of``).
    """
    began = time.perf_counter()
    ids = [_job_id(await system.post(photo, SLOW_USER if i == 0 else f"user{i}")) for i in range(normal + 1)]
    if not await system.wait_finished(ids, timeout):
        raise TimeoutError(f"{normal + 1} jobs not finished after {timeout:g} s")
    ended = _ended_at(system, ids)

    def started(job_id: str) -> float:
        key = original_of(system, job_id)
        return min(c.started for c in system.storage.requests("processor", "GET", key=key))

    return tuple(Completion(j, i == 0, started(j) - began, ended[j] - began) for i, j in enumerate(ids))


# --- a worker killed mid-image ------------------------------------------------------------------


@dataclass(frozen=True)
class KillDrill:
    """The processor killed while it works on an image, then restarted with its session."""

    killed_mid_image: bool
    """True when the kill came after the processor fetched the original and before ``job.done``."""
    steps_before_kill: int
    """``job.progress`` events for the job seen before the kill (a processor that reports no progress: 0)."""
    starts: int
    """Times the processor fetched the original from Storage (2: it took the image on again after the kill)."""
    state: str | None
    """What ``GET /jobs/{id}`` said at the end."""
    done_events: int
    """``job.done`` events for the job on the wire."""
    notifications: int
    """Inbox entries for the job (1: the user heard once)."""
    results: int
    """Renditions the ``job.done`` event links to."""

    @property
    def redelivered(self) -> bool:
        return self.starts >= 2

    def as_row(self) -> dict[str, object]:
        return {
            "killed mid-image": self.killed_mid_image,
            "times processed": self.starts,
            "final state": self.state,
            "job.done events": self.done_events,
            "notifications": self.notifications,
            "renditions": self.results,
        }


async def worker_killed(
    system: CapstoneSystem, photo: bytes, user: str = "kim", *, after_steps: int = 0, timeout: float = 30.0
) -> KillDrill:
    """Upload one image, kill the processor once it fetched the original (and reported ``after_steps``), restart it, count."""
    job_id = _job_id(await system.post(photo, user))
    key = await _original(system, job_id, timeout)

    def fetched() -> int:
        return len(system.storage.requests("processor", "GET", key=key))

    def working() -> bool:
        return fetched() >= 1 and len(system.events(JOB_PROGRESS, job_id)) >= after_steps

    if not await until(lambda: working() or bool(system.crashed()), timeout):
        raise TimeoutError(f"the processor did not fetch {key!r} from Storage within {timeout:g} s")
    system.raise_crashed()
    steps, mid_image = len(system.events(JOB_PROGRESS, job_id)), not system.finished([job_id])
    await system.processor.kill()
    await system.processor.start()
    if not await system.wait_finished([job_id], timeout):
        raise TimeoutError(f"job {job_id} was not processed within {timeout:g} s of the restart")
    await system.wait_notified([job_id], timeout)
    await system.settle()
    _, body = await _final_status(system, job_id)
    done = system.events(JOB_DONE, job_id)
    results = len((done[0][1].data or {}).get("results") or {}) if done else 0
    notes = system.inbox.per_job()[job_id]
    return KillDrill(mid_image, steps, fetched(), body.get("state"), len(done), notes, results)


# --- the Notification service is down ------------------------------------------------------------


@dataclass(frozen=True)
class OutageDrill:
    """Jobs finished while the Notification service was down; what reached the users after its restart, and when."""

    jobs: int
    down_s: float
    """When the service was killed (s since the drill began)."""
    up_s: float
    """When it was started again (same client id, same session)."""
    done_s: tuple[float, ...]
    """When each job's ``job.done`` arrived on the wire."""
    notified_s: tuple[float, ...]
    """When each notification was written (its ``at``), s since the drill began."""
    waits: tuple[tuple[float, float], ...]
    """(done, notified) per notified job."""
    notifications: int
    """Inbox entries for the drill's jobs (a duplicate counts twice)."""
    distinct: int
    """Jobs that got an inbox entry."""

    @property
    def lost(self) -> int:
        return self.jobs - self.distinct

    @property
    def duplicates(self) -> int:
        return self.notifications - self.distinct

    @property
    def during_outage(self) -> int:
        """Notifications written while the service was down (0: a dead service writes nothing)."""
        return sum(self.down_s <= t < self.up_s for t in self.notified_s)

    @property
    def done_while_down(self) -> int:
        return sum(self.down_s <= t < self.up_s for t in self.done_s)

    def as_row(self) -> dict[str, object]:
        return {
            "jobs": self.jobs,
            "done while down": self.done_while_down,
            "down for s": round(self.up_s - self.down_s, 2),
            "notified": self.distinct,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "last notified s after restart": round(max(self.notified_s, default=self.up_s) - self.up_s, 2),
        }


def _wall(note: Notification) -> float:
    """A notification's ``at`` (ISO 8601 UTC) as seconds since the epoch."""
    return datetime.fromisoformat(note.at.replace("Z", "+00:00")).timestamp()


async def notifier_outage(  # noqa: PLR0913  learner-facing: lesson 07 passes outage_s, lab 07 the users
    system: CapstoneSystem,
    photos: Sequence[bytes],
    users: Sequence[str] | None = None,
    *,
    outage_s: float = 0.0,
    notify_within: float = 5.0,
    timeout: float = 30.0,
) -> OutageDrill:
    """Kill the notifier, upload, let every job finish, restart the notifier, count what reaches the users.

    The notifier stays down at least ``outage_s`` seconds and until every job is done; what
    is not in the inbox ``notify_within`` seconds after its restart counts as lost.
    """
    began, began_wall = time.perf_counter(), time.time()
    await system.notifier.kill()
    down = time.perf_counter() - began
    ids = [_job_id(await system.post(photo, user)) for photo, user in zip(photos, _users(len(photos), users), strict=True)]
    if not await system.wait_finished(ids, timeout):
        raise TimeoutError(f"jobs not processed within {timeout:g} s while the notifier was down")
    if (left := outage_s - (time.perf_counter() - began - down)) > 0:
        await asyncio.sleep(left)  # the outage itself: a service that stays down this long is the experiment
    up = time.perf_counter() - began
    await system.notifier.start()
    await system.wait_notified(ids, notify_within)  # whatever is not there by then was lost
    await system.settle()  # and then no duplicate follows
    ended = _ended_at(system, ids)
    notes = [n for n in system.inbox.entries() if n.job_id in set(ids)]
    first = {n.job_id: _wall(n) - began_wall for n in reversed(notes)}
    return OutageDrill(
        len(ids),
        down,
        up,
        tuple(round(ended[j] - began, 4) for j in ids if j in ended),
        tuple(round(_wall(n) - began_wall, 4) for n in notes),
        tuple((round(ended[j] - began, 4), round(first[j], 4)) for j in ids if j in first and j in ended),
        len(notes),
        len(first),
    )


# --- a transform that always fails ---------------------------------------------------------------


@dataclass(frozen=True)
class FailedDrill:
    """A job whose transform fails every time (:data:`FAILING_USER`), and a normal job uploaded after it."""

    attempts: int
    """Times the processor fetched the failing job's original (one per attempt)."""
    status: dict[str, Any]
    """What ``GET /jobs/{id}`` said about the failing job (over HTTP)."""
    dead_letters: int
    dead_letter: dict[str, Any] | None
    """The first dead-letter record: reason, topic and the original event."""
    notification: Notification | None
    """What the user's inbox says about the failed job."""
    next_job_state: str | None
    """The state of a normal job uploaded after the failing one: the worker lived on."""

    @property
    def state(self) -> str | None:
        return self.status.get("state")

    @property
    def reason(self) -> str | None:
        return self.status.get("reason")

    @property
    def dead_letter_reason(self) -> str | None:
        return self.dead_letter.get("reason") if self.dead_letter else None

    def as_row(self) -> dict[str, object]:
        return {
            "attempts": self.attempts,
            "state": self.state,
            "reason": self.reason,
            "dead letters": self.dead_letters,
            "user told": self.notification is not None,
            "next job": self.next_job_state,
        }


async def failing_transform(system: CapstoneSystem, photo: bytes, *, timeout: float = 60.0) -> FailedDrill:
    """Upload :data:`FAILING_USER`'s image (the system makes it fail), then a normal one; count how it ended."""
    bad = _job_id(await system.post(photo, FAILING_USER))
    good = _job_id(await system.post(photo, "lucky"))
    if not await system.wait_finished([bad, good], timeout):
        raise TimeoutError(f"jobs not finished within {timeout:g} s")
    await system.wait_notified([bad, good], timeout)
    await until(lambda: bool(system.dead_letters()), timeout)
    _, body = await _final_status(system, bad)
    _, next_body = await _final_status(system, good)
    dead, notes = system.dead_letters(), system.inbox(FAILING_USER)
    fetched = len(system.storage.requests("processor", "GET", key=original_of(system, bad) or "?"))
    return FailedDrill(fetched, body, len(dead), dead[0] if dead else None, notes[0] if notes else None, next_body.get("state"))


# --- the Upload service restarted mid-burst ------------------------------------------------------


class UploadRestarts(CapstoneSystem, Protocol):
    """A system whose Upload service can be stopped and started again on its work folder and port."""

    async def restart_upload(self, down_s: float, *, while_down: Callable[[], Awaitable[object]]) -> None: ...


@dataclass(frozen=True)
class RestartDrill:
    """A burst of uploads, the Upload service stopped while it was processed and started again on the same
    work folder and port; what each job's status, the store and the inboxes said afterwards."""

    jobs: int
    accepted: int
    """Uploads answered 202 before the stop."""
    unfinished_at_stop: int
    """Jobs not yet finished on the wire when the service stopped (the drill needs some)."""
    events_while_down: int
    """Job events (progress, done) the processor published while the Upload service was down."""
    done_while_down: int
    """Jobs whose ``job.done`` was published while the Upload service was down (only its session can keep those)."""
    down_s: float
    answered: int
    """Jobs whose ``GET /jobs/{id}`` answered after the restart (200 or 303, not 404)."""
    done: int
    """Jobs that succeeded (the status answered 303 to the result)."""
    notified: int
    notifications: int
    """Inbox entries for the burst's jobs (a duplicate counts twice)."""

    @property
    def lost(self) -> int:
        """Accepted jobs that after the restart did not answer, did not succeed, or whose user was not notified."""
        return self.accepted - min(self.answered, self.done, self.notified)

    @property
    def duplicated(self) -> int:
        """Inbox entries beyond the first of each job."""
        return self.notifications - self.notified

    def as_row(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "unfinished at stop": self.unfinished_at_stop,
            "events while down": self.events_while_down,
            "done while down": self.done_while_down,
            "down for s": round(self.down_s, 2),
            "answered after restart": self.answered,
            "done": self.done,
            "notified": self.notified,
            "duplicated": self.duplicated,
            "lost": self.lost,
        }


async def upload_restarted(
    system: UploadRestarts, photo: bytes, *, jobs: int = 6, down_s: float = 1.0, timeout: float = 60.0
) -> RestartDrill:
    """Upload a burst, stop the Upload service while the processor works on it, start it again, count.

    The service stays down at least ``down_s`` seconds and until the processor finished a job
    meanwhile: that ``job.done`` reaches the restarted service only through its persistent
    session. It comes back on the same work folder (its SQLite job store) and the same port,
    so every Location handed out before the stop still answers.
    """
    answers = await asyncio.gather(*(system.post(photo, f"user{i}") for i in range(jobs)))
    ids = [a.job_id for a in answers if a.status == 202 and a.job_id is not None]
    jobs_topic = system.topics.jobs.removesuffix("+")
    records = system.recorder.records
    if not await until(lambda: any(r.topic.startswith(jobs_topic) for r in records), timeout):
        raise TimeoutError(f"no job event within {timeout:g} s: the burst never started")
    unfinished = sum(not system.finished([j]) for j in ids)
    stopped = time.perf_counter()

    def done_since(t: float) -> set[str]:
        return {str((e.data or {}).get("job_id")) for at, e in system.events(JOB_DONE) if at > t}

    async def while_down() -> None:  # a job must finish while the consumer is away: only its session keeps the news
        await until(lambda: bool(done_since(stopped)), timeout)

    await system.restart_upload(down_s, while_down=while_down)
    started = time.perf_counter()
    events_while_down = sum(stopped < r.t < started and r.topic.startswith(jobs_topic) for r in records)
    done_while_down = len(done_since(stopped) - done_since(started))
    if not await system.wait_finished(ids, timeout):
        raise TimeoutError(f"jobs not finished {timeout:g} s after the restart")
    await system.wait_notified(ids, timeout)
    await system.settle()  # and then no duplicate follows
    statuses = [await _final_status(system, j) for j in ids]
    notes = [n for n in system.inbox.entries() if n.job_id in set(ids)]
    return RestartDrill(
        jobs,
        len(ids),
        unfinished,
        events_while_down,
        done_while_down,
        started - stopped,
        sum(status in (200, 303) for status, _ in statuses),
        sum(status == 303 and body.get("state") == "succeeded" for status, body in statuses),
        len({n.job_id for n in notes}),
        len(notes),
    )
