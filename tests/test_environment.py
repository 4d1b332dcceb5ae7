"""The two ways to install (pip pins, conda env) must install the same versions, for
learners (requirements.txt, environment.yml) and for contributors (+ requirements-dev.txt,
environment-dev.yml); and a learner's install never pulls in the contributors' tools."""

from __future__ import annotations

import ast
import functools
import re
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^;\s]+)(?:\s*;\s*(.+))?$")


def pins(text: str, python: str) -> dict[str, str]:
    """name -> version for the lines that apply to ``python`` ("3.11")."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = PIN.match(line.split("#")[0].rstrip())
        if not match:
            continue
        name, version, marker = match.groups()
        if marker:
            condition = re.fullmatch(r'python_version\s*([<>=]=?)\s*"([\d.]+)"', marker.strip())
            assert condition, f"a marker these tests cannot read: {marker!r}"
            op, wanted = condition.groups()
            have, want = tuple(map(int, python.split("."))), tuple(map(int, wanted.split(".")))
            if not {"<": have < want, ">=": have >= want, "<=": have <= want, ">": have > want, "==": have == want}[op]:
                continue
        found[name.lower().replace("_", "-")] = version
    return found


def conda_python(env: str) -> str:
    match = re.search(r"^\s*-\s*python=(\d+\.\d+)", (ROOT / env).read_text(), re.M)
    assert match, f"{env} must pin python=X.Y"
    return match.group(1)


def requirement_pins(name: str, python: str) -> dict[str, str]:
    """The pins of a requirements file, following its ``-r other.txt`` lines."""
    text = (ROOT / name).read_text()
    found: dict[str, str] = {}
    for included in re.findall(r"^\s*-r\s+(\S+)", text, re.M):
        found |= requirement_pins(included, python)
    return found | pins(text, python)


LEARNER = {"requirements.txt": "environment.yml"}
CONTRIBUTOR = {"requirements-dev.txt": "environment-dev.yml"}
# What only contributors need: tests, lint, the browser test, offline HTML.
DEV_ONLY = {"pytest", "pytest-asyncio", "pytest-timeout", "pytest-xdist", "nbval", "ruff", "mypy", "playwright", "mmdc", "uv"}


@pytest.mark.parametrize(("requirements", "env"), (LEARNER | CONTRIBUTOR).items())
def test_conda_env_has_the_same_pins_as_requirements(requirements: str, env: str) -> None:
    python = conda_python(env)
    pip_pins = requirement_pins(requirements, python)
    conda_pins = pins((ROOT / env).read_text(), python)
    assert pip_pins, f"{requirements} has no pins"
    assert conda_pins == pip_pins


def test_learners_install_none_of_the_contributors_tools() -> None:
    """mmdc (no macOS x86_64 wheel for its quickjs-ng) and playwright are never needed to run the course."""
    learner = requirement_pins("requirements.txt", "3.11")
    assert not DEV_ONLY & set(learner), f"learner pins carry contributor tools: {sorted(DEV_ONLY & set(learner))}"
    assert DEV_ONLY <= set(requirement_pins("requirements-dev.txt", "3.11"))


# The modules of helpers/ that only contributors run: they may import contributor tools.
CONTRIBUTOR_MODULES = {"helpers/tools/browser.py", "helpers/tools/html.py"}


@functools.cache
def module_owners() -> Mapping[str, list[str]]:
    """Top-level module name -> the distributions that install it (slow to build: once)."""
    return metadata.packages_distributions()


def imported_distributions(path: Path) -> set[str]:
    """The installed distributions whose top-level modules ``path`` imports."""
    owners = module_owners()
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return {dist.lower().replace("_", "-") for name in names for dist in owners.get(name, [])}


def test_learner_code_imports_no_contributor_tool() -> None:
    """Every module a learner or a grader runs imports only what make lab installs."""
    contributor_only = set(requirement_pins("requirements-dev.txt", "3.11")) - set(requirement_pins("requirements.txt", "3.11"))
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_distributions(path) & contributor_only)
        for path in sorted((ROOT / "helpers").rglob("*.py"))
        if str(path.relative_to(ROOT)) not in CONTRIBUTOR_MODULES
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("name", ["aiohttp", "aiomqtt", "iotcore", "tenacity", "opentelemetry-sdk", "nbval", "pillow"])
def test_installed_versions_match_the_pins(name: str) -> None:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    wanted = requirement_pins("requirements-dev.txt", python)[name]
    assert metadata.version(name) == wanted, (
        f"{name}: installed {metadata.version(name)}, pinned {wanted}; run make test to refresh .venv"
    )


def test_aiomqtt_stays_below_3() -> None:
    """aiomqtt 3 speaks MQTT 5 only; the course speaks MQTT 3.1.1 (every broker it targets does)."""
    major = int(pins((ROOT / "requirements.txt").read_text(), "3.11")["aiomqtt"].split(".")[0])
    assert major == 2


def test_pyproject_range_admits_the_pins() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert '"aiomqtt>=2.5,<3"' in text


UV_CONFLICT = """  x No solution found when resolving dependencies:
  `-> Because opencv-python-headless==4.14.0.94 has no usable wheels and you
      require opencv-python-headless==4.14.0.94, we can conclude that your
      requirements are unsatisfiable.
"""


def test_the_wheels_table_names_what_is_missing() -> None:
    """The wheels command turns uv's refusal into one readable cell (the index itself is asked in CI)."""
    from helpers.tools.wheels import Verdict, missing_from, table

    missing = missing_from(UV_CONFLICT)
    assert missing == "opencv-python-headless==4.14.0.94 has no usable wheels"
    rows = table([Verdict("macOS x86_64", "3.11", missing=missing), Verdict("macOS x86_64", "3.12", packages=116)])
    assert "| macOS x86_64 | **no**: opencv-python-headless==4.14.0.94 has no usable wheels | yes (116) |" in rows
