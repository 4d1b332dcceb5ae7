"""Appendix 08: the capstone's image workers beyond one kernel, measured.

The notebook keeps the front of the system in the kernel (Storage and Upload, which
are I/O-bound and cheap) and runs the AI Image Processor two ways, with the same number
of workers each time:

* **in the kernel**: ``N`` shared-subscription members whose Pillow work runs in threads
  (``asyncio.to_thread``), all in one Python process;
* **as processes**: ``N`` separate ``python -m helpers serve capstone-processor`` processes,
  each one member of the same ``$share/processors/...`` group on a real broker.

It measures images per second, the CPU the work used (seconds of CPU per second of wall
time: 2.0 means two cores busy), and how late the kernel's event loop ran while the
images were processed (the kernel is also the learner's notebook and the Upload
service: a late loop is a slow upload).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil  # type: ignore[import-untyped]  # psutil ships no hints; types-psutil is not worth a pin
from matplotlib.axes import Axes
from PIL import Image

from helpers.capstone.jobs import Topics
from helpers.capstone.processor import start_processor
from helpers.capstone.services import _import
from helpers.capstone.storage import start_storage
from helpers.capstone.upload import UploadService, start_upload
from helpers.capstone.wire import PostsImages
from helpers.core.broker import Broker, BrokerError, start_broker
from helpers.core.cpu import machine_busy_seconds
from helpers.core.http import Service
from helpers.core.loop_lag import LoopLag
from helpers.core.plots import axes
from helpers.core.waiting import until

BUSY_CORES = 0.5
"""Cores other programs may keep busy during a run before its rates say more about them than about the design."""

IN_KERNEL = "in the kernel (threads)"
PROCESSES = "separate processes"
READY_TIMEOUT_S = 60.0
"""A worker process imports Pillow, OpenCV and aiomqtt before it subscribes: seconds on a busy laptop."""


# --- a real broker ---------------------------------------------------------------------------


@dataclass
class RealBroker:
    """A broker other processes can reach: ``MQTT_URL``'s, or a throw-away Mosquitto started here."""

    broker: Broker
    url: str
    """The URL worker processes connect to (with credentials, if ``MQTT_URL`` carries them: never print it)."""
    _stack: contextlib.ExitStack

    async def stop(self) -> None:
        """Disconnect, and stop the Mosquitto this module started (if it started one)."""
        try:
            await self.broker.stop()
        finally:
            self._stack.close()


async def start_real_broker(name: str = "beyond-one-kernel") -> RealBroker:
    """``MQTT_URL``'s broker, else a throw-away Mosquitto; a clear error if neither exists.

    The embedded broker lives inside the kernel's child process and supports ``$share``,
    but mishandles unacknowledged messages of shared members (see
    :data:`helpers.capstone.processor.EMBEDDED_SHARED_PROBLEM`): a real Mosquitto does not.
    """
    from helpers.core.mosquitto import running_mosquitto

    stack = contextlib.ExitStack()
    url = os.environ.get("MQTT_URL")
    try:
        if not url:
            url = stack.enter_context(running_mosquitto())
        broker = await start_broker(url, name=name)
    except FileNotFoundError as exc:
        stack.close()
        raise BrokerError(f"this appendix needs a real broker that separate processes can share. {exc}") from None
    except BaseException:
        stack.close()
        raise
    if not broker.supports_shared_subscriptions:
        await broker.stop()
        stack.close()
        raise BrokerError(f"the broker at {broker.url} does not offer shared subscriptions ($share)")
    return RealBroker(broker, url, stack)


# --- the front: Storage and Upload in the kernel ----------------------------------------------


@dataclass
class Front(PostsImages):
    """Storage and Upload, running in the kernel; the workers are started separately.

    The request side of :class:`helpers.capstone.system.CapstoneSystem` (:class:`~helpers.capstone.system.Uploads`),
    plus a wait on the Upload service's job store: the workers are other processes, watched through it.
    """

    topics: Topics
    storage: Service
    upload_service: UploadService
    session: aiohttp.ClientSession
    broker: Broker
    """The kernel's connection to the broker the workers share (drills listen and clean up through it)."""

    @property
    def storage_url(self) -> str:
        return self.storage.url

    @property
    def url(self) -> str:
        return self.upload_service.url

    async def wait_finished(self, job_ids: Sequence[str], timeout: float = 120.0) -> bool:
        """True once every job is done or failed (the Upload service hears it on ``jobs/+``)."""
        store = self.upload_service.store
        return await until(lambda: store.finished(list(job_ids)), timeout, poll=0.01)

    async def stop(self) -> None:
        try:
            await self.upload_service.stop()
        finally:
            await self.session.close()
            await self.storage.stop()


async def start_front(broker: Broker, workdir: str | Path, prefix: str = "beyond") -> Front:
    """Start Storage (objects under ``workdir``) and Upload on fresh topics ``prefix/<id>``."""
    topics = Topics.fresh(prefix)
    storage = await start_storage(Path(workdir) / topics.prefix.rsplit("/", 1)[-1], name="beyond-storage")
    try:
        upload = await start_upload(broker, topics, storage.url, name="beyond-upload")
    except BaseException:
        await storage.stop()
        raise
    return Front(topics, storage, upload, aiohttp.ClientSession(), broker)


# --- the two ways to run N workers -------------------------------------------------------------


@dataclass
class Workers:
    """N running workers of one design, and the processes whose CPU time they use."""

    design: str
    count: int
    pids: list[int] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) used so far by these workers' processes (the kernel, or the children)."""
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = psutil.Process(pid).cpu_times()
                total += times.user + times.system
        return total


@contextlib.asynccontextmanager
async def in_kernel_workers(
    broker: Broker, front: Front, count: int, *, work: float = 1.0, caption: str | None = None
) -> AsyncIterator[Workers]:
    """``count`` shared-subscription members in this kernel; their Pillow work runs in threads.

    ``caption`` is ``module:function`` of a caption model (the same spelling a process gets).
    """
    caption_fn = _import(caption) if caption else None
    processor = await start_processor(
        broker, front.topics, front.storage_url, workers=count, shared=True, work=work, caption_fn=caption_fn
    )
    try:
        yield Workers(IN_KERNEL, count, [os.getpid()])
    finally:
        errors = await processor.stop()
        if errors:
            raise RuntimeError(f"in-kernel workers crashed: {errors}")


def slot_name(index: int) -> str:
    """Worker process slot ``index`` (from 1): ``processor-1``, ``processor-2``, ..."""
    return f"processor-{index}"


def worker_command(front: Front, *, work: float = 1.0, caption: str | None = None, slot: str | None = None) -> list[str]:
    """The command line of one worker process (the broker URL comes from ``MQTT_URL``).

    ``slot`` (``processor-1``) fixes the process's MQTT client id, so the slot's next
    process resumes the persistent session, and the messages in flight, of the last one.
    """
    command = [
        sys.executable, "-m", "helpers", "serve", "capstone-processor",
        "--topics", front.topics.prefix, "--storage-url", front.storage_url, "--work", str(work),
    ]  # fmt: skip
    return command + (["--caption", caption] if caption else []) + (["--slot", slot] if slot else [])


async def _wait_ready(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, object]:
    """The worker's JSON ready line; its stderr in the error if it exits or stays silent."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    except TimeoutError:
        line = b""
    if line.startswith(b"{"):
        return dict(json.loads(line))
    with contextlib.suppress(ProcessLookupError):  # it may have exited on its own already
        proc.kill()
    await proc.wait()
    error = (await proc.stderr.read()).decode(errors="replace").strip().splitlines()[-5:]
    raise RuntimeError(f"worker process {proc.pid} did not start (exit code {proc.returncode}): " + " | ".join(error))


@dataclass
class WorkerProcesses(Workers):
    """Worker processes by slot (``processor-1``, ...): kill one with SIGKILL, restart its slot.

    Each slot's process connects with the slot's fixed client id and a persistent session.
    Mosquitto keeps the messages a killed member had in flight (and, while it is away, the
    ones it is handed) for that client id: a new process with a *new* id would never get
    them, the slot's next process does.
    """

    front: Front | None = None
    command: Callable[[str], list[str]] | None = None
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    client_ids: dict[str, str] = field(default_factory=dict)
    """Slot -> the MQTT client id its process connects with (from the process's ready line)."""

    @property
    def slots(self) -> list[str]:
        return list(self.procs)

    def alive(self, slot: str) -> bool:
        return self.procs[slot].returncode is None

    async def start(self, slot: str) -> None:
        """Start ``slot``'s process and return once it has subscribed (its ready line)."""
        await self._ready(slot, await self._spawn(slot))

    async def start_all(self, slots: Sequence[str]) -> None:
        """Start several slots at once (in order) and return once every one has subscribed."""
        spawned = [(slot, await self._spawn(slot)) for slot in slots]
        await asyncio.gather(*(self._ready(slot, proc) for slot, proc in spawned))

    async def _spawn(self, slot: str) -> asyncio.subprocess.Process:
        if slot in self.procs and self.alive(slot):
            raise RuntimeError(f"worker slot {slot} is running; kill it first")
        assert self.command is not None
        proc = await asyncio.create_subprocess_exec(*self.command(slot), env=self.env, stdout=-1, stderr=-1)
        self.procs[slot] = proc
        self._update_pids()
        return proc

    async def _ready(self, slot: str, proc: asyncio.subprocess.Process) -> None:
        ready = await _wait_ready(proc, READY_TIMEOUT_S)
        ids = ready.get("client_ids")
        self.client_ids[slot] = str(ids[0]) if isinstance(ids, list) and ids else slot

    async def terminate(self, slot: str) -> None:
        """Stop the slot's process with SIGTERM, as an operator would: it keeps its session for the slot's next process."""
        proc = self.procs[slot]
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()
        self._update_pids()

    async def kill(self, slot: str) -> None:
        """``kill -9`` the slot's process: no goodbye to the broker, its messages in flight stay unacknowledged."""
        proc = self.procs[slot]
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # SIGKILL, as kill -9
        await proc.wait()
        self._update_pids()

    async def restart(self, slot: str) -> None:
        """Start the slot again: same client id, so it resumes the dead process's session."""
        await self.start(slot)

    async def stop(self) -> None:
        """SIGTERM every live process, then drop every slot's session (and whatever a dead slot still holds).

        A slot process keeps its session when it stops, for its successor; at the end of
        the block there is none, so the sessions go (a clean connect with each client id).
        """
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self.front is not None:
            await self.front.broker.end_sessions(*self.client_ids.values())

    def _update_pids(self) -> None:
        self.pids[:] = [proc.pid for proc in self.procs.values() if proc.returncode is None]


@contextlib.asynccontextmanager
async def worker_processes(
    front: Front, count: int, *, mqtt_url: str, work: float = 1.0, caption: str | None = None
) -> AsyncIterator[WorkerProcesses]:
    """Start ``count`` worker processes in slots ``processor-1`` ... on the broker at ``mqtt_url``; stop them afterwards."""
    workers = WorkerProcesses(
        PROCESSES,
        count,
        front=front,
        command=lambda slot: worker_command(front, work=work, caption=caption, slot=slot),
        env={**os.environ, "MQTT_URL": mqtt_url, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    try:
        await workers.start_all([slot_name(i) for i in range(1, count + 1)])
        yield workers
    finally:
        await workers.stop()


# --- measuring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """One measured run: a design, its worker count, and what it achieved."""

    design: str
    workers: int
    images: int
    seconds: float
    cores_busy: float
    """CPU seconds the workers' processes used per second of the run (2.0 = two cores busy)."""
    loop_lag_ms: float
    """The kernel's event loop: the longest it ran late during the run."""
    others_busy: float = 0.0
    """Cores kept busy by other programs during the run (the whole machine's CPU time minus this run's)."""

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def as_row(self) -> dict[str, object]:
        return {
            "design": self.design,
            "workers": self.workers,
            "images/s": round(self.images_per_s, 2),
            "cores busy": round(self.cores_busy, 2),
            "kernel loop late (max ms)": round(self.loop_lag_ms, 1),
            "other programs (cores)": round(self.others_busy, 2),
        }


async def measure(
    front: Front, workers: Workers, run: Callable[[Front, int], Awaitable[object]], images: int, *, warmup: int = 0
) -> Throughput:
    """Time ``await run(front, images)`` (the notebook's upload-and-wait function) and the CPU it cost.

    ``warmup`` images go through first, untimed: a fresh process loads its libraries and the
    face model on its first image, which a long-running worker pays once, not per batch.
    """
    if warmup:
        await run(front, warmup)
    ours = Workers(workers.design, workers.count, sorted({*workers.pids, os.getpid()}))
    cpu_before, ours_before, machine_before = workers.cpu_seconds(), ours.cpu_seconds(), machine_busy_seconds()
    async with LoopLag() as lag:
        began = time.perf_counter()
        await run(front, images)
        seconds = time.perf_counter() - began
    others = (machine_busy_seconds() - machine_before) - (ours.cpu_seconds() - ours_before)
    return Throughput(
        workers.design,
        workers.count,
        images,
        seconds,
        (workers.cpu_seconds() - cpu_before) / seconds,
        max(0.0, lag.longest - lag.tick_s) * 1000,
        max(0.0, others / seconds),
    )


# --- a caption model that holds the GIL ----------------------------------------------------------

PYTHON_CAPTION = "helpers.capstone.scaleout:python_caption"
"""How a worker process names :func:`python_caption` (``--caption``)."""


def python_caption(img: Image.Image, rounds: int = 300) -> str:
    """A caption "model" written in plain Python: it holds the GIL for all of its work.

    Pillow and OpenCV release the GIL inside their C loops, so threads can run them on
    several cores at once. Work written in Python cannot: one thread at a time runs
    Python code in a process. This stands in for any pure-Python step (parsing, a
    hand-written model, JSON of a large result).
    """
    small = img.convert("L").resize((160, 120))
    pixels = list(small.tobytes())  # mode L: one byte per pixel (getdata is deprecated in Pillow 13)
    edges = 0
    for _ in range(rounds):
        for left, right in zip(pixels, pixels[1:], strict=False):
            edges += abs(left - right) > 12
    busy = edges / (rounds * len(pixels))
    return f"a picture, {sum(pixels) / len(pixels) / 2.55:.0f}% bright, {busy:.0%} edges (pure-Python model)"


# --- the picture ----------------------------------------------------------------------------------


def plot_scaling(results: Sequence[Throughput], *, cores: int, ax: Axes | None = None) -> Axes:
    """Images/s against worker count, one line per design, on a numeric x axis."""
    ax = axes(ax)
    for design, marker in ((IN_KERNEL, "o-"), (PROCESSES, "s-")):
        rows = sorted((r for r in results if r.design == design), key=lambda r: r.workers)
        xs, ys = [r.workers for r in rows], [r.images_per_s for r in rows]
        ax.plot(xs, ys, marker, label=design)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(6, -12 if design == IN_KERNEL else 6), fontsize=8)
    ax.set_xticks(sorted({r.workers for r in results}))
    ax.margins(x=0.12)
    # room above the highest point for its label; max() keeps a shared y axis from clipping the other plot's points
    ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1.15 * max((r.images_per_s for r in results), default=1.0)))
    ax.axvline(cores, color="gray", ls=":", lw=1)
    ax.annotate(
        f"{cores} CPU cores",
        (cores, 1.0),
        xycoords=("data", "axes fraction"),  # at the top even when a shared y axis grows later
        textcoords="offset points",
        xytext=(-4, -12),
        ha="right",
        fontsize=8,
        color="gray",
    )
    ax.set(
        xlabel="workers (members of one $share group)",
        ylabel="images processed per second",
        title="CPU-bound image work: threads in one kernel vs processes",
    )
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return ax
