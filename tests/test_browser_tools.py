"""helpers.tools.browser without a browser: finding Chromium, the test-local settings, a server that fails to start.

These run everywhere, also where tests/test_browser.py is skipped for want of Chromium.
"""

from __future__ import annotations

import json
import socket
import stat
import sys
from pathlib import Path

import pytest

from helpers.core.net import free_port
from helpers.tools import browser
from helpers.tools.browser import TEST_SETTINGS, find_chromium, jupyterlab


def test_course_chromium_names_the_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "my-chromium"
    fake.write_text("#!/bin/sh\n")
    monkeypatch.setenv("COURSE_CHROMIUM", str(fake))
    assert find_chromium() is None, "a file that cannot be executed is no browser"
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert find_chromium() == str(fake)
    monkeypatch.setenv("COURSE_CHROMIUM", str(tmp_path / "missing"))
    assert find_chromium() is None, "a named browser that is missing is not replaced by another one"


def test_free_port_is_free() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # raises if something listens there


def test_test_settings_are_written_where_jupyterlab_reads_them(tmp_path: Path) -> None:
    browser._write_user_settings(tmp_path, TEST_SETTINGS)
    tracker = json.loads((tmp_path / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").read_text())
    docmanager = json.loads((tmp_path / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings").read_text())
    assert tracker == {"windowingMode": "none"}
    assert docmanager == {"autosave": False}


def test_test_settings_name_real_settings_of_the_installed_jupyterlab() -> None:
    """A renamed plugin or setting would be ignored silently: the browser test would then see a windowed notebook."""
    schemas = Path(sys.prefix) / "share" / "jupyter" / "lab" / "schemas"
    for plugin_id, values in TEST_SETTINGS.items():
        package, _, plugin = plugin_id.partition(":")
        schema = json.loads((schemas / package / f"{plugin}.json").read_text())
        for name, value in values.items():
            assert name in schema["properties"], f"JupyterLab no longer has the setting {plugin_id} {name}"
            allowed = schema["properties"][name].get("enum")
            assert allowed is None or value in allowed, f"{plugin_id} {name}={value!r} is not one of {allowed}"


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="JupyterLab exited with code") as caught:
        with jupyterlab(tmp_path / "no-such-folder", tmp_path / "jupyter", timeout=60):
            pass
    assert "no-such-folder" in str(caught.value), "the log's end, which names the problem, is in the message"
