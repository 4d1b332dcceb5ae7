"""Lesson 06's drills: the hybrid keeps every job through a worker outage, a jobs-service restart and a dead worker.

Run on the embedded broker (``pytest tests/test_hybrid_drills.py``) and on Mosquitto
(``python -m helpers mosquitto -- pytest tests/test_hybrid_drills.py``). Every test counts
jobs accepted, done, duplicated and lost; the outages are real (clients disconnected, the
store closed), the waits are on conditions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from helpers.choosing.hybrid import FAILED, SUCCEEDED, HybridSystem, quick_steps, request, start_hybrid, submit
from helpers.choosing.hybrid.drills import jobs_service_restarted, worker_died_mid_step, workers_down_during_kickoff
from helpers.core.broker import Broker
from tests.test_choosing import start_job

pytestmark = pytest.mark.broker


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def system(broker: Broker) -> AsyncIterator[HybridSystem]:
    running = await start_hybrid(broker, start_job, steps=quick_steps(0.5), name="drill")
    yield running
    await running.stop()


async def test_a_job_accepted_while_every_worker_is_down_is_done_when_they_return(
    system: HybridSystem, http: aiohttp.ClientSession
) -> None:
    drill = await workers_down_during_kickoff(system, http, count=6, down_s=0.5)
    assert drill.notes["while down"] == {"accepted": 6}, "nothing ran while the workers were down"
    assert (drill.accepted, drill.done, drill.duplicated, drill.lost) == (6, 6, 0, 0), drill.row()
    assert drill.durable
    assert system.agent.starts == 2


async def test_a_restart_of_the_jobs_service_keeps_every_job(system: HybridSystem, http: aiohttp.ClientSession) -> None:
    url = system.url
    drill = await jobs_service_restarted(system, http, count=6, down_s=1.5)  # longer than a job (about 0.9 s)
    assert drill.notes["status codes right after"].keys() <= {200, 303}, f"no 404 after the restart: {drill.notes}"
    assert (drill.accepted, drill.done, drill.duplicated, drill.lost) == (6, 6, 0, 0), drill.row()
    assert system.url == url
    assert system.restarts == 1
    assert drill.notes["finished while the service was down"] > 0, drill.notes
    # those jobs' last events were published while nobody read them: only the status keeper's session kept them
    old = await request(http, "GET", f"{url}/jobs/{system.board.store.job_ids()[0]}/events")
    assert old.status == 200
    assert '"state":"accepted"' in str(old.body), "the event stream replays from the first change"


async def test_a_step_whose_worker_died_is_delivered_again(system: HybridSystem, http: aiohttp.ClientSession) -> None:
    drill = await worker_died_mid_step(system, http, step="research", come_back=True)
    assert drill.notes["attempts at research"] == 2, drill.notes
    assert (drill.accepted, drill.done, drill.duplicated, drill.lost) == (1, 1, 0, 0), drill.row()


async def test_a_job_past_its_deadline_fails_with_its_reason(broker: Broker, http: aiohttp.ClientSession) -> None:
    system = await start_hybrid(broker, start_job, steps=quick_steps(0.5), deadline_s=1.5, name="deadline")
    try:
        drill = await worker_died_mid_step(system, http, step="draft", come_back=False)
        assert (drill.accepted, drill.done, drill.failed, drill.lost) == (1, 0, 1, 0), drill.row()
        assert drill.notes["state"] == FAILED
        assert "deadline of 1.5 s" in drill.notes["reason"]
        assert "step 'draft'" in drill.notes["reason"]
        assert system.board.expired == 1
        late = await submit(http, system.url, "after the outage")  # the workers are back: new jobs run as before
        assert (await system.finished(late.body["job_id"])).state == SUCCEEDED
        assert drill.notes["state"] == next(j for j in system.board if j.state == FAILED).state, "the late step revived nothing"
    finally:
        await system.stop()


async def test_the_outbox_sends_a_work_order_the_broker_could_not_take(system: HybridSystem, http: aiohttp.ClientSession) -> None:
    publisher = system.board.publisher
    system.board.publisher = _Refusing()  # type: ignore[assignment]  # a broker connection that refuses every publish
    try:
        accepted = await submit(http, system.url, "queued while the broker refused")
        assert accepted.status == 202, "the job is stored with its order: accepted, not a 503"
        assert len(system.board.store.pending()) == 1
    finally:
        system.board.publisher = publisher
    job = await system.finished(accepted.body["job_id"])  # the housekeeping relay sent it once the broker took it
    assert job.state == SUCCEEDED
    assert system.board.store.pending() == []


class _Refusing:
    pending_calls_threshold = 1000

    async def publish(self, *args: object, **kwargs: object) -> None:
        raise OSError("the broker refused the publish")


async def test_a_work_order_sent_again_by_the_outbox_runs_once(system: HybridSystem, http: aiohttp.ClientSession) -> None:
    """The relay published, then died before marking the row: after a restart it sends the order again."""
    publisher = system.board.publisher
    assert publisher is not None
    system.board.publisher = _Refusing()  # type: ignore[assignment]  # hold the order in the outbox for a moment
    try:
        accepted = await submit(http, system.url, "sent twice")
        [order] = system.board.store.pending()
    finally:
        system.board.publisher = publisher
    job = await system.finished(accepted.body["job_id"])  # the relay sent it once...
    assert job.state == SUCCEEDED
    assert system.agent.attempts[job.job_id, "plan"] == 1
    await publisher.publish(order.topic, order.payload, qos=1)  # ...and here it comes again, same event id
    marker = await submit(http, system.url, "after the repeat")  # behind it on the same topic: done after the repeat
    await system.finished(marker.body["job_id"])
    assert system.agent.attempts[job.job_id, "plan"] == 1, "the plan worker skipped the order it had already done"
    assert [r.step for r in system.agent.runs_of(job.job_id)] == ["plan", "research", "draft", "review"]


async def test_a_system_started_on_an_old_work_folder_takes_over_its_jobs(
    broker: Broker, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    first = await start_hybrid(broker, start_job, steps=quick_steps(0.2), name="first", work_dir=tmp_path)
    accepted = await submit(http, first.url, "kept in the folder")
    done = await first.finished(accepted.body["job_id"])
    await first.stop()
    assert (tmp_path / "jobs.sqlite3").exists(), "a folder the caller chose is kept"
    second = await start_hybrid(broker, start_job, steps=quick_steps(0.2), name="second", work_dir=tmp_path)
    try:
        assert second.topics == first.topics, "the topics (and so the sessions) come from the folder"
        status = await request(http, "GET", f"{second.url}{accepted.location}")
        assert status.status == 303
        assert (await second.finished(done.job_id)).result == done.result
    finally:
        await second.stop()
    temporary = await start_hybrid(broker, start_job, steps=quick_steps(0.2), name="temporary")
    await temporary.stop()
    assert not temporary.work_dir.exists(), "a temporary work folder is removed at stop()"
