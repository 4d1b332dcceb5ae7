"""The sandbox where bubblewrap cannot start (Docker's default seccomp: Gradescope, PrairieLearn,
CI runners): ``--sandbox setpriv``, what ``auto`` falls back to as root.

A tiny lab's check reports, from inside the graded kernel, what the kernel can do: its uid,
its working folder, its limits, whether it can write a root-owned folder, read a root-only
file, see the grader's secrets or signal the grader. The fallback is forced (``--sandbox
setpriv``), whatever this machine offers, and ``auto``'s choice is tested with bubblewrap
made unavailable.

The dropped uid must be able to run the grader's Python: see tests/uid_python.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from uid_python import uid_python

from helpers.grading import sandbox as boxes
from helpers.grading.runner import ROOT

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="setpriv mode drops root to another uid: the grader must be root"),
]

CHECKS = '''
import json, os, resource
from helpers.grading.checks import Checks

checks = Checks("93_fallback")


@checks.check("q1")
async def where_am_i(ctx):
    """Reports what the kernel may do"""
    target = ctx.get("target")
    facts = {"uid": os.getuid(), "cwd": os.getcwd(), "home": os.environ.get("HOME"),
             "secret": os.environ.get("GRADER_SECRET"),
             "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0], "as": resource.getrlimit(resource.RLIMIT_AS)[0],
             "fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[0]}
    for key, act in (("wrote", lambda: open(os.path.join(target, "mine.txt"), "w")),
                     ("read", lambda: open(os.path.join(target, "secret.txt")).read()),
                     ("signalled", lambda: os.kill(os.getppid(), 0))):
        try:
            act()
            facts[key] = True
        except OSError:
            facts[key] = False
    return json.dumps(facts)
'''


@pytest.fixture(scope="module")
def python() -> Iterator[str]:
    """A Python the dropped uid can run, with this virtualenv's packages."""
    with uid_python() as path:
        if path is None:
            pytest.skip(f"{sys.executable} is not readable by another uid, and no system Python of its version is")
        yield path


@pytest.fixture
def target() -> Iterator[Path]:
    """A root-owned folder every user may enter, holding a root-only file."""
    folder = Path(tempfile.mkdtemp(prefix="fallback-target-"))
    folder.chmod(0o755)
    (folder / "secret.txt").write_text("grader only", encoding="utf-8")
    (folder / "secret.txt").chmod(0o600)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_setpriv_mode_runs_the_kernel_unprivileged_limited_and_in_its_scratch(python: str, target: Path, tmp_path: Path) -> None:
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "fallback.py").write_text(CHECKS, encoding="utf-8")
    cells = [new_code_cell(f"target = {str(target)!r}"), new_code_cell('await check("q1")')]
    path = tmp_path / "sub.ipynb"
    nbformat.write(new_notebook(cells=cells, metadata={"course_lab": {"id": "93_fallback"}}), path)
    out = tmp_path / "results.json"
    env = {**os.environ, "GRADER_SECRET": "do-not-leak"}
    env.pop("MQTT_URL", None)
    cmd = [python, "-m", "helpers", "grade", str(path), "--checks", str(tmp_path / "checks"), "--sandbox", "setpriv"]
    run = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "MISSING: no network isolation" in run.stderr  # said plainly, every run
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["grader"]["sandbox"]["mode"] == "setpriv"
    assert doc["grader"]["sandbox"]["missing"] == list(boxes.FALLBACK_MISSING)
    row = doc["submissions"][0]
    assert row["sandbox"] == "setpriv"
    facts = json.loads(row["checks"][0]["message"])
    assert boxes.UID_BASE <= facts["uid"] < boxes.UID_BASE + boxes.UID_SPAN
    cwd = Path(facts["cwd"])
    assert facts["home"] == str(cwd)
    assert cwd.name == "work"
    assert cwd.parent.name.startswith("grade-")
    limits = boxes.Limits()
    assert (facts["nproc"], facts["as"], facts["fsize"]) == (limits.processes, limits.memory_bytes, limits.file_bytes)
    assert facts["secret"] is None  # the grader's environment is not inherited
    assert (facts["wrote"], facts["read"], facts["signalled"]) == (False, False, False)
    assert not (target / "mine.txt").exists()


def test_auto_falls_back_to_setpriv_and_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MQTT_URL", raising=False)
    monkeypatch.setattr(boxes, "probe", lambda: "no namespaces here (made so by the test)")
    monkeypatch.setattr(boxes, "probe_fallback", lambda: None)
    mode, notice = boxes.resolve("auto")
    assert mode == "setpriv"
    assert "no namespaces here" in notice
    assert all(missing in notice for missing in boxes.FALLBACK_MISSING)
    with pytest.raises(boxes.SandboxError, match="no namespaces here"):
        boxes.resolve("bwrap")
    monkeypatch.setattr(boxes, "probe_fallback", lambda: "not root")
    mode, notice = boxes.resolve("auto")
    assert mode == "none"
    assert "WITHOUT a sandbox" in notice
    assert "not root" in notice
    with pytest.raises(boxes.SandboxError, match="not root"):
        boxes.resolve("setpriv")


def test_a_host_broker_keeps_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """bwrap's own network cannot reach MQTT_URL; setpriv uses the host's, so auto still drops root."""
    monkeypatch.setenv("MQTT_URL", "mqtt://127.0.0.1:1883")
    monkeypatch.setattr(boxes, "probe_fallback", lambda: None)
    mode, notice = boxes.resolve("auto")
    assert mode == "setpriv"
    assert "MQTT_URL" in notice
