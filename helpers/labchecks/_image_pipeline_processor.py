"""Lab 07's question 3, the processor: a part of :mod:`helpers.labchecks.image_pipeline`.

The lab's checks module includes these checks in place (``checks.include(part)``). Each
check runs the learner's ``run_processor()`` like a process (started, killed, restarted),
its MQTT clients watched on the wire.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from helpers.capstone import images
from helpers.capstone.jobs import IMAGE_UPLOADED, JOB_DONE, JOB_FAILED, Topics, done_event_id, failed_event_id
from helpers.capstone.processor import done_marker
from helpers.capstone.wire import Recorder, RecordingStorage
from helpers.core.messaging import Event, make_event, publish
from helpers.core.waiting import until, until_quiet
from helpers.grading.checks import CheckFailed, Checks, Context, expect
from helpers.grading.probes import LoopLag, WireWatch, blocking_message
from helpers.labchecks._image_pipeline_harness import (
    QUIET_S,
    RENDITIONS,
    Loop,
    a_user,
    job_of,
    record_wire,
)

part = Checks("07_image_pipeline")

# --------------------------------------------------------------------------- q3: the processor


class _ProcessorRig:
    """The learner's run_processor under test: started, killed and restarted like a process, watched on the wire."""

    shop: Any
    """The check's own MQTT client, publishing image.uploaded events as the upload service would."""

    def __init__(self, ctx: Context, broker: Any, work: float) -> None:
        self.ctx, self.broker, self.work = ctx, broker, work
        self.topics = Topics.fresh("check07")
        self.storage = RecordingStorage(ctx.tmp_path("check07-") / "storage")
        ctx.on_cleanup(self.storage.stop)
        self.watch = WireWatch(broker, snapshot=lambda: self.storage.stored("processor"))
        self.name = f"processor-{uuid.uuid4().hex[:8]}"
        self.loop = Loop(ctx, "run_processor")
        self.recorder: Recorder | None = None
        self.stack = ctx.exit_stack()
        ctx.forget_session(broker, self.name)
        ctx.on_cleanup(self.stop)

    @classmethod
    async def started(cls, ctx: Context, work: float) -> _ProcessorRig:
        rig = cls(ctx, await ctx.broker(), work)
        rig.recorder = await record_wire(ctx, rig.broker, rig.topics)
        rig.shop = await rig.stack.enter_async_context(rig.broker.client(f"check-upload-{uuid.uuid4().hex[:8]}"))
        await rig.start()
        return rig

    async def start(self) -> None:
        await self.loop.launch(self.watch, self.topics, await self.storage.url("processor"), self.name, work=self.work)

    async def stop(self) -> None:
        await self.loop.stop()

    def crashed(self) -> BaseException | None:
        return self.loop.crashed()

    async def job(self, data: bytes | None = None, user: str | None = None, *, stored: bool = True) -> Event:
        """An image.uploaded event for a new job whose original is stored (as the upload would do it).

        ``stored=False``: the event names an original Storage does not have (fetching it fails with a 404).
        """
        job_id = uuid.uuid4().hex
        key = f"originals/{job_id}"
        photo = data if data is not None else images.sample_photo()
        etag = await self.storage.put(key, photo, "image/jpeg") if stored else '"gone"'
        claim = {"key": key, "etag": etag, "content_type": "image/jpeg"}
        data_ = {"job_id": job_id, "user": user or a_user(self.ctx), "original": claim}
        return make_event(IMAGE_UPLOADED, data_, source="/upload")

    async def send(self, *events: Event) -> None:
        for event in events:
            await publish(self.shop, self.topics.uploaded, event, qos=1)

    def events(self, kind: str, job_id: str) -> list[Event]:
        assert self.recorder is not None, "started() makes the recorder"
        return [e for _, e in self.recorder.events(kind, job_id)]

    def dead_letters(self) -> list[Any]:
        assert self.recorder is not None, "started() makes the recorder"
        found = []
        for record in self.recorder.on(self.topics.dead_letter):
            try:
                found.append(json.loads(record.payload))
            except ValueError:
                found.append(record.payload)
        return found

    async def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Until ``condition()``; a crash of the learner's loop fails the check at once, with its error."""
        await until(lambda: condition() or self.crashed() is not None, timeout)
        error = self.crashed()
        if error is not None:
            raise CheckFailed(f"run_processor() crashed: {type(error).__name__}: {error}")
        return condition()

    async def wait_done(self, job_id: str, timeout: float = 6.0) -> Event:
        if not await self.wait(lambda: bool(self.events(JOB_DONE, job_id)), timeout):
            stored = len(self.storage.stored("processor"))
            raise CheckFailed(
                f"no job.done for the job on topics.done within {timeout:g} s ({stored} object(s) stored by the processor): "
                "fetch the original, process it, store each rendition, then publish job.done"
            )
        return self.events(JOB_DONE, job_id)[0]

    async def wait_handled(self, job_id: str, deliveries: int, timeout: float = 4.0) -> None:
        """Until the processor acknowledged ``deliveries`` messages of the job (or ``timeout``), then quiet."""

        def acked() -> int:
            return sum(d.acked is not None for d in self.watch.on(self.topics.uploaded) if job_of(d.payload) == job_id)

        await self.wait(lambda: acked() >= deliveries, timeout)
        await self.quiet()

    async def quiet(self) -> None:
        assert self.recorder is not None, "started() makes the recorder"
        recorder = self.recorder
        await until_quiet(lambda: (len(recorder.records), len(self.storage.calls)), QUIET_S, 3.0)

    def result_writes(self, results: dict[str, Any]) -> int:
        keys = {str(k) for k in results.values()}
        return sum(c.key in keys for c in self.storage.requests("processor", "PUT"))


def _results(event: Event) -> dict[str, Any]:
    data = event.data if isinstance(event.data, dict) else {}
    results = data.get("results")
    expect(isinstance(results, dict), f"job.done's data should hold results: {{rendition name: storage key}}, got {data!r:.160}")
    return dict(results) if isinstance(results, dict) else {}


@part.check(
    "q3",
    points=2,
    timeout=15,
    hint="fetch the original by its key, process it, store each rendition, then announce job.done",
    code_hint="data, _, _ = await storage.get(key); renditions, caption = await "
    "asyncio.to_thread(images.process_image, data, work=work)",
)
async def processes_an_image(ctx: Context) -> str:
    """An image.uploaded event becomes stored renditions and one job.done naming them."""
    rig = await _ProcessorRig.started(ctx, work=0.2)
    user = a_user(ctx)
    event = await rig.job(user=user)
    job_id = event.data["job_id"]
    await rig.send(event)
    done = await rig.wait_done(job_id)
    await rig.quiet()
    expect(len(rig.events(JOB_DONE, job_id)) == 1, f"{len(rig.events(JOB_DONE, job_id))} job.done events for one job, expected 1")
    data = done.data if isinstance(done.data, dict) else {}
    expect(data.get("user") == user, f"job.done's data.user is {data.get('user')!r}, expected {user!r} (the notifier needs it)")
    results = _results(done)
    missing = [name for name in RENDITIONS if name not in results]
    expect(not missing, f"job.done's results lack {', '.join(missing)}: name every rendition process_image returned")
    stored = rig.storage.stored("processor")
    absent = [str(key) for key in results.values() if key not in stored or not rig.storage.read(str(key))]
    expect(not absent, f"job.done names keys the processor never stored: {', '.join(absent[:3])}")
    expect(
        done.id == done_event_id(job_id),
        f"job.done's event id is {done.id!r}, expected done_event_id(job_id): a fixed id makes a republished job.done "
        "recognizable as the same event",
    )
    caption = data.get("caption")
    expect(isinstance(caption, str) and caption, "job.done's data should hold the caption process_image returned")
    return f"{len(results)} renditions stored, 1 job.done"


@part.check(
    "q3",
    timeout=15,
    hint="the ack promises the work is done: QoS 1, acks only when you say so, and say so last",
    code_hint="await process_job(...); ack(client, message)  # client = manual_ack(broker.client(name, clean_session=False))",
)
async def acks_after_storing(ctx: Context) -> str:
    """Each image.uploaded arrives at QoS 1 and is acknowledged only once its results are stored."""
    rig = await _ProcessorRig.started(ctx, work=0.1)
    events = [await rig.job(), await rig.job()]
    await rig.send(*events)
    done = {e.data["job_id"]: await rig.wait_done(e.data["job_id"]) for e in events}
    for job_id in done:
        await rig.wait_handled(job_id, 1, 2.0)
    deliveries = [d for d in rig.watch.deliveries if d.topic == rig.topics.uploaded]
    expect(
        not any(d.qos == 0 for d in deliveries),
        "image.uploaded arrived at QoS 0: a QoS 0 message is never acknowledged nor resent, so a crash loses it "
        "(subscribe with qos=1)",
    )
    early, never = [], []
    for job_id, event in done.items():
        delivery = [d for d in rig.watch.on(rig.topics.uploaded) if job_of(d.payload) == job_id][0]
        if delivery.acked is None:
            never.append(job_id)
        elif not {str(k) for k in _results(event).values()} <= set(delivery.seen_at_ack or ()):
            early.append(job_id)
    how = " (the client acknowledges on receipt: wrap it with manual_ack(...))" if rig.watch.auto_acking() else ""
    expect(
        not early,
        f"ack before storing: {len(early)} of {len(done)} images were acknowledged before their results were stored{how}; "
        "if the worker dies in between, the broker forgets the image and it is never processed",
    )
    expect(
        not never, f"{len(never)} of {len(done)} messages were never acknowledged: call ack(client, message) once the job is done"
    )
    return f"{len(done)} images, each acknowledged after its results were stored"


@part.check(
    "q3",
    timeout=15,
    hint="before the work, look for the job's done marker in Storage; write it after job.done",
    code_hint="if await storage.exists(done_marker(job_id)): return  ...  await "
    'storage.put(done_marker(job_id), b\'{"state": "done"}\', ...)',
)
async def same_event_twice_is_done_once(ctx: Context) -> str:
    """The same image.uploaded event delivered twice is processed once: one set of results, one job.done."""
    rig = await _ProcessorRig.started(ctx, work=0.1)
    event = await rig.job()
    job_id = event.data["job_id"]
    await rig.send(event)
    results = _results(await rig.wait_done(job_id))
    await rig.wait_handled(job_id, 1)
    await rig.send(event)  # the broker delivers it again: a redelivery after a crash looks exactly like this
    await rig.wait_handled(job_id, 2)
    dones, writes = len(rig.events(JOB_DONE, job_id)), rig.result_writes(results)
    expect(
        dones == 1 and writes == len(results),
        f"no idempotency: the same image.uploaded event, delivered twice, was processed twice ({dones} job.done, {writes} "
        f"result writes for {len(results)} renditions); check the job's done marker in Storage before doing the work",
    )
    return "1 job.done, 1 set of results for 2 deliveries"


@part.check(
    "q3",
    timeout=15,
    hint="a failed image is an outcome, not a crash: job.failed and a dead letter, then carry on",
    code_hint="except Exception as exc: publish dead_letter_payload(...) on topics.dead_letter, "
    "job.failed on topics.failed, write the marker",
)
async def failure_ends_failed_with_a_dead_letter(ctx: Context) -> str:
    """A failed fetch or transform ends once as job.failed and a dead letter, a non-event as a dead letter; the worker goes on."""
    rig = await _ProcessorRig.started(ctx, work=0.1)
    bad, gone, good = await rig.job(images.truncated_jpeg()), await rig.job(stored=False), await rig.job()
    bad_id, gone_id, good_id = (e.data["job_id"] for e in (bad, gone, good))
    garbage = f"not an event {uuid.uuid4().hex}".encode()
    await rig.send(bad, gone)
    await rig.shop.publish(rig.topics.uploaded, garbage, qos=1)
    await rig.send(good)
    await rig.wait(
        lambda: (
            bool(rig.events(JOB_FAILED, bad_id) and rig.events(JOB_FAILED, gone_id) and rig.events(JOB_DONE, good_id))
            and len(rig.dead_letters()) >= 3
        ),
        6.0,
    )
    await rig.quiet()
    failed = rig.events(JOB_FAILED, bad_id)
    expect(failed, "no job.failed on topics.failed for the image that cannot be processed (a truncated JPEG): the user must hear")
    expect(len(failed) == 1, f"{len(failed)} job.failed events for one job, expected 1")
    reason = (failed[0].data or {}).get("reason")
    expect(
        failed[0].id == failed_event_id(bad_id), f"job.failed's event id is {failed[0].id!r}, expected failed_event_id(job_id)"
    )
    expect(isinstance(reason, str) and reason, "job.failed's data should say why (a 'reason')")
    expect(not rig.events(JOB_DONE, bad_id), "the image that cannot be processed got a job.done")
    expect(
        rig.events(JOB_FAILED, gone_id),
        "no job.failed for the image whose original cannot be fetched (Storage answers 404): a failing fetch ends the job "
        "as failed too",
    )
    dead = rig.dead_letters()
    expect(
        len(dead) == 3,
        f"{len(dead)} dead letters on topics.dead_letter for 2 failed jobs and a payload that is not an event, expected 3 "
        "(dead_letter_payload(...) with the reason)",
    )
    unacked = [d for d in rig.watch.on(rig.topics.uploaded) if d.payload == garbage and d.acked is None]
    expect(not unacked, "the payload that is not an event was never acknowledged: dead-letter it, then ack it")
    expect(
        isinstance(dead[0], dict) and dead[0].get("reason"),
        f"the dead letter should be dead_letter_payload(...) with a reason, got {dead[0]!r:.120}",
    )
    expect(rig.events(JOB_DONE, good_id), "the next image was not processed after the failing one: the worker must carry on")
    await rig.send(bad)  # the failed image delivered again (a redelivery, a retry): the user must not hear twice
    await rig.wait_handled(bad_id, 2)
    again = len(rig.events(JOB_FAILED, bad_id))
    expect(
        again == 1 and len(rig.dead_letters()) == 3,
        f"the failed image, delivered again, failed again ({again} job.failed, {len(rig.dead_letters())} dead letters): "
        "write the done marker on the failure path too, so the user hears once",
    )
    return f"job.failed ({str(reason)[:60]}), a failed fetch too, once each; 3 dead letters; the next image done"


@part.check(
    "q3",
    timeout=15,
    hint="the done marker says the job was finished and announced: it is the last step",
    code_hint="store the renditions, publish job.done, and only then await storage.put(done_marker(job_id), ...)",
)
async def marker_written_last(ctx: Context) -> str:
    """Killed right after writing the done marker, then restarted: the job was already stored and announced, once."""
    rig = await _ProcessorRig.started(ctx, work=0.1)
    event = await rig.job()
    job_id = event.data["job_id"]
    marker = done_marker(job_id)
    gate = rig.storage.hold("processor", "PUT", marker)  # the marker lands; the processor hears nothing back yet
    ctx.callback(gate.set)
    await rig.send(event)
    if not await rig.wait(lambda: rig.storage.head(marker) is not None, 8.0):
        raise CheckFailed(f"no done marker ({marker}) in Storage within 8 s: write it once the job is done and announced")
    results = [c for c in rig.storage.requests("processor", "PUT") if c.key.startswith(f"results/{job_id}/")]
    await rig.stop()  # killed between writing the marker and its next step
    gate.set()
    await rig.start()  # the same session: the unacknowledged image comes again, and meets the marker
    await rig.wait_handled(job_id, 1, 6.0)
    dones = len(rig.events(JOB_DONE, job_id))
    when = "before the work (no result stored yet)" if not results else "before job.done"
    expect(
        dones >= 1,
        f"killed right after writing the done marker, the job was never announced: the marker was written {when}, so the "
        "restarted processor skipped a job no one heard of; write the marker last, after job.done",
    )
    expect(dones == 1, f"{dones} job.done events for one job, expected 1")
    return "killed right after the marker: the job had been stored and announced, 1 job.done"


@part.check(
    "q3",
    timeout=15,
    hint="CPU work belongs in a thread: the event loop must keep serving everything else meanwhile",
    code_hint="await asyncio.to_thread(images.process_image, data, work=work)",
)
async def keeps_the_event_loop_free(ctx: Context) -> str:
    """While an image is processed, the event loop keeps running (the work is in a thread)."""
    rig = await _ProcessorRig.started(ctx, work=0.8)  # long enough that a pause of half of it is no scheduling hiccup
    ticker = LoopLag().start()
    ctx.on_cleanup(ticker.close)
    event = await rig.job()
    job_id, key = event.data["job_id"], event.data["original"]["key"]
    await rig.send(event)
    results = _results(await rig.wait_done(job_id, 10.0))
    ticker.stop()
    fetched = rig.storage.requests("processor", "GET", key=key)
    stores = [c.started for c in rig.storage.requests("processor", "PUT") if c.key in {str(k) for k in results.values()}]
    expect(fetched and stores, "could not see the processing: fetch the original from Storage and store the renditions there")
    start, end = fetched[0].ended, min(stores)
    length = end - start
    expect(length > 0, "the results were stored before the original was fetched")
    pause = ticker.longest_between(start, end)
    expect(
        pause < 0.5 * length,
        blocking_message(f"your processor, working on the image for {length:.2f} s,", pause)
        + " (here: run process_image with await asyncio.to_thread(...))",
    )
    return f"longest pause {pause * 1000:.0f} ms while the image took {length:.2f} s"


@part.check(
    "q3",
    timeout=15,
    hint="dedupe on the job (its done marker), not on the event id",
    code_hint="if await storage.exists(done_marker(job_id)): return  # job_id = event.data['job_id'], not event.id",
)
async def retried_upload_event_is_done_once(ctx: Context) -> None:
    """The same job's image.uploaded sent again as a new event (a publisher retry) is processed once."""
    rig = await _ProcessorRig.started(ctx, work=0.1)
    event = await rig.job()
    job_id = event.data["job_id"]
    await rig.send(event)
    results = _results(await rig.wait_done(job_id))
    await rig.wait_handled(job_id, 1)
    await rig.send(make_event(IMAGE_UPLOADED, event.data, source="/upload"))  # same job, a new event id
    await rig.wait_handled(job_id, 2)
    dones, writes = len(rig.events(JOB_DONE, job_id)), rig.result_writes(results)
    expect(
        dones == 1 and writes == len(results),
        f"no idempotency: the same job, published again as a new event, was processed again ({dones} job.done); "
        "the done marker belongs to the job, not to one event",
    )


@part.check("q3", hidden=True, timeout=20, hint="the done marker lives in Storage, so a restarted processor still sees it")
async def remembers_done_jobs_across_a_restart(ctx: Context) -> None:
    """Hidden: after a restart, an event for a job done before the restart is not processed again."""
    rig = await _ProcessorRig.started(ctx, work=0.1)
    event = await rig.job()
    job_id = event.data["job_id"]
    await rig.send(event)
    await rig.wait_done(job_id)
    await rig.wait_handled(job_id, 1)
    await rig.stop()  # killed
    await rig.start()  # and back, with an empty memory
    await rig.send(event)
    await rig.wait_handled(job_id, 2)
    dones = len(rig.events(JOB_DONE, job_id))
    expect(
        dones == 1,
        f"after a restart the same job was processed again ({dones} job.done): keep the done marker in Storage, not in memory",
    )
