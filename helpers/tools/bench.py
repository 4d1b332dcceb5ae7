"""``make bench``: how fast are the course's building blocks on this machine?

The lessons' claims rest on three assumptions this measures: an in-process HTTP hop
costs well under a millisecond (so 5 x 50 ms really is ~250 ms), the brokers move
thousands of messages per second (so queueing we show is the consumers', not the
broker's), and the open-loop generator sends on time (so its latencies are honest).
It also measures the grader: submissions graded per minute for a folder of 30 lab 04
submissions (correct, partial and broken), one at a time and with ``--jobs``, in the
sandbox and without (``--only grading`` runs just that part).
Prints a Markdown table; ``--out FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
from aiohttp import web

from helpers.core.broker import mqtt_broker
from helpers.core.http import Faults, Service, start_service, stop_all
from helpers.core.measure import closed_loop, open_loop, percentile

T = TypeVar("T")
Row = tuple[str, str, str, str]
TARGET_HOP_MS = 1.0
TARGET_LATENESS_MS = 2.0
TARGET_BROKER_RATIO = 0.9


async def _hello(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def http_requests_per_second(n: int = 2000) -> float:
    """Closed loop, 8 workers, one tiny service: raw request rate of an in-process hop."""
    svc = await start_service("bench-hello", _hello)
    async with aiohttp.ClientSession() as session:

        async def call() -> None:
            async with session.get(svc.url) as response:
                await response.read()

        run = await closed_loop(call, concurrency=8, count=n)
    await svc.stop()
    return run.summary().throughput


async def _relay_chain(hops: int, work_s: float) -> tuple[Service, aiohttp.ClientSession]:
    """``hops`` services; each does ``work_s`` of (simulated) work then calls the next.

    Deliberately bare (no tracing, no JSON), unlike :func:`helpers.sync.chain.start_chain`
    that the lessons use: the benchmark prices the HTTP hop alone.
    """
    session = aiohttp.ClientSession()
    downstream: str | None = None
    first: Service | None = None
    for i in reversed(range(hops)):
        target = downstream

        async def handler(_: web.Request, target: str | None = target) -> web.Response:
            if target is None:
                return web.Response(text="ok")
            async with session.get(target) as response:
                return web.Response(text=await response.text(), status=response.status)

        first = await start_service(f"bench-hop-{i}", handler, faults=Faults(latency=work_s))
        downstream = first.url
    assert first is not None
    return first, session  # the caller closes the session


async def per_hop_overhead_ms(hops: int = 5, work_ms: float = 50, n: int = 40) -> tuple[float, float]:
    """p50 of a ``hops``-long chain of ``work_ms`` services; overhead per hop beyond the work."""
    entry, session = await _relay_chain(hops, work_ms / 1000)
    async with aiohttp.ClientSession() as client:

        async def call() -> None:
            async with client.get(entry.url) as response:
                await response.read()

        run = await closed_loop(call, concurrency=1, count=n)
    await session.close()
    await stop_all()
    p50 = run.summary().p50_ms
    return p50, (p50 - hops * work_ms) / hops


async def timer_slack_ms(seconds: float = 0.05, n: int = 40) -> float:
    """p50 of how much later than asked ``asyncio.sleep(seconds)`` returns.

    The event loop wakes on a millisecond clock, so every simulated 50 ms of work
    costs a little more; this is part of the per-hop overhead, not HTTP's fault.
    """
    loop = asyncio.get_running_loop()
    overshoot = []
    for _ in range(n):
        start = loop.time()
        await asyncio.sleep(seconds)
        overshoot.append((loop.time() - start - seconds) * 1000)
    return percentile(overshoot, 50)


async def mqtt_messages_per_second(url: str | None, qos: int, n: int = 2000) -> float:
    """Publish ``n`` messages and count them back on a subscriber: end-to-end msg/s (``url=None``: embedded)."""
    async with mqtt_broker(url, name=f"bench-{qos}", embedded=url is None) as broker:
        topic = f"bench/{os.getpid()}/{qos}/{time.monotonic_ns()}"
        async with broker.client() as sub, broker.client() as pub:
            await sub.subscribe(topic, qos=qos)
            done = asyncio.get_running_loop().create_future()

            async def count() -> None:
                seen = 0
                async for _ in sub.messages:
                    seen += 1
                    if seen == n:
                        done.set_result(time.perf_counter())
                        return

            reader = asyncio.create_task(count())
            start = time.perf_counter()
            for i in range(n):
                await pub.publish(topic, str(i).encode(), qos=qos)
            end = await asyncio.wait_for(done, 60)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    return n / (end - start)


async def compare_brokers(mosquitto: str | None, qos: int, rounds: int = 5) -> tuple[float, float | None]:
    """Median msg/s of the embedded broker and of Mosquitto, interleaved so both see the same machine."""
    embedded: list[float] = []
    real: list[float] = []
    for _ in range(rounds):
        embedded.append(await mqtt_messages_per_second(None, qos))
        if mosquitto:
            real.append(await mqtt_messages_per_second(mosquitto, qos))
    return statistics.median(embedded), statistics.median(real) if real else None


async def embedded_start_stop_ms(times: int = 5) -> tuple[float, float]:
    """Median milliseconds to start the embedded broker (until it accepts connections) and to stop it."""
    starts, stops = [], []
    for i in range(times):
        broker = mqtt_broker(name=f"bench-start-{i}", embedded=True)
        began = time.perf_counter()
        await broker.start()  # includes a ping: the broker really answers
        starts.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        await broker.stop()
        stops.append((time.perf_counter() - began) * 1000)
    return statistics.median(starts), statistics.median(stops)


async def capstone_uploads_per_second(n: int = 40, concurrency: int = 8) -> float:
    """Lesson 07's front door: uploads accepted (202) per second, validation and storage included.

    Processing runs at ``work=0`` so the measurement is the Upload service, not the workers.
    """
    from helpers.capstone import images
    from helpers.capstone.pipeline import start_pipeline

    photo = images.generated_image(1, size=(640, 480), fmt="JPEG")
    slots = asyncio.Semaphore(concurrency)
    with tempfile.TemporaryDirectory(prefix="bench-capstone-") as folder:
        async with mqtt_broker(name="bench-capstone", embedded=True) as broker:
            pipeline = await start_pipeline(broker, folder, workers=2, work=0.0)
            try:

                async def one(i: int) -> int:
                    async with slots:
                        return (await pipeline.post(photo, f"user-{i % 5}")).status

                began = time.perf_counter()
                statuses = await asyncio.gather(*(one(i) for i in range(n)))
                took = time.perf_counter() - began
                if set(statuses) != {202}:
                    raise RuntimeError(f"uploads answered {sorted(set(statuses))}, expected only 202")
            finally:
                await pipeline.stop()
    return n / took


async def capstone_images_per_second(workers: int, n: int = 8, work: float = 0.5) -> float:
    """Images fully processed per second (thumbnails, filter, caption, stored, notified) with ``workers`` workers."""
    from helpers.capstone import images
    from helpers.capstone.pipeline import start_pipeline

    photo = images.sample_photo()
    with tempfile.TemporaryDirectory(prefix="bench-capstone-") as folder:
        async with mqtt_broker(name=f"bench-capstone-{workers}", embedded=True) as broker:
            pipeline = await start_pipeline(broker, folder, workers=workers, work=work)
            try:
                began = time.perf_counter()
                answers = [await pipeline.post(photo, f"user-{i}") for i in range(n)]
                ids = [a.job_id for a in answers if a.job_id]
                if len(ids) != n or not await pipeline.wait_finished(ids, timeout=120):
                    raise RuntimeError(f"only {len(ids)} of {n} images were accepted and done")
                took = time.perf_counter() - began
            finally:
                await pipeline.stop()
    return n / took


async def queue_messages_per_second(n: int = 100_000) -> float:
    """The in-process ceiling: hand messages through an asyncio.Queue."""
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def consume() -> None:
        for _ in range(n):
            await queue.get()

    start = time.perf_counter()
    consumer = asyncio.create_task(consume())
    for i in range(n):
        queue.put_nowait(i)
        if i % 1000 == 0:
            await asyncio.sleep(0)
    await consumer
    return n / (time.perf_counter() - start)


async def generator_lateness_ms(rate: float = 1000, seconds: float = 3) -> tuple[float, float]:
    """p50 and p99 of how late the open-loop generator sends at ``rate``/s (no-op calls)."""

    async def noop() -> None:
        await asyncio.sleep(0)

    run = await open_loop(noop, rate=rate, duration=seconds)
    late = run.lateness_ms
    return percentile(late, 50), percentile(late, 99)


# --------------------------------------------------------------------------- grading throughput

GRADING_LAB = "04_reliable_consumer"
GRADING_BATCH = 30


def lab04_batch(folder: Path, n: int = GRADING_BATCH) -> dict[str, str]:
    """Write ``n`` lab 04 submissions into ``folder``: correct, partial and broken. {file name: kind}.

    Made from the solution (all of it, or with some questions' answers taken out again, as
    the lab generator does) and from the lab as shipped; a broken one fails in its first cell.
    """
    import nbformat

    from helpers.grading.labgen import LABS, SOLUTIONS, strip_code

    solution = nbformat.read(SOLUTIONS / f"{GRADING_LAB}.ipynb", as_version=4)
    lab = nbformat.read(LABS / f"{GRADING_LAB}.ipynb", as_version=4)
    answers = [i for i, c in enumerate(solution.cells) if c.cell_type == "code" and "# BEGIN SOLUTION" in c.source]
    first_code = next(i for i, c in enumerate(solution.cells) if c.cell_type == "code")
    # (kind, answer cells taken out): per 10 submissions 3 correct, 5 partial, 2 broken
    variants: list[tuple[str, tuple[int, ...]]] = [
        ("correct", ()),
        ("partial", (0,)),
        ("partial", (3,)),
        ("correct", ()),
        ("lab as shipped", ()),
        ("broken setup", ()),
        ("correct", ()),
        ("partial", (0, 1, 2)),
        ("partial", (1, 2)),
        ("partial", (2,)),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {}
    for i in range(n):
        kind, out = variants[i % len(variants)]
        nb = copy.deepcopy(lab if kind == "lab as shipped" else solution)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        for k in out:
            cell = nb.cells[answers[k]]
            cell.source = strip_code(cell.source)[0]
        if kind == "broken setup":
            nb.cells[first_code].source = 'raise RuntimeError("my setup is broken")\n' + nb.cells[first_code].source
        name = f"student{i:02d}_{GRADING_LAB}.ipynb"
        nbformat.write(nb, folder / name)
        kinds[name] = kind
    return kinds


async def grading_throughput(folder: Path, jobs: int, sandbox: str) -> tuple[float, float, list[float]]:
    """Grade every submission in ``folder``: (submissions per minute, median s per submission, scores).

    A submission's seconds run from its start to its end, waits at the gate included.
    """
    from helpers.grading.runner import Options, grade_many

    began = time.monotonic()
    results = await grade_many([folder], Options(jobs=jobs, sandbox=sandbox, seed="bench"))
    took = time.monotonic() - began
    return len(results) * 60 / took, statistics.median(r.seconds for r in results), [r.score for r in results]


async def grading_rows(report: Callable[[str], None] = print) -> list[Row]:
    """Submissions per minute: serial without a sandbox, serial and parallel in the sandbox."""
    from helpers.grading import sandbox as boxes
    from helpers.grading.cli import default_jobs

    mode, notice = boxes.resolve("auto")
    if notice:
        report(notice)
    jobs = default_jobs()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        folder = Path(tmp) / "submissions"
        kinds = lab04_batch(folder)
        mix = ", ".join(f"{list(kinds.values()).count(k)} {k}" for k in dict.fromkeys(kinds.values()))
        runs = [("none", 1), (mode, 1), (mode, jobs)] if mode != "none" else [("none", 1), ("none", jobs)]
        base: float | None = None
        scores: list[float] | None = None
        for box, j in runs:
            report(f"... grading {len(kinds)} lab 04 submissions, --sandbox {box} --jobs {j}")
            rate, median, got = await grading_throughput(folder, j, box)
            base = base or rate
            same = "same scores" if scores is None or got == scores else "SCORES DIFFER from the first run"
            scores = scores or got
            rows.append(
                (
                    f"grader: {len(kinds)} lab 04 submissions, --sandbox {box} --jobs {j}",
                    f"{rate:.1f} submissions/min",
                    "",
                    f"{rate / base:.2f}x the first row; per submission {median:.1f} s median, {60 * j / rate:.1f} s mean; {same}",
                )
            )
        rows.append(("grader: the batch", mix, "", "generated from solutions/04 and labs/04 by bench.lab04_batch"))
    return rows


async def _mosquitto_url() -> tuple[str | None, contextlib.ExitStack]:
    stack = contextlib.ExitStack()
    if os.environ.get("MQTT_URL"):
        return os.environ["MQTT_URL"], stack
    try:
        from helpers.core.mosquitto import running_mosquitto

        return stack.enter_context(running_mosquitto()), stack
    except FileNotFoundError:
        return None, stack


def _verdict(value: float, target: float) -> str:
    return "meets target" if value < target else "MISSES target"


async def run_all(report: Callable[[str], None] = print) -> list[Row]:
    """Run every benchmark; return rows (what, value, target, note)."""
    rows: list[Row] = []

    async def step(label: str, coro: Awaitable[T]) -> T:
        report(f"... {label}")
        return await coro

    rps = await step("HTTP request rate", http_requests_per_second())
    rows.append(
        ("in-process HTTP, 8 concurrent callers", f"{rps:,.0f} req/s", "", "aiohttp client -> aiohttp service on 127.0.0.1")
    )
    p50, hop = await step("5-hop chain", per_hop_overhead_ms())
    in_band = 250 <= p50 <= 275
    rows.append(
        ("5-hop chain of 50 ms services, p50", f"{p50:.1f} ms", "250-275 ms", "meets target" if in_band else "MISSES target")
    )
    rows.append(
        ("per-hop overhead: (p50 - 250 ms) / 5", f"{hop:.2f} ms", "", "HTTP cost + event-loop timer wake-up, see next rows")
    )
    bare_p50, bare_hop = await step("5-hop chain, no work", per_hop_overhead_ms(work_ms=0, n=200))
    rows.append(
        (
            "HTTP cost per hop: 5-hop chain of 0 ms services, p50 / 5",
            f"{bare_hop:.2f} ms",
            f"< {TARGET_HOP_MS:g} ms",
            _verdict(bare_hop, TARGET_HOP_MS),
        )
    )
    slack = await step("timer slack", timer_slack_ms())
    rows.append(
        (
            "asyncio.sleep(50 ms) overshoot, p50",
            f"{slack:.2f} ms",
            "",
            "the loop wakes on a 1 ms clock: paid once per simulated 50 ms of work",
        )
    )
    started, stopped = await step("embedded broker start/stop", embedded_start_stop_ms())
    rows.append(("embedded broker start, median of 5", f"{started:.0f} ms", "", "rumqttd in a child process, until it accepts"))
    rows.append(("embedded broker stop, median of 5", f"{stopped:.0f} ms", "", "port released"))
    mosquitto, stack = await _mosquitto_url()
    with stack:
        for qos in (0, 1):
            label = f"QoS {qos}, embedded" + (" vs Mosquitto" if mosquitto else "")
            embedded, real = await step(label, compare_brokers(mosquitto, qos))
            note = "publish -> broker -> subscriber, same client; median of 5, interleaved"
            rows.append((f"MQTT QoS {qos}, embedded rumqttd", f"{embedded:,.0f} msg/s", "", note))
            if real is None:
                rows.append((f"MQTT QoS {qos}, Mosquitto", "not installed", "", "install mosquitto to compare"))
                continue
            rows.append((f"MQTT QoS {qos}, Mosquitto", f"{real:,.0f} msg/s", "", note))
            ratio = embedded / real
            rows.append(
                (
                    f"MQTT QoS {qos}: embedded / Mosquitto",
                    f"{ratio:.2f}x",
                    f">= {TARGET_BROKER_RATIO:g}x",
                    "meets target" if ratio >= TARGET_BROKER_RATIO else "MISSES target",
                )
            )
    accepted = await step("capstone uploads", capstone_uploads_per_second())
    rows.append(
        ("lesson 07: uploads accepted (202), 8 concurrent clients", f"{accepted:,.0f} uploads/s", "", "validated and stored")
    )
    base: float | None = None
    for workers in (1, 2, 4):
        rate = await step(f"capstone images, {workers} worker(s)", capstone_images_per_second(workers))
        base = base or rate
        rows.append(
            (
                f"lesson 07: images processed, {workers} worker(s)",
                f"{rate:.2f} images/s",
                "",
                f"{rate / base:.1f}x one worker; CPU-bound Pillow work in threads",
            )
        )
    ceiling = await step("asyncio.Queue", queue_messages_per_second())
    rows.append(("asyncio.Queue hand-off (in-process ceiling)", f"{ceiling:,.0f} msg/s", "", "no network, no broker"))
    late50, late99 = await step("generator accuracy", generator_lateness_ms())
    rows.append(("open-loop generator at 1,000 req/s: p50 lateness", f"{late50:.3f} ms", "", "actual minus intended send time"))
    rows.append(
        (
            "open-loop generator at 1,000 req/s: p99 lateness",
            f"{late99:.3f} ms",
            f"< {TARGET_LATENESS_MS:g} ms",
            _verdict(late99, TARGET_LATENESS_MS),
        )
    )
    return rows


def as_markdown(rows: list[Row]) -> str:
    """The table for README.md, with the machine it was measured on."""
    lines = [
        f"Measured by `make bench` on {platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}.",
        "",
        "| measurement | result | target | note |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


START, END = "<!-- BENCH:START -->", "<!-- BENCH:END -->"
GRADING_START, GRADING_END = "<!-- GRADE-BENCH:START -->", "<!-- GRADE-BENCH:END -->"


def update_readme(path: Path, table: str, start: str = START, end: str = END) -> None:
    """Put ``table`` between the ``start`` and ``end`` markers, so the README shows measured numbers only."""
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} ... {end} markers to fill")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{table}{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    parser.add_argument("--readme", type=Path, help="replace the tables between the BENCH markers of this README")
    parser.add_argument("--only", choices=("all", "course", "grading"), default="all", help="what to measure (default: all)")
    args = parser.parse_args(argv)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731 - a one-line progress printer
    tables: list[tuple[str, str, list[Row]]] = []
    if args.only in ("all", "course"):
        tables.append((START, END, asyncio.run(run_all(say))))
    if args.only in ("all", "grading"):
        tables.append((GRADING_START, GRADING_END, asyncio.run(grading_rows(say))))
    text = "\n".join(as_markdown(rows) for _, _, rows in tables)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.readme:
        for start, end, rows in tables:
            update_readme(args.readme, as_markdown(rows), start, end)
    every = [row for _, _, rows in tables for row in rows]
    return 0 if all("MISSES" not in row[3] and "DIFFER" not in row[3] for row in every) else 1


if __name__ == "__main__":
    sys.exit(main())
