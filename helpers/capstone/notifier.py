"""The Notification service: tell each user that their job finished, never zero times, in the inbox once.

It consumes ``job.done`` and ``job.failed`` and, for each finished job, writes one "e-mail"
to an outbox file (JSON lines; nothing is sent) and one entry to the user's in-app inbox.
What it guarantees is **at-least-once delivery, applied once** (not "exactly once", which
no consumer of a broker can promise). Three choices make it hold across crashes:

* **a persistent session with a fixed client id, QoS 1**: while the service is down the
  broker keeps what was published for it, and hands it over when the service returns
  with the same client id;
* **acknowledge after writing**: a crash between receiving and writing means the broker
  delivers the event again;
* **dedupe on the job id, recorded in the same step as the inbox write**: the inbox line
  *is* the record that the job was notified (one ``write`` of one line to
  ``inbox.jsonl``, read back at start), so there is no moment where the inbox has the
  entry and the record does not, or the other way round. A redelivered event, or a
  second ``job.done`` for the same job, finds the line and notifies nobody twice.

The crash window that is left, stated plainly: the e-mail is a side effect outside that
step. It is written *before* the inbox line, so a crash between the two sends the e-mail
again when the event is redelivered (twice, never zero times); the inbox entry still
appears once. A real mail service closes that window by deduplicating on a message id
(here the job id travels with every e-mail).

Its subscription is ``{prefix}/jobs/+`` (a single filter for ``done`` and ``failed``), so
it also receives ``job.progress``, which it acknowledges and ignores.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.capstone.jobs import JOB_DONE, JOB_FAILED, Topics, iso, now
from helpers.core import lifecycle
from helpers.core.broker import Broker
from helpers.core.messaging import Consumer, Event, manual_ack
from helpers.core.reconnect import reconnecting

EMAIL_DOMAIN = "example.invalid"
"""Where the outbox pretends to send (``.invalid`` is reserved: nothing could ever be delivered there)."""


@dataclass(frozen=True)
class Notification:
    """One inbox entry: who, which job, how it ended, and when the service wrote it."""

    user: str
    job_id: str
    state: str
    """"succeeded" or "failed" (the job's state)."""
    text: str
    at: str
    """ISO 8601 UTC."""

    def as_row(self) -> dict[str, object]:
        """A row for a results table."""
        return {"user": self.user, "job": self.job_id[:8], "state": self.state, "message": self.text}


def notification_text(state: str) -> str:
    """What a user reads for a job that ended in ``state`` (the lab's notifier; the reference says more)."""
    return "Sorry, your image could not be processed." if state == "failed" else "Your image is ready."


class Inbox:
    """The users' in-app inbox: one JSON line per notification in ``workdir/inbox.jsonl``.

    The reference :class:`Notifier` and the learner's notifier of lab 07 write the same file,
    so one reader serves every drill. It lives in a file, so what a notifier wrote before it
    was killed is still there when it comes back.
    """

    FILE = "inbox.jsonl"

    def __init__(self, workdir: str | Path) -> None:
        self.path = Path(workdir) / self.FILE

    def notify(self, user: str, job_id: str, state: str, text: str = "") -> Notification:
        """Tell ``user`` that ``job_id`` ended in ``state``; one line, written and flushed at once."""
        note = Notification(str(user), str(job_id), str(state), text or notification_text(state), iso(now()))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(note.__dict__) + "\n")
            fh.flush()
        return note

    def entries(self) -> list[Notification]:
        """Every notification, oldest first (a line cut off by a crash is skipped)."""
        if not self.path.exists():
            return []
        found = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                found.append(Notification(**json.loads(line)))
            except (ValueError, TypeError):
                continue
        return found

    def __call__(self, user: str) -> list[Notification]:
        """``user``'s in-app inbox, oldest first."""
        return [note for note in self.entries() if note.user == user]

    def per_job(self) -> Counter[str]:
        """Notifications per job id (2 means the user heard twice)."""
        return Counter(note.job_id for note in self.entries())

    def __len__(self) -> int:
        return len(self.entries())


def message_for(event: Event, status_url: str | None) -> tuple[str, str]:
    """(state, text) of the notification for a ``job.done`` or ``job.failed`` event."""
    data = event.data or {}
    where = f" See {status_url}." if status_url else ""
    if event.type == JOB_DONE:
        count = len(data.get("results") or {})
        return "succeeded", f"Your image is ready: {count} renditions and a caption.{where}"
    return "failed", f"Sorry, your image could not be processed: {data.get('reason', 'no reason given')}.{where}"


class Notifier:
    """The Notification service: start, kill and restart it; read its inboxes and outbox.

    Everything it wrote lives in ``workdir`` (``inbox.jsonl``, ``outbox.jsonl``), so a new
    ``Notifier`` on the same folder and client id carries on where the old one stopped.
    """

    def __init__(
        self,
        broker: Broker,
        topics: Topics,
        workdir: str | Path,
        *,
        client_id: str | None = None,
        status_base: str | None = None,
    ) -> None:
        self.broker, self.topics = broker, topics
        self.folder = Path(workdir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.client_id = client_id or f"notifier-{uuid.uuid4().hex[:6]}"
        self.status_base = status_base
        """The Upload service's base URL, for a link to the job's status in each message."""
        self.inbox = Inbox(self.folder)
        """The users' inboxes: ``notifier.inbox(user)``, ``notifier.inbox.entries()``."""
        self.inbox_path = self.inbox.path
        self.outbox_path = self.folder / "outbox.jsonl"
        self.notified = {note.job_id for note in self.notifications()}
        """Jobs whose user has an inbox entry: read from the inbox itself, so it is exactly what was written."""
        self.duplicates = 0
        """Finished-job events that found the job already notified (redeliveries, repeated job.done)."""
        self.consumer: Consumer | None = None
        self._life = lifecycle.Restartable()

    @property
    def alive(self) -> bool:
        return self._life.alive

    async def start(self) -> Notifier:
        """Connect with the fixed client id and persistent session; returns once subscribed.

        After a :meth:`kill` this is the restart: the broker hands over what arrived meanwhile.
        """
        if self.alive:
            raise RuntimeError("the notifier is running already; kill() it first")
        await self._life.launch(reconnecting, self._serve)  # a lost connection: connect again, the session resumes
        return self

    async def kill(self) -> Exception | None:
        """Stop the service abruptly (its session stays on the broker); returns the error it had died of, if any."""
        return await self._life.kill()

    def crashed(self) -> BaseException | None:
        """The error the service died of, if it died (a healthy one runs until killed)."""
        return self._life.crashed()

    async def stop(self) -> Exception | None:
        """Kill the service and drop its persistent session (the end of a run); returns what it had died of."""
        error = await self.kill()
        await self.broker.end_sessions(self.client_id)
        return error

    async def _serve(self, ready: asyncio.Event) -> None:
        async with manual_ack(self.broker.client(self.client_id, clean_session=False)) as client:
            self.consumer = Consumer(
                client, self.topics.jobs, self.handle, dead_letter_topic=f"{self.topics.prefix}/dead-letter/notifications"
            )
            await self.consumer.run(ready)

    async def handle(self, event: Event) -> None:
        """Notify the job's user once per finished job; ignore progress."""
        if event.type not in (JOB_DONE, JOB_FAILED):
            return
        data = event.data if isinstance(event.data, dict) else {}
        job_id, user = data.get("job_id"), data.get("user")
        if not isinstance(job_id, str) or not isinstance(user, str):
            raise ValueError(f"{event.type} event {event.id} names no job_id or user")  # dead-lettered by the consumer
        if job_id in self.notified:
            self.duplicates += 1
            return
        status_url = f"{self.status_base}/jobs/{job_id}" if self.status_base else None
        state, text = message_for(event, status_url)
        note = Notification(user, job_id, state, text, iso(now()))
        subject = "Your image is ready" if state == "succeeded" else "Your image could not be processed"
        email = {"to": f"{user}@{EMAIL_DOMAIN}", "subject": subject, "body": text, "job_id": job_id, "at": note.at}
        self._append(self.outbox_path, email)  # a crash after this line: the e-mail goes again, the inbox once
        self._append(self.inbox_path, note.__dict__)  # the inbox entry and the "notified" record: one line, one write
        self.notified.add(job_id)

    @staticmethod
    def _append(path: Path, record: dict[str, Any]) -> None:
        """Append one JSON line with a single ``write`` and flush it to the OS before the event is acknowledged."""
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def notifications(self) -> list[Notification]:
        """Every inbox entry, oldest first (read from the file: what survives a restart is what counts)."""
        return self.inbox.entries()

    def outbox(self) -> list[dict[str, Any]]:
        """Every "e-mail" written, oldest first."""
        if not self.outbox_path.exists():
            return []
        return [json.loads(line) for line in self.outbox_path.read_text().splitlines() if line.strip()]
