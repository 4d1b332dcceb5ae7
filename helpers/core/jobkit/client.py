"""The client side of the async-job convention (:mod:`.http`): one exchange as the client saw it,
a poller that honors ``Retry-After``, a server-sent-events reader.

Redirects are never followed for the caller: a poller sees the ``303`` itself and GETs the
result it points to, as the status resource asks. Lesson 06's clients and checks use these.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from helpers.core.jobkit.http import RETRY_AFTER_S
from helpers.core.jobkit.store import FINAL, JobState
from helpers.core.problems import PROBLEM_JSON

SUCCEEDED = JobState.SUCCEEDED


def distinct(states: Iterable[str | None]) -> list[str]:
    """``states`` with repeats in a row removed: the state *changes* a watcher saw."""
    seen: list[str] = []
    for state in states:
        if state is not None and (not seen or seen[-1] != state):
            seen.append(state)
    return seen


@dataclass(frozen=True)
class Answer:
    """One HTTP exchange as the client saw it (redirects are never followed for it)."""

    method: str
    url: str
    status: int
    headers: dict[str, str]
    body: Any
    """The JSON body (problem+json included), or the text when it is not JSON."""
    sent: float
    at: float

    @property
    def seconds(self) -> float:
        return self.at - self.sent

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()

    @property
    def state(self) -> str | None:
        """The job state the body reports (a 303 from the status resource means ``succeeded``)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("state"), str):
            return str(self.body["state"])
        return SUCCEEDED if self.status == 303 else None

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")

    def job_id(self) -> str:
        """The job a ``202 Accepted`` made; any other answer is one a client cannot go on from (:class:`PollError`)."""
        if self.status != 202 or not isinstance(self.body, dict) or "job_id" not in self.body:
            raise PollError(f"{self.method} {self.url} answered {self.status}: {str(self.body)[:120]}")
        return str(self.body["job_id"])

    def retry_after(self, default: float = RETRY_AFTER_S) -> float:
        """``Retry-After`` in seconds (delay-seconds form), or ``default``."""
        value = self.headers.get("Retry-After", "")
        return float(value) if value.isdigit() else default


def resolve(base_url: str, reference: str) -> str:
    """A Location (absolute, or relative to the service) as an absolute URL."""
    return str(URL(base_url).join(URL(reference)))


async def request(http: aiohttp.ClientSession, method: str, url: str, *, timeout: float = 10.0, **kwargs: Any) -> Answer:
    """One HTTP request, read in full; redirects are not followed (the caller sees the 303 itself)."""
    sent = time.monotonic()
    async with http.request(
        method, url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout), **kwargs
    ) as response:
        text = await response.text()
        at = time.monotonic()
        body: Any = text
        if text and response.content_type in ("application/json", PROBLEM_JSON):
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        return Answer(method, url, response.status, dict(response.headers), body, sent, at)


class PollError(RuntimeError):
    """The status resource answered something a poller cannot go on with."""


@dataclass
class Polled:
    """What one polling client did and learned, from the 202 to the job's end."""

    answers: list[Answer]
    """Every request after the 202, in order: status GETs, then the result GET."""
    states: list[str]
    """The state changes it saw, the 202's ``accepted`` first."""
    outcome: str
    result: Any
    learned_at: float
    """When it knew the outcome (``time.monotonic()``)."""

    @property
    def requests(self) -> int:
        return len(self.answers)


async def poll_job(
    http: aiohttp.ClientSession, base_url: str, accepted: Answer, *, every_s: float | None = None, timeout: float = 60.0
) -> Polled:
    """Follow a job from its 202 to its end: GET the status at the Location, wait as ``Retry-After`` says
    (or every ``every_s`` seconds, ignoring it), and on a ``303`` GET the result it points to."""
    location = accepted.location
    if accepted.status != 202 or not location:
        raise PollError(f"expected a 202 with a Location, got {accepted.status} (Location: {location!r})")
    status_url = resolve(base_url, location)
    answers: list[Answer] = []
    seen: list[str | None] = [accepted.state]
    deadline = time.monotonic() + timeout
    wait = accepted.retry_after() if every_s is None else every_s
    while time.monotonic() < deadline:
        await asyncio.sleep(wait)  # the protocol's own clock: the server said when to ask again
        answer = await request(http, "GET", status_url)
        answers.append(answer)
        seen.append(answer.state)
        if answer.status == 303 and answer.location:
            result = await request(http, "GET", resolve(status_url, answer.location))
            answers.append(result)
            body = result.body if isinstance(result.body, dict) else {}
            return Polled(answers, distinct(seen), SUCCEEDED, body.get("result"), answer.at)
        if answer.status != 200:
            raise PollError(f"GET {status_url} answered {answer.status}: {str(answer.body)[:120]}")
        if answer.state in FINAL:
            return Polled(answers, distinct(seen), str(answer.state), None, answer.at)
        wait = answer.retry_after() if every_s is None else every_s
    raise PollError(f"the job at {status_url} did not end within {timeout:g} s")


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event as the client parsed it."""

    id: str | None
    event: str
    data: str
    at: float

    def json(self) -> Any:
        return json.loads(self.data)


async def read_events(
    http: aiohttp.ClientSession, url: str, *, last_event_id: str | None = None, timeout: float = 60.0
) -> list[SseEvent]:
    """Read a ``text/event-stream`` until the server closes it (the job ended); parse it as the SSE spec says."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    events: list[SseEvent] = []
    async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as stream:
        if stream.status != 200 or stream.content_type != "text/event-stream":
            raise PollError(f"GET {url} answered {stream.status} {stream.content_type}, not an event stream")
        data: list[str] = []
        kind, last_id = "message", last_event_id
        async for raw in stream.content:
            line = raw.decode().rstrip("\n").rstrip("\r")
            if not line:  # a blank line ends an event
                if data:
                    events.append(SseEvent(last_id, kind, "\n".join(data), time.monotonic()))
                data, kind = [], "message"
                continue
            if line.startswith(":"):  # a comment (keep-alive)
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                kind = value
            elif name == "id":
                last_id = value
    return events
