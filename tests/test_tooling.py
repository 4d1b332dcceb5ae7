"""The instructor-facing commands: serve, bench, run_all."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from helpers.core.loop_lag import LoopLag
from helpers.tools import bench, run_all
from helpers.tools.serve import load_target

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_serve_runs_a_service_in_its_own_process_with_fault_knobs() -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "helpers", "serve", "helpers.tools.serve:demo_app", "--port", str(port), "--latency", "0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # wait for the process to listen (bounded: 10 s)
                try:
                    started = time.perf_counter()
                    async with session.get(f"http://127.0.0.1:{port}/x") as response:
                        body = await response.json()
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("helpers.tools.serve did not start listening within 10 s")
        assert body == {"service": "demo", "path": "/x"}
        assert time.perf_counter() - started >= 0.1, "the --latency knob was not applied"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


@pytest.mark.parametrize("spec", ["no-colon", "helpers.nothing_here:app", "helpers.tools.serve:missing"])
def test_serve_rejects_bad_targets_with_a_message(spec: str) -> None:
    with pytest.raises(SystemExit) as excinfo:
        load_target(spec)
    assert spec in str(excinfo.value)


async def test_generator_lateness_is_small_at_1000_per_second() -> None:
    async with LoopLag() as lag:
        p50, p99 = await bench.generator_lateness_ms(rate=1000, seconds=1)
    assert 0 <= p50 <= p99
    # A generator that falls behind its schedule drifts by hundreds of ms within the second; a busy
    # 2-core machine adds tens of ms of scheduling delay. make bench reports the real figure.
    # A stall of the whole process (measured by the loop's ticker in the same second) makes every
    # send it covers late by up to its length: the generator is not to blame for it, so it is allowed
    # on top (a quiet run of make test once saw p99 309 ms with p50 0.9 ms).
    stall_ms = lag.longest * 1000
    said = f"lateness p50 {p50:.1f} ms, p99 {p99:.1f} ms, longest loop stall {stall_ms:.0f} ms"
    assert p50 < 20 + stall_ms, said
    assert p99 < 100 + stall_ms, said


@pytest.mark.broker
async def test_capstone_bench_uploads_and_images_per_second() -> None:
    """The lesson 07 rows of make bench: every upload answered 202, every image processed."""
    accepted = await bench.capstone_uploads_per_second(n=6, concurrency=3)
    processed = await bench.capstone_images_per_second(1, n=2, work=0.0)
    assert accepted > processed > 0, "accepting an upload must be far cheaper than processing it"


@pytest.mark.broker
async def test_embedded_broker_start_and_stop_are_timed() -> None:
    started, stopped = await bench.embedded_start_stop_ms(times=2)
    assert 0 < stopped < started < 10_000


@pytest.mark.broker
async def test_broker_rates_are_positive_and_queue_is_the_ceiling() -> None:
    mqtt = await bench.mqtt_messages_per_second(None, qos=0, n=300)
    queue = await bench.queue_messages_per_second(n=20_000)
    assert mqtt > 0
    assert queue > 10 * mqtt, "an in-process queue hand-off must beat a network round trip by far"


def test_markdown_table_has_a_row_per_measurement() -> None:
    table = bench.as_markdown([("a", "1 ms", "< 2 ms", "meets target"), ("b", "2 msg/s", "", "")])
    assert table.count("\n| ") == 3  # header + 2 rows
    assert "| a | 1 ms | < 2 ms | meets target |" in table


@pytest.mark.kernel
def test_run_all_executes_a_notebook_into_html(tmp_path: Path) -> None:
    ok, seconds, message = run_all.run_one(ROOT / "notebooks" / "00_welcome.ipynb", tmp_path, cell_timeout=60)
    assert ok, message
    assert (tmp_path / "00_welcome.html").stat().st_size > 10_000
    assert "blue mug" in (tmp_path / "00_welcome.ipynb").read_text()


def test_bench_fills_the_readme_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench.START}\nold table\n{bench.END}\noutro\n")
    bench.update_readme(readme, "| new | table |\n")
    assert readme.read_text() == f"intro\n{bench.START}\n| new | table |\n{bench.END}\noutro\n"
    readme.write_text("no markers")
    with pytest.raises(SystemExit):
        bench.update_readme(readme, "x")
