"""The job store of every asynchronous job in the course: one SQLite file, states that only move forward.

Why SQLite: a job accepted with ``202`` is a promise, and a promise kept in a dict dies
with the process. ``sqlite3`` is in the standard library, needs no server, and a file in
the service's work folder survives a restart. WAL mode lets readers go on while a write
commits, and ``synchronous=NORMAL`` makes a commit cost microseconds, not a disk flush.

One table per concern, all in the same file, so one transaction covers them together:

* ``jobs``: the typed records (:class:`JobRecord`); ``state`` takes one of
  :class:`JobState` and only moves forward (:func:`moves_forward`), so a late or repeated
  event can never reopen a finished job;
* ``idempotency``: ``(caller, key)`` -> the job and the fingerprint of the request that
  made it; :meth:`JobStore.admit` tells a replay from a key reused for other content and
  from a key whose first request is still being answered. A service whose work before
  :meth:`JobStore.accept` is expensive (decoding an image, storing it) reserves the key first
  (:meth:`JobStore.reserve`), so a concurrent retry is told "in flight" instead of doing that
  work again, and releases it (:meth:`JobStore.release`) if the request fails;
* ``changes``: every status document a job had, numbered (an event stream replays them);
* ``outbox``: messages to publish, written in the *same* transaction as the job change
  they belong to (the dual write "store, then publish" cannot half-happen); a relay
  publishes them after the commit and marks them sent (:func:`relay_outbox`). Whatever
  was not marked is published again after a restart, so consumers dedupe on the event id.

The store is synchronous on purpose: each call is one short transaction inside one
event loop, with no ``await`` between a check and the write that depends on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import aiomqtt


class JobState(StrEnum):
    """The one state vocabulary of every job in the course."""

    ACCEPTED = "accepted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __repr__(self) -> str:
        """``'running'``, as the plain string it equals: what a learner's message or a stored output should show."""
        return repr(self.value)


FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
"""A job in one of these states never changes again."""
_RANK = {JobState.ACCEPTED: 0, JobState.RUNNING: 1, JobState.SUCCEEDED: 2, JobState.FAILED: 2, JobState.CANCELLED: 2}


def moves_forward(old: str, new: str) -> bool:
    """True when a job may go from ``old`` to ``new``: staying put, or a step forward from an unfinished state."""
    before, after = JobState(old), JobState(new)
    return before == after or (before not in FINAL and _RANK[after] > _RANK[before])


class StateMovedBack(ValueError):
    """A change would move a job backwards (or out of a final state); the store refused it."""


class KeyInUse(ValueError):
    """An idempotency key whose first request is still being answered, or that another request just took:
    the caller answers ``409`` and asks the client to retry shortly."""

    def __init__(self, key: str, caller: str) -> None:
        super().__init__(f"the Idempotency-Key {key!r} of {caller!r} is in use by a request still being answered")
        self.key, self.caller = key, caller


def fingerprint(content: Any) -> str:
    """A request's fingerprint: SHA-256 of its bytes, or of its canonical JSON (key order does not matter)."""
    raw = content if isinstance(content, bytes) else json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()


@dataclass
class JobRecord:
    """One job as the store keeps it. ``data`` holds what a service adds (progress, the step it is on)."""

    job_id: str
    request: dict[str, Any]
    caller: str = "anonymous"
    key: str | None = None
    fingerprint: str = ""
    state: JobState = JobState.ACCEPTED
    data: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    reason: str | None = None
    created: float = field(default_factory=time.time)
    """Wall-clock seconds (``time.time()``), so they mean the same after a restart."""
    updated: float = field(default_factory=time.time)
    deadline: float | None = None
    """Wall-clock seconds after which an unfinished job is failed (:meth:`JobStore.overdue`)."""

    @property
    def final(self) -> bool:
        return self.state in FINAL


class Admission(StrEnum):
    """What an idempotency key says about a request."""

    NEW = "new"
    """No job for this caller and key (or no key): make one."""
    REPLAY = "replay"
    """The same caller, key and content as an answered request: answer with that job again."""
    MISMATCH = "mismatch"
    """The key came before with other content: the client's bug, 422."""
    IN_FLIGHT = "in-flight"
    """The key's first request is still being answered: 409, try again shortly."""


@dataclass(frozen=True)
class Admitted:
    outcome: Admission
    job: JobRecord | None = None


@dataclass(frozen=True)
class Change:
    """One status document a job had: its number (1, 2, ...), when it was recorded, and the document."""

    seq: int
    """1, 2, 3, ... per job: the event stream's ``id``."""
    at: float
    """``time.monotonic()`` of the process that recorded it (compare only within one process)."""
    document: dict[str, Any]
    """The status document right after the change (what the status resource answered then)."""

    @property
    def state(self) -> str:
        return str(self.document.get("state"))

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass(frozen=True)
class OutboxMessage:
    seq: int
    topic: str
    payload: bytes


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, caller TEXT NOT NULL, key TEXT, fingerprint TEXT NOT NULL, request TEXT NOT NULL,
    state TEXT NOT NULL, data TEXT NOT NULL, result TEXT, reason TEXT,
    created REAL NOT NULL, updated REAL NOT NULL, deadline REAL);
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (deadline) WHERE state IN ('accepted', 'running');
CREATE TABLE IF NOT EXISTS idempotency (
    caller TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, job_id TEXT NOT NULL, answered INTEGER NOT NULL,
    PRIMARY KEY (caller, key));
CREATE TABLE IF NOT EXISTS changes (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, document TEXT NOT NULL, PRIMARY KEY (job_id, seq));
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, published REAL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class JobStore:
    """Jobs, idempotency keys, status history and outbox in one SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)  # explicit BEGIN/COMMIT below
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        # A process that died between accepting a job and answering it left its key "in flight"
        # forever; the job itself is stored (and its outbox will be sent), so a retry may replay it.
        # One that died while a key was only reserved made no job: the key is free again.
        with self._transaction():
            self._db.execute("DELETE FROM idempotency WHERE answered = 0 AND job_id NOT IN (SELECT job_id FROM jobs)")
            self._db.execute("UPDATE idempotency SET answered = 1 WHERE answered = 0")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ----------------------------------------------------------------- reading

    def get(self, job_id: str) -> JobRecord | None:
        row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    def by_key(self, caller: str, key: str) -> JobRecord | None:
        """The job this caller's ``key`` made, or None (another caller's same key is another key)."""
        row = self._db.execute(
            "SELECT j.* FROM idempotency i JOIN jobs j USING (job_id) WHERE i.caller = ? AND i.key = ?", (caller, key)
        ).fetchone()
        return _record(row) if row else None

    def admit(self, caller: str, key: str | None, print_: str) -> Admitted:
        """What ``key`` says about a request with fingerprint ``print_`` from ``caller`` (see :class:`Admission`)."""
        if not key:
            return Admitted(Admission.NEW)
        row = self._db.execute(
            "SELECT fingerprint, job_id, answered FROM idempotency WHERE caller = ? AND key = ?", (caller, key)
        ).fetchone()
        if row is None:
            return Admitted(Admission.NEW)
        job = self.get(row[1])
        if row[0] != print_:
            return Admitted(Admission.MISMATCH, job)
        return Admitted(Admission.REPLAY if row[2] else Admission.IN_FLIGHT, job)

    def job_ids(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT job_id FROM jobs ORDER BY created, rowid")]

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def states(self) -> dict[str, int]:
        """How many jobs are in each state."""
        return dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state").fetchall())

    def changes(self, job_id: str, after: int = 0) -> list[Change]:
        rows = self._db.execute(
            "SELECT seq, at, document FROM changes WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, after)
        )
        return [Change(seq, at, json.loads(document)) for seq, at, document in rows]

    def overdue(self, now: float | None = None) -> list[JobRecord]:
        """Unfinished jobs whose deadline passed."""
        rows = self._db.execute(
            "SELECT * FROM jobs WHERE state IN ('accepted', 'running') AND deadline IS NOT NULL AND deadline <= ?",
            (time.time() if now is None else now,),
        )
        return [_record(row) for row in rows]

    def pending(self) -> list[OutboxMessage]:
        """Outbox messages not yet published, oldest first."""
        rows = self._db.execute("SELECT seq, topic, payload FROM outbox WHERE published IS NULL ORDER BY seq")
        return [OutboxMessage(seq, topic, bytes(payload)) for seq, topic, payload in rows]

    def meta(self, name: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else default

    # ----------------------------------------------------------------- writing

    def set_meta(self, name: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def accept(
        self, job: JobRecord, document: dict[str, Any], outbox: Iterable[tuple[str, bytes]] = (), *, answered: bool = False
    ) -> JobRecord:
        """Store a new job, its key (in flight until :meth:`answered`), its first status and its outbox: one transaction.

        Raises :class:`KeyInUse` when another request took the same caller and key first.
        """
        job.fingerprint = job.fingerprint or fingerprint(job.request)
        try:
            with self._transaction() as db:
                db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _row(job))
                if job.key:  # a reservation of this very job (reserve) becomes its key; any other row is KeyInUse
                    taken = db.execute(
                        "INSERT INTO idempotency VALUES (?, ?, ?, ?, ?) ON CONFLICT (caller, key) DO UPDATE"
                        " SET answered = excluded.answered WHERE job_id = excluded.job_id AND fingerprint = excluded.fingerprint",
                        (job.caller, job.key, job.fingerprint, job.job_id, int(answered)),
                    ).rowcount
                    if taken != 1:
                        raise KeyInUse(job.key, job.caller)
                self._append(db, job.job_id, document, outbox)
        except sqlite3.IntegrityError as exc:
            raise KeyInUse(job.key or "", job.caller) from exc
        return job

    def reserve(self, caller: str, key: str, print_: str, job_id: str) -> None:
        """Hold ``key`` for the job ``job_id`` that is not stored yet: until :meth:`accept` stores it (or
        :meth:`release` gives the key up), :meth:`admit` says IN_FLIGHT for the same content, MISMATCH for other.

        Raises :class:`KeyInUse` when the caller's key is reserved or used already.
        """
        try:
            with self._transaction() as db:
                db.execute("INSERT INTO idempotency VALUES (?, ?, ?, ?, 0)", (caller, key, print_, job_id))
        except sqlite3.IntegrityError as exc:
            raise KeyInUse(key, caller) from exc

    def release(self, caller: str, key: str, job_id: str) -> bool:
        """Give up a reservation of :meth:`reserve` whose job was never stored; True if there was one."""
        with self._transaction() as db:
            gone = db.execute(
                "DELETE FROM idempotency WHERE caller = ? AND key = ? AND job_id = ? AND answered = 0"
                " AND NOT EXISTS (SELECT 1 FROM jobs WHERE job_id = ?)",
                (caller, key, job_id, job_id),
            ).rowcount
        return gone > 0

    def answered(self, caller: str, key: str | None) -> None:
        """The first request with this key was answered: from now on a retry is a replay, not in flight."""
        if key:
            with self._transaction() as db:
                db.execute("UPDATE idempotency SET answered = 1 WHERE caller = ? AND key = ?", (caller, key))

    def update(self, job: JobRecord, document: dict[str, Any] | None, outbox: Iterable[tuple[str, bytes]] = ()) -> None:
        """Save ``job`` with its new status document (None: no new one) and outbox messages, in one transaction.

        Raises :class:`StateMovedBack` when the stored state could not move to ``job.state``.
        """
        with self._transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE job_id = ?", (job.job_id,)).fetchone()
            if row is None:
                raise KeyError(f"no job {job.job_id!r} in the store")
            if not moves_forward(row[0], job.state):
                raise StateMovedBack(f"job {job.job_id} cannot move from {row[0]!r} to {str(job.state)!r}")
            job.updated = time.time()
            db.execute(
                "UPDATE jobs SET state = ?, data = ?, result = ?, reason = ?, updated = ?, deadline = ? WHERE job_id = ?",
                (job.state, _dump(job.data), _dump(job.result), job.reason, job.updated, job.deadline, job.job_id),
            )
            self._append(db, job.job_id, document, outbox)

    def published(self, seqs: Sequence[int]) -> None:
        with self._transaction() as db:
            db.executemany("UPDATE outbox SET published = ? WHERE seq = ?", [(time.time(), s) for s in seqs])

    @staticmethod
    def _append(
        db: sqlite3.Connection, job_id: str, document: dict[str, Any] | None, outbox: Iterable[tuple[str, bytes]]
    ) -> None:
        if document is not None:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM changes WHERE job_id = ?", (job_id,)).fetchone()[0]
            db.execute("INSERT INTO changes VALUES (?, ?, ?, ?)", (job_id, seq, time.monotonic(), _dump(document)))
        db.executemany("INSERT INTO outbox (topic, payload) VALUES (?, ?)", list(outbox))


@runtime_checkable
class RawPublisher(Protocol):
    """A publisher that reconnects by itself (:class:`helpers.core.reconnect.Publisher`) and sends bytes as they are."""

    async def publish_raw(self, topic: str, payload: bytes, *, qos: int = 1) -> None: ...


async def relay_outbox(store: JobStore, client: aiomqtt.Client | RawPublisher, *, qos: int = 1) -> int:
    """Publish every pending outbox message in order (QoS 1: each returns once the broker has it), marking each sent.

    A failure stops the relay where it is; the rest stays pending for the next call. Returns how many were sent.
    """
    sent = 0
    for message in store.pending():
        if isinstance(client, RawPublisher):
            await client.publish_raw(message.topic, message.payload, qos=qos)
        else:
            await client.publish(message.topic, message.payload, qos=qos)
        store.published([message.seq])
        sent += 1
    return sent


HOUSEKEEPING_S = 0.2
"""How often a jobs service fails its overdue jobs and publishes what its outbox still holds."""


async def housekeeping(
    expire: Callable[[], object],
    relay: Callable[[], Awaitable[int]],
    *,
    ready: asyncio.Event | None = None,
    every_s: float = HOUSEKEEPING_S,
) -> None:
    """A jobs service's sweeper, until cancelled: fail overdue jobs (``expire``: nothing says "running" forever) and
    publish the outbox (``relay``), every ``every_s`` seconds. A broker that is away costs a round, nothing more:
    the outbox keeps what was not sent. Sets ``ready`` at once (for :meth:`helpers.core.lifecycle.Restartable.launch`)."""
    if ready is not None:
        ready.set()
    while True:
        expire()
        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):  # the broker is away: next round
            await relay()
        await asyncio.sleep(every_s)


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), default=str)


def _row(job: JobRecord) -> tuple[Any, ...]:
    return (
        job.job_id, job.caller, job.key, job.fingerprint, _dump(job.request), job.state, _dump(job.data),
        _dump(job.result), job.reason, job.created, job.updated, job.deadline,
    )  # fmt: skip


def _record(row: Sequence[Any]) -> JobRecord:
    job_id, caller, key, print_, request, state, data, result, reason, created, updated, deadline = row
    return JobRecord(
        job_id, json.loads(request), caller, key, print_, JobState(state), json.loads(data),
        None if result is None else json.loads(result), reason, created, updated, deadline,
    )  # fmt: skip
