"""The Gradescope and PrairieLearn packages, built and run as the platforms run them.

Each package is built by its command, unpacked into a temporary root laid out like the
platform's (Gradescope: ``autograder/source``, ``submission``, ``results``, the metadata
file; PrairieLearn: ``grade/serverFilesCourse``, ``student``, ``results``), and its script is
run for real on five submissions of lab 00: correct (the solution), partial (q2 raises),
broken (the lab as shipped), another lab's notebook, a file that is not a notebook. Every
results.json is validated against the platform's JSON Schema (tests/schemas/, written from
the platforms' specs), and the scores are compared with the plain grader's on the same
files. Gradescope's setup.sh runs too, with pip in dry-run mode against this virtualenv (no
download, no install: the packages are already here).

The grading runs with ``--sandbox auto`` as on the platforms: bubblewrap where it starts here,
else the ``setpriv`` fallback the platforms' Docker containers get (as root: see
tests/uid_python.py), else none; each run's log is checked for the sandbox it says it used.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]  # no stubs: types-jsonschema is not among the dev pins
import nbformat
import pytest
from test_grader import cell_with
from uid_python import uid_python

from helpers.grading import sandbox as boxes
from helpers.grading.labgen import LABS, SOLUTIONS
from helpers.grading.runner import ROOT, Options, grade_many

SCHEMAS = Path(__file__).parent / "schemas"
LAB = "00_warmup"
GRADED = ("correct", "partial", "broken")
KINDS = (*GRADED, "wrong_lab", "not_a_notebook")
PLAIN_MISSED: dict[str, list[tuple[str, str]]] = {}
"""The checks the plain grader failed, per kind (filled by the ``plain`` fixture)."""

pytestmark = [pytest.mark.broker, pytest.mark.kernel]  # lab 00 graded in kernels that start the embedded broker


def write_submission(kind: str, folder: Path) -> Path:
    """One submission of lab 00, as a learner would upload it (file names as they come)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "correct":
        path = folder / "00_warmup.ipynb"
        shutil.copyfile(SOLUTIONS / f"{LAB}.ipynb", path)
    elif kind == "partial":
        nb = nbformat.read(SOLUTIONS / f"{LAB}.ipynb", as_version=4)
        cell = cell_with(nb, "async def round_trip")
        cell.source = 'raise RuntimeError("midway")\n' + cell.source
        path = folder / "my_warmup.ipynb"  # no lab id in the name, no metadata: graded as the assignment's lab
        nbformat.write(nb, path)
    elif kind == "broken":
        path = folder / "warmup_00_warmup.ipynb"
        shutil.copyfile(LABS / f"{LAB}.ipynb", path)
    elif kind == "wrong_lab":
        path = folder / "homework.ipynb"
        shutil.copyfile(LABS / "04_reliable_consumer.ipynb", path)  # its metadata says lab 04
    else:
        path = folder / "00_warmup.ipynb"
        path.write_text("I lost my notebook, here is a text file", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def python() -> Iterator[str]:
    """The platform's Python (one an unprivileged uid can run, so the setpriv fallback is used where it can be)."""
    with uid_python() as path:
        yield path or sys.executable


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """The plain grader's scores for the gradable submissions (one batch, as an instructor grades)."""
    folder = tmp_path_factory.mktemp("plain")
    paths = [write_submission(kind, folder / kind) for kind in GRADED]
    paths = [p.rename(p.with_name(f"{kind}_{LAB}.ipynb")) for kind, p in zip(GRADED, paths, strict=True)]  # found by name
    results = asyncio.run(grade_many(paths, Options(jobs=2, seed="platforms")))  # timing checks still run alone
    assert [r.status for r in results] == ["graded"] * 3, [r.error for r in results]
    # said when a platform's scores differ: which checks the plain grader failed, and why
    for kind, r in zip(GRADED, results, strict=True):
        PLAIN_MISSED[kind] = [(c.name, c.message) for c in r.checks if not c.passed]
    return {kind: r.score for kind, r in zip(GRADED, results, strict=True)}


@pytest.fixture
def root() -> Iterator[Path]:
    """A platform's root folder every user may enter (the kernel runs as an unprivileged uid)."""
    folder = Path(tempfile.mkdtemp(prefix="platform-root-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def build(command: str, out: Path, *flags: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "helpers", command, LAB, "--out", str(out), *flags],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def unzip(archive: Path, target: Path) -> None:
    """Unpack like ``unzip``: files keep the modes the zip stored (run_autograder stays executable)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            zf.extract(info, target)
            mode = info.external_attr >> 16
            if mode:
                (target / info.filename).chmod(mode & 0o777)


def validate(doc: dict[str, object], schema: str) -> None:
    jsonschema.validate(doc, json.loads((SCHEMAS / schema).read_text(encoding="utf-8")))


def sandboxed(log: str) -> bool:
    """The platform's log shows a sandbox: bubblewrap (no notice), or the setpriv fallback saying what it lacks."""
    if boxes.probe() is None:
        return "WITHOUT a sandbox" not in log
    return "(--sandbox setpriv). MISSING: no network isolation" in log


def max_points() -> float:
    from helpers.grading.platforms import lab_points

    return lab_points(LAB)


# --------------------------------------------------------------------------- Gradescope


def test_gradescope_package_grades_like_the_plain_grader(python: str, plain: dict[str, float], root: Path) -> None:
    build("gradescope", root / "build", "--hidden-visibility", "after_due_date")
    archive = root / "build" / f"gradescope-{LAB}.zip"
    gs = root / "autograder"
    unzip(archive, gs / "source")
    assert {"setup.sh", "run_autograder", "requirements.txt", "pyproject.toml"} <= {p.name for p in (gs / "source").iterdir()}
    venv = Path(python).parent.parent
    env = {**os.environ, "GRADESCOPE_ROOT": str(gs), "COURSE_VENV": str(venv), "COURSE_SKIP_APT": "1"}
    env.pop("MQTT_URL", None)  # a Gradescope container has no broker of ours: the embedded one
    setup = subprocess.run(
        ["bash", str(gs / "source" / "setup.sh")],
        env={**env, "COURSE_PIP_FLAGS": "--dry-run --no-index --no-build-isolation -q"},
        capture_output=True,
        text=True,
        cwd=gs / "source",
        timeout=300,
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr[-2000:]
    assert "setup.sh: done" in setup.stdout, setup.stdout + setup.stderr[-2000:]
    shutil.copy2(gs / "source" / "run_autograder", gs / "run_autograder")  # where Gradescope puts it
    metadata = {"created_at": "2026-12-07T04:00:00Z", "due_date": "2026-12-08T00:00:00Z", "users": [{"name": "Ada"}]}
    (gs / "submission_metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    scores, docs = {}, {}
    for kind in KINDS:
        shutil.rmtree(gs / "submission", ignore_errors=True)
        shutil.rmtree(gs / "results", ignore_errors=True)
        write_submission(kind, gs / "submission")
        run = subprocess.run([str(gs / "run_autograder")], env=env, capture_output=True, text=True, timeout=300, cwd=gs)
        assert run.returncode == 0, run.stdout + run.stderr
        assert sandboxed(run.stderr), run.stderr
        doc = json.loads((gs / "results" / "results.json").read_text(encoding="utf-8"))
        validate(doc, "gradescope_results.schema.json")
        scores[kind], docs[kind] = doc["score"], doc
    assert {k: scores[k] for k in GRADED} == plain, f"the plain grader failed {PLAIN_MISSED}"
    assert plain["correct"] == max_points() > plain["partial"] > plain["broken"] == 0
    correct = docs["correct"]["tests"]
    assert sum(t["max_score"] for t in correct) == max_points()
    assert {t["visibility"] for t in correct if "(hidden)" in t["name"]} == {"after_due_date"}
    assert {t["visibility"] for t in correct if "(hidden)" not in t["name"]} == {"visible"}
    failed = [t for t in docs["partial"]["tests"] if t["status"] == "failed" and t["visibility"] == "visible"]
    assert failed
    assert all(t["output"] for t in failed)
    assert any("Hint: " in t["output"] for t in failed)
    assert "await round_trip" not in json.dumps(docs["partial"])  # no code hints anywhere
    for kind, why in (("wrong_lab", "wrong lab: this notebook is lab 04_reliable_consumer"), ("not_a_notebook", "not a Jupyter")):
        doc = docs[kind]
        assert doc["score"] == 0, doc
        assert len(doc["tests"]) == 1, doc
        assert doc["tests"][0]["visibility"] == "visible"
        assert why in doc["tests"][0]["output"]


# --------------------------------------------------------------------------- PrairieLearn


def test_prairielearn_package_grades_like_the_plain_grader(python: str, plain: dict[str, float], root: Path) -> None:
    build("prairielearn", root / "build")
    package = root / "build" / f"prairielearn-{LAB}"
    options = json.loads((package / "info.json").read_text(encoding="utf-8"))["externalGradingOptions"]
    assert options["timeout"] > 30
    assert options["entrypoint"].startswith("/grade/serverFilesCourse/")
    assert (package / "image" / "Dockerfile").is_file()
    assert (package / "image" / "requirements.txt").is_file()
    grade = root / "grade"
    shutil.copytree(package / "serverFilesCourse", grade / "serverFilesCourse")
    entrypoint = grade / options["entrypoint"].removeprefix("/grade/")
    env = {**os.environ, "PL_GRADE_ROOT": str(grade), "COURSE_PYTHON": python}
    env.pop("MQTT_URL", None)
    scores, docs = {}, {}
    for kind in KINDS:
        shutil.rmtree(grade / "student", ignore_errors=True)
        shutil.rmtree(grade / "results", ignore_errors=True)
        write_submission(kind, grade / "student")
        run = subprocess.run([str(entrypoint)], env=env, capture_output=True, text=True, timeout=300, cwd=grade)
        assert run.returncode == 0, run.stdout + run.stderr
        assert sandboxed(run.stderr), run.stderr
        raw = (grade / "results" / "results.json").read_bytes()
        assert len(raw) < 1_000_000
        doc = json.loads(raw)
        validate(doc, "prairielearn_results.schema.json")
        docs[kind] = doc
        scores[kind] = doc["score"] * max_points() if doc["gradable"] else None
    assert {k: pytest.approx(scores[k]) for k in GRADED} == plain, f"the plain grader failed {PLAIN_MISSED}"
    hidden = [t for t in docs["partial"]["tests"] if "hidden check" in t["name"]]
    assert hidden
    assert all(t["message"] in ("passed", "failed") and t["description"] == "" for t in hidden)
    assert "await round_trip" not in json.dumps(docs["partial"])
    for kind, why in (("wrong_lab", "wrong lab"), ("not_a_notebook", "not a Jupyter")):
        doc = docs[kind]
        assert doc["gradable"] is False, doc
        assert why in doc["format_errors"][0], doc


def test_unknown_lab_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.grading import gradescope, prairielearn

    for command in (gradescope, prairielearn):
        assert command.main(["00_warmpu", "--out", str(tmp_path)]) == 2
        assert "unknown lab '00_warmpu' (known labs: 00_warmup" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
