"""Hostile submissions graded in the bubblewrap sandbox: each is contained, the batch goes on,
and the row says why.

One batch (graded two at a time) holds a correct submission and six hostile ones: a
reader of another submission and of the grader's files, a writer outside its scratch
folder, one that connects to a port the grader opened on the host's loopback, a fork
loop, an endless allocation and a 100 MB print. They use a tiny lab declared here, whose
q2 is ``answer = 42``: the hostile code goes in q2's cell. Skipped, with the reason,
where bubblewrap cannot sandbox (not installed, no namespaces).
"""

from __future__ import annotations

import asyncio
import resource
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from helpers.grading import sandbox as boxes
from helpers.grading.report import Result
from helpers.grading.runner import HELPERS_DIR, Options, grade_file, grade_many

WHY_NOT = boxes.probe()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no bubblewrap sandbox here: {WHY_NOT}")

CHECKS = '''
from helpers.grading.checks import Checks, expect

checks = Checks("92_box")


@checks.check("q1")
async def doubles(ctx):
    """double(21) is 42"""
    expect(await ctx.call("double", 21) == 42, "double(21) is not 42")


@checks.check("q2")
async def answer_is_set(ctx):
    """answer is 42"""
    expect(ctx.get("answer") == 42, f"answer is {ctx.get('answer')!r}")
'''


@pytest.fixture(scope="module")
def box_checks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("boxchecks")
    (folder / "box.py").write_text(CHECKS, encoding="utf-8")
    return folder


def notebook(path: Path, q2: str) -> Path:
    cells = [
        new_code_cell('from helpers.grading.notebook import checker\ncheck = checker("92_box")'),
        new_code_cell("def double(x):\n    return 2 * x"),
        new_code_cell('await check("q1")'),
        new_code_cell(q2),
        new_code_cell('await check("q2")'),
    ]
    nbformat.write(new_notebook(cells=cells, metadata={"course_lab": {"id": "92_box"}}), path)
    return path


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port the grader's side opened on the host's 127.0.0.1."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    yield server
    server.close()


def secrets_of(tmp_path: Path) -> dict[str, Path]:
    """Files a submission must not read: another submission, the results file, one in the grader's folder."""
    grader = tmp_path / "grader"
    grader.mkdir(exist_ok=True)
    files = {"other": tmp_path / "subs" / "good_92_box.ipynb", "results": grader / "results.json"}
    files["grader_file"] = grader / "api-token.txt"
    files["grader_file"].write_text("s3cret", encoding="utf-8")
    files["results"].write_text('{"submissions": []}', encoding="utf-8")
    return files


def reader(secrets: dict[str, Path]) -> str:
    paths = [str(p) for p in secrets.values()] + ["/root/.bashrc", "/etc/shadow"]
    return textwrap.dedent(
        f"""
        leaked = []
        for path in {paths!r}:
            try:
                with open(path, "rb") as handle:
                    handle.read(1)
                leaked.append(path)
            except OSError:
                pass
        answer = 42 if not leaked else f"read {{leaked}}"
        """
    )


@pytest.mark.kernel
def test_hostile_batch_is_contained_and_the_batch_goes_on(
    box_checks: Path, tmp_path: Path, listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MQTT_URL", raising=False)  # the tiny lab needs no broker; a host broker rules out bwrap
    subs = tmp_path / "subs"
    subs.mkdir()
    secrets = secrets_of(tmp_path)
    escape = tmp_path / "escaped.txt"
    port = listener.getsockname()[1]
    hostile = {
        "reader": reader(secrets),
        "writer": f"open({str(escape)!r}, 'w').write('out')\nopen({str(HELPERS_DIR / 'escaped.py')!r}, 'w').write('x = 1')",
        "connect": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nanswer = 42",
        "forks": "import os, time\nwhile True:\n    if os.fork() == 0:\n        time.sleep(60)\n        os._exit(0)",
        # bytes(n) is calloc'ed: it takes address space without touching a page, so the limit comes fast on a busy machine
        "memory": "hoard = []\nwhile True:\n    hoard.append(bytes(64 * 2**20))",
        "prints": 'for _ in range(100):\n    print("x" * 1_000_000)\nanswer = 42',
    }
    notebook(subs / "good_92_box.ipynb", "answer = 42")
    for name, code in hostile.items():
        notebook(subs / f"{name}_92_box.ipynb", code)
    options = Options(checks_dir=box_checks, jobs=2, sandbox="bwrap", labs_dir=None, cell_timeout=20, total_timeout=90)
    options.hide = (tmp_path / "grader",)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = asyncio.run(grade_many([subs], options))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    rows: dict[str, Result] = {Path(r.submission).name.split("_92")[0]: r for r in results}
    assert set(rows) == {"good", *hostile}
    assert all(r.status == "graded" and r.sandbox == "bwrap" for r in results), [(r.submission, r.error) for r in results]
    assert rows["good"].full_marks, rows["good"].failures()

    def notes(name: str) -> str:
        return " | ".join(rows[name].notes)

    assert rows["reader"].full_marks, f"the reader got at something: {rows['reader'].failures()}"
    assert not escape.exists()
    assert not (HELPERS_DIR / "escaped.py").exists()
    assert "raised" in notes("writer"), notes("writer")
    assert "Read-only" in notes("writer") or "No such file" in notes("writer"), notes("writer")
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected from the sandbox
    assert "ConnectionRefusedError" in notes("connect") or "OSError" in notes("connect"), notes("connect")
    assert "processes and threads" in notes("forks"), notes("forks")
    assert "MemoryError" in notes("memory"), notes("memory")
    assert "memory limit" in notes("memory"), notes("memory")
    assert rows["prints"].full_marks, rows["prints"].failures()
    assert "printed more than" in notes("prints"), notes("prints")
    assert grown_mb < 1024, f"the grader's peak memory grew by {grown_mb:.0f} MB"
    for name in ("writer", "connect", "forks", "memory"):
        assert rows[name].questions["q1"][0] == 1, f"{name}: q1 should still count ({rows[name].failures()})"


@pytest.mark.kernel
async def test_without_the_sandbox_the_reader_does_read(box_checks: Path, tmp_path: Path) -> None:
    """The reader test can fail: unsandboxed, the same cell reads the grader's files."""
    (tmp_path / "subs").mkdir()
    secrets = secrets_of(tmp_path)
    notebook(secrets["other"], "answer = 42")
    path = notebook(tmp_path / "subs" / "reader_92_box.ipynb", reader(secrets))
    result = await grade_file(path, Options(checks_dir=box_checks, sandbox="none", labs_dir=None))
    assert not result.full_marks, result.failures()
    assert "api-token.txt" in " ".join(result.failures()), result.failures()


def test_sandbox_none_and_auto_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MQTT_URL", raising=False)
    assert boxes.resolve("none") == ("none", "")
    assert boxes.resolve("auto") == ("bwrap", "")
    with pytest.raises(boxes.SandboxError, match="one of"):
        boxes.resolve("docker")


def test_a_host_broker_cannot_be_sandboxed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_URL", "mqtt://127.0.0.1:1883")
    mode, notice = boxes.resolve("auto")
    # the setpriv fallback keeps the host's network (tests/test_sandbox_fallback.py), so auto uses it where it works
    assert mode == ("setpriv" if boxes.probe_fallback() is None else "none")
    assert "MQTT_URL" in notice
    with pytest.raises(boxes.SandboxError, match="MQTT_URL"):
        boxes.resolve("bwrap")
