"""Start JupyterLab and Chromium for the browser test: the course seen as a learner sees it.

The browser test (tests/test_browser.py) opens every notebook in a real JupyterLab in
headless Chromium. This module holds the two pieces of plumbing it needs, kept out of
the test so that they can be read and reused on their own:

- :func:`jupyterlab` starts ``python -m jupyter lab`` on a free port of 127.0.0.1 with a
  random token, and every Jupyter folder it writes to (config, runtime, data, user
  settings, workspaces, IPython profile) in a throw-away directory: the server never
  reads or changes the settings of the person running the test, and two runs on one
  machine never share a port or a file. The course's own settings (the virtualenv's
  ``share/jupyter/lab/settings/overrides.json``, which ``make`` installs) still apply,
  because JupyterLab reads them from the Python environment, not from those folders.
  Settings the test needs on top (no windowing, no autosave) go into the throw-away
  user-settings folder, so they never become the learner's.
- :func:`find_chromium` and :func:`launch_chromium` use a Chromium that is already
  installed (Debian's ``chromium`` package): Playwright's own browser download needs the
  internet, which the course's machines and CI do not have.

Nothing here is imported by a lesson; Playwright is imported only by the functions that
need it, so ``import helpers.tools.browser`` works without it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers.core.net import free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

__all__ = [
    "CHROMIUM_CANDIDATES",
    "TEST_SETTINGS",
    "LabServer",
    "find_chromium",
    "jupyterlab",
    "launch_chromium",
]

CHROMIUM_CANDIDATES = (
    "chromium",
    "chromium-browser",
    "/usr/bin/chromium",
    "/usr/lib/chromium/chromium",
    "google-chrome-stable",
    "google-chrome",
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
)
"""Where :func:`find_chromium` looks after ``$COURSE_CHROMIUM``: Debian's and Ubuntu's Chromium first, then Chrome."""

TEST_SETTINGS: dict[str, dict[str, Any]] = {
    # Every cell in the DOM at once: a windowed notebook renders only the cells on screen,
    # and a diagram that was never rendered cannot be checked.
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
    # The test runs cells; nothing it does may be written back into the repository's notebooks.
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
}
"""JupyterLab user settings for the browser test (plugin id -> settings), never the learner's."""


@dataclass(frozen=True)
class LabServer:
    """A running JupyterLab: its base URL (ending in ``/``), token, root folder, process and log file."""

    url: str
    token: str
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    def lab_url(self, path: str = "") -> str:
        """The JupyterLab page for ``path`` (a file under the root, or the empty launcher), token included."""
        where = f"lab/tree/{path}" if path else "lab"
        return f"{self.url}{where}?reset&token={self.token}"

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for an error message."""
        return _tail(self.log, lines)


def _write_user_settings(folder: Path, settings: Mapping[str, Mapping[str, Any]]) -> None:
    """Write ``{"@scope/package:plugin": {...}}`` the way JupyterLab stores user settings."""
    for plugin_id, values in settings.items():
        package, _, plugin = plugin_id.partition(":")
        path = folder / package / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2), encoding="utf-8")


def _environment(root: Path, workdir: Path) -> dict[str, str]:
    """The server's (and so its kernels') environment: every Jupyter folder in ``workdir``."""
    env = dict(os.environ)
    folders = {
        "JUPYTER_CONFIG_DIR": "config",
        "JUPYTER_RUNTIME_DIR": "runtime",
        "JUPYTER_DATA_DIR": "data",
        "JUPYTERLAB_SETTINGS_DIR": "user-settings",
        "JUPYTERLAB_WORKSPACES_DIR": "workspaces",
        "IPYTHONDIR": "ipython",
    }
    for variable, name in folders.items():
        (workdir / name).mkdir(parents=True, exist_ok=True)
        env[variable] = str(workdir / name)
    env.pop("JUPYTER_PATH", None)  # nothing of the caller's: the environment's own share/jupyter only
    env.pop("JUPYTER_CONFIG_PATH", None)
    # The kernels import the course's helpers from the checkout under test, whichever one is installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _server_info(runtime: Path, pid: int) -> dict[str, Any] | None:
    """What the server wrote about itself (``jpserver-PID.json``: url, port, token), once it has."""
    path = runtime / f"jpserver-{pid}.json"
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _answers(url: str, token: str) -> bool:
    """True once the server's REST API answers with the token."""
    request = urllib.request.Request(f"{url}api/status", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Ask the server to stop (it shuts its kernels down), then kill what is left of its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:  # the server's own group only (started with start_new_session): its kernels, if any survived
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait(timeout)


@contextmanager
def jupyterlab(
    root: Path,
    workdir: Path,
    settings: Mapping[str, Mapping[str, Any]] = TEST_SETTINGS,
    timeout: float = 120.0,
) -> Iterator[LabServer]:
    """Run JupyterLab on ``root`` (headless, 127.0.0.1, a free port, a random token) for a ``with`` block.

    ``workdir`` receives every folder Jupyter writes to, the user ``settings`` and the
    server's log (``workdir/server.log``). Returns once the REST API answers; raises
    ``RuntimeError`` with the log's end if the server exits or does not answer within
    ``timeout`` seconds (generous: on a busy 2-core machine JupyterLab takes a while).
    """
    root, workdir = root.resolve(), workdir.resolve()
    env = _environment(root, workdir)
    _write_user_settings(Path(env["JUPYTERLAB_SETTINGS_DIR"]), settings)
    token = secrets.token_hex(16)
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={free_port()}",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={root}",
        # window.jupyterapp: the test opens notebooks and closes them through JupyterLab's own commands
        "--LabApp.expose_app_in_browser=True",
    ]
    if hasattr(os, "getuid") and os.getuid() == 0:
        command.append("--allow-root")
    log = workdir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server: LabServer | None = None
    try:
        deadline = time.monotonic() + timeout
        while server is None:
            if process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {process.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{_tail(log)}")
            info = _server_info(Path(env["JUPYTER_RUNTIME_DIR"]), process.pid)
            if info is not None:  # the port actually bound (the server moves on if ours was taken meanwhile)
                url = f"http://127.0.0.1:{info['port']}{info.get('base_url', '/')}"
                if _answers(url, token):
                    server = LabServer(url, token, root, process, log)
                    break
            time.sleep(0.2)  # polling interval while waiting for the server, not a guess at how long it takes
        yield server
    finally:
        _stop(process, timeout=30)


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def find_chromium() -> str | None:
    """The path of an installed Chromium: ``$COURSE_CHROMIUM``, else Debian's or Ubuntu's; None if there is none."""
    chosen = os.environ.get("COURSE_CHROMIUM")
    if chosen:
        return chosen if Path(chosen).is_file() and os.access(chosen, os.X_OK) else None
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)  # a name on PATH, or a full path that is executable
        if found:
            return found
    return None


def launch_chromium(playwright: Playwright, executable: str) -> Browser:
    """Headless Chromium from ``executable``, driven by Playwright (no browser download needed)."""
    return playwright.chromium.launch(
        executable_path=executable,
        headless=True,
        # Root (CI) cannot use Chromium's sandbox; a small /dev/shm in containers crashes tabs.
        args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    )
