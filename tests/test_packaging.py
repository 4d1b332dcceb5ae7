"""The package as it ships: light imports, one entry point, and a plain (non-editable) install that grades.

``make`` installs the course in editable mode, which hides packaging mistakes: a
subpackage missing from the wheel is still importable from the checkout. These tests
build and install the real wheel into a fresh virtualenv and run the grader from it,
away from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("core", "sync", "pubsub", "choosing", "capstone", "grading", "labchecks", "tools")


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_small_modules_import_without_aiohttp_or_aiomqtt(tmp_path: Path) -> None:
    """``import helpers.core.tables`` must work where aiohttp and aiomqtt cannot be imported."""
    code = (
        "import sys\n"
        "for name in ('aiohttp', 'aiomqtt', 'amqtt', 'paho'):\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        "import helpers, helpers.core.tables, helpers.core.waiting, helpers.core.internals, helpers.__main__\n"
        "print(helpers.core.tables.__name__)\n"
    )
    done = run([sys.executable, "-c", code], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "helpers.core.tables"


def test_one_entry_point_lists_every_command() -> None:
    done = run([sys.executable, "-m", "helpers", "--help"], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    for command in ("doctor", "bench", "run", "serve", "grade", "labs", "mosquitto", "diagrams", "classroom"):
        assert f"  {command} " in done.stdout
    unknown = run([sys.executable, "-m", "helpers", "no-such-command"], cwd=ROOT)
    assert unknown.returncode == 2
    assert "unknown command 'no-such-command'" in unknown.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the course installed from its wheel (``pip install .``, not ``-e``).

    The third-party dependencies come from the test's own environment (a path entry, so
    nothing is downloaded); the course itself is built and installed for real.
    """
    where = tmp_path_factory.mktemp("plain-install")
    env_dir = where / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=where).stdout.strip())
    (site / "course-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # pip runs inside the fresh venv (borrowed through the path entry), so it installs there
    # and never touches the editable install of the environment running the tests.
    # Built from a copy: setuptools writes build/ into the source folder, and two test workers (or
    # two checkouts' runs) building in the same folder at once collide on it ("File exists").
    source = where / "source"
    skip = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "*.ipynb")
    shutil.copytree(ROOT, source, ignore=skip)
    build = run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet", str(source)], cwd=where)
    assert build.returncode == 0, build.stdout + build.stderr
    return python


def test_plain_install_carries_every_subpackage(installed: Path) -> None:
    code = "import helpers, pathlib; print(pathlib.Path(helpers.__file__).parent)"
    folder = Path(run([str(installed), "-c", code], cwd=installed.parent).stdout.strip())
    assert ROOT not in folder.parents, f"helpers was imported from the checkout ({folder}), not from the install"
    for name in SUBPACKAGES:
        assert (folder / name / "__init__.py").is_file(), f"helpers.{name} is missing from the installed package"
    assert sorted(p.name for p in (folder / "labchecks").glob("*.py")) == sorted(
        p.name for p in (ROOT / "helpers" / "labchecks").glob("*.py")
    ), "every lab's checks must ship"


@pytest.mark.broker
def test_plain_install_grades_the_warmup_solution(installed: Path, tmp_path: Path) -> None:
    """The grader, run from the installed package in a folder far from the checkout, gives full marks."""
    submission = tmp_path / "ada_00_warmup.ipynb"
    submission.write_bytes((ROOT / "solutions" / "00_warmup.ipynb").read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    spec = "from jupyter_client.kernelspec import KernelSpecManager as K; print(K().get_kernel_spec('python3').argv[0])"
    kernel_python = run([str(installed), "-c", spec], cwd=tmp_path, env=env).stdout.strip()
    assert Path(kernel_python) == installed, f"the grader's kernels would run {kernel_python}, not the installed course"
    done = run([str(installed), "-m", "helpers", "grade", str(submission), "--json", "out.json", "-q"], cwd=tmp_path, env=env)
    assert (tmp_path / "out.json").is_file(), done.stdout + done.stderr
    graded = json.loads((tmp_path / "out.json").read_text())["submissions"][0]
    failures = [f"{c['question']} {c['name']}: {c['message']}" for c in graded["checks"] if not c["passed"]]
    assert graded["status"] == "graded", graded
    assert not failures, failures
    assert graded["score"] == graded["max_score"] > 0
    assert done.returncode == 0, done.stdout + done.stderr
