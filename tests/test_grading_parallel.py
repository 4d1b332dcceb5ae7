"""--jobs N: submissions graded side by side give the grades a serial run gives.

The batch is lab 04 submissions generated the way ``make bench`` makes its 30 (correct,
partial, broken). The gate that keeps timing-critical checks alone is tested on its own
(no kernels) and in a batch, where checks and cells log when they ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from helpers.grading.checks import Checks
from helpers.grading.cli import default_jobs, main
from helpers.grading.report import Result
from helpers.grading.runner import Gate, Options, grade_many, timing_critical
from helpers.tools.bench import lab04_batch


def _without_timing(doc: dict[str, Any]) -> dict[str, Any]:
    """The JSON report minus what may differ between two runs: durations and how the grader ran."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "seconds"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(doc["submissions"])


@pytest.mark.broker
@pytest.mark.kernel
def test_parallel_batch_gives_the_serial_results(tmp_path: Path) -> None:
    folder = tmp_path / "submissions"
    kinds = lab04_batch(folder, 6)
    assert set(kinds.values()) >= {"correct", "partial", "lab as shipped", "broken setup"}
    serial, parallel = tmp_path / "serial.json", tmp_path / "parallel.json"
    # the same seed: the checks draw the same random inputs, so their messages can be compared too
    assert main([str(folder), "-q", "--jobs", "1", "--seed", "s1", "--json", str(serial)]) == 1
    assert main([str(folder), "-q", "--jobs", "3", "--seed", "s1", "--json", str(parallel)]) == 1
    one, many = json.loads(serial.read_text()), json.loads(parallel.read_text())
    assert (one["grader"]["jobs"], many["grader"]["jobs"]) == (1, 3)
    assert _without_timing(many) == _without_timing(one)
    scores = {Path(s["submission"]).name: s["score"] for s in one["submissions"]}
    full = one["submissions"][0]["max_score"]
    assert full > 0, scores
    assert min(scores.values()) == 0, scores
    assert max(scores.values()) == full, scores
    assert any(0 < v < full for v in scores.values()), f"no partial score in {scores}"


def test_default_jobs_is_the_cores_and_bad_jobs_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert default_jobs() == len(os.sched_getaffinity(0))
    with pytest.raises(SystemExit) as stop:
        main(["x.ipynb", "--jobs", "0"])
    assert stop.value.code == 2
    assert "at least 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- the gate


async def test_gate_runs_exclusive_steps_alone_and_shared_ones_together() -> None:
    gate = Gate()
    spans: list[tuple[str, float, float]] = []

    async def step(kind: str, delay: float) -> None:
        await asyncio.sleep(delay)
        async with gate.step(kind == "exclusive"):
            began = time.monotonic()
            await asyncio.sleep(0.05)
            spans.append((kind, began, time.monotonic()))

    kinds = ["shared", "shared", "exclusive", "shared", "exclusive", "shared", "shared"]
    await asyncio.gather(*(step(kind, 0.01 * i) for i, kind in enumerate(kinds)))
    assert len(spans) == len(kinds)
    for kind, a0, a1 in spans:
        if kind != "exclusive":
            continue
        overlapping = [(k, b0, b1) for k, b0, b1 in spans if (b0, b1) != (a0, a1) and b0 < a1 and a0 < b1]
        assert not overlapping, f"an exclusive step overlapped {overlapping}"
    shared = [(b0, b1) for k, b0, b1 in spans if k == "shared"]
    assert any(b0 < a1 and a0 < b1 for i, (a0, a1) in enumerate(shared) for b0, b1 in shared[i + 1 :]), (
        "shared steps never ran together"
    )


LOGGING_CHECKS = '''
import asyncio, os, time
from helpers.grading.checks import Checks, expect

checks = Checks("93_gate")
LOG = {log!r}


async def _span(kind):
    began = time.time()
    await asyncio.sleep(0.3)
    with open(LOG, "a") as out:
        out.write(f"{{kind}} {{began}} {{time.time()}}\\n")


@checks.check("q1")
async def measures_time(ctx):
    """A timing-critical check: it logs when it ran"""
    await _span("timing")
    expect(ctx.get("ready") is True, "ready is not True")


measures_time.timing = True


@checks.check("q1")
async def waits_for_an_outcome(ctx):
    """An ordinary check: it may share the machine"""
    await _span("check")
'''


def _gate_notebook(path: Path, log: Path) -> Path:
    cell = (
        f"import time\nbegan = time.time()\ntime.sleep(0.3)\n"
        f"open({str(log)!r}, 'a').write(f'cell {{began}} {{time.time()}}\\n')\nready = True"
    )
    setup = 'from helpers.grading.notebook import checker\ncheck = checker("93_gate")'
    nb = new_notebook(cells=[new_code_cell(setup), new_code_cell(cell), new_code_cell('await check("q1")')])
    nb.metadata["course_lab"] = {"id": "93_gate"}
    nbformat.write(nb, path)
    return path


@pytest.mark.kernel
async def test_timing_checks_run_while_nothing_else_runs(tmp_path: Path) -> None:
    log = tmp_path / "spans.log"
    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "gate.py").write_text(LOGGING_CHECKS.format(log=str(log)), encoding="utf-8")
    folder = tmp_path / "subs"
    folder.mkdir()
    for i in range(4):
        _gate_notebook(folder / f"s{i}_93_gate.ipynb", log)
    # no sandbox: the kernels write their spans to one log on the host
    options = Options(checks_dir=checks, jobs=4, sandbox="none", labs_dir=None, total_timeout=60)
    results: list[Result] = await grade_many([folder], options)
    assert all(r.full_marks for r in results), [r.failures() for r in results]
    spans = [(kind, float(a), float(b)) for kind, a, b in (line.split() for line in log.read_text().splitlines())]
    assert sorted(k for k, _, _ in spans) == ["cell"] * 4 + ["check"] * 4 + ["timing"] * 4
    for kind, a0, a1 in spans:
        if kind == "timing":
            others = [(k, b0, b1) for k, b0, b1 in spans if (b0, b1) != (a0, a1) and b0 < a1 and a0 < b1]
            assert not others, f"a timing-critical check ran alongside {others}"
    cells = sorted((a, b) for k, a, b in spans if k != "timing")
    assert any(cells[i + 1][0] < cells[i][1] for i in range(len(cells) - 1)), "nothing ran in parallel"


@pytest.mark.kernel
async def test_kernels_talk_over_ipc_without_the_tcp_warning(tmp_path: Path) -> None:
    """Unsandboxed too: the grader's kernels use Unix sockets, so ipykernel has no TCP warning to print."""
    from helpers.grading.kernels import kernel_manager

    stderr = tmp_path / "kernel.err"
    km = kernel_manager("python3", tmp_path / "kernel.json", None)
    with stderr.open("w") as err:
        await km.start_kernel(stderr=err, cwd=str(tmp_path))
        client = km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            info = km.get_connection_info()
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)
    assert info["transport"] == "ipc"
    assert str(tmp_path) in info["ip"]
    assert "without encryption" not in stderr.read_text()


def test_a_check_is_timing_critical_when_it_says_so_or_with_alone_all() -> None:
    checks = Checks("94_flags")

    @checks.check("q1")
    async def measures(ctx: object) -> None:
        """Measures a duration"""

    @checks.check("q1")
    async def waits(ctx: object) -> None:
        """Waits for an outcome"""

    measures.timing = True  # type: ignore[attr-defined]
    timed, plain = list(checks)
    assert timing_critical(timed)
    assert not timing_critical(plain)
    assert timing_critical(plain, "all")
