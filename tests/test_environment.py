"""The two ways to install (pip pins, conda env) must install the same versions."""

from __future__ import annotations

import re
import sys
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
            op, wanted = re.fullmatch(r'python_version\s*([<>=]=?)\s*"([\d.]+)"', marker.strip()).groups()
            have, want = tuple(map(int, python.split("."))), tuple(map(int, wanted.split(".")))
            if not {"<": have < want, ">=": have >= want, "<=": have <= want, ">": have > want, "==": have == want}[op]:
                continue
        found[name.lower().replace("_", "-")] = version
    return found


def conda_python() -> str:
    match = re.search(r"^\s*-\s*python=(\d+\.\d+)", (ROOT / "environment.yml").read_text(), re.M)
    assert match, "environment.yml must pin python=X.Y"
    return match.group(1)


def test_conda_env_has_the_same_pins_as_requirements() -> None:
    python = conda_python()
    pip_pins = pins((ROOT / "requirements.txt").read_text(), python)
    conda_pins = pins((ROOT / "environment.yml").read_text(), python)
    assert pip_pins, "requirements.txt has no pins"
    assert conda_pins == pip_pins


@pytest.mark.parametrize("name", ["aiohttp", "aiomqtt", "iotcore", "tenacity", "opentelemetry-sdk", "nbval", "pillow"])
def test_installed_versions_match_the_pins(name: str) -> None:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    wanted = pins((ROOT / "requirements.txt").read_text(), python)[name]
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
