"""``python -m helpers wheels``: can a learner install the pins on their platform, from wheels only?

A learner on a laptop has no compiler, so every pinned package must come as a wheel
for their operating system, CPU and Python. Nobody owns every laptop, but the package
index can answer for them: ``uv pip compile --only-binary :all: --python-platform T
--python-version X`` resolves the whole dependency tree for another machine, wheels
only, installing nothing. uv rather than ``pip install --dry-run --platform``: pip
judges environment markers (``pywinpty; os_name == "nt"``) by the machine it runs on,
so it never sees a Windows-only dependency; uv judges them for the target.

It asks for each platform the course supports and each Python from 3.11 on, and prints
one Markdown table (the README carries it). It needs the package index (or the mirror
uv is configured for) and ``uv`` (a contributor pin), nothing else.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

PYTHONS = ("3.11", "3.12", "3.13", "3.14")

# The floors: glibc 2.28 (Debian 10, Ubuntu 20.04, RHEL 8) and macOS 14 (Sonoma; Apple
# no longer patches 13, and OpenCV's Intel wheels start at 14).
TARGETS: dict[str, str] = {
    "Linux x86_64": "x86_64-manylinux_2_28",
    "Linux aarch64": "aarch64-manylinux_2_28",
    "macOS arm64": "aarch64-apple-darwin",
    "macOS x86_64": "x86_64-apple-darwin",
    "Windows x86_64": "x86_64-pc-windows-msvc",
}
MACOS_FLOOR = "14.0"


@dataclass(frozen=True)
class Verdict:
    """What the index said for one platform and Python: a count of wheels, or what is missing."""

    target: str
    python: str
    packages: int = 0
    missing: str | None = None

    @property
    def ok(self) -> bool:
        return self.missing is None

    def cell(self) -> str:
        return f"yes ({self.packages})" if self.ok else f"**no**: {self.missing}"


UNSATISFIABLE = re.compile(r"Because (.+?)(?: and you require|, we can conclude|$)")


def missing_from(stderr: str) -> str:
    """uv's first reason the pins cannot be met, on one line."""
    flat = " ".join(stderr.split())
    found = UNSATISFIABLE.search(flat)
    return found.group(1) if found else (stderr.strip().splitlines() or ["uv failed without saying why"])[-1].strip()


def uv() -> str:
    """The uv executable beside this Python (a contributor pin), or on PATH."""
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.exists() else shutil.which("uv")
    if not found:
        raise SystemExit("uv is not installed: pip install -r requirements-dev.txt")
    return found


def ask_index(target: str, python: str, requirements: Path) -> Verdict:
    """Resolve ``requirements`` for ``target``/``python`` from wheels only, installing nothing."""
    command = [uv(), "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--only-binary", ":all:",
               "--python-platform", TARGETS[target], "--python-version", python, str(requirements)]  # fmt: skip
    env = os.environ | {"UV_PYTHON_DOWNLOADS": "never", "MACOSX_DEPLOYMENT_TARGET": MACOS_FLOOR}
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600, env=env)
    if done.returncode != 0:
        return Verdict(target, python, missing=missing_from(done.stderr))
    return Verdict(target, python, packages=sum("==" in line for line in done.stdout.splitlines()))


def table(verdicts: list[Verdict]) -> str:
    """A Markdown table: platforms down, Pythons across."""
    pythons = sorted({v.python for v in verdicts})
    by = {(v.target, v.python): v for v in verdicts}
    lines = ["| platform | " + " | ".join(f"Python {p}" for p in pythons) + " |", "|---" * (len(pythons) + 1) + "|"]
    for target in dict.fromkeys(v.target for v in verdicts):
        lines.append(f"| {target} | " + " | ".join(by[target, p].cell() for p in pythons) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers wheels", description=__doc__.splitlines()[0])
    parser.add_argument("-r", "--requirements", type=Path, default=Path("requirements.txt"),
                        help="the pins to check (default: the learners' requirements.txt)")  # fmt: skip
    parser.add_argument("--python", action="append", choices=PYTHONS, help="only this Python (repeatable)")
    parser.add_argument("--target", action="append", choices=list(TARGETS), help="only this platform (repeatable)")
    parser.add_argument("--jobs", type=int, default=4, help="questions to the index at once (default 4)")
    args = parser.parse_args(argv)
    if not args.requirements.is_file():
        print(f"no such file: {args.requirements}", file=sys.stderr)
        return 2
    pairs = [(t, p) for t in args.target or list(TARGETS) for p in args.python or PYTHONS]
    print(f"asking the package index about {args.requirements} for {len(pairs)} platform/Python pairs ...", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        verdicts = list(pool.map(lambda pair: ask_index(pair[0], pair[1], args.requirements.resolve()), pairs))
    print(table(verdicts))
    failed = [v for v in verdicts if not v.ok]
    print(f"\n{len(verdicts) - len(failed)} of {len(verdicts)} platform/Python pairs install from wheels only")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
