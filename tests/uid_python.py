"""A Python that an unprivileged uid can run, with this virtualenv's packages: for tests of the
grader's ``setpriv`` sandbox, whose kernel runs as such a uid.

The virtualenv's own Python may live in a folder only root may enter (a pyenv under /root);
then a throw-away virtualenv of the system Python of the same version is made in a folder
every user may enter, reading this virtualenv's packages through a ``.pth`` file: the code
the kernel imports is the same.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

from helpers.grading import sandbox as boxes


@contextlib.contextmanager
def uid_python() -> Iterator[str | None]:
    """The path of such a Python (this one when it already works), or None when there is none here."""
    if boxes.probe_fallback() is None:
        yield sys.executable
        return
    base = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not base.is_file():
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="uid-python-"))
    folder.chmod(0o755)  # the uid walks through it
    try:
        subprocess.run([str(base), "-m", "venv", "--without-pip", str(folder / "venv")], check=True, timeout=60)
        purelib = Path(sysconfig.get_paths(vars={"base": str(folder / "venv")})["purelib"])
        (purelib / "course.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
        yield str(folder / "venv" / "bin" / "python")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
