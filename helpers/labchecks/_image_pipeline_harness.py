"""Lab 07's harness, shared by its checks (:mod:`helpers.labchecks.image_pipeline` and its parts).

The limits the checks keep, a user of the check's own, every message of a run recorded, the
job an event names, why a restarted consumer lost messages (from what
:class:`helpers.grading.probes.WireWatch` saw), the learner's three services composed, and
one of the learner's consumer loops run like a process. Not a lab (the underscore): the
grader lists only ``labchecks/<slug>.py`` files as labs.
"""

from __future__ import annotations

import uuid
from typing import Any

from helpers.capstone import images
from helpers.capstone.assembly import LearnerSystem, start_system
from helpers.capstone.jobs import Topics
from helpers.capstone.wire import Recorder, start_recorder
from helpers.core import lifecycle
from helpers.core.messaging import InvalidEvent, decode
from helpers.grading.checks import CheckFailed, Context, expect, outcome
from helpers.grading.probes import WireWatch

START_S = 8.0
"""Time limit for starting one of the learner's loops (lifecycle.start gives up on `ready` after 5 s)."""
QUIET_S = 0.2
""""And then nothing more happens": how long messages, Storage calls and notifications must stay still."""
REFERENCE_MAX_BYTES = 4096
"""An image.uploaded event that carries a reference is well under 1 KB; the sample photo alone is 61 KB."""
RENDITIONS = (*(f"thumb-{size}" for size in images.THUMBNAIL_SIZES), images.FILTER_NAME)
"""The renditions process_image returns, by name: job.done's ``results`` maps each to its storage key."""
SERVICES = "make_upload_handler(), run_processor() or run_notifier()"
HOSTILE_HEADERS = {"Content-Type": "image/jpeg", "Content-Disposition": 'attachment; filename="holiday.jpg"'}


def a_user(ctx: Context) -> str:
    return f"{ctx.rng.choice(['ada', 'bea', 'cyd', 'dev', 'eli', 'fox'])}{ctx.rng.randint(10, 9999)}"


async def record_wire(ctx: Context, broker: Any, topics: Topics) -> Recorder:
    """Every message on the run's topics, from now until the check ends."""
    wire = await start_recorder(broker, topics, name=f"check-recorder-{uuid.uuid4().hex[:8]}")
    ctx.on_cleanup(wire.stop)
    return wire.recorder


def kb(size: int) -> str:
    return f"{size / 1024:.0f} KB" if size >= 1024 else f"{size} bytes"


def job_of(payload: bytes) -> str | None:
    """The job id an event's data names (None for anything else)."""
    try:
        data = decode(payload).data
    except InvalidEvent:
        return None
    job_id = data.get("job_id") if isinstance(data, dict) else None
    return job_id if isinstance(job_id, str) else None


# --------------------------------------------------------------------------- watching the learner's clients


def session_problem(watch: WireWatch, name: str) -> str | None:
    """Why a restarted consumer lost what was published while it was down, if the wire says so."""
    receivers = watch.receivers() or watch.clients
    if any(c.clean_session for c in receivers):
        return (
            "a clean session forgets what was sent while it was down: connect with "
            f"broker.client(name, clean_session=False) so the broker keeps the messages for the session {name!r}"
        )
    ids = sorted({c.client_id for c in receivers})
    if ids and ids != [name]:
        return (
            f"your client id was {', '.join(repr(i) for i in ids)} rather than the name given ({name!r}): the broker "
            "keeps messages for a session, and a new client id is a new session"
        )
    if any(d.qos == 0 for d in watch.deliveries):
        return (
            "messages arrived at QoS 0, which the broker neither keeps for an offline session nor resends: subscribe with qos=1"
        )
    return None


async def learner_system(ctx: Context, work: float) -> LearnerSystem:
    """The learner's three services composed (start_system), on a broker and folder of the check's own."""
    broker = await ctx.broker()
    upload, processor, notifier = (ctx.function(n) for n in ("make_upload_handler", "run_processor", "run_notifier"))
    name = f"check07-{uuid.uuid4().hex[:6]}"
    folder = ctx.tmp_path("check07-")
    started = await outcome(
        SERVICES,
        lambda: start_system(
            broker, folder, upload=upload, processor=processor, notifier=notifier, work=work, prefix="check07", name=name
        ),
        2 * START_S,
    )
    expect(started.error is None, f"your services could not start: {started.raised}")
    system: LearnerSystem = started.value
    ctx.on_cleanup(system.stop)
    return system


class Loop:
    """One of the learner's consumer loops under test, started, killed and restarted like a process.

    A :class:`helpers.core.lifecycle.Restartable` keeps the task and what it died of; a
    crash is named (a loop that is not written yet raises NotImplementedError: not a crash).
    """

    def __init__(self, ctx: Context, function: str) -> None:
        self.ctx, self.function = ctx, function
        self.life = lifecycle.Restartable()

    async def launch(self, *args: Any, **kwargs: Any) -> None:
        run = self.ctx.function(self.function)
        began = await outcome(f"{self.function}()", lambda: self.life.launch(run, *args, **kwargs), START_S)
        if isinstance(began.error, TimeoutError):  # lifecycle.start's own: it says the loop never set `ready`
            raise CheckFailed(str(began.error))
        expect(began.error is None, f"{self.function}() failed while starting: {began.raised}")

    async def stop(self) -> None:
        error = await self.life.kill()
        if error is not None and not isinstance(error, NotImplementedError):
            raise CheckFailed(f"{self.function}() crashed: {type(error).__name__}: {error}")

    def crashed(self) -> BaseException | None:
        return self.life.crashed()
