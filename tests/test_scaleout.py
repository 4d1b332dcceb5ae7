"""Appendix 08: capstone services as processes (python -m helpers serve capstone-*), on a real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from helpers.capstone import images, scaleout, slot_drill
from helpers.core.loop_lag import LoopLag
from helpers.core.mosquitto import find_mosquitto

try:
    find_mosquitto()
    HAVE_MOSQUITTO = True
except FileNotFoundError:
    HAVE_MOSQUITTO = bool(os.environ.get("MQTT_URL"))


def _running(pids: list[int]) -> list[int]:
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


needs_broker = pytest.mark.skipif(not HAVE_MOSQUITTO, reason="needs Mosquitto installed or MQTT_URL set")


@pytest.fixture
async def mosquitto_front(tmp_path: Path) -> AsyncIterator[tuple[Any, Any]]:
    """A real broker (Mosquitto, or MQTT_URL's) and the capstone's front services on it, stopped after."""
    real = await scaleout.start_real_broker()
    front = await scaleout.start_front(real.broker, tmp_path)
    try:
        yield real, front
    finally:
        await front.stop()
        await real.stop()


async def _upload_and_wait(front: scaleout.Front, n: int) -> None:
    photo = images.generated_image(7, size=(320, 240), fmt="JPEG")
    answers = [await front.post(photo, f"user-{i}") for i in range(n)]
    assert [a.status for a in answers] == [202] * n
    assert await front.wait_finished([a.job_id for a in answers if a.job_id], timeout=60)


@needs_broker
@pytest.mark.asyncio
@pytest.mark.broker
async def test_worker_processes_share_one_subscription_and_finish_every_job(mosquitto_front: tuple[Any, Any]) -> None:
    real, front = mosquitto_front
    async with scaleout.worker_processes(front, 2, mqtt_url=real.url, work=0.0) as workers:
        assert len(set(workers.pids)) == 2
        assert os.getpid() not in workers.pids
        result = await scaleout.measure(front, workers, _upload_and_wait, 6, warmup=2)
        alive = _running(workers.pids)
    assert result.images == 6
    assert result.images_per_s > 0
    assert result.cores_busy > 0
    assert alive == workers.pids, "both workers ran until the block ended"
    assert not _running(workers.pids), "the block waited for every process to exit"
    assert {job.state for job in front.upload_service.store} == {"succeeded"}
    assert len(front.upload_service.store) == 8


@needs_broker
@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_worker_process_that_cannot_start_says_why(mosquitto_front: tuple[Any, Any]) -> None:
    real, front = mosquitto_front
    with pytest.raises(RuntimeError, match=r"did not start .*cannot load 'no.such:model'"):
        async with scaleout.worker_processes(front, 1, mqtt_url=real.url, caption="no.such:model"):
            pass


def test_a_processor_process_refuses_the_embedded_broker() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MQTT_URL"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    run = subprocess.run(
        [sys.executable, "-m", "helpers", "serve", "capstone-processor", "--topics", "t", "--storage-url", "http://127.0.0.1:9"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0
    assert "set MQTT_URL" in run.stderr


def test_an_unknown_capstone_service_is_named() -> None:
    from helpers.tools import serve

    with pytest.raises(SystemExit, match="unknown capstone service 'capstone-nope'"):
        serve.main(["capstone-nope"])


@pytest.mark.asyncio
async def test_loop_lag_sees_a_blocked_event_loop() -> None:
    async with LoopLag() as lag:
        await asyncio.sleep(0.02)
        time.sleep(0.1)  # noqa: ASYNC251 - on purpose: the classic mistake the probe must see
        await asyncio.sleep(0.02)
    assert lag.longest >= 0.08


def test_the_python_caption_model_is_pure_python_work() -> None:
    img = images.open_upright(images.sample_photo())
    began = time.process_time()
    text = scaleout.python_caption(img, rounds=5)
    assert "bright" in text
    assert time.process_time() - began < 5


def _run(design: str, workers: int, images_per_s: float) -> scaleout.Throughput:
    return scaleout.Throughput(design, workers, images=8, seconds=8 / images_per_s, cores_busy=1.0, loop_lag_ms=1.0)


def test_every_point_of_two_plots_on_a_shared_y_axis_stays_visible() -> None:
    import matplotlib.pyplot as plt

    low = [_run(d, n, 2.0 + n / 10) for d in (scaleout.IN_KERNEL, scaleout.PROCESSES) for n in (1, 2)]
    high = [_run(scaleout.IN_KERNEL, 1, 2.8), _run(scaleout.PROCESSES, 2, 5.33)]
    fig, (left, right) = plt.subplots(1, 2, sharey=True)
    try:
        scaleout.plot_scaling(low, cores=2, ax=left)
        scaleout.plot_scaling(high, cores=2, ax=right)
        for ax, runs in ((left, low), (right, high)):
            assert ax.get_ylim()[1] > max(r.images_per_s for r in runs), "the highest point is clipped"
    finally:
        plt.close(fig)


def test_a_slot_has_one_client_id_per_run() -> None:
    from helpers.capstone.jobs import Topics
    from helpers.capstone.services import slot_session

    run, other = Topics("beyond/abc"), Topics("beyond/def")
    assert slot_session(run, "processor-1") == slot_session(run, "processor-1") == "beyond-abc-processor-1"
    assert slot_session(other, "processor-1") != slot_session(run, "processor-1") != slot_session(run, "processor-2")


@needs_broker
@pytest.mark.asyncio
@pytest.mark.broker
async def test_kill_9_a_worker_process_restart_its_slot_every_job_done_none_twice(mosquitto_front: tuple[Any, Any]) -> None:
    real, front = mosquitto_front
    async with scaleout.worker_processes(front, 2, mqtt_url=real.url, work=0.2) as workers:
        assert workers.client_ids["processor-1"].endswith("-processor-1")
        killed_pid = workers.procs["processor-1"].pid
        drill = await slot_drill.kill_drill(front, workers, 6, while_away=2, quiet=3.0)
        assert workers.procs["processor-1"].returncode is None
        assert workers.procs["processor-1"].pid != killed_pid
    assert drill.accepted == 8
    assert drill.held_in_flight >= 1, "the killed process held messages: the drill must exercise its session"
    assert drill.held_new >= 1, "Mosquitto hands the dead member its turn of the new jobs too"
    assert (drill.done, drill.duplicated, drill.lost) == (8, 0, 0), drill


@needs_broker
@pytest.mark.asyncio
@pytest.mark.broker
async def test_sigterm_a_worker_process_restart_its_slot_every_job_done(mosquitto_front: tuple[Any, Any]) -> None:
    real, front = mosquitto_front
    async with scaleout.worker_processes(front, 2, mqtt_url=real.url, work=0.2) as workers:
        drill = await slot_drill.kill_drill(front, workers, 6, graceful=True, quiet=3.0)
    assert drill.how == "SIGTERM", "the stopped process kept its session, and what it held"
    assert drill.held >= 1, "the stopped process kept its session, and what it held"
    assert (drill.done, drill.duplicated, drill.lost) == (6, 0, 0), drill


@needs_broker
@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_process_without_a_slot_drops_what_it_held_when_it_stops(mosquitto_front: tuple[Any, Any]) -> None:
    real, front = mosquitto_front
    workers = scaleout.WorkerProcesses(
        scaleout.PROCESSES,
        2,
        front=front,
        command=lambda slot: scaleout.worker_command(front, work=0.2),  # no --slot: each process takes fresh ids
        env={**os.environ, "MQTT_URL": real.url, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    try:
        await workers.start_all(["processor-1", "processor-2"])
        assert not any(cid.endswith("-processor-1") for cid in workers.client_ids.values())
        drill = await slot_drill.kill_drill(front, workers, 6, graceful=True, restart=False, while_away=2, quiet=3.0)
        assert drill.held_in_flight >= 1, "the dropped session took them along"
        assert drill.lost == drill.held_in_flight, "the dropped session took them along"
        assert drill.held_new == 0, "a member that dropped its session is out of the group: new jobs go to the others"
    finally:
        await workers.stop()


@needs_broker
@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_slot_killed_and_not_restarted_keeps_its_jobs_waiting(mosquitto_front: tuple[Any, Any]) -> None:
    real, front = mosquitto_front
    async with scaleout.worker_processes(front, 2, mqtt_url=real.url, work=0.2) as workers:
        drill = await slot_drill.kill_drill(front, workers, 6, while_away=2, restart=False, quiet=3.0)
        await workers.start("processor-3")  # a new process with a NEW id: not the dead one's session
        assert not await front.wait_finished([j.job_id for j in front.upload_service.store], timeout=5)
    assert drill.held >= 2
    assert drill.lost == drill.held
    assert drill.done == drill.accepted - drill.held
    assert drill.finish_after_restart_s is None
    unfinished = [job for job in front.upload_service.store if not job.final]
    assert len(unfinished) == drill.held, "a worker with a new client id took none of them"
